"""Sample a grid from the bundled digits checkpoint, composing the pieces by hand (no CLI).

python examples/minimal_sample.py --out digits.png --steps 18
"""

import argparse
from pathlib import Path

import torch

from diffit.checkpoint import BUNDLED_CHECKPOINT, load_weights
from diffit.diffusion import EDMPrecond, bind_labels, karras_sigmas, per_sample_noise, sample_heun
from diffit.generate import make_grid, save_png, to_uint8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", type=Path, default=BUNDLED_CHECKPOINT, help="a diffit .safetensors weights file")
    parser.add_argument("--out", type=Path, default=Path("digits.png"))
    parser.add_argument("--steps", type=int, default=18, help="Heun steps (2 * steps - 1 network evaluations)")
    parser.add_argument("--per-class", type=int, default=10, help="images per class (one row per class)")
    args = parser.parse_args()

    # 1. The backbone, rebuilt from the constructor arguments stored in the file, with its EMA weights.
    model, _ = load_weights(args.ckpt)

    # 2. The denoiser D(x, sigma, y): EDM preconditioning around the backbone (paper Sec. 3.4).
    denoiser = EDMPrecond(model, sigma_data=0.5)

    # 3. Class labels, one row per digit, bound so that the sampler sees a plain D(x, sigma).
    labels = torch.arange(model.num_classes).repeat_interleave(args.per_class)
    conditional = bind_labels(denoiser, labels)

    # 4. Karras et al. noise levels and per-sample generators: image i depends on seed i only.
    sigmas = karras_sigmas(args.steps, 0.002, 80.0, rho=7.0)
    seeds = list(range(len(labels)))
    noise = per_sample_noise(seeds, (model.in_channels, model.resolution, model.resolution))

    # 5. EDM's deterministic Heun sampler (Algorithm 1), reporting its network evaluations.
    nfe = {}
    x = sample_heun(conditional, noise() * sigmas[0], sigmas, noise=noise, callback=lambda s: nfe.update(n=s["nfe"]))

    # 6. [-1, 1] -> uint8 grid, one row per class, written atomically.
    save_png(make_grid(to_uint8(x), nrow=args.per_class), args.out, upscale=4)
    print(f"wrote {args.out}: {len(seeds)} digits, {nfe['n']} network evaluations each")


if __name__ == "__main__":
    with torch.no_grad():
        main()
