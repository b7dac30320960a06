import numpy as np
import pytest

from aime_jax import envs
from aime_jax.errors import AimeError

EXPECTED = {
    ("walker", "mdp"): {"orientations": (14,), "height": (1,), "velocity": (9,)},
    ("walker", "lpomdp"): {"orientations": (14,), "height": (1,)},
    ("walker", "visual"): {"image": (64, 64, 3)},
    ("cheetah", "mdp"): {"position": (8,), "velocity": (9,)},
    ("cheetah", "lpomdp"): {"position": (8,)},
    ("cheetah", "visual"): {"image": (64, 64, 3)},
}


@pytest.mark.parametrize("domain,modality", sorted(EXPECTED))
def test_shapes_and_dtypes(domain, modality):
    env = envs.make(f"{domain}-run", modality, seed=1)
    spec = env.observation_spec()
    assert {k: s for k, (s, _) in spec.items()} == EXPECTED[(domain, modality)]
    step = env.reset()
    assert step.is_first and not step.is_last and step.reward == 0.0
    np.testing.assert_array_equal(step.action, np.zeros(6, np.float32))
    for _ in range(3):
        step = env.step(np.full(6, 0.3))
        assert not step.is_first
        assert {k: v.shape for k, v in step.observation.items()} == EXPECTED[(domain, modality)]
        for k, v in step.observation.items():
            assert v.dtype == (np.uint8 if k == "image" else np.float32)
        # The full proprioception and the physics state come with every step, whatever the modality.
        assert set(step.proprio) == set(EXPECTED[(domain, "mdp")])
        assert step.physics_state.dtype == np.float64 and step.physics_state.shape == (18,)
    assert np.isfinite(step.reward)


def test_lpomdp_has_no_velocities():
    for domain in envs.DOMAINS:
        keys = envs.observation_keys(domain, "lpomdp")
        assert "velocity" not in keys
        assert envs.probe_keys(domain, "lpomdp") == ("velocity",)
        assert set(envs.probe_keys(domain, "visual")) == set(envs.PROPRIO_KEYS[domain])


def test_episode_length_and_action_repeat():
    env = envs.make("cheetah-run", "mdp", seed=0)
    step, n = env.reset(), 0
    while not step.is_last:
        step = env.step(np.zeros(6))
        n += 1
    assert n == 500  # 1000 simulator steps at action repeat 2
    assert not step.is_terminal


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(AimeError, match="walker-walk.*cheetah-flipbackward"):
        envs.make("walker-dance", "mdp")
    with pytest.raises(AimeError, match="mdp, lpomdp, visual"):
        envs.make("walker-walk", "pixels")
    with pytest.raises(AimeError, match="6 entries"):
        envs.make("walker-walk", "mdp").step(np.zeros(3))


def _rollout(name, seed, actions):
    env = envs.make(name, "mdp", seed=seed)
    steps = [env.reset()]
    for a in actions:
        steps.append(env.step(a))
    return env, steps


def _clip01(x):
    return float(np.clip(np.ravel(x)[0], 0.0, 1.0))


@pytest.mark.parametrize("name", ["walker-walkbackward", "walker-runbackward"])
def test_walker_backward_rewards(name):
    """Summed walker-stand reward times (5*clip(-v_x/s, 0, 1) + 1)/6, v_x the root's x-speed."""
    scale = {"walker-walkbackward": 1.0, "walker-runbackward": 8.0}[name]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (60, 6))
    # Pushing backwards for a while so that the speed term is not always zero.
    actions[:, [0, 3]] = -1.0
    env, steps = _rollout(name, 3, actions)
    _, stand = _rollout("walker-stand", 3, actions)
    factors = []
    for s, ref in zip(steps[1:], stand[1:]):
        # Independent of the observation's layout: read the root x-velocity by joint name.
        env.physics.set_state(s.physics_state)
        v_x = env.physics.named.data.qvel["rootx"]
        factor = (5 * _clip01(-v_x / scale) + 1) / 6
        factors.append(factor)
        assert s.reward == pytest.approx(ref.reward * factor, rel=1e-5, abs=1e-6)
    assert max(factors) > 1 / 6  # the velocity term was exercised


@pytest.mark.parametrize(
    "name,formula",
    [
        ("walker-flip", lambda p, q: _clip01(q["rooty"] / 5)),
        ("walker-flipbackward", lambda p, q: _clip01(-q["rooty"] / 5)),
        ("walker-jump", lambda p, q: _clip01(p["height"][0] / 5)),
        ("cheetah-runbackward", lambda p, q: _clip01(-q["rootx"] / 10)),
        ("cheetah-flip", lambda p, q: _clip01(q["rooty"] / 5)),
        ("cheetah-flipbackward", lambda p, q: _clip01(-q["rooty"] / 5)),
    ],
)
def test_replacing_custom_rewards(name, formula):
    """Computed once per agent step from the state after the repeat; at most 1 per step."""
    rng = np.random.default_rng(1)
    env, steps = _rollout(name, 5, rng.uniform(-1, 1, (80, 6)))
    rewards = []
    for s in steps[1:]:
        env.physics.set_state(s.physics_state)
        expected = formula(s.proprio, env.physics.named.data.qvel)
        assert s.reward == pytest.approx(expected, abs=1e-6)
        assert 0.0 <= s.reward <= 1.0
        rewards.append(s.reward)
    assert max(rewards) > 0.0, "the reward never fired; the test exercises nothing"


def test_suite_rewards_are_summed_over_the_repeat():
    from dm_control import suite

    actions = np.random.default_rng(2).uniform(-1, 1, (20, 6))
    _, steps = _rollout("walker-walk", 7, actions)
    raw = suite.load("walker", "walk", task_kwargs={"random": 7})
    raw.reset()
    for a, s in zip(actions, steps[1:]):
        summed = sum(raw.step(a).reward for _ in range(2))
        assert s.reward == pytest.approx(summed, rel=1e-6)


def test_same_seed_same_episode():
    actions = np.random.default_rng(3).uniform(-1, 1, (30, 6))
    _, a = _rollout("cheetah-run", 11, actions)
    _, b = _rollout("cheetah-run", 11, actions)
    _, c = _rollout("cheetah-run", 12, actions)
    np.testing.assert_array_equal(np.stack([s.physics_state for s in a]), np.stack([s.physics_state for s in b]))
    assert [s.reward for s in a] == [s.reward for s in b]
    assert not np.array_equal(a[0].physics_state, c[0].physics_state)


def test_reset_seed_reproduces_initial_state():
    env = envs.make("walker-walk", "mdp", seed=0)
    first = env.reset(seed=42).physics_state
    env.reset()
    np.testing.assert_array_equal(env.reset(seed=42).physics_state, first)


@pytest.mark.parametrize("name", ["walker-walk", "cheetah-run"])
def test_rerender_from_physics_state_equals_online_image(name):
    env = envs.make(name, "visual", seed=4)
    steps = [env.reset()]
    rng = np.random.default_rng(4)
    for _ in range(6):
        steps.append(env.step(rng.uniform(-1, 1, 6)))
    online = np.stack([s.image for s in steps])
    assert online.std() > 0
    again = envs.render_states(env.domain, np.stack([s.physics_state for s in steps]), size=64)
    np.testing.assert_array_equal(again, online)
    small = envs.render_states(env.domain, np.stack([s.physics_state for s in steps[:2]]), size=32)
    assert small.shape == (2, 32, 32, 3)


def test_pitched_reset_turns_the_body_and_settles():
    env = envs.make("cheetah-flip", "mdp", seed=0)
    upright = env.reset(seed=5)
    assert abs(upright.proprio["position"][1]) < 0.5  # rooty: the suite starts upright
    on_back = env.reset(seed=5, pitch=np.pi)
    assert abs(on_back.proprio["position"][1] - np.pi) < 1.0
    # Settled before the episode starts: at rest, on the floor, clock at zero.
    assert np.abs(on_back.proprio["velocity"]).max() < 0.5 and env.physics.data.time == 0.0
    assert on_back.proprio["position"][0] < 0.0  # rootz below the start height: it fell
    np.testing.assert_array_equal(env.reset(seed=5, pitch=np.pi).physics_state, on_back.physics_state)
    # The observation is the pitched state's, and the episode runs its full length from it.
    np.testing.assert_allclose(on_back.physics_state[1:9], on_back.proprio["position"], atol=1e-6)
    steps = [env.step(np.zeros(6)) for _ in range(500)]
    assert steps[-1].is_last and not any(s.is_last for s in steps[:-1])
    with pytest.raises(AimeError, match="finite"):
        env.reset(pitch=float("nan"))


@pytest.mark.parametrize("name,sign", [("cheetah-flip", 1.0), ("cheetah-flipbackward", -1.0), ("walker-flip", 1.0)])
def test_flip_shaped_reward_charges_turning_the_wrong_way(name, sign):
    rng = np.random.default_rng(2)
    env, steps = _rollout(name, 5, rng.uniform(-1, 1, (80, 6)))
    shaped = envs.tasks.get_task(name).shaped
    values = []
    for s in steps[1:]:
        env.physics.set_state(s.physics_state)
        omega = sign * env.physics.named.data.qvel["rooty"]
        value = shaped(s.proprio, s.reward)
        assert value == pytest.approx(np.clip(omega / 5, -1, 1), abs=1e-6)
        assert s.reward == pytest.approx(max(value, 0.0), abs=1e-6)  # the task reward: its positive part
        values.append(value)
    assert min(values) < 0.0 < max(values), "random actions turn both ways; the test needs both signs"
    assert envs.tasks.get_task("cheetah-run").shaped is None
