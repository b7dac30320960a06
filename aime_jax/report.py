"""The paper-style results: a table (markdown and CSV) and a plot, from runs' results.json files.

Rows are embodiment dataset x task x modality (x number of demonstrations), columns AIME, BCO(0)
and BC: the normalised return's mean and standard deviation (population) over the runs of a cell
(seeds, repeats), with the number of runs, and the paper's published AIME and BCO(0) numbers
beside ours where PAPER.md has them. BC uses no embodiment data, so its score appears in every
row of its task, modality and number of demonstrations. The plot shows normalised return against
the number of demonstrations, one panel per task and modality (`demos_figure`).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Iterable, Sequence

import numpy as np

from aime_jax.atomic import check_local_path
from aime_jax.errors import AimeError

METHODS = ("aime", "bco", "bc")
METHOD_NAMES = {"aime": "AIME", "bco": "BCO(0)", "bc": "BC"}
MODALITY_ORDER = {"mdp": 0, "lpomdp": 1, "visual": 2}
MODALITY_NAMES = {"mdp": "MDP", "lpomdp": "LPOMDP", "visual": "Visual"}
# Which normalised return of results.json a table shows: against our expert (the demonstrations'
# mean return) or against the paper's expert return.
NORMALISERS = {"ours": "normalised", "paper": "normalised_paper"}
REQUIRED = ("algo", "env", "modality", "num_demos", "normalised")

# The number of demonstrations behind the paper's table: its numbers sit beside rows of this many.
PAPER_DEMOS = 100
# The paper's published normalised returns (PAPER.md, 100 demonstrations, one run per cell):
# (domain, embodiment dataset, task, modality) -> {method: score}.
PAPER_CELLS: dict[tuple[str, str, str, str], dict[str, float]] = {
    ("walker", "mix", "run", "visual"): {"aime": 61.1, "bco": 14.9},
    ("walker", "mix", "walk", "visual"): {"aime": 89.7, "bco": 34.6},
    ("walker", "walk", "run", "lpomdp"): {"aime": 67.4, "bco": 23.6},
    ("walker", "random", "walk", "mdp"): {"aime": 17.6, "bco": 13.5},
    # The walker MDP blocks of the stand and run task buffers (the table of issue 22).
    ("walker", "stand", "stand", "mdp"): {"aime": 91.6, "bco": 94.1},
    ("walker", "stand", "walk", "mdp"): {"aime": 86.9, "bco": 89.6},
    ("walker", "stand", "run", "mdp"): {"aime": 57.7, "bco": 21.9},
    ("walker", "run", "stand", "mdp"): {"aime": 92.6, "bco": 84.5},
    ("walker", "run", "walk", "mdp"): {"aime": 89.1, "bco": 69.5},
    ("walker", "run", "run", "mdp"): {"aime": 80.0, "bco": 84.1},
}
# The paper's headline averages over every embodiment dataset x task cell (PAPER.md):
# (domain, modality) -> {method: score}.
PAPER_AVERAGES: dict[tuple[str, str], dict[str, float]] = {
    ("walker", "mdp"): {"aime": 72.5, "bco": 63.5},
    ("walker", "lpomdp"): {"aime": 72.2, "bco": 41.4},
    ("walker", "visual"): {"aime": 63.8, "bco": 27.3},
    ("cheetah", "mdp"): {"aime": 39.1, "bco": 41.6},
    ("cheetah", "lpomdp"): {"aime": 39.5, "bco": 33.7},
    ("cheetah", "visual"): {"aime": 37.3, "bco": 17.0},
}


def find_results(paths: Iterable[str]) -> list[dict]:
    """Every results.json under `paths` (folders searched recursively, or the files themselves),
    each loaded with its `path`; raises AimeError when there is none or one is malformed."""
    files: list[str] = []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            for root, _, names in os.walk(path):
                files.extend(os.path.join(root, n) for n in names if n == "results.json")
        else:
            raise AimeError(f"{path!r} does not exist; pass run directories or results.json files")
    if not files:
        raise AimeError(f"no results.json under {', '.join(map(repr, paths))}; run the eval stage first")
    results = []
    for f in sorted(set(files)):
        try:
            with open(f) as fh:
                r = json.load(fh)
        except (OSError, ValueError) as e:
            raise AimeError(f"{f}: not a readable results file ({e})") from None
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise AimeError(f"{f}: missing {missing}; is it a results.json written by the eval stage?")
        if r["algo"] not in METHODS:
            raise AimeError(f"{f}: unknown algo {r['algo']!r}; expected one of {', '.join(METHODS)}")
        results.append({**r, "path": f})
    return results


def domain_and_task(env: str) -> tuple[str, str]:
    domain, _, task = env.partition("-")
    return domain, task


def dataset_name(result: dict) -> str | None:
    """The embodiment dataset as the paper names it (random, mix, walk, explore, ...): the
    folder name without its `<domain>-` prefix and `-buffer` suffix; None for BC."""
    if result["algo"] == "bc":
        return None
    name = result.get("embodiment_name") or os.path.basename(os.path.normpath(result.get("embodiment") or ""))
    domain, _ = domain_and_task(result["env"])
    if name.startswith(domain + "-"):
        name = name[len(domain) + 1 :]
    if name.endswith("-buffer"):
        name = name[: -len("-buffer")]
    return name or "unknown"


@dataclasses.dataclass
class Score:
    """One method's normalised return in one cell, over `len(values)` runs."""

    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values))

    @property
    def runs(self) -> int:
        return len(self.values)


@dataclasses.dataclass
class Row:
    domain: str
    dataset: str | None
    task: str
    modality: str
    num_demos: int
    ours: dict[str, Score]
    paper: dict[str, float]
    # The random policy's normalised return, from each results.json of the row.
    random: list[float] = dataclasses.field(default_factory=list)

    def key(self):
        return (self.domain, self.dataset or "", self.task, MODALITY_ORDER.get(self.modality, 9),
                self.modality, self.num_demos)


def _value(result: dict, field: str) -> float:
    if field not in result or result[field] is None:
        raise AimeError(f"{result['path']}: has no {field!r} (no paper expert return for {result['env']}); "
                        "use --normaliser=ours")
    return float(result[field])


def _random_level(result: dict, normaliser: str) -> float | None:
    """The random policy's normalised return in `result`, against the same expert return."""
    rand = result.get("random") or {}
    if normaliser == "ours":
        return rand.get("normalised")
    if rand.get("return_mean") is None or not result.get("paper_expert_return"):
        return None
    return 100.0 * rand["return_mean"] / result["paper_expert_return"]


def diverged(results: Sequence[dict]) -> list[dict]:
    """The runs of a program of many runs that went non-finite (their results.json says at which
    step): left out of the table's means, and listed under it."""
    return [r for r in results if r.get("diverged_at_step")]


def build_rows(results: Sequence[dict], normaliser: str = "ours") -> list[Row]:
    """The table: one row per (domain, dataset, task, modality, demos) with AIME or BCO(0)
    results, plus one per BC (task, modality, demos) that no such row covers. Runs that went
    non-finite (`diverged`) are left out."""
    if normaliser not in NORMALISERS:
        raise AimeError(f"unknown normaliser {normaliser!r}; use one of {', '.join(NORMALISERS)}")
    field = NORMALISERS[normaliser]
    cells: dict[tuple, dict[str, list[float]]] = {}
    bc: dict[tuple, list[float]] = {}
    randoms: dict[tuple, list[float]] = {}
    for r in results:
        if r.get("diverged_at_step"):
            continue
        domain, task = domain_and_task(r["env"])
        value = _value(r, field)
        level = _random_level(r, normaliser)
        demos = int(r["num_demos"])
        if r["algo"] == "bc":
            bc.setdefault((domain, task, r["modality"], demos), []).append(value)
            key = (domain, None, task, r["modality"], demos)
        else:
            key = (domain, dataset_name(r), task, r["modality"], demos)
            cells.setdefault(key, {}).setdefault(r["algo"], []).append(value)
        if level is not None:
            randoms.setdefault(key, []).append(float(level))
    rows = []
    covered = set()
    for (domain, dataset, task, modality, demos), by_method in cells.items():
        ours = {m: Score(v) for m, v in by_method.items()}
        bc_key = (domain, task, modality, demos)
        if bc_key in bc:
            ours["bc"] = Score(bc[bc_key])
            covered.add(bc_key)
        paper = PAPER_CELLS.get((domain, dataset, task, modality), {}) if demos == PAPER_DEMOS else {}
        random = randoms.get((domain, dataset, task, modality, demos), [])
        rows.append(Row(domain, dataset, task, modality, demos, ours, paper, random))
    for (domain, task, modality, demos), values in bc.items():
        if (domain, task, modality, demos) not in covered:
            random = randoms.get((domain, None, task, modality, demos), [])
            rows.append(Row(domain, None, task, modality, demos, {"bc": Score(values)}, {}, random))
    return sorted(rows, key=Row.key)


def _cell(score: Score | None) -> str:
    if score is None:
        return ""
    if score.runs == 1:
        return f"{score.mean:.1f} (1 run)"
    return f"{score.mean:.1f} ± {score.std:.1f} ({score.runs} runs)"


def _paper(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def averages(rows: Sequence[Row]) -> list[dict]:
    """Our mean over the cells of each (domain, modality, demos) beside the paper's averages."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for row in rows:
        if row.dataset is None:
            continue
        group = groups.setdefault((row.domain, row.modality, row.num_demos), {})
        for m, score in row.ours.items():
            group.setdefault(m, []).append(score.mean)
    out = []
    for (domain, modality, demos), by_method in sorted(groups.items(), key=lambda kv: (kv[0][0], MODALITY_ORDER.get(kv[0][1], 9), kv[0][2])):
        paper = PAPER_AVERAGES.get((domain, modality), {}) if demos == PAPER_DEMOS else {}
        out.append({"domain": domain, "modality": modality, "num_demos": demos,
                    **{f"{m}_mean": float(np.mean(v)) for m, v in by_method.items()},
                    **{f"{m}_cells": len(v) for m, v in by_method.items()},
                    **{f"{m}_paper": v for m, v in paper.items()}})
    return out


def markdown(rows: Sequence[Row], normaliser: str = "ours", left_out: Sequence[dict] = ()) -> str:
    against = "our expert, the demonstrations' mean return" if normaliser == "ours" else "the paper's expert returns"
    lines = [
        "# Results",
        "",
        f"Normalised return (100 x return / expert return, against {against}): mean ± std over runs.",
        f"The paper's numbers (PAPER.md) are for {PAPER_DEMOS} demonstrations, one run per cell. BC needs no",
        "embodiment data: its score is repeated in every row of its task and modality.",
        "",
        "| domain | embodiment | task | modality | demos | AIME | AIME (paper) | BCO(0) | BCO(0) (paper) | BC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.domain} | {r.dataset or '-'} | {r.task} | {MODALITY_NAMES.get(r.modality, r.modality)} | "
            f"{r.num_demos} | {_cell(r.ours.get('aime'))} | {_paper(r.paper.get('aime'))} | "
            f"{_cell(r.ours.get('bco'))} | {_paper(r.paper.get('bco'))} | {_cell(r.ours.get('bc'))} |"
        )
    avg = averages(rows)
    if avg:
        lines += [
            "",
            "## Averages over the cells above",
            "",
            "| domain | modality | demos | AIME | AIME (paper) | BCO(0) | BCO(0) (paper) | BC |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a in avg:
            def ours(m):
                if m + "_mean" not in a:
                    return ""
                cells = a[m + "_cells"]
                return f"{a[m + '_mean']:.1f} ({cells} cell{'s' if cells > 1 else ''})"

            lines.append(
                f"| {a['domain']} | {MODALITY_NAMES.get(a['modality'], a['modality'])} | {a['num_demos']} | "
                f"{ours('aime')} | {_paper(a.get('aime_paper'))} | {ours('bco')} | {_paper(a.get('bco_paper'))} | "
                f"{ours('bc')} |"
            )
    if left_out:
        lines += ["", f"Left out of the means: {len(left_out)} run{'s' if len(left_out) > 1 else ''} that went "
                  "non-finite in a program of many runs (their results.json scores the parameters of the step "
                  "before):", ""]
        lines += [f"- {r['path']}: {r.get('method', r['algo'])}, {r['num_demos']} demos, seed {r.get('seed')}, "
                  f"non-finite at step {r['diverged_at_step']}" for r in left_out]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["domain", "embodiment", "task", "modality", "num_demos"] + [
    f"{m}_{s}" for m in METHODS for s in ("mean", "std", "runs")
] + ["aime_paper", "bco_paper"]


def write_csv(rows: Sequence[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            line = {"domain": r.domain, "embodiment": r.dataset or "", "task": r.task, "modality": r.modality,
                    "num_demos": r.num_demos, "aime_paper": r.paper.get("aime", ""), "bco_paper": r.paper.get("bco", "")}
            for m in METHODS:
                score = r.ours.get(m)
                line.update({f"{m}_mean": score.mean if score else "", f"{m}_std": score.std if score else "",
                             f"{m}_runs": score.runs if score else ""})
            writer.writerow(line)


def _band(ax, points: list[tuple[int, Score]], color: str, label: str) -> None:
    """The mean over runs against the number of demonstrations, its spread (std) as a band."""
    x = [n for n, _ in points]
    mean = np.array([score.mean for _, score in points])
    std = np.array([score.std for _, score in points])
    runs = sorted({score.runs for _, score in points})
    shown = f"{runs[0]}" if len(runs) == 1 else f"{runs[0]}-{runs[-1]}"
    ax.plot(x, mean, marker="o", color=color, label=f"{label} ({shown} run{'s' if runs[-1] > 1 else ''})")
    if any(score.runs > 1 for _, score in points):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def demos_figure(rows: Sequence[Row]):
    """Normalised return against the number of demonstrations, one panel per (task, modality):
    a line per method and embodiment dataset (the mean over runs, e.g. seeds, with its std as a
    band), BC, the random policy's and the expert's (100) levels, and the paper's numbers where
    PAPER.md has them (at 100 demonstrations). Demonstration counts are plain tick labels on a
    log axis. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, list[Row]] = {}
    for r in rows:
        panels.setdefault((r.domain, r.task, r.modality), []).append(r)
    n = len(panels)
    cols = min(3, n)
    fig_rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(fig_rows, cols, figsize=(5.0 * cols, 3.8 * fig_rows), squeeze=False)
    colors = {"aime": ("tab:blue", "tab:purple", "tab:cyan", "tab:olive"), "bco": ("tab:orange", "tab:red", "tab:brown"),
              "bc": ("tab:green",)}
    for ax, ((domain, task, modality), cell) in zip(axes.flat, panels.items()):
        datasets = sorted({r.dataset for r in cell if r.dataset is not None})
        for m in ("aime", "bco"):
            for i, dataset in enumerate(datasets):
                points = sorted((r.num_demos, r.ours[m]) for r in cell if r.dataset == dataset and m in r.ours)
                if not points:
                    continue
                color = colors[m][i % len(colors[m])]
                label = METHOD_NAMES[m] + (f" from {dataset}" if len(datasets) > 1 else "")
                _band(ax, points, color, label)
                paper = next((r.paper[m] for r in cell if r.dataset == dataset and m in r.paper), None)
                if paper is not None:
                    ax.plot([PAPER_DEMOS], [paper], marker="*", markersize=12, linestyle="none", color=color,
                            markeredgecolor="black", label=f"{label} (paper)")
        bc = {r.num_demos: r.ours["bc"] for r in cell if "bc" in r.ours}
        if bc:
            _band(ax, sorted(bc.items()), colors["bc"][0], METHOD_NAMES["bc"])
        ax.axhline(100.0, color="black", linestyle="--", linewidth=1, label="expert (100)")
        random = [v for r in cell for v in r.random]
        if random:
            ax.axhline(float(np.mean(random)), color="gray", linestyle=":", linewidth=1.2, label="random policy")
        counts = sorted({r.num_demos for r in cell} | ({PAPER_DEMOS} if any(r.paper for r in cell) else set()))
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
        if len(counts) == 1:
            ax.set_xlim(counts[0] / 2, counts[0] * 2)
        title = f"{domain}-{task}, {MODALITY_NAMES.get(modality, modality)}"
        ax.set_title(title + (f", from {datasets[0]}" if len(datasets) == 1 else ""), fontsize=9)
        ax.set_xlabel("demonstrations")
        ax.set_ylabel("normalised return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot(rows: Sequence[Row], path: str) -> None:
    """`demos_figure` written to `path`."""
    import matplotlib.pyplot as plt

    fig = demos_figure(rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(paths: Sequence[str], out: str, normaliser: str = "ours") -> dict[str, str]:
    """Collects the results under `paths` and writes results.md, results.csv and
    demos_plot.png to `out`; returns their paths."""
    results = find_results(paths)
    rows = build_rows(results, normaliser)
    if not rows:
        raise AimeError(f"every run under {', '.join(map(repr, paths))} went non-finite; there is nothing to report")
    check_local_path(out, "--out")
    os.makedirs(out, exist_ok=True)
    files = {k: os.path.join(out, name) for k, name in
             (("markdown", "results.md"), ("csv", "results.csv"), ("plot", "demos_plot.png"))}
    with open(files["markdown"], "w") as f:
        f.write(markdown(rows, normaliser, diverged(results)))
    write_csv(rows, files["csv"])
    plot(rows, files["plot"])
    return files


# ---- a reproduced block (aime_jax/reproduce.py) ---------------------------------------------------

def paper_cell(domain: str, dataset: str | None, task: str, modality: str, method: str) -> float | None:
    """The paper's normalised return of one method in one cell (100 demonstrations), or None."""
    return PAPER_CELLS.get((domain, dataset, task, modality), {}).get(method)


def _block_score(entry: dict | None) -> str:
    if entry is None:
        return ""
    if not entry.get("complete") or entry.get("normalised") is None:
        return "not run"
    paper = entry.get("normalised_paper")
    return f"{entry['normalised']:.1f} ± {entry['normalised_std']:.1f}" + ("" if paper is None else f" [{paper:.1f}]")


def _block_paper(entry: dict | None) -> str:
    if entry is None:
        return ""
    return "unknown" if entry.get("paper") is None else f"{entry['paper']:.1f}"


def _minutes(wall: dict | None, stages: Sequence[str]) -> str:
    if not wall:
        return ""
    return " + ".join(f"{wall[s] / 60:.1f}" for s in stages if s in wall)


def _short_commit(commit: str | None) -> str:
    return "" if not commit else commit[:8] + ("+dirty" if commit.endswith("+dirty") else "")


BLOCK_WALL = {"aime": ("phase2", "eval"), "bco": ("phase1", "phase2", "eval"), "bc": ("phase2", "eval")}


def block_rows(record: dict) -> list[dict]:
    """One row per (task, phase-1 steps): the three methods' cells side by side."""
    by_task: dict[str, dict] = {}
    for entry in record["cells"]:
        by_task.setdefault(entry["task"], {}).setdefault(entry["method"], []).append(entry)
    rows = []
    for task, methods in by_task.items():
        aime = methods.get("aime") or [None]
        for entry in aime:
            row = {"task": task.split("-", 1)[1], "phase1_steps": entry["phase1_steps"] if entry else None,
                   "phase2_steps": entry["phase2_steps"] if entry else None,
                   "aime": entry, "bco": (methods.get("bco") or [None])[0], "bc": (methods.get("bc") or [None])[0]}
            rows.append(row)
    return rows


def block_markdown(record: dict) -> str:
    """The block's table: per cell AIME, BCO(0) and BC as normalised return ± std over the
    evaluation episodes, the paper's number beside it ('unknown' where PAPER_CELLS has none),
    the wall time per stage and the commit."""
    modality = MODALITY_NAMES.get(record["modality"], record["modality"])
    data_wall = record.get("datasets_wall_s") or {}
    wm = record.get("world_model") or {}
    lines = [
        f"# {record['block']} -> {{{', '.join(sorted({e['task'].split('-', 1)[1] for e in record['cells']}))}}}, "
        f"{modality}, budget {record['budget']}",
        "",
        f"Phase 1: {', '.join(str(n) for n in record['phase1_steps'])} steps; phase 2: {record['phase2_steps']} "
        f"steps; {record['num_demos']} demonstrations; seed {record['seed']} (one run per cell); "
        + (f"deviations from the paper's settings ({record.get('name')}): {', '.join(record['deviations'])}. "
           if record.get("deviations") else "the paper's settings. ")
        + "Normalised "
        "return: 100 x return / our expert's return (the demonstrations' mean), mean ± std over the "
        "evaluation episodes; [in brackets: the mean against the paper's expert return]; the paper's "
        "number (100 episodes, its own experts) beside it.",
        "",
        "| task | phase-1 steps | AIME | AIME (paper) | BCO(0) | BCO(0) (paper) | BC | "
        "minutes AIME (phase 2 + eval) | minutes BCO(0) (IDM + BC + eval) | minutes BC (train + eval) | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in block_rows(record):
        commits = sorted({_short_commit(row[m].get("commit")) for m in METHODS if row[m] and row[m].get("commit")})
        lines.append(
            f"| {row['task']} | {row['phase1_steps'] or ''} | {_block_score(row['aime'])} | {_block_paper(row['aime'])} | "
            f"{_block_score(row['bco'])} | {_block_paper(row['bco'])} | {_block_score(row['bc'])} | "
            f"{_minutes((row['aime'] or {}).get('wall_s'), BLOCK_WALL['aime'])} | "
            f"{_minutes((row['bco'] or {}).get('wall_s'), BLOCK_WALL['bco'])} | "
            f"{_minutes((row['bc'] or {}).get('wall_s'), BLOCK_WALL['bc'])} | {', '.join(commits)} |"
        )
    lines.append("")
    if wm:
        wall = (wm.get("wall_s") or {}).get("phase1")
        goal = max(wm["phase1_steps"])
        done = all((wm.get("snapshots") or {}).get(str(n)) for n in wm["phase1_steps"])
        if not wall:
            lines.append("World model (shared by every task): not trained yet.")
        elif done:
            lines.append(f"World model (shared by every task): phase 1 {wall / 60:.1f} minutes to {goal} steps.")
        else:
            lines.append(f"World model (shared by every task): phase 1 running, {wall / 60:.1f} minutes so far, "
                         f"{wm.get('trained_steps', 0)} of {goal} steps.")
    if data_wall:
        lines.append("Datasets: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in data_wall.items()) + ".")
    else:
        lines.append("Datasets: complete before this block ran (their build was not timed here).")
    lines.append(f"Command: `{record['command']}`; report written at commit {_short_commit(record['commit'])}.")
    return "\n".join(lines) + "\n"


BLOCK_CSV_FIELDS = ["block", "modality", "budget", "task", "phase1_steps", "phase2_steps"] + [
    f"{m}_{s}" for m in METHODS for s in ("mean", "std", "mean_paper_normaliser", "episodes", "paper", "minutes", "commit")]


def block_csv(record: dict, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, BLOCK_CSV_FIELDS)
        writer.writeheader()
        for row in block_rows(record):
            line = {"block": record["block"], "modality": record["modality"], "budget": record["budget"],
                    "task": row["task"], "phase1_steps": row["phase1_steps"] or "",
                    "phase2_steps": row["phase2_steps"] or ""}
            for m in METHODS:
                e = row[m] or {}
                done = e.get("complete") and e.get("normalised") is not None
                wall = e.get("wall_s") or {}
                line.update({
                    f"{m}_mean": e["normalised"] if done else "",
                    f"{m}_std": e["normalised_std"] if done else "",
                    f"{m}_mean_paper_normaliser": e.get("normalised_paper", "") if done else "",
                    f"{m}_episodes": e.get("episodes", "") if done else "",
                    f"{m}_paper": ("unknown" if e.get("paper") is None else e["paper"]) if e else "",
                    f"{m}_minutes": round(sum(wall.get(s, 0.0) for s in BLOCK_WALL[m]) / 60, 2) if wall else "",
                    f"{m}_commit": e.get("commit") or "",
                })
            writer.writerow(line)


def find_blocks(paths: Iterable[str]) -> list[str]:
    """Every block report (`block-*.json`, written by experiments/reproduce.py) under `paths`."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            for root, _, names in os.walk(path):
                found.extend(os.path.join(root, n) for n in names if n.startswith("block-") and n.endswith(".json"))
        else:
            raise AimeError(f"{path!r} does not exist; pass block folders or block-*.json files")
    if not found:
        raise AimeError(f"no block-*.json under {', '.join(map(repr, paths))}; run experiments/reproduce.py first")
    return sorted(set(found))


def plot_phase1_curve(record: dict, path: str) -> bool:
    """AIME's normalised return against the world model's training length, a panel per task
    with more than one length, BCO(0), BC and the paper's AIME as lines; False if none has."""
    rows = [r for r in block_rows(record) if r["aime"] and r["aime"].get("complete")]
    tasks = sorted({r["task"] for r in rows if sum(x["task"] == r["task"] for x in rows) > 1})
    if not tasks:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        points = sorted((r["phase1_steps"], r["aime"]) for r in rows if r["task"] == task)
        ax.errorbar([p[0] for p in points], [p[1]["normalised"] for p in points],
                    yerr=[p[1]["normalised_std"] for p in points], marker="o", capsize=3, label="AIME")
        first = next(r for r in rows if r["task"] == task)
        for m, color in (("bco", "tab:orange"), ("bc", "tab:green")):
            if first[m] and first[m].get("complete"):
                ax.axhline(first[m]["normalised"], color=color, linestyle="--", linewidth=1, label=METHOD_NAMES[m])
        if first["aime"].get("paper") is not None:
            ax.axhline(first["aime"]["paper"], color="tab:blue", linestyle=":", linewidth=1,
                       label="AIME (paper, 100k steps)")
        ax.set_xscale("log")
        ax.set_xticks([p[0] for p in points], [f"{p[0] / 1000:g}k" for p in points])
        ax.minorticks_off()
        ax.set_xlabel("phase-1 steps")
        ax.set_ylabel("normalised return")
        ax.set_title(f"{record['block']} -> {task}, {MODALITY_NAMES.get(record['modality'], record['modality'])}, "
                     f"phase 2 {record['phase2_steps']} steps", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_block_tables(paths: Sequence[str], out: str) -> list[str]:
    """A markdown and a CSV table per block report under `paths`, written to `out` (and a plot of
    AIME against the phase-1 length where a report has several)."""
    check_local_path(out, "--out")
    os.makedirs(out, exist_ok=True)
    written = []
    for path in find_blocks(paths):
        try:
            with open(path) as f:
                record = json.load(f)
            base = os.path.join(out, f"{record['block']}-{record['modality']}-seed{record['seed']}-"
                                     + os.path.basename(path)[: -len(".json")])
            with open(base + ".md", "w") as f:
                f.write(block_markdown(record))
            block_csv(record, base + ".csv")
            curve = plot_phase1_curve(record, base + "-phase1.png")
        except (OSError, ValueError, KeyError) as e:
            raise AimeError(f"{path}: not a block report written by experiments/reproduce.py ({e})") from None
        written += [base + ".md", base + ".csv"] + ([base + "-phase1.png"] if curve else [])
    return written
