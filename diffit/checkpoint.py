"""Checkpoints: safetensors weights + JSON, written atomically, rotated, and loaded without unpickling code.

A training checkpoint is a directory ``ckpt-00001000/`` inside the run directory:

- ``model.safetensors`` / ``ema.safetensors``: raw and EMA weights of *any* module; the safetensors metadata
  carries the model's class name and constructor arguments (``diffit.model``) and the training objective's
  (``diffit.objective``). Either file alone rebuilds a diffit backbone; a model of your own is rebuilt by the
  class or builder you pass (``build=``): a file never names code that loading would import;
- ``optimizer.pt``: the optimizer's state dict of tensors and numbers, read back with ``weights_only=True``;
- ``rng.safetensors``: every rank's torch RNG states;
- ``state.json``: step, run arguments, data position, metrics, software versions and file hashes.

It is written into a hidden temporary directory, every file fsync'ed, then renamed into place: a crash
mid-write leaves at most a stray ``.tmp`` directory, ignored and removed by the next save, never a
half-written latest checkpoint. Weights holding non-finite values are never written.
"""

import hashlib
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from diffit.ema import strip_wrapper_prefixes, unwrap
from diffit.nn import ImageDiffiT, LatentDiffiT, check_backbone
from diffit.nn.contract import jsonable
from diffit.objectives import build_objective, objective_spec
from diffit.release import check_release_resolution, load_release
from diffit.util import atomic_path, check_integer, fsync_dir, fsync_file, is_integer

MODEL_METADATA_KEY = "diffit.model"
OBJECTIVE_METADATA_KEY = "diffit.objective"
WEIGHTS_METADATA_KEY = "diffit.weights"  # "ema" or "raw"
_CKPT_RE = re.compile(r"^ckpt-(\d{8})$")
_TMP_RE = re.compile(r"^\.ckpt-\d{8}\.tmp-\d+$")
# Backbones diffit rebuilds from a checkpoint by itself. Any other module is checkpointed just the same; loading
# it takes the class or a builder from its user (``build=``): nothing named by a file is ever imported.
BUILTIN_MODELS: dict[str, type[nn.Module]] = {"ImageDiffiT": ImageDiffiT, "LatentDiffiT": LatentDiffiT}
# Constructor arguments of 0.1.0 files that are run-time switches now (``set_grad_checkpointing``).
_LEGACY_CONFIG_KEYS = ("checkpointing",)

Build = Callable[..., nn.Module]


def _without_legacy(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config without the 0.1.0 arguments that are run-time switches now."""
    return {k: v for k, v in config.items() if k not in _LEGACY_CONFIG_KEYS}


def _same_config(saved: dict[str, Any] | None, current: dict[str, Any] | None, model: nn.Module) -> bool:
    """Whether a checkpoint's recorded config describes ``model``; an argument added after the file was written
    (absent from it) matches when the model uses that argument's default."""
    if saved is None or current is None:
        return True
    defaults = {
        name: p.default
        for name, p in inspect.signature(type(unwrap(model)).__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    filled = {k: jsonable(defaults[k]) for k in current.keys() - saved.keys() if k in defaults}
    return _without_legacy(saved) | filled == current


def model_spec(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records of a model: its class name and module (for people to read; never imported)
    and its constructor arguments (``model.config``, see :func:`diffit.nn.capture_config`), or None where
    the model has no JSON-serialisable config (it then needs its builder to be loaded)."""
    bare = unwrap(model)
    config = getattr(bare, "config", None)
    try:
        config = jsonable(config) if isinstance(config, dict) else None
    except (TypeError, ValueError):
        config = None
    return {"class": type(bare).__name__, "module": type(bare).__module__, "config": config}


def build_model(spec: dict[str, Any], build: Build | None = None) -> nn.Module:
    """An untrained model from :func:`model_spec`'s dict: ``build(**config)`` (``build()`` when no config was
    recorded), or, without ``build``, a diffit backbone rebuilt from its recorded config."""
    name, config = spec.get("class"), spec.get("config")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"the checkpoint's model config must be a JSON object, got {type(config).__name__}")
    where = f"{spec.get('module', '?')}.{name}"
    if build is None:
        if name not in BUILTIN_MODELS or config is None:
            raise ValueError(
                f"the checkpoint holds a model of class {where}, which diffit cannot rebuild by itself: pass "
                f"build=<its class or a function returning it> (Python) or --model-factory module:function (CLI)"
            )
        build = BUILTIN_MODELS[name]
    if isinstance(build, type) and build.__name__ in BUILTIN_MODELS and config is not None:
        config = _without_legacy(config)
    try:
        model = build(**config) if config is not None else build()
    except (TypeError, ValueError, RuntimeError) as err:  # RuntimeError: e.g. a recorded size too large to allocate
        raise ValueError(
            f"build={getattr(build, '__name__', build)} cannot rebuild the checkpoint's {name} from its recorded "
            f"config {config}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"build={getattr(build, '__name__', build)} returned a {type(model).__name__}, not a module")
    return model


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line error naming the first mismatches."""
    state = strip_wrapper_prefixes(state)
    own = unwrap(model).state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise ValueError(f"{what} does not fit the model: keys {'; '.join(parts)}")
    unwrap(model).load_state_dict(state, strict=True)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, then the file mode any new file gets here (0o666 less the umask).

    safetensors (0.8) writes through a private temporary file and leaves the result readable by its owner only
    (0o600), while ``state.json`` and ``optimizer.pt`` beside it follow the umask: a checkpoint a colleague or
    another service account could not load."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask. Linux reports it in /proc/self/status (kernel 4.7+); elsewhere ``os.umask`` is the only
    way to read it, by setting it and putting it back at once (process-wide for that instant)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def save_weights(
    path: Path, model: nn.Module, *, objective: Any = None, extra_metadata: dict[str, str] | None = None
) -> None:
    """One self-describing safetensors file: the unwrapped state dict, with the model spec (and the
    objective's, when given) in the metadata. Written to a temporary name, fsync'ed and renamed, so ``path``
    is either the old file or the new one."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())), None)
    if bad is not None:
        raise ValueError(f"refusing to save {path.name}: the weight {bad} holds non-finite values")
    metadata = {MODEL_METADATA_KEY: json.dumps(model_spec(model)), **(extra_metadata or {})}
    if objective is not None:
        metadata[OBJECTIVE_METADATA_KEY] = json.dumps(objective_spec(objective))
    with atomic_path(path, durable=True) as tmp:
        save_tensors(state, tmp, metadata)


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file; ValueError (one line) for a file that is not one, or damaged."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors' own errors, OSError, ...
        raise ValueError(f"{path}: cannot read it as a checkpoint ({type(err).__name__}: {err})") from None


def metadata_spec(metadata: dict[str, str], key: str, path: Path) -> dict[str, Any] | None:
    """The JSON spec stored under ``key`` (None when absent); ValueError naming the file when it is not JSON."""
    if key not in metadata:
        return None
    try:
        spec = json.loads(metadata[key])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: its '{key}' metadata is not valid JSON ({err})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: its '{key}' metadata is not a JSON object, got {type(spec).__name__}")
    return spec


def load_weights(
    path: Path, *, build: Build | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild the model a :func:`save_weights` file describes (``build``: see :func:`build_model`) and load
    its weights strictly; returns (model in eval mode, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    metadata = read_metadata(path)
    if MODEL_METADATA_KEY not in metadata:
        raise ValueError(f"{path} has no '{MODEL_METADATA_KEY}' metadata: not a diffit weights file")
    model = build_model(metadata_spec(metadata, MODEL_METADATA_KEY, path), build)
    load_state_strict(model, load_file(str(path), device=str(map_location)), what=str(path))
    return model.to(map_location).eval(), metadata


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories of interrupted writes are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _CKPT_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``ckpt-<step>`` directory of ``run_dir``, or None when it has none."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def remove_orphans(run_dir: Path) -> list[Path]:
    """Delete the temporary directories that killed checkpoint writes left in ``run_dir``; returns them."""
    run_dir = Path(run_dir)
    orphans = [p for p in run_dir.iterdir() if p.is_dir() and _TMP_RE.match(p.name)] if run_dir.is_dir() else []
    for p in orphans:
        shutil.rmtree(p, ignore_errors=True)
    return orphans


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng_states: dict[str, torch.Tensor],
    state: dict[str, Any],
    objective: Any = None,
    keep_last: int = 3,
    keep: set[int] | None = None,
) -> Path:
    """Write ``run_dir/ckpt-<step>`` atomically, then delete all but the newest ``keep_last`` of the checkpoints up to
    this step (and the ``keep`` steps; later ones are left alone) and any temporary directory an interrupted write
    left behind. Refuses weights that are not finite."""
    # Everything checked before anything is written (step 1.5 created run_dir, then failed formatting its name).
    check_integer("keep_last", keep_last)
    if not is_integer(step) or not 0 <= step < 10**8:  # the eight digits of ckpt-<step>, which checkpoint_dirs reads
        raise ValueError(f"step must be an integer in [0, 10**8), got {step!r}")
    bad = next((k for k, v in rng_states.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"rng_states must map names to tensors, got a {type(rng_states[bad]).__name__} for {bad!r}")
    try:
        json.dumps(state, sort_keys=True)  # as state.json is written below
    except (TypeError, ValueError) as err:
        raise ValueError(f"state must be plain JSON data (it is written to state.json): {err}") from None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_orphans(run_dir)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f".ckpt-{step:08d}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        save_weights(
            tmp / "model.safetensors", model, objective=objective, extra_metadata={WEIGHTS_METADATA_KEY: "raw"}
        )
        save_weights(tmp / "ema.safetensors", ema, objective=objective, extra_metadata={WEIGHTS_METADATA_KEY: "ema"})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_tensors({k: v.contiguous().cpu() for k, v in rng_states.items()}, tmp / "rng.safetensors")
        names = ("model.safetensors", "ema.safetensors", "optimizer.pt", "rng.safetensors")
        files = {name: sha256_file(tmp / name) for name in names}
        record = {**state, "step": step, "model": model_spec(model), "files": files}
        if objective is not None:
            record["objective"] = objective_spec(objective)
        (tmp / "state.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(run_dir)
    protected = {run_dir / f"ckpt-{s:08d}" for s in (keep or set())}
    # Only checkpoints up to this one rotate (zero-padded names sort by step): a newer one is a damaged checkpoint a
    # resume passed over, which this run replaces when it reaches its step. Counted in, it deleted `final` itself.
    for old in [p for p in checkpoint_dirs(run_dir) if p.name <= final.name][:-keep_last]:
        if old not in protected:
            shutil.rmtree(old)
    return final


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json`` (not its files' hashes: see :func:`verify_checkpoint`); ValueError (one line)
    when it is unreadable or lacks what every checkpoint records (step, model, files)."""
    ckpt_dir = Path(ckpt_dir)
    try:
        record = json.loads((ckpt_dir / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"checkpoint {ckpt_dir}: state.json is unreadable ({type(err).__name__})") from None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("step"), int)
        or isinstance(record.get("step"), bool)  # true is an int to Python, and was read as step 1
        or not isinstance(record.get("model"), dict)
    ):
        raise ValueError(f"checkpoint {ckpt_dir}: state.json lacks its step or model record")
    if not isinstance(record.get("files", {}), dict):
        raise ValueError(f"checkpoint {ckpt_dir}: state.json's files record is not an object")
    return record


def readable_state(ckpt_dir: Path) -> dict[str, Any] | None:
    """:func:`read_state`, or None when the checkpoint's ``state.json`` is missing or damaged."""
    try:
        return read_state(ckpt_dir)
    except ValueError:
        return None


def verify_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint whose files all match their recorded sha256; ValueError (one line) if not."""
    ckpt_dir = Path(ckpt_dir)
    record = read_state(ckpt_dir)
    for name, expected in record.get("files", {}).items():
        if not (ckpt_dir / name).is_file() or sha256_file(ckpt_dir / name) != expected:
            raise ValueError(f"checkpoint file {ckpt_dir / name} does not match its recorded sha256")
    if not (ckpt_dir / "rng.safetensors").is_file():  # checkpoints before 2026-11-27 did not hash it
        raise ValueError(f"checkpoint {ckpt_dir} has no rng.safetensors")
    return record


def load_checkpoint(
    ckpt_dir: Path,
    *,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    map_location: str | torch.device = "cpu",
    verified: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load weights (strictly), EMA and optimizer state in place; returns (state.json dict, rng states).
    ``verified``: the record :func:`verify_checkpoint` already returned for this directory (its files are then
    not hashed a second time)."""
    ckpt_dir = Path(ckpt_dir)
    record = verified if verified is not None else verify_checkpoint(ckpt_dir)
    saved, current = record["model"], model_spec(model)
    if saved.get("class") != current["class"] or not _same_config(saved.get("config"), current["config"], model):
        raise ValueError(
            f"checkpoint {ckpt_dir} is for model {saved.get('class')} {saved.get('config')}, "
            f"not the model being trained ({current['class']} {current['config']})"
        )
    load_state_strict(model, load_file(str(ckpt_dir / "model.safetensors")), what=f"checkpoint {ckpt_dir}")
    load_state_strict(ema, load_file(str(ckpt_dir / "ema.safetensors")), what=f"checkpoint {ckpt_dir} (EMA)")
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


@dataclass
class LoadedModel:
    """A model ready to sample (eval mode, CPU), the objective it was trained with, and where it came from
    (``source``: path, sha256, kind "diffit" | "release", weights "ema" | "raw" | "unspecified")."""

    model: nn.Module
    objective: Any
    source: dict[str, Any]


def load_model(
    source: str | Path | None,
    *,
    build: Build | None = None,
    objective: Any = None,
    use_ema: bool = True,
    release_resolution: int = 256,
) -> LoadedModel:
    """Any model diffit can sample from, with its objective and a description of where it came from.

    ``source``: None (the bundled digits model), a run directory, a ``ckpt-*`` directory, a diffit
    ``.safetensors`` file, the authors' released file (``diffit_256.safetensors``), a folder holding it, or the
    hub id ``nvidia/DiffiT`` (downloaded when online). ``build`` rebuilds a model of your own (see
    :func:`build_model`); ``objective`` overrides the recorded one (needed for an objective of your own).
    Raises FileNotFoundError / ValueError with one line.
    """
    if source is not None and not isinstance(source, (str, os.PathLike)):  # Path(42) raised a TypeError
        raise ValueError(f"source must be a path, a hub id such as nvidia/DiffiT, or None, got {source!r}")
    check_release_resolution(release_resolution)
    try:
        path = resolve_weights(source, use_ema=use_ema)
    except FileNotFoundError:
        text = str(source)
        if source is not None and "/" in text and not text.startswith((".", "/")) and not Path(text).exists():
            return _release(text, release_resolution, objective)  # a hub id such as nvidia/DiffiT
        raise
    sha = _intact_sha256(path)
    metadata = read_metadata(path)
    if MODEL_METADATA_KEY not in metadata:
        return _release(str(path), release_resolution, objective, sha)
    model, _ = load_weights(path, build=build)
    check_backbone(model, what=f"the model rebuilt from {path} cannot be sampled: it")
    if objective is None:
        objective = build_objective(metadata_spec(metadata, OBJECTIVE_METADATA_KEY, path), model=model)
    weights = metadata.get(WEIGHTS_METADATA_KEY, "unspecified")
    info = {"path": str(path), "sha256": sha, "kind": "diffit", "weights": weights}
    return LoadedModel(model, objective, info)


def _intact_sha256(path: Path) -> str:
    """The file's sha256, refused (ValueError) when the state.json of the training checkpoint that holds it records
    another one. An unreadable state.json leaves nothing to compare with."""
    sha = sha256_file(path)
    recorded = (readable_state(path.parent) or {}).get("files", {}).get(path.name)
    if recorded is not None and recorded != sha:
        raise ValueError(f"{path} does not match the sha256 its checkpoint's state.json records: the file is damaged")
    return sha


def _release(source: str, resolution: int, objective: Any, sha: str | None = None) -> LoadedModel:
    model = load_release(source, resolution=resolution)
    sha = sha or (sha256_file(source) if Path(source).is_file() else None)
    info = {"path": source, "sha256": sha, "kind": "release", "weights": "ema"}
    return LoadedModel(model, objective if objective is not None else build_objective(None, model=model), info)
