"""Reading pipelines: determinism, rank/worker splitting, exact in-memory batches, latents, bad input."""

import dataclasses
import gc
import inspect
import io
import itertools
import os
import shutil
import tarfile
import warnings

import numpy as np
import pytest
import torch
from helpers import run_two_ranks
from PIL import Image

from diffit.data import (
    BadSampleLog,
    BadSampleWarning,
    Batches,
    ShardWriter,
    array_source,
    batch_indices,
    digits_urls,
    encode_image,
    eval_pipeline,
    image_pipeline,
    latent_pipeline,
    load_images,
    memory_batches,
    read_shard,
    write_image_shards,
    write_manifest,
)


def _images(n: int, res: int = 4, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, res, res), dtype=np.uint8)


def _shards(folder, n: int = 30, per_shard: int = 5, res: int = 4, channels: int = 1) -> str:
    """n random images with labels i % 7 in shards of per_shard; returns the brace pattern."""
    os.makedirs(folder, exist_ok=True)
    np.savez(os.path.join(folder, "a.npz"), images=_images(n, res, channels), labels=np.arange(n) % 7)
    m = write_image_shards(
        array_source(os.path.join(folder, "a.npz")), os.path.join(folder, "s-%03d.tar"), max_count=per_shard
    )
    return os.path.join(folder, f"s-{{000..{len(m.shards) - 1:03d}}}.tar")


def _take(batches, k: int) -> list:
    it = iter(batches)
    return [next(it) for _ in range(k)]


# ----------------------------------------------------------------------------------------- image streams


def test_image_pipeline_batches_are_valid_and_deterministic(tmp_path):
    urls = _shards(tmp_path)
    images, labels = load_images(urls)
    make = lambda **kw: image_pipeline(urls, batch_size=8, resolution=4, channels=1, seed=3, shuffle_buffer=10, **kw)
    a, b = _take(make(), 6), _take(make(), 6)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, y = a[0]
    assert x.shape == (8, 1, 4, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    # Every sample is a dataset image (possibly mirrored) with its own label.
    table = {(img.numpy().tobytes(), int(lab)) for img, lab in zip(images, labels, strict=True)}
    table |= {(img.flip(-1).numpy().tobytes(), int(lab)) for img, lab in zip(images, labels, strict=True)}
    for xb, yb in a:
        u8 = ((xb + 1) * 127.5).round().to(torch.uint8)
        assert all((img.numpy().tobytes(), int(lab)) in table for img, lab in zip(u8, yb, strict=True))


def test_image_pipeline_flip_off_yields_unflipped_images(tmp_path):
    urls = _shards(tmp_path)
    images, _ = load_images(urls)
    known = {img.numpy().tobytes() for img in images}
    for x, _ in _take(image_pipeline(urls, batch_size=10, resolution=4, channels=1, flip=False), 6):
        u8 = ((x + 1) * 127.5).round().to(torch.uint8)
        assert all(img.numpy().tobytes() in known for img in u8)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("workers, world_size", [(0, 1), (2, 1), (0, 2), (2, 2)])
def test_stream_resumed_at_step_k_equals_the_uninterrupted_stream(tmp_path, workers, world_size):
    urls = _shards(tmp_path, n=40, per_shard=5)  # 8 shards: up to 4 readers get 2 each
    for rank in range(world_size):
        make = lambda start, rank=rank: image_pipeline(
            urls, batch_size=4, resolution=4, channels=1, seed=5, shuffle_buffer=6, rank=rank,
            world_size=world_size, num_workers=workers, start_step=start,
        )  # fmt: skip
        full = _take(make(0), 24)  # several epochs for every reader
        assert all(x.shape == (4 // world_size, 1, 4, 4) for x, _ in full)
        for k in (7, 22):  # odd (the worker slots rotate) and past whole epochs (skipped without reading)
            assert _same(_take(make(k), 24 - k), full[k:])


def test_fast_forward_reads_but_does_not_decode_the_skipped_samples(tmp_path):
    from diffit.data.streams import TrainStream

    batches = image_pipeline(_shards(tmp_path, n=20, per_shard=5), batch_size=3, resolution=4, channels=1)
    shards, decoder, calls = batches.dataset.shards, batches.dataset.decoder, []

    def counting(raw: dict, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        calls.append(raw["__key__"])
        return decoder(raw, rng)

    for counts in (shards.counts, None):  # earlier epochs skipped from dataset.json's counts, or read
        stream = TrainStream(
            dataclasses.replace(shards, counts=counts), counting, batches.dataset.collate, seed=0, start_step=17,
            shuffle_buffer=4,
        )  # fmt: skip
        calls.clear()
        next(iter(stream))
        assert len(calls) == 3  # only the batch of step 17 (samples 51..53, in epoch 2) was decoded


def test_resume_without_dataset_json_reads_through(tmp_path):
    urls = _shards(tmp_path, n=20, per_shard=5)
    os.remove(tmp_path / "dataset.json")  # no shard counts: the fast-forward reads every skipped epoch
    make = lambda start: latent_free_images(urls, start)
    assert _same(_take(make(9), 3), _take(make(0), 12)[9:])


def latent_free_images(urls: str, start: int):
    return image_pipeline(urls, batch_size=4, resolution=4, channels=1, seed=1, shuffle_buffer=3, start_step=start)


def test_resume_is_exact_across_a_truncated_shard(tmp_path):
    urls = _shards(tmp_path, n=20, per_shard=5)
    data = (tmp_path / "s-002.tar").read_bytes()
    (tmp_path / "s-002.tar").write_bytes(data[: 512 * 5 + 100])  # cut in sample 1: 1 of 5 survives
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        full = _take(latent_free_images(urls, 0), 15)  # 3 epochs of the 20 declared samples
        resumed = _take(latent_free_images(urls, 11), 4)
        assert _same(resumed, full[11:])
        one_pass = eval_pipeline(urls, batch_size=5)
        assert sum(len(keys) for _, _, keys in one_pass) == 16
    assert one_pass.skipped == 4  # dataset.json lists 5 samples for the shard: 4 are lost


def test_a_batch_of_lost_samples_borrows_from_the_next_batches_and_resumes_exactly(tmp_path):
    urls = _shards(tmp_path, n=20, per_shard=5)
    (tmp_path / "s-001.tar").write_bytes(b"")  # dataset.json still lists its 5 samples: 5 lost in a row
    make = lambda start: image_pipeline(
        urls, batch_size=2, resolution=4, channels=1, seed=0, shuffle_buffer=1, flip=False, start_step=start
    )
    known = {img.tobytes() for i, img in enumerate(_images(20)) if not 5 <= i < 10}  # s-001 held 5..9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        full = _take(make(0), 30)  # 3 epochs of 10 batches, each with 2 or more batches of lost samples only
        for x, _ in full:
            assert {img.numpy().tobytes() for img in ((x + 1) * 127.5).round().to(torch.uint8)} <= known
        for k in range(1, 28, 3):
            assert _same(_take(make(k), 2), full[k : k + 2])


def test_lost_samples_are_counted_once_whoever_scans_their_shard(tmp_path):
    urls = _shards(tmp_path, n=5, per_shard=5)  # one shard; a sample is 4 tar blocks (cls and png, with headers)
    data = (tmp_path / "s-000.tar").read_bytes()
    (tmp_path / "s-000.tar").write_bytes(data[: 512 * 8 + 100])  # cut inside sample 2: 2 survive, 3 are lost
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        passes = [eval_pipeline(urls, batch_size=2, rank=rank, world_size=2) for rank in range(2)]
        assert [sum(len(keys) for _, _, keys in p) for p in passes] == [1, 1]  # one shard, two readers scan it
        assert sum(p.skipped for p in passes) == 3  # reported by reader 0 alone
        stream = image_pipeline(urls, batch_size=1, resolution=4, channels=1, shuffle_buffer=1)
        _take(stream, 5)  # one epoch: 2 samples, then 3 lost places that borrow from the next epoch
        assert stream.skipped == 3  # counted when the shard was read, not again as placeholders


def _random_shard_set(folder, rng: np.random.Generator) -> list[str]:
    """1-5 shards of 0-6 samples, about 15% undecodable; one shard cut inside its samples in half the sets, no
    dataset.json in 3 of 10."""
    from diffit.data.shards import ShardInfo

    infos, key = [], 0
    os.makedirs(folder)
    for index in range(int(rng.integers(1, 6))):
        path = os.path.join(folder, f"s-{index:03d}.tar")
        with tarfile.open(path, "w"):  # an empty shard stays one; ShardWriter replaces it when it writes
            pass
        with ShardWriter(os.path.join(folder, "s-%03d.tar"), max_count=100, start_index=index) as writer:
            for _ in range(int(rng.integers(0, 7))):
                pixels = rng.integers(0, 256, (4, 4), dtype=np.uint8)
                png = b"garbage" if rng.random() < 0.15 else encode_image(Image.fromarray(pixels))
                writer.write(f"{key:06d}", {"png": png, "cls": str(key % 3).encode()})
                key += 1
        infos.append(ShardInfo.of(path))
    write_manifest(folder, kind="image", shards=infos, resolution=4, channels=1, classes=3)
    if rng.random() < 0.5 and (held := [i for i in infos if i.count]):
        victim = held[int(rng.integers(len(held)))]  # a sample is 4 tar blocks (2 headers, 2 small members):
        os.truncate(os.path.join(folder, victim.name), 512 * int(rng.integers(1, 4 * victim.count)))  # cut inside
    if rng.random() < 0.3:
        os.remove(os.path.join(folder, "dataset.json"))
    return [os.path.join(folder, i.name) for i in infos]


def _steps(urls: list[str], start: int, count: int, *, workers: int, monkeypatch, **kwargs) -> list:
    """Steps ``start..start+count-1`` of one rank; ``workers`` DataLoader workers played in this process: worker w
    serves steps start + w, start + w + W, ... (the DataLoader's round-robin)."""
    import diffit.data.streams as streams

    stream, iterators = image_pipeline(urls, start_step=start, resolution=4, channels=1, **kwargs).dataset, []
    for w in range(workers):
        monkeypatch.setattr(streams, "_slot", lambda w=w: (w, workers))  # read when the worker's stream starts
        iterators.append(iter(stream))
        iterators[-1] = itertools.chain([next(iterators[-1])], iterators[-1])
    return [next(iterators[t % workers]) for t in range(count)]


@pytest.mark.filterwarnings("ignore::diffit.data.BadSampleWarning")
@pytest.mark.slow
def test_resume_and_evaluation_are_exact_over_random_shard_layouts(tmp_path, monkeypatch):
    """24 random sets (uneven, empty, bad, truncated shards; with and without dataset.json) x ranks x workers x
    shuffle buffers: a stream resumed at a random step k yields the uninterrupted stream's batches from k on, and
    an evaluation pass over the same readers yields every readable sample exactly once."""
    import diffit.data.streams as streams

    for trial in range(24):  # every (ranks, workers) pair 4 times; often fewer shards than readers
        rng = np.random.default_rng(trial)
        urls = _random_shard_set(str(tmp_path / str(trial)), rng)
        world, workers, steps = 1 + trial % 2, 1 + trial // 2 % 3, int(rng.integers(6, 20))
        k = int(rng.integers(1, steps))
        batch, buffer, seed = world * int(rng.integers(1, 4)), int(rng.choice([1, 2, 3, 10])), int(rng.integers(1000))
        kwargs = dict(batch_size=batch, world_size=world, seed=seed, shuffle_buffer=buffer, workers=workers)
        for rank in range(world):
            try:
                full = _steps(urls, 0, steps, rank=rank, monkeypatch=monkeypatch, **kwargs)
            except RuntimeError:  # no readable sample for one of the readers: so for the resumed run too
                with pytest.raises(RuntimeError, match="no readable samples|no sample could be decoded"):
                    _steps(urls, k, steps - k, rank=rank, monkeypatch=monkeypatch, **kwargs)
                continue
            resumed = _steps(urls, k, steps - k, rank=rank, monkeypatch=monkeypatch, **kwargs)
            assert _same(resumed, full[k:]), (trial, rank, k, kwargs)
        raws = [raw for url in urls for raw in read_shard(url, None)]  # a cut shard may end after a sample's cls
        readable = [raw["__key__"] for raw in raws if raw.get("png", b"garbage") != b"garbage" and "cls" in raw]
        seen = []  # and one evaluation pass over the same readers yields each readable sample exactly once
        for rank in range(world):
            one_pass = eval_pipeline(urls, batch_size=batch, rank=rank, world_size=world, resolution=4, channels=1)
            for w in range(workers):
                monkeypatch.setattr(streams, "_slot", lambda w=w, n=workers: (w, n))
                seen += [key for _, _, keys in one_pass.dataset for key in keys]
        assert sorted(seen) == sorted(readable), (trial, kwargs)


def test_training_epoch_yields_every_sample_once_over_ranks_and_workers(tmp_path):
    """8 shards of 5 over 2 ranks x 2 workers: each reader's epoch is 10 samples = 2 batches of 5, so the
    first 4 steps of both ranks are exactly one epoch; unflipped pixels are the source images."""
    urls = _shards(tmp_path, n=40, per_shard=5)
    source = {img.tobytes() for img in _images(40)}
    seen = []
    for rank in range(2):
        batches = image_pipeline(
            urls, batch_size=10, resolution=4, channels=1, flip=False, rank=rank, world_size=2, num_workers=2
        )
        for x, _ in _take(batches, 4):
            seen += [img.numpy().tobytes() for img in ((x + 1) * 127.5).round().to(torch.uint8)]
    assert len(seen) == 40 and set(seen) == source


@pytest.mark.parametrize("shards, readers", [(10, 1), (10, 4), (3, 4)])
def test_readers_of_an_epoch_share_no_shard_and_see_every_sample_once(tmp_path, shards, readers):
    from diffit.data import expand_urls
    from diffit.data.streams import epoch_samples, reader_shards

    urls = expand_urls(_shards(tmp_path, n=30, per_shard=30 // shards))
    keys, chosen = [], []
    for index in range(readers):
        where = dict(seed=1, epoch=3, index=index, total=readers)
        chosen.append(set(reader_shards(shards, **where, shuffle=True)))
        samples = epoch_samples(urls, None, BadSampleLog(), **where, shuffle_buffer=4, pad=False)
        keys += [s["__key__"] for s in samples]
    assert sorted(keys) == [f"{i:08d}" for i in range(30)]
    if shards >= readers:  # split by shard; with fewer shards than readers every reader scans all of them
        assert sum(len(c) for c in chosen) == shards and set().union(*chosen) == set(range(shards))


def test_two_gloo_processes_resume_exactly(tmp_path):
    urls = _shards(tmp_path / "d", n=24, per_shard=3)
    script = tmp_path / "rank.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from diffit.data import image_pipeline\n"
        "dist.init_process_group('gloo')\n"
        "take = lambda start, n: [b for b, _ in zip(image_pipeline(sys.argv[1], batch_size=4, resolution=4,\n"
        "    channels=1, seed=2, shuffle_buffer=4, start_step=start), range(n), strict=False)]\n"
        "torch.save({'full': take(0, 9), 'resumed': take(5, 4)}, f'{sys.argv[2]}/rank{dist.get_rank()}.pt')\n"
        "dist.destroy_process_group()\n"
    )
    run_two_ranks(script, urls, str(tmp_path), timeout=120)
    runs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for run in runs:
        assert _same(run["resumed"], run["full"][5:]) and run["full"][0][0].shape == (2, 1, 4, 4)
    assert not torch.equal(runs[0]["full"][0][0], runs[1]["full"][0][0])  # ranks read different shards


def test_workers_are_deterministic_and_distinct(tmp_path):
    urls = _shards(tmp_path)
    make = lambda: image_pipeline(urls, batch_size=6, resolution=4, channels=1, seed=1, num_workers=2, shuffle_buffer=5)
    a, b = _take(make(), 4), _take(make(), 4)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], a[1][0])  # consecutive batches come from different workers


@pytest.mark.parametrize("per_shard", [3, 40])  # 10 shards (split by shard) and 1 shard (split by sample)
def test_eval_pass_yields_every_sample_once_over_2_ranks_x_2_workers(tmp_path, per_shard):
    urls = _shards(tmp_path, n=30, per_shard=per_shard)
    keys = []
    for rank in range(2):
        for x, y, k in eval_pipeline(urls, batch_size=4, rank=rank, world_size=2, num_workers=2):
            assert x.shape[0] == y.shape[0] == len(k) <= 2
            keys.extend(k)
    assert sorted(keys) == [f"{i:08d}" for i in range(30)]


def test_eval_pass_is_unflipped_and_ordered_for_one_reader(tmp_path):
    urls = _shards(tmp_path)
    images, labels = load_images(urls)
    batches = list(eval_pipeline(urls, batch_size=7, resolution=4, channels=1))
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(((x + 1) * 127.5).round().to(torch.uint8), images)
    assert torch.equal(torch.cat([b[1] for b in batches]), labels)


# ---------------------------------------------------------------------------------- exact in-memory batches


def test_memory_batches_resume_exactly():
    images, labels = torch.from_numpy(_images(13)), torch.arange(13) % 5
    run = _take(memory_batches(images, labels, batch_size=4, seed=7), 10)
    resumed = _take(memory_batches(images, labels, batch_size=4, seed=7, start_step=6), 4)
    for (xa, ya), (xb, yb) in zip(run[6:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_seed = next(iter(memory_batches(images, labels, batch_size=4, seed=8)))
    assert not torch.equal(run[0][0], other_seed[0])


def test_memory_batches_two_ranks_equal_one_process():
    images, labels = torch.from_numpy(_images(11, channels=3)), torch.arange(11)
    single = _take(memory_batches(images, labels, batch_size=6, seed=2, world_size=1, rank=0), 5)
    r0 = _take(memory_batches(images, labels, batch_size=6, seed=2, world_size=2, rank=0), 5)
    r1 = _take(memory_batches(images, labels, batch_size=6, seed=2, world_size=2, rank=1), 5)
    for (x, y), (x0, y0), (x1, y1) in zip(single, r0, r1, strict=True):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    with pytest.raises(ValueError, match="batch_size"):
        next(iter(memory_batches(images, labels, batch_size=5, seed=0, world_size=2, rank=0)))


def test_memory_batches_sample_epochs_without_replacement_and_flip_exactly():
    n, b = 12, 4
    seen = np.concatenate([batch_indices(n, b, seed=0, step=k) for k in range(3 * n // b)])
    for epoch in range(3):
        assert sorted(seen[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(seen[:n], seen[n : 2 * n])  # each epoch is shuffled anew
    images, labels = torch.from_numpy(_images(n)), torch.arange(n)
    flips = 0
    for k, (x, y) in enumerate(_take(memory_batches(images, labels, batch_size=b, seed=0), 6)):
        assert torch.equal(y, torch.from_numpy(batch_indices(n, b, 0, k)))
        base = images[y].float() / 127.5 - 1
        same = (x == base).flatten(1).all(1)
        mirrored = (x == base.flip(-1)).flatten(1).all(1)
        assert bool((same | mirrored).all())
        flips += int((mirrored & ~same).sum())
    assert 0 < flips < 24


def test_digits_load_in_memory():
    images, labels = load_images(digits_urls())
    x, y = next(iter(memory_batches(images, labels, batch_size=16, seed=0)))
    assert x.shape == (16, 1, 16, 16) and set(y.tolist()) <= set(range(10))


# ----------------------------------------------------------------------------------------------- latents


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_latent_pipeline_flip_choice_scaling_and_posterior_sampling(tmp_path):
    mean = np.stack([np.full((4, 2, 2), 1.0), np.full((4, 2, 2), -1.0)]).astype(np.float16)  # image, mirror
    std = np.full((2, 4, 2, 2), 0.5, dtype=np.float16)
    with ShardWriter(str(tmp_path / "l-%03d.tar")) as w:
        for i in range(20):
            w.write(f"k{i:02d}", {"mean.npy": _npy(mean), "std.npy": _npy(std), "cls": b"3"})
    url = str(tmp_path / "l-000.tar")
    z, y = next(iter(latent_pipeline(url, batch_size=8, flip=False, sample=False, scale_factor=0.5)))
    assert z.shape == (8, 4, 2, 2) and torch.all(z == 0.5) and torch.all(y == 3)
    z, _ = next(iter(latent_pipeline(url, batch_size=16, flip=True, sample=False, scale_factor=1.0)))
    per_sample = z.flatten(1)[:, 0]
    assert set(per_sample.tolist()) == {1.0, -1.0}  # both stored variants are picked
    z, _ = next(iter(latent_pipeline(url, batch_size=16, flip=False, sample=True, scale_factor=1.0)))
    assert abs(z.mean().item() - 1.0) < 0.15 and abs(z.std().item() - 0.5) < 0.15


# --------------------------------------------------------------------------------------------- bad input


def test_latent_shards_read_as_images_are_refused_with_the_latent_hint(tmp_path):
    pair = _npy(np.zeros((2, 4, 2, 2), dtype=np.float16))
    with ShardWriter(str(tmp_path / "l-%03d.tar")) as w:
        for i in range(4):
            w.write(f"k{i}", {"mean.npy": pair, "std.npy": pair, "cls": b"0"})
    url = str(tmp_path / "l-000.tar")
    with warnings.catch_warnings(record=True) as caught:  # without dataset.json: every sample is a bad one
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="no readable images"):
            load_images(url)
    assert "no image member (png/jpg/jpeg/webp/ppm/bmp); a latent sample: read latent shards with latent_pipeline" in (
        str(caught[0].message)
    )
    write_manifest(str(tmp_path), kind="latent", shards=w.shards, resolution=2, channels=4, classes=1)
    hint = "^urls: these are latent shards, not images; read them with latent_pipeline \\(`diffit train --latent`\\)$"
    # load_images failed with 'channels: expected 1 (grayscale) or 3 (RGB), got 4'; resize=True skipped the check
    for read in (
        lambda: load_images(url, resolution=2, channels=4),
        lambda: image_pipeline(url, batch_size=2, resolution=2, channels=3, resize=True),
        lambda: eval_pipeline(url, batch_size=2),
    ):
        with pytest.raises(ValueError, match=hint):
            read()
    write_manifest(str(tmp_path), kind="image", shards=w.shards, resolution=2, channels=3, classes=1)
    with pytest.raises(ValueError, match="^urls: these are image shards, not latents; encode images with `diffit data"):
        latent_pipeline(url, batch_size=2)


def test_missing_or_empty_urls_fail_immediately(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        image_pipeline(str(tmp_path / "nope-{000..003}.tar"), batch_size=2, resolution=4, channels=1)
    with pytest.raises(ValueError, match="urls"):
        eval_pipeline("", batch_size=2)
    with pytest.raises(ValueError, match="urls"):
        load_images([])


def test_bad_worker_count_or_dataset_is_named_in_one_line(tmp_path):
    urls = _shards(tmp_path, n=6)
    with pytest.raises(ValueError, match=r"num_workers must be an integer >= 0, got -1"):
        image_pipeline(urls, batch_size=2, resolution=4, channels=1, num_workers=-1)
    with pytest.raises(ValueError, match=r"num_workers must be an integer >= 0, got -1"):
        eval_pipeline(urls, batch_size=2, num_workers=-1)
    with pytest.raises(TypeError, match="dataset: expected a TrainStream or EvalStream, got list"):
        Batches([], num_workers=0, name="x")


def test_wrong_resolution_or_channels_is_rejected_unless_resized(tmp_path):
    urls = _shards(tmp_path, n=6, res=4, channels=3)
    with pytest.raises(
        ValueError, match="^resolution: .*; pass resize=True, or re-shard with `diffit data shard --res 8`$"
    ):
        image_pipeline(urls, batch_size=2, resolution=8, channels=3)
    with pytest.raises(ValueError, match="^channels: .*, or re-shard with `diffit data shard --channels 1`$"):
        image_pipeline(urls, batch_size=2, resolution=4, channels=1)
    os.remove(tmp_path / "dataset.json")  # without a manifest the check happens per image
    with pytest.raises(ValueError, match="4x4 but resolution=8 .*, or re-shard with `diffit data shard --res 8`$"):
        next(iter(image_pipeline(urls, batch_size=2, resolution=8, channels=3, shuffle_buffer=1)))
    x, _ = next(iter(image_pipeline(urls, batch_size=2, resolution=8, channels=1, resize=True)))
    assert x.shape == (2, 1, 8, 8)
    for bad in ({"channels": 2}, {"channels": 0}, {"resolution": 0}):  # channels=2 gave RGB before, silently
        args = {"resolution": 8, "channels": 3, "resize": True} | bad
        with pytest.raises(ValueError, match=rf"^{next(iter(bad))}(: expected| must be an integer)"):
            image_pipeline(urls, batch_size=2, **args)
        with pytest.raises(ValueError, match=rf"^{next(iter(bad))}(: expected| must be an integer)"):
            load_images(urls, **args)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _bad_dataset(folder) -> tuple[list[str], int]:
    """Shard 0 good (5), shard 1 with an undecodable image and a missing label (3 good), shard 2 truncated."""
    urls = _shards(folder / "good", n=5, per_shard=5)
    good = load_images(urls)

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(good[0][i, 0].numpy()).save(buf, format="PNG")
        return buf.getvalue()

    with ShardWriter(str(folder / "b-%03d.tar"), start_index=1) as w:
        w.write("b0", {"png": png(0), "cls": b"1"})
        w.write("b1", {"png": b"not an image", "cls": b"1"})
        w.write("b2", {"png": png(1)})  # label missing
        w.write("b3", {"png": png(2), "cls": b"2"})
        w.write("b4", {"png": png(3), "cls": b"2"})
    with ShardWriter(str(folder / "b-%03d.tar"), start_index=2) as w:
        for i in range(4):
            w.write(f"c{i}", {"png": png(i), "cls": b"0"})
    data = (folder / "b-002.tar").read_bytes()
    (folder / "b-002.tar").write_bytes(data[: 512 * 5 + 100])  # cut inside the 3rd member of sample c1
    with tarfile.open(folder / "good" / "s-000.tar") as tar:
        assert len(tar.getmembers()) == 10
    os.replace(folder / "good" / "s-000.tar", folder / "b-000.tar")
    return [str(folder / f"b-{i:03d}.tar") for i in range(3)], 5 + 3 + 1


def test_bad_samples_are_skipped_counted_and_warned_once_per_shard(tmp_path):
    urls, good = _bad_dataset(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = eval_pipeline(urls, batch_size=3, labelled=True)
        keys = [k for _, _, ks in batches for k in ks]
    assert len(keys) == good and "b1" not in keys and "b2" not in keys and "c1" not in keys
    assert batches.skipped == 3  # undecodable, missing label, truncated
    messages = [str(w.message) for w in caught if issubclass(w.category, BadSampleWarning)]
    per_shard = [m for m in messages if "skipping bad sample" in m]
    assert len(per_shard) == 2 and urls[1] in per_shard[0] and urls[2] in per_shard[1]
    assert any("skipped 3 bad sample(s) in total" in m for m in messages)


def test_training_stream_survives_bad_shards(tmp_path):
    urls, _ = _bad_dataset(tmp_path)
    with pytest.warns(BadSampleWarning):
        stream = image_pipeline(urls, batch_size=4, resolution=4, channels=1, labelled=True, shuffle_buffer=4)
        batches = _take(stream, 8)  # several epochs over 9 good samples
    assert all(x.shape == (4, 1, 4, 4) for x, _ in batches)
    assert stream.skipped >= 3


def _caught(fn) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, BadSampleWarning)]


def test_label_outside_the_class_range_is_a_bad_sample_named_in_one_line(tmp_path):
    urls = _shards(tmp_path, n=5, per_shard=5)  # labels 0..4: dataset.json says 5 classes
    good = load_images(urls)[0]
    with ShardWriter(str(tmp_path / "s-%03d.tar"), start_index=1) as w:
        for key, cls in (("ok", b"4"), ("big", b"57"), ("edge", b"5"), ("neg", b"-3"), ("abc", b"abc")):
            w.write(key, {"png": _png(good[0, 0].numpy()), "cls": cls})
    both = [str(tmp_path / "s-000.tar"), str(tmp_path / "s-001.tar")]
    batches, messages = _caught(lambda: [b for b in eval_pipeline(both, batch_size=4)])
    keys = [k for _, _, ks in batches for k in ks]
    assert "ok" in keys and not {"big", "edge", "neg", "abc"} & set(keys) and len(keys) == 6  # 5 is the null class
    first = next(m for m in messages if "skipping bad sample" in m)
    assert "'big'" in first and "57" in first and "0..4" in first and "\n" not in first


def test_non_finite_latents_are_bad_samples_named_by_key(tmp_path):
    good = np.zeros((2, 4, 2, 2), np.float16)
    with ShardWriter(str(tmp_path / "l-%03d.tar")) as w:
        for i in range(6):
            w.write(f"k{i}", {"mean.npy": _npy(good), "cls": b"0"})
        w.write("nan", {"mean.npy": _npy(np.full_like(good, np.nan)), "cls": b"0"})
    stream = latent_pipeline(str(tmp_path / "l-000.tar"), batch_size=7, flip=False, shuffle_buffer=1)
    (z, _), messages = _caught(lambda: next(iter(stream)))
    assert torch.isfinite(z).all() and stream.skipped == 1
    assert any("'nan'" in m and "non-finite" in m for m in messages)


@pytest.mark.parametrize("content", [b"", bytes(1024)])  # an empty file, a tar of only end-of-archive blocks
def test_empty_or_zero_block_shards_are_reported(tmp_path, content):
    urls = _shards(tmp_path, n=4, per_shard=2)
    (tmp_path / "s-001.tar").write_bytes(content)
    batches, messages = _caught(lambda: list(eval_pipeline(urls, batch_size=4)))
    assert sum(len(ks) for _, _, ks in batches) == 2
    assert any("s-001.tar" in m for m in messages)
    os.remove(tmp_path / "dataset.json")  # without a manifest nothing is counted, but it is still reported
    _, messages = _caught(lambda: list(eval_pipeline(urls, batch_size=4)))
    assert any("s-001.tar" in m for m in messages)


def test_bad_gzip_shard_is_skipped_without_resource_warning(tmp_path):
    _shards(tmp_path, n=4, per_shard=2)
    gz = tmp_path / "s-001.tar.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(300))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = eval_pipeline([str(tmp_path / "s-000.tar"), str(gz)], batch_size=4)
        keys = [k for _, _, ks in batches for k in ks]
        gc.collect()  # an unclosed file would warn when collected
    assert len(keys) == 2
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(str(gz) in str(w.message) for w in caught if issubclass(w.category, BadSampleWarning))


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [  # float images were scaled as if 0..255; the other two raised IndexError at some later batch
        (
            torch.rand(4, 1, 2, 2),
            torch.zeros(4, dtype=torch.long),
            r"^images: expected uint8 \(N, C, H, W\) with N >= 1",
        ),
        (torch.zeros(0, 1, 2, 2, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), r"^images: expected uint8"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), r"^labels: expected one label"),
    ],
)
def test_memory_batches_refuse_images_and_labels_that_do_not_fit(images, labels, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        next(inspect.unwrap(memory_batches)(images, labels, batch_size=2, seed=0))  # as users run it


def test_a_shard_longer_than_dataset_json_says_keeps_the_declared_stream(tmp_path):
    urls = _shards(tmp_path, n=20, per_shard=5)
    declared = (tmp_path / "dataset.json").read_text()
    _shards(tmp_path / "more", n=7, per_shard=7)  # a shard of 7 samples put in the place of one listed with 5
    shutil.copy(tmp_path / "more" / "s-000.tar", tmp_path / "s-001.tar")
    assert (tmp_path / "dataset.json").read_text() == declared
    with pytest.warns(BadSampleWarning, match=r"s-001.tar holds more than the 5 samples dataset.json lists; the rest"):
        full = _take(latent_free_images(urls, 0), 15)  # 3 epochs of the 20 declared samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        assert _same(_take(latent_free_images(urls, 11), 4), full[11:])  # epochs skipped by the declared counts
        one_pass = eval_pipeline(urls, batch_size=5)
        assert sum(len(keys) for _, _, keys in one_pass) == 20 and one_pass.skipped == 0
