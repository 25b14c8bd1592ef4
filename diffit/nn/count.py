"""Model size and cost: parameter counts and FLOPs of one forward pass (torch's FlopCounterMode).

FLOPs follow torch's convention: a multiply-add counts 2 (matmuls, convolutions and the attention matmuls;
norms and pointwise ops are not counted). The DiT and DiffiT papers' "GFLOPs" count a multiply-add once
(fvcore), i.e. half of this: the released XL/2 at 256 px is 237 GFLOPs here, 118.5 in the papers' units
(114 for the linear layers alone, the paper's figure).
"""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of parameters; ``trainable_only`` skips frozen ones (e.g. the fixed position codes)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, *example_inputs: object, **example_kwargs: object) -> int:
    """FLOPs (multiply-add = 2) of ``model(*example_inputs, **example_kwargs)``, run once without gradients.

    Works on the meta device, so the cost of a large model can be measured without allocating it.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*example_inputs, **example_kwargs)
    return int(counter.get_total_flops())
