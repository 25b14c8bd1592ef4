"""Checkpoints: safetensors weights + JSON, written atomically, rotated, and loaded without unpickling code.

A training checkpoint is a directory ``ckpt-00001000/`` inside the run directory:

- ``model.safetensors`` / ``ema.safetensors``: raw and EMA weights; the safetensors metadata carries the model
  class and constructor arguments (``diffit.model``), so either file alone rebuilds its model;
- ``optimizer.pt``: the optimizer's state dict of tensors and numbers, read back with ``weights_only=True``;
- ``rng.safetensors``: every rank's torch RNG states;
- ``state.json``: step, run arguments, data position, metrics, software versions and file hashes.

It is written into a hidden temporary directory, every file fsync'ed, then renamed into place: a crash
mid-write leaves at most a stray ``.tmp`` directory that is ignored, never a half-written latest checkpoint.
"""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from diffit.ema import strip_wrapper_prefixes, unwrap
from diffit.nn.latent import LatentDiffiT
from diffit.nn.unet import ImageDiffiT
from diffit.release import load_release

MODEL_METADATA_KEY = "diffit.model"
WEIGHTS_METADATA_KEY = "diffit.weights"  # "ema" or "raw"
_CKPT_RE = re.compile(r"^ckpt-(\d{8})$")
# The only classes a checkpoint may name: a closed list, not a registry of import strings.
MODEL_CLASSES: dict[str, type[nn.Module]] = {"ImageDiffiT": ImageDiffiT, "LatentDiffiT": LatentDiffiT}


def model_spec(model: nn.Module) -> dict[str, Any]:
    """{"class": name, "config": constructor kwargs} of a diffit backbone (JSON-serialisable)."""
    bare = unwrap(model)
    name = type(bare).__name__
    if name not in MODEL_CLASSES:
        raise ValueError(f"model must be one of {sorted(MODEL_CLASSES)} to be checkpointed, got {name}")
    return {"class": name, "config": dict(bare.config)}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) backbone from :func:`model_spec`'s dict."""
    name = spec.get("class")
    if name not in MODEL_CLASSES:
        raise ValueError(f"checkpoint names model class {name!r}; expected one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[name](**spec["config"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(path: Path, model: nn.Module, *, extra_metadata: dict[str, str] | None = None) -> None:
    """One self-describing safetensors file: the unwrapped state dict + the model spec in the metadata.

    Written to a temporary name, fsync'ed and renamed, so ``path`` is either the old file or the new one.
    """
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    metadata = {MODEL_METADATA_KEY: json.dumps(model_spec(model)), **(extra_metadata or {})}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp), metadata=metadata)
    _fsync_file(tmp)
    os.replace(tmp, path)


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_weights(path: Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, str]]:
    """Rebuild the model a :func:`save_weights` file describes and load it strictly; returns (model, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    metadata = read_metadata(path)
    if MODEL_METADATA_KEY not in metadata:
        raise ValueError(f"{path} has no '{MODEL_METADATA_KEY}' metadata: not a diffit weights file")
    model = build_model(json.loads(metadata[MODEL_METADATA_KEY]))
    model.load_state_dict(strip_wrapper_prefixes(load_file(str(path), device=str(map_location))), strict=True)
    return model.to(map_location).eval(), metadata


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories of interrupted writes are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _CKPT_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng_states: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep_last: int = 3,
    keep: set[int] | None = None,
) -> Path:
    """Write ``run_dir/ckpt-<step>`` atomically, then delete all but the newest ``keep_last`` (and ``keep`` steps)."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f".ckpt-{step:08d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(tmp / "model.safetensors", model, extra_metadata={WEIGHTS_METADATA_KEY: "raw"})
    save_weights(tmp / "ema.safetensors", ema, extra_metadata={WEIGHTS_METADATA_KEY: "ema"})
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    save_file({k: v.contiguous().cpu() for k, v in rng_states.items()}, str(tmp / "rng.safetensors"))
    files = {name: sha256_file(tmp / name) for name in ("model.safetensors", "ema.safetensors", "optimizer.pt")}
    record = {**state, "step": step, "model": model_spec(model), "files": files}
    (tmp / "state.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(run_dir)
    protected = {run_dir / f"ckpt-{s:08d}" for s in (keep or set())}
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        if old not in protected:
            shutil.rmtree(old)
    return final


def load_checkpoint(
    ckpt_dir: Path,
    *,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load weights (strictly), EMA and optimizer state in place; returns (state.json dict, rng states)."""
    ckpt_dir = Path(ckpt_dir)
    record = json.loads((ckpt_dir / "state.json").read_text())
    if record["model"] != model_spec(model):
        raise ValueError(
            f"checkpoint {ckpt_dir} is for model {record['model']['class']} {record['model']['config']}, "
            f"not the model being trained ({model_spec(model)['config']})"
        )
    for name, expected in record.get("files", {}).items():
        if sha256_file(ckpt_dir / name) != expected:
            raise ValueError(f"checkpoint file {ckpt_dir / name} does not match its recorded sha256")
    unwrap(model).load_state_dict(strip_wrapper_prefixes(load_file(str(ckpt_dir / "model.safetensors"))))
    ema.load_state_dict(strip_wrapper_prefixes(load_file(str(ckpt_dir / "ema.safetensors"))))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", map_location=map_location, weights_only=True))
    return record, load_file(str(ckpt_dir / "rng.safetensors"))


BUNDLED_CHECKPOINT = Path(__file__).parent / "assets" / "digits16.safetensors"


def resolve_weights(source: str | Path | None, *, use_ema: bool = True) -> Path:
    """The weights file that ``source`` names: None = the bundled digits model; a run directory (its latest
    checkpoint), a ``ckpt-*`` directory, or a ``.safetensors`` file. EMA weights unless ``use_ema`` is False."""
    if source is None:
        if not BUNDLED_CHECKPOINT.is_file():
            raise FileNotFoundError(f"the bundled checkpoint is missing from the installation: {BUNDLED_CHECKPOINT}")
        return BUNDLED_CHECKPOINT
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        ckpt = path if (path / "state.json").is_file() else latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint (ckpt-*/state.json) in {path}")
        return ckpt / ("ema.safetensors" if use_ema else "model.safetensors")
    raise FileNotFoundError(f"checkpoint not found: {source}")


def load_model(
    source: str | Path | None, *, use_ema: bool = True, release_resolution: int = 256
) -> tuple[nn.Module, dict[str, Any]]:
    """Any model diffit can sample from, in eval mode on the CPU, with a description of where it came from.

    ``source``: None (the bundled digits model), a run directory, a ``ckpt-*`` directory, a diffit
    ``.safetensors`` file, the authors' released file (``diffit_256.safetensors``), a folder holding it, or the
    hub id ``nvidia/DiffiT`` (downloaded when online). Raises FileNotFoundError / ValueError with one line.
    """
    try:
        path = resolve_weights(source, use_ema=use_ema)
    except FileNotFoundError:
        text = str(source)
        if source is not None and "/" in text and not text.startswith((".", "/")) and not Path(text).exists():
            return _release(text, release_resolution)  # a hub id such as nvidia/DiffiT
        raise
    try:
        metadata = read_metadata(path)
    except Exception as err:  # not a safetensors file at all, or a damaged one
        raise ValueError(f"{path}: cannot read it as a checkpoint ({type(err).__name__}: {err})") from None
    if MODEL_METADATA_KEY not in metadata:
        return _release(str(path), release_resolution)
    model, _ = load_weights(path)
    weights = metadata.get(WEIGHTS_METADATA_KEY, "unspecified")
    return model, {"path": str(path), "sha256": sha256_file(path), "kind": "diffit", "weights": weights}


def _release(source: str, resolution: int) -> tuple[nn.Module, dict[str, Any]]:
    model = load_release(source, resolution=resolution)
    sha = sha256_file(source) if Path(source).is_file() else None
    return model, {"path": source, "sha256": sha, "kind": "release", "weights": "ema"}
