"""Reading and writing images for the model: modes, bit depths and alpha handled explicitly.

The model sees RGB in [-1, 1]. What the input was (grayscale, alpha, 16-bit) travels beside it in
`Image`, so that the output can be written back in the same kind.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Beyond this, Pillow's decompression-bomb guard would refuse the file anyway; say so clearly.
MAX_PIXELS = 20000 * 20000


class ImageReadError(Exception):
    """An input that cannot be used; the message names the file and the reason."""


@dataclass
class Image:
    rgb: np.ndarray                   # H x W x 3 float32 in [0, 1]
    alpha: Optional[np.ndarray]       # H x W float32 in [0, 1], or None
    grayscale: bool
    bit_depth: int                    # 8 or 16
    path: Optional[Path] = None

    @property
    def size(self):
        return self.rgb.shape[1], self.rgb.shape[0]


def find_images(source: Path) -> List[Path]:
    """A file, or every image below a folder (recursive, sorted, hidden files skipped)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"no such file or folder: {source}")
    found = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files
                  if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return sorted(found)


def read_image(path: Path) -> Image:
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if _png_is_16bit_colour(path):
            return _read_png16(path)
        with PILImage.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageReadError(f"{path}: {im.width}x{im.height} is larger than the "
                                     f"{MAX_PIXELS:,}-pixel limit")
            im.load()
            im = ImageOps.exif_transpose(im)
            return _from_pil(im, path)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot decode ({e})") from None


def _from_pil(im, path) -> Image:
    mode = im.mode
    if im.width == 0 or im.height == 0:
        raise ImageReadError(f"{path}: empty image")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit grayscale PNGs arrive as I;16 (or I with values up to 65535).
        gray = np.clip(arr / 65535.0, 0, 1).astype(np.float32)
        return Image(np.repeat(gray[..., None], 3, axis=2), None, True, 16, path)
    if mode == "F":
        gray = np.clip(np.asarray(im, dtype=np.float32), 0, 1)
        return Image(np.repeat(gray[..., None], 3, axis=2), None, True, 16, path)
    if mode in ("1", "L", "LA"):
        la = im.convert("LA")
        arr = np.asarray(la, dtype=np.float32) / 255.0
        alpha = arr[..., 1] if mode == "LA" else None
        return Image(np.repeat(arr[..., :1], 3, axis=2), alpha, True, 8, path)
    if mode in ("RGBA", "RGBa", "PA"):
        arr = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        return Image(arr[..., :3], arr[..., 3], False, 8, path)
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return Image(arr, None, False, 8, path)


def to_tensor(rgb: np.ndarray, device="cpu", dtype=None):
    """H x W x 3 in [0, 1] -> [1, 3, H, W] in [-1, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    return (t.to(device=device, dtype=dtype or torch.float32) * 2 - 1)


def from_tensor(t) -> np.ndarray:
    """[1, 3, H, W] in [-1, 1] -> H x W x 3 float32 in [0, 1] (clamped)."""
    arr = ((t[0].detach().float().cpu() + 1) / 2).clamp_(0, 1)
    return arr.permute(1, 2, 0).numpy()


def quantize(x: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] floats -> integers, rounded to nearest (the authors' code truncated)."""
    top = 65535 if bit_depth == 16 else 255
    q = np.floor(np.clip(x, 0, 1) * top + 0.5)
    return q.astype(np.uint16 if bit_depth == 16 else np.uint8)


def to_luma(rgb: np.ndarray) -> np.ndarray:
    # ITU-R BT.601 weights, the same as Pillow's RGB -> L conversion.
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def write_image(path: Path, rgb: np.ndarray, alpha: Optional[np.ndarray] = None,
                grayscale: bool = False, bit_depth: int = 8, quality: int = 95) -> None:
    """Write H x W x 3 float [0, 1]. JPEG is always 8-bit and drops alpha; 16-bit needs PNG.
    Written to a temporary name first so that an interrupted run leaves no truncated file."""
    from PIL import Image as PILImage

    path = Path(path)
    ext = path.suffix.lower()
    jpeg = ext in (".jpg", ".jpeg")
    if jpeg:
        alpha = None
    if bit_depth == 16 and ext != ".png":
        bit_depth = 8  # 16-bit output is written as PNG only
    data = to_luma(rgb)[..., None] if grayscale else rgb
    if alpha is not None:
        data = np.concatenate([data, alpha[..., None]], axis=-1)
    q = quantize(data, bit_depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    if bit_depth == 16:
        _write_png16(tmp, q, greyscale=grayscale, alpha=alpha is not None)
    else:
        im = PILImage.fromarray(q[..., 0] if q.shape[-1] == 1 else q)
        kwargs = {"quality": quality} if jpeg else {}
        im.save(tmp, format=_FORMATS.get(ext, "PNG"), **kwargs)
    os.replace(tmp, path)


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
            ".tif": "TIFF", ".tiff": "TIFF"}


def _png_is_16bit_colour(path: Path) -> bool:
    """Pillow reduces 16-bit colour PNGs to 8 bits on reading and cannot write them; those
    (and 16-bit gray + alpha) go through pypng instead."""
    with open(path, "rb") as f:
        head = f.read(26)
    return (head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16
            and head[25] in (2, 4, 6))


def _read_png16(path: Path) -> Image:
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).astype(np.float32) / 65535.0
    except (png.Error, ValueError, OSError) as e:
        raise ImageReadError(f"{path}: cannot decode 16-bit PNG ({e})") from None
    planes = info["planes"]
    arr = arr.reshape(height, width, planes)
    alpha = arr[..., -1] if info["alpha"] else None
    if info["greyscale"]:
        return Image(np.repeat(arr[..., :1], 3, axis=2), alpha, True, 16, path)
    return Image(arr[..., :3], alpha, False, 16, path)


def _write_png16(path: Path, channels: np.ndarray, greyscale: bool, alpha: bool) -> None:
    import png

    h, w, planes = channels.shape
    writer = png.Writer(w, h, greyscale=greyscale, alpha=alpha, bitdepth=16)
    with open(path, "wb") as f:
        writer.write(f, channels.reshape(h, w * planes))
