"""Batched inference over many small images: same-size images go through the model together.

Each image keeps its own noise: image i's latent is drawn with `generators[i]` exactly as a
single-image call `model.super_resolve(image_i, tau, generators[i])` would draw it, and the
batch runs with the stacked latents. The outputs therefore equal one-by-one calls (up to float
rounding of the batched convolutions), whatever the batch size or the order of the images.
Without generators, latents come from the global RNG in the order the batches run.

On a CPU, batching mostly saves per-call overhead for small images; on a GPU it fills the device.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["group_same_size", "batched_super_resolve", "batched_downscale"]


def group_same_size(sizes: Iterable[Tuple[int, int]], batch_size: int) -> List[List[int]]:
    """Indices of `sizes` ((H, W) per image) grouped into batches of at most `batch_size` images
    of one size; sizes in order of first appearance, indices in input order within a size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    by_size: Dict[Tuple[int, int], List[int]] = {}
    for i, hw in enumerate(sizes):
        by_size.setdefault(tuple(hw), []).append(i)
    return [idx[k:k + batch_size] for idx in by_size.values() for k in range(0, len(idx), batch_size)]


def _as_batch_of_one(x: torch.Tensor, i: int) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"image {i} must be [3, H, W] or [1, 3, H, W], got shape {tuple(x.shape)}")
    return x


def _run(images, batch_size, generators, draw, run, conditions, make) -> List[torch.Tensor]:
    images = [_as_batch_of_one(x, i) for i, x in enumerate(images)]
    if generators is not None and len(generators) != len(images):
        raise ValueError(f"{len(generators)} generators for {len(images)} images")
    out: List[Optional[torch.Tensor]] = [None] * len(images)
    with torch.inference_mode():
        for idx in group_same_size([x.shape[-2:] for x in images], batch_size):
            latent = torch.cat([draw(images[i], None if generators is None else generators[i]) for i in idx])
            x = torch.cat([images[i] for i in idx])
            kw = {}
            if conditions is not None:
                # Keyed by the batch's images: the next sample of the same images finds it.
                key = tuple(idx)
                if key not in conditions:
                    conditions[key] = make(x)
                kw["condition"] = conditions[key]
            y = run(x, latent, **kw)
            for j, i in enumerate(idx):
                out[i] = y[j:j + 1]
    return out


def batched_super_resolve(model, images: Sequence[torch.Tensor], batch_size: int = 8, tau: float = 0.8,
                          generators: Optional[Sequence[Optional[torch.Generator]]] = None,
                          conditions: Optional[dict] = None) -> List[torch.Tensor]:
    """`[model.super_resolve(x, tau, g) for x, g in zip(images, generators)]`, run `batch_size`
    same-size images at a time. Images are [3, h, w] or [1, 3, h, w]; outputs are [1, 3, 4h, 4w],
    in input order. `conditions`: a dict passed again with the next sample of the same images and
    batch size, in which each batch's `sr_condition` is made once."""
    return _run(images, batch_size, generators,
                lambda x, g: model.sample_hf_latent(x, tau, g),
                lambda x, z, **kw: model.super_resolve(x, hf_latent=z, **kw), conditions, model.sr_condition)


def batched_downscale(model, images: Sequence[torch.Tensor], batch_size: int = 8, tau: float = 0.8,
                      component: Optional[Union[int, Sequence[int]]] = None, sampler: str = "image",
                      generators: Optional[Sequence[Optional[torch.Generator]]] = None,
                      conditions: Optional[dict] = None) -> List[torch.Tensor]:
    """`[model.downscale(x, tau, component, sampler, generator=g) for ...]`, run `batch_size`
    same-size images at a time; with sampler "image" each image still draws its own component.
    `conditions`: as in `batched_super_resolve` (`ds_condition`)."""
    return _run(images, batch_size, generators,
                lambda x, g: model.sample_deg_latent(x, tau, component, sampler, g),
                lambda x, z, **kw: model.downscale(x, deg_latent=z, **kw), conditions, model.ds_condition)
