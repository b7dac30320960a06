"""One gradient all-reduce per train step, read from the compiled HLO on a 4-device CPU mesh.

XLA's partitioner, given replicated parameters and a split batch, all-reduces the weight
gradients of the RSSM cell inside the backward scan, once per time step. The data-parallel
steps (`parallel.data_parallel`) must leave every while loop free of collectives and reduce the
gradients once, after the scans; the 4-device step must still equal the 1-device step.
"""
import json
import textwrap

from support import all_reduce_counts, run_program


def _run_check() -> dict:
    out = run_program("allreduce_check")
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_train_steps_reduce_gradients_once_outside_every_loop():
    result = _run_check()
    counts = result["counts"]
    # BC's step stands for the IDM's too: both are `bc.fit`'s step.
    for name in ("phase1", "phase2", "bc"):
        # The gradient tree (and the metrics) cross devices in one all-reduce, after the scans.
        assert counts[name]["in_loops"] == 0, (name, counts[name])
        assert counts[name]["total"] == 1, (name, counts[name])
    # On one device there is nothing to reduce.
    for name in ("phase1_one_device", "phase2_one_device"):
        assert counts[name]["total"] == 0, (name, counts[name])
    # The scans are while loops: without them the check above would prove nothing.
    assert counts["phase1"]["loops"] >= 2 and counts["phase2"]["loops"] >= 2
    for name, diff in result["diffs"].items():
        # Three Adam steps on 1 and on 4 devices, the same global batch: equal up to float
        # summation order.
        assert diff["params"] < 1e-5, (name, diff)
        for key, (one, four) in diff["metrics"].items():
            assert abs(one - four) <= 1e-4 * max(1.0, abs(one)), (name, key, one, four)


def test_all_reduce_counts_reads_loops_and_the_computations_they_call():
    text = textwrap.dedent(
        """
        HloModule m

        %add (a: f32[], b: f32[]) -> f32[] {
          ROOT %r = f32[] add(f32[] %a, f32[] %b)
        }

        %inner (p: f32[4]) -> f32[4] {
          ROOT %ar = f32[4]{0} all-reduce(f32[4]{0} %p), replica_groups={{0,1}}, to_apply=%add
        }

        %body (t: (s32[], f32[4])) -> (s32[], f32[4]) {
          %c = f32[4]{0} call(f32[4]{0} %x), to_apply=%inner
          ROOT %t2 = (s32[], f32[4]) tuple(%i, %c)
        }

        %cond (t: (s32[], f32[4])) -> pred[] {
          ROOT %lt = pred[] compare(%i, %n), direction=LT
        }

        ENTRY %main (x: f32[4]) -> f32[4] {
          %w = (s32[], f32[4]) while(%init), condition=%cond, body=%body
          ROOT %ar2 = f32[4]{0} all-reduce(f32[4]{0} %x), replica_groups={{0,1}}, to_apply=%add
        }
        """
    )
    assert all_reduce_counts(text) == {"in_loops": 1, "total": 2, "loops": 1}
