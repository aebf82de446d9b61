"""Tiles: large images in bounded memory, with blended seams and seamless noise. The geometry,
the blending and the memory estimates; `sdflow.pipeline` runs the model on the tiles.

The image is cut into a grid of tiles. Each tile's core (of about `tile` input pixels per side)
is extended by `tile_pad` input pixels of context on every side that is not an image border,
run through the model, and the overlapping outputs are blended with a raised-cosine window: a
tile's weight falls from 1 to 0 across the `tile_pad` pixels centred on each boundary between
cores, and the weights of all tiles sum to 1 everywhere. A tile's output is least accurate near
its own edges (the convolutions there see padding instead of the neighbouring image); wherever a
tile has weight it has at least tile_pad / 2 pixels of real context, and the gradual hand-over
leaves no line where the tiles meet.

Noise is drawn once for the whole image, exactly as the untiled model would draw it with the
same generator (SR: z'_h, 45 channels at LR size; DS: z'_d, 12 channels at HR/8), and each tile
runs with its crop of that field; the tiles therefore agree where they overlap, and a tiling with
one tile reproduces the untiled call exactly. Tiling changes the result only through the limited
context of each tile; docs/performance.md gives the measured bound (at tau = 0 and at tau > 0).

DS tiles respect the model's geometry: the image is first padded as `downscale` pads it (edge
replication to a multiple of 8, at least 16), and every tile starts and ends on a multiple of 8 HR
pixels, so that the squeezes of f_HR and f_Deg group the same pixels as in the whole image and
the noise field crops exactly.

"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from sdflow.config import SCALE
from sdflow.model import HR_MULTIPLE

__all__ = ["run_tiled", "check_tile", "default_tile_pad", "auto_tile", "estimate_memory", "condition_memory",
           "plan_tiles", "Span", "MIN_SR_TILE", "MIN_DS_TILE", "DEFAULT_SR_TILE_PAD", "DEFAULT_DS_TILE_PAD",
           "DEFAULT_MEMORY_BUDGET", "DEFAULT_CONDITIONS_BUDGET"]

MIN_SR_TILE = 8                 # LR pixels
MIN_DS_TILE = 2 * HR_MULTIPLE   # HR pixels
# Context around each tile, in input pixels (docs/performance.md: error against context).
DEFAULT_SR_TILE_PAD = 16
DEFAULT_DS_TILE_PAD = 64
# Activation memory that `auto_tile` lets one model call use.
DEFAULT_MEMORY_BUDGET = 768 * 2**20
# Memory that the kept conditions of one image's tiles may take (several samples of one image).
DEFAULT_CONDITIONS_BUDGET = 256 * 2**20
# The blend ramp spans this fraction of the 2 * tile_pad overlap, centred on the boundary. Outputs
# within tile_pad / 2 of a tile's edge then get no weight at all; feathering across the whole
# overlap instead measured 10-1000 times larger tiled-vs-untiled errors (docs/performance.md).
FEATHER = 0.5


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in input pixels: the core [core0, core1) that the tile is
    responsible for, and the extent [ext0, ext1) that it is run on."""
    core0: int
    core1: int
    ext0: int
    ext1: int


def plan_tiles(n: int, tile: int, pad: int, align: int = 1, min_size: int = 1) -> List[Span]:
    """Split [0, n) into ceil(n / tile) cores of nearly equal size, with boundaries on multiples
    of `align` (n must be one), each extended by `pad` on inner sides and grown to at least
    `min_size` where the image allows."""
    if n % align:
        raise ValueError(f"length {n} is not a multiple of {align}")
    if tile < align:
        raise ValueError(f"tile {tile} is smaller than the alignment {align}")
    units = n // align
    k = min(-(-n // tile), units)
    bounds = [align * ((i * units + k // 2) // k) for i in range(k + 1)]
    spans = []
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        e0, e1 = max(c0 - pad, 0), min(c1 + pad, n)
        short = min_size - (e1 - e0)
        if short > 0:
            grow = min(short, n - e1)
            e1 += grow
            e0 = max(e0 - (short - grow), 0)
        spans.append(Span(c0, c1, e0, e1))
    return spans


def _window(spans: Sequence[Span], n: int, pad: int, ratio: float, device) -> List[torch.Tensor]:
    """Per span, the blending weights of its output pixels (output = input * ratio), normalised
    so that the weights of all spans sum to 1 at every output pixel."""
    weights = []
    for s in spans:
        o0, o1 = round(s.ext0 * ratio), round(s.ext1 * ratio)
        # Output pixel centres in input coordinates.
        p = (torch.arange(o0, o1, dtype=torch.float64, device=device) + 0.5) / ratio
        w = torch.ones_like(p)
        if pad == 0:
            w = ((p >= s.core0) & (p < s.core1)).double()
        else:
            half = FEATHER * pad
            if s.core0 > 0:
                w = w * _ramp((p - (s.core0 - half)) / (2 * half))
            if s.core1 < n:
                w = w * _ramp(((s.core1 + half) - p) / (2 * half))
        weights.append(w)
    total = torch.zeros(round(n * ratio), dtype=torch.float64, device=device)
    for s, w in zip(spans, weights):
        total[round(s.ext0 * ratio):round(s.ext1 * ratio)] += w
    return [w / total[round(s.ext0 * ratio):round(s.ext1 * ratio)] for s, w in zip(spans, weights)]


def _ramp(t: torch.Tensor) -> torch.Tensor:
    # Raised cosine: ramp(t) + ramp(1 - t) = 1, so two neighbours' weights already sum to 1.
    return 0.5 - 0.5 * torch.cos(math.pi * t.clamp(0, 1))


def run_tiled(x: torch.Tensor, latent: Optional[torch.Tensor], latent_div: int, ratio: float, tile: int, pad: int,
              align: int, min_size: int, run: Callable, out_hw, on_tile: Optional[Callable[[int, int], None]] = None):
    """x [B,3,H,W] (H, W multiples of align) in tiles of about `tile` pixels with `pad` pixels of
    context, each extent at least `min_size`; latent at x's size / latent_div, cropped per tile;
    run(x_tile, latent_tile, key) -> output at ratio times the tile's size, key naming the tile.
    Returns the blended output cut to out_hw. on_tile(done, total) after each tile."""
    b, _, h, w = x.shape
    ys = plan_tiles(h, tile, pad, align, min_size)
    xs = plan_tiles(w, tile, pad, align, min_size)
    wy = _window(ys, h, pad, ratio, x.device)
    wx = _window(xs, w, pad, ratio, x.device)
    # Blended in float32 (float64 for a float64 model) and returned in the model's output dtype,
    # as an untiled call returns it.
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    wy, wx = [t.to(acc) for t in wy], [t.to(acc) for t in wx]
    out = torch.zeros(b, 3, round(h * ratio), round(w * ratio), dtype=acc, device=x.device)
    out_dtype = acc
    done = 0
    if on_tile is not None:
        on_tile(done, len(ys) * len(xs))
    for sy, wy_i in zip(ys, wy):
        for sx, wx_j in zip(xs, wx):
            xt = x[..., sy.ext0:sy.ext1, sx.ext0:sx.ext1]
            lt = None if latent is None else latent[..., sy.ext0 // latent_div:sy.ext1 // latent_div,
                                                    sx.ext0 // latent_div:sx.ext1 // latent_div]
            yt = run(xt, lt, (sy.ext0, sy.ext1, sx.ext0, sx.ext1))
            if not bool(torch.isfinite(yt).all()):
                warnings.warn(f"non-finite values in the tile at rows {sy.ext0}:{sy.ext1}, columns "
                              f"{sx.ext0}:{sx.ext1} of the input", RuntimeWarning, stacklevel=3)
            oy, ox = round(sy.ext0 * ratio), round(sx.ext0 * ratio)
            region = out[..., oy:oy + yt.shape[-2], ox:ox + yt.shape[-1]]
            out_dtype = yt.dtype
            region.addcmul_(yt.to(acc), wy_i[:, None] * wx_j[None, :])
            del yt
            done += 1
            if on_tile is not None:
                on_tile(done, len(ys) * len(xs))
    return out[..., :out_hw[0], :out_hw[1]].to(out_dtype)


def check_tile(mode: str, tile: Optional[int], tile_pad: Optional[int]) -> None:
    """ValueError unless `tile` (None or 0: no tiling) and `tile_pad` (None: the default) can tile
    an image for `mode`."""
    least = MIN_SR_TILE if mode == "sr" else MIN_DS_TILE
    if tile and tile < least:
        raise ValueError(f"{mode.upper()} tile must be 0 (no tiling) or at least {least} input pixels, got {tile}")
    if tile_pad is not None and tile_pad < 0:
        raise ValueError(f"tile_pad must be >= 0, got {tile_pad}")


def default_tile_pad(mode: str) -> int:
    return DEFAULT_SR_TILE_PAD if mode == "sr" else DEFAULT_DS_TILE_PAD


# ----- choosing the tile size -------------------------------------------------------------

def estimate_memory(config, mode: str = "sr", precision: str = "fp32", fused: bool = True) -> float:
    """Estimated peak activation memory of one model call, in bytes per INPUT pixel (SR: per LR
    pixel, DS: per HR pixel), for a model of `config` (a ModelConfig).

    The rule: for each stage of the computation, the values alive at once per LR pixel (the flow
    state and its scale/shift in float32; the convolutional nets' activations at 4 bytes, or 2 at
    bf16 / fp16); the largest stage decides, times 1.5 for the allocator's slack. `fused=False`
    (the modules themselves, as fp64 runs them, which keep more concatenations and padded copies
    alive) adds a factor 1.7. For the paper config this gives 4386 B per LR pixel (SR, fused
    fp32) and 235 B per HR pixel (DS); benchmarks/bench_inference.py measured 2813 and 195 (the
    modules: 6077 and 269; the sampling form's f_HR runs its couplings in row bands, so its
    level-1 stage is smaller than counted here) and prints this estimate beside its
    measurements, so the rule can be rechecked.
    """
    if mode not in ("sr", "ds"):
        raise ValueError(f"mode must be 'sr' or 'ds', got {mode!r}")
    net_bytes = 2 if precision in ("bf16", "fp16") else 4
    hid, cond, g, ce = config.coupling_hidden, config.cond_channels, config.rrdb_growth, config.extractor_channels
    # (values held at float32, values of net activations) per LR pixel
    cond_net = (cond + 45, 5 * cond + 9 * g)
    if mode == "sr":
        stages = [
            (7 * ce, 0),                                      # E (float32 at any precision): a, m, t, ...
            cond_net,                                         # f_HF's RRDB condition net on z_c
            (3 * 45 + 3, 2 * cond + 23 + 2 * hid + 90),       # f_HF^-1: z, scale/shift; u, buffer, hidden
            (4 * (3 * 12) + 48 + 3, 4 * (6 + 2 * hid)),       # f_HR^-1 at HR/2: z, output; hidden
        ]
        per_lr_pixel = max(f * 4 + n * net_bytes for f, n in stages)
        per_input_pixel = per_lr_pixel
    else:
        stages = [
            (4 * 3 * 12 / 4 + 3 * 3, 4 * (6 + 2 * hid) / 4 * 4),   # f_HR at HR/2 (per LR pixel: x4)
            (3 + 12 + 3, 5 * cond + 9 * g),                        # f_Deg's condition net at LR size
            (3 * 12 / 4 + 6, (2 * cond + 6 + 2 * hid + 24) / 4),   # f_Deg^-1 at LR/2
        ]
        per_lr_pixel = max(f * 4 + n * net_bytes for f, n in stages)
        per_input_pixel = per_lr_pixel / SCALE ** 2
    slack = 1.5 if fused else 1.5 * 1.7
    return per_input_pixel * slack


def condition_memory(config, height: int, width: int, mode: str = "sr", precision: str = "fp32") -> float:
    """Bytes that the conditions of an image of height x width input pixels take when kept for
    its next samples (`sdflow.pipeline.Prepared`): z_c and the condition features, in float32
    at every precision (the networks hand their results back in the flow's dtype; fp64: 8
    bytes), plus a quarter for the context that neighbouring tiles share."""
    config = getattr(config, "config", config)
    value = 8 if precision == "fp64" else 4
    if mode == "sr":
        per_input_pixel = (3 + config.cond_channels) * value
    else:  # z_c at LR size, the features at LR/2
        per_input_pixel = (3 + config.cond_channels / 4) * value / SCALE ** 2
    return 1.25 * height * width * per_input_pixel


def auto_tile(config, height: int, width: int, mode: str = "sr", tile_pad: Optional[int] = None,
              memory_budget: int = DEFAULT_MEMORY_BUDGET, precision: str = "fp32",
              fused: bool = True) -> Optional[int]:
    """A tile size (input pixels) that keeps one model call's activations within `memory_budget`
    bytes for an image of height x width input pixels, or None when the whole image fits.

    Rule: with b = estimate_memory(config, mode, precision, fused) bytes per input pixel, a call
    on an extent of A input pixels needs about A * b bytes. If height * width * b fits the budget,
    no tiling; otherwise the largest square extent that fits, minus the context on both sides:
    tile = floor(sqrt(budget / b)) - 2 * tile_pad, rounded down to a multiple of 8 and at least
    the minimum tile. Besides the tiles, the full-size output (48 bytes per LR pixel for SR) and
    the SR noise field (180 bytes per LR pixel when tau > 0) stay in memory.
    `config` may also be a model (its `.config` is used).
    """
    config = getattr(config, "config", config)
    pad = default_tile_pad(mode) if tile_pad is None else tile_pad
    per_pixel = estimate_memory(config, mode, precision, fused)
    if height * width * per_pixel <= memory_budget:
        return None
    side = int(math.sqrt(memory_budget / per_pixel)) - 2 * pad
    minimum = MIN_SR_TILE if mode == "sr" else MIN_DS_TILE
    return max(side // 8 * 8, minimum)
