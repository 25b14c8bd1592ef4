"""Load the authors' released latent DiffiT checkpoints (``nvidia/DiffiT`` on the Hugging Face hub).

The release ships bare safetensors state dicts (``diffit_256.safetensors``: XL/2 on 32x32x4 latents;
``diffit_512.safetensors``: XL/2 on 64x64x4). Their architecture is read back from the tensor shapes, so any
checkpoint with the release's key layout loads, and a file that is not one fails with a one-line error.
"""

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from diffit.nn import LatentDiffiT

RELEASE_REPO = "nvidia/DiffiT"
RELEASE_RESOLUTIONS = (256, 512)


def check_release_resolution(resolution: int) -> int:
    """ValueError unless ``resolution`` names a released model (``RELEASE_RESOLUTIONS``)."""
    if resolution not in RELEASE_RESOLUTIONS:
        raise ValueError(
            f"release_resolution must be one of {RELEASE_RESOLUTIONS} (the released models), got {resolution}"
        )
    return resolution


def release_filename(resolution: int) -> str:
    """The file name of the released checkpoint for ``resolution`` pixels (256 or 512)."""
    if resolution not in RELEASE_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RELEASE_RESOLUTIONS}, got {resolution}")
    return f"diffit_{resolution}.safetensors"


def release_config(state_dict: Mapping[str, Tensor]) -> dict:
    """LatentDiffiT constructor kwargs read from a release-layout state dict's shapes.

    pos_embed (1, T, D) gives the width and the token grid; the patch conv (D, C, p, p) the latent channels
    and patch; the bias table (.., heads) the heads; the label table num_classes + 1 rows (null class last);
    the final Linear p*p*out rows, out = 2C when the variance is learned.
    """
    required = (
        "pos_embed",
        "x_embedder.proj.weight",
        "y_embedder.embedding_table.weight",
        "blocks.0.attn.relative_position_bias_table",
        "blocks.0.mlp.fc1.weight",
        "final_layer.linear.weight",
    )
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"state_dict is not a DiffiT release checkpoint: missing {', '.join(missing)}")
    tokens, hidden = state_dict["pos_embed"].shape[1:]
    width, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
    grid = round(tokens**0.5)
    out_channels = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch)
    if grid * grid != tokens or width != hidden or out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            f"state_dict is not a DiffiT release checkpoint: pos_embed {tuple(state_dict['pos_embed'].shape)}, "
            f"x_embedder.proj.weight {tuple(state_dict['x_embedder.proj.weight'].shape)} and "
            f"final_layer.linear.weight {tuple(state_dict['final_layer.linear.weight'].shape)} do not fit together"
        )
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    return {
        "input_size": grid * patch,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": state_dict["blocks.0.attn.relative_position_bias_table"].shape[1],
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "num_classes": state_dict["y_embedder.embedding_table.weight"].shape[0] - 1,
        "learn_sigma": out_channels == 2 * in_channels,
    }


def _resolve(source: str | Path, resolution: int, cache_dir: str | Path | None) -> Path:
    """A local .safetensors file, a folder holding ``diffit_{resolution}.safetensors``, or a hub repo id."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / release_filename(resolution)
        if candidate.is_file():
            return candidate
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise ValueError(f"source={str(source)!r}: folder has no {candidate.name} (found {[f.name for f in found]})")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) or str(source).endswith(".safetensors"):
        raise ValueError(f"source={str(source)!r}: no such file or folder, and not a hub repo id like {RELEASE_REPO}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise ValueError(
            f"source={str(source)!r} is a hub id but huggingface_hub is not installed (pip install diffit[latent])"
        ) from err
    filename = release_filename(resolution)
    try:
        return Path(hf_hub_download(repo_id=str(source), filename=filename, cache_dir=cache_dir))
    except Exception as err:  # offline mode, network errors, missing repo or file: all one line for the user
        reason = " ".join(str(err).split())[:200]
        raise ValueError(
            f"source={str(source)!r}: could not get {filename} from the Hugging Face hub "
            f"({type(err).__name__}: {reason}); when offline, pass a local .safetensors file or folder"
        ) from err


def load_release_state_dict(
    source: str | Path = RELEASE_REPO, *, resolution: int = 256, cache_dir: str | Path | None = None
) -> dict[str, Tensor]:
    """The state dict of a released checkpoint: a local file, a local folder, or a hub repo id (downloaded)."""
    path = _resolve(source, resolution, cache_dir)
    try:
        return load_file(str(path))
    except Exception as err:
        raise ValueError(f"source={str(source)!r}: {path} is not a readable safetensors file ({err})") from err


def load_release(
    source: str | Path = RELEASE_REPO,
    *,
    resolution: int = 256,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> LatentDiffiT:
    """A :class:`LatentDiffiT` holding a released checkpoint, strictly loaded, in eval mode.

    Args:
        source: path to a .safetensors file, a folder holding ``diffit_{resolution}.safetensors``, or a hub
            repo id (default ``nvidia/DiffiT``; needs ``huggingface_hub`` and network or a warm cache).
        resolution: which release to fetch from a folder or the hub (256 or 512 pixels).
        cache_dir: huggingface_hub cache folder (its default when None).
        dtype: dtype of the floating-point weights.
    """
    state_dict = load_release_state_dict(source, resolution=resolution, cache_dir=cache_dir)
    try:
        config = release_config(state_dict)
    except ValueError as err:
        raise ValueError(f"source={str(source)!r}: {err}") from err
    with torch.device("meta"):  # no memory spent before the weights are assigned
        model = LatentDiffiT(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected != got:
        missing = sorted(expected.keys() - got.keys())
        unexpected = sorted(got.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        details = "; ".join(
            f"{what} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ValueError(f"source={str(source)!r} does not match the DiffiT release layout: {details}")
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.pos_embed.requires_grad_(False)
    return model.eval()
