"""The image encoder + decoder, forward and backward, at the phase-1 batch (B*T = 2500 images,
paper sizes) for several `cnn_chunk` settings; JSON out.

  python benchmarks/cnn_chunk.py --chunks=-1,25,50,100,250 --out=benchmarks/results/cnn_chunk_cpu.json

The loss is the squared error of the decoded embedding against a constant image, so every layer's
kernel gradient and the gradient through the encoder are computed, as in a phase-1 step (which
adds the RSSM, ~2 s on this CPU). -1 is the whole batch at once. Each setting is compiled, run once
untimed, then timed `--steps` times (benchmarks/phase1.py's timer: it also records the share of
the machine other processes used meanwhile).
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import phase1 as bench  # noqa: E402

from aime_jax.atomic import write_json  # noqa: E402
from aime_jax.hostmem import reexec_with_huge_pages  # noqa: E402
from aime_jax.nets.cnn import IMAGE_SHAPE, ConvDecoder, ConvEncoder  # noqa: E402

IMAGES = 2500  # B=50 x T=50
FEATURES = 640  # the walker rssm's decoder input: h (512) + z (128)


def measure(chunk: int, steps: int) -> dict:
    images = jax.random.randint(jax.random.key(0), (IMAGES,) + IMAGE_SHAPE, 0, 256).astype(jnp.uint8)
    enc, dec = ConvEncoder(32, chunk=chunk), ConvDecoder(32, chunk=chunk)
    params = (enc.init(jax.random.key(1), images[:2]), dec.init(jax.random.key(2), jnp.zeros((2, FEATURES))))

    def loss(p):
        embed = enc.apply(p[0], images)
        return jnp.sum((dec.apply(p[1], embed[:, :FEATURES]) - 0.5) ** 2)

    grad = jax.jit(jax.grad(loss))
    t0 = time.perf_counter()
    jax.block_until_ready(grad(params))
    first = time.perf_counter() - t0
    times, others = bench._time_calls(lambda: grad(params), steps)
    return {"chunk": chunk, "compile_and_first_s": round(first, 2), "s": [round(t, 3) for t in times],
            "s_median": round(float(np.median(times)), 3), "other_processes_cpu_share": round(others, 3),
            "load_avg_after": bench._load()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", default="-1,25,50,100,250")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = p.parse_args()
    results = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        results.append(measure(chunk, args.steps))
        print(results[-1], flush=True)
    out = {
        "command": "python benchmarks/cnn_chunk.py " + " ".join(f"--{k}={v}" for k, v in vars(args).items() if v is not None),
        "device": bench.device_info(),
        "images": IMAGES,
        "results": results,
    }
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
