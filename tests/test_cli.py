"""The collection and rendering commands, end to end on the real simulator."""
import os
import subprocess
import sys

import numpy as np
import pytest

from aime_jax.data import EpisodeStore, load_episode
from aime_jax.errors import DatasetError

from support import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    """A fresh interpreter, for the programs that render (run_cli's warm forks are for the quick ones)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_collect_visual_then_rerender_state_only_copy(tmp_path):
    visual, state = tmp_path / "visual", tmp_path / "state"
    out = _run("experiments/collect.py", "--env=cheetah-run", "--modality=visual", "--policy=random",
               "--episodes=1", f"--out={visual}")
    assert out.returncode == 0, out.stderr
    assert "1/1" in out.stderr  # the progress bar
    ep = load_episode(visual / "0.npz")
    assert ep["image"].shape == (501, 64, 64, 3) and ep["image"].dtype == np.uint8
    assert {"position", "velocity", "physics_state", "pre_action", "reward"} <= set(ep)

    # The same seed without images, rendered afterwards on two processes, gives the same frames.
    out = _run("experiments/collect.py", "--env=cheetah-run", "--modality=mdp", "--episodes=1", f"--out={state}")
    assert out.returncode == 0, out.stderr
    assert "image" not in load_episode(state / "0.npz")
    out = _run("experiments/render.py", f"--data={state}", "--workers=2")
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(load_episode(state / "0.npz")["image"], ep["image"])
    # Rendering again is a no-op; a resumed collection adds only the missing episodes.
    assert "rendered 0 episodes" in _run("experiments/render.py", f"--data={state}").stdout
    out = _run("experiments/collect.py", "--env=cheetah-run", "--modality=mdp", "--episodes=2", f"--out={state}")
    assert out.returncode == 0, out.stderr
    # The new episode has no images yet: the store refuses the mixed folder until it is rendered.
    with pytest.raises(DatasetError, match=r"1\.npz: its keys .* differ"):
        EpisodeStore(state, progress=False)
    assert _run("experiments/render.py", f"--data={state}").returncode == 0
    assert EpisodeStore(state, progress=False).num_episodes == 2


def test_cli_errors_are_one_line(tmp_path):
    out = run_cli("experiments/collect.py", "--env=walker-dance", f"--out={tmp_path}")
    assert out.returncode != 0
    assert "error: unknown environment 'walker-dance'; valid names:" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("experiments/render.py", f"--data={tmp_path / 'missing'}")
    assert "error: dataset folder" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("experiments/collect.py", "--env=walker-walk", "--policy=expert.ckpt", f"--out={tmp_path}")
    assert "error: unknown policy 'expert.ckpt'" in out.stderr


@pytest.mark.parametrize("script", ["main", "reproduce", "datasets", "collect", "render", "plan", "train_expert"])
def test_help_exits_zero(script):
    """Asking an absl entry point for help is not an error: usage on stdout, exit status 0."""
    out = run_cli(f"experiments/{script}.py", "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--" in out.stdout and "Traceback" not in out.stderr


SCRIPT = '''
import os, sys
print("argv", sys.argv[1:], "path0", os.path.basename(sys.path[0]), "cwd", os.path.basename(os.getcwd()),
      "var", os.environ.get("CLI_TEST_VAR"), "main", __name__)
print("to stderr", file=sys.stderr)
how = sys.argv[1]
if how == "message":
    sys.exit("error: a message")
if how == "raise":
    raise ValueError("boom")
if how == "code":
    sys.exit(3)
'''


@pytest.mark.parametrize("how", ["message", "raise", "code", "none"])
def test_the_warm_runner_runs_a_program_as_a_fresh_interpreter_does(tmp_path, how):
    """run_cli (a fork of a warm server) gives what `python PROGRAM ARGS` gives: output, exit status,
    a traceback for an uncaught exception, the program's own argv, sys.path[0], cwd and environment."""
    from support import program_env

    script = tmp_path / "prog" / "script.py"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    env = program_env(CLI_TEST_VAR=how)
    warm = run_cli(str(script), how, "b c", cwd=tmp_path, env=env)
    fresh = subprocess.run([sys.executable, str(script), how, "b c"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert (warm.returncode, warm.stdout) == (fresh.returncode, fresh.stdout)
    assert warm.stdout.startswith(f"argv ['{how}', 'b c'] path0 prog cwd {tmp_path.name} var {how} main __main__")
    assert warm.stderr.splitlines()[0] == "to stderr"
    assert warm.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    assert ("Traceback" in warm.stderr) == ("Traceback" in fresh.stderr) == (how == "raise")
