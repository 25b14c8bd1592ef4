"""Decoded samples/s: 32x32 PNG shards and 4x32x32 float16 latent shards vs a plain PIL image-folder loader,
the fast-forward rate of a resumed stream, and diffit's PNG writer against PIL's.

    python benchmarks/bench_data.py [--images 6000] [--batches 40] [--against COMMIT]

The baseline is measured in the same run on the same PNG bytes: a map-style Dataset that opens one PNG
file per sample with PIL (the usual ImageFolder approach) in a shuffled DataLoader. The files sit in the
page cache, so this measures per-sample CPU cost, the baseline's best case (no cold-disk or network
latency, where shards gain far more). Each row times ``--batches`` batches of 256 after a warm-up batch
(worker start-up and shuffle-buffer fill excluded). ``--against COMMIT`` adds the ``diffit.data`` of an
older commit (e.g. c2ce85c, the hand-written tar reader) read from git, on the same shards in the same run.

Fast-forward: a stream resumed at step k reads, without decoding, the samples of the current epoch before
k (whole earlier epochs are skipped from dataset.json's counts). The rate is timed without shard counts, so
every skipped sample is read.

PNG writer: ``encode_image`` writes L and RGB images with diffit's own encoder (every row Up-filtered, one IDAT)
instead of PIL's (adaptive filter per row). The table times both on the same images, 32 and 256 px, at zlib
levels 0 and 6 (``write_image_shards``' default), and their decode through the readers' ``decode_image``.
"""

import argparse
import dataclasses
import importlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from types import ModuleType

import numpy as np
import torch
from _timing import median_seconds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import diffit.data
from diffit.data import ShardWriter, array_source, decode_image, encode_image, latent_pipeline, write_image_shards
from diffit.data.images import encode_png
from diffit.data.streams import TrainStream

BATCH = 256


class FolderImages(Dataset):
    """Baseline: one PNG file per sample, decoded with PIL, label from the folder name."""

    def __init__(self, root: str) -> None:
        self.files = [
            (os.path.join(root, c, f), int(c))
            for c in sorted(os.listdir(root))
            for f in sorted(os.listdir(os.path.join(root, c)))
        ]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[i]
        with Image.open(path) as img:
            x = torch.from_numpy(np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy())
        return x.float().div(127.5).sub(1.0), label


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """Natural-ish 32x32 RGB images (smooth random fields), so PNG sizes are realistic, not noise-sized."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(coarse[i]).resize((32, 32), Image.Resampling.BICUBIC))
    return out


def endless(loader: DataLoader) -> Iterable:
    """Epoch after epoch of a finite loader (the folder baseline), like the endless shard streams."""
    while True:
        yield from loader


def rate(batches: Iterable, count: int) -> float:
    """Samples per second over ``count`` batches after one warm-up batch."""
    it = iter(batches)
    next(it)
    start, seen = time.perf_counter(), 0
    for _ in range(count):
        seen += len(next(it)[0])
    return seen / (time.perf_counter() - start)


def data_at_commit(commit: str, folder: str) -> ModuleType:
    """``diffit.data`` as of ``commit`` (read with ``git archive``), importable as ``old_data``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "-C", root, "archive", commit, "diffit/data"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    package = os.path.join(folder, "old_data")
    os.rename(os.path.join(folder, "diffit", "data"), package)
    for name in os.listdir(package):
        if name.endswith(".py"):
            path = os.path.join(package, name)
            with open(path) as f:
                text = re.sub(r"\bdiffit\.data\b", "old_data", f.read())
            with open(path, "w") as f:
                f.write(text)
    sys.path.insert(0, folder)
    return importlib.import_module("old_data")


def fast_forward_rate(urls: str, skip: int) -> float:
    """Samples/s at which a resumed latent stream reads past ``skip`` samples (counts=None: all are read)."""
    stream = latent_pipeline(urls, batch_size=1).dataset
    stream = TrainStream(dataclasses.replace(stream.shards, counts=None), stream.decoder, stream.collate,
                         seed=0, start_step=0, shuffle_buffer=1000)  # fmt: skip
    start = time.perf_counter()
    next(stream.raw_samples(0, 1, skip))
    return skip / (time.perf_counter() - start)


def per_image_ms(work: Callable, images: np.ndarray | list[bytes]) -> float:
    """Milliseconds per image of ``work(image)`` over ``images``: the median of 3 passes after one warm-up pass."""
    return median_seconds(lambda: [work(image) for image in images], repeats=3, warmup=1) / len(images) * 1e3


def pil_png(pixels: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def png_writer_rows(images: np.ndarray) -> list[str]:
    """diffit's PNG writer against PIL's: encode and decode ms/image, and file size, at 32 and 256 px."""
    large = np.stack([np.asarray(Image.fromarray(i).resize((256, 256), Image.Resampling.BICUBIC)) for i in images[:50]])
    rows = []
    for side, batch in ((32, images[:500]), (256, large)):
        for level in (0, 6):
            ours, pil = partial(encode_png, level=level), partial(pil_png, level=level)
            size = [sum(len(f(a)) for a in batch) / len(batch) for f in (ours, pil)]
            write = [per_image_ms(f, batch) for f in (ours, pil)]
            read = [per_image_ms(decode_image, [f(a) for a in batch]) for f in (ours, pil)]
            rows.append(
                f"{side:>4} | {level:>5} | {write[0]:>8.3f} | {write[1]:>7.3f} | {write[1] / write[0]:>6.1f} | "
                f"{read[0]:>7.3f} | {read[1]:>6.3f} | {read[1] / read[0]:>5.2f} | {size[0] / size[1]:>9.2f}"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--against", help="also time diffit.data as of this git commit (e.g. c2ce85c)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        images = smooth_images(args.images)
        labels = np.arange(args.images) % 10
        for c in range(10):
            os.makedirs(os.path.join(tmp, "folder", str(c)))
        for i, (img, c) in enumerate(zip(images, labels, strict=True)):
            with open(os.path.join(tmp, "folder", str(c), f"{i:06d}.png"), "wb") as f:
                f.write(encode_image(Image.fromarray(img)))  # the very bytes the shards hold
        np.savez(os.path.join(tmp, "a.npz"), images=images, labels=labels)
        m = write_image_shards(
            array_source(os.path.join(tmp, "a.npz")), os.path.join(tmp, "img", "i-%04d.tar"), max_count=1000
        )
        image_urls = os.path.join(tmp, "img", f"i-{{0000..{len(m.shards) - 1:04d}}}.tar")
        rng = np.random.default_rng(0)
        with ShardWriter(os.path.join(tmp, "lat", "l-%04d.tar"), max_count=1000) as w:
            for i in range(args.images):
                mean = rng.standard_normal((2, 4, 32, 32)).astype(np.float16)
                buf_m, buf_s = io.BytesIO(), io.BytesIO()
                np.save(buf_m, mean)
                np.save(buf_s, np.abs(mean) * 0.1)
                w.write(
                    f"{i:08d}",
                    {"mean.npy": buf_m.getvalue(), "std.npy": buf_s.getvalue(), "cls": str(labels[i]).encode()},
                )
        latent_urls = os.path.join(tmp, "lat", f"l-{{0000..{len(w.shards) - 1:04d}}}.tar")

        old = data_at_commit(args.against, os.path.join(tmp, "old")) if args.against else None
        rows = []
        for workers in (0, 2):
            folder = DataLoader(
                FolderImages(os.path.join(tmp, "folder")),
                batch_size=BATCH,
                shuffle=True,
                num_workers=workers,
                drop_last=True,
                persistent_workers=workers > 0,
            )
            image_kw = dict(batch_size=BATCH, resolution=32, channels=3, num_workers=workers)
            row = [rate(endless(folder), args.batches)]
            for lib in (diffit.data, old):
                if lib is not None:
                    row.append(rate(lib.image_pipeline(image_urls, **image_kw), args.batches))
                    row.append(
                        rate(lib.latent_pipeline(latent_urls, batch_size=BATCH, num_workers=workers), args.batches)
                    )
            rows.append((workers, row))
        skip = min(args.images - 1, 5000)
        forward = fast_forward_rate(latent_urls, skip)
    png_rows = png_writer_rows(images)
    print(f"{args.images} samples, batch {BATCH}, {args.batches} timed batches per row (samples/s)")
    head = f"{'workers':>7} | {'folder PNG':>10} | {'shard PNG':>9} | {'ratio':>5} | {'latent':>7}"
    if old is not None:
        head += f" | {'old PNG':>7} | {'new/old':>7} | {'old lat':>7} | {'new/old':>7}"
    print(head)
    for workers, (base, png, lat, *older) in rows:
        line = f"{workers:>7} | {base:>10.0f} | {png:>9.0f} | {png / base:>5.2f} | {lat:>7.0f}"
        if older:
            line += f" | {older[0]:>7.0f} | {png / older[0]:>7.2f} | {older[1]:>7.0f} | {lat / older[1]:>7.2f}"
        print(line)
    imagenet = 1_281_167
    print(
        f"fast-forward (read, no decode) of {skip} latents: {forward:.0f} samples/s on one reader; a resume reads "
        f"at most one epoch share per reader: ImageNet's {imagenet:,} latents take {imagenet / forward:.0f} s on "
        f"one reader, {imagenet / forward / 8:.0f} s with 8 readers (e.g. 8 GPUs x 1 worker) reading in parallel"
    )

    print("PNG writer, ms per image (diffit's Up-filter encoder vs PIL's adaptive filter, same images)")
    print(f"{'side':>4} | {'level':>5} | {'write us':>8} | {'write PIL':>7} | {'PIL/us':>6} | "
          f"{'read us':>7} | {'read PIL':>6} | {'PIL/us':>5} | {'bytes us/PIL':>9}")  # fmt: skip
    for row in png_rows:
        print(row)


if __name__ == "__main__":
    main()
