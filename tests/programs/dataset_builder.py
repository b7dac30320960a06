"""Builds the walker-random dataset (3 episodes) under ROOT, logging "pid name index" to LOG for
every episode it writes itself; each episode takes 2 s more, so that a second builder started
with it arrives while it runs. Run twice at once by tests/test_datasets.py:
    dataset_builder.py ROOT LOG
Its last line is "built FOLDER GENERATOR_JSON".
"""
import json
import os
import sys
import time

from aime_jax.experts import build as build_lib

root, log = sys.argv[1], sys.argv[2]


def on_episode(name, i):
    time.sleep(2)
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {name} {i}\n")


folder = build_lib.build("walker-random", "mdp", root, scale=0.003, progress=False, on_episode=on_episode)
print("built", folder, json.dumps(build_lib.read_card(folder)["generator"]))
