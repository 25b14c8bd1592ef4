"""diffit.evaluation.manifold: improved precision and recall against a brute-force NumPy reference, by hand on a
line, at the extremes, and its refusals; the features and reference plumbing of evaluate_images/evaluate_reference."""

import numpy as np
import pytest
import torch

from diffit.evaluation import (
    FEATURE_DIM,
    FeatureStats,
    evaluate_images,
    evaluate_reference,
    extract_features,
    load_inception,
    manifold_radii,
    open_reference,
    precision_recall,
    reference_statistics,
    save_statistics,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _brute_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # every squared distance, float64
    return np.sort(d, axis=1)[:, k]  # index 0 is the point itself


def _brute_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    d = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return float((d <= radii[None, :]).any(axis=1).mean())


def _brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    return _brute_inside(fake, real, _brute_radii(real, k)), _brute_inside(real, fake, _brute_radii(fake, k))


@pytest.mark.parametrize("block", [1, 7, 16, 40, 4096])  # 7 and 16 divide neither 40 nor 33
@pytest.mark.parametrize("k", [1, 3])
def test_matches_a_brute_force_reference_for_any_block(block, k):
    rng = np.random.default_rng(10 + k)
    real = rng.standard_normal((40, 8))
    fake = rng.standard_normal((33, 8)) * 1.3 + 0.4  # partly overlapping: neither fraction is 0 or 1
    expected = _brute_precision_recall(real, fake, k)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    got = precision_recall(torch.from_numpy(real).float(), torch.from_numpy(fake).float(), k=k, block=block)
    assert got == expected
    assert precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k, block=block) == expected  # float64
    radii = manifold_radii(torch.from_numpy(real).float(), k=k, block=block)
    assert radii.dtype == torch.float32 and radii.shape == (40,)
    np.testing.assert_allclose(radii.numpy(), _brute_radii(real, k), rtol=1e-5)


def test_float64_features_stay_float64_and_mixed_precisions_meet_in_float64():
    rng = np.random.default_rng(12)
    real, fake = rng.standard_normal((20, 6)), rng.standard_normal((15, 6)) + 0.3
    radii = manifold_radii(torch.from_numpy(real), k=2, block=7)
    assert radii.dtype == torch.float64
    np.testing.assert_allclose(radii.numpy(), _brute_radii(real, 2), rtol=1e-12)
    real32 = torch.from_numpy(real).float()
    expected = _brute_precision_recall(real32.double().numpy(), fake, 3)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert precision_recall(real32, torch.from_numpy(fake)) == expected
    assert precision_recall(torch.from_numpy(fake), real32) == expected[::-1]


def test_a_hand_checked_example_on_a_line():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    # k = 3: the 4th smallest of each row of squared distances, the zero to itself included.
    assert manifold_radii(real).tolist() == [9.0, 4.0, 4.0, 9.0, 81.0]
    # k = 1: squared radii 1, 1, 1, 1 and 49 (10 to 3); fake radii 6.25 (-2 to 0.5), 5.76, 4.41, 4.41 (5 to 2.9).
    fake = torch.tensor([[-2.0], [0.5], [2.9], [5.0]])
    # Precision: 0.5 and 2.9 lie within 1 of a real point, 5 within 7 of 10; -2 in no ball.
    # Recall: 0, 1, 2 and 3 lie in the balls of 0.5 and 2.9; 10 is 25 > 4.41 from 5.
    assert precision_recall(real, fake, k=1) == (0.75, 0.8)


def test_a_point_on_a_ball_s_surface_is_inside():
    """d(y, x_i) <= r_i, as in the paper: duplicate features (duplicate images) give k-NN radius 0, and a sample
    equal to them lies in that ball; the surface itself counts (1.0 sits on radius 1 around 0)."""
    real = torch.tensor([[0.0], [0.0], [0.0], [0.0], [50.0], [60.0], [70.0], [80.0]])
    assert precision_recall(real, torch.zeros(4, 1), k=3)[0] == 1.0
    line = torch.tensor([[0.0], [1.0], [-1.0], [30.0]])  # k = 1: radius 1 around 0 (to 1 and to -1)
    assert precision_recall(line, torch.tensor([[1.0], [-1.0], [30.0]]), k=1)[0] == 1.0


def test_identical_sets_are_one_and_separated_sets_are_zero():
    x = torch.randn(50, 16)
    assert precision_recall(x, x.clone(), block=7) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0, block=7) == (0.0, 0.0)
    # Self-distances are exactly zero even where the expansion |x|^2 + |x|^2 - 2 x.x rounds off (a large offset).
    far = x + 1e4
    radii = manifold_radii(far, k=1)
    assert (radii >= 0).all() and torch.isfinite(radii).all()


@pytest.mark.parametrize(
    "real, fake, kwargs, message",
    [
        (torch.zeros(5), torch.zeros(5, 2), {}, "^real_features: expected a 2-D"),
        (torch.zeros(5, 2), torch.zeros(5, 2, 1), {}, "^fake_features: expected a 2-D"),
        (torch.zeros(5, 2), torch.zeros(5, 3), {}, "^real_features and fake_features: feature widths differ"),
        (torch.zeros(3, 2), torch.zeros(5, 2), {}, "^real_features: the k=3-th nearest neighbour needs more than 3"),
        (torch.zeros(5, 2), torch.zeros(1, 2), {"k": 1}, "^fake_features: the k=1-th nearest neighbour needs more"),
        (torch.zeros(5, 2), torch.full((5, 2), float("nan")), {}, "^fake_features: contains NaN or infinite"),
        (torch.zeros(5, 2), torch.zeros(5, 2), {"k": 0}, "^k: expected an integer >= 1, got 0"),
        (torch.zeros(5, 2), torch.zeros(5, 2), {"block": 0}, "^block: expected an integer >= 1, got 0"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument(real, fake, kwargs, message):
    with pytest.raises(ValueError, match=message) as caught:
        precision_recall(real, fake, **kwargs)
    assert "\n" not in str(caught.value)


def test_manifold_radii_bad_input():
    with pytest.raises(ValueError, match="^features: expected a 2-D"):
        manifold_radii(torch.zeros(4))
    with pytest.raises(ValueError, match="^features: contains NaN"):
        manifold_radii(torch.tensor([[0.0], [1.0], [2.0], [float("inf")]]))


# ---------------------------------------------------------------------------------------------------------------
# Features from the one pass over the images, and the reference's


class _StandIn(torch.nn.Module):
    """2048-d features from a fixed random projection of the 299x299 input, like default_1.pt's interface."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


@pytest.fixture
def net(tmp_path):
    torch.manual_seed(0)
    torch.jit.script(_StandIn()).save(str(tmp_path / "stand_in.pt"))
    return load_inception(str(tmp_path / "stand_in.pt"))


def test_one_pass_gives_statistics_and_features_and_the_reference_kinds(tmp_path, net):
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images)
    src = str(tmp_path / "s.npz")
    features = extract_features(src, net, batch_size=4)
    result = evaluate_images(src, net, batch_size=4, features=True)
    assert result.features is not None and torch.equal(result.features, features)
    assert evaluate_images(src, net).features is None
    # Images as REF: the same pass, features included.
    ref = evaluate_reference(src, net, features=True, batch_size=4)  # batches as above: equal bits
    assert ref.features is not None and torch.equal(ref.features, features) and ref.stats.count == 6
    # An ADM reference batch: its stored mu/sigma win, its images give the features.
    stats = FeatureStats(np.ones(FEATURE_DIM), np.eye(FEATURE_DIM), None)
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=stats.mu, sigma=stats.sigma)
    adm = evaluate_reference(str(tmp_path / "adm.npz"), net, features=True, batch_size=4)
    assert np.array_equal(adm.stats.mu, stats.mu) and adm.stats.count is None
    assert adm.features is not None and torch.equal(adm.features, features)
    assert evaluate_reference(str(tmp_path / "adm.npz"), net).features is None
    assert open_reference(str(tmp_path / "adm.npz")) is None
    assert np.array_equal(reference_statistics(str(tmp_path / "adm.npz"), net).mu, stats.mu)
    # Statistics only: FID yes, precision and recall refused, in one line naming ref.
    save_statistics(str(tmp_path / "stats.npz"), FeatureStats(stats.mu, stats.sigma, 6))
    assert evaluate_reference(str(tmp_path / "stats.npz"), net).stats.count == 6
    for call in (open_reference, lambda path, features: evaluate_reference(path, net, features=features)):
        with pytest.raises(ValueError, match="^ref: '.*stats.npz' holds statistics only .*precision and recall need"):
            call(str(tmp_path / "stats.npz"), features=True)
    with pytest.raises(ValueError, match="^ref: '.*missing.npz' does not exist"):
        open_reference(str(tmp_path / "missing.npz"), features=True)


def _images_npz(tmp_path, n: int = 6) -> str:
    np.savez(tmp_path / "s.npz", arr_0=np.random.default_rng(11).integers(0, 256, (n, 5, 5, 3), dtype=np.uint8))
    return str(tmp_path / "s.npz")


def test_max_count_and_progress_reach_a_source_given_by_path(tmp_path, net):
    src = _images_npz(tmp_path)
    all_features = extract_features(src, net, batch_size=4)
    calls = []
    features = extract_features(src, net, batch_size=2, max_count=5, progress=lambda *a: calls.append(a))
    assert features.shape == (5, FEATURE_DIM) and calls == [(2, 5), (4, 5), (5, 5)]
    torch.testing.assert_close(features, all_features[:5])
    calls.clear()
    result = evaluate_images(src, net, batch_size=4, max_count=5, features=True, progress=lambda *a: calls.append(a))
    assert result.stats.count == 5 and result.features is not None and len(result.features) == 5
    assert calls == [(4, 5), (5, 5)]
    calls.clear()
    ref = evaluate_reference(src, net, batch_size=4, max_count=3, progress=lambda *a: calls.append(a))
    assert ref.stats.count == 3 and calls == [(3, 3)]


def test_no_images_and_statistics_of_another_width_are_refused(tmp_path, net):
    np.savez(tmp_path / "empty.npz", arr_0=np.zeros((0, 5, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="^src: no images were read$"):
        extract_features(str(tmp_path / "empty.npz"), net)
    with pytest.raises(ValueError, match="^src: a covariance needs at least 2 images, got 0$"):
        evaluate_images(str(tmp_path / "empty.npz"), net)
    save_statistics(str(tmp_path / "narrow.npz"), FeatureStats(np.zeros(3), np.eye(3), 6))  # not Inception's
    with pytest.raises(ValueError, match="^ref: '.*narrow.npz' holds 3-d statistics, expected 2048-d Inception"):
        evaluate_reference(str(tmp_path / "narrow.npz"), net)
