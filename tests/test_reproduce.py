"""experiments/reproduce.py: a block of the paper's table, its cells, resume and its report."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from aime_jax import config as config_lib
from aime_jax import reproduce
from aime_jax.errors import AimeError, ConfigError
from aime_jax.report import block_markdown

from support import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(domain="walker", modality="mdp"):
    return config_lib.resolve(config_lib.make_config(domain, modality, "quick"))


def test_plan_cells_dirs_and_budgets(tmp_path):
    block = reproduce.make_block("walker-run-buffer", _config(), "tenth", str(tmp_path))
    assert block.tasks == ("walker-stand", "walker-walk", "walker-run")
    assert (block.phase1_steps, block.phase2_steps) == ((10_000,), 5_000)
    names = [c.name for c in block.cells()]
    assert names[:2] == ["datasets", "world_model"]
    assert names[2:5] == ["aime:stand", "bco:stand", "bc:stand"] and len(names) == 11
    assert block.report_name() == "block-tenth"
    aime = reproduce.Cell("aime", "walker-walk", 10_000)
    assert block.cell_dir(aime).endswith("walker-run-buffer-mdp-seed0/walk/aime-p1_10000-p2_5000")
    c = reproduce.cell_config(block, aime)
    assert c.stages == "phase2,eval" and c.world_model_dir == block.world_model_dir(10_000)
    assert c.data.demos_dir == os.path.join(block.root, "walker-walk-expert")
    assert c.data.embodiment_dir == os.path.join(block.root, "walker-run-buffer")
    assert c.phase2.steps == 5_000 and c.env == "walker-walk"
    assert reproduce.cell_config(block, reproduce.Cell("bco", "walker-walk")).stages == "phase1,phase2,eval"
    # One world model, snapshotted at every length a curve asks for; a subset names its report.
    curve = reproduce.make_block("walker-run-buffer", _config(), "tenth", str(tmp_path), tasks=["walk"],
                                 methods=["aime"], phase1_steps=[5000, 2500, 10000])
    assert [c.name for c in curve.cells()] == ["datasets"] + ["world_model"] * 3 + ["aime:walk"] * 3
    assert curve.report_name() == "block-tenth-walk-aime-p1_2500_5000_10000"
    assert reproduce.make_block("cheetah-random", _config("cheetah"), "full", str(tmp_path)).tasks == (
        "cheetah-run", "cheetah-runbackward", "cheetah-flip", "cheetah-flipbackward")


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="cheetah-random"), "is a cheetah dataset but the config is for walker"),
    (dict(dataset="walker-nothing"), "unknown dataset name"),
    (dict(budget="half"), "unknown budget 'half'"),
    (dict(tasks=["fly"]), "unknown walker task 'fly'"),
    (dict(methods=["gail"]), "unknown method(s) ['gail']"),
])
def test_bad_plans_are_refused_in_one_line(tmp_path, kwargs, message):
    args = dict(dataset="walker-stand-buffer", config=_config(), budget="tenth", out=str(tmp_path))
    with pytest.raises(AimeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        reproduce.make_block(**{**args, **kwargs})


def test_deviations_from_the_paper_need_a_name_and_are_recorded(tmp_path):
    args = ["--config.data.root=/data", "--config.phase1.lr=0.001", "--config.seed=3", "--config.phase2.log_every=5",
            "--config.world_model.scan_unroll=5", "--tasks=walk", "--config.data.num_demos=10"]
    assert reproduce.deviations("configs/walker_mdp.py", args) == ["phase1.lr=0.001", "data.num_demos=10"]
    assert reproduce.deviations("configs/walker_mdp.py:quick", []) == ["config walker_mdp.py:quick"]
    with pytest.raises(ConfigError, match="name this deviation"):
        reproduce.make_block("walker-stand-buffer", _config(), "tenth", str(tmp_path), deviations=["phase1.lr=0.001"])
    block = reproduce.make_block("walker-stand-buffer", _config(), "tenth", str(tmp_path), name="lr1e-3",
                                 deviations=["phase1.lr=0.001"])
    assert block.folder.endswith("walker-stand-buffer-mdp-seed0-lr1e-3")


def test_cells_run_alone_name_what_they_wait_for(tmp_path):
    config = _config()
    config.data.root = str(tmp_path / "data")
    block = reproduce.make_block("walker-stand-buffer", config, "tenth", str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="unknown cell"):
        reproduce.run_block(block, ["aime:fly"])
    with pytest.raises(AimeError, match=r"run the datasets cell first \(--cells=datasets\)"):
        reproduce.run_block(block, ["aime:walk"])


def _entry(method, task, normalised=None, paper=None, **kw):
    done = normalised is not None
    return {"cell": f"{method}:{task}", "method": method, "task": f"walker-{task}", "complete": done,
            "normalised": normalised, "normalised_std": 1.0 if done else None, "paper": paper,
            "episodes": 100, "wall_s": {"phase2": 120.0, "eval": 60.0} if done else None,
            "commit": "0123456789abcdef" if done else None, **kw}


def test_report_of_a_block_not_run_yet_marks_every_cell_and_knows_the_paper(tmp_path):
    config = _config()
    config.data.root = str(tmp_path / "data")
    block = reproduce.make_block("walker-run-buffer", config, "tenth", str(tmp_path / "runs"), tasks=["walk"])
    record = reproduce.write_report(block)
    assert [(c["cell"], c["complete"], c["paper"]) for c in record["cells"]] == [
        ("aime:walk", False, 89.1), ("bco:walk", False, 69.5), ("bc:walk", False, None)]
    table = open(os.path.join(block.folder, "block-tenth-walk.md")).read()
    assert "| walk | 10000 | not run | 89.1 | not run | 69.5 | not run |" in table
    assert "World model (shared by every task): not trained yet." in table


def test_block_table_marks_unknown_paper_numbers_and_missing_cells():
    record = {
        "block": "walker-walk-buffer", "modality": "mdp", "budget": "tenth", "phase1_steps": [10000],
        "phase2_steps": 5000, "num_demos": 100, "seed": 0, "command": "reproduce.py", "commit": "abc",
        "datasets_wall_s": {"walker-walk-buffer": 600.0},
        "world_model": {"phase1_steps": [10000], "wall_s": {"phase1": 3600.0}, "snapshots": {"10000": {"phase1_steps": 10000}}},
        "cells": [
            _entry("aime", "stand", 80.5, None, phase1_steps=10000, phase2_steps=5000, normalised_paper=79.0),
            _entry("bco", "stand", 70.25, None),
            _entry("bc", "stand"),
            _entry("aime", "run", 67.0, 67.4, phase1_steps=10000, phase2_steps=5000),
        ],
    }
    table = block_markdown(record)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in table.splitlines() if line.startswith("| stand") or line.startswith("| run")}
    assert rows["stand"][2:7] == ["80.5 ± 1.0 [79.0]", "unknown", "70.2 ± 1.0", "unknown", "not run"]
    assert rows["stand"][7] == "2.0 + 1.0" and rows["stand"][10] == "01234567"
    assert rows["run"][2:4] == ["67.0 ± 1.0", "67.4"]
    assert "phase 1 60.0 minutes to 10000 steps" in table and "the paper's settings." in table


def _cli(args, **popen):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "experiments/reproduce.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _files(folder):
    """path -> modification time of every file under folder."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            out[p] = os.stat(p).st_mtime_ns
    return out


@pytest.mark.slow
def test_tiny_block_end_to_end_killed_and_rerun_redoes_nothing_finished(tmp_path):
    """A tiny block (scales and steps overridden down) killed once its world model is snapshotted
    and rerun: the datasets and the world model are not touched again, every cell completes, the
    block table is written (with the paper's numbers); a third run skips every cell."""
    data, out = tmp_path / "data", tmp_path / "runs"
    args = [
        "--config=configs/walker_mdp.py:quick", "--block=walker-stand-buffer", "--budget=config",
        f"--out={out}", "--tasks=stand", f"--config.data.root={data}", "--config.data.scale=0.004",
        "--config.data.expert_scale=0.01", "--config.data.num_demos=2", "--config.phase1.steps=20",
        "--config.phase1.eval_every=10", "--config.phase1.save_every=10", "--config.phase1.log_every=10",
        "--config.phase2.steps=10", "--config.phase2.eval_every=10", "--config.phase2.save_every=10",
        "--config.phase2.log_every=5", "--config.phase2.eval_episodes=1", "--config.eval.episodes=2",
        "--config.eval.num_envs=2", "--config.bc.idm_steps=20", "--config.bc.idm_max_steps=40",
        "--config.bc.idm_eval_every=20", "--config.bc.min_epochs=1", "--config.bc.max_epochs=2",
        "--config.bc.log_every=10", "--name=tiny",
    ]
    block = out / "walker-stand-buffer-mdp-seed0-tiny"
    snapshot = block / "world_model" / "phase1-20"
    first = _cli(args)
    deadline = time.time() + 600
    while not snapshot.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert snapshot.exists(), first.communicate()[0][-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {p: t for p, t in _files(tmp_path).items() if "/world_model/" in p or "/data/" in p}

    second = _cli(args)
    log = second.communicate(timeout=900)[0]
    assert second.returncode == 0, log[-3000:]
    assert "cell datasets: complete, skipped" in log and "cell world_model @ 20 phase-1 steps: complete" in log
    after = _files(tmp_path)
    assert {p: after[p] for p in before} == before  # nothing finished was redone
    for method in ("aime-p1_20-p2_10", "bco", "bc"):
        results = json.loads((block / "stand" / method / "results.json").read_text())
        assert results["episodes"] == 2 and len(results["returns"]) == 2
    evidence = json.loads((block / "stand" / "aime-p1_20-p2_10" / "diagnostics.json").read_text())["action_evidence"]
    assert set(evidence) >= {"nelbo_per_step_true", "zero_minus_true", "shuffled_minus_true"}
    record = json.loads((block / "block-config-stand.json").read_text())
    cells = {c["cell"]: c for c in record["cells"]}
    assert all(c["complete"] for c in cells.values()) and set(cells) == {"aime:stand", "bco:stand", "bc:stand"}
    assert cells["aime:stand"]["paper"] == 91.6 and cells["bco:stand"]["paper"] == 94.1
    assert set(cells["aime:stand"]["wall_s"]) == {"phase2", "eval", "diagnostics"}
    assert record["data"]["walker-stand-buffer"]["episodes"] == 4
    assert record["world_model"]["val"] and record["world_model"]["snapshots"]["20"]["phase1_steps"] == 20
    table = (block / "block-config-stand.md").read_text()
    assert "| stand | 20 |" in table and "| 91.6 |" in table

    third = _cli(args)
    log = third.communicate(timeout=300)[0]
    assert third.returncode == 0 and log.count("complete, skipped") == 5, log[-3000:]
    reports = {p for p in _files(tmp_path) if "block-config-stand" in p}
    assert {p: t for p, t in _files(tmp_path).items() if p not in reports} == {
        p: t for p, t in after.items() if p not in reports}

    tables = subprocess.run([sys.executable, "experiments/report.py", "--blocks", str(out), f"--out={tmp_path / 'rep'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert tables.returncode == 0, tables.stderr
    assert "| stand | 20 |" in (tmp_path / "rep" / "walker-stand-buffer-mdp-seed0-block-config-stand.md").read_text()
    assert record["name"] == "tiny" and "config walker_mdp.py:quick" in record["deviations"]
    assert "phase1.steps=20" in record["deviations"] and not any("data.root" in d for d in record["deviations"])


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--block=walker-stand-buffer"], "error: --config is required"),
    (["--config=configs/walker_mdp.py"], "error: --block is required"),
    (["--config=configs/walker_mdp.py:nosuch", "--block=walker-stand-buffer"], "unknown config argument 'nosuch'"),
    (["--config=configs/walker_mdp.py", "--block=walker-stand-buffer", "--config.phase1.lr=0.001"], "--name="),
    (["--config=configs/walker_mdp.py", "--block=cheetah-random"], "is a cheetah dataset but the config is for walker"),
    (["--config=configs/walker_mdp.py", "--block=walker-stand-buffer", "--phase1_steps=2k"], "give step counts"),
    (["--config=configs/walker_mdp.py", "--block=walker-stand-buffer", "--cells=aime:walk", "--config.data.root={tmp}"],
     "run the datasets cell first"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    proc = run_cli("experiments/reproduce.py", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out and "Traceback" not in out, out


def test_phase1_curve_is_plotted_only_where_a_task_has_several_lengths(tmp_path):
    from aime_jax.report import plot_phase1_curve

    cells = [_entry("aime", "walk", v, 89.1, phase1_steps=n, phase2_steps=5000)
             for v, n in ((40.0, 2500), (60.0, 5000), (70.0, 10000))] + [_entry("bco", "walk", 55.0)]
    record = {"block": "walker-run-buffer", "modality": "mdp", "phase2_steps": 5000, "cells": cells}
    assert plot_phase1_curve(record, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000
    record["cells"] = cells[2:]
    assert not plot_phase1_curve(record, str(tmp_path / "none.png")) and not (tmp_path / "none.png").exists()


def _given(source, folder):
    """`folder` holding the episodes of `source` as the authors publish theirs: episode files alone."""
    os.makedirs(folder)
    for name in sorted(os.listdir(source)):
        if name.endswith(".npz"):
            shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
    return folder


def _tree(root):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(root) for f in fs}


def test_datasets_given_as_they_are_are_used_and_never_built_into(walker_random_dir, tmp_path, capsys):
    """A block whose data root holds the authors' published files (episodes without our card or
    meta.json) takes them as they are: the datasets cell is complete without building, the record
    marks them as given, and the builder refuses to write into them, in one line."""
    from aime_jax.errors import DatasetError
    from aime_jax.experts import build as build_lib

    root = tmp_path / "data"
    buffer = _given(walker_random_dir, root / "walker-stand-buffer")
    demos = _given(walker_random_dir, root / "walker-stand-expert")
    before = _tree(root)
    config = _config()
    config.data.root = str(root)
    block = reproduce.make_block("walker-stand-buffer", config, "tenth", str(tmp_path / "runs"), tasks=["stand"])
    assert reproduce.is_complete(block, reproduce.Cell("datasets"))
    reproduce._run_datasets(block)
    out = capsys.readouterr().out
    assert f"datasets: using {buffer} as given (3 episodes, not built by aime-jax)" in out
    assert f"datasets: using {demos} as given (3 episodes, not built by aime-jax)" in out
    summary = reproduce.dataset_summary(str(buffer))
    assert summary["given"] and summary["episodes"] == 3 and summary["steps"] == 3 * 500
    with pytest.raises(DatasetError, match=r"holds episodes that aime-jax did not build \(no card.json or "
                                           r"meta.json, e.g. the authors' published files\)"):
        build_lib.build("walker-stand-expert", root=str(root), scale=0.01, progress=False)
    assert _tree(root) == before
    # A folder of ours that a build left unfinished has its meta.json: it is not taken as given.
    (root / "walker-stand-buffer" / "meta.json").write_text("{}")
    assert not build_lib.given(str(buffer)) and not reproduce.is_complete(block, reproduce.Cell("datasets"))


@pytest.mark.slow
def test_a_block_trains_and_scores_on_given_datasets(walker_random_dir, tmp_path):
    """AIME and BC cells of a tiny block on given datasets: trained, evaluated and normalised by
    the given demonstrations' mean return (they carry no card with an expert return)."""
    import numpy as np

    root = tmp_path / "data"
    _given(walker_random_dir, root / "walker-stand-buffer")
    demos = _given(walker_random_dir, root / "walker-stand-expert")
    config = _config()
    config.data.root = str(root)
    config.data.num_demos = 2
    config.phase1.update(steps=10, eval_every=10, save_every=10, log_every=5)
    config.phase2.update(steps=5, eval_every=5, save_every=5, log_every=5, eval_episodes=1)
    config.eval.update(episodes=1, num_envs=1)
    config.bc.update(min_epochs=1, max_epochs=2, log_every=10)
    block = reproduce.make_block("walker-stand-buffer", config, "config", str(tmp_path / "runs"), tasks=["stand"],
                                 methods=["aime", "bc"])
    record = reproduce.run_block(block)
    cells = {c["cell"]: c for c in record["cells"]}
    assert cells["aime:stand"]["complete"] and cells["bc:stand"]["complete"]
    assert record["data"]["walker-stand-buffer"]["given"] and record["data"]["walker-stand-expert"]["given"]
    mean = np.mean([np.load(os.path.join(demos, f))["reward"].sum() for f in os.listdir(demos) if f.endswith(".npz")])
    results = json.loads(open(os.path.join(block.cell_dir(reproduce.Cell("bc", "walker-stand")), "results.json")).read())
    assert results["expert_return"] == pytest.approx(mean, rel=1e-5)
