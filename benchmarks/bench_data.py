"""Decoded samples/s: 32x32 PNG shards and 4x32x32 float16 latent shards vs a plain PIL image-folder loader.

    python benchmarks/bench_data.py [--images 6000] [--batches 40]

The baseline is measured in the same run on the same PNG bytes: a map-style Dataset that opens one PNG
file per sample with PIL (the usual ImageFolder approach) in a shuffled DataLoader. The files sit in the
page cache, so this measures per-sample CPU cost, the baseline's best case (no cold-disk or network
latency, where shards gain far more). Each row times
``--batches`` batches of 256 after a warm-up batch (worker start-up and shuffle-buffer fill excluded).
"""

import argparse
import io
import os
import tempfile
import time
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from diffit.data import (
    ShardWriter,
    array_source,
    encode_image,
    image_pipeline,
    latent_pipeline,
    write_image_shards,
)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--batches", type=int, default=40)
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
            base = rate(endless(folder), args.batches)
            shards = rate(
                image_pipeline(image_urls, batch_size=BATCH, resolution=32, channels=3, num_workers=workers),
                args.batches,
            )
            latents = rate(latent_pipeline(latent_urls, batch_size=BATCH, num_workers=workers), args.batches)
            rows.append((workers, base, shards, latents))
    print(
        f"{args.images} samples, batch {BATCH}, {args.batches} timed batches per row; "
        f"ratios against the PIL folder loader with the same workers"
    )
    print(
        f"{'workers':>7} | {'folder PNG/s':>12} | {'shard PNG/s':>11} | {'ratio':>5} | {'latent/s':>9} | {'ratio':>5}"
    )
    for workers, base, shards, latents in rows:
        print(
            f"{workers:>7} | {base:>12.0f} | {shards:>11.0f} | {shards / base:>5.2f} | {latents:>9.0f} | "
            f"{latents / base:>5.2f}"
        )


if __name__ == "__main__":
    main()
