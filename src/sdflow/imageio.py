"""Reading and writing images for inference: Pillow, plus a small PNG codec for 16-bit colour.

An image is read into `Image`: `rgb` float32 HxWx3 in [0, 1] (grayscale replicated to three
channels, because the model always takes RGB), `alpha` float32 HxW in [0, 1] or None, and what is
needed to write the result back in the same kind: `grayscale`, `bit_depth` (8 or 16).

Pillow decodes 16-bit grayscale correctly (mode I;16) but silently reduces 16-bit RGB, RGBA and
gray+alpha PNGs to 8 bits and cannot write them at all, so those PNGs go through `decode_png` /
`encode_png` here. 16-bit colour from other formats (TIFF) arrives as 8 bits, as Pillow gives it.
ICC profiles are ignored: pixel values are taken as they are stored.

Writing clamps to [0, 1] and rounds half up to the nearest level (the authors' script truncated,
which darkens every image by half a level on average).
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
from PIL import Image as PILImage

__all__ = ["IMAGE_EXTENSIONS", "WRITE_EXTENSIONS", "Image", "ImageReadError", "read_image",
           "write_image", "find_images", "quantize", "luminance", "to_tensor", "from_tensor",
           "upscale_alpha", "downscale_alpha", "decode_png", "encode_png", "available_memory",
           "partial_path"]

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
WRITE_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
JPEG_QUALITY = 95

MAX_PIXELS = 2 ** 30


def allow_large_images() -> None:
    """Pillow refuses images of over 179 megapixels as possible decompression bombs; a 200 MP
    phone photo is over that, and sdflow tiles whatever it reads. The `sdflow` command raises the
    limit (never lowers it) to 2^30 px, 12 GiB as float32 RGB; over twice that is refused. It is
    Pillow's process-wide setting, so the library leaves it to its caller."""
    if PILImage.MAX_IMAGE_PIXELS is not None and PILImage.MAX_IMAGE_PIXELS < MAX_PIXELS:
        PILImage.MAX_IMAGE_PIXELS = MAX_PIXELS

_ORIENTATION_TAG = 0x0112
_QUANTIZE_SLAB = 1 << 22   # values quantized at a time
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Rec. 601 luma, the weights Pillow uses for RGB -> L, so a grayscale result matches what any
# viewer would show for the model's RGB output.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")
# Pillow modes with more than 8 bits per sample, which its RGB conversion clips.
_WIDE_MODES = ("F", "I", "I;16", "I;16B", "I;16L", "I;16N")
# PNG colour type -> channels; palette images (3) are never 16-bit.
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
# Arrays read_image makes per pixel besides Pillow's own (a copy out of Pillow, float32 RGB, one
# more float32 copy while orienting and making it contiguous, alpha), and for 16-bit samples (the
# int64 / float64 steps of 16-bit gray; sdflow's colour codec: inflated rows, int16 filter planes).
_READ_BYTES = 40
_READ_BYTES_16 = 96
# read_rgb8's: Pillow's RGB conversion and EXIF transpose, and the uint8 array.
_READ_RGB8_BYTES = 12
_INFLATE_PIECE = 1 << 20
# Adam7 passes: (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))


class ImageReadError(Exception):
    """A file that cannot be read as an image; the message names the file and the reason."""

    def __init__(self, path: PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class Image:
    rgb: np.ndarray                      # float32 HxWx3 in [0, 1]
    alpha: Optional[np.ndarray] = None   # float32 HxW in [0, 1]
    grayscale: bool = False
    bit_depth: int = 8                   # 8 or 16 bits per channel as stored
    path: Optional[Path] = None
    format: Optional[str] = None         # Pillow's name for the file format: PNG, JPEG, ...

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height), as Pillow gives it."""
        return self.rgb.shape[1], self.rgb.shape[0]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


# ----- reading ----------------------------------------------------------------------------------

def read_image(path: PathLike, need: Optional[Callable[[int, int, int], int]] = None) -> Image:
    """Decode `path` (PNG, JPEG, WebP, BMP, TIFF) with its EXIF orientation applied.

    Raises ImageReadError for missing, empty, truncated, corrupt or unsupported files, and for
    images too large for the memory available (judged from the header, before decoding; `need`,
    given (width, height, bit depth), says how many bytes the caller's processing will add).
    Multi-frame files give their first frame.
    """
    path = Path(path)
    _check_file(path)
    try:
        return _read_image(path, need)
    except MemoryError:
        # The estimate let it through, yet an allocation failed: this file fails, not the batch.
        raise ImageReadError(path, "out of memory while decoding it") from None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _read_image(path: Path, need) -> Image:
    try:
        with PILImage.open(path) as im:
            fmt = im.format
            png16 = _png16_colour(path) if fmt == "PNG" else False
            depth = 16 if png16 or im.mode in _WIDE_MODES else 8
            _check_before_decoding(path, im, _READ_BYTES_16 if depth == 16 else _READ_BYTES,
                                   need(*im.size, depth) if need is not None else 0)
            # Decode now: Pillow is lazy, and a truncated file must fail here, not later.
            im.load()
            orientation = _orientation(im)
            if png16:
                color, alpha, gray = _read_png16(path)
                depth = 16
            else:
                color, alpha, gray, depth = _pixels(im, path)
    except ImageReadError:
        raise
    except PILImage.UnidentifiedImageError:
        raise ImageReadError(path, "not an image, or a format Pillow cannot read") from None
    except PILImage.DecompressionBombError as e:
        raise ImageReadError(path, f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise ImageReadError(path, f"cannot decode ({type(e).__name__}: {e})") from None
    color = _orient(color, orientation)
    alpha = None if alpha is None else _orient(alpha, orientation)
    if color.ndim == 2:
        color = np.repeat(color[..., None], 3, axis=2)
    return Image(rgb=np.ascontiguousarray(color, dtype=np.float32),
                 alpha=None if alpha is None else np.ascontiguousarray(alpha, dtype=np.float32),
                 grayscale=gray, bit_depth=depth, path=path, format=fmt)


def _check_before_decoding(path: Path, im: PILImage.Image, read_bytes: int, extra: int = 0,
                           check_data: bool = True) -> None:
    """Refuse, from the header alone, an image whose decoding (`read_bytes` per pixel besides
    Pillow's own) and processing (`extra` bytes) would not fit in the memory available: a
    429-byte PNG may declare 30000 x 30000 pixels, and on Linux an allocation past the memory
    gets the process killed rather than an error. Then (`check_data`) refuse PNG data too short
    for the rows the header declares, which Pillow would fill with black without a word."""
    w, h = im.size
    pillow = 1 if im.mode in ("1", "L", "P") else 2 if im.mode.startswith("I;16") else 4
    total = w * h * (pillow + read_bytes) + extra
    free = available_memory()
    if free is not None and total > free:
        raise ImageReadError(path, f"too large for the memory available: {w}x{h} px needs about "
                                   f"{_size(total)} to decode{' and process' if extra else ''}, "
                                   f"{_size(free)} available")
    if check_data and im.format == "PNG":
        _check_png_data(path)


def _size(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate, or None where that cannot be found out: the least
    of the system's available memory and free swap, the headroom of each memory-limited cgroup
    it is in, and the address-space limit (`ulimit -v`) less what it has mapped. Without
    /proc/meminfo, the free (else the total) physical memory that os.sysconf reports."""
    figures = []
    meminfo = _kib_fields("/proc/meminfo")
    if "MemAvailable" in meminfo:
        figures.append((meminfo["MemAvailable"] + meminfo.get("SwapFree", 0)) * 1024)
    else:
        for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
            try:
                figures.append(os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE"))
                break
            except (AttributeError, ValueError, OSError):
                continue
    figures += _cgroup_headroom()
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        mapped = _kib_fields("/proc/self/status").get("VmSize")
        if soft != resource.RLIM_INFINITY and mapped is not None:
            figures.append(soft - mapped * 1024)
    except (ImportError, OSError, ValueError):
        pass
    return max(0, min(figures)) if figures else None


def _kib_fields(path: str) -> dict:
    """`Name: value kB` lines of a /proc file as {name: value}; {} where it cannot be read."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                value = rest.split()
                if value and value[0].isdigit():
                    fields[name] = int(value[0])
    except OSError:
        pass
    return fields


def _cgroup_headroom() -> List[int]:
    """limit - working set (usage less inactive file cache, which the kernel reclaims first) for
    each cgroup from this process's up to the root that has a memory limit (v2), or for its v1
    memory cgroup."""
    out = []
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":
            folder, limit, usage, stat, inactive = (Path("/sys/fs/cgroup" + rel), "memory.max",
                                                    "memory.current", "memory.stat", "inactive_file")
        elif "memory" in controllers.split(","):
            folder, limit, usage, stat, inactive = (Path("/sys/fs/cgroup/memory" + rel), "memory.limit_in_bytes",
                                                    "memory.usage_in_bytes", "memory.stat", "total_inactive_file")
        else:
            continue
        for d in [folder, *folder.parents]:
            if not str(d).startswith("/sys/fs/cgroup"):
                break
            try:
                top = (d / limit).read_text().strip()
                used = int((d / usage).read_text())
            except (OSError, ValueError):
                continue
            if not top.isdigit() or int(top) >= 2**60:   # "max", or v1's "no limit"
                continue
            cache = 0
            try:
                for row in (d / stat).read_text().splitlines():
                    key, _, value = row.partition(" ")
                    if key == inactive:
                        cache = int(value)
            except (OSError, ValueError):
                pass
            out.append(int(top) - (used - cache))
    return out


def _orientation(im: PILImage.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - broken metadata must not make a good picture unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an HxW[xC] array (the transforms of ImageOps.exif_transpose)."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def _pixels(im: PILImage.Image, path: Path):
    """(colour HxW or HxWx3, alpha or None, grayscale, bit depth) of a decoded Pillow image,
    values as float32 in [0, 1]."""
    mode = im.mode
    if mode == "F":
        # Float TIFFs have no agreed white level (1.0? 255? 65535?): refuse rather than guess.
        raise ImageReadError(path, "32-bit floating-point images are not supported")
    key = im.info.get("transparency")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow opens 16-bit grayscale as I;16 (or I for some TIFFs): 16 bits per sample.
        raw = np.asarray(im).astype(np.int64)
        alpha = _key_alpha(raw, key)
        return (np.clip(raw, 0, 65535) / 65535.0).astype(np.float32), alpha, True, 16
    if mode == "P" or mode == "PA":
        target = "RGBA" if (mode == "PA" or key is not None
                            or (im.palette is not None and im.palette.mode == "RGBA")) else "RGB"
        im, mode, key = im.convert(target), target, None
    elif mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode == "La":
        im, mode = im.convert("LA"), "LA"
    elif mode == "RGBa":  # premultiplied alpha
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        # CMYK, YCbCr, HSV, RGBX, ...: Pillow knows how to get RGB from them, or says it cannot.
        im, mode = im.convert("RGB"), "RGB"
    raw = np.asarray(im)
    gray = mode in _GRAY_MODES
    if mode in ("LA", "RGBA"):
        color, alpha = raw[..., :-1], raw[..., -1] / np.float32(255)
        if gray:
            color = color[..., 0]
    else:
        color, alpha = raw, _key_alpha(raw, key)
    return color / np.float32(255), alpha, gray, 8


def _key_alpha(raw: np.ndarray, key) -> Optional[np.ndarray]:
    """Alpha from a single transparent colour (PNG tRNS for gray/RGB), else None."""
    if key is None or isinstance(key, bytes):
        return None
    key = np.asarray(key).reshape(-1)
    if raw.ndim == 3 and key.size == raw.shape[2]:
        transparent = (raw == key).all(axis=2)
    elif raw.ndim == 2 and key.size == 1:
        transparent = raw == key[0]
    else:
        return None
    return np.where(transparent, 0.0, 1.0).astype(np.float32)


# ----- the 16-bit PNG codec -------------------------------------------------------------------

def _png_header(data: bytes) -> Tuple[int, int, int, int, int]:
    """(width, height, bit depth, colour type, interlace) from the start of a PNG file."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return w, h, depth, ctype, interlace


def _png16_colour(path: Path) -> bool:
    """True for the 16-bit PNGs Pillow would reduce to 8 bits: RGB, RGBA, gray+alpha."""
    with open(path, "rb") as f:
        head = f.read(33)
    try:
        _, _, depth, ctype, _ = _png_header(head)
    except ValueError:
        return False
    return depth == 16 and ctype in (2, 4, 6)


def _adam7_passes(w: int, h: int):
    """(x0, y0, dx, dy, pass width, pass height) of each Adam7 pass that has pixels (a pass
    without any has no scanlines, not even filter bytes)."""
    for x0, y0, dx, dy in _ADAM7:
        pw, ph = -(-(w - x0) // dx), -(-(h - y0) // dy)
        if pw > 0 and ph > 0:
            yield x0, y0, dx, dy, pw, ph


def _check_png_data(path: Path) -> None:
    """Raise ImageReadError when a PNG's image data ends before its last row. Pillow decodes a
    zlib stream that ends early as complete, the missing rows black; so the stream is inflated
    here once, in bounded pieces, and its length compared with what the header declares."""
    with open(path, "rb") as f:
        try:
            w, h, depth, ctype, interlace = _png_header(f.read(33))
        except ValueError:
            return   # Pillow took it for a PNG; let its decoder give the reason
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
        if channels is None:
            return
        bits = depth * channels
        passes = list(_adam7_passes(w, h)) if interlace else [(0, 0, 1, 1, w, h)]
        expected = sum(ph * (-(-pw * bits // 8) + 1) for *_, pw, ph in passes)
        inflate, got = zlib.decompressobj(), 0
        f.seek(8)
        while got < expected and not inflate.eof:
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                break
            if kind != b"IDAT":
                f.seek(length + 4, os.SEEK_CUR)
                continue
            left = length
            while left > 0 and got < expected and not inflate.eof:
                data = f.read(min(left, _INFLATE_PIECE))
                if not data:
                    break
                left -= len(data)
                while data and got < expected:
                    got += len(inflate.decompress(data, _INFLATE_PIECE))
                    data = inflate.unconsumed_tail
            f.seek(left + 4, os.SEEK_CUR)
    if got < expected:
        where = (f"ends at row {got // (-(-w * bits // 8) + 1)} of {h}" if not interlace
                 else f"is {expected - got:,} bytes short")
        raise ImageReadError(path, f"cannot decode: its image data is truncated ({where})")


def _read_png16(path: Path):
    samples, key = decode_png(path.read_bytes())
    channels = samples.shape[2]
    gray = channels <= 2
    alpha = None
    if channels in (2, 4):
        alpha = samples[..., -1] / np.float32(65535)
        samples = samples[..., :-1]
    elif key is not None:
        alpha = _key_alpha(samples if not gray else samples[..., 0], key)
    color = samples[..., 0] if gray else samples
    return color / np.float32(65535), alpha, gray


def decode_png(data: bytes):
    """Decode a 16-bit non-palette PNG: (HxWxC uint16 samples, tRNS key or None).

    Only what Pillow cannot do is implemented: bit depth 16, colour types 0/2/4/6, with or
    without Adam7 interlacing. Chunk CRCs are checked so corruption is reported, not decoded.
    """
    w, h, depth, ctype, interlace = _png_header(data)
    if depth != 16 or ctype not in _PNG_CHANNELS:
        raise ValueError(f"decode_png handles 16-bit gray/RGB(A) PNGs only (depth {depth}, "
                         f"colour type {ctype})")
    channels = _PNG_CHANNELS[ctype]
    idat, key, pos = [], None, 8
    while True:
        if pos + 12 > len(data):
            raise ValueError("PNG file is truncated (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise ValueError(f"PNG file is truncated (inside a {kind!r} chunk)")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"PNG {kind.decode('latin-1')} chunk is corrupt (CRC mismatch)")
        pos += 12 + length
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS":
            key = tuple(struct.unpack(f">{len(body) // 2}H", body))
        elif kind == b"IEND":
            break
    bpp = channels * 2
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    if interlace:
        planes = np.zeros((h, w, bpp), dtype=np.uint8)
        offset = 0
        for x0, y0, dx, dy, pw, ph in _adam7_passes(w, h):
            size = ph * (pw * bpp + 1)
            planes[y0::dy, x0::dx] = _unfilter(raw[offset:offset + size], ph, pw, bpp)
            offset += size
    else:
        planes = _unfilter(raw, h, w, bpp)
    samples = np.ascontiguousarray(planes).view(">u2").reshape(h, w, channels)
    return samples.astype(np.uint16), key


def _unfilter(raw: np.ndarray, h: int, w: int, bpp: int) -> np.ndarray:
    """Undo PNG scanline filtering: HxWxbpp bytes.

    Average and Paeth depend on the decoded left neighbour, so a row cannot be done in one
    vector step; each anti-diagonal of pixels depends only on the two before it, so the image
    is swept diagonal by diagonal (h + w steps) whatever filter each row uses.
    """
    stride = w * bpp + 1
    if raw.size < h * stride:
        raise ValueError("PNG image data is truncated")
    rows = raw[:h * stride].reshape(h, stride)
    ftype = rows[:, 0].astype(np.int16)
    if ftype.max(initial=0) > 4:
        raise ValueError("PNG image data is corrupt (unknown filter type)")
    filtered = rows[:, 1:].reshape(h, w, bpp).astype(np.int16)
    # One zero row above and one zero column to the left: the neighbours PNG defines off-image.
    out = np.zeros((h + 1, w + 1, bpp), dtype=np.int16)
    for d in range(h + w - 1):
        ys = np.arange(max(0, d - w + 1), min(h - 1, d) + 1)
        xs = d - ys
        a, b, c = out[ys + 1, xs], out[ys, xs + 1], out[ys, xs]
        f = ftype[ys][:, None]
        pred = np.where(f == 1, a, np.where(f == 2, b, np.where(f == 3, (a + b) >> 1,
                        np.where(f == 4, _paeth(a, b, c), 0))))
        out[ys + 1, xs + 1] = (filtered[ys, xs] + pred) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def encode_png(samples: np.ndarray, compress_level: int = 6) -> bytes:
    """A 16-bit PNG from HxW or HxWxC (C = 1..4) uint16 samples: gray, gray+alpha, RGB, RGBA."""
    if samples.dtype != np.uint16:
        raise TypeError(f"encode_png expects uint16 samples, got {samples.dtype}")
    if samples.ndim == 2:
        samples = samples[..., None]
    h, w, channels = samples.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = channels * 2
    x = np.ascontiguousarray(samples.astype(">u2")).view(np.uint8).reshape(h, w * bpp).astype(np.int16)
    # Paeth on every row: encoding knows all neighbours, so it vectorises, and it is the
    # filter that usually compresses photographs best.
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    b = np.zeros_like(x)
    b[1:] = x[:-1]
    c = np.zeros_like(x)
    c[1:, bpp:] = x[:-1, :-bpp]
    filtered = ((x - _paeth(a, b, c)) & 0xFF).astype(np.uint8)
    scanlines = np.concatenate([np.full((h, 1), 4, dtype=np.uint8), filtered], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    return (_PNG_SIGNATURE + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), compress_level)) + chunk(b"IEND", b""))


# ----- writing ----------------------------------------------------------------------------------

def quantize(x: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """[0, 1] floats -> uint8 / uint16: clamp, then round half up to the nearest level."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    x = np.asarray(x)
    if x.ndim == 0:
        return quantize(x.reshape(1), bit_depth).reshape(())
    top = 255 if bit_depth == 8 else 65535
    out = np.empty(x.shape, dtype=np.uint8 if bit_depth == 8 else np.uint16)
    # In slabs of rows: whole-image float64 temporaries were 3-4 times a large output's own
    # size (8 GB for a 12000x8000 SR result).
    rows = max(1, _QUANTIZE_SLAB // max(1, x[:1].size))
    for i in range(0, len(x), rows):
        part = x[i:i + rows]
        if not np.isfinite(part).all():
            raise ValueError("cannot quantize non-finite values (NaN or Inf)")
        # float64: in float32, x * 65535 carries errors up to ~0.004 of a level, enough to
        # round values near a half level the wrong way.
        levels = np.clip(part.astype(np.float64), 0.0, 1.0)
        levels *= top
        levels += 0.5
        np.floor(levels, out=levels)
        out[i:i + rows] = levels
    return out


def luminance(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 -> HxW luma (Rec. 601)."""
    rgb = np.asarray(rgb)
    return rgb @ _LUMA.astype(rgb.dtype)


def write_image(path: PathLike, rgb: np.ndarray, alpha: Optional[np.ndarray] = None,
                grayscale: bool = False, bit_depth: int = 8, quality: int = JPEG_QUALITY) -> Path:
    """Write HxWx3 (or HxW gray) values in [0, 1] as PNG or JPEG, chosen by the extension.

    grayscale: write one channel (luma of RGB). alpha: HxW in [0, 1], written for PNG (JPEG cannot
    hold it and drops it). bit_depth 16 is honoured for PNG; JPEG is always 8-bit. Values outside
    [0, 1] are clamped; non-finite values raise ValueError. The file appears atomically.
    """
    path = Path(path)
    fmt = WRITE_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot write {path.suffix or 'files without an extension'!r}; "
                         f"use one of {', '.join(WRITE_EXTENSIONS)}")
    rgb = np.asarray(rgb)
    color = luminance(rgb) if grayscale and rgb.ndim == 3 else rgb
    planes = color[..., None] if color.ndim == 2 else color
    if alpha is not None and fmt == "PNG":
        if alpha.shape != planes.shape[:2]:
            raise ValueError(f"alpha is {alpha.shape}, image is {planes.shape[:2]}")
        planes = np.concatenate([planes, np.asarray(alpha, dtype=planes.dtype)[..., None]], axis=2)
    depth = 16 if bit_depth == 16 and fmt == "PNG" else 8
    samples = quantize(planes, depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        if depth == 16:
            tmp.write_bytes(encode_png(samples))
        else:
            pil = PILImage.fromarray(samples[..., 0] if samples.shape[2] == 1 else samples)
            options = {"quality": quality, "subsampling": 0} if fmt == "JPEG" else {}
            pil.save(tmp, format=fmt, **options)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def partial_path(path: PathLike) -> Path:
    """The hidden file that write_image writes `path` to before renaming it into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.part")


# ----- files ------------------------------------------------------------------------------------

def find_images(path: PathLike, exclude: Optional[PathLike] = None,
                skipped: Optional[List[Tuple[Path, str]]] = None) -> List[Path]:
    """A single file as given, or the image files under a folder (recursively, by extension,
    case-insensitive), sorted by relative path; hidden files and folders and anything under
    `exclude` (e.g. an output folder inside the input folder) are skipped. Symbolic links to
    folders are followed (data sets are often linked in, as BasicSR's layouts do), each real
    folder once, so a link back up the tree cannot loop. Every other path passed over (other
    file types, broken or looping links, folders reached twice, folders that cannot be listed)
    is added to `skipped` as (path, reason), in the order met."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    if skip is not None and _is_within(path.resolve(), skip):
        skip = None   # an output folder that holds the input (`-o .`) is not inside it
    note = skipped.append if skipped is not None else (lambda entry: None)
    found, seen = [], set()

    def unlisted(e: OSError) -> None:
        note((Path(e.filename or path), f"folder cannot be listed ({e.strerror or e})"))

    for folder, dirs, files in os.walk(path, followlinks=True, onerror=unlisted):
        real = os.path.realpath(folder)
        if skip is not None and _is_within(Path(real), skip):
            dirs[:] = []
            continue
        if real in seen:
            note((Path(folder), f"a link to {real}, a folder already searched"))
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            p = Path(folder, name)
            if name.startswith("."):
                continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                note((p, f"not a file type sdflow reads ({p.suffix.lower() or 'no extension'})"))
                continue
            if not p.is_file():
                note((p, "a broken or looping symbolic link" if p.is_symlink() else "not a regular file"))
                continue
            if skip is not None and _is_within(p.resolve(), skip):
                continue
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(path).as_posix())


def read_rgb8(path: PathLike, check_data: bool = True) -> np.ndarray:
    """H x W x 3 uint8 with EXIF orientation applied, for the data pipelines (training patches,
    `sdflow degrade`), which work in 8 bits: 16-bit samples are rounded to 8 bits (Pillow's own
    RGB conversion would clip 16-bit grayscale to white, and it truncates 16-bit colour), gray is
    repeated, alpha dropped. Images too large for the memory available and PNGs with short image
    data are refused as read_image refuses them; `check_data=False` skips the second check (it
    inflates the file once more) for a file that has passed it before."""
    from PIL import ImageOps

    path = Path(path)
    if not (path.suffix.lower() == ".png" and _png16_colour(path)):
        with PILImage.open(path) as im:
            if im.mode not in _WIDE_MODES:
                _check_before_decoding(path, im, _READ_RGB8_BYTES, check_data=check_data)
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    # 16-bit and float samples: read_image's decoding (which refuses float), then rounded.
    return quantize(read_image(path).rgb, 8)


def _is_within(p: Path, folder: Path) -> bool:
    try:
        p.relative_to(folder)
        return True
    except ValueError:
        return False


# ----- tensors and alpha --------------------------------------------------------------------------

def to_tensor(rgb: np.ndarray, device=None, dtype=None):
    """HxWx3 in [0, 1] -> 1x3xHxW tensor in [-1, 1] (the model's range)."""
    import torch

    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    t = t.to(device=device, dtype=dtype or torch.float32)
    return t * 2 - 1


def from_tensor(t) -> np.ndarray:
    """1x3xHxW or 3xHxW tensor in [-1, 1] -> HxWx3 array in [0, 1], not clamped (the writer does)."""
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a single image, got a batch of {t.shape[0]}")
        t = t[0]
    t = t.detach().cpu()
    if t.dtype.itemsize < 4:   # float16 / bfloat16 models; numpy has no bfloat16
        t = t.float()
    # One new tensor, not two: outputs can be many megapixels.
    return t.add(1).div_(2).permute(1, 2, 0).numpy()


def upscale_alpha(alpha: np.ndarray, factor: int = 4, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Alpha for an x`factor` super-resolved image, or for one resized to `size` = (h, w) (SR with
    --outscale; one resize straight from the input's alpha): bicubic, clamped to [0, 1]."""
    import torch

    from sdflow.resize import resize, upscale

    a = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    a = upscale(a, factor, "bicubic") if size is None else resize(a, size, "bicubic")
    return a[0, 0].clamp_(0, 1).numpy()


def downscale_alpha(alpha: np.ndarray, factor: int = 4) -> np.ndarray:
    """Alpha for a /`factor` downscaled image of size ceil(H/f) x ceil(W/f): box average over
    each f x f block, the bottom/right edge replicated as SDFlow.downscale pads it, so the
    alpha grid lines up with the model's pixels."""
    import torch
    import torch.nn.functional as F

    a = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
    h, w = a.shape[-2:]
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        a = F.pad(a, (0, pw, 0, ph), mode="replicate")
    return F.avg_pool2d(a, factor)[0, 0].numpy()
