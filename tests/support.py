"""Builders shared by several test files and by the programs under tests/programs/.

Plain functions and classes that take arguments (a config of some size, a demonstrator of some
scale, the HLO text of a compiled step): the programs that run in a fresh interpreter (a fake
device count must be set before JAX starts) import them too, where pytest's fixtures do not
reach. Values the tests share (datasets, a trained world model) are fixtures in conftest.py.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from aime_jax import config as config_lib

REPO = str(Path(__file__).resolve().parents[1])
TESTS = os.path.join(REPO, "tests")
PROGRAMS = os.path.join(TESTS, "programs")


# ------------------------------------------------------------------------------------------------
# Configs


def tiny_config(modality: str = "mdp", **phase1):
    """The walker quick config with a world model small enough to train in seconds on a CPU:
    6 phase-1 steps, a checkpoint at 3 and 6."""
    c = config_lib.make_config("walker", modality, "quick")
    wm = c.world_model
    wm.deter_size, wm.stoch_size = 32, 8
    for head in (wm.latent, wm.vector_decoder, wm.probe):
        head.hidden_sizes = (32,) * len(head.hidden_sizes)
    c.data.window, c.data.batch_size = 10, 4
    c.phase1.update(dict(steps=6, log_every=3, eval_every=3, save_every=3, val_batches=1), **phase1)
    return config_lib.resolve(c)


def tiny_phase2(config, **phase2):
    """`config` with a phase 2 of 4 steps (a checkpoint every 2) on 2 demonstrations."""
    config.phase2.update(dict(steps=4, log_every=2, eval_every=4, save_every=2, eval_episodes=1), **phase2)
    config.phase2.policy.hidden_sizes = (32, 32)
    config.data.num_demos = 2
    return config


def bc_config(modality: str = "mdp", **bc):
    """The walker quick config on walker-walk, with these baseline settings (config.bc)."""
    c = config_lib.resolve(config_lib.make_config("walker", modality, "quick"))
    c.env = "walker-walk"
    c.bc.update(bc)
    return c


# ------------------------------------------------------------------------------------------------
# A known demonstrator


class LinearDemonstrator:
    """A known demonstrator: a fixed linear state-feedback policy, tanh(W [orientations, height, velocity]).

    At scale 0.06 it holds the walker higher than random flailing does (walker-walk return ~90
    against ~25) while its speeds and action sizes stay close to those of random-policy data
    (mean |velocity| 5.6 vs 5.2, mean |action| 0.59 vs 0.5); larger scales saturate the actions
    (scale 0.3: 83 % at +-1, speeds twice random's), states a world model of random data has
    never seen.
    """

    name = "linear-demonstrator"

    def __init__(self, seed=0, scale=0.06):
        self.W = np.random.default_rng(seed).normal(size=(6, 24)) * scale

    def __call__(self, observation, proprio, rng):
        x = np.concatenate([proprio["orientations"], proprio["height"], proprio["velocity"]])
        return np.tanh(self.W @ x).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Many runs as one program (tests/test_many_runs.py explains the tolerance)

RUNS_RTOL, RUNS_ATOL = 1e-5, 1e-6


def assert_close(a, b, exact=False):
    """Every leaf of `a` equals `b`'s: bit for bit, or up to the many-runs tolerance."""
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=RUNS_RTOL, atol=RUNS_ATOL)


def program_config(**phase2):
    """A tiny config for a program of runs, each evaluated on one episode."""
    config = tiny_phase2(tiny_config(), **phase2)
    config.eval.update(episodes=1, num_envs=1)
    return config


def make_runs(config, root: Path, specs, demos_dirs):
    """Runs (num_demos, seed, world model, demonstrations) in `root`, as stages.program_runs makes them."""
    from aime_jax.agents import phase2_runs

    return [phase2_runs.Run(config_lib.run_config(config, n, s, wm), str(root / config_lib.run_dirname(n, s)), wm, demos)
            for (n, s, wm), demos in zip(specs, demos_dirs)]


# ------------------------------------------------------------------------------------------------
# Collectives in compiled HLO

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


# ------------------------------------------------------------------------------------------------
# The programs under tests/programs/


def program(name: str) -> str:
    """The path of tests/programs/`name`.py."""
    path = os.path.join(PROGRAMS, f"{name}.py")
    assert os.path.isfile(path), path
    return path


def program_env(**extra: str) -> dict[str, str]:
    """This environment on the CPU, with the repository and tests/ (for `support`) importable."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_program(name: str, *args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs tests/programs/`name`.py with `args` to its end, its output captured as text."""
    return subprocess.run([sys.executable, program(name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env if env is not None else program_env())


# ------------------------------------------------------------------------------------------------
# Command-line programs, started warm


class _CliServer:
    """tests/programs/cli_server.py, started on first use and kept for the session."""

    def __init__(self):
        self.proc = None
        self.env = None

    def start(self) -> None:
        import atexit

        self.env = program_env(AIME_JAX_HUGEPAGES="0")
        self.proc = subprocess.Popen([sys.executable, program("cli_server")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=self.env, cwd=REPO,
                                     start_new_session=True)
        atexit.register(self.stop)

    def stop(self) -> None:
        import signal

        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and a child it may be running
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def run(self, argv: list[str], cwd: str, env: dict[str, str], timeout: float) -> int:
        import json
        import select
        import tempfile

        if self.proc is None or self.proc.poll() is not None:
            self.start()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            self.proc.stdin.write(json.dumps({"argv": argv, "cwd": cwd, "env": env, "stdout": out, "stderr": err}) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                self.stop()
                raise subprocess.TimeoutExpired(argv, timeout)
            reply = self.proc.stdout.readline()
            if not reply:
                self.stop()
                raise RuntimeError(f"tests/programs/cli_server.py ended while running {argv}")
            with open(out) as f, open(err) as g:
                return json.loads(reply)["rc"], f.read(), g.read()


_CLI = _CliServer()


def _read_at_import() -> set[str]:
    """Environment variables read when the server starts (JAX's settings, the interpreter's, the
    renderer's): a command that needs other values than the server's cannot run in a fork of it."""
    return {name.upper() for name in jax.config.values} | {"PYTHONPATH", "GLIBC_TUNABLES", "MUJOCO_GL"}


def run_cli(*argv, cwd: str = REPO, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGV...` in `cwd`, output captured as text, as subprocess.run would give it, but
    run in a fork of a warm server that has imported JAX and the project already (seconds saved
    per command: for the many tests that only check how a command is refused). `env`: the
    program's whole environment (default: program_env()); one that differs from the server's in
    what is read at import time (JAX_*, PYTHONPATH, ...) runs in a fresh interpreter instead."""
    argv = [str(a) for a in argv]
    env = dict(env if env is not None else program_env())
    env.setdefault("AIME_JAX_HUGEPAGES", "0")  # no re-exec: a fork has nothing to gain from it
    if _CLI.proc is None or _CLI.proc.poll() is not None:
        _CLI.start()
    differs = any(env.get(k) != _CLI.env.get(k) for k in _read_at_import())
    if differs:
        return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    rc, out, err = _CLI.run(argv, str(cwd), env, timeout)
    return subprocess.CompletedProcess([sys.executable, *argv], rc, out, err)
