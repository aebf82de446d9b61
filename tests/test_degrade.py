import argparse
import json
import math
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
import pytest
import torch
from PIL import Image

from sdflow import metrics as M
from sdflow.commands import degrade as cmd
from sdflow.data import degrade as D
from sdflow.resize import downscale


@pytest.fixture(scope="module")
def photo():
    """A real photo (coffee, 512 x 400) cut to 256 x 200: textures, edges, flat areas."""
    path = next(p for p in D.sample_images() if p.name == "coffee.png")
    return np.asarray(Image.open(path).convert("RGB"))[100:300, 128:384]


def kernel_moments(k):
    r = k.shape[0] // 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    m = lambda f: float((k * f).sum())  # noqa: E731
    return m(x), m(y), m(x * x), m(y * y), m(x * y)


# ------------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("preset", list(D.PRESETS))
def test_lr_is_exactly_a_quarter_of_the_cropped_hr(photo, preset):
    hr = photo[:199, :250]  # neither side a multiple of 4
    lr = D.degrade(hr, preset, 0)
    assert lr.shape == (199 // 4, 250 // 4, 3) and lr.dtype == np.uint8
    lr_f = D.degrade(hr / 255.0, preset, 0)
    assert lr_f.shape == lr.shape and lr_f.dtype == np.float32
    assert 0.0 <= lr_f.min() and lr_f.max() <= 1.0
    assert D.crop_to_multiple(hr).shape == (196, 248, 3)


def test_bicubic_preset_is_plain_bicubic(photo):
    hr = photo[:123, :205]
    lr = D.degrade(hr, "bicubic", 1)
    t = torch.from_numpy(D.crop_to_multiple(hr) / 255.0).permute(2, 0, 1)[None].float()
    ref = downscale(t, 4, "bicubic")[0].permute(1, 2, 0).numpy()
    ref = np.clip(np.rint(ref * 255), 0, 255).astype(np.uint8)
    assert np.abs(lr.astype(int) - ref.astype(int)).max() <= 1  # float32 vs float64 rounding


def test_bad_inputs():
    with pytest.raises(ValueError):
        D.degrade(np.zeros((3, 40, 3), np.uint8), "mild", 0)  # under 4 px after the crop
    with pytest.raises(ValueError):
        D.degrade(np.zeros((40, 40), np.uint8), "mild", 0)
    with pytest.raises(TypeError):
        D.degrade(np.zeros((40, 40, 3), np.int32), "mild", 0)
    with pytest.raises(ValueError, match="unknown preset"):
        D.degrade(np.zeros((40, 40, 3), np.uint8), "nope", 0)


# ------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("preset", ["mild", "realistic", "severe", "camera"])
def test_same_seed_same_result_different_seed_different(photo, preset):
    a = D.degrade(photo, preset, np.random.default_rng(7))
    b = D.degrade(photo, preset, np.random.default_rng(7))
    assert np.array_equal(a, b)
    others = [D.degrade(photo, preset, s) for s in (8, 9, 10)]
    assert any(not np.array_equal(a, o) for o in others)


def test_file_seed_depends_on_seed_and_path_only():
    assert D.file_seed(3, "sub/a.png") == D.file_seed(3, PurePosixPath("sub/a.png"))
    assert D.file_seed(3, "sub/a.png") == D.file_seed(3, PureWindowsPath(r"sub\a.png"))
    seeds = {D.file_seed(s, p) for s in (0, 1) for p in ("a.png", "b.png", "sub/a.png")}
    assert len(seeds) == 6
    assert all(0 <= s < 2 ** 64 for s in seeds)
    r1, r2 = D.file_rng(5, "x.png"), D.file_rng(5, "x.png")
    assert r1.integers(1 << 62) == r2.integers(1 << 62)


def test_parameters_are_recorded(photo):
    lr, p = D.degrade(photo, "realistic", 3, return_params=True)
    assert p["preset"] == "realistic" and set(p) >= {"stage1", "stage2", "first_scale"}
    assert 1.5 <= p["first_scale"] <= 2.5
    for stage in ("stage1", "stage2"):
        assert p[stage]["resize"] in ("bicubic", "bilinear", "area")
        assert 60 <= p[stage]["jpeg"] <= 95  # jpeg_prob is 1 in both stages
    json.dumps(p)  # the CLI stores it


# -------------------------------------------------------------------- preset strength

def test_presets_differ_measurably(photo):
    # Distance from the clean bicubic LR grows with the preset's strength.
    clean = D.degrade(photo, "bicubic", 0)

    def distortion(preset):
        return np.mean([M.psnr(clean, D.degrade(photo, preset, s)) for s in range(4)])

    mild, realistic, severe = distortion("mild"), distortion("realistic"), distortion("severe")
    assert math.isinf(M.psnr(clean, D.degrade(photo, "bicubic", 5)))  # bicubic ignores the seed
    assert mild > realistic > severe
    assert severe < 26


def test_noise_stage_is_seen_by_the_noise_estimator(photo):
    # Low-quality JPEG removes much of the pixel-level noise the estimator sees, so the
    # noise stage is checked on its own: Gaussian noise of 8/255 on top of bicubic.
    noisy = D.DegradationPreset("noisy", "", D.StagePreset(
        resize_kernels=("bicubic",), noise_prob=1.0, gaussian_noise_prob=1.0,
        noise_sigma=(8 / 255, 8 / 255), gray_noise_prob=0.0))
    clean = M.noise_sigma(D.degrade(photo, "bicubic", 0))
    est = np.mean([M.noise_sigma(D.degrade(photo, noisy, s)) for s in range(3)])
    assert est > 2 * clean
    assert 8 / 255 * 0.8 < est < 8 / 255 * 1.5  # the photo's own texture adds a little


def test_blur_stage_softens(photo):
    blur_only = D.DegradationPreset("blur", "", D.StagePreset(blur_prob=1.0, sigma=(1.5, 2.5)))
    sharp = M.laplacian_variance(D.degrade(photo, "bicubic", 0))
    soft = np.mean([M.laplacian_variance(D.degrade(photo, blur_only, s)) for s in range(3)])
    assert soft < 0.7 * sharp


# ----------------------------------------------------------------------------- camera

def test_bayer_mask_samples_one_colour_per_pixel_rggb():
    m = D.bayer_mask(4, 6)
    assert np.array_equal(m.sum(axis=2), np.ones((4, 6)))
    assert m[0, 0, 0] == m[0, 1, 1] == m[1, 0, 1] == m[1, 1, 2] == 1
    assert m[..., 1].mean() == 0.5 and m[..., 0].mean() == m[..., 2].mean() == 0.25


def test_demosaic_restores_flat_colours_and_keeps_the_recorded_samples():
    mask = D.bayer_mask(10, 12)
    flat = np.ones((10, 12, 3)) * np.array([0.2, 0.5, 0.9])
    raw = (flat * mask).sum(axis=2, keepdims=True) * np.ones(3)
    assert np.allclose(D.demosaic_bilinear(raw, mask), flat)
    rng = np.random.default_rng(0)
    img = rng.random((10, 12, 3))
    raw = (img * mask).sum(axis=2, keepdims=True) * np.ones(3)
    out = D.demosaic_bilinear(raw, mask)
    assert np.array_equal(out[mask > 0], img[mask > 0])
    assert not np.allclose(out, img)  # the missing two thirds are interpolated, not known


def test_camera_preset_is_its_own_family(photo):
    lr, p = D.degrade(photo, "camera", 4, return_params=True)
    assert lr.shape == (50, 64, 3) and set(p) == {"preset", "hr_size", "camera"}
    cam = p["camera"]
    assert 50 <= cam["jpeg"] <= 90 and 0.3 <= cam["sharpen"]["amount"] <= 1.2
    json.dumps(p)
    # Sharpening: against the same chain without it, the LR is measurably crisper.
    soft = D.CameraPreset("soft", "", sharpen_amount=(0.0, 0.0))
    crisp = np.mean([M.laplacian_variance(D.degrade(photo, "camera", s)) for s in range(3)])
    blunt = np.mean([M.laplacian_variance(D.degrade(photo, soft, s)) for s in range(3)])
    assert crisp > 1.3 * blunt
    # The tone curve and white balance move the colours, unlike the blur / noise chains.
    clean = D.degrade(photo, "bicubic", 0).astype(float)
    shifts = [np.abs(D.degrade(photo, "camera", s).astype(float).mean((0, 1)) - clean.mean((0, 1))).max()
              for s in range(4)]
    assert max(shifts) > 2


# ---------------------------------------------------------------------------- kernels

def test_every_kernel_type_is_normalised_and_centred():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        k, p = D.random_kernel(rng, D.StagePreset())
        seen.add(p["type"])
        assert k.ndim == 2 and k.shape[0] == k.shape[1] == p["size"] and p["size"] % 2 == 1
        assert 7 <= p["size"] <= 21
        assert abs(k.sum() - 1.0) < 1e-12 and k.min() >= 0
        assert np.allclose(k, k[::-1, ::-1])  # point symmetric: no shift of the image
        mx, my, *_ = kernel_moments(k)
        assert abs(mx) < 1e-9 and abs(my) < 1e-9
    assert seen == set(D.KERNEL_TYPES)
    for only in range(len(D.KERNEL_TYPES)):
        w = tuple(float(i == only) for i in range(len(D.KERNEL_TYPES)))
        k, p = D.random_kernel(rng, D.StagePreset(kernel_weights=w))
        assert p["type"] == D.KERNEL_TYPES[only] and abs(k.sum() - 1) < 1e-12


def test_anisotropic_gaussian_has_the_requested_covariance():
    sx, sy, th = 3.0, 1.0, math.pi / 6
    k = D.gaussian_kernel2d(41, sx, sy, th)
    _, _, xx, yy, xy = kernel_moments(k)
    c, s = math.cos(th), math.sin(th)
    R = np.array([[c, -s], [s, c]])
    cov = R @ np.diag([sx ** 2, sy ** 2]) @ R.T
    assert np.allclose([[xx, xy], [xy, yy]], cov, rtol=1e-3, atol=1e-3)
    iso = D.gaussian_kernel2d(31, 2.0)
    assert np.allclose(iso, iso.T) and kernel_moments(iso)[2] == pytest.approx(4.0, rel=1e-3)


def test_generalized_and_plateau_shapes():
    # beta = 1 turns the generalised Gaussian into the plain one.
    assert np.allclose(D.generalized_kernel2d(15, 2.0, 1.2, 0.4, beta=1.0),
                       D.gaussian_kernel2d(15, 2.0, 1.2, 0.4))
    # Larger beta: flatter top and lighter tails (more box-like).
    box = D.generalized_kernel2d(21, 3.0, beta=4.0)
    peaky = D.generalized_kernel2d(21, 3.0, beta=0.5)
    c = 10
    assert box[c, c + 2] / box[c, c] > peaky[c, c + 2] / peaky[c, c]
    assert box[c, -1] < peaky[c, -1]
    # Plateau: 1 / (1 + d^(2 beta)) is half its peak exactly at Mahalanobis distance 1.
    pl = D.plateau_kernel2d(21, 3.0, beta=1.5)
    assert pl[c, c + 3] / pl[c, c] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        D.gaussian_kernel2d(8, 1.0)


def test_wide_kernels_get_a_wide_support():
    rng = np.random.default_rng(1)
    stage = D.StagePreset(kernel_weights=(1, 0, 0, 0, 0, 0), sigma=(3.0, 3.0))
    for _ in range(10):
        assert D.random_kernel(rng, stage)[1]["size"] >= 19


def test_apply_kernel():
    x = torch.full((1, 3, 20, 20), 0.3)
    k = D.gaussian_kernel2d(9, 2.0, 1.0, 0.7)
    assert torch.allclose(D.apply_kernel(x, k), x, atol=1e-6)  # no border darkening
    imp = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    imp[..., 10, 10] = 1
    asym = np.arange(9.0).reshape(3, 3)
    asym /= asym.sum()
    out = D.apply_kernel(imp, asym)[0, 0, 9:12, 9:12].numpy()
    assert np.allclose(out, asym)  # a convolution reproduces the kernel from an impulse
    tiny = torch.rand(1, 3, 4, 4)
    assert D.apply_kernel(tiny, D.gaussian_kernel2d(15, 3.0)).shape == tiny.shape


# ------------------------------------------------------------------ noise and JPEG

def test_gaussian_noise_colour_and_gray():
    rng = np.random.default_rng(0)
    img = np.full((128, 128, 3), 0.5)
    col = D.add_gaussian_noise(img, 0.05, gray=False, rng=rng)
    gray = D.add_gaussian_noise(img, 0.05, gray=True, rng=rng)
    assert np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 0], gray[..., 2])
    assert not np.allclose(col[..., 0], col[..., 1])
    for noisy in (col, gray):
        assert (noisy - img).std() == pytest.approx(0.05, rel=0.05)
    assert D.add_gaussian_noise(np.ones((8, 8, 3)), 0.5, False, rng).max() <= 1.0


def test_poisson_noise_variance_follows_intensity():
    rng = np.random.default_rng(0)
    peak = 400.0
    for v in (0.1, 0.6):
        img = np.full((200, 200, 3), v)
        out = D.add_poisson_noise(img, peak, gray=False, rng=rng)
        assert out.mean() == pytest.approx(v, abs=0.005)
        assert out.std() == pytest.approx(math.sqrt(v / peak), rel=0.05)
    g = D.add_poisson_noise(np.full((64, 64, 3), 0.4), peak, gray=True, rng=rng)
    assert np.allclose(g[..., 0], g[..., 2])


def test_jpeg_stage(photo):
    img = photo / 255.0
    hi, lo = D.jpeg(img, 95), D.jpeg(img, 20)
    assert hi.shape == img.shape and 0 <= lo.min() and lo.max() <= 1
    assert M.psnr(img, hi) > M.psnr(img, lo) > 20
    assert M.psnr(img, lo) < 40  # the stage really changed something
    # Inside degrade: same everything except the JPEG step.
    base = dict(blur_prob=0.0, noise_prob=0.0, resize_kernels=("area",))
    with_jpeg = D.DegradationPreset("j", "", D.StagePreset(jpeg_prob=1.0, jpeg_quality=(10, 10), **base))
    without = D.DegradationPreset("n", "", D.StagePreset(jpeg_prob=0.0, **base))
    lr_j, p = D.degrade(photo, with_jpeg, 0, return_params=True)
    lr_n = D.degrade(photo, without, 0)
    assert p["stage1"]["jpeg"] == 10
    assert M.psnr(lr_n, lr_j) < 35


# -------------------------------------------------------------------------- samples

def test_sample_images_are_shipped_and_documented():
    paths = D.sample_images()
    assert 4 <= len(paths) <= 6
    assert sum(p.stat().st_size for p in paths) < 2.5 * 2 ** 20
    readme = (paths[0].parent / "README.md").read_text()
    for p in paths:
        assert p.name in readme
        with Image.open(p) as im:
            assert im.mode == "RGB" and max(im.size) <= 512
            assert im.width % 4 == 0 and im.height % 4 == 0


# ------------------------------------------------------------------------------- CLI

def run_cli(argv):
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["degrade"] + argv)
    return args.func(args)


@pytest.fixture
def hr_dir(tmp_path, photo):
    d = tmp_path / "hr"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.png", "b.jpg", "c.png", "d.png", "e.png", "sub/f.png", "sub/g.png", "h.bmp"]
    for i, name in enumerate(names):
        y, x = rng.integers(0, 100, 2)
        crop = photo[y:y + 62 + i, x:x + 70 - i]  # odd sizes: the crop to 4 matters
        Image.fromarray(crop).save(d / name, quality=95) if name.endswith("jpg") else \
            Image.fromarray(crop).save(d / name)
    (d / "notes.txt").write_text("not an image, and not an image extension either")
    return d, [PurePosixPath(n) for n in names]


def png_names(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def test_cli_paired(tmp_path, hr_dir, capsys):
    src, names = hr_dir
    out = tmp_path / "out"
    assert run_cli(["-i", str(src), "-o", str(out), "--preset", "severe", "--seed", "3"]) == 0
    expected = sorted(n.with_suffix(".png").as_posix() for n in names)
    assert png_names(out / "HR") == expected == png_names(out / "LR")
    for n in expected:
        hr = np.asarray(Image.open(out / "HR" / n))
        lr = np.asarray(Image.open(out / "LR" / n))
        assert hr.shape[0] % 4 == 0 and hr.shape[1] % 4 == 0
        assert lr.shape == (hr.shape[0] // 4, hr.shape[1] // 4, 3)
    assert "wrote 8 HR and 8 LR" in capsys.readouterr().out
    manifest = json.loads((out / "degrade.json").read_text())
    assert manifest["seed"] == 3 and set(manifest["lr"]) == {n.as_posix() for n in names}

    # Per-file seeding: the LR of a file does not depend on the other files.
    alone = tmp_path / "alone"
    (alone / "sub").mkdir(parents=True)
    (alone / "sub" / "f.png").write_bytes((src / "sub" / "f.png").read_bytes())
    assert run_cli(["-i", str(alone), "-o", str(tmp_path / "out2"), "--preset", "severe",
                    "--seed", "3"]) == 0
    one = np.asarray(Image.open(tmp_path / "out2" / "LR" / "sub" / "f.png"))
    assert np.array_equal(one, np.asarray(Image.open(out / "LR" / "sub" / "f.png")))
    # ...and equals the library call with the derived generator.
    direct = D.degrade(np.asarray(Image.open(src / "sub" / "f.png").convert("RGB")),
                       "severe", D.file_rng(3, "sub/f.png"))
    assert np.array_equal(one, direct)


def test_cli_unpaired_is_disjoint_and_seeded(tmp_path, hr_dir):
    src, names = hr_dir
    splits = []
    for seed in (0, 1, 2, 3):
        out = tmp_path / f"u{seed}"
        assert run_cli(["-i", str(src), "-o", str(out), "--mode", "unpaired",
                        "--seed", str(seed), "--preset", "mild"]) == 0
        hr, lr = set(png_names(out / "train_HR")), set(png_names(out / "train_LR"))
        assert hr.isdisjoint(lr) and len(hr) == len(lr) == 4
        assert hr | lr == {n.with_suffix(".png").as_posix() for n in names}
        assert not (out / "HR").exists() and not (out / "LR").exists()
        for n in hr:  # clean photos, full size
            src_name = next(s for s in names if s.with_suffix(".png").as_posix() == n)
            assert np.array_equal(np.asarray(Image.open(out / "train_HR" / n)),
                                  np.asarray(Image.open(src / src_name).convert("RGB")))
        splits.append(frozenset(hr))
    assert len(set(splits)) > 1  # the seed moves the split
    again = tmp_path / "again"
    run_cli(["-i", str(src), "-o", str(again), "--mode", "unpaired", "--seed", "0", "--preset", "mild"])
    assert frozenset(png_names(again / "train_HR")) == splits[0]
    out = tmp_path / "quarter"
    assert run_cli(["-i", str(src), "-o", str(out), "--mode", "unpaired", "--split", "0.25"]) == 0
    assert len(png_names(out / "train_HR")) == 2 and len(png_names(out / "train_LR")) == 6


def test_cli_unpaired_splits_only_the_readable_photos(tmp_path, hr_dir, capsys):
    src, names = hr_dir
    for bad in ("broken_a.png", "broken_b.jpg"):
        (src / bad).write_bytes(b"not an image")
    out = tmp_path / "u"
    assert run_cli(["-i", str(src), "-o", str(out), "--mode", "unpaired", "--preset", "bicubic"]) == 1
    assert len(png_names(out / "train_HR")) == len(png_names(out / "train_LR")) == 4
    err = capsys.readouterr().err
    assert "broken_a.png: not an image" in err and "broken_b.jpg: not an image" in err


def test_cli_reports_unreadable_file(tmp_path, hr_dir, capsys):
    src, names = hr_dir
    (src / "broken.png").write_bytes(b"this is not a PNG at all")
    out = tmp_path / "out"
    assert run_cli(["-i", str(src), "-o", str(out), "--preset", "bicubic"]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err
    assert len(png_names(out / "LR")) == len(names)  # the good files were still written
    assert "broken.png" not in png_names(out / "LR")


def test_cli_name_collisions_and_bad_arguments(tmp_path, photo):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo[:40, :40]).save(src / "x.png")
    Image.fromarray(photo[:40, :40]).save(src / "x.jpg")
    out = tmp_path / "out"
    assert run_cli(["-i", str(src), "-o", str(out), "--preset", "bicubic"]) == 0
    assert png_names(out / "LR") == ["x_jpg.png", "x_png.png"]
    assert run_cli(["-i", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert run_cli(["-i", str(src), "-o", str(src / "inside")]) == 2
    assert run_cli(["-i", str(src), "-o", str(out), "--split", "1.5", "--mode", "unpaired"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["-i", str(empty), "-o", str(out)]) == 1


def test_cli_names_that_still_collide_fail_instead_of_overwriting(tmp_path, photo, capsys):
    """a.jpg + a.png need a_jpg.png, which a third file already is; b.PNG and b.png differ only in
    case. Those inputs fail by name and nothing is overwritten; the rest are done."""
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(["a.jpg", "a.png", "a_jpg.png", "b.PNG", "b.png", "c.png"]):
        Image.fromarray(photo[i:i + 40, :40]).save(src / name, format="JPEG" if name.endswith("jpg") else "PNG")
    out = tmp_path / "out"
    assert run_cli(["-i", str(src), "-o", str(out), "--preset", "bicubic"]) == 1
    err = capsys.readouterr().err
    assert "a.jpg: its output name would also be that of a_jpg.png; rename one" in err
    assert "b.PNG: its output name would also be that of b.png" in err
    assert png_names(out / "LR") == ["a_png.png", "c.png"]
    assert sorted(json.loads((out / "degrade.json").read_text())["failed"]) == ["a.jpg", "a_jpg.png", "b.PNG", "b.png"]
    with pytest.raises(SystemExit):
        run_cli(["-i", str(src), "-o", str(out), "--mode", "unpaired", "--seed", "-1"])


def test_16_bit_colour_is_rounded_to_8_bits(tmp_path):
    """Pillow truncates 16-bit RGB to its high byte; the data pipelines round."""
    from sdflow.imageio import encode_png

    v = np.random.default_rng(0).integers(0, 65536, (12, 16, 3)).astype(np.uint16)
    (tmp_path / "c16.png").write_bytes(encode_png(v))
    expected = np.rint(v / 257.0).astype(np.uint8)
    assert not np.array_equal(expected, (v >> 8).astype(np.uint8))   # the difference is there to see
    assert np.array_equal(cmd.load_rgb(tmp_path / "c16.png"), expected)


def test_cli_is_registered():
    from sdflow import cli

    assert any(name == "degrade" and module == "degrade" for name, module, _ in cli.COMMANDS)


def test_load_applies_exif_orientation(tmp_path, photo):
    im = Image.fromarray(photo[:40, :64])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert cmd.load_rgb(tmp_path / "rot.jpg").shape == (64, 40, 3)
