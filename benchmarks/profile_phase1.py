"""Where a phase-1 step spends its time: a jax.profiler trace of one step, summed per XLA op; JSON out.

  python benchmarks/profile_phase1.py --config=walker_visual --out=benchmarks/results/profile_phase1_visual_cpu.json

Builds the step as benchmarks/phase1.py does (paper sizes, B=50, T=50, synthetic batch), runs it
twice to compile and warm up, traces a third, and sums the trace's per-op durations. Each op is
named from the optimised HLO (`compiled.as_text()`): its kind (fusion kind, `ynn_fusion` =
XNNPACK/YNNPACK matrix products), output shape and the JAX source op it came from, so that e.g.
the decoder's transposed convolutions can be told apart. Ops inside the RSSM scan run once per
time step and are summed over all of them. Durations are per op thread, so with two threads
their sum can exceed the step's wall time.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import phase1 as bench  # noqa: E402

from aime_jax import parallel  # noqa: E402
from aime_jax.agents import phase1  # noqa: E402
from aime_jax.atomic import write_json  # noqa: E402
from aime_jax.hostmem import reexec_with_huge_pages  # noqa: E402

_DEF = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_index(text: str) -> dict[str, dict]:
    out = {}
    for line in text.splitlines():
        m = _DEF.match(line)
        if m:
            op = _OP_NAME.search(line)
            source = op.group(1).replace("jit(train_step)/", "") if op else ""
            out[m.group(1)] = {"shape": m.group(2), "source": source}
    return out


def group(name: str) -> str:
    base = re.sub(r"\.\d+$", "", name)
    if base in ("ynn_fusion", "dot") or base.startswith(("xnn", "cudnn", "custom-call", "gemm", "cublas", "triton_gemm", "convolution")):
        return "matrix products"
    if any(k in base for k in ("slice", "stack", "concatenate", "pad", "copy", "transpose", "select", "gather")):
        return "data movement (im2col/col2im, transposes, slices)"
    return "other (elementwise, reductions, loop control)"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="walker_visual", choices=sorted(bench.CONFIGS))
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    domain, modality, dtype, *overrides = bench.CONFIGS[args.config]
    config, model, state, optimizer, host_batch = bench.build(domain, modality, dtype, *overrides)
    mesh = parallel.make_mesh(1)
    state, batch = parallel.replicate(state, mesh), parallel.shard_batch(host_batch, mesh)
    step = phase1.jit_train_step(model, config.world_model, optimizer, mesh)
    compiled = step.lower(state, batch).compile()
    index = hlo_index(compiled.as_text())
    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    trace_dir = tempfile.mkdtemp(prefix="profile_phase1_")
    t0 = time.perf_counter()
    jax.profiler.start_trace(trace_dir)
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    wall = time.perf_counter() - t0
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(files[0]) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    per_op, calls, unnamed = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        # CPU traces name events by HLO op; GPU kernel events name the kernel and carry the op.
        name = e.get("args", {}).get("hlo_op", e["name"])
        if name in index:
            per_op[name] += e["dur"] / 1e6
            calls[name] += 1
        else:
            unnamed[e["name"]] += e["dur"] / 1e6
    groups = collections.Counter()
    for name, s in per_op.items():
        groups[group(name)] += s
    out = {
        "command": "python benchmarks/profile_phase1.py " + " ".join(sys.argv[1:]),
        "config": args.config,
        "device": jax.devices()[0].device_kind,
        "cpus": os.cpu_count(),
        "traced_step_wall_s": round(wall, 3),
        "op_seconds_total": round(sum(per_op.values()), 3),
        "op_seconds_by_group": {k: round(v, 3) for k, v in groups.most_common()},
        "top_ops": [
            {"op": name, "s": round(s, 3), "calls": calls[name], **index[name]}
            for name, s in per_op.most_common(args.top)
        ],
        "top_unmatched_events": [{"event": n, "s": round(s, 4)} for n, s in unnamed.most_common(10)],
    }
    print(json.dumps(out, indent=1))
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
