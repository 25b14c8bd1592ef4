"""Non-leaking augmentation: exact geometric transforms from their labels, gating by p, and training with it."""

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffit.augment import AUGMENT_DIM, apply_augment, draw_augment_labels
from diffit.diffusion import EDMPrecond
from diffit.nn import ImageDiffiT
from diffit.objectives import EDMObjective
from diffit.train import step_generator
from diffit_cli.main import app


def labels(**values: float) -> torch.Tensor:
    names = ["xflip", "yflip", "log_scale", "cos1", "sin", "wc", "ws", "tx", "ty"]
    out = torch.zeros(1, AUGMENT_DIM)
    for k, v in values.items():
        out[0, names.index(k)] = v
    return out


def test_transforms_are_exact_where_they_should_be() -> None:
    x = torch.randn(1, 2, 8, 8)
    assert torch.equal(apply_augment(x, labels()), x)  # zero labels: identity
    assert torch.equal(apply_augment(x, labels(xflip=1)), x.flip(-1))
    assert torch.equal(apply_augment(x, labels(yflip=1)), x.flip(-2))
    rot = apply_augment(x, labels(cos1=-1, sin=1))  # a quarter turn
    assert min((rot - torch.rot90(x, k, dims=(-2, -1))).abs().max() for k in (1, 3)) < 1e-5
    shifted = apply_augment(x, labels(tx=1 / 8))  # one pixel to the right
    torch.testing.assert_close(shifted[..., 1:], x[..., :-1])
    # A 2x zoom about the centre of a linear ramp (which bilinear sampling reproduces exactly): output column j
    # shows input position 1.75 + 0.5 j of the 8 pixels.
    ramp = torch.arange(8.0).expand(1, 1, 8, 8)
    zoomed = apply_augment(ramp, labels(log_scale=1.0))
    torch.testing.assert_close(zoomed[0, 0, 4], 1.75 + 0.5 * torch.arange(8.0))
    # The anisotropic stretch with w = 1 along x (r = 0): 2x along x, 1/2 along y. A vertical ramp then shows
    # input row 3.5 + 2 (i - 3.5) in output row i (rows 2..5 stay inside the image).
    stretched = apply_augment(ramp.transpose(-1, -2), labels(wc=1.0))
    torch.testing.assert_close(stretched[0, 0, 2:6, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    torch.testing.assert_close(apply_augment(ramp, labels(wc=1.0))[0, 0, 4], zoomed[0, 0, 4])  # x as in the zoom


def test_draws_follow_p() -> None:
    g = torch.Generator().manual_seed(0)
    none = draw_augment_labels(g, 4000, p=0.0)
    assert none[:, 1:].abs().max() == 0 and 0.45 < none[:, 0].mean() < 0.55  # x-flips stay on
    some = draw_augment_labels(g, 4000, p=0.3)
    for column in (2, 4, 7):
        assert 0.25 < (some[:, column] != 0).float().mean() < 0.35
    angles = torch.atan2(some[:, 4], some[:, 3] + 1)
    assert angles.abs().max() <= math.pi + 1e-6
    with pytest.raises(ValueError, match="p \\(augmentation probability\\) must be in \\[0, 1\\]"):
        draw_augment_labels(g, 1, p=1.5)


def test_objective_conditions_the_model_on_the_labels() -> None:
    torch.manual_seed(0)
    model = ImageDiffiT(resolution=8, in_channels=1, channels=(8, 16), blocks_per_stage=(1, 1), window=4,
                        num_heads=2, time_dim=16, augment_dim=AUGMENT_DIM)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    objective = EDMObjective(augment_p=1.0)
    draws = objective.draw(step_generator(0, 0), 4, (1, 8, 8))
    loss = objective.loss(model, x0, None, draws)
    loss.mean().backward()
    assert torch.isfinite(loss).all() and model.augment_embed.weight.grad.abs().sum() > 0
    # Sampling-time denoising without labels equals zero labels (no augmentation).
    sigma = torch.full((4,), 0.7)
    torch.testing.assert_close(
        EDMPrecond(model)(x0, sigma), EDMPrecond(model)(x0, sigma, augment_labels=torch.zeros(4, AUGMENT_DIM))
    )
    plain = ImageDiffiT(resolution=8, in_channels=1, channels=(8, 16), blocks_per_stage=(1, 1), window=4,
                        num_heads=2, time_dim=16)  # fmt: skip
    with pytest.raises(ValueError, match="augment_dim=9"):
        objective.loss(plain, x0, None, draws)


def test_cli_trains_with_augmentation(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--steps", "2", "--batch-size", "4", "--augment", "0.12",
                                   "--sample-every", "0", "--out", str(tmp_path / "run")])  # fmt: skip
    assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(app, ["train", "--augment", "2", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--augment must be in [0, 1]" in bad.output


def test_without_xflip_no_label_flips_and_p_0_is_the_identity() -> None:
    g = torch.Generator().manual_seed(0)
    assert torch.equal(draw_augment_labels(g, 64, p=0.0, xflip=False), torch.zeros(64, AUGMENT_DIM))
    every = draw_augment_labels(g, 64, p=1.0, xflip=False)
    assert every[:, 0].abs().max() == 0 and (every[:, 1] != 0).any()


def test_the_rotation_label_turns_the_x_axis_towards_y() -> None:
    """The rotation by the angle a of the labels (cos a - 1, sin a) is R(a) = [[cos a, -sin a], [sin a, cos a]]
    in pixel coordinates (x right, y down): a quarter turn moves the right edge's content to the bottom
    (clockwise on screen), the labels of -a turn the other way."""
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3:5, 7] = 1.0  # a mark at the middle of the right edge
    quarter = apply_augment(x, labels(cos1=-1, sin=1))
    torch.testing.assert_close(quarter, torch.rot90(x, -1, dims=(-2, -1)), rtol=0, atol=1e-5)
    assert quarter[0, 0, 7, 3:5].min() > 0.99  # now at the bottom
    back = apply_augment(x, labels(cos1=-1, sin=-1))
    torch.testing.assert_close(back, torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-5)
