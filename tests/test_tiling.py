"""Tiled SR / DS through the pipeline: tile geometry, seamless blending, shared noise, and the
tiled-vs-untiled bound."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sdflow.config import ModelConfig
from sdflow.model import SDFlow, deg_latent_shape, hf_latent_shape, padded_hr_size
from sdflow.pipeline import Pipeline
from sdflow.tiling import (DEFAULT_DS_TILE_PAD, DEFAULT_SR_TILE_PAD, auto_tile, condition_memory, estimate_memory,
                           plan_tiles)
from test_fused import perturbed, seeded


def tiled_super_resolve(model, lr, tile, pad, tau=0.8, generator=None, hf_latent=None, **kw):
    """SR of `lr` through a pipeline that tiles it (tile None: whole)."""
    pipe = Pipeline(model, "fp64" if model.dtype == torch.float64 else "fp32", tile=tile or 0, tile_pad=pad)
    if hf_latent is not None:
        return pipe.prepare(lr, keep=False).super_resolve(hf_latent=hf_latent)
    return pipe.super_resolve(lr, tau, generator=generator, **kw)


def tiled_downscale(model, hr, tile, pad, tau=0.8, component=None, sampler="image", generator=None, **kw):
    pipe = Pipeline(model, "fp32", tile=tile or 0, tile_pad=pad)
    return pipe.downscale(hr, tau, generator=generator, component=component, sampler=sampler, **kw)


def levels(a, b):
    """(max, mean) absolute difference in 8-bit levels of images in [-1, 1]."""
    d = (a - b).abs() * 127.5
    return d.max().item(), d.mean().item()


@pytest.fixture(scope="module")
def tiny():
    return perturbed()


@pytest.mark.parametrize("n,tile,pad,align,min_size", [(37, 10, 3, 1, 2), (100, 100, 5, 1, 2), (9, 8, 0, 1, 2),
                                                       (64, 16, 8, 8, 16), (200, 48, 16, 8, 16), (24, 16, 0, 8, 16)])
def test_plan_tiles_covers_the_axis(n, tile, pad, align, min_size):
    spans = plan_tiles(n, tile, pad, align, min_size)
    assert len(spans) == min(math.ceil(n / tile), n // align)
    assert spans[0].core0 == 0 and spans[-1].core1 == n
    for a, b in zip(spans[:-1], spans[1:]):
        assert a.core1 == b.core0
    for s in spans:
        assert 0 <= s.ext0 <= s.core0 < s.core1 <= s.ext1 <= n
        assert s.core1 - s.core0 <= max(tile, align)
        assert s.ext0 % align == 0 and s.ext1 % align == 0
        assert s.ext1 - s.ext0 >= min(min_size, n)
        assert s.ext0 == 0 or s.ext0 <= s.core0 - pad
        assert s.ext1 == n or s.ext1 >= s.core1 + pad


class Upsampler:
    """A stand-in model whose output is a local function of input and noise: a tiled run must
    then reproduce the untiled one exactly, which checks the blending weights (they must sum to
    1 everywhere) and that every tile gets its own crop of the image and of the noise field."""

    device, dtype = torch.device("cpu"), torch.float32

    def sampling_precision(self, precision=None):
        return "fp32"

    def sr_condition(self, lr, precision=None):
        return None

    ds_condition = sr_condition

    def sample_hf_latent(self, lr, tau=0.8, generator=None):
        return torch.randn(hf_latent_shape(lr.shape), generator=generator) * tau

    def sample_deg_latent(self, hr, tau=0.8, component=None, sampler="image", generator=None):
        return torch.randn(deg_latent_shape(hr.shape), generator=generator) * tau

    def super_resolve(self, lr, tau=0.8, generator=None, hf_latent=None, condition=None, precision=None):
        if hf_latent is None:
            hf_latent = self.sample_hf_latent(lr, tau, generator)
        return F.interpolate(lr + hf_latent[:, :3], scale_factor=4, mode="nearest")

    def downscale(self, hr, tau=0.8, component=None, sampler="image", deg_latent=None, generator=None,
                  condition=None, precision=None):
        h, w = hr.shape[-2:]
        if deg_latent is None:
            deg_latent = self.sample_deg_latent(hr, tau, component, sampler, generator)
        ph, pw = padded_hr_size(h, w)
        hr = F.pad(hr, (0, pw - w, 0, ph - h), mode="replicate")
        x = F.avg_pool2d(hr, 4) + F.interpolate(deg_latent[:, :3], scale_factor=2, mode="nearest")
        return x[..., :math.ceil(h / 4), :math.ceil(w / 4)]


@pytest.mark.parametrize("tile,pad", [(8, 0), (8, 3), (10, 4), (13, 16), (16, 2)])
def test_tiles_blend_to_the_untiled_result_for_a_local_model(tile, pad):
    model, lr = Upsampler(), torch.rand(2, 3, 29, 37)
    ref = model.super_resolve(lr, 1.0, seeded(0))
    out = tiled_super_resolve(model, lr, tile, pad, 1.0, seeded(0))
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("tile,pad", [(16, 0), (16, 8), (24, 5), (40, 32)])
def test_ds_tiles_blend_to_the_untiled_result_for_a_local_model(tile, pad):
    model, hr = Upsampler(), torch.rand(1, 3, 75, 101)
    ref = model.downscale(hr, 1.0, generator=seeded(0))
    out = tiled_downscale(model, hr, tile, pad, 1.0, generator=seeded(0))
    assert out.shape == ref.shape == (1, 3, 19, 26) and torch.allclose(out, ref, atol=1e-5)


def test_float64_images_draw_the_float32_models_noise_tiled_batched_or_whole(tiny):
    lr = torch.rand(1, 3, 24, 24, dtype=torch.float64) * 2 - 1
    whole = tiny.super_resolve(lr.float(), 0.8, seeded(3))
    assert torch.equal(tiny.super_resolve(lr, 0.8, seeded(3)), whole)
    assert tiny.sample_hf_latent(lr, 0.8, seeded(3)).dtype == torch.float32
    assert torch.allclose(tiled_super_resolve(tiny, lr, 12, 4, 0.8, seeded(3)), whole, atol=0.05)
    batched = Pipeline(tiny, "fp32", tile=0).prepare(torch.cat([lr, lr])).super_resolve(0.8, seed=[3, 3])
    assert torch.allclose(batched[:1], whole, atol=1e-5) and torch.allclose(batched[1:], whole, atol=1e-5)


def test_tiled_output_has_the_models_dtype(tiny):
    model64 = copy.deepcopy(tiny).double()
    lr = torch.rand(1, 3, 20, 24, dtype=torch.float64) * 2 - 1
    y = tiled_super_resolve(model64, lr, 8, 4, 0.0)
    assert y.dtype == torch.float64 and torch.allclose(y, model64.super_resolve(lr, 0.0), atol=1e-3)


def test_one_tile_is_the_untiled_call_with_the_same_noise(tiny):
    lr = torch.rand(1, 3, 20, 24) * 2 - 1
    hr = torch.rand(1, 3, 60, 44) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tiled_super_resolve(tiny, lr, 24, 4, 0.8, seeded(7)), tiny.super_resolve(lr, 0.8, seeded(7)))
        assert torch.equal(tiled_super_resolve(tiny, lr, None, 4, 0.8, seeded(7)),
                           tiny.super_resolve(lr, 0.8, seeded(7)))
        assert torch.equal(tiled_downscale(tiny, hr, 64, 8, 0.8, generator=seeded(7)),
                           tiny.downscale(hr, 0.8, generator=seeded(7)))


def test_tau0_bound_tiny():
    """The tiled-vs-untiled bound at the default context (docs/performance.md)."""
    model = perturbed(seed=1)
    lr = torch.rand(1, 3, 40, 56) * 2 - 1
    ref = model.super_resolve(lr, 0.0)
    out = tiled_super_resolve(model, lr, 16, DEFAULT_SR_TILE_PAD, 0.0)
    mx, mean = levels(out, ref)
    assert mx < 0.05 and mean < 0.005
    hr = torch.rand(1, 3, 160, 200) * 2 - 1
    ref = model.downscale(hr, 0.0, component=0)
    out = tiled_downscale(model, hr, 64, DEFAULT_DS_TILE_PAD, 0.0, component=0)
    mx, mean = levels(out, ref)
    assert mx < 0.05 and mean < 0.005
    # Without context the seams are visible: the bound above is the context's doing.
    assert levels(tiled_super_resolve(model, lr, 16, 0, 0.0), model.super_resolve(lr, 0.0))[0] > 1


@pytest.mark.parametrize("mode", ["sr", "ds"])
def test_noise_agrees_across_tilings(tiny, mode):
    fast = tiny
    if mode == "sr":
        x = torch.rand(1, 3, 36, 44) * 2 - 1
        run = lambda t, p: tiled_super_resolve(fast, x, t, p, 0.9, seeded(11))  # noqa: E731
        tilings = [(12, 8), (20, 12)]
        ref = tiny.super_resolve(x, 0.9, seeded(11))
    else:
        x = torch.rand(1, 3, 136, 168) * 2 - 1
        run = lambda t, p: tiled_downscale(fast, x, t, p, 0.9, component=[0, 3], generator=seeded(11))  # noqa: E731
        tilings = [(48, 64), (80, 64)]
        ref = tiny.downscale(x, 0.9, component=[0, 3], generator=seeded(11))
    a, b = (run(*t) for t in tilings)
    # The same seed gives the same noise field, hence nearly the same image under any tiling,
    # and nearly the untiled image; another seed gives a different one.
    assert levels(a, b)[0] < 0.05 and levels(a, ref)[0] < 0.05
    other = (tiled_super_resolve(fast, x, 12, 8, 0.9, seeded(12)) if mode == "sr"
             else tiled_downscale(fast, x, 48, 64, 0.9, component=[0, 3], generator=seeded(12)))
    assert levels(a, other)[1] > 0.5


def test_paper_preset_small_image_bound():
    model = perturbed("paper")
    lr = torch.rand(1, 3, 40, 48) * 2 - 1
    ref = model.super_resolve(lr, 0.8, seeded(0))
    out = tiled_super_resolve(model, lr, 20, DEFAULT_SR_TILE_PAD, 0.8, seeded(0))
    mx, mean = levels(out, ref)
    assert mx < 0.05 and mean < 0.005


def test_bad_tiles_are_refused(tiny):
    with pytest.raises(ValueError, match="at least 8"):
        Pipeline(tiny, tile=4).super_resolve(torch.zeros(1, 3, 20, 20))
    with pytest.raises(ValueError, match="at least 16"):
        Pipeline(tiny, tile=8).downscale(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="tile_pad"):
        Pipeline(tiny, tile=8, tile_pad=-1)
    with pytest.raises(ValueError, match="tile must be"):
        Pipeline(tiny, tile=-8)


def test_auto_tile_keeps_within_the_budget():
    paper = ModelConfig.preset("paper")
    assert auto_tile(paper, 128, 128, "sr") is None
    budget = 256 * 2**20
    for mode, (h, w), pad in [("sr", (540, 960), DEFAULT_SR_TILE_PAD), ("ds", (4000, 6000), DEFAULT_DS_TILE_PAD)]:
        tile = auto_tile(paper, h, w, mode, memory_budget=budget)
        assert tile is not None and tile % 8 == 0
        assert (tile + 2 * pad) ** 2 * estimate_memory(paper, mode) <= budget
        assert auto_tile(paper, h, w, mode, memory_budget=budget * 4) > tile
    # Smaller models and lower precision need less memory per pixel.
    assert estimate_memory(ModelConfig.preset("tiny")) < estimate_memory(paper)
    assert estimate_memory(paper, precision="bf16") < estimate_memory(paper)
    assert auto_tile(perturbed(), 100, 100) is None  # a model is accepted for its config


@pytest.mark.parametrize("mode", ["sr", "ds"])
def test_tiles_keep_their_conditions_for_the_next_sample(tiny, mode, monkeypatch):
    """A prepared image makes each tile's condition for the first sample only, and every sample is
    still exactly the one drawn without keeping them."""
    made = []
    maker = "sr_condition" if mode == "sr" else "ds_condition"
    real = getattr(SDFlow, maker)
    monkeypatch.setattr(SDFlow, maker, lambda self, x, precision=None: made.append(tuple(x.shape)) or real(self, x, precision))
    if mode == "sr":
        pipe, x = Pipeline(tiny, "fp32", tile=16, tile_pad=8), torch.rand(1, 3, 36, 44) * 2 - 1
        run = lambda image, seed: image.super_resolve(0.9, seed)  # noqa: E731
    else:
        pipe, x = Pipeline(tiny, "fp32", tile=48, tile_pad=32), torch.rand(1, 3, 136, 168) * 2 - 1
        run = lambda image, seed: image.downscale(0.9, seed)  # noqa: E731
    image = pipe.prepare(x)
    first = run(image, 1)
    tiles = len(made)
    assert tiles > 1 and image.shares(mode)
    second = run(image, 2)
    assert len(made) == tiles  # no tile's condition made again
    made.clear()
    alone = pipe.prepare(x, keep=False)
    assert torch.equal(first, run(alone, 1)) and torch.equal(second, run(alone, 2))
    assert len(made) == 2 * tiles  # without keeping them, every sample makes them again
    assert levels(first, second)[1] > 0.5  # two different samples
    # Over the budget, they are made again for every sample: memory stays bounded.
    made.clear()
    small = Pipeline(tiny, "fp32", tile=pipe.tile, tile_pad=pipe.tile_pad, conditions_budget=0).prepare(x)
    assert not small.shares(mode) and torch.equal(run(small, 1), first) and len(made) == tiles


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_condition_memory_is_what_a_condition_holds(tiny, precision):
    lr, hr = torch.rand(1, 3, 24, 40) * 2 - 1, torch.rand(1, 3, 96, 160) * 2 - 1
    for mode, x, c in (("sr", lr, tiny.sr_condition(lr, precision)), ("ds", hr, tiny.ds_condition(hr, precision))):
        held = c.content.numel() * c.content.element_size() + c.features.numel() * c.features.element_size()
        assert condition_memory(tiny.config, *x.shape[-2:], mode, precision) == pytest.approx(1.25 * held)


def test_on_tile_reports_each_tile(tiny):
    calls = []
    lr = torch.rand(1, 3, 20, 24) * 2 - 1
    tiled_super_resolve(tiny, lr, 8, 2, 0.8, seeded(1), on_tile=lambda done, total: calls.append((done, total)))
    n = len(plan_tiles(20, 8, 2)) * len(plan_tiles(24, 8, 2))
    assert n > 1 and calls == [(i, n) for i in range(n + 1)]
    calls.clear()
    tiled_downscale(tiny, torch.rand(1, 3, 64, 48) * 2 - 1, 16, 8, 0.8, on_tile=lambda d, t: calls.append((d, t)))
    assert calls and calls[0][0] == 0 and calls[-1][0] == calls[-1][1] == len(calls) - 1 > 1
