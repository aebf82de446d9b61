"""The model's sampling form (eval mode, float32: layers fused, constants folded, channels-last)
gives the model's own results, follows its parameters, and the latent hooks."""
import copy

import pytest
import torch

import sdflow.flows.layers as layers
import sdflow.model as model_module
from sdflow.config import ModelConfig
from sdflow.flows.layers import ActNorm, CouplingNet, FusedFlow
from sdflow.model import SDFlow

from test_parity import load_authors


def perturbed(preset="tiny", seed=0, **overrides):
    """Random weights everywhere (no coupling or injector is the identity), outputs in a sane range,
    ActNorms initialised (as in a trained model: training mode leaves them alone)."""
    from dataclasses import replace
    torch.manual_seed(seed)
    model = SDFlow(replace(ModelConfig.preset(preset), **overrides))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("out_log_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 - 0.5)
            elif "conv3" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        for m in model.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(1.0)
    return model.eval()


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny():
    return perturbed()


@pytest.fixture(scope="module")
def tiny64(tiny):
    """The same weights in float64: sampled by the modules themselves, the reference."""
    return copy.deepcopy(tiny).double()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_sampling_form_matches_the_modules(tiny, tiny64, channels_last, monkeypatch):
    monkeypatch.setattr(model_module._FusedSteps, "channels_last", channels_last)
    tiny.eval()   # made again with this memory format
    lr = torch.rand(2, 3, 9, 7) * 2 - 1
    hr = torch.rand(2, 3, 30, 42) * 2 - 1  # not multiples of 8: exercises the padding
    for tau in (0.0, 0.9):
        # The float64 model would draw float64 noise: both get the float32 model's.
        z = tiny.sample_hf_latent(lr, tau, seeded(3))
        ref = tiny64.super_resolve(lr, hf_latent=z)
        out = tiny.super_resolve(lr, tau, seeded(3))
        assert out.dtype == torch.float32 and out.shape == ref.shape and rel_err(out, ref) < 1e-4
        for sampler in ("image", "element"):
            d = tiny.sample_deg_latent(hr, tau, component=[1, 2], sampler=sampler, generator=seeded(4))
            ref = tiny64.downscale(hr, deg_latent=d)
            out = tiny.downscale(hr, tau, component=[1, 2], sampler=sampler, generator=seeded(4))
            assert out.shape == ref.shape and rel_err(out, ref) < 1e-4
    assert list(tiny._sampling_forms) == ["fp32"]            # it did sample through the fused form
    fused = tiny._steps("fp32")
    assert fused._hr_inverse.memory_format == (torch.channels_last if channels_last else torch.contiguous_format)
    # Outputs really depend on the noise (the comparison above is not of two constants).
    assert rel_err(tiny.super_resolve(lr, 0.9, seeded(5)), tiny.super_resolve(lr, 0.9, seeded(3))) > 1e-3
    tiny.eval()


def test_fused_flows_match_the_flows(tiny):
    y = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        z, _ = tiny.f_hr(y)
        assert rel_err(FusedFlow(tiny.f_hr, 1)(y), z) < 1e-5
        # Cut down to z_c, it computes only z_c, and computes it right.
        z_c = FusedFlow(tiny.f_hr, 1, keep=3)(y)
        assert z_c.shape == (2, 3, 4, 6) and rel_err(z_c, z[:, :3]) < 1e-5
        assert rel_err(FusedFlow(tiny.f_hr, -1)(z), y) < 1e-5
        c = torch.rand(2, 3, 4, 6) * 2 - 1
        eps = torch.randn(2, 12, 2, 3)
        ref = tiny.f_deg.inverse(eps, c)[0]
        assert rel_err(FusedFlow(tiny.f_deg, -1)(eps, tiny.f_deg.condition(c)), ref) < 1e-5
    # The linear runs are composed: f_LR's inverse is [affine, (coupling, affine) x steps, shuffle, ...].
    ops = FusedFlow(tiny.f_lr, -1).ops
    assert sum(isinstance(op, layers.Affine1x1) for op in ops) == tiny.config.lr_steps + 1


def test_sampling_follows_the_parameters_and_leaves_them_alone(tiny, tiny64):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    lr = torch.rand(1, 3, 6, 6) * 2 - 1
    out = tiny.super_resolve(lr, 0.0)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert tiny.training is False and all(p.requires_grad for p in tiny.parameters())
    out.clone().clamp_(-1, 1)   # an ordinary tensor, not an inference tensor
    tiny.super_resolve(lr, 0.0).clamp_(-1, 1)
    loc = tiny.f_hr.levels[0].steps[0].actnorm.loc
    try:
        with torch.no_grad():
            loc.add_(0.5)   # an in-place update: its version counter says so
        changed = tiny.super_resolve(lr, 0.0)
        assert not torch.allclose(changed, out, atol=1e-3)
        assert rel_err(changed, copy.deepcopy(tiny).double().super_resolve(lr, 0.0)) < 1e-4
        # Writes through .data leave version counters alone: eval() brings sampling up to date.
        loc.data.sub_(0.5)
        assert torch.equal(tiny.super_resolve(lr, 0.0), changed)
        tiny.eval()
        assert rel_err(tiny.super_resolve(lr, 0.0), out) < 1e-6   # (x + 0.5) - 0.5 is x up to rounding
        assert rel_err(out, tiny64.super_resolve(lr, 0.0)) < 1e-4
    finally:
        with torch.no_grad():
            loc.copy_(before["f_hr.levels.0.steps.0.actnorm.loc"])
        tiny.eval()


def test_precision_is_checked(tiny, tiny64):
    lr = torch.rand(1, 3, 6, 6) * 2 - 1
    with pytest.raises(ValueError, match="precision"):
        tiny.super_resolve(lr, 0.0, precision="int8")
    with pytest.raises(ValueError, match="float32 model"):
        tiny.super_resolve(lr, 0.0, precision="fp64")
    with pytest.raises(ValueError, match="float32 model"):
        tiny64.super_resolve(lr, 0.0, precision="bf16")
    assert tiny64.super_resolve(lr, 0.0, precision="auto").dtype == torch.float64   # auto: its own
    assert tiny.super_resolve(lr, 0.0, precision="auto").dtype == torch.float32


def test_bf16_is_close_but_not_identical(tiny):
    lr = torch.rand(1, 3, 12, 12) * 2 - 1
    ref = tiny.super_resolve(lr, 0.0)
    out = tiny.super_resolve(lr, 0.0, precision="bf16")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    err = rel_err(out, ref)
    assert 0 < err < 2e-2
    # In training mode the modules run under reduced_precision (sdflow.nets.precision) instead.
    tiny.train()
    try:
        trained = tiny.super_resolve(lr, 0.0, precision="bf16")
        assert trained.dtype == torch.float32 and 0 < rel_err(trained, ref) < 2e-2
    finally:
        tiny.eval()


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
            tiny.downscale(hr, deg_latent=d[:1])


@pytest.fixture(scope="module")
def paper_parity(tmp_path_factory):
    return load_authors(tmp_path_factory)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_sampling_form_of_the_paper_model_reproduces_the_authors_outputs(paper_parity, channels_last, monkeypatch):
    model, fx = paper_parity
    monkeypatch.setattr(model_module._FusedSteps, "channels_last", channels_last)
    model.eval()
    inp, out = fx["inputs"], fx["outputs"]
    assert rel_err(model.super_resolve(inp["lr"].float(), tau=0), out["sr.image_tau0"]) < 1e-4
    # z_c from the fused f_HR cut down to it (the fixture's HR needs no padding).
    assert rel_err(model.ds_condition(inp["hr"].float()).content, out["hr.content"]) < 1e-4
    ds = model.downscale(inp["hr"].float(), deg_latent=inp["ds.deg_sample"].float())
    assert rel_err(ds, out["ds.image"]) < 1e-4
    assert "fp32" in model._sampling_forms
    model.eval()


@pytest.mark.parametrize("kind", ["fused", "modules"])
def test_a_condition_made_once_gives_each_samples_exact_result(tiny, tiny64, kind):
    """Samples of one image share E / f_HF's condition (SR) and z_c / f_Deg's condition (DS):
    made once and passed to every sample, they change nothing, bit for bit."""
    model = tiny if kind == "fused" else tiny64
    lr = (torch.rand(1, 3, 9, 7) * 2 - 1).to(model.dtype)
    hr = (torch.rand(1, 3, 30, 42) * 2 - 1).to(model.dtype)  # padded inside: the condition is of the padded image
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
        # It belongs to one image, one task, one model and one precision.
        with pytest.raises(ValueError, match="shape"):
            model.super_resolve(lr[..., :6], 0.9, condition=sr_cond)
        with pytest.raises(ValueError, match="another model"):
            model.downscale(hr, 0.9, condition=sr_cond)
        other = copy.deepcopy(model)
        with pytest.raises(ValueError, match="another model"):
            other.super_resolve(lr, 0.9, condition=sr_cond)
        if kind == "fused":
            with pytest.raises(ValueError, match="another precision"):
                model.super_resolve(lr, 0.9, condition=sr_cond, precision="bf16")
        # Another image of the same shape: its samples would silently be those of the first.
        with pytest.raises(ValueError, match="another image of this shape"):
            model.super_resolve(lr.flip(-1), 0.9, condition=sr_cond)
        with pytest.raises(ValueError, match="another image of this shape"):
            model.downscale(hr + 0.01, 0.9, condition=ds_cond)


def test_both_paths_take_float64_images_alike(tiny):
    """numpy gives float64: both paths convert it to the model's dtype before drawing noise, so
    a float64 image gives the float32 image's samples."""
    lr = torch.rand(1, 3, 8, 6, dtype=torch.float64) * 2 - 1
    for mode in ("eval", "train"):
        getattr(tiny, mode)()
        y64 = tiny.super_resolve(lr, 0.8, seeded(4))
        assert y64.dtype == torch.float32 and torch.equal(y64, tiny.super_resolve(lr.float(), 0.8, seeded(4)))
        assert torch.equal(tiny.downscale(lr, 0.8, generator=seeded(4)),
                           tiny.downscale(lr.float(), 0.8, generator=seeded(4)))
    tiny.eval()


def test_making_the_sampling_form_leaves_the_global_generator_alone():
    """Else the first eval-mode call without a generator would draw other noise than the next."""
    model = perturbed()
    lr = torch.rand(1, 3, 6, 6) * 2 - 1
    torch.manual_seed(7)
    first = model.super_resolve(lr, 0.8)
    torch.manual_seed(7)
    assert torch.equal(model.super_resolve(lr, 0.8), first)


def test_the_sampling_form_follows_the_model_to_another_dtype():
    model = perturbed()
    model.super_resolve(torch.zeros(1, 3, 4, 4), 0.0)
    model.double()   # now the modules sample (float64), not the float32 form made before
    assert model.super_resolve(torch.zeros(1, 3, 4, 4), 0.0).dtype == torch.float64
    model.float()
    assert model.super_resolve(torch.zeros(1, 3, 4, 4), 0.0).dtype == torch.float32
    # Copies and pickles leave the sampling forms behind.
    assert copy.deepcopy(model)._sampling_forms == {}


def test_reduced_precision_keeps_e_and_f_lr_in_float32(tiny):
    """E's z_c goes straight into the SR image and f_LR^-1 makes the DS image: with trained
    weights their bf16 rounding was most of bf16's cost (docs/performance.md), so they stay float32."""
    f32, b16 = tiny._steps("fp32"), tiny._steps("bf16")
    lr = torch.rand(1, 3, 9, 7) * 2 - 1
    z = torch.randn(1, 3, 10, 8)
    with torch.inference_mode():
        assert b16.content(lr).dtype == torch.float32
        assert torch.equal(b16.content(lr), f32.content(lr))
        assert torch.equal(b16.lr_inverse(z), f32.lr_inverse(z))
    # The other nets do run in bf16: the HF condition features differ.
    c32, c16 = tiny.sr_condition(lr), tiny.sr_condition(lr, precision="bf16")
    assert c16.features.dtype == torch.float32 and not torch.equal(c16.features, c32.features)
    assert b16._hf_net.head.weight.dtype == torch.bfloat16 and b16._extractor.head[0].weight.dtype == torch.float32


def test_couplings_in_row_bands_give_the_whole_images_result(tiny, monkeypatch):
    """f_HR's and f_LR's couplings run in bands of rows (layers.BAND_BYTES); bands of 2 rows, each
    with its one row of context per side, must give what one band over the whole image gives."""
    lr = torch.rand(1, 3, 9, 7) * 2 - 1
    hr = torch.rand(1, 3, 30, 42) * 2 - 1
    whole = (tiny.super_resolve(lr, 0.8, seeded(1)), tiny.downscale(hr, 0.8, generator=seeded(1)))
    monkeypatch.setattr(layers, "BAND_BYTES", 1)
    monkeypatch.setattr(layers, "BAND_MIN_ROWS", 2)
    banded = (tiny.super_resolve(lr, 0.8, seeded(1)), tiny.downscale(hr, 0.8, generator=seeded(1)))
    for a, b in zip(banded, whole):
        assert a.shape == b.shape and rel_err(a, b) < 1e-6
    # A wrong context (no row of overlap) would not pass: the check can fail.
    real = CouplingNet.forward

    def no_context(self, x, padded=False, rows=None):
        if rows is None:
            return real(self, x, padded)
        band = x[..., rows[0]:rows[1] + 2, :]
        return real(self, band, padded, (0, rows[1] - rows[0]))

    monkeypatch.setattr(CouplingNet, "forward", no_context)
    assert rel_err(tiny.super_resolve(lr, 0.8, seeded(1)), whole[0]) > 1e-4


def test_float32_means_float32_on_cuda_too():
    """cuDNN's TF32 default is turned off around the sampling form's calls and restored after (the
    flags can be set and read without a GPU); on a CPU device the oneDNN flag is set instead."""
    from sdflow.nets.precision import ieee_float32

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
    gets float32 results from eval-mode sampling; the modules (training mode) follow the flag,
    which on a CPU with bf16 arithmetic moves them by ~1e-3."""
    lr = torch.rand(1, 3, 48, 48) * 2 - 1  # oneDNN's flag acts from about this size on
    tiny.train()
    modules = tiny.super_resolve(lr, 0.8, seeded(2))
    tiny.eval()
    fused = tiny.super_resolve(lr, 0.8, seeded(2))
    conv = torch.backends.mkldnn.conv
    before = conv.fp32_precision
    try:
        conv.fp32_precision = "bf16"
        fused_under_flag = tiny.super_resolve(lr, 0.8, seeded(2))
        tiny.train()
        modules_bf16 = tiny.super_resolve(lr, 0.8, seeded(2))
        assert conv.fp32_precision == "bf16"
    finally:
        conv.fp32_precision = before
        tiny.eval()
    assert torch.equal(fused_under_flag, fused)
    assert rel_err(fused_under_flag, modules) < 1e-5
    if not torch.equal(modules_bf16, modules):  # the flag does act on this CPU: it would have been seen
        assert rel_err(modules_bf16, modules) > 10 * rel_err(fused_under_flag, modules)


def test_ds_content_picture_downscales_from_f_lr_of_the_blurred_bicubic_picture(tmp_path):
    """model.ds_content=picture: DS starts from f_LR(blur(bicubic_down(hr))), in the modules and in
    the sampling form alike, and the setting survives saving and loading."""
    from dataclasses import replace
    from sdflow.checkpoints import save_model
    from sdflow.resize import downscale, gaussian_blur
    import sdflow
    base = perturbed()
    model = SDFlow(replace(base.config, ds_content="picture", ds_content_sigma=0.7))
    model.load_state_dict(base.state_dict())
    model.eval()
    hr = torch.rand(1, 3, 32, 48) * 2 - 1
    d = model.sample_deg_latent(hr, 0.0)
    with torch.no_grad():
        z_c = model.f_lr(gaussian_blur(downscale(hr, 4), 0.7))[0]
        expect = model.f_lr.inverse(z_c + model.f_deg.inverse(d, z_c)[0])[0]
        flow_content = base.hr_content(hr)
    assert torch.allclose(model.hr_content(hr), z_c, atol=1e-6)
    assert (flow_content - z_c).abs().max() > 1e-2  # the two settings do differ
    out = model.downscale(hr, deg_latent=d)                      # the sampling form
    assert list(model._sampling_forms) == ["fp32"] and rel_err(out, expect) < 1e-4
    assert rel_err(base.downscale(hr, deg_latent=d), expect) > 1e-3
    loaded = sdflow.load(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.config.ds_content == "picture" and loaded.config.ds_content_sigma == 0.7
    assert rel_err(loaded.downscale(hr, deg_latent=d), expect) < 1e-4
    with pytest.raises(ValueError, match="ds_content"):
        replace(base.config, ds_content="bicubic")


def test_the_lifting_squeeze_samples_alike_in_both_forms(tmp_path):
    """model.hr_squeeze=lifting: the sampling form's SR and DS are the modules' (float64 reference),
    on sizes that are not multiples of 8, and the setting survives saving and loading."""
    from sdflow.checkpoints import save_model
    import sdflow
    model = perturbed(hr_squeeze="lifting")
    assert isinstance(model.f_hr.levels[0].squeeze, layers.LiftingSqueeze)
    ref64 = copy.deepcopy(model).double()
    lr = torch.rand(2, 3, 9, 7) * 2 - 1
    hr = torch.rand(2, 3, 30, 42) * 2 - 1
    z = model.sample_hf_latent(lr, 0.9, seeded(3))
    ref = ref64.super_resolve(lr, hf_latent=z)
    assert rel_err(model.super_resolve(lr, 0.9, seeded(3)), ref) < 1e-4
    d = model.sample_deg_latent(hr, 0.5, generator=seeded(4))
    assert rel_err(model.downscale(hr, deg_latent=d), ref64.downscale(hr, deg_latent=d)) < 1e-4
    assert list(model._sampling_forms) == ["fp32"]
    with torch.no_grad():
        y = torch.rand(2, 3, 16, 24) * 2 - 1
        assert rel_err(FusedFlow(model.f_hr, -1)(FusedFlow(model.f_hr, 1)(y)), y) < 1e-5
    loaded = sdflow.load(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.config.hr_squeeze == "lifting"
    assert rel_err(loaded.super_resolve(lr, hf_latent=z), ref) < 1e-4
    shuffle = perturbed()
    assert rel_err(shuffle.super_resolve(lr, hf_latent=z), ref) > 1e-3  # the two settings differ
    with pytest.raises(ValueError, match="hr_squeeze"):
        ModelConfig(hr_squeeze="haar")


def test_a_residual_extractor_starts_as_the_lr_pictures_content_in_both_forms():
    """model.extractor=residual: E(x) = f_LR(x) + E's correction, which starts at zero; the sampling
    form computes the same content as the modules."""
    from dataclasses import replace
    from sdflow.nets.content import ContentExtractor
    model = perturbed(extractor="residual")
    even = torch.rand(2, 3, 8, 6) * 2 - 1
    with torch.no_grad():
        expect = model.content_extractor(even) + model.f_lr(even)[0]
        fresh = SDFlow(replace(model.config))
        assert torch.equal(fresh.content_extractor(even), torch.zeros(2, 3, 8, 6))
        assert torch.allclose(fresh.content(even), fresh.f_lr(even)[0])
        assert ContentExtractor(8, 1, 1)(even).abs().max() > 0   # a direct E does not start at zero
        assert torch.allclose(model.content(even), expect, atol=1e-6)
        correction, base = model.content_parts(even)  # the two parts the objective detaches apart
        assert torch.equal(correction, model.content_extractor(even)) and torch.equal(base, model.f_lr(even)[0])
        assert perturbed().content_parts(even)[1] is None
    lr = torch.rand(2, 3, 9, 7) * 2 - 1   # odd sides: f_LR of the edge-padded image, cut back
    z = model.sample_hf_latent(lr, 0.0)
    ref = copy.deepcopy(model).double().super_resolve(lr, hf_latent=z)
    assert rel_err(model.super_resolve(lr, hf_latent=z), ref) < 1e-4
    direct = perturbed()
    assert rel_err(direct.super_resolve(lr, hf_latent=z), ref) > 1e-3
    with pytest.raises(ValueError, match="extractor"):
        ModelConfig(extractor="bicubic")


def test_a_learnt_ds_blur_downscales_at_its_current_width_in_both_forms(tmp_path):
    """model.ds_blur=learnt: DS's content picture is blurred by the parameter's width, the sampling
    form follows the parameter when it changes, and the width survives saving and loading."""
    import math
    from dataclasses import replace
    from sdflow.checkpoints import save_model
    from sdflow.nets.blur import RADIUS, RATE
    from sdflow.resize import downscale, gaussian_blur
    import sdflow
    model = perturbed(ds_content="picture", ds_content_sigma=0.7, hr_squeeze="lifting", ds_blur="learnt").eval()
    hr = torch.rand(1, 3, 32, 48) * 2 - 1
    d = model.sample_deg_latent(hr, 0.0)

    def expected(sigma):
        with torch.no_grad():
            z_c = model.f_lr(gaussian_blur(downscale(hr, 4), sigma, kernel_size=2 * RADIUS + 1))[0]
            return model.f_lr.inverse(z_c + model.f_deg.inverse(d, z_c)[0])[0]

    first = model.downscale(hr, deg_latent=d)
    assert rel_err(first, expected(float(model.ds_blur.sigma.detach()))) < 1e-4
    with torch.no_grad():
        model.ds_blur.raw.fill_(math.log(1.3) / RATE)
    assert float(model.ds_blur.sigma.detach()) == pytest.approx(1.3)
    second = model.downscale(hr, deg_latent=d)  # the sampling form is rebuilt, not reused
    assert rel_err(second, expected(1.3)) < 1e-4 and rel_err(second, first) > 1e-3
    loaded = sdflow.load(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.config.ds_blur == "learnt" and float(loaded.ds_blur.sigma.detach()) == pytest.approx(1.3)
    assert rel_err(loaded.downscale(hr, deg_latent=d), second) < 1e-6
    with pytest.raises(ValueError, match="ds_blur=learnt needs ds_content=picture"):
        replace(model.config, ds_content="flow")
    with pytest.raises(ValueError, match="ds_blur must be one of"):
        replace(model.config, ds_blur="sometimes")


def test_a_told_extractor_undoes_its_learnt_width_in_both_forms(tmp_path):
    """model.extractor_blur=learnt: E is told a blur width; without one it assumes its learnt width,
    in the reference and in the sampling form (which folds the width into its first layer and
    follows the parameter when it changes), and the width survives saving and loading."""
    import math
    from dataclasses import replace
    from sdflow.checkpoints import save_model
    from sdflow.nets.blur import RATE
    import sdflow
    model = perturbed(ds_content="picture", hr_squeeze="lifting", extractor="residual",
                      extractor_blur="learnt").eval()
    e = model.content_extractor
    lr = torch.rand(2, 3, 12, 20) * 2 - 1
    with torch.no_grad():
        own = e(lr)
        assert torch.equal(own, e(lr, e.blur.sigma))
        # One width per image: each image as if told its width alone.
        both = e(lr, torch.tensor([0.3, 1.1]))
        assert rel_err(both[:1], e(lr[:1], 0.3)) < 1e-6 and rel_err(both[1:], e(lr[1:], 1.1)) < 1e-6
        assert rel_err(both[:1], own[:1]) > 1e-4 and rel_err(both[1:], own[1:]) > 1e-4
        z = model.sample_hf_latent(lr, 0.0)
        ref = model.f_hr.inverse(torch.cat([model.content(lr), model.f_hf.inverse(z, model.content(lr))[0]], 1))[0]
    first = model.super_resolve(lr, hf_latent=z)
    assert rel_err(first, ref) < 1e-4
    with torch.no_grad():
        e.blur.raw.fill_(math.log(1.1) / RATE)
        told = model.content(lr, torch.tensor(1.1))
        ref = model.f_hr.inverse(torch.cat([told, model.f_hf.inverse(z, told)[0]], 1))[0]
    second = model.super_resolve(lr, hf_latent=z)  # the sampling form is rebuilt at the new width
    assert rel_err(second, ref) < 1e-4 and rel_err(second, first) > 1e-4
    loaded = sdflow.load(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.config.extractor_blur == "learnt"
    assert float(loaded.content_extractor.blur.sigma.detach()) == pytest.approx(1.1)
    assert rel_err(loaded.super_resolve(lr, hf_latent=z), second) < 1e-6
    # Only a told E takes a width, and only in its reference form.
    with pytest.raises(ValueError, match="only a told E"):
        perturbed().content_extractor(lr, 0.5)
    with pytest.raises(ValueError, match="only a told E"):
        e.fused_copy(torch.float32, torch.contiguous_format)(lr, 0.5)
    with pytest.raises(ValueError, match="extractor_blur must be one of"):
        replace(model.config, extractor_blur="sometimes")
    with pytest.raises(ValueError, match="extractor_blur=learnt needs a positive"):
        replace(model.config, ds_content_sigma=0.0)
