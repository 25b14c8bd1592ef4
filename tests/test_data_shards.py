"""Shard writing and reading: determinism, round trips, manifests, the bundled digits, sources."""

import gzip
import hashlib
import inspect
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from diffit.data import (
    BadSampleLog,
    BadSampleWarning,
    ImageSource,
    ShardWriter,
    array_source,
    center_crop_resize,
    digits_folder,
    digits_manifest,
    digits_urls,
    encode_image,
    expand_urls,
    folder_source,
    load_images,
    read_manifest,
    read_shard,
    verify_shards,
    write_digits_shards,
    write_image_shards,
    writing,
)
from diffit.data.shards import brace_count, content_hash
from diffit.data.writing import DIGITS_PATTERN


def _write(pattern: str, n: int, **kw: int) -> list:
    with ShardWriter(pattern, **kw) as w:
        for i in range(n):
            w.write(f"s{i:03d}", {"txt": f"sample {i}".encode(), "cls": str(i % 3).encode()})
    return w.shards


def test_writer_round_trip_and_split_by_count(tmp_path):
    shards = _write(str(tmp_path / "a-%03d.tar"), 10, max_count=4)
    assert [s.count for s in shards] == [4, 4, 2]
    samples = [s for sh in shards for s in read_shard(str(tmp_path / sh.name), BadSampleLog())]
    assert [s["__key__"] for s in samples] == [f"s{i:03d}" for i in range(10)]
    assert samples[7]["txt"] == b"sample 7" and samples[7]["cls"] == b"1"


def test_writer_split_by_size(tmp_path):
    # Each sample holds 9 bytes of member data ("sample i" and a 1-byte cls); webdataset's rule closes a
    # shard once its data reaches max_size.
    shards = _write(str(tmp_path / "b-%03d.tar"), 6, max_size=18)
    assert [s.count for s in shards] == [2, 2, 2]


def test_writer_is_byte_deterministic_and_gzip_hash_is_of_the_tar(tmp_path):
    a = _write(str(tmp_path / "x-%03d.tar"), 5)
    b = _write(str(tmp_path / "y-%03d.tar.gz"), 5)
    raw = (tmp_path / "x-000.tar").read_bytes()
    assert a[0].sha256 == hashlib.sha256(raw).hexdigest() == b[0].sha256
    gz = (tmp_path / "y-000.tar.gz").read_bytes()
    assert gzip.decompress(gz) == raw
    assert gz[3] & 0x08 == 0 and gz[4:8] == bytes(4)  # the gzip header (RFC 1952) holds no file name and mtime 0
    _write(str(tmp_path / "other-name-%03d.tar.gz"), 5)
    assert (tmp_path / "other-name-000.tar.gz").read_bytes() == gz
    with tarfile.open(tmp_path / "x-000.tar") as tar:
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())


def test_url_patterns_are_counted_before_they_are_expanded():
    assert [brace_count(p) for p in ("a-{000000..000127}.tar", "a-{0..9..2}.tar", "{a..e}-{1,2,3}", "x::y-{1..3}")] == [
        128, 5, 15, 4,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="urls: 'x/t-{0..99999999999}.tar' names more than 1,000,000 shards"):
        expand_urls("x/t-{0..99999999999}.tar")  # exhausted the memory before


def test_a_folder_given_as_a_shard_is_not_said_not_to_exist(tmp_path):
    with pytest.raises(ValueError, match=r"^urls: shard '.*' is a folder, not a shard: name its shards, e\.g\. with a"):
        expand_urls(str(tmp_path))  # "does not exist" of a folder that does
    with pytest.raises(ValueError, match=r"^urls: shard '.*missing.tar' does not exist \(pattern"):
        expand_urls(str(tmp_path / "missing.tar"))


def test_url_variables_and_unbalanced_braces_are_one_line_url_errors(monkeypatch):
    monkeypatch.delenv("WDS_X", raising=False)
    with pytest.raises(
        ValueError, match=r"^urls: 't-\$\{X\}.tar' uses \$\{X\}, which webdataset reads from \$WDS_X; it"
    ):
        expand_urls("t-${X}.tar")  # webdataset's AssertionError escaped the CLI as a traceback
    monkeypatch.setenv("WDS_X", "{0..99999999999}")
    with pytest.raises(ValueError, match="names more than 1,000,000 shards"):
        expand_urls("t-${X}.tar")  # the variable hid the range from the count
    with pytest.raises(ValueError, match=r"^urls: cannot expand 't-\{1..3.tar' \(Unbalanced braces"):
        expand_urls("t-{1..3.tar")


def test_a_dataset_json_with_fields_of_other_types_is_refused_naming_the_field(tmp_path):
    manifest = write_image_shards(array_source_of(tmp_path), str(tmp_path / "o" / "a-%03d.tar"))
    good = json.loads((tmp_path / "o" / "dataset.json").read_text())
    for change, match in [
        ({"resolution": "abc"}, "resolution must be int or null, got 'abc'"),  # a TypeError far away before
        ({"count": True}, "count must be int, got True"),
        ({"shards": [{"name": "a-000.tar"}]}, "shards\\[0\\].count must be int, got None"),
        ({"shards": ["a-000.tar"]}, "shards\\[0\\] must be a JSON object"),
        ({"colour": 1}, "unknown field colour"),
        ({"count": 3}, "count must be the sum of the shards' counts \\(2\\), got 3"),
        ({"kind": "video"}, "kind must be 'image' or 'latent', got 'video'"),
        ({"channels": 0}, "channels must be a positive channel count, got 0"),
        ({"resolution": 0}, "resolution must be in 1..8192 or null, got 0"),
        ({"resolution": 100000}, "resolution must be in 1..8192 or null, got 100000"),  # named no file before
        ({"class_names": [0, 1]}, "class_names must be a list of strings, got \\[0, 1\\]"),
        (
            {"shards": [good["shards"][0] | {"name": "../a-000.tar"}]},
            "shards\\[0\\].name must be a file name beside it",
        ),
        ({"shards": [good["shards"][0] | {"bytes": -1}]}, "shards\\[0\\].bytes must be a size >= 0, got -1"),
        ({"classes": -2}, "classes must be a class count >= 0, got -2"),
    ]:
        (tmp_path / "o" / "dataset.json").write_text(json.dumps(good | change))
        with pytest.raises(ValueError, match=f"^manifest: .*dataset.json': {match}"):
            read_manifest(str(tmp_path / "o"))
    (tmp_path / "o" / "dataset.json").write_bytes(b"\xff{}")  # not UTF-8: a bare UnicodeDecodeError before
    with pytest.raises(ValueError, match="^manifest: cannot read .*dataset.json' \\(UnicodeDecodeError: "):
        read_manifest(str(tmp_path / "o"))
    (tmp_path / "o" / "dataset.json").write_text(json.dumps(good))
    assert read_manifest(str(tmp_path / "o")) == manifest


def array_source_of(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 4, 4), dtype=np.uint8), labels=np.array([0, 1]))
    return array_source(str(tmp_path / "a.npz"))


def test_writer_rejects_bad_pattern_and_keys(tmp_path):
    with pytest.raises(ValueError, match="out_pattern"):
        ShardWriter(str(tmp_path / "no-pattern.tar"))
    with pytest.raises(ValueError, match="start_index must be an integer >= 0, got -1"):  # it named k--00001.tar
        ShardWriter(str(tmp_path / "k-%03d.tar"), start_index=-1)
    with ShardWriter(str(tmp_path / "k-%03d.tar")) as w:
        with pytest.raises(ValueError, match="key"):
            w.write("has.dot", {"txt": b""})
        w.write("ok", {"txt": b""})
        with pytest.raises(ValueError, match="duplicate"):
            w.write("ok", {"txt": b""})


@pytest.mark.parametrize("workers", [0, 2])
def test_failed_write_leaves_no_shards(tmp_path, workers):
    def samples(last):
        img = Image.new("L", (4, 4))
        for i in range(40):  # more than the tasks in flight: shards are written before the failure
            yield f"s{i}", img, i % 2
        yield "last", last, 0

    for last, error in [(None, RuntimeError("source broke")), (7, None)]:

        def failing(last=last, error=error):
            yield from samples(last)
            if error is not None:
                raise error

        source = ImageSource(failing, 41, ["0", "1"], True)
        with pytest.raises(
            RuntimeError if error else ValueError,
            match="source broke|sample 'last': expected a PIL image or a path, got int",
        ):
            write_image_shards(source, str(tmp_path / "f-%03d.tar"), max_count=1, workers=workers)
        assert os.listdir(tmp_path) == []


def test_worker_processes_write_the_same_bytes_and_count_the_same_bad_files(tmp_path, monkeypatch):
    monkeypatch.setattr(writing, "CHUNK", 1)  # 25 tasks: more than the 8 that 2 workers keep in flight
    for i in range(24):
        (tmp_path / "src" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "src" / f"c{i % 3}" / f"{i}.jpg", quality=90)
    (tmp_path / "src" / "c1" / "broken.png").write_bytes(b"not a png")
    written = {}
    for workers in (0, 2):
        log, out = BadSampleLog(), tmp_path / f"out{workers}"
        with pytest.warns(BadSampleWarning, match="skipping bad sample 'c1_broken' in shard .*broken.png: undecodable"):
            manifest = write_image_shards(
                folder_source(str(tmp_path / "src")), str(out / "t-%03d.tar"), resolution=8, center_crop=True,
                max_count=5, workers=workers, log=log,
            )  # fmt: skip
        assert (manifest.count, log.count, len(manifest.shards)) == (24, 1, 5)
        written[workers] = {s.name: (out / s.name).read_bytes() for s in manifest.shards}
    assert written[0] == written[2]
    with pytest.raises(ValueError, match="workers must be an integer >= 0, got -1"):
        write_image_shards(folder_source(str(tmp_path / "src")), str(tmp_path / "x" / "t-%03d.tar"), workers=-1)


def test_bundled_digits_match_manifest_and_regenerate_identically(tmp_path):
    manifest = digits_manifest()
    assert (manifest.count, manifest.resolution, manifest.channels, manifest.classes) == (1797, 16, 1, 10)
    assert verify_shards(digits_folder()).content_hash == manifest.content_hash
    size = sum(os.path.getsize(u) for u in digits_urls())
    assert size < 2_000_000
    regenerated = write_digits_shards(str(tmp_path / DIGITS_PATTERN))
    assert regenerated.content_hash == manifest.content_hash  # byte-identical tar contents


def test_bundled_digits_content():
    from sklearn.datasets import load_digits

    images, labels = load_images(digits_urls())
    assert images.shape == (1797, 1, 16, 16) and labels.tolist() == load_digits().target.tolist()
    # Downsampling the 16x16 image by 2x2 averaging recovers the 8x8 original (0..16 scale) closely.
    small = images.float().reshape(1797, 8, 2, 8, 2).mean((2, 4)).numpy() * 16 / 255
    assert np.abs(small - load_digits().images).mean() < 0.8


def test_folder_source_labels_keys_and_manifest(tmp_path):
    src = tmp_path / "src"
    for cls, n in (("cat", 2), ("dog", 3)):
        (src / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 8), color=(40 * i, 0, 0)).save(src / cls / f"img.{i}.png")
    manifest = write_image_shards(
        folder_source(str(src)), str(tmp_path / "out" / "t-%06d.tar"), resolution=8, center_crop=True, max_count=2
    )
    assert (manifest.count, manifest.classes, manifest.class_names) == (5, 2, ["cat", "dog"])
    assert (manifest.resolution, manifest.channels, len(manifest.shards)) == (8, 3, 3)
    assert read_manifest(str(tmp_path / "out")) == manifest
    images, labels = load_images(str(tmp_path / "out" / "t-{000000..000002}.tar"))
    assert images.shape == (5, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1, 1]
    keys = [s["__key__"] for s in read_shard(str(tmp_path / "out" / "t-000000.tar"), BadSampleLog())]
    assert keys == ["cat_img_0", "cat_img_1"]


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        Image.new("L", (6, 6), color=i).save(tmp_path / f"{i}.png")
    manifest = write_image_shards(folder_source(str(tmp_path)), str(tmp_path / "o" / "u-%03d.tar"))
    assert manifest.classes == 0 and manifest.channels == 3
    _, labels = load_images(str(tmp_path / "o" / "u-000.tar"))
    assert labels.tolist() == [-1, -1, -1]


def test_array_sources_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nchw, labels=np.array([3, 1, 0, 2]))
    manifest = write_image_shards(array_source(str(tmp_path / "a.npz")), str(tmp_path / "o" / "a-%03d.tar"))
    images, labels = load_images(str(tmp_path / "o" / "a-000.tar"))
    assert np.array_equal(images.numpy(), nchw) and labels.tolist() == [3, 1, 0, 2]
    assert manifest.classes == 4
    gray = rng.integers(0, 256, (2, 7, 7), dtype=np.uint8)
    np.save(tmp_path / "g.npy", gray)
    write_image_shards(array_source(str(tmp_path / "g.npy")), str(tmp_path / "p" / "g-%03d.tar"))
    images, labels = load_images(str(tmp_path / "p" / "g-000.tar"))
    assert np.array_equal(images.numpy()[:, 0], gray) and labels.tolist() == [-1, -1]


def test_array_source_errors(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        array_source(str(tmp_path / "f.npy"))
    with pytest.raises(ValueError, match="does not exist"):
        array_source(str(tmp_path / "missing.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        folder_source(str(tmp_path / "empty"))

    images = np.zeros((3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "half.npz", images=images, labels=np.array([0.5, 1.0, 2.0]))  # 0.5 was stored as 0
    np.savez(tmp_path / "huge.npz", images=images, labels=np.array([0, 1, 10**12]))  # 10**12 class names: a hang
    np.savez(tmp_path / "vast.npz", images=images, labels=np.array([0.0, 1.0, 1e300]))  # cast to int: negative
    np.savez(tmp_path / "whole.npz", images=images, labels=np.array([0.0, 1.0, 2.0]))
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object))
    np.save(tmp_path / "cut.npy", images)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-10])
    (tmp_path / "junk.npz").write_bytes(bytes(range(256)))
    cases = {
        "half.npz": "labels in .*half.npz' must be integers \\(class indices\\), got 0.5 at index 0$",
        "huge.npz": "labels in .* must be class indices 0..C-1 with C <= 1,000,000, got 0..1000000000000$",
        "vast.npz": "labels in .* must be class indices 0..C-1 with C <= 1,000,000, got 0.0..1e\\+300$",
        "obj.npy": "cannot read .*obj.npy' as .npy/.npz \\(ValueError: an object array; only uint8 image and",
        "cut.npy": "cannot read .*cut.npy' as .npy/.npz \\(ValueError: Failed to read all data",
        "junk.npz": "cannot read .*junk.npz' as .npy/.npz \\(ValueError: no .npy or .npz header; pickled data is",
    }
    for name, match in cases.items():
        with pytest.raises(ValueError, match=f"^src: {match}"):
            array_source(str(tmp_path / name))
    assert array_source(str(tmp_path / "whole.npz")).class_names == ["0", "1", "2"]


def test_folder_keys_keep_letters_of_every_script(tmp_path):
    for folder in ("ü😀", "名前"):  # ASCII-only keys made them collide as '___1'
        (tmp_path / folder).mkdir()
        Image.new("L", (4, 4)).save(tmp_path / folder / "1.png")
    assert sorted(key for key, _, _ in folder_source(str(tmp_path)).samples()) == ["ü__1", "名前_1"]
    (tmp_path / "ü😀" / "1.png").rename(tmp_path / "ü😀" / "a\u0301.png")  # NFD, as macOS writes 'á'
    keys = sorted(key for key, _, _ in folder_source(str(tmp_path)).samples())
    assert keys == ["ü__\u00e1", "名前_1"]  # one key on every system ('ü__a_' from the NFD name before)


def test_center_crop_resize_is_adm_style():
    img = Image.new("RGB", (300, 100))
    img.paste((255, 255, 255), (100, 0, 200, 100))  # white square in the middle third
    out = center_crop_resize(img, 32)
    assert out.size == (32, 32) and np.asarray(out).min() > 200  # only the middle survives


def test_png_writer_is_a_standard_png():
    from diffit.data.images import encode_png

    rng = np.random.default_rng(0)
    for shape in ((5, 7), (6, 4, 3)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixels, level=6)))), pixels)


def test_image_helpers_name_a_bad_resolution_or_a_non_image() -> None:
    with pytest.raises(ValueError, match=r"^resolution must be an integer in \[1, 8192\], got 0$"):
        center_crop_resize(Image.new("RGB", (4, 4)), 0)  # PIL's "height and width must be > 0" before
    with pytest.raises(ValueError, match=r"^img: expected a PIL image \(Image.fromarray converts a uint8 array\)"):
        inspect.unwrap(encode_image)(np.zeros((4, 4, 3), np.uint8))  # "'numpy.ndarray' has no attribute 'mode'"


def test_encoder_settings_out_of_range_are_refused_naming_them(tmp_path) -> None:
    img, encode = Image.new("RGB", (4, 4)), inspect.unwrap(encode_image)
    with pytest.raises(ValueError, match=r"^png_compress_level must be an integer in \[0, 9\], got 10$"):
        encode(img, png_compress_level=10)  # zlib.error: Bad compression level
    with pytest.raises(ValueError, match=r"^quality must be an integer in \[1, 100\], got 500$"):
        encode(img, "jpg", quality=500)  # PIL wrote a JPEG without a word
    with pytest.raises(ValueError, match=r"^jpeg_quality must be an integer in \[1, 100\], got 0$"):
        write_image_shards(array_source_of(tmp_path), str(tmp_path / "o" / "a-%03d.tar"), jpeg_quality=0)
    assert not (tmp_path / "o").exists()


def test_a_folder_without_images_is_no_class_and_a_plain_resize_is_bicubic(tmp_path):
    """Class ids count only the subfolders that hold images (an empty one would shift every later label), and
    without --center-crop the images are resized with PIL's bicubic filter, as the docs say."""
    img = np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8)
    for name in ("a", "b", "c"):
        (tmp_path / "src" / name).mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "src" / "a" / "0.png")
    Image.fromarray(255 - img).save(tmp_path / "src" / "c" / "0.png")  # "b" holds no image
    source = folder_source(str(tmp_path / "src"))
    assert source.class_names == ["a", "c"] and [label for _, _, label in source.samples()] == [0, 1]
    write_image_shards(source, str(tmp_path / "s" / "s-%03d.tar"), resolution=8)
    images, labels = load_images(str(tmp_path / "s" / "s-000.tar"))
    for i, pixels in enumerate((img, 255 - img)):
        want = np.asarray(Image.fromarray(pixels).resize((8, 8), resample=Image.Resampling.BICUBIC))
        assert np.array_equal(images[i, 0].numpy(), want)
    assert labels.tolist() == [0, 1] and read_manifest(str(tmp_path / "s")).classes == 2


def test_the_content_hash_is_over_the_shards_in_order(tmp_path):
    """docs/data-format.md: sha256 over the shards' sha256 in order. The same shards in another order stream other
    batches, so they are other data to a resumed run."""
    shards = _write(str(tmp_path / "x-%03d.tar"), 6, max_count=3)
    assert content_hash(shards) == hashlib.sha256("\n".join(s.sha256 for s in shards).encode()).hexdigest()
    assert content_hash(shards[::-1]) != content_hash(shards)


def test_array_labels_must_be_one_class_index_per_image_and_name_every_class_up_to_the_largest(tmp_path):
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "neg.npz", images=images, labels=np.array([0, -1, 2]))  # -1 stored as cls "-1"
    np.savez(tmp_path / "long.npz", images=images, labels=np.array([0, 1, 2, 0]))  # the extra label dropped silently
    np.savez(tmp_path / "gap.npz", images=images, labels=np.array([0, 2, 2]))  # class 1 has no image
    with pytest.raises(
        ValueError, match=r"^src: labels in .*neg.npz' must be class indices 0..C-1 with C <= 1,000,000"
    ):
        array_source(str(tmp_path / "neg.npz"))
    with pytest.raises(ValueError, match=r"^src: .*long.npz' has 3 images but 4 labels$"):
        array_source(str(tmp_path / "long.npz"))
    source = array_source(str(tmp_path / "gap.npz"))
    assert source.class_names == ["0", "1", "2"]  # label 2 is class 2 of 3, not of the 2 labels seen
    manifest = write_image_shards(source, str(tmp_path / "o" / "g-%03d.tar"))
    assert manifest.classes == 3 and load_images(str(tmp_path / "o" / "g-000.tar"))[1].tolist() == [0, 2, 2]


def test_an_array_source_keeps_its_channel_count(tmp_path):
    rng = np.random.default_rng(0)
    for name, images in (
        ("nhw", rng.integers(0, 256, (2, 5, 5), np.uint8)),
        ("nhwc", rng.integers(0, 256, (2, 5, 5, 1), np.uint8)),
    ):
        np.save(tmp_path / f"{name}.npy", images)
        manifest = write_image_shards(array_source(str(tmp_path / f"{name}.npy")), str(tmp_path / name / "g-%03d.tar"))
        loaded, _ = load_images(str(tmp_path / name / "g-000.tar"))
        assert manifest.channels == 1 and loaded.shape == (2, 1, 5, 5)  # not 3 copies of the gray channel
        assert np.array_equal(loaded.numpy()[:, 0], images.reshape(2, 5, 5))


def test_folder_source_skips_hidden_files_refuses_mixed_layouts_and_records_no_single_size(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("L", (4, 4)).save(src / "a.png")
    Image.new("L", (6, 6)).save(src / "b.png")
    (src / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble file beside a.png: no image
    source = folder_source(str(src))
    assert source.count == 2 and [key for key, _, _ in source.samples()] == ["a", "b"]
    manifest = write_image_shards(source, str(tmp_path / "o" / "s-%03d.tar"))
    assert manifest.count == 2 and manifest.resolution is None  # 4x4 and 6x6: no one resolution to promise
    (src / "c").mkdir()
    Image.new("L", (4, 4)).save(src / "c" / "0.png")
    with pytest.raises(ValueError, match=r"^src: .*src' mixes images and class subfolders; use only one layout$"):
        folder_source(str(src))


def test_a_source_without_one_readable_image_writes_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(BadSampleWarning), pytest.raises(ValueError, match=r"^src: no readable images to write$"):
        write_image_shards(folder_source(str(tmp_path / "src")), str(tmp_path / "o" / "s-%03d.tar"))
    assert not (tmp_path / "o").exists()  # no dataset.json of 0 samples


def test_center_crop_halves_with_a_box_filter_while_at_least_twice_the_target():
    """ADM's loop: ``while min(size) >= 2 * resolution`` halve with BOX; an image of exactly twice the target is
    box-halved (no bicubic step is left at scale 1), then the middle is cropped."""
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)  # 32 wide, 16 high
    want = img.resize((16, 8), resample=Image.Resampling.BOX).crop((4, 0, 12, 8))
    assert np.array_equal(np.asarray(center_crop_resize(img, 8)), np.asarray(want))
