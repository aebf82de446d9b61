"""How a network becomes its sampling form: a copy of the same module with constant factors folded
into its weights (in float64), the weights cast once to the dtype the network computes in and
laid out channels-last, and its activations updated in place.

Every network class that has a sampling form (`CouplingNet`, `ConditionNet`, `ContentExtractor`)
writes its forward pass once; the copy differs only in attributes that this module sets:

- `fused = True` on the copy and on every submodule that declares the attribute: the forward
  pass then skips the factors that were folded and works in place (no autograd on a copy);
- `compute_dtype`: read by `sdflow.nets.precision.autocast_net`, so the copy runs in that dtype
  whatever context it is called in;
- `inplace = True` on its LeakyReLU modules.

Sampling forms are made by `SDFlow` when it samples in eval mode, and made again when the
model's parameters change (`sdflow.model`).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn as nn


def exact(t: torch.Tensor) -> torch.Tensor:
    """`t` in float64 on the CPU, where weights are combined (some devices, e.g. MPS, have no
    float64)."""
    return t.detach().to("cpu", torch.float64)


def set_weights(conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> None:
    """Replace the weights of `conv` (in a sampling copy) by `weight` / `bias`, whose output
    channels may be fewer than before."""
    conv.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias, requires_grad=False)
    conv.out_channels = weight.shape[0]


def scale_conv(conv: nn.Conv2d, factor) -> None:
    """Fold a constant factor (a number, or one per output channel) that follows `conv` into its
    weights, in float64."""
    factor = torch.as_tensor(factor, dtype=torch.float64).flatten()
    set_weights(conv, exact(conv.weight) * factor.view(-1, 1, 1, 1),
                None if conv.bias is None else exact(conv.bias) * factor)


def sampling_copy(module: nn.Module, dtype: torch.dtype, memory_format: torch.memory_format,
                  fold: Callable[[nn.Module], None]) -> nn.Module:
    """A copy of `module` for sampling: `fold(copy)` rewrites its weights (and may replace
    submodules), then the weights go to `module`'s device in `dtype` and `memory_format`."""
    device = next(module.parameters()).device
    net = copy.deepcopy(module).requires_grad_(False)
    with torch.no_grad():
        fold(net)
    for m in net.modules():
        if hasattr(m, "fused"):
            m.fused = True
        if isinstance(m, nn.LeakyReLU):
            m.inplace = True
    net.compute_dtype = dtype
    return net.to(device=device, dtype=dtype, memory_format=memory_format).eval()


__all__ = ["exact", "set_weights", "scale_conv", "sampling_copy"]
