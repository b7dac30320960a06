"""Runs a wandb sweep file without wandb: expands its grid and runs (or prints) every run, e.g.

  python experiments/sweep.py launch/sweeps/num_demos.yaml --dry_run
  python experiments/sweep.py launch/sweeps/num_demos.yaml --workdir_root=runs/demos -- --config.phase2.steps=5000

The file is the one `wandb sweep` takes (`program`, `method: grid`, `parameters` with `values`
or `value`, `command` with wandb's macros ${env}, ${interpreter}, ${program}, ${args} and
${args_no_hyphens}). Runs go one after another; each is an ordinary experiments/main.py command,
so a finished run is skipped and an interrupted one resumes when the sweep is started again.
Several workers may run the same sweep on a shared disk: a run whose directory another process
is working in is put off until the others are done. Arguments after `--` are added to every run;
`--workdir_root` moves the run directories, the world models they share
(`--config.world_model_dir`) and their compilation cache (`--config.compile_cache_dir`). `--dry_run` prints the commands and checks each one as main.py
does before it computes anything (parser, config, and the run directories, datasets and shared
world models on disk or planned by earlier runs of the sweep), without running or writing.
"""
from __future__ import annotations

import argparse
import functools
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
    the command's config.wandb.mode (absl refuses a config override given twice); when it turns
    wandb on, the run goes to the sweep file's `project` and is grouped by the file's name, as
    `wandb agent` puts a sweep's runs in its project and groups them by the sweep."""
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
        command = _set_config(command, "wandb.mode", wandb_mode)
        if wandb_mode != "disabled":
            if sweep.get("project"):
                command = _set_config(command, "wandb.project", sweep["project"])
            command = _set_config(command, "wandb.group", _sweep_name(sweep))
    workdirs = [i for i, a in enumerate(command) if a.startswith("--workdir=")]
    if workdir_root is not None:
        # The run directories, the world models and the compilation cache they share move together.
        for i, a in enumerate(command):
            if a.startswith(("--workdir=", "--config.world_model_dir=", "--config.compile_cache_dir=")):
                flag, path = a.split("=", 1)
                command[i] = f"{flag}={os.path.join(workdir_root, os.path.basename(path))}"
    if not workdirs:
        name = "_".join(f"{k.split('.')[-1]}{_flag_value(v)}" for k, v in params.items())
        root = workdir_root or os.path.join("runs", "sweeps", _sweep_name(sweep))
        command.append("--workdir=" + os.path.join(root, name))
    return command


def _sweep_name(sweep: dict) -> str:
    return os.path.splitext(os.path.basename(sweep.get("_path", "sweep")))[0]


def _set_config(command: list[str], key: str, value) -> list[str]:
    """`command` with --config.<key>=<value> in place of its own (or added)."""
    flag = f"--config.{key}="
    command = [a for a in command if not a.startswith(flag)]
    return command + [flag + _flag_value(value)]


@functools.lru_cache(maxsize=None)
def _main_module():
    """experiments/main.py, loaded once (it defines absl flags, which cannot be defined twice)."""
    spec = importlib.util.spec_from_file_location("aime_main", os.path.join(HERE, "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(command: list[str], main_module, plan: dict | None = None) -> tuple[str, list[str]]:
    """(workdir, stages) of a run as experiments/main.py would see them; SystemExit if it refuses.
    `plan` carries what the runs checked before will write (datasets, world models, run
    directories), so a run that clashes with an earlier one of the sweep is refused too."""
    program = next(i for i, a in enumerate(command) if a.endswith("main.py"))
    _, workdir, stages = main_module.check_command(command[program:], plan=plan)
    return workdir, stages


def _runs_main(command: list[str]) -> bool:
    return any(a.endswith("main.py") for a in command)


def _in_use(command: list[str], main_module) -> str | None:
    """What another process is doing in this run's directory, or None (also when the command is
    not a main.py run, or one main.py refuses: running it reports why)."""
    from aime_jax import locks

    if main_module is None or not _runs_main(command):
        return None
    try:
        workdir, _ = check(command, main_module)
    except SystemExit:
        return None
    info = locks.holder(workdir)
    return None if info is None else f"{workdir} is in use by {locks.describe(info)}"


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
        bad, plan = 0, {}
        for i, command in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {shlex.join(command)}")
            try:
                workdir, stages = check(command, main_module, plan)
                print(f"    ok: stages {','.join(stages)} in {workdir}")
            except SystemExit as e:
                bad += 1
                print(f"    refused: {e.code}")
        print(f"{len(runs) - bad} of {len(runs)} runs valid")
        return 1 if bad else 0
    failed, queue, deferred = [], list(enumerate(runs, 1)), set()
    main_module = _main_module() if any(_runs_main(c) for c in runs) else None
    while queue:
        i, command = queue.pop(0)
        busy = _in_use(command, main_module) if queue and i not in deferred else None
        if busy:
            # Several workers may run the same sweep: each takes the runs no other one is running.
            print(f"[{i}/{len(runs)}] later: {busy}", flush=True)
            deferred.add(i)
            queue.append((i, command))
            continue
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
