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


@pytest.mark.parametrize("mode", ["sr", "ds"])
def test_batches_keep_their_conditions_for_the_next_sample(models, mode, monkeypatch):
    fast = models["fast"]
    made = []
    maker = f"{mode}_condition"
    real = getattr(FastSDFlow, maker)
    monkeypatch.setattr(FastSDFlow, maker, lambda self, x: made.append(x.shape[0]) or real(self, x))
    side = 6 if mode == "sr" else 24
    xs = [torch.rand(1, 3, side, side + (i % 2) * 4) * 2 - 1 for i in range(5)]
    if mode == "sr":
        run = lambda k, c: batched_super_resolve(fast, xs, 2, 0.8, [seeded(10 * k + i) for i in range(5)], c)  # noqa: E731
    else:
        run = lambda k, c: batched_downscale(fast, xs, 2, 0.8, None, "image",  # noqa: E731
                                             [seeded(10 * k + i) for i in range(5)], c)
    conditions = {}
    first, second = run(0, conditions), run(1, conditions)
    assert sorted(made) == [1, 2, 2]  # batches (0, 2), (4,), (1, 3): one condition each, not two
    made.clear()
    assert all(torch.equal(a, b) for a, b in zip(first, run(0, None)))
    assert all(torch.equal(a, b) for a, b in zip(second, run(1, None)))
    assert len(made) == 6 and not torch.equal(first[0], second[0])  # without: made for every call
