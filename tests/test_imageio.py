"""sdflow.imageio: modes, bit depths, alpha, EXIF, the 16-bit PNG codec, rounding, bad files."""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageOps

from sdflow.imageio import (ImageReadError, decode_png, downscale_alpha, encode_png, find_images,
                            from_tensor, luminance, quantize, read_image, to_tensor, upscale_alpha,
                            write_image)


def rand_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def rand_u16(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def levels(x, top):
    return np.rint(np.asarray(x, dtype=np.float64) * top).astype(np.int64)


# ----- a reference PNG writer, independent of sdflow's, with every filter type and Adam7 -----

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def filtered_scanlines(samples, filters):
    """Scanlines of HxWxC uint16 samples, row y using filter filters[y % len(filters)]."""
    h, w, c = samples.shape
    bpp = 2 * c
    x = samples.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    out = []
    for y in range(h):
        cur = x[y]
        up = x[y - 1] if y else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        f = filters[y % len(filters)]
        if f == 0:
            pred = 0
        elif f == 1:
            pred = left
        elif f == 2:
            pred = up
        elif f == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = np.select([(pa <= pb) & (pa <= pc), pb <= pc], [left, up], upleft)
        out.append(bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def png16_bytes(samples, filters=(0, 1, 2, 3, 4), interlace=False, extra=b""):
    if samples.ndim == 2:
        samples = samples[..., None]
    h, w, c = samples.shape
    if interlace:
        data = b"".join(filtered_scanlines(samples[y0::dy, x0::dx], filters)
                        for x0, y0, dx, dy in ADAM7 if samples[y0::dy, x0::dx].size)
    else:
        data = filtered_scanlines(samples, filters)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(data))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("interlace", [False, True])
def test_reference_writer_agrees_with_pillow(interlace):
    # Pillow decodes 16-bit grayscale in full: it vouches for the reference writer used below.
    import io

    g = rand_u16((13, 11))
    im = PILImage.open(io.BytesIO(png16_bytes(g, interlace=interlace)))
    assert im.mode == "I;16" and np.array_equal(np.asarray(im), g)


# ----- the 16-bit PNG codec ------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_decode_png_every_filter_and_interlacing(channels, interlace):
    for h, w in [(13, 11), (1, 1), (3, 9)]:  # sizes where some Adam7 passes are empty
        s = rand_u16((h, w, channels), seed=h)
        got, key = decode_png(png16_bytes(s, interlace=interlace))
        assert key is None and got.dtype == np.uint16 and np.array_equal(got, s)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_encode_png_is_read_back_exactly(channels):
    s = rand_u16((17, 10, channels))
    data = encode_png(s)
    assert np.array_equal(decode_png(data)[0], s)
    # Independent check: Pillow reads the same file (to 8 bits for colour, in full for gray).
    import io

    im = np.asarray(PILImage.open(io.BytesIO(data)))
    if channels == 1:
        assert np.array_equal(im, s[..., 0])
    elif channels == 3:
        assert np.array_equal(im, (s >> 8).astype(np.uint8))


def test_decode_png_rejects_corruption():
    data = bytearray(png16_bytes(rand_u16((6, 6, 3))))
    data[60] ^= 0xFF  # inside IDAT: the CRC no longer matches
    with pytest.raises(ValueError, match="CRC"):
        decode_png(bytes(data))
    with pytest.raises(ValueError, match="truncated"):
        decode_png(png16_bytes(rand_u16((6, 6, 3)))[:50])


# ----- reading ----------------------------------------------------------------------------------

def test_rgb_8_bit_round_trip_is_exact(tmp_path):
    arr = rand_u8((9, 7, 3))
    PILImage.fromarray(arr).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert (img.grayscale, img.alpha, img.bit_depth, img.size, img.format) == (False, None, 8, (7, 9), "PNG")
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (9, 7, 3)
    write_image(tmp_path / "b.png", img.rgb)
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "b.png")), arr)


@pytest.mark.parametrize("fmt,ext,kw", [("WEBP", "webp", {"lossless": True}), ("BMP", "bmp", {}),
                                        ("TIFF", "tif", {}), ("TIFF", "TIFF", {})])
def test_other_formats(tmp_path, fmt, ext, kw):
    arr = rand_u8((6, 10, 3))
    PILImage.fromarray(arr).save(tmp_path / f"x.{ext}", format=fmt, **kw)
    img = read_image(tmp_path / f"x.{ext}")
    assert img.format == fmt and np.array_equal(levels(img.rgb, 255), arr)


def test_grayscale_8_and_16_bit(tmp_path):
    g8 = rand_u8((6, 5))
    PILImage.fromarray(g8).save(tmp_path / "g8.png")
    img = read_image(tmp_path / "g8.png")
    assert img.grayscale and img.bit_depth == 8 and img.rgb.shape == (6, 5, 3)
    assert np.array_equal(levels(img.rgb, 255), np.repeat(g8[..., None], 3, axis=2))

    g16 = rand_u16((6, 5))
    PILImage.fromarray(g16).save(tmp_path / "g16.png")  # Pillow writes I;16 as a 16-bit PNG
    img = read_image(tmp_path / "g16.png")
    assert img.grayscale and img.bit_depth == 16
    assert np.array_equal(levels(img.rgb[..., 1], 65535), g16)
    write_image(tmp_path / "g16_out.png", img.rgb, grayscale=True, bit_depth=16)
    back = PILImage.open(tmp_path / "g16_out.png")
    assert back.mode == "I;16" and np.array_equal(np.asarray(back), g16)

    bilevel = PILImage.fromarray(g8 > 127)
    bilevel.save(tmp_path / "b.png")
    img = read_image(tmp_path / "b.png")
    assert img.grayscale and set(np.unique(img.rgb)) <= {0.0, 1.0}


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_colour_png_keeps_all_bits(tmp_path, channels):
    s = rand_u16((7, 9, channels))
    (tmp_path / "c.png").write_bytes(png16_bytes(s))
    img = read_image(tmp_path / "c.png")
    assert img.bit_depth == 16 and img.grayscale == (channels == 2)
    color = s[..., :3] if channels >= 3 else np.repeat(s[..., :1], 3, axis=2)
    assert np.array_equal(levels(img.rgb, 65535), color)
    if channels in (2, 4):
        assert np.array_equal(levels(img.alpha, 65535), s[..., -1])
    else:
        assert img.alpha is None
    write_image(tmp_path / "out.png", img.rgb, alpha=img.alpha, grayscale=img.grayscale, bit_depth=16)
    assert np.array_equal(decode_png((tmp_path / "out.png").read_bytes())[0], s)


def test_transparency_forms(tmp_path):
    rgba = rand_u8((6, 5, 4))
    PILImage.fromarray(rgba).save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    assert not img.grayscale and np.array_equal(levels(img.alpha, 255), rgba[..., 3])
    write_image(tmp_path / "rgba_out.png", img.rgb, alpha=img.alpha)
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "rgba_out.png")), rgba)

    la = rand_u8((6, 5, 2), seed=1)
    PILImage.fromarray(la).save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert img.grayscale and np.array_equal(levels(img.alpha, 255), la[..., 1])
    write_image(tmp_path / "la_out.png", img.rgb, alpha=img.alpha, grayscale=True)
    out = PILImage.open(tmp_path / "la_out.png")
    assert out.mode == "LA" and np.array_equal(np.asarray(out), la)

    pal = PILImage.fromarray(rand_u8((6, 5, 3), seed=2)).quantize(8)
    index = np.asarray(pal)
    pal.save(tmp_path / "p.png", transparency=int(index[0, 0]))
    img = read_image(tmp_path / "p.png")
    assert not img.grayscale and img.alpha is not None
    assert np.array_equal(img.alpha == 0, index == index[0, 0])

    pal.save(tmp_path / "p_opaque.png")
    assert read_image(tmp_path / "p_opaque.png").alpha is None


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    PILImage.fromarray(rand_u8((8, 8, 3))).convert("CMYK").save(tmp_path / "c.jpg")
    img = read_image(tmp_path / "c.jpg")
    assert not img.grayscale and img.rgb.shape == (8, 8, 3) and img.format == "JPEG"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    im = PILImage.fromarray(rand_u8((3, 5, 3)))
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(PILImage.open(tmp_path / "o.png")))
    got = read_image(tmp_path / "o.png").rgb
    assert np.array_equal(levels(got, 255), expected)


def test_exif_orientation_on_16_bit_colour(tmp_path):
    s = rand_u16((3, 5, 3))
    exif = PILImage.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    body = exif.tobytes()
    extra = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    (tmp_path / "o16.png").write_bytes(png16_bytes(s, extra=extra))
    img = read_image(tmp_path / "o16.png")
    assert img.bit_depth == 16 and np.array_equal(levels(img.rgb, 65535), np.rot90(s, -1))


def test_bad_files_raise_naming_the_file(tmp_path):
    good = tmp_path / "good.png"
    PILImage.fromarray(rand_u8((64, 64, 3))).save(good)
    PILImage.fromarray(rand_u8((64, 64, 3))).save(tmp_path / "good.jpg", quality=90)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not a picture")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:300])
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "good.jpg").read_bytes()[:600])
    (tmp_path / "cut16.png").write_bytes(png16_bytes(rand_u16((20, 20, 3)))[:400])
    PILImage.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    (tmp_path / "folder.png").mkdir()
    cases = {"empty.png": "empty", "text.jpg": "not an image", "cut.png": "cannot decode",
             "cut.jpg": "cannot decode", "cut16.png": "cannot decode",
             "float.tif": "floating-point", "folder.png": "not a file", "missing.png": "no such file"}
    for name, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason) as e:
            read_image(tmp_path / name)
        assert name in str(e.value) and e.value.path.name == name


# ----- writing ----------------------------------------------------------------------------------

def test_quantize_rounds_to_the_nearest_level():
    eps = 1e-4
    x = np.array([0.5 - eps, 0.5 + eps, 1.5 + eps, 254.5 - eps, 254.5 + eps, 254.9]) / 255
    assert quantize(x, 8).tolist() == [0, 1, 2, 254, 255, 255]  # truncation: 0 0 1 254 254 254
    x16 = np.array([0.5 + eps, 65534.5 + eps]) / 65535
    assert quantize(x16, 16).tolist() == [1, 65535]
    assert quantize(np.array([-0.3, 1.7]), 8).tolist() == [0, 255]
    assert quantize(np.array([-0.3, 1.7]), 16).tolist() == [0, 65535]
    # Every value lands on its nearest level, in float32 as well as float64.
    for dtype in (np.float32, np.float64):
        v = np.random.default_rng(0).random(10000).astype(dtype)
        for bits, top in [(8, 255), (16, 65535)]:
            q = quantize(v, bits).astype(np.float64)
            assert np.abs(q - v.astype(np.float64) * top).max() <= 0.5 + 1e-3
    with pytest.raises(ValueError):
        quantize(np.array([0.2, np.nan]))
    with pytest.raises(ValueError):
        quantize(np.array([np.inf]))


def test_written_files_round(tmp_path):
    rgb = np.full((2, 3, 3), 0.6 / 255, dtype=np.float32)
    write_image(tmp_path / "r.png", rgb)
    assert np.asarray(PILImage.open(tmp_path / "r.png")).max() == 1
    write_image(tmp_path / "r16.png", rgb, bit_depth=16)
    assert decode_png((tmp_path / "r16.png").read_bytes())[0].tolist()[0][0] == [154] * 3  # 0.6 * 257


def test_grayscale_output_is_luma(tmp_path):
    rgb8 = rand_u8((5, 6, 3))
    write_image(tmp_path / "l.png", rgb8 / 255.0, grayscale=True)
    out = PILImage.open(tmp_path / "l.png")
    assert out.mode == "L"
    pillow_l = np.asarray(PILImage.fromarray(rgb8).convert("L")).astype(int)
    assert np.abs(np.asarray(out).astype(int) - pillow_l).max() <= 1
    assert np.allclose(luminance(np.ones((2, 2, 3), np.float32)), 1.0, atol=1e-6)


def test_jpeg_output_is_8_bit_rgb_without_alpha(tmp_path):
    rgb = rand_u16((16, 16, 3)) / 65535.0
    write_image(tmp_path / "o.jpg", rgb, alpha=np.ones((16, 16)), bit_depth=16)
    out = PILImage.open(tmp_path / "o.jpg")
    assert out.format == "JPEG" and out.mode == "RGB"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    with pytest.raises(ValueError, match="webp"):
        write_image(tmp_path / "o.webp", rgb)


# ----- folders, tensors, alpha ------------------------------------------------------------------

def test_find_images(tmp_path):
    for rel in ["b.PNG", "a.jpg", "sub/c.webp", "sub/deeper/d.TIFF", "e.Jpeg", "f.bmp", "notes.txt",
                ".hidden.png", ".git/x.png", "out/old_sr.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path, exclude=tmp_path / "out")]
    assert found == ["a.jpg", "b.PNG", "e.Jpeg", "f.bmp", "sub/c.webp", "sub/deeper/d.TIFF"]
    assert "out/old_sr.png" in [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert find_images(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]  # a file is taken as given
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")


def test_find_images_follows_linked_folders_once(tmp_path):
    """Data sets are often symbolic links into the folder; a link back up the tree must not loop."""
    (tmp_path / "data" / "set").mkdir(parents=True)
    (tmp_path / "data" / "set" / "a.png").write_bytes(b"x")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b.pgm").write_bytes(b"x")
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "data")
    (tmp_path / "data" / "set" / "up").symlink_to(tmp_path / "data")   # a cycle
    found = [p.relative_to(tmp_path / "in").as_posix() for p in find_images(tmp_path / "in")]
    assert found == ["b.pgm", "linked/set/a.png"]


def test_read_rgb8_keeps_16_bit_gray(tmp_path):
    """Pillow's RGB conversion clips 16-bit grayscale to white; the data pipelines' reader scales it."""
    from sdflow.imageio import read_rgb8

    ramp = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21)
    PILImage.fromarray(ramp).save(tmp_path / "g16.png")   # mode I;16
    with PILImage.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I") and (np.asarray(im.convert("RGB")) == 255).mean() > 0.99   # the trap
    a = read_rgb8(tmp_path / "g16.png")
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert np.array_equal(a, quantize(read_image(tmp_path / "g16.png").rgb, 8))


def _png_header_only(path, width, height):
    """A PNG that claims width x height but holds one scanline: Pillow judges the size at open."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def test_large_photos_are_not_taken_for_decompression_bombs(tmp_path, monkeypatch):
    """With the command's setting a 182-megapixel photo (over Pillow's default limit) opens;
    over 2^31 px is refused. The library alone leaves Pillow's process-wide limit as it was."""
    from sdflow.imageio import allow_large_images

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 89478485)   # Pillow's own default
    _png_header_only(tmp_path / "photo.png", 13500, 13500)
    with pytest.raises(PILImage.DecompressionBombError):
        PILImage.open(tmp_path / "photo.png")
    allow_large_images()
    with PILImage.open(tmp_path / "photo.png") as im:   # the size check happens here
        assert im.size == (13500, 13500)
    _png_header_only(tmp_path / "bomb.png", 50000, 50000)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "bomb.png")


def test_quantize_in_slabs_is_quantize_whole(monkeypatch):
    """Large outputs are quantized a slab of rows at a time (bounded temporaries); the slabs'
    seams must not show: the same levels as one pass, for 8 and 16 bits and strided input."""
    import sdflow.imageio as io

    x = np.transpose(np.random.default_rng(0).random((3, 37, 23)) * 1.2 - 0.1, (1, 2, 0)).astype(np.float32)
    whole = {b: np.floor(np.clip(x.astype(np.float64), 0, 1) * (2 ** b - 1) + 0.5) for b in (8, 16)}
    monkeypatch.setattr(io, "_QUANTIZE_SLAB", 50)   # 50 values: rows one at a time
    for b in (8, 16):
        q = quantize(x, b)
        assert q.dtype == (np.uint8 if b == 8 else np.uint16) and np.array_equal(q, whole[b])
    x[30, 5, 1] = np.nan   # in a late slab
    with pytest.raises(ValueError, match="non-finite"):
        quantize(x)


def test_tensor_conversion():
    rgb = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    t = to_tensor(rgb, dtype=torch.float64)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float64
    assert torch.allclose(t[0, 1], torch.from_numpy(rgb[..., 1]).double() * 2 - 1)
    assert np.allclose(from_tensor(t), rgb)
    assert np.allclose(from_tensor(torch.full((1, 3, 2, 2), 3.0)), 2.0)  # not clamped here


def test_alpha_resizing_follows_the_model_grid():
    a = np.random.default_rng(0).random((3, 2)).astype(np.float32)
    blocks = np.kron(a, np.ones((4, 4), np.float32))
    assert np.allclose(downscale_alpha(blocks), a, atol=1e-6)
    # 10 x 6 -> 3 x 2 (ceil); the last row of blocks averages the real row with its edge copies.
    odd = np.random.default_rng(1).random((10, 6)).astype(np.float32)
    small = downscale_alpha(odd)
    assert small.shape == (3, 2)
    assert np.isclose(small[2, 0], (odd[8:10, 0:4].sum() + 2 * odd[9, 0:4].sum()) / 16)

    up = upscale_alpha(a)
    assert up.shape == (12, 8) and up.min() >= 0 and up.max() <= 1
    assert np.allclose(upscale_alpha(np.full((3, 2), 0.25, np.float32)), 0.25, atol=1e-6)
