"""One inference pipeline for SDFlow, in the role of Real-ESRGAN's `RealESRGANer`: a model with
its device and precision, tiling for images of any size, batches, and what the samples of one
image share. `sdflow sr/ds`, `sdflow eval`, `sdflow demo` and training validation sample
through it.

    pipe = Pipeline.load("model.safetensors", device="auto", precision="auto")
    sr = pipe.super_resolve(lr, tau=0.8, seed=0)        # [B,3,h,w] in [-1, 1] -> [B,3,4h,4w]
    ds = pipe.downscale(hr, tau=0.8, seed=0)            # -> [B,3,ceil(H/4),ceil(W/4)]
    image = pipe.prepare(lr)                            # several samples of one image share E(lr)
    srs = [image.super_resolve(0.8, seed=k) for k in range(4)]   # and f_HF's condition network

Seeds: `seed` is an int (a generator on the model's device seeded with it draws the noise of
the whole batch, as `SDFlow.super_resolve(x, tau, generator)` would) or a sequence of ints, one
per image of the batch, each image then drawing its noise as it would alone: a batch gives the
one-by-one results up to float rounding. `generator` may be given instead; neither uses torch's
global generator.

Tiling: `tile` "auto" cuts an image into tiles only when one call on it would need more than
`memory_budget` bytes of activations (`sdflow.tiling.estimate_memory`; default
`tiling.DEFAULT_MEMORY_BUDGET`), an int N forces tiles of
about N input pixels (0: never). Tiles draw the whole image's noise, so tiling changes the
result only through each tile's limited context (`tile_pad` pixels; docs/performance.md).

What samples share: `prepare(x)` keeps, for its image and each of its tiles, the condition
(`SDFlow.sr_condition` / `ds_condition`: E and f_HF's condition network for SR, z_c and f_Deg's
for DS), made with the first sample that needs it, as long as all of them fit in
`conditions_budget` bytes; a larger image makes them again for every sample, so memory stays
bounded. The samples are bit for bit those of separate calls.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from sdflow.config import SCALE
from sdflow.model import HR_MULTIPLE, MIN_HR_SIDE, MIN_LR_SIDE, check_image, pad_to, padded_hr_size
from sdflow import tiling
from sdflow.tiling import auto_tile, check_tile, condition_memory, default_tile_pad, estimate_memory, run_tiled

__all__ = ["Pipeline", "Prepared", "resolve_device", "DEVICES"]

Seed = Union[None, int, Sequence[int]]
OnTile = Optional[Callable[[int, int], None]]
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(name: Union[str, torch.device] = "auto") -> torch.device:
    """torch.device for a name of DEVICES ("auto": CUDA, else MPS, else the CPU); ValueError when
    the requested backend is absent."""
    if isinstance(name, torch.device):
        return name
    name = name.strip().lower()
    if name not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", name):
        raise ValueError(f"device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name}: CUDA is not available in this PyTorch installation")
    if name.startswith("cuda:"):
        count = torch.cuda.device_count()
        if int(name[5:]) >= count:
            raise ValueError(f"device {name}: there are {count} CUDA devices (cuda:0 .. cuda:{count - 1})")
    if name == "mps" and not has_mps:
        raise ValueError("device mps: MPS is not available on this machine")
    return torch.device(name)


class Pipeline:
    """`model` (an SDFlow, in eval mode for the fast sampling form) with the settings of every call.

    precision: "auto" (bf16 where the device multiplies it natively, else fp32), "fp32" (the
    model's float32 results), "bf16", "fp16" (CUDA; emulated and slow on most CPUs) or "fp64"
    (needs a float64 model: the reference); `SDFlow.sampling_precision` says what a model takes. tile / tile_pad: see the module docstring; tile_pad
    None is 16 LR pixels for SR, 64 HR pixels for DS."""

    def __init__(self, model, precision: str = "auto", tile: Union[int, str] = "auto",
                 tile_pad: Optional[int] = None, memory_budget: Optional[int] = None,
                 conditions_budget: Optional[int] = None):
        self.model = model
        self.precision = model.sampling_precision(precision)
        if tile != "auto" and (isinstance(tile, bool) or int(tile) != tile or tile < 0):
            raise ValueError(f"tile must be 'auto' or a whole number >= 0, got {tile!r}")
        check_tile("sr", None, tile_pad)
        self.tile, self.tile_pad = tile, tile_pad
        # None: sdflow.tiling's defaults, read now (not when this module was imported).
        self.memory_budget = tiling.DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        self.conditions_budget = tiling.DEFAULT_CONDITIONS_BUDGET if conditions_budget is None else conditions_budget

    @classmethod
    def load(cls, source, device: Union[str, torch.device] = "auto", precision: str = "auto",
             **settings) -> "Pipeline":
        """A pipeline over `sdflow.load(source)` on `device` (a name of DEVICES or a torch.device),
        in float64 for precision fp64 and float32 otherwise."""
        from sdflow.checkpoints import load

        device = resolve_device(device)
        dtype = torch.float64 if precision == "fp64" else torch.float32
        return cls(load(source, device=device, dtype=dtype), precision, **settings)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def config(self):
        return self.model.config

    def memory_per_pixel(self, mode: str) -> float:
        """Estimated activation bytes of one call per input pixel (`sdflow.tiling.estimate_memory`)."""
        return estimate_memory(self.config, mode, self.precision, fused=self.precision != "fp64")

    def tile_pad_for(self, mode: str) -> int:
        return default_tile_pad(mode) if self.tile_pad is None else self.tile_pad

    def tile_for(self, mode: str, height: int, width: int) -> Optional[int]:
        """The tile size for an image of height x width input pixels, None to run it whole."""
        if self.tile == "auto":
            return auto_tile(self.config, height, width, mode, self.tile_pad, self.memory_budget, self.precision,
                             fused=self.precision != "fp64")
        check_tile(mode, self.tile, self.tile_pad)
        return int(self.tile) or None

    def prepare(self, x: torch.Tensor, keep: bool = True) -> "Prepared":
        """x (one image or a batch of same-size images) ready for several samples; `keep`: keep the
        conditions that its samples share (within `conditions_budget`)."""
        return Prepared(self, x, keep)

    def super_resolve(self, lr: torch.Tensor, tau: float = 0.8, seed: Seed = None,
                      generator: Optional[torch.Generator] = None, on_tile: OnTile = None) -> torch.Tensor:
        """[B,3,h,w] in [-1, 1] -> [B,3,4h,4w], any size; `on_tile(done, total)` after each tile."""
        return Prepared(self, lr, keep=False).super_resolve(tau, seed, generator, on_tile=on_tile)

    def downscale(self, hr: torch.Tensor, tau: float = 0.8, seed: Seed = None,
                  generator: Optional[torch.Generator] = None, component=None, sampler: str = "image",
                  on_tile: OnTile = None) -> torch.Tensor:
        """[B,3,H,W] in [-1, 1] -> [B,3,ceil(H/4),ceil(W/4)], any size; `component` / `sampler` as for
        `SDFlow.downscale`."""
        return Prepared(self, hr, keep=False).downscale(tau, seed, generator, component, sampler, on_tile=on_tile)

    def __repr__(self) -> str:
        return (f"Pipeline(precision={self.precision!r}, tile={self.tile!r}, tile_pad={self.tile_pad!r}, "
                f"device={self.device}, config={self.config})")


class Prepared:
    """One image or a batch of same-size images in a pipeline, with the conditions its samples
    share (see the module docstring). Made by `Pipeline.prepare`."""

    def __init__(self, pipeline: Pipeline, x: torch.Tensor, keep: bool = True):
        check_image(x, "image")
        self.pipeline, self.model = pipeline, pipeline.model
        self.x = x if x.dtype == self.model.dtype else x.to(self.model.dtype)
        self.keep = keep
        self._conditions: Dict[tuple, object] = {}

    def tile(self, mode: str) -> Optional[int]:
        """The tile size this image runs with (None: whole)."""
        return self.pipeline.tile_for(mode, *self.x.shape[-2:])

    def super_resolve(self, tau: float = 0.8, seed: Seed = None, generator: Optional[torch.Generator] = None,
                      hf_latent: Optional[torch.Tensor] = None, on_tile: OnTile = None) -> torch.Tensor:
        """A sample of SR of this image; `hf_latent` gives z'_h directly."""
        x = self.x
        if hf_latent is None:
            hf_latent = self._draw(seed, generator, lambda im, g: self.model.sample_hf_latent(im, tau, g))
        h, w = x.shape[-2:]
        tile = self.tile("sr")

        def run(xt, zt, key):
            return self.model.super_resolve(xt, hf_latent=zt, condition=self._condition("sr", key, xt),
                                            precision=self.pipeline.precision)

        with torch.no_grad():
            if tile is None or (tile >= h and tile >= w) or min(h, w) < MIN_LR_SIDE:
                return run(x, hf_latent, "whole")
            return run_tiled(x, hf_latent, 1, SCALE, tile, self.pipeline.tile_pad_for("sr"), 1, MIN_LR_SIDE, run,
                             (SCALE * h, SCALE * w), on_tile)

    def downscale(self, tau: float = 0.8, seed: Seed = None, generator: Optional[torch.Generator] = None,
                  component=None, sampler: str = "image", deg_latent: Optional[torch.Tensor] = None,
                  on_tile: OnTile = None) -> torch.Tensor:
        """A sample of DS of this image; with sampler "image", one mixture component for each image
        of the batch, whatever the tiling. `deg_latent` gives z'_d directly."""
        x = self.x
        if deg_latent is None:
            deg_latent = self._draw(seed, generator,
                                    lambda im, g: self.model.sample_deg_latent(im, tau, component, sampler, g))
        h, w = x.shape[-2:]
        ph, pw = padded_hr_size(h, w)
        tile = self.tile("ds")

        def run(xt, zt, key):
            return self.model.downscale(xt, deg_latent=zt, condition=self._condition("ds", key, xt),
                                        precision=self.pipeline.precision)

        with torch.no_grad():
            if tile is None or (tile >= ph and tile >= pw):
                return run(x, deg_latent, "whole")
            # Tiles start and end on multiples of 8 HR pixels of the image padded as `downscale`
            # pads it, so that f_HR's and f_Deg's squeezes group the pixels of the whole image.
            tile = tile // HR_MULTIPLE * HR_MULTIPLE
            pad = -(-self.pipeline.tile_pad_for("ds") // HR_MULTIPLE) * HR_MULTIPLE
            return run_tiled(pad_to(x, ph, pw), deg_latent, HR_MULTIPLE, 1 / SCALE, tile, pad, HR_MULTIPLE,
                             MIN_HR_SIDE, run, (math.ceil(h / SCALE), math.ceil(w / SCALE)), on_tile)

    def _draw(self, seed: Seed, generator: Optional[torch.Generator], draw) -> torch.Tensor:
        """The batch's noise: from `generator`, from one generator seeded `seed`, or image by image
        from generators seeded seed[i]."""
        if generator is not None or seed is None or isinstance(seed, int):
            return draw(self.x, generator if generator is not None or seed is None else self._generator(seed))
        seeds: List[int] = list(seed)
        if len(seeds) != self.x.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {self.x.shape[0]} images")
        return torch.cat([draw(self.x[i:i + 1], self._generator(s)) for i, s in enumerate(seeds)])

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.model.device).manual_seed(int(seed))

    def shares(self, mode: str) -> bool:
        """Whether the samples of this image share its conditions for `mode`: kept, and they fit
        in the pipeline's conditions_budget."""
        return self.keep and self.x.shape[0] * condition_memory(
            self.model.config, *self.x.shape[-2:], mode, self.pipeline.precision) <= self.pipeline.conditions_budget

    def _condition(self, mode: str, key, x: torch.Tensor):
        """The condition of `x` (the image, or the tile named `key`), kept for the next sample when
        this image's samples share them."""
        kept = self.shares(mode)
        if kept and (mode, key) in self._conditions:
            return self._conditions[(mode, key)]
        make = self.model.sr_condition if mode == "sr" else self.model.ds_condition
        condition = make(x, self.pipeline.precision)
        if kept:
            self._conditions[(mode, key)] = condition
        return condition
