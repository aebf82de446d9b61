"""The inference pipeline: precision, devices, batches with per-image noise, and the conditions
that the samples of one image (or batch) share."""
import pytest
import torch

import sdflow.nets.precision as precision
from sdflow.model import SDFlow
from sdflow.pipeline import Pipeline, resolve_device
from test_fused import perturbed, seeded


@pytest.fixture(scope="module")
def tiny():
    return perturbed()


def test_precision_auto_follows_the_hardware(tiny, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert Pipeline(tiny).precision == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert Pipeline(tiny).precision == "fp32"
    assert Pipeline(tiny, "fp16").precision == "fp16"
    with pytest.raises(ValueError, match="float64"):
        Pipeline(tiny, "fp64")
    with pytest.raises(ValueError, match="precision"):
        Pipeline(tiny, "int8")
    assert Pipeline(perturbed().double(), "fp64").precision == "fp64"


def test_load_makes_the_model_its_precision_needs(tiny_model_path):
    pipe = Pipeline.load(tiny_model_path, device="cpu", precision="fp64", tile=0)
    assert pipe.dtype == torch.float64 and pipe.device == torch.device("cpu") and not pipe.model.training
    assert Pipeline.load(tiny_model_path, precision="fp32").dtype == torch.float32
    y = pipe.super_resolve(torch.rand(1, 3, 5, 6) * 2 - 1, 0.8, seed=1)
    assert y.dtype == torch.float64 and y.shape == (1, 3, 20, 24)


def test_seeds_are_those_of_the_model(tiny):
    """seed S draws with a generator seeded S on the model's device, as SDFlow.super_resolve(x, tau,
    generator) does; the global generator is not used."""
    pipe = Pipeline(tiny, "fp32")
    lr, hr = torch.rand(1, 3, 6, 7) * 2 - 1, torch.rand(1, 3, 24, 28) * 2 - 1
    state = torch.random.get_rng_state()
    assert torch.equal(pipe.super_resolve(lr, 0.8, seed=4), tiny.super_resolve(lr, 0.8, seeded(4)))
    assert torch.equal(pipe.downscale(hr, 0.8, seed=4, component=[1], sampler="element"),
                       tiny.downscale(hr, 0.8, [1], "element", generator=seeded(4)))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_batches_equal_one_by_one(tiny):
    lrs = [torch.rand(1, 3, 6, 7) * 2 - 1 for _ in range(3)]
    image = Pipeline(tiny, "fp32").prepare(torch.cat(lrs))
    batched = image.super_resolve(0.8, seed=[0, 1, 2])
    for i, x in enumerate(lrs):
        assert torch.allclose(batched[i:i + 1], tiny.super_resolve(x, 0.8, seeded(i)), atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])
    hrs = [torch.rand(1, 3, 24, 28) * 2 - 1 for _ in range(3)]
    batched = Pipeline(tiny, "fp32").prepare(torch.cat(hrs)).downscale(0.8, [5, 6, 7], component=[1, 2])
    for i, x in enumerate(hrs):
        assert torch.allclose(batched[i:i + 1], tiny.downscale(x, 0.8, [1, 2], generator=seeded(5 + i)), atol=1e-5)
    # One seed for a batch: the model's draw for the whole batch, as SDFlow.super_resolve(batch) makes it.
    assert torch.equal(image.super_resolve(0.8, seed=3), tiny.super_resolve(torch.cat(lrs), 0.8, seeded(3)))


def test_inputs_are_checked(tiny):
    pipe = Pipeline(tiny, "fp32")
    with pytest.raises(ValueError, match="seeds for a batch of 2"):
        pipe.prepare(torch.zeros(2, 3, 4, 4)).super_resolve(0.8, seed=[1])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pipe.super_resolve(torch.zeros(3, 4, 4))


@pytest.mark.parametrize("mode", ["sr", "ds"])
def test_a_batch_makes_its_condition_once_for_all_its_samples(tiny, mode, monkeypatch):
    made = []
    maker = f"{mode}_condition"
    real = getattr(SDFlow, maker)
    monkeypatch.setattr(SDFlow, maker, lambda self, x, precision=None: made.append(x.shape[0]) or real(self, x, precision))
    side = 6 if mode == "sr" else 24
    x = torch.rand(2, 3, side, side + 4) * 2 - 1
    pipe = Pipeline(tiny, "fp32")

    def run(image, k):
        return image.super_resolve(0.8, [k, k]) if mode == "sr" else image.downscale(0.8, [k, k])

    image = pipe.prepare(x)
    first, second = run(image, 0), run(image, 1)
    assert made == [2] and not torch.equal(first, second)  # one condition for the batch, not one per sample
    made.clear()
    alone = pipe.prepare(x, keep=False)
    assert torch.equal(run(alone, 0), first) and torch.equal(run(alone, 1), second) and made == [2, 2]


def test_resolve_device(monkeypatch):
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device cuda:1: CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="expected auto"):
        resolve_device("tpu")
