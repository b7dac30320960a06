"""Measurements behind docs/reproduction.md's findings for cells that fall short; JSON out.

  # Does the embodiment buffer cover the demonstrations' states (forward speed, torso height)?
  python benchmarks/repro_diagnostics.py coverage --buffer=data/walker-run-buffer \
      --demos data/walker-walk-expert data/walker-run-expert --out=coverage.json
  # How much random action error does the expert itself tolerate?
  python benchmarks/repro_diagnostics.py noise --expert=data/experts/walker-run/policy-200000 \
      --env=walker-run --sigmas=0,0.1,0.24,0.35,0.5 --out=noise.json
  # Where does a phase-2 policy go wrong: on the demonstrations, or in its own rollouts?
  python benchmarks/repro_diagnostics.py acting --run=runs/repro/.../run/aime-p1_10000-p2_5000 \
      --world_model=runs/repro/.../world_model/phase1-10000 --demos=data/walker-run-expert \
      --expert=data/experts/walker-run/policy-200000 --env=walker-run --out=acting.json

`acting` reports the policy's action error by time bucket (steps 0-10, 10-50, ..., to the
episode's end) in three settings: on the demonstrations filtered over WHOLE episodes with their
true actions (phase 2 trains on 50-step windows that start from the zero state), filtered with
the policy's own inferred actions as in phase 2, and in closed loop in the simulator, where the
error is measured against the expert's action on the state the agent actually reached; beside it
the reward per step in closed loop and on the demonstrations. `--handover=0,50` repeats the
closed loop with the expert acting for the first 50 steps while the agent filters (and then takes
over): whether the agent fails from the start only, or wherever it is.

`latent` isolates the world model's latent state as an input for acting: it regresses a policy
(the phase-2 network) on the demonstrations' TRUE actions at the model's filtered states (BC in
latent space, no action inference at all) with each `--inputs` form of the state (`features`:
[h, z sample] as AIME's policy sees it; `mean`: [h, posterior mean]; `h`: h alone; `obs`: the raw
observation, the control), then reports its held-out error by time bucket and runs it in closed
loop with each `--handover`:
  python benchmarks/repro_diagnostics.py latent --world_model=runs/repro/.../world_model/phase1-2500 \
      --demos=data/walker-run-expert --expert=data/experts/walker-run/policy-200000 --env=walker-run \
      --inputs=features,mean,h,obs --handover=0,10,50 --out=latent.json

`optimum` asks whether a precision floor is the world model's or phase 2's: on windows of the last
`--holdout` demonstrations (all in the episodes' steady part), the negative ELBO per step with the
true actions, with zero actions, with the phase-2 policy's inferred actions (`--run`), and with
free actions optimised directly on the ELBO, per window and step (Adam on their pre-tanh values,
from the true actions and from zero). If the free actions beat the true ones' ELBO at a large
action error, the world model's optimum is not at the true actions and no phase 2 can do better:
  python benchmarks/repro_diagnostics.py optimum --world_model=runs/repro/.../world_model/phase1-10000 \
      --demos=data/walker-run-expert --run=runs/repro/.../run/aime-p1_10000-p2_5000 --out=optimum.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from aime_jax.atomic import write_json

BUCKETS = [(0, 10), (10, 50), (50, 100), (100, 200), (200, 300), (300, 400), (400, 500)]
# walker's `velocity` observation is qvel: (rootz, rootx, rooty, six joints); rootx is the forward speed.
FORWARD_SPEED = 1


def _episodes(folder: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(folder, "*.npz")))
    if not files:
        raise SystemExit(f"error: {folder!r} holds no episodes (*.npz); build it with experiments/datasets.py")
    return files


def _speed_height(folder: str) -> tuple[np.ndarray, np.ndarray]:
    speed, height = [], []
    for f in _episodes(folder):
        with np.load(f) as ep:
            speed.append(ep["velocity"][1:, FORWARD_SPEED])
            height.append(ep["height"][1:, 0])
    return np.concatenate(speed), np.concatenate(height)


def coverage(args) -> dict:
    edges = [-np.inf, -0.5, 0.5, 1.5, 3.0, 5.0, np.inf]
    bs, bh = _speed_height(args.buffer)
    out = {"buffer": {
        "folder": args.buffer, "steps": int(bs.size),
        "speed_q10_q50_q90": np.quantile(bs, [0.1, 0.5, 0.9]).tolist(),
        "height_q10_q50_q90": np.quantile(bh, [0.1, 0.5, 0.9]).tolist(),
        "speed_bins_m_per_s": ["< -0.5", "-0.5..0.5", "0.5..1.5", "1.5..3", "3..5", ">= 5"],
        "speed_bin_share": (np.histogram(bs, edges)[0] / bs.size).tolist(),
    }, "demos": {}}
    for folder in args.demos:
        ds, dh = _speed_height(folder)
        lo, hi = np.quantile(ds, [0.1, 0.9])
        hlo, hhi = np.quantile(dh, [0.1, 0.9])
        in_speed = (bs >= lo) & (bs <= hi)
        out["demos"][folder] = {
            "speed_q10_q50_q90": np.quantile(ds, [0.1, 0.5, 0.9]).tolist(),
            "height_q10_q50_q90": np.quantile(dh, [0.1, 0.5, 0.9]).tolist(),
            # The share of the buffer's steps at the demonstrations' speeds (their 10-90 % band),
            # and at their speeds and torso heights at once (a walker lying still moves at a
            # standing walker's speed).
            "buffer_share_in_demo_speed_band": float(np.mean(in_speed)),
            "buffer_share_in_demo_speed_and_height_band": float(np.mean(in_speed & (bh >= hlo) & (bh <= hhi))),
        }
    return out


def noise(args) -> dict:
    from aime_jax.evaluate import evaluate
    from aime_jax.experts.sac import load_expert_policy

    expert = load_expert_policy(args.expert)

    class Noisy:
        def __init__(self, sigma: float):
            self.sigma = sigma

        def initial_carry(self, seeds):
            return [np.random.default_rng([7, int(s)]) for s in seeds]

        def act(self, carry, observation, prev_action, is_first):
            _, action = expert.act(None, observation, prev_action, is_first)
            eps = np.stack([rng.normal(0.0, self.sigma, action.shape[1]) for rng in carry])
            return carry, np.clip(action + eps, -1.0, 1.0).astype(np.float32)

    rows = []
    for sigma in args.sigmas:
        r = evaluate(args.env, "mdp", Noisy(sigma), episodes=args.episodes, num_envs=args.episodes, seed=123)
        rows.append({"sigma": sigma, "return_mean": r.mean, "return_std": r.std})
        print(f"sigma {sigma}: {r.mean:.1f} +- {r.std:.1f}", flush=True)
    return {"expert": args.expert, "env": args.env, "episodes": args.episodes, "rows": rows}


def acting(args) -> dict:
    import jax
    import jax.numpy as jnp
    import ml_collections

    from aime_jax.agents import phase2
    from aime_jax.data import EpisodeStore
    from aime_jax.envs.seeding import episode_seed
    from aime_jax.envs.vector import VectorEnv
    from aime_jax.experts.sac import load_expert_policy
    from aime_jax.nets.policy import tanh_gaussian_mode
    from aime_jax.world_model import rssm

    with open(os.path.join(args.run, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    agent = phase2.load_agent(config, os.path.join(args.run, "phase2"), args.world_model)
    model, wm_params, policy, policy_params = agent.model, agent.wm_params, agent.policy, agent.policy_params
    expert = load_expert_policy(args.expert)
    keys = tuple(model.config.obs_keys)
    store = EpisodeStore(args.demos, progress=False)
    eps = [store.episode(i, keys + ("pre_action", "reward")) for i in range(min(args.demos_count, store.num_episodes))]
    obs = {k: jnp.asarray(np.stack([e[k] for e in eps]), jnp.float32) for k in keys}
    true = jnp.asarray(np.stack([e["pre_action"] for e in eps]), jnp.float32)  # true[:, t] = a_{t-1}

    @jax.jit
    def on_demos(obs, true, rng):
        embeds = model.apply({"params": wm_params}, obs, method=rssm.WorldModel.embed)
        states, _ = rssm.observe(model, wm_params, embeds, true, rng)
        mean, _ = policy.apply({"params": policy_params}, rssm.features(states))
        given_true = tanh_gaussian_mode(mean)[:, :-1]  # the policy at s_t: a_t, i.e. true[:, t + 1]
        _, _, _, inferred = phase2.infer_actions(model, wm_params, policy, policy_params, embeds, rng)
        return given_true, inferred[:, 1:]  # inferred[:, t] is a_{t-1}

    given_true, inferred = on_demos(obs, true, jax.random.PRNGKey(0))
    err_true = np.asarray(jnp.mean(jnp.square(given_true - true[:, 1:]), axis=(0, 2)))
    err_inferred = np.asarray(jnp.mean(jnp.square(inferred - true[:, 1:]), axis=(0, 2)))

    n = args.episodes
    seeds = [episode_seed(args.seed, i) for i in range(n)]

    def closed_loop(handover: int) -> dict[str, list[float]]:
        """The agent filters from the first step, but the expert acts for the first `handover`
        steps: if the agent then runs like the expert, what failed before was the start."""
        err, reward, expert_sq = [], [], []
        with VectorEnv(args.env, config.modality, n, 1, 2, 64) as env:  # action repeat 2, as in evaluate
            step = env.reset(seeds)
            carry = agent.initial_carry(seeds)
            prev = np.zeros((n, env.action_dim), np.float32)
            while not step.is_last[0]:
                carry, action = agent.act(carry, step.observation, prev, step.is_first)
                _, expert_action = expert.act(None, step.observation, prev, step.is_first)
                action = np.clip(action, -1.0, 1.0)
                err.append(float(np.mean(np.square(action - expert_action))))
                expert_sq.append(float(np.mean(np.square(expert_action))))
                if len(err) <= handover:
                    action = np.asarray(expert_action, np.float32)
                step = env.step(action)
                reward.append(float(np.mean(step.reward)))
                prev = action
        return {"mse_vs_expert": err, "reward": reward, "expert_mean_square": expert_sq}

    loops = {h: closed_loop(h) for h in args.handover}
    latent_bc = None
    if args.latent_bc_steps:
        # The control: the same policy network on the same filtered states, regressed on the true
        # actions (BC in the world model's latent space). If it also collapses in closed loop, the
        # latent state is a poor input for acting; if it runs, AIME's inferred actions are to blame.
        latent_bc = train_latent_bc(model, wm_params, policy, store, keys, args.latent_bc_steps)
        agent = phase2.AimeAgent(model, wm_params, policy, latent_bc.pop("params"))
        latent_bc["closed_loop"] = closed_loop(0)
        latent_bc["closed_loop_return"] = float(np.sum(latent_bc["closed_loop"]["reward"]))
        latent_bc["closed_loop"] = {k: [float(np.mean(v[lo:hi])) for lo, hi in BUCKETS]
                                    for k, v in latent_bc["closed_loop"].items()}
        print("latent BC:", json.dumps({k: v for k, v in latent_bc.items() if k != "closed_loop"}), flush=True)
    demo_reward = np.mean(np.stack([np.reshape(e["reward"], -1)[1:] for e in eps]), axis=0)
    rows = []
    for lo, hi in BUCKETS:
        row = {
            "steps": f"{lo}-{hi}",
            "mse_demos_true_actions": float(err_true[lo:hi].mean()),
            "mse_demos_inferred_actions": float(err_inferred[lo:hi].mean()),
            "reward_per_step_demos": float(demo_reward[lo:hi].mean()),
        }
        for h, loop in loops.items():
            row[f"handover_{h}"] = {k: float(np.mean(v[lo:hi])) for k, v in loop.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    checkpoints = os.path.join(args.run, "phase2", "checkpoints")
    phase2_step = max((int(d) for d in os.listdir(checkpoints) if d.isdigit()), default=None)
    return {"run": args.run, "phase2_step": phase2_step, "world_model": args.world_model, "demos": args.demos,
            "demos_used": len(eps),
            "expert": args.expert, "env": args.env, "closed_loop_episodes": n,
            "closed_loop_return": {f"handover_{h}": float(np.sum(loop["reward"])) for h, loop in loops.items()},
            # Step by step around the handover: does the error jump at once or grow?
            "first_100_steps": {f"handover_{h}": {k: np.round(v[:100], 3).tolist() for k, v in loop.items()}
                                for h, loop in loops.items()},
            "buckets": rows, "latent_bc": latent_bc}


def train_latent_bc(model, wm_params, policy, store, keys, steps: int, holdout: int = 10) -> dict:
    """Regresses the policy's mode on the true actions at the world model's posterior states of
    every demonstration but the last `holdout` (filtered over whole episodes with the true
    actions), Adam 3e-4, 2500 states per step (phase 2's 50 x 50)."""
    import jax
    import jax.numpy as jnp
    import optax

    from aime_jax.nets.policy import tanh_gaussian_mode
    from aime_jax.world_model import rssm

    feats, acts = [], []
    observe = jax.jit(lambda o, a, r: rssm.observe(
        model, wm_params, model.apply({"params": wm_params}, o, method=rssm.WorldModel.embed), a, r)[0])
    for i in range(store.num_episodes):
        ep = store.episode(i, keys + ("pre_action",))
        obs = {k: jnp.asarray(ep[k][None], jnp.float32) for k in keys}
        pre = jnp.asarray(ep["pre_action"][None], jnp.float32)
        states = observe(obs, pre, jax.random.PRNGKey(i))
        feats.append(np.asarray(rssm.features(states)[0, :-1]))  # s_t ...
        acts.append(np.asarray(pre[0, 1:]))  # ... and the action taken there, a_t
    train_x, train_y = np.concatenate(feats[:-holdout]), np.concatenate(acts[:-holdout])
    test_x, test_y = np.concatenate(feats[-holdout:]), np.concatenate(acts[-holdout:])
    params = policy.init(jax.random.PRNGKey(1), jnp.zeros((1, train_x.shape[1])))["params"]
    opt = optax.adam(3e-4)
    opt_state = opt.init(params)

    def mse(params, x, y):
        mean, _ = policy.apply({"params": params}, x)
        return jnp.mean(jnp.square(tanh_gaussian_mode(mean) - y))

    @jax.jit
    def update(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(mse)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(train_x), 2500)
        params, opt_state, loss = update(params, opt_state, train_x[idx], train_y[idx])
    return {"params": params, "steps": steps, "train_mse": float(loss),
            "heldout_mse": float(mse(params, test_x, test_y)), "heldout_episodes": holdout}


def latent(args) -> dict:
    """BC on the true actions at the world model's filtered states, per input form (see above)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import optax

    from aime_jax.agents import phase2
    from aime_jax.agents.phase1 import load_world_model
    from aime_jax.data import EpisodeStore
    from aime_jax.envs.seeding import episode_seed
    from aime_jax.envs.vector import VectorEnv
    from aime_jax.experts.sac import load_expert_policy
    from aime_jax.nets.policy import tanh_gaussian_mode
    from aime_jax.world_model import rssm

    with open(os.path.join(args.world_model, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    model, wm_params, _ = load_world_model(args.world_model, None, config)
    keys = tuple(model.config.obs_keys)
    expert = load_expert_policy(args.expert)
    store = EpisodeStore(args.demos, progress=False)

    def policy_input(form, obs, states, stats):
        if form == "features":
            return rssm.features(states)
        if form == "mean":
            return jnp.concatenate([states["h"], stats["post_mean"].astype(states["h"].dtype)], -1)
        if form == "h":
            return states["h"]
        return jnp.concatenate([obs[k] for k in keys], -1)

    @jax.jit
    def observe(obs, pre, rng):
        embeds = model.apply({"params": wm_params}, obs, method=rssm.WorldModel.embed)
        return rssm.observe(model, wm_params, embeds, pre, rng)

    episodes = []
    for i in range(store.num_episodes):
        ep = store.episode(i, keys + ("pre_action",))
        obs = {k: jnp.asarray(ep[k][None], jnp.float32) for k in keys}
        pre = jnp.asarray(ep["pre_action"][None], jnp.float32)
        states, stats = observe(obs, pre, jax.random.PRNGKey(i))
        episodes.append((obs, states, stats, np.asarray(pre[0, 1:])))  # a_t, taken at s_t
    holdout = args.holdout
    n = args.episodes
    seeds = [episode_seed(args.seed, i) for i in range(n)]
    results = {}
    for form in args.inputs:
        xs = [np.asarray(policy_input(form, o, s, st)[0, :-1]) for o, s, st, _ in episodes]
        ys = [a for *_, a in episodes]
        train_x, train_y = np.concatenate(xs[:-holdout]), np.concatenate(ys[:-holdout])
        policy = phase2.make_policy(config.phase2.policy, model.action_dim)
        params = policy.init(jax.random.PRNGKey(1), jnp.zeros((1, train_x.shape[1])))["params"]
        opt = optax.adam(3e-4)
        opt_state = opt.init(params)

        def mse(params, x, y):
            mean, _ = policy.apply({"params": params}, x)
            return jnp.mean(jnp.square(tanh_gaussian_mode(mean) - y), axis=-1)

        @jax.jit
        def update(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(lambda p: jnp.mean(mse(p, x, y)))(params)
            updates, opt_state = opt.update(grads, opt_state)
            return optax.apply_updates(params, updates), opt_state, loss

        rng = np.random.default_rng(0)
        for _ in range(args.steps):
            idx = rng.integers(0, len(train_x), 2500)
            params, opt_state, loss = update(params, opt_state, train_x[idx], train_y[idx])
        held = np.stack([np.asarray(mse(params, x, y)) for x, y in zip(xs[-holdout:], ys[-holdout:])])  # (E, T)
        row = {"train_mse": float(loss), "heldout_mse": float(held.mean()),
               "heldout_mse_by_steps": {f"{lo}-{hi}": float(held[:, lo:hi].mean()) for lo, hi in BUCKETS}}

        @jax.jit
        def act(state, key, obs, prev):
            embed = model.apply({"params": wm_params}, obs, method=rssm.WorldModel.embed)
            key, sub = jax.random.split(key)
            state, stats = model.apply({"params": wm_params}, state, prev, embed, sub, method=rssm.WorldModel.step)
            mean, _ = policy.apply({"params": params}, policy_input(form, obs, state, stats))
            return state, key, tanh_gaussian_mode(mean)

        for h in args.handover:
            err, reward = [], []
            with VectorEnv(args.env, config.modality, n, 1, 2, 64) as env:  # action repeat 2, as in evaluate
                step = env.reset(seeds)
                state, key = rssm.initial_state(model.config, n), jax.random.PRNGKey(args.seed)
                prev = np.zeros((n, env.action_dim), np.float32)
                while not step.is_last[0]:
                    obs = {k: jnp.asarray(step.observation[k], jnp.float32) for k in keys}
                    state, key, action = act(state, key, obs, jnp.asarray(prev))
                    action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
                    _, expert_action = expert.act(None, step.observation, prev, step.is_first)
                    err.append(float(np.mean(np.square(action - expert_action))))
                    if len(err) <= h:
                        action = np.asarray(expert_action, np.float32)
                    step = env.step(action)
                    reward.append(np.asarray(step.reward, np.float64))
                    prev = action
            returns = np.sum(np.stack(reward), axis=0)
            row[f"handover_{h}"] = {
                "return_mean": float(returns.mean()), "return_std": float(returns.std()),
                "reward_after_handover": float(np.stack(reward)[h:].sum(axis=0).mean()),
                "mse_vs_expert_by_steps": {f"{lo}-{hi}": float(np.mean(err[lo:hi])) for lo, hi in BUCKETS},
            }
        results[form] = row
        print(form, json.dumps(row), flush=True)
    return {"world_model": args.world_model, "demos": args.demos, "demos_total": store.num_episodes,
            "heldout_episodes": holdout, "bc_steps": args.steps, "expert": args.expert, "env": args.env,
            "closed_loop_episodes": n, "inputs": results}


def optimum(args) -> dict:
    """The ELBO's optimum over the actions against the true actions (see above)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import optax

    from aime_jax.agents import phase2
    from aime_jax.agents.phase1 import load_world_model
    from aime_jax.data import EpisodeStore
    from aime_jax.world_model import rssm

    with open(os.path.join(args.world_model, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    model, wm_params, _ = load_world_model(args.world_model, None, config)
    wm = config.world_model
    keys = tuple(wm.obs_keys)
    store = EpisodeStore(args.demos, progress=False)
    held = range(max(0, store.num_episodes - args.holdout), store.num_episodes)  # unseen by phase 2 unless it used them
    eps = [store.episode(i, keys + ("pre_action",)) for i in held]
    length = min(len(e["pre_action"]) for e in eps)
    window = args.window
    # Windows spread over each episode's steady part (after the first 50 steps).
    starts = np.linspace(50, length - window, args.windows_per_episode).astype(int)
    obs = {k: jnp.asarray(np.stack([e[k][s:s + window] for e in eps for s in starts]), jnp.float32) for k in keys}
    true = jnp.asarray(np.stack([e["pre_action"][s:s + window] for e in eps for s in starts]), jnp.float32)
    embeds = model.apply({"params": wm_params}, obs, method=rssm.WorldModel.embed)
    rng = jax.random.PRNGKey(args.seed)
    skip = args.skip  # a window starts from the zero state: its first steps say little about actions

    @jax.jit
    def nelbo(actions, key):
        states, outs = rssm.observe(model, wm_params, embeds, actions, key)
        return rssm.negative_elbo(model, wm_params, obs, states, outs, wm.loss)[1]["nelbo_per_step"]

    def error(actions) -> float:
        return float(jnp.mean(jnp.square(actions[:, skip:] - true[:, skip:])))

    out = {"world_model": args.world_model, "demos": args.demos, "heldout_episodes": list(held),
           "windows": int(true.shape[0]), "window": window, "mse_from_step": skip, "optimiser_steps": args.steps,
           "lr": args.lr}
    out["true"] = {"nelbo_per_step": float(nelbo(true, rng)), "mse": 0.0}
    out["zero"] = {"nelbo_per_step": float(nelbo(jnp.zeros_like(true), rng)), "mse": error(jnp.zeros_like(true))}
    if args.run:
        with open(os.path.join(args.run, "config.json")) as f:
            run_config = ml_collections.ConfigDict(json.load(f))
        agent = phase2.load_agent(run_config, os.path.join(args.run, "phase2"), args.world_model)
        _, _, _, inferred = phase2.infer_actions(model, wm_params, agent.policy, agent.policy_params, embeds, rng)
        out["policy"] = {"run": args.run, "nelbo_per_step": float(nelbo(inferred, rng)), "mse": error(inferred)}

    optimiser = optax.adam(args.lr)

    @jax.jit
    def update(pre, opt_state, key):
        value, grad = jax.value_and_grad(lambda p: nelbo(jnp.tanh(p), key))(pre)
        updates, opt_state = optimiser.update(grad, opt_state)
        return optax.apply_updates(pre, updates), opt_state, value

    for name, start in (("free_from_true", true), ("free_from_zero", jnp.zeros_like(true))):
        pre = jnp.arctanh(jnp.clip(start, -0.99, 0.99))
        opt_state = optimiser.init(pre)
        curve = []
        for i in range(args.steps):
            pre, opt_state, value = update(pre, opt_state, jax.random.fold_in(rng, i + 1))
            if i % 100 == 0 or i == args.steps - 1:
                curve.append({"step": i + 1, "nelbo_per_step": float(value), "mse": error(jnp.tanh(pre))})
                print(name, json.dumps(curve[-1]), flush=True)
        final = jnp.tanh(pre)
        out[name] = {"nelbo_per_step": float(nelbo(final, rng)), "mse": error(final), "curve": curve}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("coverage")
    p.add_argument("--buffer", required=True)
    p.add_argument("--demos", nargs="+", required=True)
    p = sub.add_parser("noise")
    p.add_argument("--expert", required=True, help="an expert run, its best/ or a builder's policy-<steps>/ snapshot")
    p.add_argument("--env", required=True)
    p.add_argument("--sigmas", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 0.1, 0.24, 0.35, 0.5])
    p.add_argument("--episodes", type=int, default=10)
    p = sub.add_parser("acting")
    for name in ("run", "world_model", "demos", "expert", "env"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--demos_count", type=int, default=20)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=99)
    p.add_argument("--latent_bc_steps", type=int, default=0,
                   help="also train and run BC on the world model's latent states for this many steps (0: no)")
    p.add_argument("--handover", type=lambda s: [int(x) for x in s.split(",")], default=[0, 50],
                   help="closed loops in which the expert acts for the first N steps (0: the agent from the start)")
    p = sub.add_parser("latent")
    for name in ("world_model", "demos", "expert", "env"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--inputs", type=lambda s: s.split(","), default=["features", "mean", "h", "obs"])
    p.add_argument("--steps", type=int, default=5000, help="BC steps (2500 states each)")
    p.add_argument("--holdout", type=int, default=10, help="demonstrations held out of BC")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=99)
    p.add_argument("--handover", type=lambda s: [int(x) for x in s.split(",")], default=[0, 10, 50])
    p = sub.add_parser("optimum")
    for name in ("world_model", "demos"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--run", default="", help="a phase-2 run on this world model: also its policy's inferred actions")
    p.add_argument("--holdout", type=int, default=10, help="windows from the last N demonstrations")
    p.add_argument("--windows_per_episode", type=int, default=5)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--skip", type=int, default=10, help="action error from this step of each window on")
    p.add_argument("--steps", type=int, default=600, help="Adam steps on the free actions")
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    for p in sub.choices.values():
        p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if getattr(args, "episodes", 1) < 1:
        raise SystemExit(f"error: --episodes must be >= 1, got {args.episodes}")
    result = {"what": args.what, "command": "python " + " ".join(sys.argv), **globals()[args.what](args)}
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
