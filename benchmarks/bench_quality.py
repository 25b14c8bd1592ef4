"""Quality of the bundled digits checkpoint: conditional accuracy and FID against the real digits.

1. A scikit-learn SVM is trained on half of the real 16x16 digits and tested on the other half (held-out
   accuracy); it then labels generated samples, which should carry their conditioning class.
2. FID (TF-FID Inception features of images upsampled to 299x299) of the samples against real half A, beside
   the real-vs-real FID of half B against half A at the same sample count (the floor for this data size).

Protocol: EMA weights, Heun 18 steps (35 NFE), fp32, no guidance (scale 1), seeds 0..n-1, class i % 10.
Run: python benchmarks/bench_quality.py [--ckpt PATH] [--n 898] [--steps 18] [--cfg 1.0]
"""

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from diffit.checkpoint import BUNDLED_CHECKPOINT, load_weights
from diffit.data import digits_urls, load_images
from diffit.diffusion import sample_heun
from diffit.evaluation import feature_statistics, frechet_distance, load_inception
from diffit.generate import Guidance, default_sigmas, sample, to_uint8


def features(inception: torch.nn.Module, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Inception pool features of uint8 (N, C, H, W) images."""
    with torch.no_grad():
        return torch.cat([inception(images[i : i + batch]) for i in range(0, len(images), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", default=str(BUNDLED_CHECKPOINT))
    parser.add_argument("--n", type=int, default=898, help="generated samples (default: the size of real half A)")
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)

    images, labels = load_images(digits_urls())  # uint8 (1797, 1, 16, 16)
    idx_a, idx_b = train_test_split(np.arange(len(images)), test_size=0.5, stratify=labels.numpy(), random_state=0)
    flat = images.reshape(len(images), -1).float().numpy() / 255.0
    clf = SVC(C=10.0, gamma="scale").fit(flat[idx_a], labels[idx_a].numpy())
    held_out = float((clf.predict(flat[idx_b]) == labels[idx_b].numpy()).mean())

    model, _ = load_weights(args.ckpt)
    start = time.perf_counter()
    cls = torch.arange(args.n) % model.num_classes
    generated = []
    for i in range(0, args.n, args.batch_size):
        x = sample(model, sampler=sample_heun, sigmas=default_sigmas(model, args.steps),
                   seeds=list(range(i, min(i + args.batch_size, args.n))), labels=cls[i : i + args.batch_size],
                   guidance=Guidance(scale=args.cfg))  # fmt: skip
        generated.append(to_uint8(x).permute(0, 3, 1, 2))  # uint8 (b, 1, 16, 16)
    fake = torch.cat(generated)
    sample_seconds = time.perf_counter() - start
    accuracy = float((clf.predict(fake.reshape(len(fake), -1).float().numpy() / 255.0) == cls.numpy()).mean())

    inception = load_inception()
    real_a = feature_statistics(features(inception, images[idx_a]))
    real_b = feature_statistics(features(inception, images[idx_b]))
    fake_s = feature_statistics(features(inception, fake))
    fid_fake = frechet_distance(fake_s.mu, fake_s.sigma, real_a.mu, real_a.sigma)
    fid_real = frechet_distance(real_b.mu, real_b.sigma, real_a.mu, real_a.sigma)

    table = Table(
        title=f"bundled digits checkpoint: Heun {args.steps} steps ({2 * args.steps - 1} NFE), cfg {args.cfg}"
    )
    for col in ("metric", "value"):
        table.add_column(col)
    table.add_row("classifier held-out accuracy (real half B)", f"{held_out:.4f}")
    table.add_row(f"conditional accuracy of {args.n} samples", f"{accuracy:.4f}")
    table.add_row(f"FID samples ({args.n}) vs real A ({len(idx_a)})", f"{fid_fake:.2f}")
    table.add_row(f"FID real B ({len(idx_b)}) vs real A ({len(idx_a)})", f"{fid_real:.2f}")
    table.add_row("sampling wall time (s)", f"{sample_seconds:.1f}")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
