"""The pairing and ratio summary of benchmarks/versus_release.py, and the phase-2 step of its
PyTorch stand-in (benchmarks/torch_release_style.py) where PyTorch is installed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import versus_release  # noqa: E402


def _arm(median, others=0.0):
    return {"s_per_step_median": median, "other_processes_cpu_share": others}


def test_pair_order_alternates_the_first_arm():
    orders = [versus_release.pair_order(i) for i in range(4)]
    assert [o[0] for o in orders] == ["aime_jax", "stand_in", "aime_jax", "stand_in"]
    assert all(sorted(o) == sorted(versus_release.ARMS) for o in orders)


def test_summary_ratios_are_stand_in_over_ours_per_pair():
    pairs = [
        {"aime_jax": _arm(1.0), "stand_in": _arm(2.0, 0.05)},
        {"aime_jax": _arm(2.0, 0.3), "stand_in": _arm(3.0)},
        {"aime_jax": _arm(0.5), "stand_in": _arm(2.0)},
    ]
    s = versus_release.summarize(pairs)
    assert s["pairs"] == 3
    assert s["ratios"] == [2.0, 1.5, 4.0]
    # The median of the per-pair ratios, not the ratio of the arms' medians (2.0 / 1.0).
    assert s["ratio_median"] == 2.0
    assert (s["ratio_min"], s["ratio_max"]) == (1.5, 4.0)
    assert (s["aime_jax_s_per_step"], s["stand_in_s_per_step"]) == (1.0, 2.0)
    assert s["max_other_processes_cpu_share"] == 0.3
    assert s["busy_pairs"] == 1  # the second pair: one arm shared the machine with others


def test_summary_of_an_even_number_of_pairs_takes_the_middle_two():
    pairs = [{"aime_jax": _arm(1.0), "stand_in": _arm(r)} for r in (1.0, 2.0, 3.0, 10.0)]
    assert versus_release.summarize(pairs)["ratio_median"] == 2.5


def test_stand_in_phase2_trains_the_policy_through_the_frozen_world_model():
    torch = pytest.importorskip("torch")
    import torch_release_style as standin

    torch.manual_seed(0)
    model = standin.WorldModel("mdp", idm=False).requires_grad_(False)
    policy = standin.Policy()
    batch = standin.make_batch(model, "cpu")
    loss = standin.phase2_loss(model, policy, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.parameters())
    # Both heads get gradients: the sampled actions depend on the mean and the std.
    assert policy.mean[0].weight.grad.abs().sum() > 0
    assert policy.std[0].weight.grad.abs().sum() > 0
