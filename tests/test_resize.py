import math

import pytest
import torch

from sdflow.resize import downscale, gaussian_blur, gaussian_kernel1d, resize, upscale


def smooth_image(n=1, c=3, h=64, w=48, seed=0, dtype=torch.float32):
    # A few low-frequency sinusoids: band-limited well below the x4 Nyquist rate, so a
    # down/up round trip should lose almost nothing.
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h, dtype=torch.float64).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w, dtype=torch.float64).view(1, 1, 1, w)
    img = torch.zeros(n, c, h, w, dtype=torch.float64)
    for _ in range(3):
        a, fy, fx, ph = torch.rand(4, generator=g, dtype=torch.float64)
        img = img + 0.15 * a * torch.cos(2 * math.pi * (1.5 * fy * yy + 1.5 * fx * xx) + 6 * ph)
    return (0.5 + img).to(dtype)


@pytest.mark.parametrize("kernel", ["bicubic", "bilinear", "area"])
@pytest.mark.parametrize("antialias", [True, False])
def test_downscale_constant_stays_constant(kernel, antialias):
    x = torch.full((2, 3, 40, 36), 0.37)
    y = downscale(x, 4, kernel, antialias)
    assert y.shape == (2, 3, 10, 9)
    assert torch.allclose(y, torch.full_like(y, 0.37), atol=1e-6)


@pytest.mark.parametrize("kernel", ["bicubic", "bilinear", "area"])
def test_downscale_shapes_ceil(kernel):
    x = torch.rand(1, 3, 33, 30)
    assert downscale(x, 4, kernel).shape == (1, 3, 9, 8)
    assert downscale(x, 2, kernel).shape == (1, 3, 17, 15)


@pytest.mark.parametrize("kernel", ["bicubic", "area"])
def test_downscale_keeps_the_x4_grid_when_the_size_is_not_a_multiple(kernel):
    """LR pixel i covers HR pixels 4i..4i+3 whatever H is (MATLAB's imresize(0.25) grid, and the
    grid of SDFlow.downscale), so the LR of a 161-row image is the LR of its first 160 rows plus
    a partial row: away from the last rows the two agree exactly. A grid stretched to 161/41
    (what resizing to the size alone does) misplaces every pixel but the first."""
    x = torch.rand(1, 3, 161, 122, dtype=torch.float64)
    whole, cropped = downscale(x, 4, kernel), downscale(x[..., :160, :120], 4, kernel)
    assert whole.shape == (1, 3, 41, 31)
    assert torch.equal(whole[..., :37, :27], cropped[..., :37, :27])
    stretched = resize(x, (41, 31), kernel)
    assert (stretched[..., :37, :27] - cropped[..., :37, :27]).abs().max() > 1e-2


def test_area_is_block_mean():
    x = torch.rand(1, 2, 8, 12, dtype=torch.float64)
    y = downscale(x, 4, "area")
    expected = x.view(1, 2, 2, 4, 3, 4).mean(dim=(3, 5))
    assert torch.allclose(y, expected)


def test_antialias_suppresses_aliasing():
    # Period-4 dots placed exactly where a x4 point-sampling kernel looks: without a
    # low-pass the LR sees only the dots (value ~1), with it the LR sees their mean (1/4).
    i = torch.arange(32)
    on = (i % 4 == 1) | (i % 4 == 2)
    x = (on.view(-1, 1) & on.view(1, -1)).float()[None, None]
    for kernel in ("bicubic", "bilinear"):
        aa = downscale(x, 4, kernel, antialias=True)
        assert (aa - 0.25).abs().max() < 0.05
        raw = downscale(x, 4, kernel, antialias=False)
        assert raw.min() > 0.9


def test_upscale_shapes():
    x = torch.rand(2, 3, 7, 5)
    for k in ("bicubic", "bilinear", "nearest"):
        assert upscale(x, 4, k).shape == (2, 3, 28, 20)


def test_roundtrip_on_smooth_image_is_close():
    x = smooth_image()
    y = upscale(downscale(x, 4), 4)
    assert y.shape == x.shape
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    err = (y - x)[inner].abs().max().item()
    assert err < 0.02, err
    # ...whereas a random image does not survive, so the check above is not vacuous.
    r = torch.rand_like(x)
    assert (upscale(downscale(r, 4), 4) - r)[inner].abs().mean() > 0.1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_preserved(dtype):
    x = smooth_image(dtype=dtype)
    for y in (downscale(x), upscale(x[..., :16, :12]), gaussian_blur(x, 1.0)):
        assert y.dtype == dtype
    ref = downscale(smooth_image(dtype=torch.float64))
    tol = 1e-10 if dtype == torch.float64 else 2e-2
    assert torch.allclose(downscale(x).double(), ref, atol=tol)


def test_gradients_flow():
    x = smooth_image().requires_grad_(True)
    loss = (upscale(downscale(x), 4) - 0.5).pow(2).sum() + gaussian_blur(x, 2.0).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for kernel in ("bilinear", "area"):
        x.grad = None
        downscale(x, 4, kernel).sum().backward()
        # Every input pixel contributes to some output pixel; the total weight equals the
        # number of output pixels because each output is a convex combination.
        assert torch.allclose(x.grad.sum(), torch.tensor(3 * 16 * 12.0), rtol=1e-4)


def test_gaussian_kernel_normalised_and_symmetric():
    for s in (0.5, 1.5, 3.2):
        k = gaussian_kernel1d(s, dtype=torch.float64)
        assert k.numel() % 2 == 1
        assert torch.isclose(k.sum(), torch.tensor(1.0, dtype=torch.float64))
        assert torch.allclose(k, k.flip(0))
        # The discrete variance approximates sigma^2 once the kernel is sampled finely enough.
        t = torch.arange(k.numel(), dtype=torch.float64) - (k.numel() - 1) / 2
        if s >= 1.5:
            assert abs((k * t * t).sum().item() - s * s) / (s * s) < 0.02


def test_gaussian_blur_properties():
    x = torch.full((1, 3, 20, 20), 0.25)
    assert torch.allclose(gaussian_blur(x, 2.0), x, atol=1e-6)  # reflect: no dark border
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    b = gaussian_blur(img, 1.5)
    assert b.shape == img.shape
    assert b.var() < 0.5 * img.var()  # low-pass removes most of white noise's variance
    assert torch.allclose(b.mean(), img.mean(), atol=0.02)
    assert gaussian_blur(img, 0) is img
    tiny = torch.rand(1, 1, 3, 3)
    assert gaussian_blur(tiny, 3.0).shape == tiny.shape  # replicate fallback
    # An impulse spreads into the kernel's outer product.
    imp = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    imp[..., 7, 7] = 1
    k = gaussian_kernel1d(1.0, 7, dtype=torch.float64)
    out = gaussian_blur(imp, 1.0, kernel_size=7)[0, 0, 4:11, 4:11]
    assert torch.allclose(out, torch.outer(k, k))


def test_bad_arguments():
    with pytest.raises(ValueError):
        downscale(torch.rand(1, 3, 8, 8), 4, "lanczos")
    with pytest.raises(ValueError):
        downscale(torch.rand(3, 8, 8))
    with pytest.raises(TypeError):
        downscale(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError):
        resize(torch.rand(1, 3, 8, 8), (0, 4))
    with pytest.raises(ValueError):
        gaussian_kernel1d(1.0, 4)
