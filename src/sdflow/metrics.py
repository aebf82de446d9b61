"""Image-quality statistics for SR / downscaling evaluation (numpy, plus a torch PSNR).

Input convention for every numpy function: an image is an H x W x C array (C = 3 for RGB,
or 1) or an H x W array, either uint8 (0..255), uint16 (0..65535) or floating point
already scaled to [0, 1]. Integers are divided by their maximum; floats are taken as
they are (not clipped), so a float image in 0..255 must be divided by 255 first. A torch
tensor is accepted too and must then also be laid out H x W (x C).

Conventions follow the SR literature (BasicSR, the NTIRE/AIM challenges):
* `crop_border` pixels are dropped on every side before measuring; 4 for x4 SR.
* "Y" means ITU-R BT.601 studio-swing luma, Y = 16 + 65.481 R + 128.553 G + 24.966 B
  for R, G, B in [0, 1], giving [16, 235]; PSNR/SSIM on Y use a data range of 255.
  The luma is not rounded to integers.
* SSIM (Wang et al. 2004): 11 x 11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
  population (not sample) covariances, averaged over the windows that lie fully inside
  the image and then over the channels. This equals scikit-image's
  `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "to_float", "rgb_to_y", "mse", "psnr", "psnr_y", "ssim", "ssim_y", "psnr_tensor",
    "noise_sigma", "laplacian_variance", "mean_gradient_magnitude", "diversity",
    "spread_map", "texture_mask",
]

ArrayLike = Union[np.ndarray, "torch.Tensor"]

_BT601 = np.array([65.481, 128.553, 24.966])
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 taps: the window of Wang et al., and what skimage's truncate=3.5 gives
SSIM_K1, SSIM_K2 = 0.01, 0.03
# For a zero-mean Gaussian, median(|x|) = 0.6745 sigma; dividing by it turns a MAD into sigma.
_MAD_TO_SIGMA = 1.0 / 0.6744897501960817


def _as_numpy(img) -> np.ndarray:
    if hasattr(img, "detach") and hasattr(img, "cpu"):  # torch tensor, without importing torch
        img = img.detach().cpu().numpy()
    return np.asarray(img)


def to_float(img: ArrayLike) -> np.ndarray:
    """Image as float64 H x W x C in [0, 1] (see the module doc for accepted inputs)."""
    a = _as_numpy(img)
    if a.dtype == np.uint8:
        a = a.astype(np.float64) / 255.0
    elif a.dtype == np.uint16:
        a = a.astype(np.float64) / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    else:
        raise TypeError(f"unsupported image dtype {a.dtype}; use uint8, uint16 or float in [0, 1]")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected an H x W or H x W x C image, got shape {a.shape}")
    return a


def rgb_to_y(img: ArrayLike) -> np.ndarray:
    """BT.601 luma of an RGB image, H x W float64 in [16, 235]."""
    a = to_float(img)
    if a.shape[2] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels, got {a.shape[2]}")
    return 16.0 + a @ _BT601


def _prepare(a: ArrayLike, b: ArrayLike, crop_border: int, y_channel: bool):
    """Both images as float64 H x W x C plus their data range, cropped, Y if asked."""
    fa, fb = to_float(a), to_float(b)
    if fa.shape != fb.shape:
        raise ValueError(f"image shapes differ: {fa.shape} vs {fb.shape}")
    if y_channel:
        fa, fb, data_range = rgb_to_y(fa)[:, :, None], rgb_to_y(fb)[:, :, None], 255.0
    else:
        data_range = 1.0
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        c = int(crop_border)
        if fa.shape[0] <= 2 * c or fa.shape[1] <= 2 * c:
            raise ValueError(f"crop_border={c} leaves nothing of a {fa.shape[:2]} image")
        fa, fb = fa[c:-c, c:-c], fb[c:-c, c:-c]
    return fa, fb, data_range


def mse(a: ArrayLike, b: ArrayLike, crop_border: int = 0, y_channel: bool = False) -> float:
    """Mean squared error on the [0, 1] scale (on the 0..255 scale if y_channel)."""
    fa, fb, _ = _prepare(a, b, crop_border, y_channel)
    return float(np.mean((fa - fb) ** 2))


def psnr(a: ArrayLike, b: ArrayLike, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB over all pixels and channels; inf for identical images."""
    fa, fb, data_range = _prepare(a, b, crop_border, y_channel)
    err = float(np.mean((fa - fb) ** 2))
    if err == 0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / err)


def psnr_y(a: ArrayLike, b: ArrayLike, crop_border: int = 0) -> float:
    """PSNR on BT.601 luma (the number most SR papers report)."""
    return psnr(a, b, crop_border, y_channel=True)


def _gauss_window() -> np.ndarray:
    t = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / SSIM_SIGMA) ** 2)
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of H x W x C with the 1-D kernel k along H then W."""
    n = k.size
    h, w = x.shape[0] - n + 1, x.shape[1] - n + 1
    rows = sum(k[i] * x[i:i + h] for i in range(n))
    return sum(k[i] * rows[:, i:i + w] for i in range(n))


def _ssim_per_channel(fa: np.ndarray, fb: np.ndarray, data_range: float) -> np.ndarray:
    n = 2 * SSIM_RADIUS + 1
    if fa.shape[0] < n or fa.shape[1] < n:
        raise ValueError(f"SSIM needs at least {n} x {n} pixels after cropping, got {fa.shape[:2]}")
    k = _gauss_window()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(fa, k), _filter_valid(fb, k)
    var_a = _filter_valid(fa * fa, k) - mu_a ** 2
    var_b = _filter_valid(fb * fb, k) - mu_b ** 2
    cov = _filter_valid(fa * fb, k) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(axis=(0, 1))


def ssim(a: ArrayLike, b: ArrayLike, crop_border: int = 0, y_channel: bool = False) -> float:
    """Mean SSIM (see the module doc); 1.0 for identical images."""
    fa, fb, data_range = _prepare(a, b, crop_border, y_channel)
    return float(_ssim_per_channel(fa, fb, data_range).mean())


def ssim_y(a: ArrayLike, b: ArrayLike, crop_border: int = 0) -> float:
    """SSIM on BT.601 luma."""
    return ssim(a, b, crop_border, y_channel=True)


def psnr_tensor(x, y, crop_border: int = 0, y_channel: bool = False,
                data_range: float = 1.0):
    """Per-image PSNR of two [N, C, H, W] torch tensors, returned as a float tensor [N].

    For monitoring during training, where a round trip through numpy would be wasteful.
    `data_range` is the span of the inputs (1.0 for [0, 1], 2.0 for [-1, 1]); with
    y_channel the inputs are first mapped to [0, 1] RGB and the luma to 0..255, exactly
    as `psnr_y` does. Identical images give inf.
    """
    import torch

    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two equal NCHW shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.detach().double(), y.detach().double()
    if crop_border:
        c = int(crop_border)
        x, y = x[..., c:-c, c:-c], y[..., c:-c, c:-c]
    if y_channel:
        w = torch.as_tensor(_BT601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = ((x / data_range) * w).sum(1, keepdim=True)
        y = ((y / data_range) * w).sum(1, keepdim=True)
        data_range = 255.0
    err = (x - y).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / err)


def _luma01(img: ArrayLike) -> np.ndarray:
    """Grey level in [0, 1]: BT.601 weights for RGB, the channel itself otherwise."""
    a = to_float(img)
    if a.shape[2] == 3:
        return (rgb_to_y(a) - 16.0) / 219.0
    return a.mean(axis=2)


def noise_sigma(img: ArrayLike, per_channel: bool = False):
    """Robust estimate of the standard deviation of additive white noise, [0, 1] scale.

    Estimator: each channel is filtered with Immerkaer's mask
        [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]
    (the outer product of two second differences, so it is blind to constant and linear
    intensity ramps); on white noise of std s the response has std 6 s (the mask's L2
    norm). The median absolute response / 0.6745 / 6 is then the noise std. The median,
    unlike Immerkaer's mean, lets edges and texture (a minority of pixels in photos)
    bias the result far less. It still over-estimates on heavily textured images and
    under-estimates where the noise was clipped at 0 or 1; on JPEG'd noise it sees only
    what survived the compression. Returns the mean over channels, or an array of one
    value per channel with per_channel=True.
    """
    a = to_float(img)
    if a.shape[0] < 3 or a.shape[1] < 3:
        raise ValueError(f"noise_sigma needs at least 3 x 3 pixels, got {a.shape[:2]}")
    d = np.array([1.0, -2.0, 1.0])
    r = _filter_valid(a, d)
    sig = np.median(np.abs(r), axis=(0, 1)) * _MAD_TO_SIGMA / 6.0
    return sig if per_channel else float(sig.mean())


def laplacian_variance(img: ArrayLike) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image ([0, 1] scale): sharpness.

    Blur lowers it sharply (it is a high-pass energy); noise raises it, so compare images
    of similar noise level, or read it together with `noise_sigma`.
    """
    g = _luma01(img)
    if g.shape[0] < 3 or g.shape[1] < 3:
        raise ValueError(f"laplacian_variance needs at least 3 x 3 pixels, got {g.shape}")
    lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1])
    return float(lap.var())


def mean_gradient_magnitude(img: ArrayLike) -> float:
    """Mean central-difference gradient magnitude of the grey image, per pixel of [0, 1]."""
    g = _luma01(img)
    if g.shape[0] < 3 or g.shape[1] < 3:
        raise ValueError(f"mean_gradient_magnitude needs at least 3 x 3 pixels, got {g.shape}")
    return float(_gradient_magnitude(g).mean())


def _gradient_magnitude(g: np.ndarray) -> np.ndarray:
    """Central-difference gradient magnitude of a grey image (at least 3 x 3), without its
    one-pixel border."""
    gy = 0.5 * (g[2:, 1:-1] - g[:-2, 1:-1])
    gx = 0.5 * (g[1:-1, 2:] - g[1:-1, :-2])
    return np.sqrt(gx * gx + gy * gy)


def diversity(samples: Union[Sequence[ArrayLike], ArrayLike]) -> float:
    """Mean over pixels (and channels) of the per-pixel std across samples, [0, 1] scale.

    `samples` is a sequence of S >= 2 equally-shaped images, or one array whose first axis
    indexes the samples. The population std (ddof=0) is used, so S identical samples give 0
    (up to rounding). Measures how much a stochastic SR/DS model varies for one input.
    """
    return float(spread_map(samples).mean())


def spread_map(samples: Union[Sequence[ArrayLike], ArrayLike]) -> np.ndarray:
    """Per-pixel std across samples (population, ddof=0), averaged over channels: an H x W map on
    the [0, 1] scale whose mean is `diversity`. Shows *where* samples of one input differ."""
    if isinstance(samples, (list, tuple)):
        stack = np.stack([to_float(s) for s in samples])
    else:
        arr = _as_numpy(samples)
        stack = np.stack([to_float(s) for s in arr])
    if stack.shape[0] < 2:
        raise ValueError("diversity needs at least two samples")
    return stack.std(axis=0).mean(axis=2)


def texture_mask(img: ArrayLike, fraction: float = 0.25, window: int = 7) -> np.ndarray:
    """The `fraction` of pixels with the most local detail: the mean gradient magnitude of the
    grey image over a `window`-pixel box, thresholded at its (1 - fraction) quantile. Diversity
    averaged over a whole photo is diluted by sky and walls, where any sensible sampler agrees;
    samples should differ where there is texture to hallucinate."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    g = _luma01(img)
    h, w = g.shape
    mag = np.zeros((h, w))
    if h >= 3 and w >= 3:
        mag[1:-1, 1:-1] = _gradient_magnitude(g)
    r = window // 2
    integral = np.pad(np.pad(mag, r, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    k = 2 * r + 1
    local = (integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]) / (k * k)
    return local >= np.quantile(local, 1.0 - fraction)
