"""The image encoder + decoder, forward and backward, at the phase-1 batch (B*T = 2500 images,
paper sizes) for several `cnn_chunk` settings and both forms of the image loss; JSON out.

  python benchmarks/cnn_chunk.py --chunks=-1,25,50,100,250 --out=benchmarks/results/cnn_chunk_cpu.json
  python benchmarks/cnn_chunk.py --chunks=50 --losses=decoded,fused --rounds=8 \
      --out=benchmarks/results/cnn_image_loss_cpu.json

The loss is the squared error of the decoded embedding against the images (an autoencoder), so
every layer's kernel gradient and the gradient through the encoder are computed, as in a phase-1
step (which adds the RSSM, ~2 s on this CPU). `decoded` decodes the images and takes the error of
the full-size prediction; `fused` has the decoder score them with `image_loss.squared_error` as
its head, each image's sum of squared errors (what the ELBO uses since the fused loss landed; results from before it,
like cnn_chunk_cpu.json, used a constant 0.5 target). -1 is the whole batch at
once. Each setting is compiled and run once untimed; then `--rounds` rounds time each setting
`--steps` times in turn, so the settings share the machine's slow and fast minutes
(benchmarks/machine.py's timer: it also records the share of the machine other processes used).
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
from machine import load_avg, time_calls  # noqa: E402

from aime_jax.atomic import write_json  # noqa: E402
from aime_jax.hostmem import reexec_with_huge_pages  # noqa: E402
from aime_jax.nets.image_loss import squared_error  # noqa: E402
from aime_jax.nets.cnn import IMAGE_SHAPE, ConvDecoder, ConvEncoder, image_to_float  # noqa: E402

IMAGES = 2500  # B=50 x T=50
FEATURES = 640  # the walker rssm's decoder input: h (512) + z (128)


def compile_setting(chunk: int, image_loss: str):
    images = jax.random.randint(jax.random.key(0), (IMAGES,) + IMAGE_SHAPE, 0, 256).astype(jnp.uint8)
    enc, dec = ConvEncoder(32, chunk=chunk), ConvDecoder(32, chunk=chunk)
    params = (enc.init(jax.random.key(1), images[:2]), dec.init(jax.random.key(2), jnp.zeros((2, FEATURES))))

    def loss(p):
        embed = enc.apply(p[0], images)[:, :FEATURES]
        if image_loss == "fused":
            return jnp.sum(dec.apply(p[1], embed, head=squared_error, target=images))
        return jnp.sum((dec.apply(p[1], embed) - image_to_float(images)) ** 2)

    grad = jax.jit(jax.grad(loss))
    t0 = time.perf_counter()
    jax.block_until_ready(grad(params))
    return (lambda: grad(params)), time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", default="-1,25,50,100,250")
    p.add_argument("--losses", default="fused", help="comma-separated: decoded, fused")
    p.add_argument("--steps", type=int, default=3, help="timed calls per setting and round")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = p.parse_args()
    settings = [(int(c), l) for c in args.chunks.split(",") for l in args.losses.split(",")]
    if any(l not in ("decoded", "fused") for _, l in settings):
        p.error(f"--losses takes decoded and/or fused, got {args.losses!r}")
    calls, results = {}, {}
    for chunk, image_loss in settings:
        calls[chunk, image_loss], first = compile_setting(chunk, image_loss)
        results[chunk, image_loss] = {"chunk": chunk, "image_loss": image_loss, "compile_and_first_s": round(first, 2), "s": [], "other_processes_cpu_share": []}
    for _ in range(args.rounds):
        for key, call in calls.items():
            times, others = time_calls(call, args.steps, jax.block_until_ready)
            results[key]["s"] += [round(t, 3) for t in times]
            results[key]["other_processes_cpu_share"].append(round(others, 3))
    for r in results.values():
        r["s_median"] = round(float(np.median(r["s"])), 3)
        r["s_min"] = min(r["s"])
        print({k: v for k, v in r.items() if k != "s"}, flush=True)
    out = {
        "command": "python benchmarks/cnn_chunk.py " + " ".join(f"--{k}={v}" for k, v in vars(args).items() if v is not None),
        "device": bench.device_info(),
        "images": IMAGES,
        "load_avg_after": load_avg(),
        "results": list(results.values()),
    }
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
