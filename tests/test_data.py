import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aime_jax.data import EpisodeStore, WindowSampler, list_episodes, load_episode, sample_starts, save_episode
from aime_jax.errors import ConfigError, DatasetError

from support import program, program_env


def _fake_episode(rng, length, image=False, authors=False):
    """An episode in the release's layout; `authors=True` mimics its files (float64, no physics)."""
    fdt = np.float64 if authors else np.float32
    ep = {
        "orientations": rng.normal(size=(length, 14)).astype(fdt),
        "height": rng.normal(size=(length, 1)).astype(fdt),
        "velocity": rng.normal(size=(length, 9)).astype(fdt),
        "pre_action": np.concatenate([np.zeros((1, 6)), rng.uniform(-1, 1, (length - 1, 6))]).astype(fdt),
        "reward": rng.uniform(size=(length, 1)).astype(fdt),
        "is_first": (np.arange(length) == 0)[:, None],
        "is_last": (np.arange(length) == length - 1)[:, None],
        "is_terminal": np.zeros((length, 1), bool),
    }
    if image:
        ep["image"] = rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8)
    if not authors:
        ep["physics_state"] = rng.normal(size=(length, 18))
    return ep


def _write_folder(folder, lengths, seed=0, **kw):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    eps = []
    for i, n in enumerate(lengths):
        ep = _fake_episode(rng, n, **kw)
        save_episode(os.path.join(folder, f"{i}.npz"), ep)
        eps.append(ep)
    return eps


def test_collected_episode_layout(walker_random_dir):
    files = list_episodes(walker_random_dir)
    assert [os.path.basename(f) for f in files] == ["0.npz", "1.npz", "2.npz"]
    with np.load(files[0]) as z:
        raw = {k: z[k] for k in z.files}
    # The authors' layout: vectors (T, d), scalars (T, 1), pre_action zero at the first step.
    assert raw["reward"].shape == (501, 1) and raw["is_first"].shape == (501, 1)
    assert raw["orientations"].shape == (501, 14) and raw["height"].shape == (501, 1)
    assert raw["physics_state"].dtype == np.float64
    np.testing.assert_array_equal(raw["pre_action"][0], 0)
    assert raw["is_first"][0, 0] and not raw["is_first"][1:].any()
    assert raw["is_last"][-1, 0] and not raw["is_last"][:-1].any()
    assert "image" not in raw
    ep = load_episode(files[0])
    assert ep["reward"].shape == (501,) and ep["is_last"].dtype == bool


def test_same_seed_same_dataset(walker_random_dir, tmp_path):
    from aime_jax.data.collect import collect

    collect("walker-walk", "mdp", str(tmp_path), episodes=1, seed=0, progress=False)
    a = load_episode(os.path.join(walker_random_dir, "0.npz"))
    b = load_episode(tmp_path / "0.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_authors_layout_loads_without_conversion(tmp_path):
    rng = np.random.default_rng(0)
    originals = []
    for i in range(12):  # written the release's way: plain savez_compressed, names 0..11
        ep = _fake_episode(rng, 30, image=True, authors=True)
        np.savez_compressed(tmp_path / f"{i}.npz", **ep)
        originals.append(ep)
    files = list_episodes(tmp_path)
    assert [os.path.basename(f) for f in files][:3] == ["0.npz", "1.npz", "2.npz"]
    assert os.path.basename(files[-1]) == "11.npz"  # numeric, not lexicographic, order
    store = EpisodeStore(tmp_path, progress=False)
    assert store.num_episodes == 12 and "physics_state" not in store.keys
    ep = store.episode(11)
    np.testing.assert_allclose(ep["velocity"], originals[11]["velocity"].astype(np.float32))
    np.testing.assert_array_equal(ep["image"], originals[11]["image"])
    batch = WindowSampler(store, 10, 4, seed=0, keys=["image", "velocity", "pre_action"]).batch(0)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 10, 8, 8, 3)
    assert batch["velocity"].dtype == np.float32


def test_store_windows_equal_direct_loading(tmp_path):
    _write_folder(tmp_path, [20, 35, 7, 50], image=True)
    store = EpisodeStore(tmp_path, progress=False)
    assert isinstance(store.arrays["image"], np.memmap)
    window = 8
    sampler = WindowSampler(store, window, 16, seed=3)
    for step in range(5):
        starts = sampler.starts_at(step)
        batch = sampler.batch(step)
        for b, start in enumerate(starts):
            ep_idx = int(np.searchsorted(store.offsets, start, side="right") - 1)
            t0 = start - store.offsets[ep_idx]
            direct = load_episode(os.path.join(tmp_path, f"{ep_idx}.npz"))
            for k in store.keys:
                np.testing.assert_array_equal(batch[k][b], direct[k][t0 : t0 + window])
    # An episode shorter than the window (7 steps) is never sampled from.
    assert len(sampler.starts) == (20 - window + 1) + (35 - window + 1) + (50 - window + 1)


def test_pack_is_reused_and_rebuilt_when_episodes_change(tmp_path):
    _write_folder(tmp_path, [10, 10])
    first = EpisodeStore(tmp_path, progress=False)
    manifest = os.path.join(first.pack_dir, "manifest.json")
    stamp = os.stat(manifest).st_mtime_ns
    again = EpisodeStore(tmp_path, progress=False)
    assert os.stat(manifest).st_mtime_ns == stamp and again.fingerprint == first.fingerprint
    rng = np.random.default_rng(9)
    save_episode(tmp_path / "2.npz", _fake_episode(rng, 12))
    grown = EpisodeStore(tmp_path, progress=False)
    assert grown.num_episodes == 3 and grown.num_steps == 32
    assert grown.fingerprint != first.fingerprint
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n or "old" in n]


MDP_KEYS = ("orientations", "height", "velocity", "pre_action")


def test_a_runs_fingerprint_covers_only_the_keys_and_episodes_it_reads(tmp_path):
    """Rendering images into the files (another modality's key) changes the folder's files but
    not what an MDP run reads; more episodes beyond a selection leave the selection's identity."""
    eps = _write_folder(tmp_path / "a", [10, 12, 11])
    store = EpisodeStore(tmp_path / "a", progress=False)
    mdp, first_two = store.fingerprint_of(MDP_KEYS), store.select(range(2)).fingerprint_of(MDP_KEYS)
    files = store.fingerprint
    assert store.fingerprint_of(("image", *MDP_KEYS)) != mdp
    rng = np.random.default_rng(3)
    for i, ep in enumerate(eps):  # what rendering does: the same arrays, plus `image`
        save_episode(tmp_path / "a" / f"{i}.npz", {**ep, "image": rng.integers(0, 256, (len(ep["reward"]), 8, 8, 3),
                                                                                 dtype=np.uint8)})
    rendered = EpisodeStore(tmp_path / "a", progress=False)
    assert rendered.fingerprint != files and rendered.fingerprint_of(MDP_KEYS) == mdp
    # A copy without compression is the same data; one changed value is not.
    for i, ep in enumerate(eps):
        save_episode(tmp_path / "b" / f"{i}.npz", ep, compress=False)
    assert EpisodeStore(tmp_path / "b", progress=False).fingerprint_of(MDP_KEYS) == mdp
    eps[1]["velocity"][3, 0] += 1.0
    save_episode(tmp_path / "b" / "1.npz", eps[1])
    assert EpisodeStore(tmp_path / "b", progress=False).fingerprint_of(MDP_KEYS) != mdp
    # Demonstrations extended beyond the first two: runs on the first two read the same data.
    save_episode(tmp_path / "a" / "3.npz", {**eps[0], "image": np.zeros((10, 8, 8, 3), np.uint8)})
    grown = EpisodeStore(tmp_path / "a", progress=False)
    assert grown.select(range(2)).fingerprint_of(MDP_KEYS) == first_two
    assert grown.fingerprint_of(MDP_KEYS) != mdp


def test_select_gives_a_view(tmp_path):
    _write_folder(tmp_path, [10, 11, 12, 13])
    store = EpisodeStore(tmp_path, progress=False)
    sub = store.select([3, 1])
    assert sub.num_episodes == 2 and list(sub.lengths) == [13, 11]
    np.testing.assert_array_equal(sub.episode(0)["velocity"], store.episode(3)["velocity"])
    assert sub.fingerprint != store.fingerprint
    starts = sub.valid_starts(11)
    assert len(starts) == 3 + 1


def test_sampler_is_deterministic_and_resumable():
    a = [sample_starts(7, s, 1000, 32) for s in range(10)]
    b = [sample_starts(7, s, 1000, 32) for s in range(10)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # Resuming at step 5 without having drawn steps 0..4 gives the same batch.
    np.testing.assert_array_equal(sample_starts(7, 5, 1000, 32), a[5])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(sample_starts(8, 0, 1000, 32), a[0])


def test_sampler_covers_every_valid_start_uniformly():
    n, batch, steps = 97, 16, 3000
    counts = np.bincount(np.concatenate([sample_starts(0, s, n, batch) for s in range(steps)]), minlength=n)
    assert (counts > 0).all()
    expected = steps * batch / n
    # Binomial spread: ~sqrt(expected) ~ 22; 6 sigma keeps the test deterministic-in-practice.
    assert np.abs(counts - expected).max() < 6 * np.sqrt(expected)


def test_process_shards_are_disjoint_and_form_the_global_batch():
    for step in range(20):
        full = sample_starts(1, step, 500, 64)
        shards = [sample_starts(1, step, 500, 64, p, 4) for p in range(4)]
        assert all(len(s) == 16 for s in shards)
        joined = np.concatenate(shards)
        assert len(np.unique(joined)) == 64
        np.testing.assert_array_equal(joined, full)
    with pytest.raises(ConfigError, match="not divisible"):
        sample_starts(1, 0, 500, 10, 0, 4)


def test_tiny_dataset_samples_with_replacement():
    idx = sample_starts(0, 0, 3, 8)
    assert len(idx) == 8 and set(idx) <= {0, 1, 2}


def test_bad_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        EpisodeStore(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .npz episodes.*collect"):
        EpisodeStore(tmp_path / "empty")


def test_corrupt_file_is_named(tmp_path):
    _write_folder(tmp_path, [10, 10])
    data = (tmp_path / "1.npz").read_bytes()
    (tmp_path / "1.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"1\.npz: not a readable .npz episode"):
        EpisodeStore(tmp_path, progress=False)
    with pytest.raises(DatasetError, match=r"1\.npz"):
        load_episode(tmp_path / "1.npz")


def test_disagreeing_keys_and_shapes_are_named(tmp_path):
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a", tmp_path / "b"
    _write_folder(a, [10, 10])
    ep = _fake_episode(rng, 10)
    del ep["velocity"]
    save_episode(a / "2.npz", ep)
    with pytest.raises(DatasetError, match=r"2\.npz: its keys .* differ"):
        EpisodeStore(a, progress=False)
    _write_folder(b, [10, 10])
    ep = _fake_episode(rng, 10)
    ep["velocity"] = ep["velocity"][:, :5]
    save_episode(b / "2.npz", ep)
    with pytest.raises(DatasetError, match=r"2\.npz: key 'velocity' has shape \(10, 5\)"):
        EpisodeStore(b, progress=False)
    # No half-built pack is left behind by a failed build.
    assert not [n for n in os.listdir(b) if n.startswith(".aime_pack")]


def test_window_longer_than_every_episode(tmp_path):
    _write_folder(tmp_path, [10, 12])
    store = EpisodeStore(tmp_path, progress=False)
    with pytest.raises(DatasetError, match="window length 50 is longer than every episode.*longest has 12"):
        WindowSampler(store, 50, 4, seed=0)


def test_missing_key_mentions_render(tmp_path):
    _write_folder(tmp_path, [10])
    store = EpisodeStore(tmp_path, progress=False)
    with pytest.raises(DatasetError, match="no key.*image.*experiments/render.py"):
        WindowSampler(store, 5, 2, seed=0, keys=["image"])


def test_killed_writer_leaves_no_episode(tmp_path):
    target = tmp_path / "0.npz"
    proc = subprocess.Popen([sys.executable, program("killed_writer"), str(target)], stdout=subprocess.PIPE,
                            env=program_env())
    assert proc.stdout.readline().strip() == b"writing"
    deadline = time.time() + 30
    while not any(n.endswith(".tmp") for n in os.listdir(tmp_path)) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert proc.poll() is None, "the writer finished before it could be killed; make the episode larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = os.listdir(tmp_path)
    assert leftovers and all(n.endswith(".tmp") for n in leftovers)  # killed mid-write...
    with pytest.raises(DatasetError, match="no .npz episodes"):  # ...and no reader sees an episode
        list_episodes(tmp_path)
