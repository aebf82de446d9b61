"""Every flow inverts, and every logdet is the log |det| of the layer's Jacobian."""
import pytest
import torch

from sdflow.config import ModelConfig
from sdflow.flows.flows import ConditionalFlow, HRFlow, LRFlow
from sdflow.flows.layers import (ActNorm, AffineCoupling, AffineInjector, Expand, FlowStep, InvConv1x1,
                                 LiftingSqueeze, Squeeze, transition)
from sdflow.flows.mixture import GaussianMixturePrior
from sdflow.model import SDFlow



@pytest.fixture(autouse=True)
def float64():
    # Inversion to 1e-10 needs double precision; restore the default for other test files.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def perturb(module, scale=0.3, seed=0):
    """Random weights everywhere, so that no coupling or injector is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("out_log_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 - 0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * scale * (1 if p.dim() < 2 else p[0].numel() ** -0.5))
    return module.eval()


def jacobian_logdet(layer, x, cond):
    """log |det J| of the layer at each sample of x, by autograd (tiny inputs only)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        ci = None if cond is None else cond[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.view_as(xi), ci)[0].flatten(), xi.flatten())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# name: (layer factory, input shape, condition channels or 0)
LAYERS = {
    "squeeze": (Squeeze, (2, 3, 4, 4), 0),
    "lifting": (LiftingSqueeze, (2, 2, 6, 4), 0),
    "lifting_tiny": (LiftingSqueeze, (1, 1, 2, 2), 0),   # edges replicated: any even size works
    "expand": (Expand, (2, 12, 2, 2), 0),
    "actnorm": (lambda: ActNorm(6), (2, 6, 3, 3), 0),
    "inv_conv": (lambda: InvConv1x1(6), (2, 6, 3, 3), 0),
    "coupling": (lambda: AffineCoupling(5, hidden=8), (2, 5, 3, 3), 0),
    "coupling_cond": (lambda: AffineCoupling(6, cond_channels=5, hidden=8), (2, 6, 4, 4), 5),
    "injector": (lambda: AffineInjector(6, cond_channels=5, hidden=8), (2, 6, 4, 4), 5),
    "step_cond": (lambda: FlowStep(6, cond_channels=5, hidden=8), (2, 6, 4, 4), 5),
    "step_last": (lambda: FlowStep(6, cond_channels=5, coupling=False, hidden=8), (2, 6, 4, 4), 5),
    "transition": (lambda: transition(12), (2, 12, 2, 2), 0),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_inverts_and_logdet_matches_jacobian(name):
    make, shape, cond_channels = LAYERS[name]
    layer = perturb(make())
    cond = torch.randn(shape[0], cond_channels, *shape[2:]) if cond_channels else None
    x = torch.randn(shape)
    y, logdet = layer(x, cond)
    x_back, logdet_inv = layer.inverse(y, cond)
    assert torch.allclose(x_back, x, atol=1e-10, rtol=0)
    assert torch.allclose(logdet_inv, -logdet, atol=1e-10)
    expected = jacobian_logdet(layer, x, cond)
    assert logdet.shape == (shape[0],)
    assert torch.allclose(logdet, expected, atol=1e-8), (logdet, expected)


def tiny_flows():
    return {
        "f_hr": (HRFlow(2, hidden=8), (2, 3, 8, 8), None),
        "f_hr_lifting": (HRFlow(2, hidden=8, squeeze="lifting"), (2, 3, 8, 8), None),
        "f_lr": (LRFlow(2, hidden=8), (2, 3, 4, 4), None),
        "f_hf": (ConditionalFlow(45, 3, 2, 1, squeeze=False, normal_prior=False, cond_channels=8, growth=4,
                                 hidden=8), (2, 45, 2, 2), torch.randn(2, 3, 2, 2)),
        "f_deg": (ConditionalFlow(3, 3, 2, 1, squeeze=True, normal_prior=False, cond_channels=8, growth=4,
                                  hidden=8), (2, 3, 4, 4), torch.randn(2, 3, 4, 4)),
    }


@pytest.mark.parametrize("name", ["f_hr", "f_hr_lifting", "f_lr", "f_hf", "f_deg"])
def test_whole_flow_inverts_and_logdet_matches_jacobian(name):
    flow, shape, cond = tiny_flows()[name]
    perturb(flow)
    x = torch.randn(shape)
    with torch.no_grad():
        z, logdet = flow(x, cond)
        x_back, logdet_inv = flow.inverse(z, cond)
    assert torch.allclose(x_back, x, atol=1e-10, rtol=0)
    assert torch.allclose(logdet_inv, -logdet, atol=1e-9)
    expected = jacobian_logdet(flow, x, cond)
    assert torch.allclose(logdet, expected, atol=1e-7)


def test_normal_prior_adds_standard_normal_density():
    flow = perturb(ConditionalFlow(45, 3, 2, 1, squeeze=False, normal_prior=True, cond_channels=8, growth=4,
                                   hidden=8))
    plain = ConditionalFlow(45, 3, 2, 1, squeeze=False, normal_prior=False, cond_channels=8, growth=4, hidden=8)
    plain.load_state_dict(flow.state_dict())
    plain.eval()
    z, cond = torch.randn(2, 45, 3, 3), torch.randn(2, 3, 3, 3)
    eps, with_prior = flow(z, cond)
    _, without = plain(z, cond)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(eps).flatten(1).sum(1)
    # The authors' density has 1e-6 added to the variance: equal to the exact one to ~1e-6 relative.
    assert torch.allclose(with_prior - without, normal, rtol=1e-5)


def test_sdflow_roundtrips_in_float64():
    model = perturb(SDFlow(ModelConfig.preset("tiny")).double())
    y = torch.rand(2, 3, 16, 24) * 2 - 1
    z_c, z_h, _ = model.encode_hr(y)
    with torch.no_grad():
        assert torch.allclose(model.decode_hr(z_c, z_h), y, atol=1e-10)
        z, _ = model.f_hf(z_h, z_c)
        assert torch.allclose(model.f_hf.inverse(z, z_c)[0], z_h, atol=1e-10)


def test_mixture_log_prob_is_a_density_per_element():
    prior = GaussianMixturePrior(3)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([-2.0, 0.0, 3.0]))
        prior.log_stds.copy_(torch.tensor([-0.5, 0.0, 0.3]))
    grid = torch.linspace(-12, 15, 20001)
    dens = torch.exp(prior.log_prob(grid.view(-1, 1)))
    assert torch.trapezoid(dens, grid).item() == pytest.approx(1.0, abs=1e-4)
    # The sum over elements: two elements give the product of their densities.
    pair = torch.tensor([[0.5, -1.0]])
    assert prior.log_prob(pair).item() == pytest.approx(
        (prior.log_prob(pair[:, :1]) + prior.log_prob(pair[:, 1:])).item())


def test_mixture_samplers():
    prior = GaussianMixturePrior(4)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([-10.0, -3.0, 3.0, 10.0]))
        prior.log_stds.fill_(-3.0)
    g = torch.Generator().manual_seed(0)
    z = prior.sample((64, 2, 4, 4), tau=1.0, sampler="image", generator=g)
    per_image = z.flatten(1)
    # One component per image: each image sits near one mean.
    assert (per_image.std(1) < 0.2).all()
    assert len({round(v) for v in per_image.mean(1).tolist()}) == 4
    z = prior.sample((2, 2, 16, 16), tau=1.0, sampler="element", generator=g)
    assert (z.flatten(1).std(1) > 3).all()
    # A requested subset is honoured (the authors' sampler ignored it).
    z = prior.sample((200, 1, 2, 2), tau=1.0, component=[1, 2], generator=g)
    assert set(z.mean((1, 2, 3)).round().tolist()) == {-3.0, 3.0}
    z = prior.sample((8, 1, 2, 2), tau=0.0, component=3, generator=g)
    assert torch.allclose(z, torch.full_like(z, 10.0))
    with pytest.raises(ValueError):
        prior.sample((1, 1, 2, 2), component=4)
    with pytest.raises(ValueError):
        prior.sample((1, 1, 2, 2), sampler="pixel")


def test_lifting_squeeze_separates_a_picture_from_its_detail():
    """The low band is the 2x2 mean (centred as a bicubic downscale), and with the detail bands
    at 0 the inverse interpolates polynomials up to degree 4 exactly (away from the replicated
    edges), where the checkerboard squeeze's would be a nearest-neighbour upscale."""
    layer = LiftingSqueeze()
    i = torch.arange(32.0)
    u, v = (i - 13.5) / 16, (i - 8.25) / 16
    x = (1 + u - 2 * u ** 2 + u ** 3 - 0.5 * u ** 4)[:, None] * (0.5 - v + v ** 3)[None, :]
    x = torch.stack([x, -x, 2 * x])[None]
    y, logdet = layer(x)
    assert y.shape == (1, 12, 16, 16) and torch.equal(logdet, torch.zeros(1))
    assert torch.allclose(y[:, :3], torch.nn.functional.avg_pool2d(x, 2), atol=1e-12)
    assert y[:, 3:, 2:-2, 2:-2].abs().max() < 1e-12              # a polynomial has no detail
    assert y[:, 3:].abs().max() > 1e-3                            # but the edges do
    flat = y.clone()
    flat[:, 3:] = 0
    back = layer.inverse(flat)[0]
    assert torch.allclose(back[..., 4:-4, 4:-4], x[..., 4:-4, 4:-4], atol=1e-12)
    rough = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(layer.inverse(torch.cat([layer(rough)[0][:, :1], torch.zeros(1, 3, 4, 4)], 1))[0],
                              rough, atol=0.1)


def test_lifting_f_hr_starts_as_the_wavelet_transform():
    """With the lifting squeeze, an untrained f_HR's z_c is (up to ActNorm's affine) the 4x4 mean of
    each colour: the 1x1 convolutions start by leaving the colours' low band alone."""
    flow = HRFlow(2, hidden=8, squeeze="lifting").eval()
    x = torch.randn(2, 3, 16, 16)
    z = flow(x)[0]
    assert torch.allclose(z[:, :3], torch.nn.functional.avg_pool2d(x, 4), atol=1e-10)
    assert not torch.allclose(HRFlow(2, hidden=8)(x)[0][:, :3], torch.nn.functional.avg_pool2d(x, 4), atol=0.1)
    # Its partner f_LR starts as the identity, so f_LR^-1(z_c) starts as that picture too.
    model = SDFlow(ModelConfig(hr_steps=2, lr_steps=2, hf_steps=1, deg_steps=1, coupling_hidden=8,
                               hf_rrdb_blocks=1, deg_rrdb_blocks=1, extractor_blocks=1, hr_squeeze="lifting")).eval()
    small = torch.randn(2, 3, 4, 4)
    assert torch.allclose(model.f_lr(small)[0], small, atol=1e-10)
    assert not torch.allclose(LRFlow(2, hidden=8)(small)[0], small, atol=0.1)
