"""What a cluster run meets before it trains: cloud URLs refused in one line, config.mesh.num_devices
in multi-process runs, the dry run's process count, the compilation cache setting, and the TPU
requirements file."""
import ast
import json
import os
import re
import sys

import pytest

from aime_jax import config as config_lib
from aime_jax import locks, parallel, stages
from aime_jax.atomic import write_json, writable_dir
from aime_jax.errors import ConfigError

from support import program_env, run_cli, run_program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main_module():
    """experiments/main.py as experiments/sweep.py loads it: once per process (absl flags)."""
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    try:
        import sweep
    finally:
        sys.path.pop(0)
    return sweep._main_module()


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_cloud_urls_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        writable_dir("gs://bucket/runs/a", "--workdir")
    assert _one_line(e).startswith("--workdir: 'gs://bucket/runs/a' is a cloud URL") and "gcsfuse" in str(e.value)
    with pytest.raises(ConfigError):
        write_json("s3://bucket/a/config.json", {})
    with pytest.raises(ConfigError):
        with locks.hold("gs://bucket/data/walker-random", "building walker-random"):
            pass
    from aime_jax.experts.build import build

    with pytest.raises(ConfigError, match="the data root: 'gs://bucket/data' is a cloud URL"):
        build("walker-random", "mdp", "gs://bucket/data")
    config = config_lib.resolve(config_lib.make_config("walker", "mdp", "quick"))
    config.data.root = "gs://bucket/data"
    with pytest.raises(ConfigError, match="config.data.root: 'gs://bucket/data' is a cloud URL"):
        config_lib.validate(config, 1)
    # A local folder that merely contains a colon is a folder.
    writable_dir("runs/a:b", "--workdir")
    assert sorted(os.listdir(tmp_path)) == ["runs"]


def test_main_refuses_a_cloud_workdir_in_one_line_and_writes_nothing(tmp_path):
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    out = run_cli(os.path.join(REPO, "experiments", "main.py"), "--config=configs/walker_mdp.py:quick",
                  "--workdir=gs://bucket/runs/walker", cwd=tmp_path, env=program_env(WANDB_MODE="disabled"))
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("error: --workdir: 'gs://bucket/runs/walker' is a cloud URL")
    assert sorted(os.listdir(tmp_path)) == ["configs"]  # no local "gs:" folder, no data
    main = _main_module()
    with pytest.raises(SystemExit, match="config.world_model_dir: 'gs://b/wm' is a cloud URL"):
        main.check_command(["main.py", "--config=" + os.path.join(REPO, "configs", "walker_mdp.py"),
                            f"--workdir={tmp_path / 'run'}", "--config.world_model_dir=gs://b/wm"])


def test_mesh_num_devices_in_multi_process_runs():
    # All the devices of every process (0, or their total) is what a multi-process mesh can be.
    for n in (0, 16):
        parallel.check_num_devices(n, 16, 4)
    with pytest.raises(ConfigError) as e:
        parallel.check_num_devices(8, 16, 4)
    message = _one_line(e)
    assert message.startswith("config.mesh.num_devices=8 selects part of the 16 devices of this 4-process run")
    assert "set it to 0 (or 16)" in message
    with pytest.raises(ConfigError, match="config.mesh.num_devices=17 but 16 devices are available"):
        parallel.check_num_devices(17, 16, 1)
    parallel.check_num_devices(8, 16, 1)  # one process: its first 8 devices

    main = _main_module()
    argv = ["main.py", "--config=" + os.path.join(REPO, "configs", "walker_mdp.py"), "--workdir=/nonexistent/run"]
    main.check_command(argv + ["--config.mesh.num_devices=16"], num_devices=16, process_count=4)
    with pytest.raises(SystemExit, match="error: config.mesh.num_devices=8 selects part of the 16 devices"):
        main.check_command(argv + ["--config.mesh.num_devices=8"], num_devices=16, process_count=4)


@pytest.mark.parametrize("env,count", [
    ({}, 1), ({"JAX_NUM_PROCESSES": "4"}, 4), ({"SLURM_NTASKS": "16"}, 16),
    ({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, 4), ({"JAX_NUM_PROCESSES": "2", "SLURM_NTASKS": "16"}, 2),
])
def test_the_dry_run_reads_the_launchers_process_count(monkeypatch, env, count):
    for name in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parallel.launched_process_count() == count


def test_the_compilation_cache_changes_no_run_identity(tmp_path):
    config = config_lib.resolve(config_lib.make_config("walker", "mdp", "quick"))
    old = json.loads(config.to_json())
    del old["compile_cache_dir"]  # a run directory written before the setting existed
    config.compile_cache_dir = str(tmp_path / "cache")
    assert stages.config_changes(old, config) == []
    assert "compile_cache_dir" not in stages.phase1_identity(config)


def test_use_compile_cache_reaches_jax_before_the_first_compilation(tmp_path):
    # A fresh interpreter: this one's JAX must not start writing a cache for the other tests.
    out = run_program("compile_cache", tmp_path / "cache", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.listdir(tmp_path / "cache")  # the executable was written there


def _requirement_names(lines) -> dict[str, str]:
    """{package name: version specifier} of requirement lines."""
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?(.*)", line).groups()
            out[name.lower().replace("_", "-")] = spec.strip()
    return out


def test_tpu_requirements_install_what_setup_py_installs():
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    install = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", "") == "INSTALL_REQUIRES")
    wanted = _requirement_names(ast.literal_eval(install))
    tpu = _requirement_names(open(os.path.join(REPO, "requirements-tpu.txt")))
    assert {"matplotlib", "pyyaml"} <= set(wanted)  # report.py's plots, sweep.py's YAML
    assert wanted == tpu  # jax as jax[tpu], everything else as setup.py has it
