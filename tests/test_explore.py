"""The exploration agent: disagreement math, where the ensemble disagrees. Its training run (resume
after a kill, recorded episodes) is tested through the explore-buffer build in test_datasets.py."""
import numpy as np
import pytest

from aime_jax.data import list_episodes, load_episode
from aime_jax.errors import AimeError, ConfigError
from aime_jax.experts import explore

KEYS = ("orientations", "height", "velocity")


def test_disagreement_and_loss_math():
    same = np.tile(np.arange(12.0).reshape(1, 4, 3), (5, 1, 1))
    np.testing.assert_allclose(explore.disagreement(same), np.zeros(4))
    # Two members at +-1 in every dimension: variance 1.
    spread = np.stack([np.ones((4, 3)), -np.ones((4, 3))])
    np.testing.assert_allclose(explore.disagreement(spread), np.ones(4))
    target = np.zeros((4, 3))
    # Each member's MSE (1 and 1), summed over the members.
    np.testing.assert_allclose(explore.ensemble_loss(spread, target), 2.0)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="ensemble_size"):
        explore.default_config(ensemble_size=1)
    with pytest.raises(ConfigError, match="unknown exploration setting"):
        explore.default_config(ensembel_size=3)
    with pytest.raises(ConfigError, match="unknown SAC setting"):
        explore.default_config(sac={"batchsize": 3})
    with pytest.raises(AimeError, match="unknown domain"):
        explore.train_explorer("hopper", "/nonexistent", 10)


def _transitions(folder):
    obs, action, next_obs = [], [], []
    for path in list_episodes(folder):
        ep = load_episode(path)
        x = np.concatenate([ep[k] for k in KEYS], axis=-1)
        obs.append(x[:-1])
        next_obs.append(x[1:])
        action.append(ep["pre_action"][1:])
    return np.concatenate(obs), np.concatenate(action), np.concatenate(next_obs)


@pytest.mark.slow
def test_disagreement_falls_where_data_is_dense_and_stays_high_on_novel_states(walker_random_dir):
    """The ensemble (the default 5 x 128x2) is fitted to real random-policy walker transitions
    for 1000 updates. On those states its disagreement falls far below where it started; on
    states the data never visits (the same states pushed 4 standard deviations away) it stays
    high, far above the trained level."""
    obs, action, next_obs = _transitions(walker_random_dir)
    ex = explore.Explorer(explore.default_config(), obs.shape[1])
    state = ex.init(0)
    state = state.replace(norm=explore.Normaliser.fit(obs, next_obs))
    rng = np.random.default_rng(0)
    novel_obs = obs + 4.0 * np.asarray(state.norm.obs_std) * rng.choice([-1.0, 1.0], obs.shape)
    before = float(np.mean(ex.disagreement(state, obs, action)))
    for k in range(20):
        idx = rng.integers(0, len(obs), (50, 128))
        batches = {"obs": obs[idx], "action": action[idx], "next_obs": next_obs[idx]}
        state, loss = ex.model_update_many(state, batches)
    dense = float(np.mean(ex.disagreement(state, obs, action)))
    novel = float(np.mean(ex.disagreement(state, novel_obs, action)))
    # Measured: 0.39 before, 0.040 dense and 0.33 novel after 1000 updates.
    assert dense < 0.2 * before, (before, dense)
    assert novel > 4.0 * dense and novel > 0.5 * before, (before, dense, novel)
    assert float(loss) / ex.config.ensemble_size < 0.5  # each member fits the normalised deltas
