"""The benchmark scripts take config overrides in experiments/main.py's form, --config.a.b=value."""
import importlib.util
import os
import subprocess
import sys

import pytest

from support import REPO

spec = importlib.util.spec_from_file_location("bench_overrides", os.path.join(REPO, "benchmarks", "overrides.py"))
overrides = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overrides)


def test_overrides_are_checked_and_read_as_python_literals():
    items = ["--config.world_model.scan_unroll=5", "--config.world_model.idm.enabled=false",
             "--config.world_model.dtype=bfloat16", "--config.world_model.hidden=(64, 64)"]
    assert overrides.config_overrides(items, allowed="world_model.") == items
    assert overrides.as_dict(items, strip="world_model.") == {
        "scan_unroll": 5, "idm.enabled": False, "dtype": "bfloat16", "hidden": (64, 64)}
    assert overrides.as_dict(["--config.phase2.steps=20"]) == {"phase2.steps": 20}


@pytest.mark.parametrize("items,allowed,message", [
    (["--set=phase2.steps=5"], "", "unrecognised argument '--set=phase2.steps=5'; config overrides take the form "
                                   "--config.a.b=value"),
    (["--config.phase2.steps"], "", "unrecognised argument '--config.phase2.steps'"),
    (["--config.=3"], "", "unrecognised argument '--config.=3'"),
    (["--config.phase2.steps=3"], "world_model.", "--config.phase2.steps cannot be set here; this benchmark takes "
                                                  "--config.world_model.* overrides only"),
])
def test_anything_else_is_refused_in_one_line(items, allowed, message):
    with pytest.raises(SystemExit) as e:
        overrides.config_overrides(items, allowed)
    assert str(e.value).startswith("error: ") and message in str(e.value)


def test_a_script_refuses_the_old_set_option_in_one_line():
    out = subprocess.run([sys.executable, "benchmarks/many_runs.py", "--set=phase2.steps=5"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        "error: unrecognised argument '--set=phase2.steps=5'; config overrides take the form --config.a.b=value, "
        "as in experiments/main.py"], out.stderr
