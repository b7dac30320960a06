"""Every `experiments/main.py` command that the README, docs/scaling.md and the launchers show
passes `--dry_run` on the devices it is shown for: a cluster's command with its cluster's device
and process count (fake CPU devices), the README's single-machine commands on 8, 16 and 32."""
import os
import re
import shlex

import pytest

from support import program_env, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("README.md", "docs/scaling.md", "launch/tpu_pod.sh", "launch/slurm.sbatch", "launch/local.sh")
# Per GPU node in launch/slurm.sbatch (#SBATCH --gres=gpu:8); a TPU v4 host holds 4 chips.
GPUS_PER_NODE = 8
TPU_CHIPS_PER_HOST = 4


def shown_commands(source: str) -> list[str]:
    """The shell commands of `source` that run experiments/main.py, continuation lines joined:
    in a markdown file those of its code blocks, in a launcher those of its comment header."""
    lines, in_code = [], False
    for line in open(os.path.join(REPO, source)):
        line = line.strip()
        if source.endswith(".md"):
            if line.startswith("```"):
                in_code = not in_code
                continue
            if not in_code or line.startswith("#"):
                continue
        else:
            if not line.startswith("#") or line.startswith(("#!", "#SBATCH")):
                continue
            line = line[1:].strip()
        lines.append(line)
    commands, current = [], ""
    for line in lines:
        current += line
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        if "experiments/main.py" in current and "..." not in current:
            commands.append(current)
        current = ""
    return commands


def layouts(command: str) -> list[tuple[int, int]]:
    """(devices, processes) the command is shown for."""
    tpu = re.search(r"TPU_NAME=\S*v4-(\d+)", command)
    if "launch/tpu_pod.sh" in command:
        assert tpu, f"name the TPU type in the TPU_NAME of {command!r} (e.g. aime-v4-32)"
        chips = int(tpu.group(1)) // 2  # a v4-N slice has N TensorCores, 2 per chip (one JAX device)
        return [(chips, max(1, chips // TPU_CHIPS_PER_HOST))]
    if "sbatch" in command:
        nodes = int(re.search(r"--nodes=(\d+)", command).group(1))
        devices = nodes * GPUS_PER_NODE
        one_per_node = "--ntasks-per-node=1" in command
        return [(devices, nodes if one_per_node else devices)]
    local = re.search(r"launch/local\.sh (\d+)", command)
    if local:
        per_process = re.search(r"AIME_LOCAL_DEVICES=(\d+)", command)
        processes = int(local.group(1))
        return [(processes * (int(per_process.group(1)) if per_process else 1), processes)]
    return [(8, 1), (16, 1), (32, 1)]


def main_args(command: str) -> list[str]:
    words = shlex.split(command)
    start = words.index("experiments/main.py")
    return words[start + 1 :]


CASES = [
    pytest.param(source, command, devices, processes, id=f"{source}:{devices}x{processes}:{i}")
    for source in SOURCES
    for i, command in enumerate(shown_commands(source))
    for devices, processes in layouts(command)
]


def test_the_docs_show_cluster_commands_for_8_16_and_32_devices():
    shown = {(source, devices, processes) for source, _, devices, processes in (c.values for c in CASES)}
    assert ("docs/scaling.md", 16, 4) in shown  # TPU v4-32: 4 hosts x 4 chips
    assert ("docs/scaling.md", 16, 16) in shown  # SLURM, 2 nodes x 8 GPUs
    assert ("docs/scaling.md", 4, 2) in shown  # launch/local.sh, 2 processes x 2 devices
    assert {("README.md", d, 1) for d in (8, 16, 32)} <= shown
    assert {"launch/tpu_pod.sh", "launch/slurm.sbatch", "launch/local.sh"} <= {s for s, _, _ in shown}


@pytest.mark.slow
@pytest.mark.parametrize("source,command,devices,processes", CASES)
def test_shown_command_passes_dry_run(source, command, devices, processes, tmp_path):
    # Relative paths (configs/, data/, runs/) resolve in an empty folder that sees the configs.
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    env = program_env(WANDB_MODE="disabled", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for name in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        env.pop(name, None)
    # What the launcher would set: the process count (no process connects in a dry run).
    env["SLURM_NTASKS" if "sbatch" in command else "JAX_NUM_PROCESSES"] = str(processes)
    out = run_cli(os.path.join(REPO, "experiments", "main.py"), *main_args(command), "--dry_run", cwd=tmp_path, env=env)
    assert out.returncode == 0 and "the command is valid" in out.stdout, (command, out.stdout, out.stderr[-2000:])
    plural = "es" if processes > 1 else ""
    assert f"on {devices} devices ({processes} process{plural})" in out.stdout, out.stdout
