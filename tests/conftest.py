"""What the test files share.

- Fixtures here: the values several files use, built once per session (real walker episodes, a
  tiny trained world model). A test that needs one names it as an argument.
- tests/support.py: plain builders that take arguments (tiny configs, the linear demonstrator,
  the HLO all-reduce counter, the many-runs helpers) and the runner of tests/programs/. They are
  a module, not fixtures, because the programs under tests/programs/ import them too: those run
  in a fresh interpreter (a fake device count must be set before JAX starts, or several
  processes are launched), where no fixture reaches.
- tests/programs/: every Python program of more than a line that a test runs in a subprocess,
  as a file that can be read, linted and run by hand
  (`PYTHONPATH=.:tests python tests/programs/NAME.py ARGS`).
- support.run_cli: a project command (experiments/*.py, benchmarks/*.py) run as `python PROGRAM
  ARGS` would run it, in a fork of a warm server (tests/programs/cli_server.py) that has JAX and
  the project imported already: for the many short commands whose refusal or dry run a test checks.

No test file imports another test file. `pytest -m "not slow"` is the quick tier; the full suite
(CI) also runs the tests marked slow.
"""
import os
import sys

# Tests run on the CPU whatever the machine has, and never talk to wandb.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def walker_random_dir(tmp_path_factory):
    """Three real walker-walk episodes from the random policy (MDP, no images)."""
    from aime_jax.data.collect import collect

    out = str(tmp_path_factory.mktemp("walker_random"))
    collect("walker-walk", "mdp", out, episodes=3, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_world_model(walker_random_dir, tmp_path_factory):
    """A run directory whose phase1/ holds a tiny world model (support.tiny_config()) trained on
    `walker_random_dir`, with checkpoints at steps 3 and 6. Shared: tests read it, never write it."""
    from aime_jax.agents import phase1
    from support import tiny_config

    run = tmp_path_factory.mktemp("tiny_world_model")
    phase1.train_world_model(tiny_config(), str(run / "phase1"), walker_random_dir)
    return run
