"""The results table and plot, in the paper's shape, from the results.json files of runs:

  python experiments/report.py runs/ --out=reports/

writes results.md, results.csv and demos_plot.png (normalised return against the number of
demonstrations) to --out. Folders are searched recursively for results.json. With --blocks, the
tables of reproduced blocks instead (one .md and .csv per block-*.json of experiments/reproduce.py):

  python experiments/report.py --blocks runs/repro --out=reports/
"""
import argparse
import sys

from aime_jax.errors import AimeError
from aime_jax.report import NORMALISERS, write_block_tables, write_report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (searched recursively) or results.json files")
    parser.add_argument("--out", default="reports", help="output folder (default: reports)")
    parser.add_argument("--normaliser", default="ours", choices=sorted(NORMALISERS),
                        help="normalise by our expert (the demonstrations' mean return) or the paper's")
    parser.add_argument("--blocks", action="store_true",
                        help="tables of reproduced blocks (block-*.json of experiments/reproduce.py)")
    args = parser.parse_args(argv)
    if args.blocks:
        try:
            written = write_block_tables(args.runs, args.out)
        except AimeError as e:
            sys.exit(f"error: {e}")
        for path in written:
            if path.endswith(".md"):
                with open(path) as f:
                    print(f.read())
        print("wrote " + ", ".join(written))
        return
    try:
        files = write_report(args.runs, args.out, args.normaliser)
    except AimeError as e:
        sys.exit(f"error: {e}")
    with open(files["markdown"]) as f:
        print(f.read())
    print("wrote " + ", ".join(files.values()))


if __name__ == "__main__":
    main()
