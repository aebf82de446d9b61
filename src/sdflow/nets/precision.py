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

Off by default, and off inside `reduced_precision(None)`. A network whose `compute_dtype` is set
(the sampling form that `SDFlow` fuses, `sdflow.flows.layers`) runs in that dtype whatever the
context says: its weights were cast to it once.

The precision names of sampling (`sdflow.config.PRECISIONS`) map to dtypes here, and
`resolve_precision` turns "auto" into what the device multiplies natively.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, Iterator, Optional, Union

import torch

_NET_DTYPE: contextvars.ContextVar[Optional[torch.dtype]] = contextvars.ContextVar("sdflow_net_dtype",
                                                                                   default=None)

# Which reduced dtypes each device's autocast takes; float16 on a CPU is emulated and slower
# than float32, so it is not offered there.
SUPPORTED = {"cpu": (torch.bfloat16,), "cuda": (torch.bfloat16, torch.float16)}
# The names of sdflow.config.PRECISIONS (but "auto") as dtypes.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


@contextlib.contextmanager
def reduced_precision(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """Run the networks marked with `autocast_net` in `dtype` (None: as the model is)."""
    token = _NET_DTYPE.set(dtype)
    try:
        yield
    finally:
        _NET_DTYPE.reset(token)


def keep_float32(module: torch.nn.Module) -> None:
    """`module`'s networks run in float32 inside `reduced_precision` (training's
    `train.amp_float32`): as a sampling form does with its own `compute_dtype`."""
    for m in module.modules():
        m.compute_dtype = torch.float32


def net_dtype() -> Optional[torch.dtype]:
    return _NET_DTYPE.get()


def autocast_net(forward: Callable) -> Callable:
    """Decorator for a network's `forward(self, x, *rest)`: its body under autocast when
    `reduced_precision` asks for it, its output (a tensor) cast back to `x.dtype`."""

    @functools.wraps(forward)
    def wrapper(self, x, *rest, **kw):
        dtype = getattr(self, "compute_dtype", None) or _NET_DTYPE.get()
        if dtype is None or x.dtype == dtype:
            return forward(self, x, *rest, **kw)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = forward(self, x, *rest, **kw)
        return out.to(x.dtype)

    return wrapper


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(flags.split())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where bf16
    convolutions run about twice as fast as float32; elsewhere oneDNN emulates them."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_native_fp16() -> bool:
    """Whether this CPU multiplies float16 matrices in hardware (AMX-FP16); elsewhere oneDNN's
    float16 convolutions run through conversion fallbacks, slower than float32."""
    return "amx_fp16" in _cpu_flags()


def runs_natively(device: Union[str, torch.device], precision: str) -> bool:
    """Whether `device` computes in `precision` ("fp32", "bf16", ...) at full speed."""
    kind = torch.device(device).type
    if precision in ("fp32", "fp64"):
        return True
    if kind == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return cpu_has_native_bf16() if precision == "bf16" else cpu_has_native_fp16()
    return False


def resolve_precision(precision: str, device: Union[str, torch.device]) -> str:
    """`precision` itself, or for "auto": "bf16" where `device` multiplies bfloat16 natively (CUDA
    with bf16, CPUs with AVX512-BF16 or AMX), "fp32" elsewhere (emulated bf16 is slower than
    float32). docs/performance.md has bf16's speed and quality cost."""
    if precision == "auto":
        return "bf16" if runs_natively(device, "bf16") else "fp32"
    if precision not in DTYPES:
        raise ValueError(f"precision must be auto or one of {', '.join(DTYPES)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def ieee_float32(device: Union[str, torch.device]):
    """Float32 convolutions computed as float32 on `device` while the block runs. cuDNN runs them
    as TF32 by default on Ampere and newer GPUs (10-bit mantissas, ~1e-3 relative error, which
    the flow inversions carry into the image), and oneDNN on a CPU does the same with bfloat16
    or TF32 when a user has set `torch.backends.fp32_precision` or the mkldnn flags (off by
    default). Sampling promises the model's float32 results, so it sets "ieee" and restores the
    setting after."""
    kind = torch.device(device).type
    backend = {"cuda": torch.backends.cudnn, "cpu": torch.backends.mkldnn}.get(kind)
    conv = getattr(backend, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        # The newer API; reading the legacy flag after it has been used raises, so only this one.
        old = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = old
    elif kind == "cuda":
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = old
    else:
        yield


__all__ = ["reduced_precision", "keep_float32", "net_dtype", "autocast_net", "cpu_has_native_bf16", "cpu_has_native_fp16",
           "runs_natively", "resolve_precision", "ieee_float32", "SUPPORTED", "DTYPES"]
