"""Runs a wandb sweep file without wandb: expands its grid and runs (or prints) every run, e.g.

  python experiments/sweep.py launch/sweeps/num_demos.yaml --dry_run
  python experiments/sweep.py launch/sweeps/num_demos.yaml --workdir_root=runs/demos -- --config.phase2.steps=5000

The file is the one `wandb sweep` takes (`program`, `method: grid`, `parameters` with `values`
or `value`, `command` with wandb's macros ${env}, ${interpreter}, ${program}, ${args} and
${args_no_hyphens}). Runs go one after another; each is an ordinary experiments/main.py command,
so a finished run is skipped and an interrupted one resumes when the sweep is started again.
Arguments after `--` are added to every run. `--dry_run` prints the commands and checks each one
with main.py's own parser and config validation, without running anything.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import re
import shlex
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}")


class SweepError(Exception):
    """A sweep file this tool cannot expand; the message names the problem and the fix."""


def load_sweep(path: str) -> dict:
    try:
        with open(path) as f:
            sweep = yaml.safe_load(f)
    except OSError as e:
        raise SweepError(f"cannot read the sweep file: {e}") from None
    except yaml.YAMLError as e:
        raise SweepError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(sweep, dict) or "program" not in sweep or "parameters" not in sweep:
        raise SweepError(f"{path} is not a wandb sweep file: it needs `program` and `parameters`")
    if sweep.get("method", "grid") != "grid":
        raise SweepError(
            f"{path} uses method {sweep['method']!r}; only grid sweeps can be expanded offline "
            "(use `wandb sweep` and `wandb agent` for random or bayes searches)"
        )
    return sweep


def grid(sweep: dict) -> list[dict]:
    """Every combination of the parameters' values, the first parameter varying slowest."""
    names, choices = [], []
    for name, spec in sweep["parameters"].items():
        if isinstance(spec, dict) and "values" in spec:
            values = list(spec["values"])
        elif isinstance(spec, dict) and "value" in spec:
            values = [spec["value"]]
        else:
            raise SweepError(
                f"parameter {name!r} has {spec!r}; a grid needs `values: [...]` or `value: x` for every parameter"
            )
        if not values:
            raise SweepError(f"parameter {name!r} has no values")
        names.append(name)
        choices.append(values)
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def expand(
    sweep: dict, params: dict, workdir_root: str | None = None, extra: list[str] = (), wandb_mode: str | None = None
) -> list[str]:
    """The command line of one run of the sweep (argv, interpreter first). `wandb_mode` replaces
    the command's config.wandb.mode (absl refuses a config override given twice)."""
    args = [f"--{name}={_flag_value(v)}" for name, v in params.items()]
    command: list[str] = []
    for item in sweep.get("command", DEFAULT_COMMAND):
        item = str(item)
        if item == "${env}":
            continue  # wandb prefixes /usr/bin/env; the interpreter is resolved here already
        elif item == "${interpreter}":
            command.append(sys.executable)
        elif item == "${program}":
            command.append(sweep["program"])
        elif item == "${args}":
            command.extend(args)
        elif item == "${args_no_hyphens}":
            command.extend(a[2:] for a in args)
        elif re.search(r"\$\{\w+\}", item):
            raise SweepError(f"the sweep command uses {item!r}; supported macros: {', '.join(MACROS)}")
        elif item == "python":
            command.append(sys.executable)
        else:
            command.append(item)
    if command and command[0] != sys.executable and command[0].endswith(".py"):
        command.insert(0, sys.executable)
    command.extend(extra)
    if wandb_mode is not None and any(a.startswith("--config") for a in command):
        mode = f"--config.wandb.mode={wandb_mode}"
        command = [mode if a.startswith("--config.wandb.mode=") else a for a in command]
        if mode not in command:
            command.append(mode)
    workdirs = [i for i, a in enumerate(command) if a.startswith("--workdir=")]
    if workdir_root is not None:
        if workdirs:
            for i in workdirs:
                command[i] = "--workdir=" + os.path.join(workdir_root, os.path.basename(command[i].split("=", 1)[1]))
    if not workdirs:
        name = "_".join(f"{k.split('.')[-1]}{_flag_value(v)}" for k, v in params.items())
        root = workdir_root or os.path.join("runs", "sweeps", os.path.splitext(os.path.basename(sweep.get("_path", "sweep")))[0])
        command.append("--workdir=" + os.path.join(root, name))
    return command


def _main_module():
    spec = importlib.util.spec_from_file_location("aime_main", os.path.join(HERE, "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(command: list[str], main_module) -> tuple[str, list[str]]:
    """(workdir, stages) of a run as experiments/main.py would see them; SystemExit if it refuses."""
    program = next(i for i, a in enumerate(command) if a.endswith("main.py"))
    _, workdir, stages = main_module.check_command(command[program:])
    return workdir, stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="arguments after -- are added to every run")
    parser.add_argument("sweep", help="a wandb sweep YAML file, e.g. launch/sweeps/num_demos.yaml")
    parser.add_argument("--dry_run", action="store_true", help="print and check the commands, run nothing")
    parser.add_argument("--workdir_root", default=None, help="put every run's directory under this folder")
    parser.add_argument("--wandb_mode", default="disabled", choices=("disabled", "offline", "online"),
                        help="config.wandb.mode of every run (default disabled: no wandb at all)")
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after `--` goes to every run untouched (argparse would read it as its own).
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    opts = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        sweep = load_sweep(opts.sweep)
        sweep["_path"] = opts.sweep
        runs = [expand(sweep, params, opts.workdir_root, extra, opts.wandb_mode) for params in grid(sweep)]
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if opts.dry_run:
        main_module = _main_module()
        bad = 0
        for i, command in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {shlex.join(command)}")
            try:
                workdir, stages = check(command, main_module)
                print(f"    ok: stages {','.join(stages)} in {workdir}")
            except SystemExit as e:
                bad += 1
                print(f"    refused: {e.code}")
        print(f"{len(runs) - bad} of {len(runs)} runs valid")
        return 1 if bad else 0
    failed = []
    for i, command in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {shlex.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(i)
    if failed:
        print(f"error: runs {failed} of {len(runs)} failed; rerun the sweep to retry them (finished runs are skipped)",
              file=sys.stderr)
        return 1
    print(f"sweep done: {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
