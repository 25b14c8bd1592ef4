"""Pre-encoding image shards into latent shards with a diffusers ``AutoencoderKL``, resumably (the layout and
the job record: docs/data-format.md#latent-shards).
"""

import hashlib
import io
import json
import math
import os
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from diffit.data.images import SD_SCALE_FACTOR, ImageDecoder
from diffit.data.shards import (
    BadSampleLog,
    Manifest,
    ShardInfo,
    ShardWriter,
    check_out_folder,
    check_resolution,
    existing_shards,
    expand_urls,
    find_manifest,
    is_local,
    label_spec,
    read_shard,
    shard_counts,
    tar_digest,
    write_manifest,
)
from diffit.data.streams import good_batches
from diffit.util import (
    OutOfMemory,
    check_device,
    check_integer,
    locked_folder,
    mix_seed,
    out_of_memory_as,
    to_device,
    write_json,
)


def load_vae(path_or_id: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A diffusers ``AutoencoderKL`` from a local folder or a Hub id, in eval mode on ``device``."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ValueError("vae: encoding needs diffusers (pip install 'diffit[latent]')") from None
    try:
        vae = AutoencoderKL.from_pretrained(path_or_id, low_cpu_mem_usage=False)
    except Exception as exc:  # hub/network/format errors come in many types
        hub = "Hub id (no local folder of that name): Hugging Face Hub access is off (HF_HUB_OFFLINE=1) or unreachable;"
        where = "local folder:" if os.path.isdir(path_or_id) else hub
        reason = (str(exc).splitlines() or [""])[0]
        raise ValueError(
            f"vae: cannot load an AutoencoderKL from {path_or_id!r} as a {where} {type(exc).__name__}: {reason}"
        ) from None
    return to_device(vae, device).eval().requires_grad_(False)


@torch.no_grad()
def vae_posterior(
    vae: torch.nn.Module, x: Float[Tensor, "b c h w"]
) -> tuple[Float[Tensor, "b z hz wz"], Float[Tensor, "b z hz wz"]]:
    """Mean and standard deviation of the VAE posterior q(z | x) for images x in [-1, 1]."""
    dist = vae.encode(x).latent_dist
    return dist.mean, dist.std


RECORD_NAME = ".encode.json"  # beside the output shards: the job's settings and the shards it finished


def _vae_name(vae: str | torch.nn.Module) -> str:
    return vae if isinstance(vae, str) else type(vae).__name__


def _weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names and bytes, in name order): two VAEs of one class differ here."""
    sha = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        sha.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _resume_record(folder: str, job: dict) -> dict:
    """The record of the encoding job in ``folder``: a new one when the folder holds no shards, the old one when
    it is this job's; ValueError when the folder holds another job's latents or shards of unknown origin (they
    used to be kept by name, and dataset.json then described latents the shards did not hold)."""
    path = os.path.join(folder, RECORD_NAME)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                record = json.load(f)
            saved, done = record["job"], record["done"]
            if not (isinstance(saved, dict) and isinstance(done, dict)):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"out_pattern: {path!r} is unreadable ({type(exc).__name__}); choose an empty folder"
            ) from None
        saved.pop("input_files", None)  # an older record's input sizes and mtimes: its shards are encoded again
        changed = sorted(k for k in job.keys() | saved.keys() if job.get(k) != saved.get(k))
        unrecorded = [k for k in changed if k not in saved]  # a record an older diffit wrote
        if changed:
            raise ValueError(
                f"out_pattern: {folder!r} holds an encoding of other inputs or settings ({', '.join(changed)}"
                f"{'; its record predates ' + ', '.join(unrecorded) if unrecorded else ''}); choose an empty folder"
            )
        return record
    if existing_shards(folder):
        raise ValueError(f"out_pattern: {folder!r} already holds shards this job did not write; choose an empty folder")
    return {"job": job, "done": {}}


def _input_stamp(source: str) -> list | None:
    """``[bytes, mtime_ns, tar sha256]`` of a local input shard; None for a stream (nothing to compare) or an
    unreadable shard (``read_shard`` reports it, and a rerun encodes its output again)."""
    try:
        return [(st := os.stat(source)).st_size, st.st_mtime_ns, tar_digest(source)[1]] if is_local(source) else None
    except (OSError, EOFError, zlib.error):
        return None


def _same_input(source: str, stamp: object) -> bool:
    """Whether input shard ``source`` is the one ``stamp`` recorded: the same size and mtime, or, when the mtime
    changed (a copy, the same bytes written again), the same bytes; then ``stamp`` takes the new mtime."""
    if not is_local(source):
        return True
    if not (isinstance(stamp, list) and len(stamp) == 3):  # recorded before inputs were stamped: encoded again
        return False
    if [(st := os.stat(source)).st_size, st.st_mtime_ns] != stamp[:2]:
        if st.st_size != stamp[0]:  # other bytes for certain: not read and hashed only to be encoded again
            return False
        if (now := _input_stamp(source)) is None or (now[0], now[2]) != (stamp[0], stamp[2]):
            return False
        stamp[1] = now[1]  # the next rerun need not read the input again
    return True


def _finished(path: str, recorded: object, source: str) -> tuple[ShardInfo, int] | None:
    """The recorded shard at ``path`` and the largest label it holds (-1: none), when its tar still has the
    recorded bytes and sha256 and its input ``source`` is unchanged, else None: a shard truncated, changed or
    renamed into place after the record was last written, one of an input rewritten with other bytes, or one
    recorded without its largest label (which the class count needs), is encoded again."""
    try:
        fields = dict(recorded)  # type: ignore[call-overload]
        shard = ShardInfo(**{k: v for k, v in fields.items() if k not in ("input", "max_label")})
        stamp, max_label = fields.get("input"), fields.get("max_label")
        if not isinstance(max_label, int) or isinstance(max_label, bool):
            return None
        intact = os.path.isfile(path) and tar_digest(path) == (shard.bytes, shard.sha256)
        return (shard, max_label) if intact and _same_input(source, stamp) else None
    except (TypeError, ValueError, OSError, EOFError, zlib.error):  # a malformed entry, an unreadable or corrupt gzip
        return None


def _batch_memory(images: int, resolution: int, device: str) -> AbstractContextManager[None]:
    """An encoding batch out of memory as :class:`~diffit.util.OutOfMemory` naming batch_size."""
    return out_of_memory_as(
        lambda tried: OutOfMemory(
            f"batch_size: encoding {images} images and their mirrors at {resolution}x{resolution} ran out of memory "
            f"on {device}{tried}; lower it (shards already finished are kept when you rerun)"
        )
    )


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def encode_latents(
    urls: str | list[str],
    out_pattern: str,
    *,
    vae: str | torch.nn.Module,
    resolution: int = 256,
    batch_size: int = 32,
    device: str = "cpu",
    scale_factor: float = SD_SCALE_FACTOR,
    store: str = "mean_std",
    seed: int = 0,
    labelled: bool | None = None,
    log: BadSampleLog | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Manifest:
    """Encode image shards into latent shards ``out_pattern % i`` and write their ``dataset.json``.

    ``vae``: a loaded AutoencoderKL or a path/Hub id for ``load_vae``. Images are converted to RGB and
    center-cropped/resized to ``resolution``. ``progress(images_done, total or None)`` after each batch.
    A rerun resumes: shards this same job finished intact are kept; a folder holding another job's latents,
    or shards without a record, is refused (ValueError). Returns the manifest of all output shards.
    """
    expanded = expand_urls(urls)
    ShardWriter(out_pattern)  # validates the pattern; writes nothing
    check_out_folder(out_pattern)
    if store not in ("mean_std", "sample"):
        raise ValueError(f"store: expected 'mean_std' or 'sample', got {store!r}")
    check_integer("batch_size", batch_size)
    check_resolution(resolution)
    if not (math.isfinite(scale_factor) and scale_factor > 0):
        raise ValueError(f"scale_factor: expected a finite positive number, got {scale_factor}")
    check_device(device)  # a device this machine lacks fails here, before the VAE is loaded and any shard is written
    source = find_manifest(expanded)
    labelled, classes = label_spec(labelled, source)
    folder = os.path.dirname(os.path.abspath(out_pattern))
    # One job at a time in a folder (checked before the VAE loads): a second one would mix its shards and record
    # into this one's.
    with locked_folder(folder, name="out_pattern"):
        model = load_vae(vae, device) if isinstance(vae, str) else vae
        inputs = [os.path.abspath(u.removeprefix("file:")) if is_local(u) else u for u in expanded]
        job = {
            "inputs": inputs,  # each finished shard records its input's size, mtime and sha256 (``_same_input``)
            "input_content_hash": source.content_hash if source else None,
            "vae": _vae_name(vae),
            "vae_weights": _weights_sha256(model),  # a path or a class name says too little
            "resolution": resolution,
            "scale_factor": scale_factor,
            "store": store,
            "seed": seed,
            "labelled": labelled,
        }
        record = _resume_record(folder, job)
        log = log or BadSampleLog()
        decoder = ImageDecoder(resolution, 3, True, labelled, flip=False, classes=classes)
        counts = shard_counts(expanded, source)  # the shards given, which may be a part of the set
        total = sum(counts) if counts is not None else None
        shards: list[ShardInfo] = []
        done, latent_shape, max_label = 0, None, -1
        for index, url in enumerate(expanded):
            path = out_pattern % index
            if (kept := _finished(path, record["done"].get(os.path.basename(path)), inputs[index])) is not None:
                shard, shard_max = kept
                shards.append(shard)  # finished earlier by this job, intact
                done, max_label = done + shard.count, max(max_label, shard_max)
                continue
            if os.path.isfile(path):  # replaced below, or gone if its input no longer holds a readable image
                os.remove(path)
            stamp = _input_stamp(inputs[index])  # before reading: an input rewritten meanwhile is encoded again
            shard_max = -1  # the largest label of this shard: a rerun that keeps it still counts its classes
            with ShardWriter(out_pattern, max_count=1 << 40, max_size=1 << 60, start_index=index) as writer:
                for keys, images, labels in good_batches(read_shard(url, log), decoder, log, batch_size):
                    x = torch.from_numpy(np.stack(images)).to(device).float().div(127.5).sub(1.0)
                    # Encode the images and their mirrors in one pass: rows [0, B) and [B, 2B).
                    with _batch_memory(len(x), resolution, device):
                        mean, std = vae_posterior(model, torch.cat([x, x.flip(-1)]))
                    mean, std = mean.float().cpu().numpy(), std.float().cpu().numpy()
                    b = len(keys)
                    for i, (key, label) in enumerate(zip(keys, labels, strict=True)):
                        pair, pair_std = mean[i::b], std[i::b]  # (2, C, h, w): image, mirror
                        if store == "mean_std":
                            fields = {
                                "mean.npy": _npy(pair.astype(np.float16)),
                                "std.npy": _npy(pair_std.astype(np.float16)),
                            }
                        else:
                            eps = np.random.default_rng(mix_seed(seed, index, i, done)).standard_normal(pair.shape)
                            fields = {"latent.npy": _npy((pair + pair_std * eps).astype(np.float16))}
                        if label >= 0:
                            fields["cls"] = str(label).encode()
                            shard_max = max(shard_max, label)
                        writer.write(key, fields)
                    latent_shape = mean.shape[1:]
                    done += b
                    if progress is not None:
                        progress(done, total)
            shards.extend(writer.shards)  # empty when no sample of the input shard was readable
            max_label = max(max_label, shard_max)
            for shard in writer.shards:
                record["done"][shard.name] = {**asdict(shard), "input": stamp, "max_label": shard_max}
            if writer.shards:
                write_json(os.path.join(folder, RECORD_NAME), record)
        if not shards or sum(s.count for s in shards) == 0:
            raise ValueError(f"urls: no readable images in {urls!r}")
        write_json(os.path.join(folder, RECORD_NAME), record)  # with the new mtimes of inputs kept by their content
        extra: dict[str, object] = {
            "scale_factor": scale_factor,
            "store": store,
            "vae": _vae_name(vae),
            "image_resolution": resolution,
            "flip_variant": True,
        }
        if latent_shape is None:  # everything was resumed: read the shape from a stored sample
            first = next(read_shard(os.path.join(folder, shards[0].name), log))
            latent_shape = np.load(io.BytesIO(first.get("mean.npy") or first["latent.npy"])).shape[1:]
        # Without a source dataset.json the class count is inferred from the labels of every output shard.
        classes = source.classes if source is not None else (max_label + 1 if labelled else 0)
        return write_manifest(
            folder,
            kind="latent",
            shards=shards,
            resolution=int(latent_shape[-1]),
            channels=int(latent_shape[0]),
            classes=classes,
            class_names=source.class_names if source is not None else [],
            extra=extra,
        )
