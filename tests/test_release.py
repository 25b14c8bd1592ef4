"""Loading the authors' released checkpoints: local file, folder, hub id offline, mismatching files."""

import os

import pytest
import torch
from safetensors.torch import save_file

from diffit.nn import LatentDiffiT
from diffit.release import load_release, load_release_state_dict, release_config

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=4, num_classes=7)


def _release_like_state_dict() -> dict[str, torch.Tensor]:
    """A release-layout state dict of a tiny model with random (non-zero) weights."""
    sd = LatentDiffiT(**TINY).state_dict()
    return {k: v if k.endswith("relative_position_index") else 0.1 * torch.randn_like(v) for k, v in sd.items()}


def test_release_config_reads_the_architecture_from_shapes() -> None:
    config = release_config(_release_like_state_dict())
    assert config == TINY | dict(mlp_ratio=4.0, learn_sigma=True)


@pytest.mark.parametrize("as_folder", [False, True])
def test_load_from_local_file_or_folder(tmp_path, as_folder: bool) -> None:
    sd = _release_like_state_dict()
    save_file(sd, str(tmp_path / "diffit_256.safetensors"))
    model = load_release(tmp_path if as_folder else tmp_path / "diffit_256.safetensors")
    assert isinstance(model, LatentDiffiT) and not model.training and not model.pos_embed.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    reference = LatentDiffiT(**TINY).eval()
    reference.load_state_dict(sd, strict=True)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.0, 999.0]), torch.tensor([0, 6])
    torch.testing.assert_close(model(x, t, y), reference(x, t, y))
    # dtype= converts the floating-point weights only (the position index stays integer).
    double = load_release(tmp_path if as_folder else tmp_path / "diffit_256.safetensors", dtype=torch.float64)
    for k, v in double.state_dict().items():
        assert v.dtype == (torch.float64 if sd[k].is_floating_point() else sd[k].dtype) and torch.equal(
            v, sd[k].to(v.dtype)
        )


def test_folder_picks_the_resolution(tmp_path) -> None:
    small = _release_like_state_dict()
    big = LatentDiffiT(**(TINY | dict(input_size=16))).state_dict()
    save_file(small, str(tmp_path / "diffit_256.safetensors"))
    save_file(big, str(tmp_path / "diffit_512.safetensors"))
    assert load_release(tmp_path, resolution=512).input_size == 16
    assert load_release_state_dict(tmp_path, resolution=256).keys() == small.keys()
    # A folder without that name: its one .safetensors file, whatever it is called; of two, neither is guessed.
    (other := tmp_path / "other").mkdir()
    save_file(small, str(other / "ema.safetensors"))
    assert load_release_state_dict(other).keys() == small.keys()
    save_file(big, str(other / "raw.safetensors"))
    with pytest.raises(ValueError, match=r"folder has no diffit_256.safetensors \(found \['ema.safetensors', 'raw"):
        load_release(other)


def test_mismatching_files_give_one_line_errors(tmp_path) -> None:
    sd = _release_like_state_dict()
    extra = sd | {"blocks.0.attn.q_norm.weight": torch.ones(8)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(
        ValueError, match="does not match the DiffiT release layout: unexpected \\['blocks.0.attn.q_norm"
    ):
        load_release(tmp_path / "extra.safetensors")
    partial = {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing \\['blocks.1.mlp.fc2.bias'\\]"):
        load_release(tmp_path / "partial.safetensors")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a DiffiT release checkpoint: missing pos_embed"):
        load_release(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_release(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="no such file or folder"):
        load_release(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="resolution must be one of \\(256, 512\\)"):
        load_release(tmp_path, resolution=128)


def test_hub_id_offline_is_a_clear_error(tmp_path) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: nothing is downloaded in tests
    with pytest.raises(ValueError, match="could not get diffit_256.safetensors from the Hugging Face hub") as info:
        load_release("nvidia/DiffiT", cache_dir=tmp_path)
    assert "\n" not in str(info.value)
