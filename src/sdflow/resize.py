"""Differentiable resizing and blurring of NCHW image tensors.

Everything here works on floating-point tensors of shape [N, C, H, W] on any device and
keeps autograd intact, so the same functions serve the data pipeline (bicubic LR
targets, degradation simulation) and the training losses (low-pass comparisons).
Values are never clamped: bicubic overshoot is part of the filter and clamping would
kill gradients at the range edges. Callers that need [0, 1] clamp themselves.

Size convention: a downscale by `factor` yields ceil(H / factor) x ceil(W / factor),
as MATLAB's imresize and `SDFlow.downscale` do, on the factor's own pixel grid: LR pixel i
covers HR pixels factor*i .. factor*(i+1)-1, so the last one is partial when H is not a
multiple (an integer factor pads by edge replication first, as `SDFlow.downscale` does,
rather than stretching the grid to H / ceil(H / factor)).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["DOWN_KERNELS", "UP_KERNELS", "resize", "downscale", "upscale",
           "gaussian_kernel1d", "gaussian_blur"]

DOWN_KERNELS = ("bicubic", "bilinear", "area")
UP_KERNELS = ("bicubic", "bilinear", "nearest")


def _check_nchw(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"expected an NCHW tensor, got {type(x).__name__} "
                         f"with shape {tuple(getattr(x, 'shape', ()))}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")


def _interp(x: torch.Tensor, size: Tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    # The antialiased kernels have no half/bfloat16 implementation on CPU; a float32 round
    # trip costs little and keeps one code path for all dtypes and devices.
    dtype = x.dtype
    work = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    if mode in ("bicubic", "bilinear"):
        kwargs["antialias"] = antialias
    out = F.interpolate(work, size=size, mode=mode, **kwargs)
    return out.to(dtype)


def resize(x: torch.Tensor, size: Sequence[int], kernel: str = "bicubic",
           antialias: bool = True) -> torch.Tensor:
    """Resize [N,C,H,W] to `size` = (h, w) with `kernel` in bicubic, bilinear, area, nearest.

    `antialias` widens the bicubic/bilinear kernel when shrinking (as PIL and MATLAB do);
    without it a x4 bicubic downscale aliases badly. "area" averages the covered input
    pixels (exact box filter for integer factors) and is only meaningful for shrinking.
    """
    _check_nchw(x)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {(h, w)}")
    if (h, w) == tuple(x.shape[-2:]):
        return x
    if kernel == "area":
        H, W = x.shape[-2:]
        if H % h == 0 and W % w == 0:
            return F.avg_pool2d(x, kernel_size=(H // h, W // w))
        return F.adaptive_avg_pool2d(x, (h, w))
    if kernel not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"unknown kernel {kernel!r}; use one of bicubic, bilinear, area, nearest")
    return _interp(x, (h, w), kernel, antialias)


def downscale(x: torch.Tensor, factor: float = 4, kernel: str = "bicubic",
              antialias: bool = True) -> torch.Tensor:
    """Shrink [N,C,H,W] by `factor` to [N,C,ceil(H/factor),ceil(W/factor)].

    kernel: "bicubic" (a=-0.5, the SR field's standard LR), "bilinear" or "area".
    """
    if kernel not in DOWN_KERNELS:
        raise ValueError(f"unknown downscale kernel {kernel!r}; use one of {DOWN_KERNELS}")
    if factor < 1:
        raise ValueError(f"downscale factor must be >= 1, got {factor}")
    _check_nchw(x)
    H, W = x.shape[-2:]
    h, w = math.ceil(H / factor), math.ceil(W / factor)
    if float(factor).is_integer() and (H % factor or W % factor):
        f = int(factor)
        x = F.pad(x, (0, w * f - W, 0, h * f - H), mode="replicate")
    return resize(x, (h, w), kernel, antialias)


def upscale(x: torch.Tensor, factor: float = 4, kernel: str = "bicubic") -> torch.Tensor:
    """Enlarge [N,C,h,w] by `factor` to [N,C,round(h*factor),round(w*factor)].

    kernel: "bicubic", "bilinear" or "nearest". Antialiasing is irrelevant when enlarging.
    """
    if kernel not in UP_KERNELS:
        raise ValueError(f"unknown upscale kernel {kernel!r}; use one of {UP_KERNELS}")
    if factor < 1:
        raise ValueError(f"upscale factor must be >= 1, got {factor}")
    _check_nchw(x)
    h, w = x.shape[-2:]
    return resize(x, (int(round(h * factor)), int(round(w * factor))), kernel, antialias=False)


def gaussian_kernel1d(sigma: float, kernel_size: Optional[int] = None, *,
                      dtype: torch.dtype = torch.float32,
                      device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation `sigma` (pixels).

    The default size, 2*ceil(3*sigma)+1, keeps > 99.7% of the mass; odd so it is centred.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3 * float(sigma)) + 1
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    r = (kernel_size - 1) / 2
    t = torch.arange(kernel_size, dtype=torch.float64, device=device) - r
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: Optional[int] = None) -> torch.Tensor:
    """Separable Gaussian low-pass of [N,C,H,W]; same size out, reflect padding.

    Reflect (not zero) padding so the borders do not darken, which would otherwise show
    up as a spurious low-frequency difference in losses. sigma <= 0 returns `x` as is.
    Images smaller than the kernel radius fall back to replicate padding, because
    reflection needs the radius to be smaller than the side.
    """
    _check_nchw(x)
    sigma = float(sigma)
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, kernel_size, dtype=x.dtype, device=x.device)
    if k.numel() == 1:
        return x
    return separable_blur(x, k)


def separable_blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] convolved with the odd 1-D kernel `k` along both axes, same size out: reflect
    padding, replicate where the image is no wider than the kernel's radius (`gaussian_blur`'s
    borders). Differentiable in `k` too."""
    r = (k.numel() - 1) // 2
    C = x.shape[1]
    H, W = x.shape[-2:]
    mode = "reflect" if r < H and r < W else "replicate"
    y = F.pad(x, (r, r, r, r), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
