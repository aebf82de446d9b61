"""`sdflow sr` / `sdflow ds` end to end with a tiny random model."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from sdflow.cli import main


def save(path, h, w, mode="RGB", seed=0, **kw):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = (rng.random((h, w, channels)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr[..., 0] if channels == 1 else arr).save(path, **kw)
    return path


def sr(*args):
    return main(["sr", "-q", *map(str, args)])


def test_sr_and_ds_sizes(tmp_path, tiny_model_path):
    src = save(tmp_path / "in" / "a.png", 37, 45)
    assert sr("-i", src, "-o", tmp_path / "out", "--model", tiny_model_path) == 0
    assert PILImage.open(tmp_path / "out" / "a_sr.png").size == (180, 148)
    jpg = save(tmp_path / "in" / "b.jpg", 150, 202)
    assert main(["ds", "-q", "-i", str(jpg), "-o", str(tmp_path / "out"), "--model", str(tiny_model_path)]) == 0
    out = PILImage.open(tmp_path / "out" / "b_ds.jpg")
    assert out.size == (51, 38) and out.format == "JPEG"


def test_modes_are_kept(tmp_path, tiny_model_path):
    save(tmp_path / "in" / "g.png", 12, 10, "L")
    save(tmp_path / "in" / "t.png", 12, 10, "RGBA", seed=1)
    assert sr("-i", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_model_path) == 0
    g = PILImage.open(tmp_path / "out" / "g_sr.png")
    t = PILImage.open(tmp_path / "out" / "t_sr.png")
    assert g.mode == "L" and g.size == (40, 48)
    assert t.mode == "RGBA" and t.size == (40, 48)
    # Alpha is upscaled from the input's, not invented.
    src_alpha = np.asarray(PILImage.open(tmp_path / "in" / "t.png"))[..., 3].mean()
    assert abs(np.asarray(t)[..., 3].mean() - src_alpha) < 8


def test_16_bit_in_16_bit_out(tmp_path, tiny_model_path):
    import png

    data = (np.random.default_rng(0).random((8, 8, 3)) * 65535).astype(np.uint16)
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "d.png", "wb") as f:
        png.Writer(8, 8, greyscale=False, bitdepth=16).write(f, data.reshape(8, -1))
    assert sr("-i", tmp_path / "in" / "d.png", "-o", tmp_path / "out", "--model", tiny_model_path) == 0
    w, h, _, info = png.Reader(filename=str(tmp_path / "out" / "d_sr.png")).asDirect()
    assert (w, h, info["bitdepth"], info["greyscale"]) == (32, 32, 16, False)


def test_bad_file_is_reported_and_others_done(tmp_path, tiny_model_path, capsys):
    save(tmp_path / "in" / "good1.png", 8, 8)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    save(tmp_path / "in" / "sub" / "good2.jpg", 8, 8)
    assert sr("-i", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_model_path) == 1
    assert (tmp_path / "out" / "good1_sr.png").is_file()
    assert (tmp_path / "out" / "sub" / "good2_sr.jpg").is_file()  # sub-folder kept
    assert not (tmp_path / "out" / "broken_sr.png").exists()
    assert "broken.png" in capsys.readouterr().err


def test_samples_seeds_and_names(tmp_path, tiny_model_path):
    src = save(tmp_path / "a.png", 8, 8)
    args = ["-i", src, "--model", tiny_model_path, "--samples", "3", "--tau", "1.0"]
    assert sr(*args, "-o", tmp_path / "o1", "--seed", "5") == 0
    assert sr(*args, "-o", tmp_path / "o2", "--seed", "5") == 0
    assert sr(*args, "-o", tmp_path / "o3", "--seed", "6", "--suffix", "") == 0
    names = sorted(p.name for p in (tmp_path / "o1").iterdir())
    assert names == ["a_sr_0.png", "a_sr_1.png", "a_sr_2.png"]
    o1 = [(tmp_path / "o1" / n).read_bytes() for n in names]
    assert len(set(o1)) == 3  # diverse
    assert o1 == [(tmp_path / "o2" / n).read_bytes() for n in names]  # same seed, same bytes
    # Seeds are per sample: seed 6's sample 0 is seed 5's sample 1.
    assert (tmp_path / "o3" / "a_0.png").read_bytes() == o1[1]


def test_ds_component_and_sampler(tmp_path, tiny_model_path):
    src = save(tmp_path / "h.png", 32, 32)
    base = ["ds", "-q", "-i", str(src), "--model", str(tiny_model_path), "--tau", "0"]
    assert main(base + ["-o", str(tmp_path / "k0"), "--component", "0"]) == 0
    assert main(base + ["-o", str(tmp_path / "k1"), "--component", "1"]) == 0
    assert main(base + ["-o", str(tmp_path / "el"), "--sampler", "element", "--component", "0", "1"]) == 0
    a = np.asarray(PILImage.open(tmp_path / "k0" / "h_ds.png"), dtype=float)
    b = np.asarray(PILImage.open(tmp_path / "k1" / "h_ds.png"), dtype=float)
    assert a.shape == (8, 8, 3) and np.abs(a - b).max() > 0
    assert main(base + ["-o", str(tmp_path / "x"), "--component", "99"]) == 2


def test_non_finite_output_fails_by_name(tmp_path, tiny_model_path, monkeypatch, capsys):
    from sdflow.model import SDFlow

    save(tmp_path / "in" / "n.png", 8, 8)
    monkeypatch.setattr(SDFlow, "super_resolve", lambda self, x, **kw: torch.full(
        (1, 3, 32, 32), float("nan")))
    assert sr("-i", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_model_path) == 1
    err = capsys.readouterr().err
    assert "n.png" in err and "non-finite" in err
    assert not (tmp_path / "out" / "n_sr.png").exists()


def test_usage_errors(tmp_path, tiny_model_path):
    assert sr("-i", tmp_path / "missing", "-o", tmp_path / "out", "--model", tiny_model_path) == 2
    src = save(tmp_path / "a.png", 8, 8)
    assert sr("-i", src, "-o", tmp_path / "out", "--model", tmp_path / "nomodel.safetensors") == 2
    # Writing next to the input without a suffix would overwrite it.
    assert sr("-i", src, "-o", tmp_path, "--model", tiny_model_path, "--suffix", "", "--ext", "png") == 1
    assert (tmp_path / "a.png").is_file()


def test_console_script(tmp_path, tiny_model_path):
    src = save(tmp_path / "a.png", 8, 8)
    exe = [sys.executable, "-m", "sdflow"]
    r = subprocess.run(exe + ["sr", "-i", str(src), "-o", str(tmp_path / "o"), "--model", str(tiny_model_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1 file(s) written" in r.stdout and (tmp_path / "o" / "a_sr.png").is_file()
