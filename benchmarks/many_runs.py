"""K runs as one program against the same K runs one after another: wall time to the last
results.json of each, alternating; JSON out.

  python benchmarks/many_runs.py --num_demos=1,2,5,10,20,50,100 --seeds=0,1,2 \
      --config=configs/walker_mdp.py --config.phase2.steps=5000 --out=benchmarks/results/many_runs_gpu.json

Set-up, untimed: the datasets (--embodiment_dir and --demos_dir, or --collect random walker-walk
episodes for both, enough for a quick check) and one world model per seed (`experiments/main.py
--config.stages=phase1`), which both arms then share. Then, `--repeats` times, in alternating
order:

- vectorised: one command, `experiments/main.py --config.runs.num_demos=... --config.runs.seeds=...
  --config.stages=phase2,eval`, the world models copied in as its seed folders;
- one by one: one `experiments/main.py` command per run, each reusing its seed's world model
  (`--config.world_model_dir=... --config.stages=phase2,eval`), the next started when the last ends.

Each arm is timed from its first command's start to its last results.json (compilation, start-up,
phase 2 and the final evaluation all count). `--config.key=value` overrides are passed to every
command. Every command runs in a fresh process; nothing here imports JAX,
so that the commands have the accelerator to themselves.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from aime_jax.atomic import write_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overrides import config_overrides  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd: list[str], log: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        sys.exit(f"error: a command failed (exit {rc}); the end of {log}:\n{tail}")


def _main_cmd(args, workdir: str, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(REPO, "experiments", "main.py"), f"--config={os.path.join(REPO, args.config)}",
            f"--workdir={workdir}", f"--config.data.embodiment_dir={args.embodiment_dir}",
            f"--config.data.demos_dir={args.demos_dir}", *args.overrides, *extra]


def _results(folders: list[str]) -> tuple[float, list[dict]]:
    """The newest results.json's modification time and every run's result."""
    paths = [os.path.join(folder, "results.json") for folder in folders]
    results = []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        results.append({k: r.get(k) for k in ("num_demos", "seed", "normalised", "return_mean", "diverged_at_step")})
    return max(os.path.getmtime(p) for p in paths), results


def vectorised(args, grid, scratch: str, rep: int, log: str) -> tuple[float, list[dict]]:
    work = os.path.join(scratch, f"vectorised{rep}")
    for seed in sorted({s for _, s in grid}):
        shutil.copytree(os.path.join(scratch, f"world_model_seed{seed}", "phase1"),
                        os.path.join(work, f"seed{seed}", "phase1"))
    start = time.time()
    _run(_main_cmd(args, work, f"--config.runs.num_demos={args.num_demos}", f"--config.runs.seeds={args.seeds}",
                   "--config.stages=phase2,eval"), log)
    last, results = _results([os.path.join(work, f"demos{n}_seed{s}") for n, s in grid])
    return last - start, results


def one_by_one(args, grid, scratch: str, rep: int, log: str) -> tuple[float, list[dict]]:
    work = os.path.join(scratch, f"one_by_one{rep}")
    start = time.time()
    for n, s in grid:
        _run(_main_cmd(args, os.path.join(work, f"demos{n}_seed{s}"), f"--config.data.num_demos={n}",
                       f"--config.seed={s}", f"--config.world_model_dir={os.path.join(scratch, f'world_model_seed{s}')}",
                       "--config.stages=phase2,eval"), log)
    last, results = _results([os.path.join(work, f"demos{n}_seed{s}") for n, s in grid])
    return last - start, results


def _devices() -> str:
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend(), jax.devices())"],
                         capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()[-300:]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/walker_mdp.py:quick")
    p.add_argument("--num_demos", default="1,2,5,10")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--repeats", type=int, default=2, help="measurements of each arm, alternating")
    p.add_argument("--embodiment_dir", default=None, help="embodiment dataset (default: --collect episodes)")
    p.add_argument("--demos_dir", default=None, help="demonstrations (default: the --collect episodes)")
    p.add_argument("--collect", type=int, default=0,
                   help="collect this many random walker-walk episodes as both datasets (a quick check)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args, rest = p.parse_known_args()
    args.overrides = config_overrides(rest)
    try:
        grid = [(int(n), int(s)) for s in args.seeds.split(",") for n in args.num_demos.split(",")]
    except ValueError:
        sys.exit(f"error: --num_demos={args.num_demos!r} and --seeds={args.seeds!r} must be whole numbers separated by commas")
    if args.repeats < 1:
        sys.exit(f"error: --repeats={args.repeats}; measure each arm at least once")
    if not (args.embodiment_dir and args.demos_dir) and args.collect < max(n for n, _ in grid):
        sys.exit("error: give --embodiment_dir and --demos_dir, or --collect at least as many episodes as the "
                 "largest --num_demos")

    scratch = args.workdir or tempfile.mkdtemp(prefix="many_runs_")
    os.makedirs(scratch, exist_ok=True)
    log = os.path.join(scratch, "commands.log")
    if not (args.embodiment_dir and args.demos_dir):
        folder = os.path.join(scratch, "episodes")
        _run([sys.executable, os.path.join(REPO, "experiments", "collect.py"), f"--out={folder}",
              f"--episodes={args.collect}", "--env=walker-walk", "--modality=mdp"], log)
        args.embodiment_dir = args.embodiment_dir or folder
        args.demos_dir = args.demos_dir or folder
    load_start = os.getloadavg()
    phase1_s = {}
    for seed in sorted({s for _, s in grid}):
        start = time.perf_counter()
        _run(_main_cmd(args, os.path.join(scratch, f"world_model_seed{seed}"), f"--config.seed={seed}",
                       "--config.stages=phase1"), log)
        phase1_s[seed] = round(time.perf_counter() - start, 1)

    arms = {"vectorised": vectorised, "one_by_one": one_by_one}
    walls: dict[str, list[float]] = {name: [] for name in arms}
    results: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        order = list(arms) if rep % 2 == 0 else list(arms)[::-1]
        for name in order:
            wall, runs = arms[name](args, grid, scratch, rep, log)
            walls[name].append(round(wall, 1))
            results[name] = runs
            print(f"repeat {rep}: {name} {wall:.1f} s", flush=True)
    median = {name: statistics.median(w) for name, w in walls.items()}
    out = {
        "command": "python benchmarks/many_runs.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "host": platform.platform(), "devices": _devices(),
                    "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
        "runs": len(grid), "num_demos": args.num_demos, "seeds": args.seeds, "overrides": args.overrides,
        "phase1_s_per_seed": phase1_s,
        "wall_s": walls,
        "median_wall_s": median,
        "speedup_one_by_one_over_vectorised": round(median["one_by_one"] / median["vectorised"], 3),
        "vectorised_in_single_runs": round(median["vectorised"] / (median["one_by_one"] / len(grid)), 2),
        "results": results,
    }
    print(json.dumps(out, indent=1))
    if args.out:
        write_json(args.out, out)
    if not args.workdir:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
