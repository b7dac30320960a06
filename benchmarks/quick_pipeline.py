"""The README Quickstart from nothing: wall time and result of a `:quick` pipeline; JSON out.

  python benchmarks/quick_pipeline.py --out=benchmarks/results/quick_pipeline_cpu.json

Runs `experiments/main.py --config=CONFIG` in a fresh run directory with a fresh data root, so the
time includes building every dataset the config needs (training the experts it needs first),
phase 1, phase 2 and the final evaluation, exactly as a new user's first run. `--config.key=value`
overrides pass through. Records each stage's wall time (from the
pipeline's own `== stage` lines), the results.json of the run and the machine's load.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from aime_jax.atomic import write_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overrides import config_overrides  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/walker_mdp.py:quick")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args, rest = p.parse_known_args()
    args.overrides = config_overrides(rest)

    scratch = args.workdir or tempfile.mkdtemp(prefix="quick_pipeline_")
    if os.path.exists(os.path.join(scratch, "run")):
        sys.exit(f"error: {scratch}/run exists; pass an empty --workdir so that nothing is reused")
    run_dir, data_root = os.path.join(scratch, "run"), os.path.join(scratch, "data")
    cmd = [sys.executable, os.path.join(REPO, "experiments", "main.py"), f"--config={os.path.join(REPO, args.config)}",
           f"--workdir={run_dir}", f"--config.data.root={data_root}"]
    cmd += args.overrides
    load_start = os.getloadavg()
    stage_starts, lines = [], []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the pipeline announces each stage with "== stage NAME (...)"
        sys.stdout.write(line)
        lines.append(line)
        m = re.match(r"== stage (\w+)", line)
        if m:
            stage_starts.append((m.group(1), time.perf_counter() - start))
    rc = proc.wait()
    wall = time.perf_counter() - start
    if rc != 0:
        sys.exit(f"error: the pipeline failed (exit {rc}); its output is above")
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    ends = [t for _, t in stage_starts[1:]] + [wall]
    out = {
        "command": "python benchmarks/quick_pipeline.py " + " ".join(sys.argv[1:]),
        "pipeline_command": " ".join(cmd[1:]).replace(scratch, "SCRATCH").replace(REPO + "/", ""),
        "machine": {"cpus": os.cpu_count(), "host": platform.platform(), "load_avg_start": load_start,
                    "load_avg_end": os.getloadavg()},
        "wall_s": round(wall, 1),
        "stage_wall_s": {name: round(end - t, 1) for (name, t), end in zip(stage_starts, ends)},
        "result": {k: results[k] for k in ("env", "modality", "method", "embodiment_name", "num_demos", "episodes",
                                            "return_mean", "return_std", "normalised", "normalised_paper",
                                            "expert_return", "random") if k in results},
        "returns": results.get("returns"),
    }
    print(json.dumps({k: v for k, v in out.items() if k != "returns"}, indent=1))
    if args.out:
        write_json(args.out, out)
    if not args.workdir:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
