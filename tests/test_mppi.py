"""The MPPI planner: its simulated returns are the environment's, it plans far above random
actions on a flip task, and its episodes are resumable demonstrations for SAC."""
import numpy as np
import pytest

from aime_jax import envs
from aime_jax.data import load_episode
from aime_jax.data.collect import collect
from aime_jax.errors import ConfigError
from aime_jax.experts import mppi
from aime_jax.experts.sac import observation_vector


def test_simulated_returns_equal_stepping_the_environment():
    env = envs.make("cheetah-flipbackward", "mdp", seed=0)
    env.reset(seed=3)
    for _ in range(20):
        env.step(np.random.default_rng(0).uniform(-1, 1, 6))
    start = env.physics.get_state().copy()
    sequences = np.random.default_rng(1).uniform(-1, 1, (3, 12, 6))
    predicted = mppi.Planner("cheetah-flipbackward").returns(env, sequences)
    np.testing.assert_array_equal(env.physics.get_state(), start)  # planning leaves the state alone
    for seq, value in zip(sequences, predicted):
        with env.physics.reset_context():
            env.physics.set_state(start)
        actual = sum(env.step(a).reward for a in seq)
        assert value == pytest.approx(actual, abs=1e-6)
    assert predicted.max() > 0.0, "no sequence earned reward; the comparison exercises nothing"


def test_planner_episodes_beat_random_actions_and_resume(tmp_path):
    config = mppi.default_config(samples=32, horizon=10)
    results = mppi.plan_episodes("cheetah-flip", str(tmp_path / "plan"), 1, seed=0, config=config, progress=False)
    collect("cheetah-flip", "mdp", str(tmp_path / "random"), 1, seed=0, progress=False)
    random_return = load_episode(tmp_path / "random" / "0.npz")["reward"].sum()
    ep = load_episode(tmp_path / "plan" / "0.npz")
    assert results == [{"episode": 0, "return": pytest.approx(ep["reward"].sum())}]
    assert ep["reward"].sum() > random_return + 100, (ep["reward"].sum(), random_return)
    assert observation_vector(ep, ("position", "velocity")).shape == (501, 17) and ep["is_last"][-1]
    assert mppi.plan_episodes("cheetah-flip", str(tmp_path / "plan"), 1, config=config, progress=False) == []
    with pytest.raises(ConfigError, match="cheetah-run has none"):
        mppi.plan_episodes("cheetah-run", str(tmp_path / "x"), 1)
