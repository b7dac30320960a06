"""Data-parallel scaling of the phase-1 train step: processes x devices against steps/s; JSON out.

  python benchmarks/scaling.py --out=benchmarks/results/scaling_cpu.json
  # two processes against one at the same per-device batch, in turn, 3 rounds:
  python benchmarks/scaling.py --layouts=1x1,2x1,1x2,2x2 --per_device_batch=8 --rounds=3

Every layout (by default 1 process x 1, 2, 4 devices; 2 processes x 1, 2 devices, through
launch/local.sh) runs the same world model (the walker MDP `:quick` sizes unless --window says
otherwise), jitted exactly as the learner jits it (`phase1.jit_train_step`: one gradient
all-reduce per step), fed synthetic process-local batches through `parallel.shard_batch` (the
host-to-device copy included). The global batch is --batch for every layout, or
--per_device_batch times the layout's devices. With --rounds R the layouts run R times in turn,
so that every layout meets the same machine load; each reports its median. On a CPU the
"devices" are XLA's fake host devices sharing the machine's cores, so the numbers show the
overhead of splitting the batch and of cross-process collectives (gloo), not a speedup; on GPUs
or TPUs each device adds its own compute.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from aime_jax.hostmem import reexec_with_huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)]  # (processes, devices per process)


def worker(batch: int, window: int, steps: int, warmup: int, out: str) -> None:
    from aime_jax import parallel

    parallel.initialize_distributed()
    import jax
    import numpy as np

    from aime_jax import envs
    from aime_jax.agents import phase1
    from aime_jax.config import make_config, resolve

    config = resolve(make_config("walker", "mdp", "quick"))
    wm = config.world_model
    sizes = envs.PROPRIO_KEYS["walker"]
    spec = {k: (sizes[k],) for k in (*wm.obs_keys, *wm.probe_keys)}
    mesh = parallel.make_mesh()
    optimizer = phase1.make_optimizer(config.phase1.lr, config.phase1.grad_clip)
    model, state = phase1.create_train_state(wm, spec, 6, optimizer, 0)
    state = parallel.replicate(state, mesh)
    step = phase1.jit_train_step(model, wm, optimizer, mesh)
    local = batch // jax.process_count()
    rng = np.random.default_rng(jax.process_index())
    host = {k: rng.normal(size=(local, window, *shape)).astype(np.float32) for k, shape in spec.items()}
    host[phase1.ACTION_KEY] = rng.uniform(-1, 1, size=(local, window, 6)).astype(np.float32)
    start = time.perf_counter()
    state, metrics = step(state, parallel.shard_batch(host, mesh))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        state, metrics = step(state, parallel.shard_batch(host, mesh))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, parallel.shard_batch(host, mesh))
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - start
    if jax.process_index() == 0:
        with open(out, "w") as f:
            json.dump({"processes": jax.process_count(), "devices": jax.device_count(),
                       "devices_per_process": jax.local_device_count(), "global_batch": batch, "window": window,
                       "first_step_s": round(compile_s, 3), "s_per_step": round(elapsed / steps, 5),
                       "steps_per_s": round(steps / elapsed, 3),
                       "env_steps_per_s": round(steps * batch * window / elapsed, 1)}, f)


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """'1x1,2x2' -> [(1, 1), (2, 2)]: processes x devices per process."""
    try:
        layouts = [tuple(int(n) for n in item.split("x")) for item in text.split(",")]
    except ValueError:
        layouts = []
    if not layouts or any(len(l) != 2 or min(l) < 1 for l in layouts):
        raise SystemExit(f"--layouts={text!r}: give PROCESSESxDEVICES pairs, e.g. 1x1,2x1")
    return layouts


def run_layout(processes: int, devices: int, args) -> dict:
    batch = args.per_device_batch * processes * devices if args.per_device_batch else args.batch
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
        env.pop("XLA_FLAGS", None)
        command = [sys.executable, os.path.abspath(__file__), "--worker", f"--batch={batch}",
                   f"--window={args.window}", f"--steps={args.steps}", f"--warmup={args.warmup}", f"--result={out}"]
        if processes > 1:
            env["AIME_LOCAL_DEVICES"] = str(devices)
            command = [os.path.join(REPO, "launch", "local.sh"), str(processes), *command]
        else:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        load = os.getloadavg()[0]
        subprocess.run(command, env=env, check=True, cwd=REPO)
        with open(out) as f:
            result = json.load(f)
        result["load_before"] = round(load, 2)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "scaling_cpu.json"))
    parser.add_argument("--batch", type=int, default=16, help="global batch of every layout")
    parser.add_argument("--per_device_batch", type=int, default=0,
                        help="if set, the global batch is this times the layout's devices")
    parser.add_argument("--layouts", default=",".join(f"{p}x{d}" for p, d in LAYOUTS),
                        help="PROCESSESxDEVICES per process, comma separated")
    parser.add_argument("--rounds", type=int, default=1, help="times every layout runs, in turn")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.batch, args.window, args.steps, args.warmup, args.result)
        return
    layouts = parse_layouts(args.layouts)
    runs: dict[tuple[int, int], list[dict]] = {layout: [] for layout in layouts}
    for _ in range(max(1, args.rounds)):
        for processes, devices in layouts:
            result = run_layout(processes, devices, args)
            print(json.dumps(result), flush=True)
            runs[(processes, devices)].append(result)
    results = []
    for rounds in runs.values():
        median = statistics.median(r["steps_per_s"] for r in rounds)
        result = dict(rounds[0])
        result.update(
            s_per_step=round(1.0 / median, 5), steps_per_s=round(median, 3),
            env_steps_per_s=round(median * result["global_batch"] * result["window"], 1),
            first_step_s=[r["first_step_s"] for r in rounds], load_before=[r["load_before"] for r in rounds],
            rounds_steps_per_s=[r["steps_per_s"] for r in rounds],
        )
        results.append(result)
    first = f"{layouts[0][0]}x{layouts[0][1]}"
    for r in results:
        r[f"relative_to_{first}"] = round(r["steps_per_s"] / results[0]["steps_per_s"], 3)
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "fake CPU devices share the machine's cores: the figures show the overhead of splitting "
                "the batch over devices and processes, not a speedup",
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
