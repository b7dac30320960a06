"""Throughput, compile time, memory and FLOPs of the phase-1 train step at the paper's sizes; JSON out.

  python benchmarks/phase1.py --out=benchmarks/results/phase1_cpu.json

On a shared machine run it niced up in its own scheduler autogroup (Linux), e.g.
  setsid -w bash -c 'echo -15 > /proc/$$/autogroup; exec nice -n -15 python benchmarks/phase1.py'
or pass --quiet_wait; every timing records the CPU share other processes took meanwhile.

Each configuration runs in its own subprocess, so its peak host memory (ru_maxrss) is its own.
The step is jitted exactly as the learner jits it (replicated, donated state; batch split over a
one-device 'data' mesh) and fed a synthetic batch of the dataset's shapes and dtypes at the
paper's B=50, T=50. It computes no ratio against the release: those come from
benchmarks/versus_release.py, which times our step and the release-style PyTorch step in one run,
alternately.
"scan" times the RSSM filtering scan alone, per iteration (time step).

FLOPs: XLA's cost analysis counts a while loop's body once, whatever its trip count, so on the
compiled step it misses 49 of the 50 RSSM steps of the forward and of the backward scan. The
per-step FLOPs below come from a second lowering (never compiled or run) with every
`jax.lax.scan` fully unrolled, always lowered for the CPU (the count does not depend on the device,
and GPU lowerings report none); the raw figure of the compiled step is reported beside it.
"""
import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import load_avg, scheduling, time_calls, wait_for_quiet  # noqa: E402
from overrides import as_dict, config_overrides  # noqa: E402

from aime_jax import envs, parallel  # noqa: E402
from aime_jax.agents import phase1  # noqa: E402
from aime_jax.atomic import write_json  # noqa: E402
from aime_jax.config import make_config, resolve  # noqa: E402
from aime_jax.hostmem import reexec_with_huge_pages  # noqa: E402
from aime_jax.nets.cnn import IMAGE_SHAPE  # noqa: E402
from aime_jax.world_model import rssm  # noqa: E402

BATCH, WINDOW, ACTION_DIM = 50, 50, 6
# (domain, modality, world-model dtype[, world-model overrides]); the variant is the release's
# default for the domain.
CONFIGS = {
    "walker_mdp": ("walker", "mdp", "float32"),
    "cheetah_mdp": ("cheetah", "mdp", "float32"),
    "cheetah_mdp_bf16": ("cheetah", "mdp", "bfloat16"),
    # Like the release's phase 1, which also trains a detached inverse-dynamics head (1.6 M parameters).
    "cheetah_mdp_idm": ("cheetah", "mdp", "float32", {"idm.enabled": True}),
    "walker_visual": ("walker", "visual", "float32"),
    "cheetah_visual": ("cheetah", "visual", "float32"),
    "cheetah_visual_bf16": ("cheetah", "visual", "bfloat16"),
    # The image model with XLA's convolutions (cuDNN on GPUs) instead of the matrix-product ones.
    "walker_visual_lax": ("walker", "visual", "float32", {"cnn_impl": "lax"}),
    "cheetah_visual_lax": ("cheetah", "visual", "float32", {"cnn_impl": "lax"}),
    "cheetah_visual_lax_bf16": ("cheetah", "visual", "bfloat16", {"cnn_impl": "lax"}),
    # The image model on all 2500 images at once instead of in chunks of 50 (the CPU default).
    "walker_visual_unchunked": ("walker", "visual", "float32", {"cnn_chunk": -1}),
    # Like with like with the release's Visual phase 1 (benchmarks/versus_release.py).
    "cheetah_visual_idm": ("cheetah", "visual", "float32", {"idm.enabled": True}),
}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _flops(cost) -> float | None:
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _memory(compiled) -> dict | None:
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if stats is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
             "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {n.replace("_in_bytes", "_mib"): round(getattr(stats, n) / 2**20, 2) for n in names if hasattr(stats, n)}


@contextlib.contextmanager
def _unrolled_scans():
    """Every `jax.lax.scan` fully unrolled, also those that pass `unroll` themselves (flax's
    `nn.scan`, which chunks the image model)."""
    scan = jax.lax.scan

    def unrolled(*args, **kwargs):
        kwargs["unroll"] = True
        return scan(*args, **kwargs)

    jax.lax.scan = unrolled
    try:
        yield
    finally:
        jax.lax.scan = scan


def matmul_peak(n: int = 2048, reps: int = 8, trials: int = 5) -> dict:
    """float32 GFLOP/s of chained n x n matmuls in one jitted loop: the practical peak of this CPU."""
    @jax.jit
    def chain(x, w):
        return jax.lax.fori_loop(0, reps, lambda _, y: jnp.dot(y, w) * (1.0 / n), x)

    x = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    w = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    chain(x, w).block_until_ready()
    times, others = time_calls(lambda: chain(x, w), trials, jax.block_until_ready)
    flops = 2.0 * n**3 * reps
    return {"n": n, "matmuls_per_call": reps, "gflops_best": round(flops / min(times) / 1e9, 1),
            "gflops_median": round(flops / float(np.median(times)) / 1e9, 1),
            "other_processes_cpu_share": round(others, 3), "load_avg": load_avg()}


def build(domain: str, modality: str, dtype: str, overrides: dict | None = None, settings: dict | None = None):
    """`overrides`: the config's own world-model settings; `settings`: the command line's
    `--config.world_model.*` ones, for every config."""
    config = resolve(make_config(domain, modality, ""))
    config.world_model.dtype = dtype
    config.world_model.update_from_flattened_dict(overrides or {})  # dotted keys: "idm.enabled"
    config.world_model.update_from_flattened_dict(settings or {})
    wm = config.world_model
    sizes = envs.PROPRIO_KEYS[domain]
    spec = {k: IMAGE_SHAPE if k == rssm.IMAGE_KEY else (sizes[k],) for k in (*wm.obs_keys, *wm.probe_keys)}
    optimizer = phase1.make_optimizer(config.phase1.lr, config.phase1.grad_clip)
    model, state = phase1.create_train_state(wm, spec, ACTION_DIM, optimizer, config.seed)
    rng = np.random.default_rng(0)
    batch = {
        k: rng.integers(0, 256, (BATCH, WINDOW) + shape, dtype=np.uint8) if k == rssm.IMAGE_KEY
        else rng.normal(size=(BATCH, WINDOW) + shape).astype(np.float32)
        for k, shape in spec.items()
    }
    batch[phase1.ACTION_KEY] = rng.uniform(-1, 1, (BATCH, WINDOW, ACTION_DIM)).astype(np.float32)
    return config, model, state, optimizer, batch


def measure(name: str, steps: int, warmup: int, breakdown: bool, settings: dict | None = None) -> dict:
    domain, modality, dtype, *overrides = CONFIGS[name]
    config, model, state, optimizer, host_batch = build(domain, modality, dtype, *overrides, settings=settings)
    wm = config.world_model
    mesh = parallel.make_mesh(1)
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state = parallel.replicate(state, mesh)
    batch = parallel.shard_batch(host_batch, mesh)
    jitted = phase1.jit_train_step(model, wm, optimizer, mesh)
    # For the FLOP count below: the same step over the mesh's abstract twin, which lowers for
    # the CPU whatever devices the mesh holds.
    step_fn = phase1.make_train_step(model, wm, optimizer, mesh.abstract_mesh)

    t0 = time.perf_counter()
    lowered = jitted.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    # A CPU lowering of the same program (see the docstring), from abstract inputs so that no
    # device placement ties it to the device the step runs on.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
    with _unrolled_scans():
        unrolled = jax.jit(lambda s, b: step_fn(s, b)).trace(*abstract).lower(lowering_platforms=("cpu",))
    flops = _flops(unrolled.cost_analysis())

    for _ in range(warmup):
        state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    load_before = load_avg()

    def one_step():
        nonlocal state
        state, m = compiled(state, batch)
        return state, m

    times, others = time_calls(one_step, steps, jax.block_until_ready)
    s_per_step = float(np.mean(times))
    loss = float(jax.device_get(one_step()[1]["loss"]))

    params = jax.tree.leaves(state.params)
    out = {
        "domain": domain,
        "modality": modality,
        "variant": wm.variant,
        "dtype": dtype,
        "scan_unroll": wm.scan_unroll,
        "settings": settings or {},
        "obs_keys": list(wm.obs_keys),
        "probe_keys": list(wm.probe_keys),
        "batch": BATCH,
        "window": WINDOW,
        "param_count": int(sum(p.size for p in params)),
        "lower_s": round(t1 - t0, 2),
        "compile_s": round(t2 - t1, 2),
        "timed_steps": steps,
        "warmup_steps": warmup,
        "s_per_step": round(s_per_step, 4),
        "s_per_step_median": round(float(np.median(times)), 4),
        "s_per_step_min": round(min(times), 4),
        "s_per_step_max": round(max(times), 4),
        "steps_per_s": round(1.0 / s_per_step, 3),
        "env_steps_per_s": round(BATCH * WINDOW / s_per_step, 1),
        "final_loss_finite": bool(np.isfinite(loss)),
        "flops_per_step": flops,
        "flops_cost_analysis_compiled": _flops(compiled.cost_analysis()),
        "achieved_gflops": round(flops / s_per_step / 1e9, 2) if flops else None,
        "compiled_memory": _memory(compiled),
        "other_processes_cpu_share": round(others, 3),
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
    }
    out["scan"] = scan_timing(model, wm, state.params, batch, repl, data, max(5, steps))
    if breakdown:
        out["breakdown"] = time_breakdown(model, wm, state, batch, repl, data, max(2, min(steps, 5)))
    out["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    return out


def scan_timing(model, wm, params, batch, repl, data, n: int) -> dict:
    """Microseconds per iteration of the RSSM filtering scan alone (embeddings precomputed), forward
    and forward + backward: the part of the step that is sequential in time, where a framework
    that launches each operation of each time step separately is bound by the launches."""
    rng = jax.random.PRNGKey(0)
    obs = {k: batch[k] for k in wm.obs_keys}
    embed = jax.jit(lambda p, o: model.apply({"params": p}, o, method=rssm.WorldModel.embed),
                    in_shardings=(repl, data))
    embeds = jax.block_until_ready(embed(params, obs))
    actions = batch[phase1.ACTION_KEY]

    def forward(params, embeds, actions):
        return rssm.observe(model, params, embeds, actions, rng)

    def forward_backward(params, embeds, actions):
        def total(p, e):
            states, outs = forward(p, e, actions)
            return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves((states, outs)))
        return jax.grad(total, argnums=(0, 1))(params, embeds)

    out = {"iterations": WINDOW}
    for key, fn in (("forward_us_per_iteration", forward), ("forward_backward_us_per_iteration", forward_backward)):
        compiled = jax.jit(fn, in_shardings=(repl, data, data)).lower(params, embeds, actions).compile()
        jax.block_until_ready(compiled(params, embeds, actions))
        seconds = float(np.median(time_calls(lambda: compiled(params, embeds, actions), n, jax.block_until_ready)[0]))
        out[key] = round(seconds / WINDOW * 1e6, 1)
    return out


def time_breakdown(model, wm, state, batch, repl, data, n: int) -> dict:
    """Seconds of the loss alone, of the loss and its gradient, and of the embedding + filtering
    scan alone, so the step's cost splits into forward, backward and optimizer update."""
    rng = jax.random.PRNGKey(0)
    params = state.params

    def loss(params, batch):
        return rssm.elbo_loss(model, params, batch, rng, wm)[0]

    def observe_only(params, batch):
        obs = {k: batch[k] for k in wm.obs_keys}
        embeds = model.apply({"params": params}, obs, method=rssm.WorldModel.embed)
        states, _ = rssm.observe(model, params, embeds, batch[phase1.ACTION_KEY], rng)
        return states

    def observe_grad(params, batch):
        return jax.grad(lambda p: sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(observe_only(p, batch))))(params)

    fns = {
        "forward_s": loss,
        "forward_backward_s": jax.grad(loss),
        "embed_observe_forward_s": observe_only,
        "embed_observe_forward_backward_s": observe_grad,
    }
    out = {}
    for key, fn in fns.items():
        compiled = jax.jit(fn, in_shardings=(repl, data)).lower(params, batch).compile()
        jax.block_until_ready(compiled(params, batch))
        out[key] = round(float(np.median(time_calls(lambda: compiled(params, batch), n, jax.block_until_ready)[0])), 4)
    return out


def device_info() -> dict:
    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": d.device_kind, "num_devices": jax.device_count(),
            "jax": jax.__version__, "host": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor(),
            # glibc malloc settings (aime_jax/hostmem.py: huge pages unless AIME_JAX_HUGEPAGES=0)
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def run_worker(name: str, steps: int, warmup: int, breakdown: bool, settings: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={name}", f"--steps={steps}", f"--warmup={warmup}",
           *settings]
    if breakdown:
        cmd.append("--breakdown")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"benchmark of {name} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/phase1_cpu.json")
    p.add_argument("--steps", type=int, default=10, help="timed steps of the MDP configurations")
    p.add_argument("--visual_steps", type=int, default=2, help="timed steps of the Visual configurations")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation (MDP)")
    p.add_argument("--visual_warmup", type=int, default=1, help="untimed steps after compilation (Visual)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    p.add_argument("--breakdown", action="store_true", help="also time forward and forward+backward alone")
    p.add_argument("--quiet_wait", type=float, default=0.0,
                   help="before each measurement wait up to this many seconds for other processes to go idle")
    p.add_argument("--retries", type=int, default=0,
                   help="remeasure a config whose timed steps shared the CPU with other processes (>10%%)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.epilog = ("World-model settings for every config as in experiments/main.py, e.g. "
                "--config.world_model.scan_unroll=5 --config.world_model.cnn_chunk=-1")
    args, rest = p.parse_known_args()
    args.overrides = config_overrides(rest, allowed="world_model.")

    if args.worker:
        print(json.dumps(measure(args.worker, args.steps, args.warmup, args.breakdown, as_dict(args.overrides, strip="world_model."))))
        return

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    result = {
        "command": "python " + " ".join(sys.argv),
        "device": device_info(),
        "scheduling": scheduling(),
        "load_avg_start": load_avg(),
        "waited_for_quiet_s": wait_for_quiet(args.quiet_wait) if args.quiet_wait else 0.0,
        "matmul_f32_peak": matmul_peak(),
        "notes": (
            "flops_per_step counts every RSSM step (scans unrolled for the count); "
            "flops_cost_analysis_compiled is XLA's figure for the compiled step, which counts each "
            "scan body once. peak_rss_mib is the peak of the subprocess that measured the config. "
            "other_processes_cpu_share: the share of the machine's cores other processes used "
            "during the timed steps (the machine is shared; above ~0.1 the timing is pessimistic)."
        ),
        "configs": {},
    }
    peak = result["matmul_f32_peak"]["gflops_best"]
    print(f"matmul peak {peak} GFLOP/s", file=sys.stderr, flush=True)
    for name in names:
        visual = CONFIGS[name][1] == "visual"
        steps, warmup = (args.visual_steps, args.visual_warmup) if visual else (args.steps, args.warmup)
        for attempt in range(args.retries + 1):
            waited = wait_for_quiet(args.quiet_wait) if args.quiet_wait else 0.0
            r = run_worker(name, steps, warmup, args.breakdown, args.overrides)
            r["waited_for_quiet_s"], r["attempt"] = waited, attempt + 1
            if r["other_processes_cpu_share"] <= 0.1:
                break
        if r.get("achieved_gflops"):
            r["fraction_of_matmul_peak"] = round(r["achieved_gflops"] / peak, 3)
        result["configs"][name] = r
        print(f"{name}: {r['s_per_step']} s/step, {r['env_steps_per_s']} env-steps/s, "
              f"compile {r['compile_s']} s, scan {r['scan']}",
              file=sys.stderr, flush=True)
        write_json(args.out, result)  # after every config, so an interrupted run keeps what it measured
    result["load_avg_end"] = load_avg()
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
