"""A stand-in for experiments/main.py under experiments/sweep.py: makes its --workdir, writes its
arguments there (args.json) and fails when one of them is --lr=0.5. Run by tests/test_multihost.py.
"""
import json
import os
import sys

workdir = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
os.makedirs(workdir)
json.dump(sys.argv[1:], open(os.path.join(workdir, "args.json"), "w"))
sys.exit(1 if "--lr=0.5" in sys.argv else 0)
