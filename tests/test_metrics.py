import math

import numpy as np
import pytest
import torch

from sdflow import metrics as M


def smooth_rgb(h=96, w=80, seed=0):
    """Random but smooth image in roughly [0.15, 0.85]: sums of low-frequency waves."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.full((h, w, 3), 0.5)
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(0.5, 4, 2)
            img[:, :, c] += 0.08 * np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 6))
    return img


def test_identical_images():
    a = smooth_rgb()
    assert M.psnr(a, a) == math.inf
    assert M.psnr_y(a, a, crop_border=4) == math.inf
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim_y(a, a, crop_border=4) == pytest.approx(1.0, abs=1e-12)


def test_uint8_and_float_agree():
    a = (smooth_rgb() * 255).round().astype(np.uint8)
    b = np.clip(a.astype(int) + np.random.default_rng(1).integers(-5, 6, a.shape), 0, 255).astype(np.uint8)
    assert M.psnr(a, b) == pytest.approx(M.psnr(a / 255.0, b / 255.0), abs=1e-9)
    assert M.ssim(a, b, 4) == pytest.approx(M.ssim(a / 255.0, b / 255.0, 4), abs=1e-9)
    assert M.psnr(a, b) < M.psnr(a, a)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_psnr_of_gaussian_noise(sigma):
    rng = np.random.default_rng(2)
    a = np.full((256, 256, 3), 0.5)
    b = a + rng.normal(0, sigma, a.shape)  # no clipping: 0.5 +- 10 sigma stays in range
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(1 / sigma ** 2), abs=0.05)


def test_bt601_luma():
    white, black = np.ones((2, 2, 3)), np.zeros((2, 2, 3))
    assert np.allclose(M.rgb_to_y(white), 235.0, atol=1e-9)
    assert np.allclose(M.rgb_to_y(black), 16.0)
    # The weights of R, G and B are each visible as the luma of a pure primary.
    red = np.zeros((1, 1, 3)); red[..., 0] = 1  # noqa: E702
    assert M.rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)
    # A luma PSNR of a grey shift: a difference d in [0,1] becomes 219 d on the 0..255 scale.
    g = np.full((8, 8, 3), 0.4)
    assert M.psnr_y(g, g + 0.01) == pytest.approx(10 * math.log10(255 ** 2 / (219 * 0.01) ** 2))


def test_crop_border_ignores_the_border():
    a = smooth_rgb()
    b = a.copy()
    b[:4] = 0.0
    b[:, -4:] = 1.0
    assert M.psnr(a, b) < 30
    assert M.psnr(a, b, crop_border=4) == math.inf
    assert M.ssim(a, b, crop_border=4) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.psnr(a, b, crop_border=50)


def test_ssim_constant_shift_closed_form():
    # For constant images the window statistics are exact: the variances vanish, so SSIM
    # reduces to the luminance term (2 m n + C1) / (m^2 + n^2 + C1).
    m, c = 0.3, 0.2
    a = np.full((32, 32, 3), m)
    c1 = (0.01 * 1.0) ** 2
    expect = (2 * m * (m + c) + c1) / (m ** 2 + (m + c) ** 2 + c1)
    assert M.ssim(a, a + c) == pytest.approx(expect, rel=1e-10)
    # On a textured image a shift leaves the structure term at exactly 1, so SSIM is the
    # mean of the luminance term over windows: strictly between the two constant bounds.
    t = smooth_rgb()
    s = M.ssim(t, t + c)
    lum = lambda mu: (2 * mu * (mu + c) + c1) / (mu ** 2 + (mu + c) ** 2 + c1)  # noqa: E731
    assert lum(t.min()) < s < lum(t.max())


def test_ssim_drops_with_distortion():
    a = smooth_rgb()
    rng = np.random.default_rng(3)
    s1 = M.ssim(a, a + rng.normal(0, 0.02, a.shape))
    s2 = M.ssim(a, a + rng.normal(0, 0.08, a.shape))
    assert 1 > s1 > s2 > 0


def test_shape_and_type_errors():
    with pytest.raises(ValueError):
        M.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(TypeError):
        M.psnr(np.zeros((8, 8, 3), dtype=np.int32), np.zeros((8, 8, 3), dtype=np.int32))
    with pytest.raises(ValueError):
        M.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))  # smaller than the 11x11 window


def test_psnr_tensor_matches_numpy():
    rng = np.random.default_rng(4)
    imgs = [smooth_rgb(seed=s) for s in range(2)]
    noisy = [np.clip(i + rng.normal(0, 0.03, i.shape), 0, 1) for i in imgs]
    to_t = lambda L: torch.from_numpy(np.stack(L)).permute(0, 3, 1, 2).float()  # noqa: E731
    for y in (False, True):
        got = M.psnr_tensor(to_t(imgs), to_t(noisy), crop_border=4, y_channel=y)
        ref = [M.psnr(i.astype(np.float32), n.astype(np.float32), 4, y) for i, n in zip(imgs, noisy)]
        assert got.shape == (2,)
        assert np.allclose(got.numpy(), ref, atol=1e-4)
    # [-1, 1] inputs with data_range=2 give the same numbers.
    got = M.psnr_tensor(to_t(imgs) * 2 - 1, to_t(noisy) * 2 - 1, 4, True, data_range=2.0)
    assert np.allclose(got.numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_noise_estimator_recovers_sigma(sigma):
    rng = np.random.default_rng(5)
    clean = smooth_rgb(160, 160)
    noisy = clean + rng.normal(0, sigma, clean.shape)
    est = M.noise_sigma(noisy)
    assert abs(est - sigma) / sigma < 0.15, est
    per = M.noise_sigma(noisy, per_channel=True)
    assert per.shape == (3,) and np.all(np.abs(per - sigma) / sigma < 0.15)
    assert M.noise_sigma(clean) < 0.2 * sigma  # a smooth image reads as nearly noise-free


def test_noise_estimator_robust_to_an_edge():
    # A hard step edge through the middle inflates a mean-based estimator; the median not.
    rng = np.random.default_rng(6)
    img = np.full((128, 128, 1), 0.3)
    img[:, 64:] = 0.7
    noisy = img + rng.normal(0, 0.03, img.shape)
    assert abs(M.noise_sigma(noisy) - 0.03) / 0.03 < 0.15


def test_sharpness_statistics_fall_with_blur():
    from sdflow.resize import gaussian_blur

    rng = np.random.default_rng(7)
    sharp = np.clip(smooth_rgb() + (rng.random((96, 80, 1)) > 0.5) * 0.2, 0, 1)
    t = torch.from_numpy(sharp).permute(2, 0, 1)[None]
    blurred = gaussian_blur(t, 1.5)[0].permute(1, 2, 0).numpy()
    assert M.laplacian_variance(blurred) < 0.2 * M.laplacian_variance(sharp)
    assert M.mean_gradient_magnitude(blurred) < 0.7 * M.mean_gradient_magnitude(sharp)
    # A linear ramp has a known gradient and no curvature.
    ramp = np.tile(np.linspace(0, 1, 101)[None, :, None], (20, 1, 1))
    assert M.mean_gradient_magnitude(ramp) == pytest.approx(0.01)
    assert M.laplacian_variance(ramp) == pytest.approx(0.0, abs=1e-20)


def test_diversity():
    a = smooth_rgb(32, 32)
    assert M.diversity([a, a, a]) == pytest.approx(0.0, abs=1e-12)
    # Two samples a +- d differ from their mean by d everywhere: per-pixel std is d.
    d = 0.05
    assert M.diversity([a - d, a + d]) == pytest.approx(d)
    rng = np.random.default_rng(8)
    stack = a[None] + rng.normal(0, 0.1, (200, 32, 32, 3))
    assert M.diversity(stack) == pytest.approx(0.1, rel=0.02)
    with pytest.raises(ValueError):
        M.diversity([a])


def test_spread_map_locates_where_samples_differ():
    a = smooth_rgb(32, 32)
    b = a.copy()
    b[:, 16:] += 0.1                      # samples differ on the right half only
    spread = M.spread_map([a, b])
    assert spread.shape == (32, 32)
    assert np.allclose(spread[:, :16], 0) and np.allclose(spread[:, 16:], 0.05)
    assert spread.mean() == pytest.approx(M.diversity([a, b]))


def test_texture_mask_picks_the_detailed_part():
    rng = np.random.default_rng(3)
    img = np.full((64, 64, 3), 0.5)
    img[:, 40:] += rng.normal(0, 0.1, (64, 24, 3))  # texture on the right, flat on the left
    mask = M.texture_mask(img, fraction=0.25)
    assert mask.mean() == pytest.approx(0.25, abs=0.03)
    assert mask[:, 40:].mean() > 0.6 and not mask[:, :30].any()
    with pytest.raises(ValueError, match="fraction"):
        M.texture_mask(img, fraction=0)


skimage_metrics = pytest.importorskip(
    "skimage.metrics", reason="scikit-image (test extra) is needed for the reference comparison")


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_scikit_image(seed):
    rng = np.random.default_rng(10 + seed)
    a = smooth_rgb(70, 90, seed)
    b = np.clip(a + 0.05 * np.sin(np.arange(90) / 3.0)[None, :, None]
                + rng.normal(0, 0.02, a.shape), 0, 1)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert M.psnr(a, b) == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)
    assert M.ssim(a, b) == pytest.approx(
        skimage_metrics.structural_similarity(a, b, channel_axis=-1, data_range=1.0, **kw), abs=1e-4)
    # Y channel with the x4 border crop, against skimage fed the same luma on 0..255.
    ya, yb = M.rgb_to_y(a)[4:-4, 4:-4], M.rgb_to_y(b)[4:-4, 4:-4]
    assert M.psnr_y(a, b, 4) == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(ya, yb, data_range=255.0), abs=1e-4)
    assert M.ssim_y(a, b, 4) == pytest.approx(
        skimage_metrics.structural_similarity(ya, yb, data_range=255.0, **kw), abs=1e-4)
    # uint8 input with its natural range.
    a8, b8 = (a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8)
    assert M.ssim(a8, b8) == pytest.approx(
        skimage_metrics.structural_similarity(a8, b8, channel_axis=-1, data_range=255, **kw), abs=1e-4)
