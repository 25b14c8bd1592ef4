"""Images/s of ``write_image_shards`` (``diffit data shard``) with 0, 1 and N worker processes, on ImageNet-like
input: a folder of 500x375 JPEG photos (quality 90) in 10 class folders, written as 256 px PNG shards with the ADM
center crop, the step before ``diffit data encode`` for ``diffit train --res 256 --latent``.

    python benchmarks/bench_shard.py [--images 600] [--workers 0,1,2]

The photos are synthetic (smooth colour fields with fine texture and noise, so that JPEG decoding and PNG
encoding do realistic work); the folder is in the page cache, so this is the CPU cost. Every row writes the
same shards: the table checks that their content hashes agree. ``start s`` is the cost of starting the worker
processes (each imports diffit, and with it torch), timed on a one-image source; ``steady`` leaves it out. The
ImageNet column extrapolates the steady rate to its 1,281,167 training images.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from diffit.data import folder_source, write_image_shards

IMAGENET = 1_281_167


def photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """A photo-like RGB image: a bicubic-upsampled 8x6 colour field, a fine texture and sensor noise."""
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    yy, xx = np.mgrid[0:height, 0:width]
    texture = 20 * np.sin(xx * rng.uniform(0.05, 0.4) + yy * rng.uniform(0.05, 0.4))[..., None]
    pixels = np.asarray(field, np.float32) + texture + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", default=f"0,1,{os.cpu_count() or 1}")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            folder = os.path.join(tmp, "src", f"class{i % 10}")
            os.makedirs(folder, exist_ok=True)
            photo(rng).save(os.path.join(folder, f"{i:06d}.JPEG"), quality=90)
        os.makedirs(os.path.join(tmp, "one", "class0"))
        photo(rng).save(os.path.join(tmp, "one", "class0", "0.JPEG"), quality=90)

        def run(src: str, out: str, workers: int) -> tuple[float, str]:
            start = time.perf_counter()
            source = folder_source(os.path.join(tmp, src))
            manifest = write_image_shards(source, os.path.join(tmp, out, "train-%06d.tar"), resolution=256,
                                          center_crop=True, workers=workers, replace=True)  # fmt: skip
            return time.perf_counter() - start, manifest.content_hash

        rows = []
        for workers in counts:
            startup = run("one", f"one{workers}", workers)[0] - run("one", "one", 0)[0]
            seconds, digest = run("src", f"out{workers}", workers)
            rows.append((workers, args.images / seconds, args.images / (seconds - startup), startup, digest))
    base, steady_base = rows[0][1:3]
    print(f"{args.images} JPEGs 500x375 -> 256 px PNG shards (center crop), {os.cpu_count()} CPUs")
    print(f"{'workers':>7} | {'images/s':>8} | {'vs first':>8} | {'start s':>7} | {'steady':>6} | {'vs first':>8} | "
          f"{'ImageNet h':>10} | content hash")  # fmt: skip
    for workers, rate, steady, startup, digest in rows:
        hours = IMAGENET / steady / 3600
        print(f"{workers:>7} | {rate:>8.1f} | {rate / base:>7.2f}x | {startup:>7.1f} | {steady:>6.1f} | "
              f"{steady / steady_base:>7.2f}x | {hours:>10.1f} | {digest[:16]}")  # fmt: skip
    if len({row[-1] for row in rows}) != 1:
        raise SystemExit("the worker counts wrote different shards")


if __name__ == "__main__":
    main()
