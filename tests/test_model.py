"""SDFlow API: shapes, sampling controls, likelihoods, and our checkpoint format."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdflow
from sdflow.checkpoints import CheckpointError, save_model
from sdflow.config import ModelConfig
from sdflow.flows.layers import ActNorm
from sdflow.model import SDFlow


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SDFlow(ModelConfig.preset("tiny"))
    # Random last layers so that sampling noise and conditions actually change the output.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "conv3" in name or "out_log_scale" in name:
                p.normal_(0, 0.05)
    return m.eval()


def test_shapes_any_size(model):
    with torch.no_grad():
        assert model.super_resolve(torch.zeros(2, 3, 7, 5)).shape == (2, 3, 28, 20)
        for h, w in [(202, 150), (8, 8), (13, 3), (1, 1)]:
            assert model.downscale(torch.zeros(1, 3, h, w)).shape == (1, 3, -(-h // 4), -(-w // 4))


def test_bad_input_shape_is_reported(model):
    with pytest.raises(ValueError, match="lr must be"):
        model.super_resolve(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="hr must be"):
        model.downscale(torch.zeros(1, 4, 8, 8))


def test_bad_tau_and_likelihood_sizes_are_reported(model):
    for tau in (-0.5, float("nan"), float("inf"), "0.8", None):
        with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
            model.super_resolve(torch.zeros(1, 3, 8, 8), tau)
        with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
            model.downscale(torch.zeros(1, 3, 16, 16), tau)
    with pytest.raises(ValueError, match=r"multiples of 8 .* got 30x32; crop it, e.g. hr\[..., :24, :32\]"):
        model.hr_log_likelihood(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="multiples of 2 and at least 4, got 7x8"):
        model.lr_log_likelihood(torch.zeros(1, 3, 7, 8))


def test_sampling_keeps_no_graph(model):
    """Parameters that require gradients (a model fresh from SDFlow(...) or sdflow.load) give
    outputs without a graph: sampling is inference, so it does not hold every activation."""
    assert all(p.requires_grad for p in model.parameters())
    lr, hr = torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    outs = [model.super_resolve(lr), model.downscale(hr), model.sr_condition(lr).features,
            model.ds_condition(hr).content]
    assert not any(t.requires_grad for t in outs)
    assert model.hr_log_likelihood(hr).requires_grad   # the likelihoods stay differentiable


def test_sampling_is_seeded_and_tau_matters(model):
    lr = torch.rand(1, 3, 6, 6) * 2 - 1
    with torch.no_grad():
        a = model.super_resolve(lr, 0.8, generator=torch.Generator().manual_seed(1))
        b = model.super_resolve(lr, 0.8, generator=torch.Generator().manual_seed(1))
        c = model.super_resolve(lr, 0.8, generator=torch.Generator().manual_seed(2))
        d0 = model.super_resolve(lr, 0.0, generator=torch.Generator().manual_seed(3))
        d1 = model.super_resolve(lr, 0.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(d0, d1)  # tau = 0 is deterministic


def test_downscale_controls(model):
    hr = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = torch.zeros(2, 12, 2, 2)
        fixed = model.downscale(hr, deg_latent=z)
        assert torch.equal(fixed, model.downscale(hr, deg_latent=z))
        g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
        k0 = model.downscale(hr, tau=0, component=0, generator=g(0))
        k1 = model.downscale(hr, tau=0, component=1, generator=g(0))
        assert not torch.allclose(k0, k1)
        # At tau = 0 with one component, the latent is that component's mean everywhere.
        mean0 = model.deg_prior.means[0].expand(2, 12, 2, 2)
        assert torch.allclose(k0, model.downscale(hr, deg_latent=mean0))
        e = model.downscale(hr, tau=1.0, sampler="element", generator=g(5))
        assert e.shape == (2, 3, 4, 4) and torch.isfinite(e).all()


def test_likelihoods_in_bits_per_dim_and_gradients(model):
    model.train()
    try:
        y = torch.rand(2, 3, 16, 16) * 2 - 1
        x = torch.rand(2, 3, 8, 8) * 2 - 1
        hr_bpd = model.hr_log_likelihood(y)
        lr_bpd = model.lr_log_likelihood(x)
        assert hr_bpd.shape == (2,) and lr_bpd.shape == (2,)
        assert torch.isfinite(hr_bpd).all() and torch.isfinite(lr_bpd).all()
        # f_HF's likelihood must not reach z_c: only f_HR gets gradients from it through z_h.
        z_c, z_h, _ = model.encode_hr(y)
        z_c.retain_grad()
        _, logdet_hf = model.f_hf(z_h, z_c.detach())
        logdet_hf.sum().backward()
        assert z_c.grad is None or torch.all(z_c.grad == 0)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_bits_per_dim_matches_definition(model):
    y = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        nats = model.hr_log_density(y)
        bpd = model.hr_log_likelihood(y)
    dims = 3 * 8 * 8
    expected = (nats + dims * torch.log(torch.tensor(2 / 255))) / (dims * torch.log(torch.tensor(2.0)))
    assert torch.allclose(bpd, expected)


def test_actnorm_data_init_normalises_and_only_once():
    layer = ActNorm(4).train()
    x = torch.randn(16, 4, 8, 8) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1) + 5
    y, _ = layer(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4)
    before = layer.loc.detach().clone()
    layer(x * 3)
    assert torch.equal(layer.loc, before) and layer.initialized.item() == 1
    # A constant channel is not blown up.
    const = ActNorm(1).train()
    const(torch.full((2, 1, 4, 4), 7.0))
    assert const.log_scale.item() == pytest.approx(0.0, abs=1e-5)


def test_inverse_weight_cache_follows_parameter_updates(model):
    conv = model.f_lr.steps[0].inv_conv
    x = torch.randn(1, 12, 3, 3)
    with torch.no_grad():
        y1 = conv(x)[0]
        conv.log_abs_s.add_(0.1)
        y2 = conv(x)[0]
        assert not torch.allclose(y1, y2)
        assert torch.allclose(conv.inverse(y2)[0], x, atol=1e-5)
        conv.log_abs_s.sub_(0.1)
        # Writes through .data (EMA updates, copying weights in) do not bump version counters.
        saved = conv.upper.detach().clone()
        conv.upper.data.mul_(1.5)
        assert torch.equal(conv(x)[0], F.conv2d(x, conv.weight()[:, :, None, None]))
        stale = conv(x)[0]
        conv.upper.data.copy_(saved)
        assert not torch.equal(conv(x)[0], stale)
        assert torch.equal(conv(x)[0], F.conv2d(x, conv.weight()[:, :, None, None]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_sample(model, dtype, tmp_path):
    """load(dtype=float16 / bfloat16) gives a model that samples (W^-1 made in float32 and
    rounded: there is no half-precision inverse), close to the float32 one."""
    path = save_model(model, tmp_path / "m.safetensors")
    half = sdflow.load(path, dtype=dtype)
    lr, hr = torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    for run in (lambda m, d: m.super_resolve(lr.to(d), 0.0), lambda m, d: m.downscale(hr.to(d), 0.0, component=0)):
        y, ref = run(half, dtype), run(model, torch.float32)
        assert y.dtype == dtype and (y.float() - ref).abs().max() < 0.1


def test_a_saved_model_loads_whatever_its_file_is_called(model, tmp_path):
    path = save_model(model, tmp_path / "weights.st")
    assert torch.equal(sdflow.load(path).f_lr.steps[0].inv_conv.upper, model.f_lr.steps[0].inv_conv.upper)


def test_mixture_components_as_numpy_or_tensor_indices(model):
    hr = torch.rand(1, 3, 16, 16) * 2 - 1
    ref = model.downscale(hr, 0.8, component=1, generator=torch.Generator().manual_seed(0))
    for c in (np.int64(1), torch.tensor(1), [1], np.array([1])):
        assert torch.equal(model.downscale(hr, 0.8, component=c, generator=torch.Generator().manual_seed(0)), ref)
    assert torch.equal(model.downscale(hr, 0.8, component=(c for c in [1]), generator=torch.Generator().manual_seed(0)), ref)
    for bad in (True, 1.5, np.bool_(True), torch.tensor(True)):
        with pytest.raises(ValueError, match="whole numbers"):
            model.downscale(hr, component=bad)


@pytest.mark.parametrize("store", [None, torch.float16])
def test_safetensors_roundtrip(model, tmp_path, store):
    path = save_model(model, tmp_path / "m.safetensors", dtype=store)
    loaded = sdflow.load(path)
    assert loaded.config == model.config and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        if store is None:
            assert torch.equal(a, b)
        else:
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    assert sdflow.load(path, dtype=torch.float64).dtype == torch.float64


def test_training_checkpoint_and_run_dir_are_loadable(model, tmp_path):
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(), "step": 3},
               tmp_path / "ckpt.pt")
    assert sdflow.load(tmp_path / "ckpt.pt").config == model.config
    run = tmp_path / "run"
    save_model(model, run / "model.safetensors")
    assert sdflow.load(run).config == model.config


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        sdflow.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        sdflow.load(tmp_path / "junk.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="missing lrencoder.pth"):
        sdflow.load(tmp_path / "folder")
    wrong = SDFlow(ModelConfig.preset("tiny"))
    sd = wrong.state_dict()
    sd.pop("deg_prior.means")
    torch.save({"model": sd, "model_config": wrong.config.to_dict()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        sdflow.load(tmp_path / "bad.pt")


def test_content_blur_starts_at_its_width_and_learns_another():
    """The learnt blur is the fixed Gaussian at its starting width, and its gradient in the width
    is right: fitted to images blurred by 1.2 pixels, it finds 1.2 from 0.7 (and 0.4 from 0.7)."""
    from sdflow.nets.blur import RADIUS, ContentBlur
    from sdflow.resize import gaussian_blur
    x = torch.rand(4, 3, 24, 24) * 2 - 1
    wide = 2 * RADIUS + 1
    assert torch.allclose(ContentBlur(0.7)(x), gaussian_blur(x, 0.7, kernel_size=wide), atol=1e-6)
    for target in (1.2, 0.4):
        blur = ContentBlur(0.7)
        opt = torch.optim.Adam(blur.parameters(), lr=0.02)
        goal = gaussian_blur(x, target, kernel_size=wide)
        for _ in range(300):
            opt.zero_grad()
            (blur(x) - goal).pow(2).mean().backward()
            opt.step()
        assert float(blur.sigma.detach()) == pytest.approx(target, abs=0.02)
    with pytest.raises(ValueError, match="positive width"):
        ContentBlur(0.0)
