"""Seeded simulation of real-world x4 degradations (HR photo -> realistic LR).

A first-order chain is blur -> x4 downscale -> noise -> JPEG. The second-order presets run
that chain twice, in the spirit of Real-ESRGAN (Wang et al. 2021) and BSRGAN (Zhang et al.
2021): the first pass shrinks by a random factor s1 < 4, the second resizes to exactly
H/4 x W/4, so the total factor is exactly 4 whatever s1 was. Every random choice comes
from one numpy Generator, so the output is a pure function of (image, preset, seed).

Pieces, each usable on its own:
* blur kernels: isotropic / anisotropic Gaussian, generalised Gaussian exp(-d^beta/2) and
  plateau 1/(1+d^beta), where d is the Mahalanobis distance of an (optionally rotated)
  elliptic covariance; all normalised to sum 1;
* resize with a random bicubic / bilinear / area kernel (`sdflow.resize`);
* additive Gaussian noise (independent per RGB channel, or one luminance-only field
  shared by the channels) and Poisson (shot) noise, parametrised by the photon count at
  white so its std grows as sqrt(intensity), as a sensor's does;
* JPEG through Pillow in memory.

Intensities are float [0, 1] and clipped after each noise / JPEG step, as a camera would.
The `camera` preset is another family: a small camera's pipeline (Bayer mosaic and
demosaicing, noise in linear light, tone curve, sharpening, 4:2:0 JPEG; `CameraPreset`).
Not simulated (yet): sinc ringing filters, video codecs.

Determinism over a folder: `file_rng(seed, relpath)` derives each file's generator from
the global seed and the file's path relative to the folder, so a file's LR does not
depend on which other files are processed, in which order, or in how many processes.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

import numpy as np

# torch (and sdflow.resize, which needs it) are imported where used: the presets and seeds
# here are read by the CLI's argument parser, which must stay quick to load.
if TYPE_CHECKING:
    import torch

__all__ = [
    "SCALE", "KERNEL_TYPES", "StagePreset", "DegradationPreset", "CameraPreset", "PRESETS", "get_preset",
    "bayer_mask", "demosaic_bilinear",
    "file_seed", "file_rng", "crop_to_multiple", "random_kernel", "gaussian_kernel2d",
    "generalized_kernel2d", "plateau_kernel2d", "apply_kernel", "add_gaussian_noise",
    "add_poisson_noise", "jpeg", "degrade", "sample_images",
]

SCALE = 4
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
Range = Tuple[float, float]


@dataclass(frozen=True)
class StagePreset:
    """Ranges of one blur -> resize -> noise -> JPEG pass; values are drawn uniformly.

    Noise sigmas are on the [0, 1] intensity scale (5/255 is ~0.02). `poisson_peak` is the
    photon count a white pixel collects, drawn log-uniformly: 30 is a very noisy night
    shot, 10^4 a clean daylight one.
    """
    blur_prob: float = 0.0
    # Relative weights of KERNEL_TYPES, in that order.
    kernel_weights: Tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    kernel_size: Tuple[int, int] = (7, 21)           # odd sizes, inclusive
    sigma: Range = (0.2, 3.0)                       # Gaussian std along each axis, HR pixels
    beta_generalized: Range = (0.5, 4.0)
    beta_plateau: Range = (1.0, 2.0)
    resize_kernels: Tuple[str, ...] = ("bicubic", "bilinear", "area")
    noise_prob: float = 0.0
    gaussian_noise_prob: float = 0.5                # otherwise Poisson
    noise_sigma: Range = (1 / 255, 30 / 255)
    poisson_peak: Range = (30.0, 1e4)
    gray_noise_prob: float = 0.4                    # luminance-only instead of RGB noise
    jpeg_prob: float = 0.0
    jpeg_quality: Tuple[int, int] = (30, 95)        # inclusive


@dataclass(frozen=True)
class DegradationPreset:
    """A named degradation: one stage (first order) or two (second order)."""
    name: str
    description: str
    first: StagePreset
    second: Optional[StagePreset] = None
    # Shrink factor of the first pass when there is a second one; the second pass does the
    # rest, so the product is exactly SCALE.
    first_scale: Range = (1.5, 2.5)

    def as_dict(self) -> dict:
        return asdict(self)


_BICUBIC = StagePreset(resize_kernels=("bicubic",))

_MILD = StagePreset(
    blur_prob=0.8, kernel_weights=(0.7, 0.3, 0, 0, 0, 0), sigma=(0.2, 1.5),
    noise_prob=0.7, noise_sigma=(1 / 255, 5 / 255), poisson_peak=(2e3, 2e4),
    jpeg_prob=0.6, jpeg_quality=(75, 95),
)

_REALISTIC_1 = StagePreset(
    blur_prob=1.0, sigma=(0.2, 2.5),
    noise_prob=1.0, noise_sigma=(1 / 255, 15 / 255), poisson_peak=(200.0, 1e4),
    jpeg_prob=1.0, jpeg_quality=(60, 95),
)
_REALISTIC_2 = StagePreset(
    blur_prob=0.7, sigma=(0.2, 1.2),
    noise_prob=0.8, noise_sigma=(1 / 255, 10 / 255), poisson_peak=(500.0, 1e4),
    jpeg_prob=1.0, jpeg_quality=(60, 95),
)

_SEVERE_1 = StagePreset(
    blur_prob=1.0, sigma=(0.2, 3.0),
    noise_prob=1.0, noise_sigma=(5 / 255, 30 / 255), poisson_peak=(30.0, 2e3),
    jpeg_prob=1.0, jpeg_quality=(30, 80),
)
_SEVERE_2 = StagePreset(
    blur_prob=0.8, sigma=(0.2, 1.5),
    noise_prob=1.0, noise_sigma=(3 / 255, 25 / 255), poisson_peak=(50.0, 3e3),
    jpeg_prob=1.0, jpeg_quality=(30, 80),
)

@dataclass(frozen=True)
class CameraPreset:
    """A small camera taking the x4 LR picture of the scene the HR photo shows: a different
    family from the blur -> resize -> noise -> JPEG chains above (written as the held-out
    family of docs/benchmark.md, before any training recipe was tuned on it).

    In linear light: lens blur, x4 area sampling (the sensor's pixels integrate the light),
    white-balance and exposure error, an RGGB Bayer mosaic with shot and read noise; then
    bilinear demosaicing (colour fringes and zippering at edges), the sRGB curve, a contrast
    tone curve, unsharp-mask sharpening (halos, amplified noise) and JPEG with 4:2:0 chroma
    subsampling. Values are drawn uniformly from each range (`shot_peak` log-uniformly).
    """
    name: str
    description: str
    lens_sigma: Range = (0.6, 2.0)          # Gaussian std, HR pixels; anisotropic, rotated
    wb_gain: Range = (0.92, 1.08)           # red and blue gains relative to green
    exposure: Range = (0.85, 1.15)
    shot_peak: Range = (300.0, 3000.0)      # photons at white (per LR pixel)
    read_sigma: Range = (0.5 / 255, 3 / 255)
    tone: Range = (0.0, 0.4)                # blend towards smoothstep (an S-curve)
    sharpen_amount: Range = (0.3, 1.2)
    sharpen_sigma: Range = (0.8, 1.5)       # LR pixels
    jpeg_quality: Tuple[int, int] = (50, 90)

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: Dict[str, Union[DegradationPreset, CameraPreset]] = {p.name: p for p in (
    DegradationPreset("bicubic", "clean x4 bicubic (antialiased, as MATLAB imresize); no blur, "
                      "noise or compression", _BICUBIC),
    DegradationPreset("mild", "first order: light Gaussian blur, random resize kernel, "
                      "faint noise, high-quality JPEG", _MILD),
    DegradationPreset("realistic", "second order, moderate: all kernel types, Gaussian or "
                      "Poisson noise up to 15/255, JPEG 60-95, twice", _REALISTIC_1, _REALISTIC_2),
    DegradationPreset("severe", "second order, Real-ESRGAN-strength: strong blur, noise up to "
                      "30/255, JPEG 30-80, twice", _SEVERE_1, _SEVERE_2),
    CameraPreset("camera", "a small camera: lens blur, Bayer mosaic with shot and read noise, "
                 "demosaicing, tone curve, sharpening halos, 4:2:0 JPEG 50-90"),
)}


def get_preset(preset: Union[str, DegradationPreset, CameraPreset]) -> Union[DegradationPreset, CameraPreset]:
    if isinstance(preset, (DegradationPreset, CameraPreset)):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------------------------- seeds

def file_seed(seed: int, relpath: Union[str, PurePath]) -> int:
    """64-bit seed for one file, from the global seed and its path relative to the folder.

    A cryptographic hash (not Python's salted `hash`) so it is stable across runs and
    machines; the path is normalised to forward slashes so Windows agrees with POSIX.
    """
    key = f"{int(seed)}\0{PurePath(relpath).as_posix()}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def file_rng(seed: int, relpath: Union[str, PurePath]) -> np.random.Generator:
    return np.random.default_rng(file_seed(seed, relpath))


def crop_to_multiple(img: np.ndarray, multiple: int = SCALE) -> np.ndarray:
    """Drop the last H % multiple rows and W % multiple columns (top-left anchored, so
    pixel (0, 0) keeps its place and HR/LR grids stay aligned)."""
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


# -------------------------------------------------------------------------------- kernels

def _mahalanobis2(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Squared Mahalanobis distance of each tap from the centre for a rotated ellipse."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    r = size // 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y  # coordinates along the ellipse's own axes
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(k: np.ndarray) -> np.ndarray:
    return k / k.sum()


def gaussian_kernel2d(size: int, sigma_x: float, sigma_y: Optional[float] = None,
                      theta: float = 0.0) -> np.ndarray:
    """Gaussian blur kernel; sigma_y=None makes it isotropic. Sums to 1."""
    d2 = _mahalanobis2(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(np.exp(-0.5 * d2))


def generalized_kernel2d(size: int, sigma_x: float, sigma_y: Optional[float] = None,
                         theta: float = 0.0, beta: float = 1.0) -> np.ndarray:
    """Generalised Gaussian exp(-0.5 d^(2 beta)): beta < 1 heavy-tailed, > 1 box-like."""
    d2 = _mahalanobis2(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(np.exp(-0.5 * d2 ** beta))


def plateau_kernel2d(size: int, sigma_x: float, sigma_y: Optional[float] = None,
                     theta: float = 0.0, beta: float = 1.5) -> np.ndarray:
    """Plateau kernel 1 / (1 + d^(2 beta)): flat top, polynomial tails (defocus-like)."""
    d2 = _mahalanobis2(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(1.0 / (1.0 + d2 ** beta))


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _choice(rng: np.random.Generator, options, weights=None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def random_kernel(rng: np.random.Generator, stage: StagePreset = StagePreset()) -> Tuple[np.ndarray, dict]:
    """Draw a blur kernel from a stage's ranges; returns (kernel, parameters)."""
    kind = _choice(rng, KERNEL_TYPES, stage.kernel_weights)
    lo, hi = stage.kernel_size
    size = 2 * int(rng.integers(lo // 2, hi // 2 + 1)) + 1
    sx = _uniform(rng, stage.sigma)
    if kind.endswith("aniso"):
        sy = _uniform(rng, stage.sigma)
        theta = _uniform(rng, (-math.pi, math.pi))
    else:
        sy, theta = sx, 0.0
    # A wide kernel cut to a small support is a box filter in disguise; grow the support
    # to +-3 sigma where the size range allows it.
    size = max(size, min(2 * (hi // 2) + 1, 2 * math.ceil(3 * max(sx, sy)) + 1))
    params = {"type": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind.startswith("generalized"):
        params["beta"] = _uniform(rng, stage.beta_generalized)
        k = generalized_kernel2d(size, sx, sy, theta, params["beta"])
    elif kind.startswith("plateau"):
        params["beta"] = _uniform(rng, stage.beta_plateau)
        k = plateau_kernel2d(size, sx, sy, theta, params["beta"])
    else:
        k = gaussian_kernel2d(size, sx, sy, theta)
    return k, params


def apply_kernel(x: "torch.Tensor", kernel: np.ndarray) -> "torch.Tensor":
    """Convolve [N,C,H,W] with a 2-D kernel, same size out, reflect padding."""
    import torch
    import torch.nn.functional as F

    k = torch.as_tensor(kernel, dtype=x.dtype, device=x.device)
    kh, kw = k.shape
    C, H, W = x.shape[1:]
    ph, pw = kh // 2, kw // 2
    # Reflection needs the pad to be smaller than the side; tiny images replicate instead.
    mode = "reflect" if ph < H and pw < W else "replicate"
    y = F.pad(x, (pw, pw, ph, ph), mode=mode)
    # conv2d correlates; the flip makes it a convolution for asymmetric kernels too (the
    # ones drawn here are point-symmetric, for which both agree).
    return F.conv2d(y, k.flip(0, 1).expand(C, 1, kh, kw), groups=C)


# ---------------------------------------------------------------------------------- noise

def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


def add_gaussian_noise(img: np.ndarray, sigma: float, gray: bool,
                       rng: np.random.Generator) -> np.ndarray:
    """img: H x W x 3 float in [0, 1]. Gray noise is one field added to all channels."""
    shape = img.shape[:2] + (1,) if gray else img.shape
    return np.clip(img + rng.normal(0.0, sigma, shape), 0.0, 1.0)


def add_poisson_noise(img: np.ndarray, peak: float, gray: bool,
                      rng: np.random.Generator) -> np.ndarray:
    """Shot noise: photon counts ~ Poisson(intensity * peak), rescaled by 1 / peak.

    Gray: the luminance's shot noise is added to every channel, so colours stay put.
    """
    if gray:
        y = np.clip(_luma(img), 0.0, 1.0)
        noise = rng.poisson(y * peak) / peak - y
        return np.clip(img + noise[..., None], 0.0, 1.0)
    return np.clip(rng.poisson(np.clip(img, 0.0, 1.0) * peak) / peak, 0.0, 1.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip through Pillow in memory; float [0, 1] in and out (8-bit inside)."""
    from PIL import Image

    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    # Pillow's default 4:2:0 chroma subsampling is kept: cameras and the web use it too,
    # and the colour bleeding it causes is part of what real LR photos look like.
    Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


# --------------------------------------------------------------------------------- chains

def _to_tensor(img: np.ndarray) -> "torch.Tensor":
    import torch

    # float32 is ample for 8-bit images and makes the big blur convolutions several times
    # faster than float64 on CPU.
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None]


def _to_numpy(x: "torch.Tensor") -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy().astype(np.float64)


def _draw_stage(stage: StagePreset, rng: np.random.Generator) -> dict:
    """All random parameters of one pass, drawn whether or not a step is enabled, so the
    stream position (and hence every later draw) does not depend on the coin flips."""
    kernel, kparams = random_kernel(rng, stage)
    lo, hi = stage.poisson_peak
    d = {
        "blur": rng.random() < stage.blur_prob,
        "kernel": kernel, "kernel_params": kparams,
        "resize": _choice(rng, stage.resize_kernels),
        "noise": rng.random() < stage.noise_prob,
        "gaussian": rng.random() < stage.gaussian_noise_prob,
        "gray": bool(rng.random() < stage.gray_noise_prob),
        "sigma": _uniform(rng, stage.noise_sigma),
        "peak": float(math.exp(_uniform(rng, (math.log(lo), math.log(hi))))),
        "jpeg": rng.random() < stage.jpeg_prob,
        "quality": int(rng.integers(stage.jpeg_quality[0], stage.jpeg_quality[1] + 1)),
    }
    return d


def _run_stage(img: np.ndarray, stage: StagePreset, size: Tuple[int, int],
               rng: np.random.Generator) -> Tuple[np.ndarray, dict]:
    """One blur -> resize-to-`size` -> noise -> JPEG pass on H x W x 3 float64."""
    from sdflow.resize import resize

    d = _draw_stage(stage, rng)
    p: dict = {}
    x = _to_tensor(img)
    if d["blur"]:
        p["blur"] = d["kernel_params"]
        x = apply_kernel(x, d["kernel"])
    p["resize"] = d["resize"]
    x = resize(x, size, d["resize"], antialias=True)
    img = np.clip(_to_numpy(x), 0.0, 1.0)
    if d["noise"]:
        if d["gaussian"]:
            p["noise"] = {"type": "gaussian", "sigma": d["sigma"], "gray": d["gray"]}
            img = add_gaussian_noise(img, d["sigma"], d["gray"], rng)
        else:
            p["noise"] = {"type": "poisson", "peak": d["peak"], "gray": d["gray"]}
            img = add_poisson_noise(img, d["peak"], d["gray"], rng)
    if d["jpeg"]:
        p["jpeg"] = d["quality"]
        img = jpeg(img, d["quality"])
    return img, p


# ------------------------------------------------------------------------------- camera

def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def bayer_mask(h: int, w: int) -> np.ndarray:
    """H x W x 3 0/1 mask of an RGGB colour filter array: R at (even, even), B at (odd, odd)."""
    m = np.zeros((h, w, 3))
    m[0::2, 0::2, 0] = 1
    m[0::2, 1::2, 1] = 1
    m[1::2, 0::2, 1] = 1
    m[1::2, 1::2, 2] = 1
    return m


def demosaic_bilinear(raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each missing colour sample as the mean of its nearest recorded neighbours of that
    colour (normalised convolution, so borders need no special case)."""
    import torch
    import torch.nn.functional as F

    k = torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], dtype=torch.float64)
    planes = torch.from_numpy((raw * mask).transpose(2, 0, 1).copy())[:, None]
    weights = torch.from_numpy(mask.transpose(2, 0, 1).copy())[:, None]
    num = F.conv2d(F.pad(planes, (1, 1, 1, 1), mode="reflect"), k[None, None])
    den = F.conv2d(F.pad(weights, (1, 1, 1, 1), mode="reflect"), k[None, None])
    out = (num / den)[:, 0].numpy().transpose(1, 2, 0)
    return np.where(mask > 0, raw, out)  # recorded samples stay as they were


def _run_camera(img: np.ndarray, cam: CameraPreset, size: Tuple[int, int],
                rng: np.random.Generator) -> Tuple[np.ndarray, dict]:
    from sdflow.resize import gaussian_blur, resize

    # Every number is drawn up front, in a fixed order, as _draw_stage does.
    sx, sy = _uniform(rng, cam.lens_sigma), _uniform(rng, cam.lens_sigma)
    theta = _uniform(rng, (-math.pi, math.pi))
    gains = np.array([_uniform(rng, cam.wb_gain), 1.0, _uniform(rng, cam.wb_gain)])
    exposure = _uniform(rng, cam.exposure)
    lo, hi = cam.shot_peak
    peak = float(math.exp(_uniform(rng, (math.log(lo), math.log(hi)))))
    read = _uniform(rng, cam.read_sigma)
    tone = _uniform(rng, cam.tone)
    amount, sharp_sigma = _uniform(rng, cam.sharpen_amount), _uniform(rng, cam.sharpen_sigma)
    quality = int(rng.integers(cam.jpeg_quality[0], cam.jpeg_quality[1] + 1))
    p = {"lens": {"sigma_x": sx, "sigma_y": sy, "theta": theta}, "wb_gain": gains.tolist(),
         "exposure": exposure, "shot_peak": peak, "read_sigma": read, "tone": tone,
         "sharpen": {"amount": amount, "sigma": sharp_sigma}, "jpeg": quality}

    lin = _srgb_to_linear(img)
    size_k = 2 * math.ceil(3 * max(sx, sy)) + 1
    x = apply_kernel(_to_tensor(lin), gaussian_kernel2d(size_k, sx, sy, theta))
    x = resize(x, size, "area", antialias=True)
    lin = np.clip(_to_numpy(x), 0.0, 1.0) * gains * exposure
    mask = bayer_mask(*size)
    raw = (np.clip(lin, 0.0, 1.0) * mask).sum(axis=2, keepdims=True)
    raw = rng.poisson(raw * peak) / peak + rng.normal(0.0, read, raw.shape)
    rgb = demosaic_bilinear(np.clip(raw, 0.0, 1.0) * np.ones(3), mask)
    out = _linear_to_srgb(rgb)
    out = (1 - tone) * out + tone * (out * out * (3 - 2 * out))
    blurred = _to_numpy(gaussian_blur(_to_tensor(out), sharp_sigma))
    out = np.clip(out + amount * (out - blurred), 0.0, 1.0)
    return jpeg(out, quality), p


def degrade(hr, preset: Union[str, DegradationPreset, CameraPreset] = "realistic",
            rng: Union[np.random.Generator, int, None] = None, *, return_params: bool = False):
    """Simulate a real-world x4 LR of an RGB photo.

    hr: H x W x 3 uint8, or float in [0, 1]. It is first cropped (top-left anchored) to a
    multiple of 4, and the result is exactly (H // 4) x (W // 4) x 3, of the input's kind:
    uint8 for uint8, float32 in [0, 1] otherwise. rng: a numpy Generator, or a seed.
    With return_params=True, returns (lr, params), params recording every random draw.
    """
    preset = get_preset(preset)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    a = np.asarray(hr)
    is_u8 = a.dtype == np.uint8
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {a.shape}")
    if is_u8:
        img = a.astype(np.float64) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        img = np.clip(a.astype(np.float64), 0.0, 1.0)
    else:
        raise TypeError(f"expected uint8 or float in [0, 1], got {a.dtype}")
    img = crop_to_multiple(img, SCALE)
    H, W = img.shape[:2]
    if H < SCALE or W < SCALE:
        raise ValueError(f"image too small for x{SCALE}: {a.shape[:2]}")
    final = (H // SCALE, W // SCALE)
    params: dict = {"preset": preset.name, "hr_size": [H, W]}

    if isinstance(preset, CameraPreset):
        img, params["camera"] = _run_camera(img, preset, final, rng)
    elif preset.second is None:
        img, params["stage1"] = _run_stage(img, preset.first, final, rng)
    else:
        s1 = _uniform(rng, preset.first_scale)
        mid = (max(final[0], round(H / s1)), max(final[1], round(W / s1)))
        params["first_scale"] = s1
        img, params["stage1"] = _run_stage(img, preset.first, mid, rng)
        img, params["stage2"] = _run_stage(img, preset.second, final, rng)

    assert img.shape[:2] == final
    lr = (np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8) if is_u8
          else img.astype(np.float32))
    return (lr, params) if return_params else lr


# ---------------------------------------------------------------------------- sample data

def sample_images() -> List[Path]:
    """The small redistributable photos shipped in sdflow/assets/samples (see its README)."""
    folder = Path(__file__).resolve().parent.parent / "assets" / "samples"
    exts = {".png", ".jpg", ".jpeg"}
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in exts) if folder.is_dir() else []
