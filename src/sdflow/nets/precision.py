"""Reduced precision for the non-invertible networks only.

A normalizing flow is exact only while its own arithmetic is: the latent state, the 1x1
convolutions and their inverses, the coupling scales and the log-determinants must stay in
float32, or the inverse stops undoing the forward map and the likelihood drifts. The
networks *inside* the flow (coupling and injector CNNs, the RRDB condition nets, the content
extractor, the critics) only predict numbers the flow then uses, and they hold almost all of
the FLOPs. So autocast is switched on inside those networks and nowhere else: each one runs
its body under `torch.autocast` and hands its result back in the caller's dtype.

    with reduced_precision(torch.bfloat16):   # training step, or sampling
        total = objective(hr, lr)

Off by default, and off inside `reduced_precision(None)`.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, Iterator, Optional

import torch

_NET_DTYPE: contextvars.ContextVar[Optional[torch.dtype]] = contextvars.ContextVar("sdflow_net_dtype",
                                                                                   default=None)

# Which reduced dtypes each device's autocast takes; float16 on a CPU is emulated and slower
# than float32, so it is not offered there.
SUPPORTED = {"cpu": (torch.bfloat16,), "cuda": (torch.bfloat16, torch.float16)}


@contextlib.contextmanager
def reduced_precision(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """Run the networks marked with `autocast_net` in `dtype` (None: as the model is)."""
    token = _NET_DTYPE.set(dtype)
    try:
        yield
    finally:
        _NET_DTYPE.reset(token)


def net_dtype() -> Optional[torch.dtype]:
    return _NET_DTYPE.get()


def autocast_net(forward: Callable) -> Callable:
    """Decorator for a network's `forward(self, x, *rest)`: its body under autocast when
    `reduced_precision` asks for it, its output (a tensor) cast back to `x.dtype`."""

    @functools.wraps(forward)
    def wrapper(self, x, *rest, **kw):
        dtype = _NET_DTYPE.get()
        if dtype is None or x.dtype == dtype:
            return forward(self, x, *rest, **kw)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = forward(self, x, *rest, **kw)
        return out.to(x.dtype)

    return wrapper


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where bf16
    convolutions run about twice as fast as float32; elsewhere oneDNN emulates them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16"})


__all__ = ["reduced_precision", "net_dtype", "autocast_net", "cpu_has_native_bf16", "SUPPORTED"]
