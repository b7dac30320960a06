"""The results report: table (markdown, CSV) and plot from a folder of results.json files."""
import csv
import json
import os

import numpy as np
import pytest

from aime_jax import report
from aime_jax.errors import AimeError

from support import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _result(folder, algo, env, modality, demos, normalised, seed=0, embodiment="walker-random", paper=None):
    """A results.json as stages.evaluation() writes it (the fields the report reads, and more)."""
    os.makedirs(folder, exist_ok=True)
    r = {
        "algo": algo, "method": report.METHOD_NAMES[algo], "env": env, "modality": modality,
        "embodiment": None if algo == "bc" else f"/data/{embodiment}",
        "embodiment_name": None if algo == "bc" else embodiment,
        "num_demos": demos, "seed": seed, "episodes": 100, "return_mean": normalised * 5.0, "return_std": 3.0,
        "normalised": normalised, "normalised_std": 1.0, "returns": [normalised * 5.0] * 3,
        "expert_return": 500.0, "paper_expert_return": 943.79,
        "random": {"return_mean": 40.0, "return_std": 8.0, "normalised": 8.0}, "episodes_per_s": 1.0,
    }
    if paper is not None:
        r["normalised_paper"] = paper
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(r, f)
    return r


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # AIME, walker-random -> walk, MDP: three seeds at 100 demos, one run at 10.
    for seed, value in enumerate((20.0, 25.0, 33.0)):
        _result(root / f"aime_walk_s{seed}", "aime", "walker-walk", "mdp", 100, value, seed, paper=value / 2)
    _result(root / "sweep" / "aime_walk_10", "aime", "walker-walk", "mdp", 10, 12.0, paper=6.0)
    _result(root / "bco_walk", "bco", "walker-walk", "mdp", 100, 11.0, paper=5.5)
    _result(root / "bco_walk_10", "bco", "walker-walk", "mdp", 10, 4.0, paper=2.0)
    # BC needs no embodiment data: its runs fill the BC column of every walker-walk MDP row.
    _result(root / "bc" / "s0", "bc", "walker-walk", "mdp", 100, 90.0, paper=45.0)
    _result(root / "bc" / "s1", "bc", "walker-walk", "mdp", 100, 96.0, 1, paper=48.0)
    _result(root / "bc" / "s10", "bc", "walker-walk", "mdp", 10, 70.0, paper=35.0)
    # A cell the paper reports (walker mix -> run, Visual), from a task buffer folder name.
    _result(root / "mix_run", "aime", "walker-run", "visual", 100, 55.0, embodiment="walker-mix", paper=50.0)
    _result(root / "buffer", "bco", "walker-run", "lpomdp", 100, 20.0, embodiment="walker-walk-buffer", paper=18.0)
    # A BC run with no AIME or BCO(0) row of its own.
    _result(root / "bc_cheetah", "bc", "cheetah-run", "lpomdp", 100, 80.0, paper=70.0)
    return root


def _md_row(text, *cells):
    start = "| " + " | ".join(cells) + " |"
    rows = [line for line in text.splitlines() if line.startswith(start)]
    assert len(rows) == 1, (start, text)
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_table_matches_the_results_files(runs, tmp_path):
    files = report.write_report([str(runs)], str(tmp_path / "out"))
    text = open(files["markdown"]).read()

    row = _md_row(text, "walker", "random", "walk", "MDP", "100")
    aime = np.array([20.0, 25.0, 33.0])
    assert row[5] == f"{aime.mean():.1f} ± {aime.std():.1f} (3 runs)"
    assert row[6] == "17.6"  # the paper's AIME for random -> walk, MDP
    assert row[7] == "11.0 (1 run)" and row[8] == "13.5"
    assert row[9] == f"{np.mean([90.0, 96.0]):.1f} ± {np.std([90.0, 96.0]):.1f} (2 runs)"
    row = _md_row(text, "walker", "random", "walk", "MDP", "10")
    assert row[5] == "12.0 (1 run)" and row[7] == "4.0 (1 run)" and row[9] == "70.0 (1 run)"
    assert row[6] == row[8] == ""  # the paper's numbers are for 100 demonstrations
    row = _md_row(text, "walker", "mix", "run", "Visual", "100")
    assert row[5] == "55.0 (1 run)" and row[6] == "61.1" and row[8] == "14.9" and row[9] == ""
    row = _md_row(text, "walker", "walk", "run", "LPOMDP", "100")
    assert row[7] == "20.0 (1 run)" and row[8] == "23.6" and row[5] == ""
    row = _md_row(text, "cheetah", "-", "run", "LPOMDP", "100")
    assert row[9] == "80.0 (1 run)" and row[5] == row[7] == ""
    # Averages over cells beside the paper's headline numbers.
    assert f"| walker | MDP | 100 | {aime.mean():.1f} (1 cell) | 72.5 | 11.0 (1 cell) | 63.5 | 93.0 (1 cell) |" in text

    with open(files["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5
    walk = [r for r in table if r["embodiment"] == "random" and r["num_demos"] == "100"][0]
    assert float(walk["aime_mean"]) == pytest.approx(aime.mean())
    assert float(walk["aime_std"]) == pytest.approx(aime.std())
    assert walk["aime_runs"] == "3" and float(walk["bco_mean"]) == 11.0 and float(walk["bc_mean"]) == 93.0
    assert float(walk["aime_paper"]) == 17.6 and float(walk["bco_paper"]) == 13.5
    # Every number in the CSV comes from the files: recompute each cell from the raw results.
    results = report.find_results([str(runs)])
    assert len(results) == 12
    for r in table:
        for method in report.METHODS:
            if not r[f"{method}_mean"]:
                continue
            values = [
                x["normalised"] for x in results
                if x["algo"] == method and x["env"] == f"{r['domain']}-{r['task']}" and x["modality"] == r["modality"]
                and x["num_demos"] == int(r["num_demos"])
                and (method == "bc" or report.dataset_name(x) == r["embodiment"])
            ]
            assert float(r[f"{method}_mean"]) == pytest.approx(np.mean(values))
            assert int(r[f"{method}_runs"]) == len(values)

    with open(files["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(files["plot"]) > 10_000


def test_paper_normaliser_and_command_line(runs, tmp_path):
    rows = report.build_rows(report.find_results([str(runs)]), normaliser="paper")
    walk = [r for r in rows if r.dataset == "random" and r.num_demos == 100][0]
    assert walk.ours["aime"].mean == pytest.approx(np.mean([10.0, 12.5, 16.5]))
    out = run_cli("experiments/report.py", str(runs), f"--out={tmp_path / 'cli'}")
    assert out.returncode == 0, out.stderr
    assert "| walker | mix | run | Visual | 100 | 55.0 (1 run) | 61.1 |" in out.stdout
    assert sorted(os.listdir(tmp_path / "cli")) == ["demos_plot.png", "results.csv", "results.md"]
    out = run_cli("experiments/report.py", str(tmp_path / "cli"))
    assert out.returncode != 0 and out.stderr.startswith("error: no results.json under")


def test_bad_results_are_named(tmp_path):
    with open(tmp_path / "results.json", "w") as f:
        json.dump({"algo": "aime", "env": "walker-walk"}, f)
    with pytest.raises(AimeError, match=r"results.json: missing \['modality', 'num_demos', 'normalised'\]"):
        report.find_results([str(tmp_path)])
    _result(tmp_path / "x", "aime", "walker-walk", "mdp", 10, 5.0)
    os.remove(tmp_path / "results.json")
    with pytest.raises(AimeError, match="no 'normalised_paper'"):
        report.build_rows(report.find_results([str(tmp_path)]), normaliser="paper")
    with pytest.raises(AimeError, match="does not exist"):
        report.find_results([str(tmp_path / "missing")])


def test_the_demonstrations_plot_is_a_curve_per_task_and_modality(runs):
    fig = report.demos_figure(report.build_rows(report.find_results([str(runs)])))
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert sorted(panels) == ["cheetah-run, LPOMDP", "walker-run, LPOMDP, from walk", "walker-run, Visual, from mix",
                              "walker-walk, MDP, from random"]
    walk = panels["walker-walk, MDP, from random"]
    # Plain counts on a log axis, not 10^1.
    assert walk.get_xscale() == "log" and [t.get_text() for t in walk.get_xticklabels()] == ["10", "100"]
    lines = {line.get_label(): line for line in walk.get_lines()}
    assert sorted(lines) == ["AIME (1-3 runs)", "AIME (paper)", "BC (1-2 runs)", "BCO(0) (1 run)", "BCO(0) (paper)",
                             "expert (100)", "random policy"]
    np.testing.assert_allclose(lines["AIME (1-3 runs)"].get_ydata(), [12.0, np.mean([20.0, 25.0, 33.0])])
    np.testing.assert_allclose(lines["BC (1-2 runs)"].get_ydata(), [70.0, 93.0])
    assert list(lines["AIME (paper)"].get_xdata()) == [100] and list(lines["AIME (paper)"].get_ydata()) == [17.6]
    assert lines["random policy"].get_ydata()[0] == 8.0 and lines["expert (100)"].get_ydata()[0] == 100.0
    # The spread over the seeds: a band where a point has more than one run.
    assert len(walk.collections) >= 2
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_runs_that_went_non_finite_are_left_out_and_listed(runs, tmp_path):
    bad = _result(runs / "curve" / "demos100_seed7", "aime", "walker-walk", "mdp", 100, 0.5, seed=7)
    bad["diverged_at_step"] = 812
    with open(runs / "curve" / "demos100_seed7" / "results.json", "w") as f:
        json.dump(bad, f)
    files = report.write_report([str(runs)], str(tmp_path / "out"))
    text = open(files["markdown"]).read()
    row = _md_row(text, "walker", "random", "walk", "MDP", "100")
    assert row[5].endswith("(3 runs)")
    assert "Left out of the means: 1 run that went non-finite" in text
    assert "demos100_seed7/results.json: AIME, 100 demos, seed 7, non-finite at step 812" in text
