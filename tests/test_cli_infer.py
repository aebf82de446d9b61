"""`sdflow sr` / `sdflow ds` end to end: a tiny random model saved to disk, the real CLI."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import sdflow.model as model_module
from sdflow.cli import main
from sdflow.commands import infer as infer_cmd
from sdflow.commands.options import device_name
from sdflow.imageio import (decode_png, downscale_alpha, encode_png, quantize, read_image, to_tensor,
                            upscale_alpha)
from sdflow.model import SDFlow
from sdflow.pipeline import Pipeline, Prepared, resolve_device


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine torch's
    # spinning worker threads slow these tests down by an order of magnitude.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save(path, h, w, mode="RGB", seed=0, **kw):
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr[..., 0] if channels == 1 else arr).save(path, **kw)
    return path


def sdflow(*args):
    return main([str(a) for a in args])


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())


# ----- sizes, formats, modes --------------------------------------------------------------------

def test_jpeg_output_of_an_image_with_alpha_says_the_alpha_is_gone(tmp_path, tiny_model_path, capsys):
    src = tmp_path / "in"
    save(src / "t.png", 8, 8, "RGBA", seed=1)
    save(src / "o.png", 8, 8, "RGB", seed=2)
    assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / "out", "--ext", "jpg", "--model", tiny_model_path) == 0
    err = capsys.readouterr().err
    assert "note: " in err and "t.png: its alpha channel is not in the JPEG output" in err
    assert "o.png" not in err and files(tmp_path / "out") == ["o_sr.jpg", "t_sr.jpg"]
    assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / "png", "--model", tiny_model_path) == 0
    assert "alpha" not in capsys.readouterr().err
    with PILImage.open(tmp_path / "png" / "t_sr.png") as im:
        assert im.mode == "RGBA"


def test_sr_and_ds_sizes_and_formats(tmp_path, tiny_model_path):
    a = save(tmp_path / "a.png", 37, 45)
    assert sdflow("sr", "-q", "-i", a, "-o", tmp_path / "out", "--model", tiny_model_path) == 0
    out = PILImage.open(tmp_path / "out" / "a_sr.png")
    assert (out.format, out.mode, out.size) == ("PNG", "RGB", (180, 148))

    b = save(tmp_path / "b.jpg", 150, 202, quality=92)
    assert sdflow("ds", "-q", "-i", b, "-o", tmp_path / "out", "--model", tiny_model_path) == 0
    out = PILImage.open(tmp_path / "out" / "b_ds.jpg")
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (51, 38))

    assert sdflow("ds", "-q", "-i", b, "-o", tmp_path / "out", "--model", tiny_model_path,
                  "--ext", "png", "--suffix", "lr") == 0
    assert PILImage.open(tmp_path / "out" / "b_lr.png").size == (51, 38)


def test_grayscale_and_alpha_are_kept(tmp_path, tiny_model_path):
    src = tmp_path / "in"
    save(src / "g.png", 12, 10, "L")
    save(src / "gj.jpg", 12, 10, "L", seed=1)
    save(src / "t.png", 12, 10, "RGBA", seed=2)
    save(src / "la.png", 12, 10, "LA", seed=3)
    for mode, size, resize_alpha in [("sr", (40, 48), upscale_alpha), ("ds", (3, 3), downscale_alpha)]:
        out = tmp_path / mode
        assert sdflow(mode, "-q", "-i", src, "-o", out, "--model", tiny_model_path) == 0
        got = {p.stem.rsplit("_", 1)[0]: PILImage.open(p) for p in out.iterdir()}
        assert {k: (v.mode, v.format) for k, v in got.items()} == {
            "g": ("L", "PNG"), "gj": ("L", "JPEG"), "t": ("RGBA", "PNG"), "la": ("LA", "PNG")}
        assert all(v.size == size for v in got.values())
        for name in ("t", "la"):
            # The alpha written is exactly the input's alpha resized onto the model's grid.
            expected = quantize(resize_alpha(read_image(src / f"{name}.png").alpha))
            assert np.array_equal(np.asarray(got[name])[..., -1], expected)


def test_16_bit_png_in_gives_16_bit_png_out(tmp_path, tiny_model_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    c16_in = rng.integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    (tmp_path / "in" / "c16.png").write_bytes(encode_png(c16_in))
    PILImage.fromarray(rng.integers(0, 65536, (8, 9), dtype=np.uint16)).save(tmp_path / "in" / "g16.png")
    assert sdflow("sr", "-q", "-i", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_model_path) == 0

    c16, _ = decode_png((tmp_path / "out" / "c16_sr.png").read_bytes())
    assert c16.shape == (32, 36, 3)
    g16 = PILImage.open(tmp_path / "out" / "g16_sr.png")
    assert g16.mode == "I;16" and g16.size == (36, 32)
    for samples in (c16, np.asarray(g16)):
        # Real 16-bit levels, not 8-bit values stretched (those would all be multiples of 257).
        assert (samples % 257 != 0).mean() > 0.5

    assert sdflow("sr", "-q", "-i", tmp_path / "in" / "c16.png", "-o", tmp_path / "jpg", "--ext", "jpg",
                  "--model", tiny_model_path) == 0
    assert PILImage.open(tmp_path / "jpg" / "c16_sr.jpg").mode == "RGB"


def test_results_are_rounded_not_truncated(tmp_path, tiny_model_path, monkeypatch):
    # Levels 0.6, 100.52, 254.6 of 255: rounding gives 1, 101, 255; truncation would give 0, 100, 254.
    value = torch.tensor([0.6, 100.52, 254.6]) / 255

    def constant(self, lr, tau=0.8, generator=None, **kw):
        h, w = lr.shape[-2:]
        return (value * 2 - 1).view(1, 3, 1, 1).expand(1, 3, 4 * h, 4 * w).to(lr.dtype)

    monkeypatch.setattr(SDFlow, "super_resolve", constant)
    save(tmp_path / "a.png", 3, 4)
    assert sdflow("sr", "-q", "-i", tmp_path / "a.png", "-o", tmp_path / "out",
                  "--model", tiny_model_path) == 0
    out = np.asarray(PILImage.open(tmp_path / "out" / "a_sr.png"))
    assert out.shape == (12, 16, 3) and (out == [1, 101, 255]).all()


# ----- failures -----------------------------------------------------------------------------------

def test_bad_files_are_named_and_the_rest_is_done(tmp_path, tiny_model_path, capsys):
    src = tmp_path / "in"
    save(src / "good1.png", 8, 8)
    good = save(src / "sub" / "good2.jpg", 40, 40)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (src / "sub" / "cut.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (src / "empty.webp").write_bytes(b"")
    assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / "out", "--model", tiny_model_path) == 1
    assert files(tmp_path / "out") == ["good1_sr.png", "sub/good2_sr.jpg"]
    captured = capsys.readouterr()
    for name in ("broken.png", "cut.jpg", "empty.webp"):
        assert name in captured.err  # reported when it happens
        assert name in captured.out  # and in the final summary
    assert "3 failed" in captured.out and "good1" not in captured.err


def test_non_finite_output_fails_that_file_by_name(tmp_path, tiny_model_path, monkeypatch, capsys):
    real = Prepared.super_resolve

    def flaky(self, tau=0.8, seed=None, *args, **kw):
        y = real(self, tau, seed, *args, **kw)
        if self.x.shape[-1] == 9:
            return y * float("nan")
        if self.x.shape[-1] == 7:
            raise RuntimeError("out of memory (simulated)")
        if self.x.shape[-1] == 6 and seed == 1:  # sample 1 only
            return y.masked_fill(y > 0, float("inf"))
        return y

    monkeypatch.setattr(Prepared, "super_resolve", flaky)
    save(tmp_path / "in" / "fine.png", 8, 8)
    save(tmp_path / "in" / "nan.png", 8, 9)
    save(tmp_path / "in" / "oom.png", 8, 7)
    save(tmp_path / "in" / "one_bad_sample.png", 8, 6)
    assert sdflow("sr", "-q", "-i", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_model_path,
                  "--samples", "3") == 1
    # No NaN file and nothing written in its place; the good samples of a partly failed image stay.
    assert files(tmp_path / "out") == ["fine_sr_0.png", "fine_sr_1.png", "fine_sr_2.png",
                                       "one_bad_sample_sr_0.png", "one_bad_sample_sr_2.png"]
    err = capsys.readouterr().err
    assert "fine.png" not in err
    lines = {line.split(": ", 1)[0].rsplit("/", 1)[-1]: line for line in err.splitlines()
             if line.startswith("FAILED")}
    assert set(lines) == {"nan.png", "oom.png", "one_bad_sample.png"}
    assert "not finite" in lines["nan.png"] and "NaN" in lines["nan.png"]
    assert "out of memory" in lines["oom.png"]
    assert "sample 1" in lines["one_bad_sample.png"] and "Inf" in lines["one_bad_sample.png"]
    assert "sample 0" not in lines["one_bad_sample.png"]


def test_outputs_that_collide_fail_both_inputs(tmp_path, tiny_model_path, capsys):
    src = tmp_path / "in"
    save(src / "a.png", 8, 8)
    save(src / "a.jpg", 8, 8, seed=1)
    save(src / "b.png", 8, 8, seed=2)
    assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / "out", "--model", tiny_model_path,
                  "--ext", "png") == 1
    assert files(tmp_path / "out") == ["b_sr.png"]
    out = capsys.readouterr().out
    assert "a.png" in out and "a.jpg" in out and out.count("use --ext auto") == 2
    # With ext auto the two keep their own formats and do not collide.
    assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / "auto", "--model", tiny_model_path) == 0
    assert files(tmp_path / "auto") == ["a_sr.jpg", "a_sr.png", "b_sr.png"]


def test_collisions_say_what_would_help(tmp_path, tiny_model_path, capsys):
    same = tmp_path / "same"
    save(same / "a.png", 8, 8)
    save(same / "a.webp", 8, 8, seed=1)
    assert sdflow("sr", "-q", "-i", same, "-o", tmp_path / "out1", "--model", tiny_model_path) == 1
    out = capsys.readouterr().out
    # --ext auto is already the setting, and a .webp is written as PNG under it too.
    assert out.count("rename one of them") == 2 and "--ext" not in out
    assert not (tmp_path / "out1").exists()

    cased = tmp_path / "cased"
    save(cased / "a.png", 8, 8)
    save(cased / "A.png", 8, 8, seed=1)
    if len(list(cased.iterdir())) < 2:
        pytest.skip("this file system does not tell a.png from A.png")
    assert sdflow("sr", "-q", "-i", cased, "-o", tmp_path / "out2", "--model", tiny_model_path) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("differs only in letter case") == 2 and "case-insensitive file system" in out
    assert "would also be the output" not in out and "--ext" not in out


def test_usage_errors_exit_2(tmp_path, tiny_model_path, capsys):
    a = save(tmp_path / "a.png", 8, 8)
    before = a.read_bytes()
    common = ["-o", tmp_path / "out", "--model", tiny_model_path]
    assert sdflow("sr", "-i", tmp_path / "missing.png", *common) == 2
    (tmp_path / "empty").mkdir()
    assert sdflow("sr", "-i", tmp_path / "empty", *common) == 2
    assert sdflow("sr", "-i", a, "-o", tmp_path / "out", "--model", tmp_path / "no.safetensors") == 2
    assert sdflow("ds", "-i", a, *common, "--component", "0", "99") == 2
    assert sdflow("sr", "-i", a, "-o", a, "--model", tiny_model_path) == 2  # -o is a file
    # Same folder, no suffix: the output would replace the input.
    assert sdflow("sr", "-i", a, "-o", tmp_path, "--model", tiny_model_path, "--suffix", "") == 2
    assert a.read_bytes() == before
    err = capsys.readouterr().err
    assert "missing.png" in err and "no image files" in err and "no.safetensors" in err
    assert "99" in err and "overwrite" in err and "not a folder" in err
    assert sdflow("sr", "-i", a, *common, "--tile", "4") == 2  # below the smallest SR tile
    assert sdflow("ds", "-i", a, *common, "--tile", "8") == 2
    assert "at least 8" in capsys.readouterr().err
    for bad in (["--samples", "0"], ["--tau", "-1"], ["--tau", "nan"], ["--seed", "x"]):
        with pytest.raises(SystemExit) as e:
            sdflow("sr", "-i", a, *common, *bad)
        assert e.value.code == 2
    assert not (tmp_path / "out").exists()  # nothing was written by any of these


def test_default_model_is_plugged_in_at_one_place(tmp_path, tiny_model_path, capsys, monkeypatch):
    a = save(tmp_path / "a.png", 8, 8)
    monkeypatch.setattr(infer_cmd, "default_model_source", lambda: None)  # an install without one
    assert sdflow("sr", "-i", a, "-o", tmp_path / "out") == 2
    assert "no --model given and no bundled model" in capsys.readouterr().err
    monkeypatch.setattr(infer_cmd, "default_model_source", lambda: tiny_model_path)
    assert sdflow("sr", "-q", "-i", a, "-o", tmp_path / "out") == 0
    assert (tmp_path / "out" / "a_sr.png").is_file()


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    # cuda:N picks one GPU, and only one that exists.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="2 CUDA devices"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("command", ["sr", "ds", "eval", "demo"])
def test_device_names_are_checked_when_parsed(command, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        sdflow(command, "--device", "gpu1")
    assert e.value.code == 2 and "expected auto, cpu, cuda, cuda:N or mps, got 'gpu1'" in capsys.readouterr().err
    # cuda:1 parses; without CUDA it is then refused by name.
    assert device_name("CUDA:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device cuda:1: CUDA is not available"):
        resolve_device("cuda:1")


def test_seeds_beyond_torchs_range_are_usage_errors(tmp_path, tiny_model_path, capsys):
    a = save(tmp_path / "a.png", 8, 8)
    common = ["-q", "-i", a, "--model", tiny_model_path]
    with pytest.raises(SystemExit) as e:
        sdflow("sr", *common, "-o", tmp_path / "bad", "--seed", 2**64)
    assert e.value.code == 2 and "2^64 - 1" in capsys.readouterr().err
    # Sample 1 would need seed 2^64: refused before any model is loaded or file written.
    assert sdflow("sr", *common, "-o", tmp_path / "bad", "--seed", 2**64 - 1, "--samples", 2) == 2
    assert "above 18446744073709551615" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert sdflow("sr", *common, "-o", tmp_path / "top", "--seed", 2**64 - 2, "--samples", 2) == 0
    assert files(tmp_path / "top") == ["a_sr_0.png", "a_sr_1.png"]
    # eval and demo draw their samples the same way.
    for command in (["eval", "--hr", tmp_path, "--lr", tmp_path, "-o", tmp_path / "ev"], ["demo", "-o", tmp_path / "dm"]):
        assert sdflow(*command, "--seed", 2**64 - 1, "--samples", 2) == 2
        assert "above 18446744073709551615" in capsys.readouterr().err


def test_unknown_options_get_the_commands_usage_and_help_names_the_bundled_model(capsys):
    with pytest.raises(SystemExit) as e:
        sdflow("sr", "-i", "x", "-o", "y", "--component", "1")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage: sdflow sr " in err and "--outscale" in err
    assert "sdflow sr: error: unrecognized arguments: --component 1" in err
    with pytest.raises(SystemExit) as e:
        sdflow("--bogus", "ds", "-i", "x", "-o", "y")
    assert e.value.code == 2 and "sdflow: error: unrecognized arguments: --bogus" in capsys.readouterr().err
    for mode in ("sr", "ds"):
        with pytest.raises(SystemExit):
            sdflow(mode, "-h")
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: the model bundled with sdflow, which --model default also names)" in text


# ----- names, seeds, folders ------------------------------------------------------------------------

def test_samples_names_and_seeds(tmp_path, tiny_model_path):
    a = save(tmp_path / "a.png", 8, 8)

    def run(out, *extra):
        assert sdflow("sr", "-q", "-i", a, "-o", tmp_path / out, "--model", tiny_model_path, *extra) == 0
        return {p.name: p.read_bytes() for p in sorted((tmp_path / out).iterdir())}

    s5 = run("s5", "--samples", "3", "--seed", "5")
    assert list(s5) == ["a_sr_0.png", "a_sr_1.png", "a_sr_2.png"]
    assert len(set(s5.values())) == 3                                  # three distinct samples
    assert run("s5_again", "--samples", "3", "--seed", "5") == s5      # same seed: same bytes
    s6 = run("s6", "--samples", "3", "--seed", "6", "--suffix", "")
    assert list(s6) == ["a_0.png", "a_1.png", "a_2.png"]
    assert not set(s6.values()) & {s5["a_sr_0.png"]}                    # other seed: other samples
    assert s6["a_0.png"] == s5["a_sr_1.png"]                            # sample k uses seed + k
    assert run("one", "--seed", "5") == {"a_sr.png": s5["a_sr_0.png"]}  # N = 1 is sample 0


@pytest.mark.parametrize("mode", ["sr", "ds"])
def test_samples_of_one_image_make_its_condition_once(tmp_path, tiny_model_path, monkeypatch, mode):
    """--samples N: the image's condition (or each tile's) is made for the first sample and reused;
    the samples stay those of N separate runs (test_samples_names_and_seeds checks the bytes)."""
    made = []
    maker = f"{mode}_condition"
    real = getattr(SDFlow, maker)
    monkeypatch.setattr(SDFlow, maker, lambda self, x, precision=None: made.append(tuple(x.shape)) or real(self, x, precision))
    side = 12 if mode == "sr" else 48
    save(tmp_path / "in" / "a.png", side, side)
    save(tmp_path / "in" / "b.png", side, side + 4, seed=1)
    run = ["-q", "-i", tmp_path / "in", "--model", tiny_model_path, "--samples", "3"]
    assert sdflow(mode, *run, "-o", tmp_path / "whole", "--tile", "0") == 0
    assert len(made) == 2  # one per image, not one per sample
    assert len(list((tmp_path / "whole").iterdir())) == 6
    made.clear()
    tiling = ["--tile", "8", "--tile-pad", "2"] if mode == "sr" else ["--tile", "24", "--tile-pad", "8"]
    assert sdflow(mode, *run, "-o", tmp_path / "tiled", *tiling) == 0
    tiles = len(made)
    made.clear()
    assert sdflow(mode, *run[:-2], "-o", tmp_path / "tiled1", *tiling) == 0
    assert tiles == len(made) > 2  # every tile's condition once, whatever the number of samples
    # Conditions too large to keep (a huge image; here a tiny budget): made again for every sample.
    monkeypatch.setattr("sdflow.tiling.DEFAULT_CONDITIONS_BUDGET", 1)
    made.clear()
    assert sdflow(mode, *run, "-o", tmp_path / "unkept", "--tile", "0") == 0
    assert len(made) == 6


def test_folders_are_mirrored_and_order_does_not_matter(tmp_path, tiny_model_path):
    src = tmp_path / "in"
    for rel in ["z.png", "sub/b.png", "sub/deeper/c.JPG", "Sub2/d.bmp", ".hidden/e.png"]:
        save(src / rel, 8, 8, seed=len(rel))
    assert sdflow("ds", "-q", "-i", src, "-o", tmp_path / "out", "--model", tiny_model_path) == 0
    assert files(tmp_path / "out") == ["Sub2/d_ds.png", "sub/b_ds.png", "sub/deeper/c_ds.jpg", "z_ds.png"]
    # A file's output does not depend on the other files of the batch.
    assert sdflow("ds", "-q", "-i", src / "sub" / "b.png", "-o", tmp_path / "alone",
                  "--model", tiny_model_path) == 0
    alone = (tmp_path / "alone" / "b_ds.png").read_bytes()
    assert alone == (tmp_path / "out" / "sub" / "b_ds.png").read_bytes()


def test_output_folder_inside_input_folder_is_not_reprocessed(tmp_path, tiny_model_path):
    src = tmp_path / "in"
    save(src / "a.png", 8, 8)
    for _ in range(2):
        assert sdflow("sr", "-q", "-i", src, "-o", src / "out", "--model", tiny_model_path) == 0
    assert files(src) == ["a.png", "out/a_sr.png"]


def test_writing_into_the_input_folder_can_be_rerun_and_resumed(tmp_path, tiny_model_path, capsys):
    src = tmp_path / "in"
    save(src / "a.png", 8, 8)
    save(src / "b.jpg", 8, 8, seed=1)
    save(src / "sub" / "c.png", 8, 8, seed=2)
    save(src / "z_sr.png", 8, 8, seed=3)  # named like an output, but of no input beside it
    inputs = {n: (src / n).read_bytes() for n in files(src)}
    args = ["sr", "-q", "-i", src, "-o", src, "--model", tiny_model_path, "--samples", "2"]
    assert sdflow(*args) == 0
    made = ["a_sr_0.png", "a_sr_1.png", "b_sr_0.jpg", "b_sr_1.jpg", "sub/c_sr_0.png", "sub/c_sr_1.png",
            "z_sr_sr_0.png", "z_sr_sr_1.png"]
    assert files(src) == sorted([*inputs, *made])
    first = {n: (src / n).read_bytes() for n in files(src)}
    capsys.readouterr()

    # A re-run reads the same four inputs and replaces only its own outputs (with the same bytes).
    assert sdflow(*args) == 0
    captured = capsys.readouterr()
    assert "4 of 4 image(s) done, 8 file(s) written" in captured.out
    assert "8 file(s) named as this command's outputs" in captured.err
    assert {n: (src / n).read_bytes() for n in files(src)} == first

    # Interrupted: one sample missing, another marked to see that it is kept.
    (src / "a_sr_1.png").unlink()
    (src / "b_sr_0.jpg").write_bytes(b"kept")
    assert sdflow(*args, "--skip-existing") == 0
    assert "1 of 4 image(s) done, 1 file(s) written, 3 skipped" in capsys.readouterr().out
    assert (src / "a_sr_1.png").read_bytes() == first["a_sr_1.png"]
    assert (src / "b_sr_0.jpg").read_bytes() == b"kept"
    assert all((src / n).read_bytes() == data for n, data in inputs.items())
    # Only this run's exact output names are set aside: a file this run would not write (another
    # extension, a sample number it does not draw) is a real input, read and never overwritten.
    (src / "b_sr_0.jpg").unlink()
    solo = tmp_path / "solo"
    save(solo / "b.jpg", 8, 8, seed=1)
    save(solo / "b_sr.png", 8, 8, seed=4)            # b.jpg's output would be b_sr.jpg
    save(solo / "scan.png", 8, 8, seed=5)
    save(solo / "scan_sr_2023.png", 8, 8, seed=6)    # one sample: no _2023 output
    assert sdflow("sr", "-q", "-i", solo, "-o", solo, "--model", tiny_model_path) == 0
    assert "4 of 4 image(s) done" in capsys.readouterr().out
    assert {"b_sr_sr.png", "scan_sr_2023_sr.png", "b_sr.jpg", "scan_sr.png"} <= set(files(solo))

    # Without a suffix an output's name says nothing of its origin: real inputs stay protected.
    assert sdflow("sr", "-q", "-i", src / "a.png", "-o", src, "--model", tiny_model_path, "--suffix", "") == 2
    assert "non-empty --suffix" in capsys.readouterr().err
    assert (src / "a.png").read_bytes() == inputs["a.png"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_writes_its_images(tmp_path, tiny_model_path, dtype):
    """sdflow.load(dtype=float16 / bfloat16) through the library's batch job: numpy has no
    bfloat16, so the outputs are widened for writing rather than failing."""
    import sdflow
    from sdflow import inference

    save(tmp_path / "in" / "a.png", 8, 8)
    model = sdflow.load(tiny_model_path, dtype=dtype)
    summary = inference.run_batch(Pipeline(model), tmp_path / "in", tmp_path / "out",
                                  inference.Options(mode="sr", tau=0.0), progress=False)
    assert not summary.failed and files(tmp_path / "out") == ["a_sr.png"]


def test_ds_components_sampler_and_precision(tmp_path, tiny_model_path):
    a = save(tmp_path / "h.png", 32, 32)

    def run(out, *extra):
        assert sdflow("ds", "-q", "-i", a, "-o", tmp_path / out, "--model", tiny_model_path, *extra) == 0
        return np.asarray(PILImage.open(tmp_path / out / "h_ds.png"), dtype=np.int64)

    k0, k1 = run("k0", "--component", "0"), run("k1", "--component", "1")
    assert k0.shape == (8, 8, 3) and np.abs(k0 - k1).max() > 0
    assert np.array_equal(run("k0_again", "--component", "0"), k0)
    element = run("el", "--sampler", "element", "--component", "0", "1")
    assert element.shape == (8, 8, 3) and not np.array_equal(element, k0)
    # fp64 arithmetic gives the same picture up to a rounding flip. At tau 0 the latent is the
    # component's mean: the Gaussian noise, drawn differently for float64, plays no part.
    mode32 = run("mode32", "--component", "0", "--tau", "0")
    mode64 = run("mode64", "--component", "0", "--tau", "0", "--precision", "fp64")
    assert np.abs(mode64 - mode32).max() <= 1


def test_console_script(tmp_path, tiny_model_path):
    exe = Path(sys.executable).with_name("sdflow")
    assert exe.is_file(), "the sdflow console script is not installed next to this Python"
    a = save(tmp_path / "in" / "a.png", 8, 8)
    (tmp_path / "in" / "bad.png").write_text("nope")
    r = subprocess.run([str(exe), "sr", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                        "--model", str(tiny_model_path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1, r.stderr
    assert (tmp_path / "out" / "a_sr.png").is_file() and a.is_file()
    assert "bad.png" in r.stdout and "1 of 2 image(s) done" in r.stdout
    assert "100%" in r.stderr  # the progress bar


def test_tiled_cli_matches_whole_image(tmp_path, tiny_model_path):
    """--tile changes memory use, not the sample: same seed, same noise field, seams blended."""
    src = save(tmp_path / "a.png", 40, 48)
    base = ["sr", "-q", "-i", str(src), "--model", str(tiny_model_path), "--tau", "0.8", "--seed", "3"]
    assert main(base + ["-o", str(tmp_path / "whole"), "--tile", "0"]) == 0
    assert main(base + ["-o", str(tmp_path / "tiled"), "--tile", "16", "--tile-pad", "8"]) == 0
    a = np.asarray(PILImage.open(tmp_path / "whole" / "a_sr.png"), dtype=float)
    b = np.asarray(PILImage.open(tmp_path / "tiled" / "a_sr.png"), dtype=float)
    assert a.shape == b.shape == (160, 192, 3)
    assert np.abs(a - b).max() <= 1


def test_bf16_fast_path_runs(tmp_path, tiny_model_path):
    src = save(tmp_path / "h.png", 32, 32)
    assert main(["ds", "-q", "-i", str(src), "-o", str(tmp_path / "o"), "--model", str(tiny_model_path),
                 "--precision", "bf16", "--tile", "16"]) == 0
    assert PILImage.open(tmp_path / "o" / "h_ds.png").size == (8, 8)


@pytest.mark.parametrize("mode", ["sr", "ds"])
def test_fp32_runs_the_sampling_form_with_the_modules_results(tmp_path, tiny_model_path, monkeypatch, mode):
    import sdflow as sd

    calls = []
    real_init = model_module._FusedSteps.__init__

    def counting_init(self, *a, **kw):
        calls.append(1)
        real_init(self, *a, **kw)

    monkeypatch.setattr(model_module._FusedSteps, "__init__", counting_init)
    save(tmp_path / "in" / "a.png", 24, 20, seed=3)
    assert sdflow(mode, "-q", "-i", tmp_path / "in", "-o", tmp_path / "fast", "--model", tiny_model_path,
                  "--tau", "0.8", "--seed", "5", "--precision", "fp32") == 0
    assert calls, "fp32 did not use the fused sampling form"
    n = len(calls)
    assert sdflow(mode, "-q", "-i", tmp_path / "in", "-o", tmp_path / "plain", "--model", tiny_model_path,
                  "--tau", "0.8", "--seed", "5", "--precision", "fp64") == 0
    assert len(calls) == n, "fp64 must run the modules themselves"

    # The modules themselves (float64), with the float32 model's noise (seed 5 for sample 0).
    x = to_tensor(read_image(tmp_path / "in" / "a.png").rgb)
    model, reference = sd.load(tiny_model_path), sd.load(tiny_model_path, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    if mode == "sr":
        y = reference.super_resolve(x, hf_latent=model.sample_hf_latent(x, 0.8, g))
    else:
        y = reference.downscale(x, deg_latent=model.sample_deg_latent(x, 0.8, generator=g))
    ref = ((y[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    fast = np.asarray(PILImage.open(tmp_path / "fast" / f"a_{mode}.png")).astype(np.float64)
    assert fast.shape == ref.shape
    assert np.abs(fast - ref).max() <= 1  # at most a rounding flip


def test_workers_read_ahead_in_threads_and_change_nothing(tmp_path, tiny_model_path, monkeypatch, capsys):
    import threading

    from sdflow import inference

    src = tmp_path / "in"
    for i in range(7):
        save(src / f"im{i}.png", 8 + 4 * (i % 2), 8, seed=i)
    (src / "im3.png").write_bytes(b"not an image")
    readers = []
    real_read = inference.read_image

    def spy(path, *more):
        readers.append((Path(path).name, threading.current_thread().name))
        return real_read(path, *more)

    monkeypatch.setattr(inference, "read_image", spy)
    outs = {}
    for workers in (0, 3):
        out = tmp_path / f"w{workers}"
        assert sdflow("sr", "-q", "-i", src, "-o", out, "--model", tiny_model_path, "--workers", workers) == 1
        outs[workers] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        assert "im3.png" in capsys.readouterr().err
    assert outs[0] == outs[3] and len(outs[0]) == 6                     # same files, same bytes
    threads = [t for _, t in readers]
    assert all(t == threading.main_thread().name for t in threads[:7])   # --workers 0: inline
    assert all(t.startswith("sdflow-read") for t in threads[7:])         # --workers 3: read ahead
    with pytest.raises(SystemExit) as e:
        sdflow("sr", "-i", src, "-o", tmp_path / "x", "--workers", "-1")
    assert e.value.code == 2


@pytest.mark.parametrize("mode", ["sr", "ds"])
def test_batch_size_groups_same_size_images_and_changes_only_rounding(tmp_path, tiny_model_path, mode,
                                                                      monkeypatch, capsys):
    from sdflow import inference

    side = 8 if mode == "sr" else 32
    src = tmp_path / "in"
    for i in range(8):
        save(src / f"im{i}.png", side if i < 5 or i == 7 else side + 4, side, seed=i)
    (src / "im4.png").write_bytes(b"not an image")
    sizes = []
    real = inference._batched_samples

    def spy(model, xs, options, n):
        sizes.append(len(xs))
        return real(model, xs, options, n)

    monkeypatch.setattr(inference, "_batched_samples", spy)
    outs = {}
    for bs in (1, 3):
        out = tmp_path / f"b{bs}"
        assert sdflow(mode, "-q", "-i", src, "-o", out, "--model", tiny_model_path, "--batch-size", bs,
                      "--samples", 2, "--tau", 0.8) == 1
        assert "im4.png" in capsys.readouterr().err
        outs[bs] = {p.name: np.asarray(PILImage.open(p), dtype=np.int16) for p in sorted(out.iterdir())}
    # Runs of consecutive same-size images, cut by the unreadable file and by size changes.
    assert sizes == [3, 2]
    assert sorted(outs[1]) == sorted(outs[3]) and len(outs[1]) == 14
    for name, a in outs[1].items():
        assert np.abs(a - outs[3][name]).max() <= 1, name      # the same noise per image and sample
    assert not np.array_equal(outs[3]["im0_%s_0.png" % mode], outs[3]["im1_%s_0.png" % mode])

    # A batch that fails falls back to one image at a time, with the same files.
    for method in ("super_resolve", "downscale"):
        def broken(self, *args, real=getattr(Prepared, method), **kw):
            if self.x.shape[0] > 1:
                raise RuntimeError("out of memory (simulated)")
            return real(self, *args, **kw)

        monkeypatch.setattr(Prepared, method, broken)
    out = tmp_path / "fallback"
    assert sdflow(mode, "-q", "-i", src, "-o", out, "--model", tiny_model_path, "--batch-size", 3,
                  "--samples", 2, "--tau", 0.8) == 1
    assert "batch of 3 failed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == \
        {p.name: p.read_bytes() for p in sorted((tmp_path / "b1").iterdir())}
    with pytest.raises(SystemExit) as e:
        sdflow(mode, "-i", src, "-o", tmp_path / "x", "--batch-size", "0")
    assert e.value.code == 2


def test_reduced_precision_warns_on_a_cpu_without_it(tmp_path, tiny_model_path, monkeypatch, capsys):
    import torch

    import sdflow.nets.precision as precision
    from sdflow.commands.infer import precision_note

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_fp16", lambda: False)
    assert "bfloat16" in precision_note(cpu, "bf16") and "float16" in precision_note(cpu, "fp16")
    assert precision_note(cpu, "fp32") is None and precision_note(cuda, "bf16") is None
    src = save(tmp_path / "a.png", 8, 8)
    assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / "o", "--model", tiny_model_path, "--precision", "bf16") == 0
    assert "no bfloat16 instructions" in capsys.readouterr().err
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision_note(cpu, "bf16") is None
    assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / "o2", "--model", tiny_model_path, "--precision", "bf16") == 0
    assert "note:" not in capsys.readouterr().err


def test_precision_auto_is_bf16_where_the_cpu_multiplies_it(tmp_path, tiny_model_path, monkeypatch, capsys):
    import sdflow.nets.precision as precision

    made = []
    real_init = model_module._FusedSteps.__init__
    monkeypatch.setattr(model_module._FusedSteps, "__init__",
                        lambda self, model, p: made.append(p) or real_init(self, model, p))
    src = save(tmp_path / "a.png", 8, 8)
    for native, expected in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        made.clear()
        assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / expected, "--model", tiny_model_path) == 0
        assert made == [expected] and "note:" not in capsys.readouterr().err
    assert (tmp_path / "fp32" / "a_sr.png").read_bytes() != (tmp_path / "bf16" / "a_sr.png").read_bytes()


def test_a_tiled_image_shows_its_tiles(tmp_path, tiny_model_path, capsys):
    src = save(tmp_path / "a.png", 16, 16)
    args = ["sr", "-i", src, "--model", tiny_model_path, "--tile", "8", "--tile-pad", "2"]
    assert sdflow(*args, "-o", tmp_path / "o") == 0
    err = capsys.readouterr().err
    assert "tiles" in err and "0/4" in err  # the second bar, over 2 x 2 tiles
    assert sdflow(*args, "-q", "-o", tmp_path / "q") == 0
    assert "tiles" not in capsys.readouterr().err


def test_skip_existing_resumes_an_interrupted_run(tmp_path, tiny_model_path, capsys):
    for name in ("a", "b", "c"):
        save(tmp_path / "in" / f"{name}.png", 8, 8, seed=ord(name))
    args = ["sr", "-q", "-i", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_model_path, "--samples", "2"]
    assert sdflow(*args) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert len(first) == 6
    # As if interrupted: c never done, b's second sample missing; a's files marked to see they stay.
    for name in ("c_sr_0.png", "c_sr_1.png", "b_sr_1.png"):
        (tmp_path / "out" / name).unlink()
    (tmp_path / "out" / "a_sr_0.png").write_bytes(b"kept")
    capsys.readouterr()
    assert sdflow(*args, "--skip-existing") == 0
    out = capsys.readouterr().out
    assert "2 of 3 image(s) done, 3 file(s) written, 1 skipped (outputs already there)" in out
    now = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert now["a_sr_0.png"] == b"kept"                     # not made again
    assert {k: v for k, v in now.items() if k != "a_sr_0.png"} == {k: v for k, v in first.items() if k != "a_sr_0.png"}
    # Without the flag everything is made again.
    assert sdflow(*args) == 0
    assert (tmp_path / "out" / "a_sr_0.png").read_bytes() == first["a_sr_0.png"]


def test_outscale_resizes_the_x4_result(tmp_path, tiny_model_path, capsys):
    from sdflow.resize import resize

    src = save(tmp_path / "a.png", 10, 7)
    rgba = save(tmp_path / "b.png", 10, 7, mode="RGBA")
    base = ["sr", "-q", "-i", src, "--model", tiny_model_path, "--seed", "2"]
    assert sdflow(*base, "-o", tmp_path / "x4") == 0
    for s, size in (("2", (20, 14)), ("3.5", (35, 24)), ("4", (40, 28))):  # save() takes (h, w)
        assert sdflow(*base, "-o", tmp_path / s, "--outscale", s) == 0
        out = np.asarray(PILImage.open(tmp_path / s / "a_sr.png"), dtype=float)
        assert out.shape[:2] == size
    # x2 is the same x4 sample (seed 2, sample 0), resized (antialiased) before rounding to 8 bits.
    import sdflow as sd
    from sdflow.imageio import from_tensor, read_image, to_tensor

    y = sd.load(tiny_model_path).super_resolve(to_tensor(read_image(src).rgb), 0.8,
                                                           torch.Generator().manual_seed(2))
    ref = np.clip(np.round(from_tensor(resize(y, (20, 14), "bicubic")) * 255), 0, 255)  # clamped when written
    x2 = np.asarray(PILImage.open(tmp_path / "2" / "a_sr.png"), dtype=float)
    assert np.abs(x2 - ref).max() <= 1
    x4 = np.asarray(PILImage.open(tmp_path / "x4" / "a_sr.png"), dtype=float)
    assert np.abs(x4 - np.clip(np.round(from_tensor(y) * 255), 0, 255)).max() <= 1
    assert not np.array_equal(x4[::2, ::2], x2)
    assert sdflow("sr", "-q", "-i", rgba, "-o", tmp_path / "rgba", "--model", tiny_model_path, "--outscale", "2") == 0
    img = PILImage.open(tmp_path / "rgba" / "b_sr.png")
    assert img.mode == "RGBA" and img.size == (14, 20)  # PIL: (w, h)
    # Its alpha is the input's, resized once to the output size (not x4 and then again).
    a_in = torch.from_numpy(np.asarray(PILImage.open(rgba), dtype=np.float32)[..., 3] / 255)[None, None]
    a_ref = np.round(resize(a_in, (20, 14), "bicubic")[0, 0].clamp(0, 1).numpy() * 255)
    assert np.abs(np.asarray(img, dtype=float)[..., 3] - a_ref).max() <= 1
    for mode, value in (("sr", "0"), ("sr", "-2"), ("ds", "2")):  # ds always gives ceil(H/4) x ceil(W/4)
        with pytest.raises(SystemExit) as e:
            sdflow(mode, "-q", "-i", src, "-o", tmp_path / "bad", "--model", tiny_model_path, "--outscale", value)
        assert e.value.code == 2
    assert not (tmp_path / "bad").exists()


def test_blur_sets_the_width_a_told_extractor_undoes(tmp_path, tiny_model_path, capsys):
    """`sdflow sr --blur W`: a model whose E is told its blur (model.extractor_blur=learnt)
    restores as told; the default is its learnt width; a blind model refuses the option."""
    from dataclasses import replace
    from sdflow import ModelConfig
    from sdflow.checkpoints import save_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SDFlow(replace(ModelConfig.preset("tiny"), ds_content="picture", extractor_blur="learnt"))
        with torch.no_grad():
            for p in model.parameters():
                if p.abs().max() == 0:
                    p.normal_(0.0, 0.02)
            model.content_extractor.blur_embed.weight.normal_(0.0, 0.5)
    told = save_model(model, tmp_path / "told.safetensors")
    src = save(tmp_path / "in" / "a.png", 12, 16)
    out = {}
    for name, extra in (("own", ()), ("same", ("--blur", "0.7")), ("soft", ("--blur", "0.3")), ("sharp", ("--blur", "1.2"))):
        assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / name, "--model", told, "--tau", "0", *extra) == 0
        out[name] = np.asarray(PILImage.open(tmp_path / name / "a_sr.png"), dtype=np.int16)
    assert np.array_equal(out["own"], out["same"])  # the learnt width starts at ds_content_sigma, 0.7
    assert np.abs(out["soft"] - out["own"]).max() > 0 and np.abs(out["sharp"] - out["soft"]).max() > 0
    capsys.readouterr()
    assert sdflow("sr", "-q", "-i", src, "-o", tmp_path / "blind", "--model", tiny_model_path, "--blur", "0.5") == 2
    assert "--blur: this model's content extractor is blind" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sdflow("sr", "-q", "-i", src, "-o", tmp_path / "zero", "--model", told, "--blur", "0")
    with pytest.raises(SystemExit):
        sdflow("ds", "-q", "-i", src, "-o", tmp_path / "ds", "--model", told, "--blur", "0.5")
