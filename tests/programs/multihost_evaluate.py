"""Evaluates a 1-process run's checkpoints (world model and policy) restored by every process
it is started with (tests/test_multihost.py starts 2 under launch/local.sh):
    multihost_evaluate.py RUN_DIR OUT_JSON
Process 0 writes the returns to OUT_JSON.
"""
import json
import sys

import ml_collections

from aime_jax import parallel

assert parallel.initialize_distributed()

import jax  # noqa: E402

from aime_jax.agents import phase2  # noqa: E402
from aime_jax.evaluate import evaluate  # noqa: E402

run, out = sys.argv[1:]
config = ml_collections.ConfigDict(json.load(open(run + "/config.json")))
mesh = parallel.make_mesh()
agent = phase2.load_agent(config, run + "/phase2", run, mesh)
result = evaluate(config.env, config.modality, agent, config.eval.episodes, num_envs=config.eval.num_envs,
                  seed=config.eval.seed)
if jax.process_index() == 0:
    json.dump(result.returns, open(out, "w"))
