"""`diffit data shard` and `diffit data encode` through Typer's CliRunner."""

import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffit.data import ShardWriter, array_source, digits_manifest, load_images, read_manifest, write_image_shards
from diffit_cli.main import app

runner = CliRunner()


def test_shard_image_folder_with_center_crop(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 10), color=(i * 50, 10, 10)).save(tmp_path / "src" / cls / f"{i}.png")
    out = tmp_path / "out" / "t-%06d.tar"
    result = runner.invoke(
        app, ["data", "shard", str(tmp_path / "src"), str(out), "--res", "8", "--center-crop", "--max-count", "4"]
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(str(tmp_path / "out"))
    assert (manifest.count, manifest.classes, manifest.resolution, len(manifest.shards)) == (6, 2, 8, 2)
    images, labels = load_images(str(tmp_path / "out" / "t-{000000..000001}.tar"))
    assert images.shape == (6, 3, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_shard_npz_as_jpeg(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.full((3, 8, 8, 3), 128, dtype=np.uint8), labels=np.array([0, 1, 2]))
    result = runner.invoke(
        app, ["data", "shard", str(tmp_path / "a.npz"), str(tmp_path / "o" / "j-%03d.tar"), "--jpeg-quality", "90"]
    )
    assert result.exit_code == 0, result.output
    assert read_manifest(str(tmp_path / "o")).extra["image_format"] == "jpg"
    images, _ = load_images(str(tmp_path / "o" / "j-000.tar"))
    assert abs(images.float().mean().item() - 128) < 2


def test_shard_digits_reproduces_the_bundled_hash(tmp_path):
    result = runner.invoke(app, ["data", "shard", "--digits", str(tmp_path / "d-%06d.tar")])
    assert result.exit_code == 0, result.output
    assert read_manifest(str(tmp_path)).content_hash == digits_manifest().content_hash


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "shard", "/no/such/folder", "x-%03d.tar"], "does not exist"),
        (["data", "shard", "{src}", "{tmp}/no-pattern.tar"], "out_pattern"),
        (["data", "shard", "{src}", ""], "out_pattern"),
        (["data", "shard", "{src}", "{tmp}/a.npy/x-%03d.tar"], "out_pattern"),
        (["data", "shard", "{src}", "{tmp}/o/x-%03d.tar", "--res", "0"], "--res"),
        (["data", "shard", "{src}", "{tmp}/o/x-%03d.tar", "--res", "-8"], "--res"),
        (["data", "shard", "--digits", "{tmp}/o/x-%03d.tar", "--res", "0"], "--res"),
        (["data", "shard", "--digits", "{tmp}/o/x-%03d.tar", "--res", "100000"], "--res"),  # hours before
        (["data", "shard", "{src}", "{tmp}/o/x-%03d.tar", "--center-crop"], "--center-crop"),  # ignored before
        (["data", "shard", "{src}", "{tmp}/o/x-%03d.tar", "--channels", "0"], "channels"),
        (["data", "shard", "{src}", "{tmp}/o/x-%03d.tar", "--channels", "2"], "channels"),
        (["data", "shard", "{src}", "{tmp}/o/x-%03d.tar", "--jpeg-quality", "0"], "--jpeg-quality"),
        (["data", "shard", "{src}", "{tmp}/o/x-%03d.tar", "--max-count", "0"], "--max-count"),
        (["data", "shard", "{src}", "{tmp}/o/x-%03d.tar", "--max-size", "-1"], "--max-size"),
        (["data", "encode", "{tmp}/none-{{000..001}}.tar", "{tmp}/l-%03d.tar", "--vae", "x"], "does not exist"),
        (["data", "encode", "{shard}", "{tmp}/l/l-%03d.tar", "--vae", "x", "--res", "0"], "--res"),
        (["data", "encode", "{shard}", "{tmp}/l/l-%03d.tar", "--vae", "x", "--res", "9000"], "--res"),
        (["data", "encode", "{shard}", "{tmp}/l/l-%03d.tar", "--vae", "x", "--batch-size", "0"], "--batch-size"),
        (["data", "encode", "{shard}", "{tmp}/l/l-%03d.tar", "--vae", "x", "--scale-factor", "nan"], "--scale-factor"),
        (["data", "encode", "{shard}", "{tmp}/l/l-%03d.tar", "--vae", "x", "--scale-factor", "-1"], "--scale-factor"),
        (["data", "encode", "{shard}", "{tmp}/l/l-%03d.tar", "--vae", "x", "--device", "cuda:7"], "--device"),
        (["data", "encode", "{shard}", "{tmp}/l/l-%03d.tar", "--vae", "x", "--device", "nonsense"], "--device"),
        (["data", "encode", "{shard}", "{tmp}/l/l.tar", "--vae", "x"], "out_pattern"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_them_and_write_nothing(tmp_path, args, message, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4), dtype=np.uint8))
    (tmp_path / "s").mkdir()
    with ShardWriter(str(tmp_path / "s" / "i-%03d.tar")) as w:
        w.write("k", {"png": b"", "cls": b"0"})
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    args = [a.format(src=tmp_path / "a.npy", tmp=tmp_path, shard=tmp_path / "s" / "i-000.tar") for a in args]
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_shard_refuses_a_folder_holding_shards_unless_replace(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "b.npy", np.full((2, 4, 4), 9, dtype=np.uint8))
    out = str(tmp_path / "o" / "s-%03d.tar")
    assert runner.invoke(app, ["data", "shard", str(tmp_path / "a.npy"), out, "--max-count", "1"]).exit_code == 0
    refused = runner.invoke(app, ["data", "shard", str(tmp_path / "b.npy"), out])
    assert refused.exit_code == 2 and "already holds a shard set" in refused.output
    assert len(os.listdir(tmp_path / "o")) == 6  # untouched: 5 shards + dataset.json
    replaced = runner.invoke(app, ["data", "shard", str(tmp_path / "b.npy"), out, "--replace"])
    assert replaced.exit_code == 0, replaced.output
    assert sorted(os.listdir(tmp_path / "o")) == ["dataset.json", "s-000.tar"]  # no stale shard beside it
    assert load_images(str(tmp_path / "o" / "s-000.tar"))[0].unique().tolist() == [9]


def test_encode_command(tmp_path, tiny_vae):
    np.savez(tmp_path / "a.npz", images=np.zeros((5, 8, 8, 3), dtype=np.uint8), labels=np.arange(5))
    shard = runner.invoke(app, ["data", "shard", str(tmp_path / "a.npz"), str(tmp_path / "i" / "i-%03d.tar")])
    assert shard.exit_code == 0
    result = runner.invoke(
        app,
        [
            "data",
            "encode",
            str(tmp_path / "i" / "i-000.tar"),
            str(tmp_path / "l" / "l-%03d.tar"),
            "--vae",
            tiny_vae,
            "--res",
            "8",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(str(tmp_path / "l"))
    assert (manifest.kind, manifest.count, manifest.resolution) == ("latent", 5, 4)
    bad = runner.invoke(
        app,
        [
            "data",
            "encode",
            str(tmp_path / "i" / "i-000.tar"),
            str(tmp_path / "m" / "l-%03d.tar"),
            "--vae",
            "nobody/none",
            "--res",
            "8",
        ],
    )
    assert bad.exit_code == 2 and "cannot load an AutoencoderKL" in bad.output


def test_shard_skips_undecodable_files_and_reports_the_count(tmp_path):
    (tmp_path / "src").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "src" / "ok.png")
    (tmp_path / "src" / "broken.png").write_bytes(b"not a png")
    for workers in ("0", "2"):  # the bad file is found in a worker process, and counted here
        out = str(tmp_path / f"o{workers}" / "s-%03d.tar")
        result = runner.invoke(app, ["data", "shard", str(tmp_path / "src"), out, "--workers", workers])
        assert result.exit_code == 0, result.output
        assert "warning: skipping bad sample 'broken'" in result.output and "skipped 1 bad sample(s)" in result.output
        assert read_manifest(str(tmp_path / f"o{workers}")).count == 1
    bad = runner.invoke(
        app, ["data", "shard", str(tmp_path / "src"), str(tmp_path / "x" / "s-%03d.tar"), "--workers", "-1"]
    )
    assert bad.exit_code == 2 and "--workers must be an integer >= 0, got -1" in bad.output
    assert not (tmp_path / "x").exists()


def test_bad_npz_files_and_url_variables_exit_2_in_one_line_and_write_nothing(tmp_path, monkeypatch):
    np.savez(tmp_path / "half.npz", images=np.zeros((3, 4, 4), dtype=np.uint8), labels=np.array([0.5, 1, 2]))
    (tmp_path / "junk.npz").write_bytes(bytes(range(256)))
    monkeypatch.delenv("WDS_X", raising=False)
    before = sorted(tmp_path.rglob("*"))
    for args, message in [
        ([str(tmp_path / "half.npz")], "must be integers (class indices), got 0.5 at index 0"),  # stored as 0
        ([str(tmp_path / "junk.npz")], "as .npy/.npz (ValueError: no .npy or .npz header"),
    ]:
        result = runner.invoke(app, ["data", "shard", *args, str(tmp_path / "o" / "s-%03d.tar")])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: src: "), lines
        assert message in lines[0], lines
    result = runner.invoke(app, ["data", "encode", "i-${X}.tar", str(tmp_path / "l" / "l-%03d.tar"), "--vae", "x"])
    assert result.exit_code == 2 and result.output.startswith("error: urls: 'i-${X}.tar' uses ${X}"), result.output
    assert sorted(tmp_path.rglob("*")) == before


def test_encode_into_a_folder_of_other_settings_exits_2_and_keeps_it(tmp_path, tiny_vae):
    np.savez(tmp_path / "a.npz", images=np.zeros((5, 8, 8, 3), dtype=np.uint8), labels=np.arange(5))
    shard = runner.invoke(app, ["data", "shard", str(tmp_path / "a.npz"), str(tmp_path / "i" / "i-%03d.tar")])
    assert shard.exit_code == 0
    src, out = str(tmp_path / "i" / "i-000.tar"), str(tmp_path / "l" / "l-%03d.tar")
    encode = ["data", "encode", src, out, "--vae", tiny_vae]
    assert runner.invoke(app, [*encode, "--res", "8"]).exit_code == 0
    finished = {p.name: p.read_bytes() for p in (tmp_path / "l").iterdir()}
    for other in (["--res", "16"], ["--res", "8", "--sample"], ["--res", "8", "--scale-factor", "1"]):
        result = runner.invoke(app, [*encode, *other])  # exit 0 and a dataset.json of the new settings before
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "out_pattern: " in lines[0] and "holds an encoding of other inputs or settings" in lines[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "l").iterdir()} == finished


def test_shard_writes_the_bytes_the_library_writes_with_its_defaults(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.array([0, 1, 2]))
    result = runner.invoke(app, ["data", "shard", str(tmp_path / "a.npz"), str(tmp_path / "cli" / "s-%03d.tar")])
    assert result.exit_code == 0, result.output
    library = write_image_shards(array_source(str(tmp_path / "a.npz")), str(tmp_path / "lib" / "s-%03d.tar"))
    assert read_manifest(str(tmp_path / "cli")) == library  # PNG at zlib level 6, as documented: not level 0
    assert (tmp_path / "cli" / "s-000.tar").read_bytes() == (tmp_path / "lib" / "s-000.tar").read_bytes()


def test_every_encode_option_reaches_encode_latents_with_its_value(tmp_path, monkeypatch):
    seen = {}

    def encode_latents(urls, out_pattern, **kwargs):
        seen.update(urls=urls, out_pattern=out_pattern, **kwargs)
        raise ValueError("store: stopped here")

    monkeypatch.setattr("diffit_cli.data.encode_latents", encode_latents)
    options = ["--res", "16", "--batch-size", "3", "--device", "cuda:1", "--scale-factor", "0.5", "--sample"]
    result = runner.invoke(app, ["data", "encode", "i-{000..001}.tar", "l/l-%03d.tar", "--vae", "v", *options])
    assert result.exit_code == 2 and "stopped here" in result.output, result.output
    assert {k: v for k, v in seen.items() if k not in ("log", "progress")} == {
        "urls": "i-{000..001}.tar", "out_pattern": "l/l-%03d.tar", "vae": "v", "resolution": 16, "batch_size": 3,
        "device": "cuda:1", "scale_factor": 0.5, "store": "sample",
    }  # fmt: skip
