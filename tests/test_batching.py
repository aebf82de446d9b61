"""Batched inference gives what one-by-one calls give."""
import pytest
import torch

from sdflow.batching import batched_downscale, batched_super_resolve, group_same_size
from sdflow.fast import FastSDFlow
from test_fast_path import perturbed, seeded


def test_group_same_size():
    sizes = [(4, 4), (5, 4), (4, 4), (4, 4), (5, 4), (4, 4)]
    assert group_same_size(sizes, 2) == [[0, 2], [3, 5], [1, 4]]
    assert group_same_size(sizes, 10) == [[0, 2, 3, 5], [1, 4]]
    assert group_same_size([], 3) == []
    with pytest.raises(ValueError):
        group_same_size(sizes, 0)


@pytest.fixture(scope="module")
def models():
    tiny = perturbed()
    return {"model": tiny, "fast": FastSDFlow(tiny)}


@pytest.mark.parametrize("which", ["model", "fast"])
def test_batched_equals_one_by_one(models, which):
    model = models[which]
    sizes = [(6, 7), (5, 5), (6, 7), (6, 7), (5, 5)]
    lrs = [torch.rand(3, h, w) * 2 - 1 for h, w in sizes]
    with torch.no_grad():
        one = [model.super_resolve(x[None], 0.8, seeded(i)) for i, x in enumerate(lrs)]
        batched = batched_super_resolve(model, lrs, 2, 0.8, [seeded(i) for i in range(len(lrs))])
        for a, b in zip(batched, one):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(batched[0], batched[2][..., :24, :28])
        hrs = [torch.rand(1, 3, h * 4, w * 4) * 2 - 1 for h, w in sizes]
        one = [model.downscale(x, 0.8, [1, 2], "image", generator=seeded(i)) for i, x in enumerate(hrs)]
        batched = batched_downscale(model, hrs, 3, 0.8, [1, 2], "image", [seeded(i) for i in range(len(hrs))])
        for a, b in zip(batched, one):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_batched_checks_its_inputs(models):
    with pytest.raises(ValueError, match="image 1"):
        batched_super_resolve(models["model"], [torch.zeros(3, 4, 4), torch.zeros(2, 3, 4, 4)])
    with pytest.raises(ValueError, match="generators"):
        batched_super_resolve(models["model"], [torch.zeros(3, 4, 4)], generators=[])
