import json
import os

import numpy as np
import pytest

from aime_jax import envs
from aime_jax.data.collect import run_episode
from aime_jax.envs.seeding import episode_seed
from aime_jax.envs.vector import VectorEnv
from aime_jax.errors import AimeError
from aime_jax.evaluate import (
    PAPER_EXPERT_RETURNS,
    RandomAgent,
    evaluate,
    normalised,
    write_results,
)


def _flat(observation: dict) -> np.ndarray:
    return np.concatenate([observation[k] for k in sorted(observation)], axis=-1)


class LinearAgent:
    """tanh(W obs), which also checks the prev_action and is_first it is given."""

    def __init__(self, obs_dim: int, seed: int = 0):
        self.w = np.random.default_rng(seed).normal(0.0, 0.5, (6, obs_dim)).astype(np.float32)

    def policy(self, obs: np.ndarray) -> np.ndarray:
        return np.tanh(self.w @ obs)

    def initial_carry(self, episode_seeds):
        return np.full((len(episode_seeds), 6), np.nan, np.float32)

    def act(self, carry, observation, prev_action, is_first):
        expected = np.where(is_first[:, None], 0.0, carry)
        np.testing.assert_array_equal(prev_action, expected)
        # Row by row: a batched matmul may round differently for different batch sizes.
        action = np.stack([self.policy(o) for o in _flat(observation)]).astype(np.float32)
        return action, action


def test_batched_evaluation_matches_one_env_at_a_time():
    agent = LinearAgent(obs_dim=17)
    one = evaluate("cheetah-run", "mdp", agent, episodes=4, num_envs=1, seed=3)
    assert one.lengths == [500] * 4 and len(set(one.returns)) == 4
    for num_envs, workers in [(3, 1), (3, 2)]:
        batched = evaluate("cheetah-run", "mdp", agent, episodes=4, num_envs=num_envs, seed=3, workers=workers)
        assert batched.returns == one.returns, (num_envs, workers)
    assert one.mean == pytest.approx(np.mean(one.returns)) and one.std == pytest.approx(np.std(one.returns))
    assert one.elapsed_s > 0 and one.episodes_per_s == pytest.approx(4 / one.elapsed_s)
    assert json.loads(json.dumps(one.to_dict()))["returns"] == one.returns
    # Collection is an independent path to the same episodes: episode i starts from
    # episode_seed(seed, i). The dataset stores rewards as float32, hence the tolerance.
    env = envs.make("cheetah-run", "mdp")
    for i in (0, 3):
        ep = run_episode(env, lambda obs, proprio, rng: agent.policy(_flat(obs)), episode_seed(3, i))
        assert float(ep["reward"].sum()) == pytest.approx(one.returns[i], rel=1e-5)


def test_random_agent_is_reproducible_and_plausible():
    first = evaluate("walker-stand", "mdp", RandomAgent(seed=0), episodes=2, num_envs=2)
    again = evaluate("walker-stand", "mdp", RandomAgent(seed=0), episodes=2, num_envs=1)
    other = evaluate("walker-stand", "mdp", RandomAgent(seed=1), episodes=2, num_envs=2)
    assert first.returns == again.returns  # per-episode randomness, whatever the batch
    assert first.returns != other.returns
    # A random walker falls and lies on the ground: a small fraction of the expert's ~958.
    assert all(30.0 < r < 400.0 for r in first.returns), first.returns
    carry = RandomAgent().initial_carry([1, 2, 3])
    _, action = RandomAgent().act(carry, {}, np.zeros((3, 6), np.float32), np.ones(3, bool))
    assert action.shape == (3, 6) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)


def test_visual_workers_match_a_single_in_process_env():
    seeds = [11, 12, 13]
    actions = np.random.default_rng(0).uniform(-1, 1, (3, len(seeds), 6)).astype(np.float32)
    with VectorEnv("walker-walk", "visual", num_envs=3, workers=2) as vec:
        got = [vec.reset(seeds)]
        got += [vec.step(a) for a in actions]
        rendered = vec.render(2)
    for i, seed in enumerate(seeds):
        env = envs.make("walker-walk", "visual")
        want = [env.reset(seed=seed)] + [env.step(a[i]) for a in actions]
        for t, (g, w) in enumerate(zip(got, want)):
            image = g.observation["image"]
            assert image.shape == (3, 64, 64, 3) and image.dtype == np.uint8
            np.testing.assert_array_equal(image[i], w.observation["image"], err_msg=f"env {i} step {t}")
            assert g.reward[i] == w.reward and g.is_first[i] == w.is_first and g.is_last[i] == w.is_last
    np.testing.assert_array_equal(rendered, env.render())


def test_video_of_episode_zero_is_rendered_in_non_visual_modalities():
    # Action repeat 10 keeps the episode at 100 agent steps, so only 101 frames are rendered.
    result = evaluate(
        "cheetah-run", "mdp", RandomAgent(), episodes=2, num_envs=2, workers=2, record_video=True, action_repeat=10
    )
    assert result.lengths == [100, 100]
    assert result.frames.shape == (101, 64, 64, 3) and result.frames.dtype == np.uint8
    env = envs.make("cheetah-run", "mdp", action_repeat=10)
    env.reset(seed=episode_seed(0, 0))
    np.testing.assert_array_equal(result.frames[0], env.render())
    assert evaluate("cheetah-run", "mdp", RandomAgent(), episodes=1, action_repeat=10).frames is None


def test_worker_error_is_reraised_with_its_message():
    with VectorEnv("cheetah-run", "mdp", num_envs=2, workers=2) as vec:
        vec.reset([1, 2])
        actions = np.zeros((2, 6), np.float32)
        actions[1, 0] = np.nan
        with pytest.raises(AimeError, match="not finite") as info:
            vec.step(actions)
        assert "worker 1" in str(info.value.__cause__)
        # After a failure the episodes are in an unknown state: a new reset is required.
        with pytest.raises(AimeError, match="call reset"):
            vec.step(np.zeros((2, 6), np.float32))
        vec.reset([1, 2])
        assert vec.step(np.zeros((2, 6), np.float32)).reward.shape == (2,)
    # A worker that fails while building its environments is reported the same way.
    with pytest.raises(AimeError, match="action_repeat must be >= 1"):
        VectorEnv("cheetah-run", "mdp", num_envs=2, workers=2, action_repeat=0)


def test_bad_input_fails_with_clear_errors():
    with pytest.raises(AimeError, match="walker-walk"):
        evaluate("walker-dance", "mdp", RandomAgent(), episodes=1)
    with pytest.raises(AimeError, match="episodes must be >= 1"):
        evaluate("walker-walk", "mdp", RandomAgent(), episodes=0)
    with pytest.raises(AimeError, match="workers must be between"):
        VectorEnv("cheetah-run", "mdp", num_envs=2, workers=3)
    with VectorEnv("cheetah-run", "mdp", num_envs=2) as vec:
        vec.reset([1])  # fewer seeds than environments: only the first runs
        with pytest.raises(AimeError, match=r"shape \(1, 6\)"):
            vec.step(np.zeros((2, 6)))
    wrong = RandomAgent(action_dim=5)
    with pytest.raises(AimeError, match=r"RandomAgent.act returned actions of shape \(1, 5\)"):
        evaluate("cheetah-run", "mdp", wrong, episodes=1)


def test_normalised_returns_and_results_file(tmp_path):
    assert normalised(444.325, PAPER_EXPERT_RETURNS["cheetah-run"]) == pytest.approx(50.0)
    assert normalised(957.87, PAPER_EXPERT_RETURNS["walker-stand"]) == pytest.approx(100.0)
    assert len(PAPER_EXPERT_RETURNS) == 7
    with pytest.raises(AimeError, match="positive"):
        normalised(1.0, 0.0)
    path = tmp_path / "run" / "results.json"
    write_results(str(path), {"mean": 1.5})
    write_results(str(path), {"mean": 2.5, "returns": [2.0, 3.0]})
    assert json.loads(path.read_text()) == {"mean": 2.5, "returns": [2.0, 3.0]}
    assert os.listdir(path.parent) == ["results.json"]
