"""A global batch that the devices do not divide (the paper's 50 windows on 8, 16 or 32 devices)
is padded to a multiple of their number with rows of weight 0: the real windows are those an
unpadded run samples, and every train step equals the one-device step of the real rows alone."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aime_jax import parallel
from aime_jax.agents import bc
from aime_jax.data import sample_starts

from support import REPO, program, program_env, run_program


@pytest.mark.parametrize("batch,devices,padded", [(50, 1, 50), (50, 8, 56), (50, 16, 64), (50, 32, 64),
                                                  (64, 16, 64), (3, 8, 8)])
def test_padded_batch_is_the_next_multiple_of_the_devices(batch, devices, padded):
    assert parallel.padded_batch(batch, devices) == padded


def test_padding_keeps_the_real_windows_and_splits_over_processes():
    for step in range(5):
        real = sample_starts(3, step, 1000, 50)
        padded = sample_starts(3, step, 1000, 50, padded_batch=64)
        # The real rows first, as one device draws them; the padding repeats real windows.
        np.testing.assert_array_equal(padded[:50], real)
        np.testing.assert_array_equal(padded[50:], real[:14])
        # 4 processes take contiguous quarters of the padded batch: the last holds the padding.
        shards = [sample_starts(3, step, 1000, 50, p, 4, padded_batch=64) for p in range(4)]
        assert [len(s) for s in shards] == [16] * 4
        np.testing.assert_array_equal(np.concatenate(shards), padded)
    # A batch smaller than its padding repeats itself as often as needed.
    np.testing.assert_array_equal(sample_starts(0, 0, 10, 3, padded_batch=8), np.resize(sample_starts(0, 0, 10, 3), 8))


def test_bc_epochs_pad_their_batches_alike():
    plain = bc.EpochSampler(37, 10, seed=1)
    padded = [bc.EpochSampler(37, 10, seed=1, process_index=p, process_count=2, padded_batch=16) for p in range(2)]
    for step in range(9):
        idx = np.concatenate([s.indices(step) for s in padded])
        np.testing.assert_array_equal(idx[:10], plain.indices(step))
        np.testing.assert_array_equal(idx[10:], plain.indices(step)[:6])


def test_row_weights_average_the_real_rows():
    import jax.numpy as jnp

    assert parallel.row_weights(jnp.arange(8), 8, 8) is None
    w = np.asarray(parallel.row_weights(jnp.arange(8), 5, 8))
    x = np.arange(8.0) ** 2
    np.testing.assert_allclose(np.mean(w * x), np.mean(x[:5]), rtol=1e-6)
    assert np.all(w[5:] == 0)


@pytest.mark.slow
def test_padded_steps_on_eight_devices_equal_the_one_device_step_of_the_real_rows():
    out = run_program("padded_steps", timeout=900)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    for name, counts in result["counts"].items():
        # The weights change no collective: one all-reduce per step, none inside a scan.
        assert counts["in_loops"] == 0 and counts["total"] == 1, (name, counts)
    assert result["counts"]["phase1"]["loops"] >= 2
    for name, diff in result["diffs"].items():
        # Three Adam steps on the padded batch over 8 devices and on the 10 real rows on one:
        # equal up to float summation order (the junk padding rows would move them far more).
        assert diff["params"] < 1e-5, (name, diff)
        for key, (one, eight) in diff["metrics"].items():
            assert abs(one - eight) <= 1e-4 * max(1.0, abs(one)), (name, key, one, eight)


@pytest.mark.slow
def test_two_processes_with_a_padded_batch_train_like_one_device(walker_random_dir):
    # Three phase-1 steps on a batch of 6 windows, on 1 process x 1 device and on 2 processes x 2
    # devices (launch/local.sh): 4 devices split it as 8 rows, process 1 holding real rows 4-5 and
    # the 2 padding rows.
    command = [sys.executable, program("padded_processes"), walker_random_dir]
    env = program_env()
    env.pop("XLA_FLAGS", None)
    results = {}
    for name, args, extra in (("one", command, {}),
                              ("two", [os.path.join(REPO, "launch", "local.sh"), "2", *command],
                               {"AIME_LOCAL_DEVICES": "2"})):
        out = subprocess.run(args, env=dict(env, **extra), capture_output=True, text=True, timeout=600)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        assert out.returncode == 0 and len(lines) == 1, (name, out.stdout[-2000:], out.stderr[-3000:])
        results[name] = json.loads(lines[0][len("RESULT "):])
    one, two = results["one"], results["two"]
    assert (one["rows"], two["rows"]) == (6, 4)  # 2 processes x 4 rows: 6 real, 2 padding
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=2e-5)
    np.testing.assert_allclose(two["sums"], one["sums"], rtol=1e-4, atol=1e-4)
