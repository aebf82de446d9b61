"""The fused inference path (sdflow.fast) gives the model's results, and the latent hooks."""

import pytest
import torch

from sdflow.config import ModelConfig
from sdflow.fast import FastSDFlow, _content_program, _Program, _Spec, prepare
from sdflow.model import SDFlow

from test_parity import load_authors


def perturbed(preset="tiny", seed=0):
    """Random weights everywhere (no coupling or injector is the identity), outputs in a sane range."""
    torch.manual_seed(seed)
    model = SDFlow(ModelConfig.preset(preset))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("out_log_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 - 0.5)
            elif "conv3" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny():
    return perturbed()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fast_matches_model_tiny(tiny, channels_last):
    fast = FastSDFlow(tiny, "fp32", channels_last)
    lr = torch.rand(2, 3, 9, 7) * 2 - 1
    hr = torch.rand(2, 3, 30, 42) * 2 - 1  # not multiples of 8: exercises the padding
    with torch.no_grad():
        for tau in (0.0, 0.9):
            ref = tiny.super_resolve(lr, tau, seeded(3))
            out = fast.super_resolve(lr, tau, seeded(3))
            assert out.shape == ref.shape and rel_err(out, ref) < 1e-4
            for sampler in ("image", "element"):
                ref = tiny.downscale(hr, tau, component=[1, 2], sampler=sampler, generator=seeded(4))
                out = fast.downscale(hr, tau, component=[1, 2], sampler=sampler, generator=seeded(4))
                assert out.shape == ref.shape and rel_err(out, ref) < 1e-4
        # Outputs really depend on the noise (the comparison above is not of two constants).
        assert rel_err(fast.super_resolve(lr, 0.9, seeded(5)), fast.super_resolve(lr, 0.9, seeded(3))) > 1e-3


def test_fused_programs_match_the_flows(tiny):
    y = torch.rand(2, 3, 16, 24) * 2 - 1
    spec = _Spec(torch.float32, torch.contiguous_format, tiny.device)
    with torch.no_grad():
        z, _ = tiny.f_hr(y)
        assert rel_err(_Program.forward_of(tiny.f_hr, spec)(y), z) < 1e-5
        # The cut-down program computes only z_c, and computes it right.
        z_c = _content_program(tiny.f_hr, spec)(y)
        assert z_c.shape == (2, 3, 4, 6) and rel_err(z_c, z[:, :3]) < 1e-5
        assert rel_err(_Program.inverse_of(tiny.f_hr, spec)(z), y) < 1e-5


def test_fast_path_leaves_the_model_alone_and_is_a_snapshot(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    fast = tiny.fuse_for_inference()
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert tiny.training is False and all(p.requires_grad for p in tiny.parameters())
    lr = torch.rand(1, 3, 6, 6) * 2 - 1
    out = fast.super_resolve(lr, 0.0)
    with torch.no_grad():
        tiny.f_hr.levels[0].steps[0].actnorm.loc.add_(0.5)
        try:
            changed = tiny.super_resolve(lr, 0.0)
        finally:
            tiny.f_hr.levels[0].steps[0].actnorm.loc.sub_(0.5)
    assert not torch.allclose(changed, out, atol=1e-3)
    assert torch.equal(fast.super_resolve(lr, 0.0), out)


def test_drop_in_attributes(tiny):
    fast = prepare(tiny)
    assert prepare(fast) is fast
    assert prepare(fast, "bf16").precision == "bf16"
    assert fast.config == tiny.config and fast.device == tiny.device and fast.dtype == torch.float32
    assert fast.deg_prior is tiny.deg_prior
    with pytest.raises(ValueError, match="precision"):
        FastSDFlow(tiny, "int8")
    with pytest.raises(ValueError, match="float32"):
        FastSDFlow(perturbed().double())


def test_bf16_is_close_but_not_identical(tiny):
    lr = torch.rand(1, 3, 12, 12) * 2 - 1
    ref = FastSDFlow(tiny).super_resolve(lr, 0.0)
    out = FastSDFlow(tiny, "bf16").super_resolve(lr, 0.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    err = rel_err(out, ref)
    assert 0 < err < 2e-2


def test_latent_hooks_reproduce_the_seeded_calls(tiny):
    lr = torch.rand(2, 3, 5, 6) * 2 - 1
    hr = torch.rand(2, 3, 20, 27) * 2 - 1
    with torch.no_grad():
        z = tiny.sample_hf_latent(lr, 0.7, seeded(1))
        assert z.shape == (2, 45, 5, 6)
        assert torch.equal(tiny.super_resolve(lr, hf_latent=z), tiny.super_resolve(lr, 0.7, seeded(1)))
        d = tiny.sample_deg_latent(hr, 0.7, component=2, generator=seeded(2))
        assert d.shape == (2, 12, 3, 4)  # padded to 24 x 32, / 8
        assert torch.equal(tiny.downscale(hr, deg_latent=d), tiny.downscale(hr, 0.7, 2, generator=seeded(2)))
        # Sides below 2 are padded: the latent has the padded size.
        assert tiny.sample_hf_latent(torch.zeros(1, 3, 1, 4)).shape == (1, 45, 2, 4)
        with pytest.raises(ValueError, match="hf_latent must have shape"):
            tiny.super_resolve(lr, hf_latent=z[:, :, :4])
        with pytest.raises(ValueError, match="deg_latent must have shape"):
            FastSDFlow(tiny).downscale(hr, deg_latent=d[:1])


@pytest.fixture(scope="module")
def paper_parity(tmp_path_factory):
    return load_authors(tmp_path_factory)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fast_paper_reproduces_the_authors_outputs(paper_parity, channels_last):
    model, fx = paper_parity
    fast = FastSDFlow(model, "fp32", channels_last)
    inp, out = fx["inputs"], fx["outputs"]
    assert rel_err(fast.super_resolve(inp["lr"].float(), tau=0), out["sr.image_tau0"]) < 1e-4
    assert rel_err(fast.hr_content(inp["hr"].float()), out["hr.content"]) < 1e-4
    ds = fast.downscale(inp["hr"].float(), deg_latent=inp["ds.deg_sample"].float())
    assert rel_err(ds, out["ds.image"]) < 1e-4


@pytest.mark.parametrize("kind", ["model", "fast"])
def test_a_condition_made_once_gives_each_samples_exact_result(tiny, kind):
    """Samples of one image share E / f_HF's condition (SR) and z_c / f_Deg's condition (DS):
    made once and passed to every sample, they change nothing, bit for bit."""
    model = tiny if kind == "model" else FastSDFlow(tiny)
    lr = torch.rand(1, 3, 9, 7) * 2 - 1
    hr = torch.rand(1, 3, 30, 42) * 2 - 1  # padded inside: the condition is of the padded image
    with torch.no_grad():
        sr_cond, ds_cond = model.sr_condition(lr), model.ds_condition(hr)
        for seed in (1, 2):
            assert torch.equal(model.super_resolve(lr, 0.9, seeded(seed), condition=sr_cond),
                               model.super_resolve(lr, 0.9, seeded(seed)))
            assert torch.equal(model.downscale(hr, 0.9, generator=seeded(seed), condition=ds_cond),
                               model.downscale(hr, 0.9, generator=seeded(seed)))
        # Using it left it as it was (no sample wrote into the shared tensors).
        again = model.sr_condition(lr)
        assert torch.equal(sr_cond.content, again.content) and torch.equal(sr_cond.features, again.features)
        assert torch.equal(ds_cond.features, model.ds_condition(hr).features)
        # It belongs to one image, one task and one model.
        with pytest.raises(ValueError, match="shape"):
            model.super_resolve(lr[..., :6], 0.9, condition=sr_cond)
        with pytest.raises(ValueError, match="another model"):
            model.downscale(hr, 0.9, condition=sr_cond)
        other = FastSDFlow(tiny)
        with pytest.raises(ValueError, match="another model"):
            other.super_resolve(lr, 0.9, condition=sr_cond)
        # Another image of the same shape: its samples would silently be those of the first.
        with pytest.raises(ValueError, match="another image of this shape"):
            model.super_resolve(lr.flip(-1), 0.9, condition=sr_cond)
        with pytest.raises(ValueError, match="another image of this shape"):
            model.downscale(hr + 0.01, 0.9, condition=ds_cond)


def test_both_paths_take_float64_images_alike(tiny):
    """numpy gives float64: both paths convert it to the model's dtype before drawing noise, so
    a float64 image gives the float32 image's samples (the plain model used to refuse it)."""
    fast = FastSDFlow(tiny)
    lr = torch.rand(1, 3, 8, 6, dtype=torch.float64) * 2 - 1
    for m in (tiny, fast):
        y64 = m.super_resolve(lr, 0.8, seeded(4))
        assert y64.dtype == torch.float32 and torch.equal(y64, m.super_resolve(lr.float(), 0.8, seeded(4)))
        assert torch.equal(m.downscale(lr, 0.8, generator=seeded(4)), m.downscale(lr.float(), 0.8, generator=seeded(4)))


def test_the_fast_copy_keeps_its_own_device_and_dtype():
    model = perturbed()
    fast = FastSDFlow(model)
    model.double()   # the source changes afterwards; the copy computes as it was made
    assert fast.dtype == torch.float32 and fast.device == torch.device("cpu")
    assert fast.super_resolve(torch.zeros(1, 3, 4, 4), 0.0).dtype == torch.float32


def test_reduced_precision_keeps_e_and_f_lr_in_float32(tiny):
    """E's z_c goes straight into the SR image and f_LR^-1 makes the DS image: with trained
    weights their bf16 rounding was most of bf16's cost (docs/performance.md), so they stay float32."""
    f32, b16 = FastSDFlow(tiny, "fp32"), FastSDFlow(tiny, "bf16")
    lr = torch.rand(1, 3, 9, 7) * 2 - 1
    z = torch.randn(1, 3, 10, 8)
    assert b16.content(lr).dtype == torch.float32
    assert torch.equal(b16.content(lr), f32.content(lr))
    with torch.inference_mode():
        assert torch.equal(b16.lr_inverse(z), f32.lr_inverse(z))
        # The other nets do run in bf16: the HF condition features differ.
        c32, c16 = f32.sr_condition(lr), b16.sr_condition(lr)
        assert c16.features.dtype == torch.bfloat16 and not torch.equal(c16.features.float(), c32.features)


def test_couplings_in_row_bands_give_the_whole_images_result(tiny, monkeypatch):
    """f_HR's and f_LR's couplings run in bands of rows (fast.BAND_BYTES); bands of 2 rows, each
    with its one row of context per side, must give what one band over the whole image gives."""
    import sdflow.fast as fast_module

    fast = FastSDFlow(tiny)
    lr = torch.rand(1, 3, 9, 7) * 2 - 1
    hr = torch.rand(1, 3, 30, 42) * 2 - 1
    whole = (fast.super_resolve(lr, 0.8, seeded(1)), fast.downscale(hr, 0.8, generator=seeded(1)))
    monkeypatch.setattr(fast_module, "BAND_BYTES", 1)
    monkeypatch.setattr(fast_module, "BAND_MIN_ROWS", 2)
    banded = (fast.super_resolve(lr, 0.8, seeded(1)), fast.downscale(hr, 0.8, generator=seeded(1)))
    for a, b in zip(banded, whole):
        assert a.shape == b.shape and rel_err(a, b) < 1e-6
    # A wrong context (no row of overlap) would not pass: the check can fail.
    monkeypatch.setattr(fast_module._AffineNet, "rows", lambda self, x, r0, r1: self(x[..., r0:r1 + 2, :]))
    assert rel_err(fast.super_resolve(lr, 0.8, seeded(1)), whole[0]) > 1e-4


def test_float32_means_float32_on_cuda_too():
    """cuDNN's TF32 default is turned off around the fast path's calls and restored after (the
    flags can be set and read without a GPU); on a CPU device the oneDNN flag is set instead."""
    from sdflow.fast import ieee_float32

    cudnn, mkldnn = torch.backends.cudnn.conv, torch.backends.mkldnn.conv
    before = cudnn.fp32_precision, mkldnn.fp32_precision
    try:
        cudnn.fp32_precision, mkldnn.fp32_precision = "tf32", "bf16"
        with ieee_float32(torch.device("cuda")):
            assert (cudnn.fp32_precision, mkldnn.fp32_precision) == ("ieee", "bf16")
        with ieee_float32(torch.device("cpu")):
            assert (cudnn.fp32_precision, mkldnn.fp32_precision) == ("tf32", "ieee")
        assert (cudnn.fp32_precision, mkldnn.fp32_precision) == ("tf32", "bf16")
    finally:
        cudnn.fp32_precision, mkldnn.fp32_precision = before


def test_float32_stays_float32_when_the_user_asks_onednn_for_bf16(tiny):
    """A process that set oneDNN's float32 convolutions to bfloat16 (a global PyTorch flag) still
    gets float32 results from the fast path; the plain model follows the flag, which on a CPU
    with bf16 arithmetic moves it by ~1e-3."""
    fast = FastSDFlow(tiny, "fp32")
    lr = torch.rand(1, 3, 48, 48) * 2 - 1  # oneDNN's flag acts from about this size on
    with torch.no_grad():
        exact = (tiny.super_resolve(lr, 0.8, seeded(2)), fast.super_resolve(lr, 0.8, seeded(2)))
    conv = torch.backends.mkldnn.conv
    before = conv.fp32_precision
    try:
        conv.fp32_precision = "bf16"
        with torch.no_grad():
            model_bf16 = tiny.super_resolve(lr, 0.8, seeded(2))
            fast_under_flag = fast.super_resolve(lr, 0.8, seeded(2))
        assert conv.fp32_precision == "bf16"
    finally:
        conv.fp32_precision = before
    assert torch.equal(fast_under_flag, exact[1])
    assert rel_err(fast_under_flag, exact[0]) < 1e-5
    if not torch.equal(model_bf16, exact[0]):  # the flag does act on this CPU: it would have been seen
        assert rel_err(model_bf16, exact[0]) > 10 * rel_err(fast_under_flag, exact[0])
