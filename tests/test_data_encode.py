"""Latent encoding with a tiny random AutoencoderKL (offline), resume, and the latent pipeline on top."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import torch

from diffit.data import (
    BadSampleLog,
    BadSampleWarning,
    ShardWriter,
    array_source,
    encode_latents,
    latent_pipeline,
    load_images,
    load_vae,
    read_manifest,
    read_shard,
    vae_posterior,
    write_image_shards,
)

pytest.importorskip("diffusers")
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def image_shards(tmp_path) -> str:
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(10) % 4)
    write_image_shards(array_source(str(tmp_path / "a.npz")), str(tmp_path / "img" / "i-%03d.tar"), max_count=4)
    return str(tmp_path / "img" / "i-{000..002}.tar")


def test_encode_stores_posterior_of_image_and_mirror(tmp_path, tiny_vae, image_shards):
    calls = []
    manifest = encode_latents(
        image_shards,
        str(tmp_path / "lat" / "l-%03d.tar"),
        vae=tiny_vae,
        resolution=8,
        batch_size=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert (manifest.kind, manifest.count, manifest.channels, manifest.resolution) == ("latent", 10, 4, 4)
    assert manifest.classes == 4 and manifest.extra["scale_factor"] == 0.18215
    assert calls[-1] == (10, 10)
    vae = load_vae(tiny_vae)
    images, labels = load_images(image_shards)
    x = images.float() / 127.5 - 1
    with torch.no_grad():  # diffusers' own posterior: the moments exp(logvar / 2) and mean of q(z | x)
        posterior, mirrored = vae.encode(x).latent_dist, vae.encode(x.flip(-1)).latent_dist
    mean, std, mean_m, std_m = posterior.mean, posterior.std, mirrored.mean, mirrored.std
    assert all(torch.equal(a, b) for a, b in zip(vae_posterior(vae, x), (mean, std), strict=True))
    samples = [s for i in range(3) for s in read_shard(str(tmp_path / "lat" / f"l-{i:03d}.tar"), BadSampleLog())]
    assert [s["__key__"] for s in samples] == [f"{i:08d}" for i in range(10)]
    for i, s in enumerate(samples):
        m = np.load(io.BytesIO(s["mean.npy"]))
        sd = np.load(io.BytesIO(s["std.npy"]))
        assert m.dtype == np.float16 and m.shape == (2, 4, 4, 4)
        np.testing.assert_allclose(m[0], mean[i].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(m[1], mean_m[i].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(sd[0], std[i].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(sd[1], std_m[i].numpy(), rtol=2e-3, atol=2e-3)
        assert int(s["cls"]) == labels[i]
    # The pipeline's deterministic view (no flip, no sampling) is the scaled posterior mean.
    z, y = next(
        iter(
            latent_pipeline(
                str(tmp_path / "lat" / "l-{000..002}.tar"), batch_size=10, flip=False, sample=False, shuffle_buffer=1
            )
        )
    )
    assert z.shape == (10, 4, 4, 4)
    assert set(y.tolist()) <= set(range(4))
    scaled = (mean * 0.18215).half().float()
    assert all(any(torch.allclose(zi, s, atol=1e-3) for s in scaled) for zi in z)


def test_encode_progress_counts_the_shards_given_not_the_whole_set(tmp_path, tiny_vae, image_shards):
    calls = []
    part = image_shards.replace("{000..002}", "{000..001}")  # 8 of the set's 10 images
    encode_latents(
        part, str(tmp_path / "lat" / "l-%03d.tar"), vae=tiny_vae, resolution=8, progress=lambda *a: calls.append(a)
    )
    assert calls[-1] == (8, 8)


def test_encode_resumes_by_skipping_finished_shards(tmp_path, tiny_vae, image_shards):
    out = str(tmp_path / "lat" / "l-%03d.tar")
    first = encode_latents(image_shards, out, vae=tiny_vae, resolution=8)
    os.remove(out % 1)
    stamp = os.path.getmtime(out % 0)
    done = []
    again = encode_latents(image_shards, out, vae=tiny_vae, resolution=8, progress=lambda d, t: done.append(d))
    assert os.path.getmtime(out % 0) == stamp  # untouched
    assert again.content_hash == first.content_hash == read_manifest(str(tmp_path / "lat")).content_hash
    assert done == [8]  # only shard 1's 4 images were encoded (after 4 skipped), ending at 8 of 10


def _folder(path) -> dict[str, object]:
    """Every file of ``path``: its bytes, or for JSON files its value (key order aside)."""
    return {p.name: json.loads(p.read_text()) if p.suffix == ".json" else p.read_bytes() for p in path.iterdir()}


def test_encode_resumes_only_its_own_intact_shards(tmp_path, tiny_vae, image_shards, monkeypatch):
    out = str(tmp_path / "lat" / "l-%03d.tar")
    first = encode_latents(image_shards, out, vae=tiny_vae, resolution=8)
    finished = _folder(tmp_path / "lat")
    with open(out % 1, "r+b") as f:  # a truncated shard was kept before, and its samples lost
        f.truncate(5000)
    again = encode_latents(image_shards, out, vae=tiny_vae, resolution=8)
    assert again == first and again.count == 10 and _folder(tmp_path / "lat") == finished
    with open(out % 2, "r+b") as f:  # same size, other bytes: only the sha256 tells
        f.seek(512)  # the first member's data
        f.write(b"\xff" * 8)
    assert _folder(tmp_path / "lat") != finished
    record = json.loads((tmp_path / "lat" / ".encode.json").read_text())
    del record["done"]["l-000.tar"]  # renamed into place, then killed before the record was updated
    (tmp_path / "lat" / ".encode.json").write_text(json.dumps(record))
    done = []
    again = encode_latents(image_shards, out, vae=tiny_vae, resolution=8, progress=lambda d, t: done.append(d))
    assert again == first and _folder(tmp_path / "lat") == finished
    assert done == [4, 10]  # shards 0 and 2 were encoded again, shard 1 kept
    monkeypatch.chdir(tmp_path)  # the same inputs named from another working directory are the same job
    relative = os.path.relpath(image_shards, tmp_path)
    assert encode_latents(relative, "lat/l-%03d.tar", vae=tiny_vae, resolution=8) == first
    for kwargs, changed in [({"scale_factor": 1.0}, "scale_factor"), ({"store": "sample"}, "store")]:
        with pytest.raises(
            ValueError, match=f"out_pattern: .* holds an encoding of other inputs or settings \\({changed}\\)"
        ):
            encode_latents(
                image_shards, out, vae=tiny_vae, resolution=8, **kwargs
            )  # exit 0, a false dataset.json before
    with pytest.raises(ValueError, match="other inputs or settings \\(inputs\\)"):
        encode_latents(image_shards.replace("{000..002}", "{000..001}"), out, vae=tiny_vae, resolution=8)
    with pytest.raises(ValueError, match="other inputs or settings \\(resolution\\)"):
        encode_latents(image_shards, out, vae=tiny_vae, resolution=16)
    assert read_manifest(str(tmp_path / "lat")) == first and _folder(tmp_path / "lat") == finished

    def shards_only(folder: dict[str, object] | None = None) -> dict[str, object]:
        return {k: v for k, v in (folder or _folder(tmp_path / "lat")).items() if k != ".encode.json"}

    record_path, input0 = tmp_path / "lat" / ".encode.json", image_shards.replace("{000..002}", "000")
    shutil.copy(input0, tmp_path / "copy.tar")  # the same bytes under the same name, with a new mtime (a copy, or
    os.replace(tmp_path / "copy.tar", input0)  # `data shard --replace` run again): kept by its sha256 (was refused)
    os.utime(input0, ns=(10**9, 10**9))  # a time surely not recorded, whatever the file system's clock resolution
    done.clear()
    assert encode_latents(image_shards, out, vae=tiny_vae, resolution=8, progress=lambda d, t: done.append(d)) == first
    assert done == [] and shards_only() == shards_only(finished)
    stamp = json.loads(record_path.read_text())["done"]["l-000.tar"]["input"]
    assert stamp[1] == 10**9  # the next rerun compares the new mtime, without reading the input
    record = json.loads(record_path.read_text())
    record["job"]["input_files"] = [[1, 2]] * 3  # a record from before inputs were stamped: not refused,
    for entry in record["done"].values():  # its shards are encoded again
        del entry["input"]
    record_path.write_text(json.dumps(record))
    done.clear()
    assert encode_latents(image_shards, out, vae=tiny_vae, resolution=8, progress=lambda d, t: done.append(d)) == first
    assert done == [4, 8, 10] and shards_only() == shards_only(finished)
    other = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "b.npz", images=other, labels=np.arange(4))
    write_image_shards(array_source(str(tmp_path / "b.npz")), str(tmp_path / "other" / "i-%03d.tar"))
    os.replace(tmp_path / "other" / "i-000.tar", input0)  # other images under the same name: its latents would
    os.utime(input0, ns=(2 * 10**9, 2 * 10**9))
    done.clear()  # be stale; that shard alone is encoded again
    again = encode_latents(image_shards, out, vae=tiny_vae, resolution=8, progress=lambda d, t: done.append(d))
    assert done == [4] and again.shards[0] != first.shards[0] and again.shards[1:] == first.shards[1:]
    with ShardWriter(str(tmp_path / "bad" / "i-%03d.tar")) as writer:  # no readable image left in input 0:
        writer.write("00000000", {"png": b"not a png", "cls": b"0"})  # its old latents must not stay behind
    os.replace(tmp_path / "bad" / "i-000.tar", input0)
    with pytest.warns(BadSampleWarning):
        fewer = encode_latents(image_shards, out, vae=tiny_vae, resolution=8)
    assert fewer.shards == first.shards[1:] and not os.path.exists(out % 0)
    latest = shards_only()
    os.remove(record_path)
    with pytest.raises(ValueError, match="already holds shards this job did not write; choose an empty folder$"):
        encode_latents(image_shards, out, vae=tiny_vae, resolution=8)
    assert shards_only() == latest


def test_sample_store_and_offline_error(tmp_path, tiny_vae, image_shards):
    manifest = encode_latents(
        image_shards, str(tmp_path / "s" / "l-%03d.tar"), vae=tiny_vae, resolution=8, store="sample"
    )
    z, _ = next(iter(latent_pipeline(str(tmp_path / "s" / "l-{000..002}.tar"), batch_size=4)))
    assert manifest.extra["store"] == "sample" and z.shape == (4, 4, 4, 4)
    with pytest.raises(ValueError, match="cannot load an AutoencoderKL.*HF_HUB_OFFLINE"):
        load_vae("nobody/no-such-vae")


@pytest.mark.parametrize("device", ["cuda:99", "nonsense", "meta"])
def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, tiny_vae, image_shards, device):
    with pytest.raises(ValueError, match=rf"^device: (unknown device |diffit runs .* got )?'{device}'"):
        encode_latents(image_shards, str(tmp_path / "d" / "l-%03d.tar"), vae=tiny_vae, device=device)
    assert not (tmp_path / "d").exists()


def test_encode_refuses_to_resume_with_other_vae_weights(tmp_path, tiny_vae, image_shards):
    vae = load_vae(tiny_vae)
    out = str(tmp_path / "lat" / "l-%03d.tar")
    first = encode_latents(image_shards, out, vae=vae, resolution=8)
    assert encode_latents(image_shards, out, vae=load_vae(tiny_vae), resolution=8) == first  # same weights
    with torch.no_grad():
        next(vae.parameters()).add_(1.0)  # the same class, other weights: its latents would be mixed in silently
    with pytest.raises(ValueError, match="other inputs or settings \\(vae_weights\\); choose an empty folder$"):
        encode_latents(image_shards, out, vae=vae, resolution=8)
    record = json.loads((tmp_path / "lat" / ".encode.json").read_text())
    del record["job"]["vae_weights"]  # as an older diffit wrote it
    (tmp_path / "lat" / ".encode.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other inputs or settings \\(vae_weights; its record predates vae_weights\\)"):
        encode_latents(image_shards, out, vae=vae, resolution=8)


def test_an_encoding_batch_out_of_memory_names_batch_size_and_keeps_finished_shards(
    tmp_path, tiny_vae, image_shards, monkeypatch
):
    from typer.testing import CliRunner

    from diffit_cli.main import app

    posterior, calls = vae_posterior, []

    def fail_on_the_second_shard(vae, x):
        calls.append(len(x))
        if len(calls) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB.")
        return posterior(vae, x)

    monkeypatch.setattr("diffit.data.encode.vae_posterior", fail_on_the_second_shard)
    out = str(tmp_path / "lat" / "l-%03d.tar")
    result = CliRunner().invoke(app, ["data", "encode", image_shards, out, "--vae", tiny_vae, "--res", "8"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: --batch-size: encoding 4 images and their mirrors at 8x8 ran out of memory on cpu (it tried to "
        "allocate 3.00 GiB); lower it (shards already finished are kept when you rerun)"
    )
    assert sorted(os.listdir(tmp_path / "lat")) == [".encode.json", ".lock", "l-000.tar"]  # no partial 2nd shard
    monkeypatch.setattr("diffit.data.encode.vae_posterior", posterior)
    calls.clear()
    manifest = encode_latents(image_shards, out, vae=tiny_vae, resolution=8, batch_size=32)
    assert manifest.count == 10 and len(manifest.shards) == 3  # the first shard kept, the other two encoded


def test_a_second_encoding_job_in_the_same_folder_is_refused(tmp_path, tiny_vae, image_shards):
    from diffit.util import locked_folder

    out = str(tmp_path / "lat" / "l-%03d.tar")
    with locked_folder(tmp_path / "lat"):  # the first job (any process: flock conflicts across open files)
        with pytest.raises(ValueError, match=rf"^out_pattern: {tmp_path / 'lat'} is in use by another process \(pid "):
            encode_latents(image_shards, out, vae=tiny_vae, resolution=8)
        assert os.listdir(tmp_path / "lat") == [".lock"]  # nothing of the second job
    assert encode_latents(image_shards, out, vae=tiny_vae, resolution=8).count == 10  # free once the first ends


def _members(folder, member: str) -> list[np.ndarray]:
    """``member`` of every sample of the latent shard ``folder/l-000.tar``, as float32."""
    return [
        np.load(io.BytesIO(s[member])).astype(np.float32) for s in read_shard(str(folder / "l-000.tar"), BadSampleLog())
    ]


def test_sampled_latents_draw_fresh_noise_for_every_sample_from_the_seed(tmp_path, tiny_vae, image_shards):
    vae, first = load_vae(tiny_vae), image_shards.replace("{000..002}", "000")  # 4 images

    def encode(name: str, **kwargs) -> list[np.ndarray]:  # batches of 3 and 1: index 0 in the shard's both batches
        encode_latents(first, str(tmp_path / name / "l-%03d.tar"), vae=vae, resolution=8, batch_size=3, **kwargs)
        return _members(tmp_path / name, "latent.npy" if kwargs else "mean.npy")

    means, stds = encode("moments"), _members(tmp_path / "moments", "std.npy")
    drawn = encode("seed0", store="sample")
    eps = np.stack([(z - m) / s for z, m, s in zip(drawn, means, stds, strict=True)])  # z = mean + std * eps
    assert eps.shape == (4, 2, 4, 4, 4) and abs(eps.mean()) < 0.2 and abs(eps.std() - 1) < 0.2
    flat = eps.reshape(4, -1)
    assert all(np.abs(flat[i] - flat[j]).max() > 0.5 for i in range(4) for j in range(i))  # no noise shared
    assert all(np.array_equal(a, b) for a, b in zip(encode("again", store="sample", seed=0), drawn, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(encode("seed1", store="sample", seed=1), drawn, strict=True))


def test_without_a_dataset_json_the_class_count_is_the_largest_label_plus_one(tmp_path, tiny_vae, image_shards):
    os.remove(tmp_path / "img" / "dataset.json")  # labels 0..3 in the shards, nothing beside them says 4 classes
    out = str(tmp_path / "lat" / "l-%03d.tar")
    manifest = encode_latents(image_shards, out, vae=tiny_vae, resolution=8)
    assert (manifest.count, manifest.classes, manifest.class_names) == (10, 4, [])
    # A rerun counts the labels of the shards it keeps: keeping all three, then re-encoding only the last (labels
    # 0 and 1), gave 0 and 2 classes, and a latent labelled 3 became a bad sample.
    assert encode_latents(image_shards, out, vae=tiny_vae, resolution=8) == manifest
    os.remove(out % 2)
    assert encode_latents(image_shards, out, vae=tiny_vae, resolution=8) == manifest
    record_path = tmp_path / "lat" / ".encode.json"
    record = json.loads(record_path.read_text())
    assert [entry["max_label"] for _, entry in sorted(record["done"].items())] == [3, 3, 1]
    del record["done"]["l-000.tar"]["max_label"]  # a record written before labels were recorded: encoded again
    record_path.write_text(json.dumps(record))
    done = []
    assert (
        encode_latents(image_shards, out, vae=tiny_vae, resolution=8, progress=lambda d, t: done.append(d)) == manifest
    )
    assert done == [4]


def test_the_manifest_takes_channels_and_side_from_the_latents_also_when_every_shard_is_resumed(
    tmp_path, tiny_vae, image_shards
):
    out = str(tmp_path / "lat" / "l-%03d.tar")
    first = encode_latents(image_shards, out, vae=tiny_vae, resolution=16)  # 4 channels of 8x8: side != channels
    assert (first.channels, first.resolution, first.extra["image_resolution"]) == (4, 8, 16)
    done = []
    again = encode_latents(image_shards, out, vae=tiny_vae, resolution=16, progress=lambda d, t: done.append(d))
    assert done == [] and again == first == read_manifest(str(tmp_path / "lat"))  # read from a stored sample
