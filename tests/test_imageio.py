"""Image reading and writing: modes, bit depths, alpha, EXIF, rounding and bad files."""
import numpy as np
import pytest
from PIL import Image as PILImage

from sdflow.imageio import ImageReadError, find_images, quantize, read_image, write_image


def rand(h, w, c=3, seed=0):
    return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


def test_rgb_roundtrip_exact_at_8_bits(tmp_path):
    arr = (rand(9, 7) * 255).round().astype(np.uint8)
    PILImage.fromarray(arr).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert not img.grayscale and img.alpha is None and img.bit_depth == 8 and img.size == (7, 9)
    write_image(tmp_path / "b.png", img.rgb)
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "b.png")), arr)


def test_quantize_rounds_instead_of_truncating():
    x = np.array([0.0, 0.4 / 255, 0.6 / 255, 254.5 / 255, 1.2, -0.1], dtype=np.float32)
    assert quantize(x, 8).tolist() == [0, 0, 1, 255, 255, 0]
    assert quantize(np.array([0.5 / 65535 + 1e-9]), 16).tolist() == [1]


def test_grayscale_and_rgba(tmp_path):
    gray = (rand(6, 5, 1)[..., 0] * 255).astype(np.uint8)
    PILImage.fromarray(gray).save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png")
    assert g.grayscale and np.allclose(g.rgb[..., 0], g.rgb[..., 2])
    write_image(tmp_path / "g_out.png", g.rgb, grayscale=True)
    out = PILImage.open(tmp_path / "g_out.png")
    assert out.mode == "L" and np.array_equal(np.asarray(out), gray)

    rgba = (rand(6, 5, 4) * 255).astype(np.uint8)
    PILImage.fromarray(rgba).save(tmp_path / "a.png")
    a = read_image(tmp_path / "a.png")
    assert a.alpha is not None and np.allclose(a.alpha, rgba[..., 3] / 255)
    write_image(tmp_path / "a_out.png", a.rgb, a.alpha)
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "a_out.png")), rgba)


@pytest.mark.parametrize("grey", [True, False])
def test_16_bit_png_roundtrip(tmp_path, grey):
    import png

    h, w = 5, 6
    data = (rand(h, w, 1 if grey else 3) * 65535).astype(np.uint16)
    with open(tmp_path / "x.png", "wb") as f:
        png.Writer(w, h, greyscale=grey, bitdepth=16).write(f, data.reshape(h, -1))
    img = read_image(tmp_path / "x.png")
    assert img.bit_depth == 16 and img.grayscale == grey
    write_image(tmp_path / "y.png", img.rgb, grayscale=img.grayscale, bit_depth=16)
    _, _, rows, info = png.Reader(filename=str(tmp_path / "y.png")).asDirect()
    back = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(data.shape)
    assert info["bitdepth"] == 16 and np.array_equal(back, data)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((4, 8, 3), dtype=np.uint8)
    arr[:, :4] = 255  # left half white
    im = PILImage.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    img = read_image(tmp_path / "r.jpg")
    assert img.size == (4, 8)  # width, height after rotation
    assert img.rgb[:4].mean() > 0.8 and img.rgb[4:].mean() < 0.2


def test_bad_files_raise_with_the_name(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    good = tmp_path / "t.png"
    PILImage.fromarray((rand(64, 64) * 255).astype(np.uint8)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:200])
    for name in ["empty.png", "text.jpg", "trunc.png"]:
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)


def test_find_images_recursive_and_sorted(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for rel in ["b.PNG", "a.jpg", "sub/c.webp", "sub/deeper/d.tiff", "notes.txt", ".hidden.png"]:
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tiff"]
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")
