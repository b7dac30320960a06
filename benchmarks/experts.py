"""The SAC experts against the issue's target (90 % of the paper's expert return); JSON out.

  python experiments/train_expert.py --config=configs/expert.py:cheetah-run --workdir=runs/experts/cheetah-run \
      --config.steps=600000 --config.sac.hidden_sizes=128,128
  python benchmarks/experts.py runs/experts/* --out=benchmarks/results/sac_experts_cpu.json
  python benchmarks/experts.py --datasets data/cheetah-flip-expert --out=benchmarks/results/expert_datasets_cpu.json

Reads each expert run directory's summary.json (written by train_expert) and reports, per task:
the final evaluation (10 deterministic episodes), the best one, the first evaluation at or above
90 % of the paper's expert return (env steps and wall seconds), the env steps and wall time of
the run, and whether the target was met. Env steps are agent steps (action repeat 2).

`--datasets` takes `<task>-expert` dataset folders of the builder (experiments/datasets.py)
instead: the mean return of their demonstrations (the card's `expert_return`, 100 episodes from
initial states the expert was never evaluated on) against the same target, and the snapshot the
builder took (its step and evaluation return, the best evaluation of the run up to there).
"""
import argparse
import json
import os
import platform
import sys

from aime_jax.atomic import write_json
from aime_jax.evaluate import PAPER_EXPERT_RETURNS

TARGET = 0.9


def summarise(run_dir: str) -> dict:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} does not exist; is {run_dir!r} an expert run directory that has finished?")
    with open(path) as f:
        s = json.load(f)
    paper = PAPER_EXPERT_RETURNS.get(s["env"])
    target = None if paper is None else TARGET * paper
    curve = s.get("eval_curve") or []
    best = max(curve, key=lambda e: e["return"]) if curve else None
    first = next((e for e in curve if target is not None and e["return"] >= target), None)
    return {
        "env": s["env"],
        "run_dir": run_dir,
        "seed": s.get("seed"),
        "env_steps": s["env_steps"],
        "wall_s": round(s["wall_s"], 1),
        "final_return": s["eval_return"],
        "best_return": best and best["return"],
        "best_at_env_steps": best and best["env_steps"],
        "paper_expert_return": paper,
        "target_return": target,
        "final_fraction_of_paper": None if paper is None or s["eval_return"] is None else s["eval_return"] / paper,
        "target_met": bool(first),
        "first_at_target_env_steps": first and first["env_steps"],
        "first_at_target_wall_s": first and round(first["wall_s"], 1),
        "config": s.get("config"),
        "eval_curve": [{k: round(v, 2) if isinstance(v, float) else v for k, v in e.items()} for e in curve],
    }


def summarise_dataset(folder: str) -> dict:
    path = os.path.join(folder, "card.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} does not exist; is {folder!r} a complete dataset folder?")
    with open(path) as f:
        card = json.load(f)
    if card["generator"]["kind"] != "expert":
        raise SystemExit(
            f"error: {folder} is a {card['generator']['kind']} dataset; --datasets takes <task>-expert ones")
    paper = PAPER_EXPERT_RETURNS.get(card["env"])
    expert = card.get("expert", {})
    return {
        "dataset": card["name"],
        "folder": folder,
        "env": card["env"],
        "seed": card["seed"],
        "episodes": card["episodes"],
        "expert_return": card["expert_return"],
        "return_std": card["return_std"],
        "paper_expert_return": paper,
        "fraction_of_paper": None if paper is None else card["expert_return"] / paper,
        "target_met": paper is not None and card["expert_return"] >= TARGET * paper,
        "expert_steps": card["generator"]["expert_steps"],
        "expert_config": card["generator"].get("expert_config"),
        "expert_demos": card["generator"].get("expert_demos"),
        "policy_env_steps": expert.get("policy_env_steps", expert.get("env_steps")),
        "policy_eval_return": expert.get("policy_eval_return", expert.get("eval_return")),
        "last_eval_return": expert.get("eval_return"),
        "train_wall_s": expert.get("train_wall_s") and round(expert["train_wall_s"], 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="*")
    p.add_argument("--datasets", nargs="+", default=[], help="expert dataset folders (card.json) instead of runs")
    p.add_argument("--machine", default=f"{os.cpu_count()}-core CPU ({platform.platform()})")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if bool(args.datasets) == bool(args.run_dirs):
        p.error("give expert run directories or --datasets folders (one of the two)")
    if args.datasets:
        key, measured, rows = "datasets", "the dataset's demonstrations", [summarise_dataset(d) for d in args.datasets]
    else:
        key, measured, rows = "experts", "10 deterministic episodes", [summarise(d) for d in args.run_dirs]
    out = {"command": "python benchmarks/experts.py " + " ".join(sys.argv[1:]), "machine": args.machine,
           "target": f"{TARGET:.0%} of the paper's expert return, {measured}", key: rows}
    for r in rows:
        print(_line(r))
    if args.out:
        write_json(args.out, out)


def _line(r: dict) -> str:
    """One row of the terminal report, for a run (summarise) or a dataset (summarise_dataset)."""
    if "dataset" in r:
        frac, met = r["fraction_of_paper"], r["target_met"]
        head = (f"{r['dataset']:28s} seed {r['seed']}  demos {r['expert_return']:7.1f} +- {r['return_std']:5.1f}  "
                f"snapshot {r['policy_env_steps']} (eval {r['policy_eval_return']:.1f})")
    else:
        frac, met = r["final_fraction_of_paper"], r["target_met"]
        head = (f"{r['env']:22s} {r['env_steps']:>8d} steps {r['wall_s'] / 60:6.1f} min  final {r['final_return']:7.1f}"
                f"  best {r['best_return']:7.1f}")
    share = "" if frac is None else f"{100 * frac:.0f} %"
    return f"{head}  paper {r['paper_expert_return']}  {share}  target {'met' if met else 'NOT met'}"

if __name__ == "__main__":
    main()
