"""One gradient all-reduce per train step, read from the compiled HLO on a 4-device CPU mesh.

XLA's partitioner, given replicated parameters and a split batch, all-reduces the weight
gradients of the RSSM cell inside the backward scan, once per time step. The data-parallel
steps (`parallel.data_parallel`) must leave every while loop free of collectives and reduce the
gradients once, after the scans; the 4-device step must still equal the 1-device step.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HEADER = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->.*\{\s*$")
_CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation|branch_computations)="
    r"(\{[^}]*\}|%?[\w.\-]+)"
)
_WHILE_BODY = re.compile(r"\bwhile\(.*\bbody=%?([\w.\-]+)")
_ALL_REDUCE = re.compile(r"\ball-reduce(?:-start)?\(")


def hlo_computations(text: str) -> dict[str, list[str]]:
    """{computation name: its instruction lines} of an HLO module's text."""
    computations, current = {}, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            computations[current] = []
        elif line.strip() == "}":
            current = None
        elif current is not None:
            computations[current].append(line)
    return computations


def _called(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        for match in _CALLED.finditer(line):
            names |= {n.strip().lstrip("%") for n in match.group(1).strip("{}").split(",") if n.strip()}
    return names


def all_reduce_counts(text: str) -> dict[str, int]:
    """All-reduce instructions of a compiled HLO module: `in_loops` counts those in a while
    body or anything it calls (run once per iteration), `total` all of them; `loops` is the
    number of while loops."""
    computations = hlo_computations(text)
    bodies = {m.group(1) for lines in computations.values() for m in map(_WHILE_BODY.search, lines) if m}
    in_loops, todo = set(), list(bodies)
    while todo:
        name = todo.pop()
        if name in in_loops or name not in computations:
            continue
        in_loops.add(name)
        todo += _called(computations[name])
    count = {name: sum(bool(_ALL_REDUCE.search(l)) for l in lines) for name, lines in computations.items()}
    return {"in_loops": sum(count[n] for n in in_loops), "total": sum(count.values()), "loops": len(bodies)}


# Runs in a fresh interpreter: the fake device count must be set before JAX starts.
_CHECK = textwrap.dedent(
    r"""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np, optax
    from test_allreduce import all_reduce_counts
    from test_phase1 import tiny_config
    from aime_jax import parallel
    from aime_jax.agents import bc, phase1, phase2

    B, T, A = 8, 10, 6
    spec = {{"orientations": (14,), "height": (1,), "velocity": (9,)}}
    rng = np.random.default_rng(0)
    batch = {{k: rng.normal(size=(B, T) + s).astype(np.float32) for k, s in spec.items()}}
    batch["pre_action"] = rng.uniform(-1, 1, (B, T, A)).astype(np.float32)
    config = tiny_config()
    config.data.batch_size = B
    wm_opt = phase1.make_optimizer(3e-4, 100.0)
    model, wm_state = phase1.create_train_state(config.world_model, spec, A, wm_opt, 0)
    p = config.phase2
    policy = phase2.make_policy(p.policy, A)
    opt = optax.chain(optax.clip_by_global_norm(p.grad_clip), optax.adam(p.lr))
    features = config.world_model.deter_size + config.world_model.stoch_size
    policy_state = phase2.create_policy_state(policy, features, opt, 0)
    loss_config = phase2.phase2_loss_config(model.config, p)
    net = bc.make_net(config.bc, tuple(spec), A)
    bc_state = bc.create_state(net, spec, 3, optax.adam(1e-3), 0)
    bc_batch = {{k: rng.normal(size=(B, 3) + s).astype(np.float32) for k, s in spec.items()}}
    bc_batch[bc.TARGET] = rng.uniform(-1, 1, (B, A)).astype(np.float32)
    # Host copies: the steps donate their states, and a copy onto the same device may alias.
    wm_state, policy_state, bc_state = jax.device_get((wm_state, policy_state, bc_state))

    def steps(mesh):
        # Each step as its learner jits it, with its inputs placed as the learner places them.
        repl = lambda tree: parallel.replicate(tree, mesh)
        data = lambda tree: parallel.shard_batch(tree, mesh)
        return {{
            "phase1": (phase1.jit_train_step(model, config.world_model, wm_opt, mesh),
                       lambda: (repl(wm_state), data(batch))),
            "phase2": (phase2.jit_train_step(model, policy, loss_config, opt, mesh),
                       lambda: (repl(policy_state), repl(wm_state.params), data(batch))),
            "bc": (bc.jit_train_step(net, optax.adam(1e-3), mesh),
                   lambda: (repl(bc_state), data(bc_batch))),
        }}

    mesh4 = parallel.make_mesh(4)
    counts = {{name: all_reduce_counts(step.lower(*args()).compile().as_text())
               for name, (step, args) in steps(mesh4).items()}}

    diffs = {{}}
    for name in ("phase1", "phase2"):
        results = []
        for mesh in (parallel.make_mesh(1), mesh4):
            step, args = steps(mesh)[name]
            if mesh.size == 1:
                counts[name + "_one_device"] = all_reduce_counts(step.lower(*args()).compile().as_text())
            state, *rest = args()
            for _ in range(3):
                state, metrics = step(state, *rest)
            results.append(jax.device_get((state.params, metrics)))
        (p1, m1), (p4, m4) = results
        diffs[name] = {{
            "params": max(float(np.max(np.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, (p1, p4)))),
            "metrics": {{k: [float(m1[k]), float(m4[k])] for k in m1}},
        }}
    print("RESULT " + json.dumps({{"counts": counts, "diffs": diffs}}))
    """
)


def _run_check() -> dict:
    code = _CHECK.format(repo=REPO, tests=os.path.join(REPO, "tests"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
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
