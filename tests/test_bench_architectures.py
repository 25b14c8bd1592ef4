"""The pieces of benchmarks/bench_architectures.py that its figures rest on (the runs themselves take an hour)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_architectures as bench  # noqa: E402

from diffit.nn import backbone_problems  # noqa: E402
from diffit.objectives import EDMObjective  # noqa: E402


@pytest.mark.parametrize("name", sorted(bench.CONFIGS))
def test_every_config_is_a_backbone_of_about_equal_size(name: str) -> None:
    torch.manual_seed(0)
    model = bench.CONFIGS[name]()
    assert backbone_problems(model) == []
    x = torch.randn(2, 1, 16, 16)
    assert model(x, torch.zeros(2), torch.tensor([3, 10])).shape == x.shape  # 10 = the null class
    assert 1.0e6 < sum(p.numel() for p in model.parameters()) < 1.9e6


def test_split_is_fixed_stratified_and_disjoint() -> None:
    split = bench.digits_split()
    assert len(split["x_in"]) == 1437 and len(split["x_out"]) == 360
    per_class_in, per_class_out = torch.bincount(split["y_in"]), torch.bincount(split["y_out"])
    assert ((per_class_out - 0.2 * (per_class_in + per_class_out)).abs() <= 1).all()  # stratified
    everything = torch.cat([split["x_in"], split["x_out"]]).reshape(1797, -1)
    assert torch.unique(everything, dim=0).shape[0] == 1797  # every digit on exactly one side
    again = bench.digits_split()
    assert torch.equal(again["x_out"], split["x_out"]) and torch.equal(again["y_in"], split["y_in"])


def test_heldout_loss_is_deterministic_and_sees_the_model() -> None:
    split = bench.digits_split()
    x, y = bench.to_model_space(split["x_out"][:20]), split["y_out"][:20]
    torch.manual_seed(0)
    model = bench.CONFIGS["diffit"]()
    objective = EDMObjective()
    first = bench.heldout_loss(model, objective, x, y)
    assert first == bench.heldout_loss(model, objective, x, y) and model.training
    with torch.no_grad():
        model.head_conv.bias.fill_(0.3)  # a worse denoiser
    assert bench.heldout_loss(model, objective, x, y) > first


def test_a_changed_recipe_has_its_own_folder_and_its_child_runs_the_same_protocol() -> None:
    default = bench.parse_args(["--suite", "ablations"])
    assert default.out == "benchmarks/results/architectures/ablations" and default.recipe == bench.RECIPE
    changed = bench.parse_args(["--lr", "0.0012", "--label-dropout", "0"])
    assert changed.out == "benchmarks/results/architectures/comparison/lr0.0012-label_dropout0"  # not over the suite's
    assert changed.recipe == bench.RECIPE | {"lr": 0.0012, "label_dropout": 0.0}
    for args in (default, changed):  # the parent finds what its children write only if they agree on the protocol
        child = bench.parse_args(bench.child_argv(args, "unet", 3))
        assert (child.one, child.seed, child.out) == ("unet", 3, args.out)
        assert bench.protocol(child) == bench.protocol(args)
