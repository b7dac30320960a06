"""The phase-1 and phase-2 steps as the authors' PyTorch release runs them, on CPU or GPU; JSON out.

  python benchmarks/torch_release_style.py --out=/tmp/torch_phase1.json
  python benchmarks/torch_release_style.py --phase=2 --out=/tmp/torch_phase2.json

The release itself is not part of this repository. This is our own PyTorch model with the
release's structure and the sizes of our default `rssmo` world model (PAPER.md): eager
execution, the encoders and decoders batched over all B*T steps, and a Python loop over the T
filtering steps (pre-GRU MLP, GRU cell, prior, posterior, sample: dozens of small kernels each),
then the ELBO with free nats and KL balancing, backward, global-norm clipping and Adam. With
`--idm` (the default, like the release's phase 1) it also trains the detached inverse-dynamics
head (two 512x2 ELU MLPs on [s_t, e_{t+1}], 1.6 M parameters), so it compares like with like.
Phase 2 (`--phase=2`) freezes the world model and trains the policy (two 128x2 ELU MLPs for the
tanh-Gaussian's mean and std): in the same Python loop the policy samples each action from the
previous latent state, the ELBO (no free nats, no balancing) is backpropagated through the
frozen model into the policy alone, then clipping and Adam.

Its phase-1 step (MDP and Visual) was timed beside the release on our CPU and ran at nearly the
release's speed, so it stands in for the release wherever the release is not run:
benchmarks/versus_release.py times our steps against it, alternately, in one run
(docs/benchmarks.md). On a GPU its step, like the release's, is bound by launching those small
kernels one at a time.

Needs PyTorch in the aime-jax environment (not a dependency of aime-jax; the GPU image has it).
"""
import argparse
import json
import os
import platform
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import load_avg, time_calls  # noqa: E402

from aime_jax.atomic import write_json  # noqa: E402

B, T, A = 50, 50, 6
H, Z, W = 512, 30, 512
P = 128  # the policy's hidden width
# (vector observation sizes, probe sizes, image?) per modality, cheetah.
MODALITIES = {
    "mdp": ({"position": 8, "velocity": 9}, {}, False),
    "visual": ({}, {"position": 8, "velocity": 9}, True),
}


def mlp(sizes, out=None, act=nn.SiLU, norm=True) -> nn.Sequential:
    layers = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(i, o)] + ([nn.LayerNorm(o)] if norm else []) + [act()]
    if out is not None:
        layers.append(nn.Linear(sizes[-1], out))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(i, o, 4, 2) for i, o in ((3, d), (d, 2 * d), (2 * d, 4 * d), (4 * d, 8 * d))])

    def forward(self, x):
        for i, c in enumerate(self.convs):
            x = c(x)
            if i < 3:
                x = F.relu(x)
        return x.flatten(1)


class Decoder(nn.Module):
    def __init__(self, f, d=32):
        super().__init__()
        self.linear = nn.Linear(f, 32 * d)
        spec = ((32 * d, 4 * d, 5), (4 * d, 2 * d, 5), (2 * d, d, 6), (d, 3, 6))
        self.convs = nn.ModuleList([nn.ConvTranspose2d(i, o, k, 2) for i, o, k in spec])

    def forward(self, x):
        x = self.linear(x)[:, :, None, None]
        for i, c in enumerate(self.convs):
            x = c(x)
            if i < 3:
                x = F.relu(x)
        return torch.sigmoid(x)


class WorldModel(nn.Module):
    def __init__(self, modality: str, idm: bool):
        super().__init__()
        self.vectors, self.probe_sizes, self.image = MODALITIES[modality]
        e = 1024 if self.image else W
        self.encoder = Encoder() if self.image else mlp((sum(self.vectors.values()), W, W))
        self.pre_gru = mlp((Z + A, W))
        self.gru = nn.GRUCell(W, H)
        self.prior = mlp((H, W), 2 * Z)
        self.posterior = mlp((H + e, W), 2 * Z)
        self.decoders = nn.ModuleDict({k: mlp((H + Z, W, W), n) for k, n in self.vectors.items()})
        if self.image:
            self.image_decoder = Decoder(H + Z)
        self.probes = nn.ModuleDict({k: mlp((H + Z, W, W), n) for k, n in self.probe_sizes.items()})
        self.idm = nn.ModuleList([mlp((H + Z + e, W, W), A, nn.ELU, False) for _ in range(2)]) if idm else None

    def embed(self, batch):
        obs = batch["image"].flatten(0, 1) if self.image else torch.cat([batch[k] for k in self.vectors], -1).flatten(0, 1)
        return self.encoder(obs).unflatten(0, (B, T))

    def step(self, h, z, action, embed):
        """One filtering step: (h, z, (posterior mean, std), (prior mean, std))."""
        h = self.gru(self.pre_gru(torch.cat([z, action], -1)), h)
        pm, ps = self.prior(h).chunk(2, -1)
        qm, qs = self.posterior(torch.cat([h, embed], -1)).chunk(2, -1)
        ps, qs = 2 * torch.sigmoid(ps / 2) + 0.1, 2 * torch.sigmoid(qs / 2) + 0.1
        z = qm + qs * torch.randn_like(qm)
        return h, z, (qm, qs), (pm, ps)

    def reconstruction(self, flat, batch):
        """Unit-variance Gaussian negative log-likelihood of the observations, up to a constant."""
        recon = 0.0
        for k, dec in self.decoders.items():
            recon = recon + 0.5 * (dec(flat) - batch[k].flatten(0, 1)).square().sum() / B
        if self.image:
            recon = recon + 0.5 * (self.image_decoder(flat) - batch["image"].flatten(0, 1)).square().sum() / B
        return recon

    def loss(self, batch):
        embed = self.embed(batch)
        h, z = embed.new_zeros(B, H), embed.new_zeros(B, Z)
        hs, zs, post, prior = [], [], [], []
        for t in range(T):
            h, z, q, p = self.step(h, z, batch["pre_action"][:, t], embed[:, t])
            hs.append(h), zs.append(z), post.append(q), prior.append(p)
        feat = torch.cat([torch.stack(hs, 1), torch.stack(zs, 1)], -1)
        flat = feat.flatten(0, 1)
        recon = self.reconstruction(flat, batch)
        qm, qs = (torch.stack(x, 1) for x in zip(*post))
        pm, ps = (torch.stack(x, 1) for x in zip(*prior))
        lhs = gaussian_kl(qm.detach(), qs.detach(), pm, ps)
        rhs = gaussian_kl(qm, qs, pm.detach(), ps.detach())
        # Free nats per step, straight through (the gradient passes where the KL is above them).
        lhs, rhs = torch.clamp(lhs, min=1.0), torch.clamp(rhs, min=1.0)
        loss = recon + (0.8 * lhs + 0.2 * rhs).sum() / B
        detached = flat.detach()
        for k, probe in self.probes.items():
            loss = loss + 0.5 * (probe(detached) - batch[k].flatten(0, 1)).square().sum() / B
        if self.idm is not None:
            x = torch.cat([feat[:, :-1], embed[:, 1:]], -1).detach().flatten(0, 1)
            mean, std = self.idm[0](x), F.softplus(self.idm[1](x)) + 1e-6
            target = batch["pre_action"][:, 1:].flatten(0, 1).clamp(-0.999, 0.999)
            u = torch.atanh(target)
            logp = torch.distributions.Normal(mean, std).log_prob(u) - torch.log1p(-target.square())
            loss = loss - logp.sum() / B
        return loss


def gaussian_kl(m1, s1, m2, s2):
    """KL(N(m1, s1) || N(m2, s2)) per step, summed over the latent dimensions."""
    return (torch.log(s2 / s1) + (s1.square() + (m1 - m2).square()) / (2 * s2.square()) - 0.5).sum(-1)


class Policy(nn.Module):
    """The AIME policy: separate mean and std MLPs on the latent features, a tanh-Gaussian."""

    def __init__(self):
        super().__init__()
        self.mean = mlp((H + Z, P, P), A, nn.ELU, False)
        self.std = mlp((H + Z, P, P), A, nn.ELU, False)

    def forward(self, feat):
        return self.mean(feat), F.softplus(self.std(feat)) + 1e-6


def phase2_loss(model: WorldModel, policy: Policy, batch):
    """The negative ELBO of the observations with every action sampled from the policy at the
    previous latent state (the first one at the zero state); gradients reach the policy through
    the frozen world model."""
    embed = model.embed(batch)
    h, z = embed.new_zeros(B, H), embed.new_zeros(B, Z)
    hs, zs, post, prior = [], [], [], []
    for t in range(T):
        mean, std = policy(torch.cat([h, z], -1))
        action = torch.tanh(mean + std * torch.randn_like(mean))
        h, z, q, p = model.step(h, z, action, embed[:, t])
        hs.append(h), zs.append(z), post.append(q), prior.append(p)
    flat = torch.cat([torch.stack(hs, 1), torch.stack(zs, 1)], -1).flatten(0, 1)
    qm, qs = (torch.stack(x, 1) for x in zip(*post))
    pm, ps = (torch.stack(x, 1) for x in zip(*prior))
    return model.reconstruction(flat, batch) + gaussian_kl(qm, qs, pm, ps).sum() / B


def make_batch(model: WorldModel, device) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.randn(B, T, n, generator=g) for k, n in {**model.vectors, **model.probe_sizes}.items()}
    batch["pre_action"] = torch.rand(B, T, A, generator=g) * 2 - 1
    if model.image:
        batch["image"] = torch.rand(B, T, 3, 64, 64, generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def phase1_step(modality: str, device: str, idm: bool):
    """The release's phase-1 step on a fixed batch: (step function, trained parameter count)."""
    model = WorldModel(modality, idm).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    batch = make_batch(model, device)

    return adam_step(lambda: model.loss(batch), model, opt), sum(p.numel() for p in model.parameters())


def phase2_step(modality: str, device: str):
    """The release's phase-2 step on a fixed batch: (step function, trained parameter count)."""
    model = WorldModel(modality, idm=False).to(device).requires_grad_(False)
    policy = Policy().to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-4)
    batch = make_batch(model, device)

    return adam_step(lambda: phase2_loss(model, policy, batch), policy, opt), sum(p.numel() for p in policy.parameters())


def adam_step(loss_fn, trained: nn.Module, opt):
    """One release-style update: the loss, backward, global-norm clipping at 100, Adam."""

    def step():
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trained.parameters(), 100.0)
        opt.step()
        return loss

    return step


def measure(phase: int, modality: str, device: str, steps: int, warmup: int, idm: bool) -> dict:
    """Seconds per step after `warmup` untimed steps (their times recorded apart), and the share
    of the machine other processes used meanwhile."""
    torch.manual_seed(0)
    step, param_count = phase1_step(modality, device, idm) if phase == 1 else phase2_step(modality, device)
    last = {}

    def finish(loss):
        if device == "cuda":
            torch.cuda.synchronize()
        last["loss"] = loss

    warmup_times, _ = time_calls(step, warmup, finish)
    load_before = load_avg()
    times, others = time_calls(step, steps, finish)
    s = float(np.mean(times))
    return {
        "phase": phase,
        "modality": modality,
        "idm": idm and phase == 1,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "param_count": param_count,
        "warmup_times_s": [round(t, 4) for t in warmup_times],
        "timed_steps": steps,
        "step_times_s": [round(t, 4) for t in times],
        "s_per_step": round(s, 4),
        "s_per_step_median": round(float(np.median(times)), 4),
        "s_per_step_min": round(min(times), 4),
        "env_steps_per_s": round(B * T / s, 1),
        "final_loss_finite": bool(np.isfinite(last["loss"].item())),
        "other_processes_cpu_share": round(others, 3),
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--phase", type=int, default=1, choices=(1, 2))
    p.add_argument("--modalities", default="mdp,visual")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no_idm", action="store_true", help="phase 1: leave the inverse-dynamics head out")
    p.add_argument("--out", default="")
    args = p.parse_args()
    unknown = [m for m in args.modalities.split(",") if m not in MODALITIES]
    if unknown:
        p.error(f"unknown modalities {unknown}; choose from {list(MODALITIES)}")
    result = {
        "command": "python benchmarks/torch_release_style.py " + " ".join(f"--{k}={v}" for k, v in vars(args).items()),
        "host": platform.platform(),
        "cpus": os.cpu_count(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "batch": B,
        "window": T,
        "configs": {},
    }
    for modality in args.modalities.split(","):
        r = measure(args.phase, modality, args.device, args.steps, args.warmup, not args.no_idm)
        result["configs"][modality] = r
        print(f"torch {args.device} phase {args.phase} {modality}: {r['s_per_step']} s/step "
              f"({r['param_count']} trained params)", flush=True)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
