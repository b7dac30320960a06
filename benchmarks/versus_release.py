"""Our phase-1 and phase-2 steps against the release-style PyTorch step, timed in one run, alternately; JSON out.

  python benchmarks/versus_release.py --out=benchmarks/results/versus_release_cpu.json

This is where the project's speed ratios over the release come from. The release's own timings
drift with the machine (its speed varies by tens of percent between hours), so a ratio to a figure
measured on another day says little; here each pair times our step and the stand-in
(benchmarks/torch_release_style.py, which ran at nearly the release's speed beside it) back to
back, and each pair gives one ratio. Each arm of a pair runs in a fresh process, at B=50, T=50 and
the same model: cheetah `rssmo` sizes, in phase 1 with the detached inverse-dynamics head the
release trains (`cheetah_mdp_idm`, `cheetah_visual_idm` of benchmarks/phase1.py); in phase 2 the
frozen world model and the policy. Compilation (ours) and the warm-up steps (both) are excluded
from the timed steps and recorded apart. The ratio is the stand-in's median seconds per step over
ours (above 1: aime-jax is faster); the JSON keeps every pair, their median and range, and the
share of the machine other processes used while each arm was timed.

On a shared machine run it niced up (see benchmarks/phase1.py) or pass --quiet_wait. Needs
PyTorch in the aime-jax environment (not a dependency of aime-jax).
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import load_avg, scheduling, time_calls, wait_for_quiet  # noqa: E402

from aime_jax.atomic import write_json  # noqa: E402
from aime_jax.hostmem import reexec_with_huge_pages  # noqa: E402

# benchmark -> (phase, modality, our config in benchmarks/phase1.py's CONFIGS). Phase 2 trains no
# inverse-dynamics head; its world model is the domain's default.
BENCHMARKS = {
    "phase1_mdp": (1, "mdp", "cheetah_mdp_idm"),
    "phase1_visual": (1, "visual", "cheetah_visual_idm"),
    "phase2_mdp": (2, "mdp", "cheetah_mdp"),
    "phase2_visual": (2, "visual", "cheetah_visual"),
}
ARMS = ("aime_jax", "stand_in")
# The share of the machine other processes may take while an arm is timed before its pair is
# counted as busy: on a crowded CPU the stand-in slowed down far more than our step
# (benchmarks/results/versus_release_cpu_check.json), likely as each of its thousands of small
# eager kernels waits for its descheduled threads, so a busy pair's ratio is inflated.
BUSY_SHARE = 0.1


def pair_order(pair: int) -> tuple[str, str]:
    """The arms of a pair in the order they run: the first arm alternates between pairs, so that
    a steady drift of the machine's speed favours neither."""
    return ARMS if pair % 2 == 0 else ARMS[::-1]


def summarize(pairs: list[dict]) -> dict:
    """Each pair's ratio (the stand-in's median s/step over ours), their median and range, each
    arm's median s/step over the pairs, and the most of the machine other processes took while
    any arm was timed, and how many pairs shared the machine (`BUSY_SHARE`)."""
    ratios = [p["stand_in"]["s_per_step_median"] / p["aime_jax"]["s_per_step_median"] for p in pairs]
    return {
        "pairs": len(pairs),
        "ratios": [round(r, 3) for r in ratios],
        "ratio_median": round(float(np.median(ratios)), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        **{f"{arm}_s_per_step": round(float(np.median([p[arm]["s_per_step_median"] for p in pairs])), 4)
           for arm in ARMS},
        "max_other_processes_cpu_share": max(p[arm]["other_processes_cpu_share"] for p in pairs for arm in ARMS),
        "busy_pairs": sum(any(p[arm]["other_processes_cpu_share"] > BUSY_SHARE for arm in ARMS) for p in pairs),
    }


def measure_aime_jax(phase: int, config_name: str, steps: int, warmup: int) -> dict:
    """Our step, jitted as the learners jit it, on phase1.py's synthetic batch."""
    # Imported here: the stand-in's process never loads JAX.
    import jax

    import phase1
    from aime_jax import parallel
    from aime_jax.agents import phase1 as phase1_learner
    from aime_jax.agents import phase2

    domain, modality, dtype, *overrides = phase1.CONFIGS[config_name]
    config, model, state, optimizer, batch = phase1.build(domain, modality, dtype, *overrides)
    mesh = parallel.make_mesh(1)
    if phase == 1:
        step = phase1_learner.jit_train_step(model, config.world_model, optimizer, mesh)
        args = ()
    else:
        # The world model's freshly initialised parameters, frozen; the policy is trained.
        policy = phase2.make_policy(config.phase2.policy, phase1.ACTION_DIM)
        optimizer = phase2.make_optimizer(config.phase2)
        step = phase2.jit_train_step(model, policy, phase2.phase2_loss_config(model.config, config.phase2),
                                   optimizer, mesh)
        args = (parallel.replicate(state.params, mesh),)
        features = config.world_model.deter_size + config.world_model.stoch_size
        state = phase2.create_policy_state(policy, features, optimizer, config.seed)
        batch = {k: batch[k] for k in config.world_model.obs_keys}
    state = parallel.replicate(state, mesh)
    batch = parallel.shard_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, *args, batch).compile()
    compile_s = time.perf_counter() - t0

    def one_step():
        nonlocal state
        state, metrics = compiled(state, *args, batch)
        return metrics

    warmup_times, _ = time_calls(one_step, warmup, jax.block_until_ready)
    load_before = load_avg()
    times, others = time_calls(one_step, steps, jax.block_until_ready)
    loss = float(jax.device_get(one_step()["loss"]))
    device = jax.devices()[0]
    return {
        "phase": phase,
        "config": config_name,
        "variant": config.world_model.variant,
        "device": f"{device.platform} {device.device_kind}",
        "jax": jax.__version__,
        "param_count": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_s": round(compile_s, 2),
        "warmup_times_s": [round(t, 4) for t in warmup_times],
        "timed_steps": steps,
        "step_times_s": [round(t, 4) for t in times],
        "s_per_step": round(float(np.mean(times)), 4),
        "s_per_step_median": round(float(np.median(times)), 4),
        "s_per_step_min": round(min(times), 4),
        "final_loss_finite": bool(np.isfinite(loss)),
        "other_processes_cpu_share": round(others, 3),
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
    }


def worker(arm: str, bench: str, steps: int, warmup: int, torch_device: str) -> dict:
    phase, modality, config_name = BENCHMARKS[bench]
    if arm == "aime_jax":
        return measure_aime_jax(phase, config_name, steps, warmup)
    import torch
    import torch_release_style

    device = torch_device if torch_device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return torch_release_style.measure(phase, modality, device, steps, warmup, idm=True)


def run_arm(arm: str, bench: str, steps: int, warmup: int, torch_device: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={arm}:{bench}", f"--steps={steps}",
           f"--warmup={warmup}", f"--torch_device={torch_device}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the {arm} arm of {bench} failed (exit {proc.returncode}); its output is above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/versus_release_cpu.json")
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS), help=f"comma-separated subset of {list(BENCHMARKS)}")
    p.add_argument("--pairs", type=int, default=5, help="pairs (one run of each arm) per benchmark")
    p.add_argument("--steps", type=int, default=10, help="timed steps per MDP run")
    p.add_argument("--visual_steps", type=int, default=3, help="timed steps per Visual run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation (MDP)")
    p.add_argument("--visual_warmup", type=int, default=1, help="untimed steps after compilation (Visual)")
    p.add_argument("--quiet_wait", type=float, default=0.0,
                   help="before each pair wait up to this many seconds for other processes to go idle")
    p.add_argument("--torch_device", default="auto", help="the stand-in's device: cpu, cuda or auto")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        arm, bench = args.worker.split(":")
        print(json.dumps(worker(arm, bench, args.steps, args.warmup, args.torch_device)))
        return

    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    if args.pairs < 1 or min(args.steps, args.visual_steps) < 1:
        p.error("--pairs, --steps and --visual_steps must be at least 1")
    if importlib.util.find_spec("torch") is None:
        p.error("PyTorch is not installed in this environment; the stand-in needs it (pip install torch)")
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"host": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "scheduling": scheduling()},
        "batch": 50,
        "window": 50,
        "ratio": "stand-in median s/step over aime-jax median s/step, per pair (above 1: aime-jax is faster)",
        "load_avg_start": load_avg(),
        "benchmarks": {},
    }
    for bench in names:
        visual = BENCHMARKS[bench][1] == "visual"
        steps, warmup = (args.visual_steps, args.visual_warmup) if visual else (args.steps, args.warmup)
        entry = result["benchmarks"][bench] = {"aime_jax_config": BENCHMARKS[bench][2], "runs": []}
        for pair in range(args.pairs):
            waited = wait_for_quiet(args.quiet_wait) if args.quiet_wait else 0.0
            run = {"pair": pair, "order": list(pair_order(pair)), "waited_for_quiet_s": waited}
            for arm in pair_order(pair):
                run[arm] = run_arm(arm, bench, steps, warmup, args.torch_device)
            entry["runs"].append(run)
            entry["summary"] = summarize(entry["runs"])
            print(f"{bench} pair {pair}: aime-jax {run['aime_jax']['s_per_step_median']} s/step, "
                  f"stand-in {run['stand_in']['s_per_step_median']} s/step, "
                  f"ratio {entry['summary']['ratios'][-1]}, other processes' share "
                  f"{max(run[arm]['other_processes_cpu_share'] for arm in ARMS)}", file=sys.stderr, flush=True)
            write_json(args.out, result)  # after every pair, so an interrupted run keeps what it measured
    result["load_avg_end"] = load_avg()
    write_json(args.out, result)
    print(json.dumps({b: e["summary"] for b, e in result["benchmarks"].items()}, indent=2))


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
