"""Hostile input and injected faults (issue 19), with every file made here: a memory-bomb header,
truncated and short-data PNGs, empty, text and odd-mode files, links that loop or dangle, training
folders of nothing but broken files, damaged checkpoints, and kill -9 during `sr` and `train`.
Each case is one that a user can meet, and each test fails without the behaviour it names."""
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageFile

from sdflow import imageio
from sdflow.cli import main
from sdflow.imageio import ImageReadError, decode_png, encode_png, read_image, read_rgb8
from sdflow.train import checkpoint as ckpt_io
from sdflow.train.loop import train
from test_cli_infer import one_thread  # noqa: F401 - its autouse fixture: one torch thread in this module
from test_train import all_state, make_cfg, make_data

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, sets rlimits")


def sdflow(*args):
    return main([str(a) for a in args])


def png(path, width, height, rows: bytes, ctype=2, depth=8, interlace=0):
    """A PNG whose image data is `rows` (filter bytes included), as long or as short as given."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, interlace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9))
                     + chunk(b"IEND", b""))
    return path


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def bomb(path):
    """The issue's file: 429 bytes whose header declares 30000 x 30000 RGB pixels, 4 rows given."""
    return png(path, 30000, 30000, bytes(4 * (3 * 30000 + 1)))


def hidden(folder):
    return sorted(p.name for p in Path(folder).rglob(".*"))


# ----- reading ----------------------------------------------------------------------------------

def test_the_memory_bomb_is_refused_from_its_header_with_the_figures(tmp_path, monkeypatch):
    assert bomb(tmp_path / "bomb.png").stat().st_size == 429
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", imageio.MAX_PIXELS)   # as the command sets it
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    with pytest.raises(ImageReadError, match=r"too large for the memory available: 30000x30000 px needs "
                                             r"about [\d.]+ GiB to decode and process, [\d.]+ [GM]iB available"):
        read_image(tmp_path / "bomb.png", need=lambda w, h, depth: 600 * w * h)
    assert not decoded   # refused before Pillow allocated anything


def test_what_fits_is_read_and_what_does_not_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    PILImage.fromarray(rgb(40, 50)).save(path)

    def need(width, height, depth):
        return 1000 * width * height   # 2 MB for this image

    monkeypatch.setattr(imageio, "available_memory", lambda: 3 * 2**20)
    assert read_image(path, need).size == (50, 40)
    monkeypatch.setattr(imageio, "available_memory", lambda: 2**20)
    with pytest.raises(ImageReadError, match=r"50x40 px needs about 2 MiB to decode and process, 1 MiB available"):
        read_image(path, need)
    assert read_image(path).size == (50, 40)   # decoding alone fits
    monkeypatch.setattr(imageio, "available_memory", lambda: 20_000)
    for read in (read_image, read_rgb8):
        with pytest.raises(ImageReadError, match="to decode, 20 KiB available"):
            read(path)


@linux_only
def test_available_memory_is_a_positive_figure_within_the_systems():
    free = imageio.available_memory()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    swap = imageio._kib_fields("/proc/meminfo").get("SwapTotal", 0) * 1024
    assert 0 < free <= total + swap


@pytest.mark.parametrize("interlace", [0, 1])
def test_short_image_data_is_refused_as_truncated(tmp_path, interlace):
    w, h = 13, 10
    passes = list(imageio._adam7_passes(w, h)) if interlace else [(0, 0, 1, 1, w, h)]
    size = sum(ph * (3 * pw + 1) for *_, pw, ph in passes)
    full = png(tmp_path / "full.png", w, h, bytes(size), interlace=interlace)
    # A complete zlib stream holding half the rows.
    short = png(tmp_path / "short.png", w, h, bytes(size // 2), interlace=interlace)
    if not interlace:
        with PILImage.open(short) as im:
            im.load()   # why the check exists: Pillow takes it, the missing rows black
    assert read_image(full).size == (w, h) and read_rgb8(full).shape == (h, w, 3)
    for read in (read_image, read_rgb8):
        with pytest.raises(ImageReadError, match="image data is truncated"):
            read(short)


def test_packed_pixels_and_many_idat_chunks_are_not_taken_for_short_data(tmp_path):
    bits = np.random.default_rng(1).integers(0, 2, (9, 13)).astype(bool)
    PILImage.fromarray(bits).save(tmp_path / "bits.png")                   # 1-bit, odd width
    PILImage.fromarray(rgb(300, 400)).save(tmp_path / "big.png")          # Pillow splits its IDAT
    assert read_image(tmp_path / "bits.png").size == (13, 9)
    assert np.array_equal(read_rgb8(tmp_path / "big.png"), rgb(300, 400))


def test_a_memory_error_while_decoding_fails_that_file_only(tmp_path, tiny_model_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        PILImage.fromarray(rgb(8, 8, seed=ord(name))).save(tmp_path / "in" / f"{name}.png")
    real = imageio._pixels

    def starved(im, path):
        if path.name == "b.png":
            raise MemoryError
        return real(im, path)

    monkeypatch.setattr(imageio, "_pixels", starved)
    assert sdflow("sr", "-q", "-i", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_model_path) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_sr.png", "c_sr.png"]
    assert "b.png: cannot read: out of memory while decoding it" in capsys.readouterr().out


def test_a_memory_error_while_processing_fails_that_file_only(tmp_path, tiny_model_path, monkeypatch, capsys):
    from sdflow.model import SDFlow

    (tmp_path / "in").mkdir()
    PILImage.fromarray(rgb(8, 8)).save(tmp_path / "in" / "a.png")
    PILImage.fromarray(rgb(16, 8)).save(tmp_path / "in" / "b.png")
    PILImage.fromarray(rgb(8, 8, 1)).save(tmp_path / "in" / "c.png")
    real = SDFlow.super_resolve

    def starved(self, x, *args, **kw):
        if x.shape[-2] == 16:
            raise MemoryError
        return real(self, x, *args, **kw)

    monkeypatch.setattr(SDFlow, "super_resolve", starved)
    assert sdflow("sr", "-q", "-i", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_model_path) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_sr.png", "c_sr.png"]
    assert "b.png: out of memory while processing it" in capsys.readouterr().out


# ----- a folder of hostile files ------------------------------------------------------------------

def hostile_folder(src: Path) -> dict:
    """Good files of every awkward kind, broken ones and paths that are not images; returns the
    expected outputs {name: (size, mode)}."""
    src.mkdir(parents=True)
    PILImage.fromarray(rgb(8, 12)).save(src / "rgb.png")
    PILImage.fromarray(rgb(1, 1, 2)).save(src / "one.png")
    PILImage.fromarray(rgb(8, 8, 3)).convert("CMYK").save(src / "cmyk.jpg")
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7)
    PILImage.fromarray(ramp).save(src / "gray16.png")
    (src / "rgb16.png").write_bytes(encode_png(np.random.default_rng(4).integers(0, 65536, (8, 8, 3)).astype(np.uint16)))
    PILImage.fromarray(rgb(8, 8, 5)[..., :2].copy(), "LA").save(src / "la.png")
    pal = PILImage.fromarray(rgb(8, 8, 6)[..., 0] % 4, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    pal.save(src / "pal.png", transparency=0)
    exif = PILImage.Exif()
    exif[0x0112] = 6   # stored 12 wide x 8 high, shown rotated: 8 wide x 12 high
    PILImage.fromarray(rgb(8, 12, 7)).save(src / "exif6.jpg", exif=exif.tobytes())
    good = src / "rgb.png"
    (src / "cut.png").write_bytes(good.read_bytes()[:80])
    png(src / "short.png", 16, 16, bytes(8 * (3 * 16 + 1)))
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_text("a note, not a photo")
    PILImage.fromarray(rgb(8, 8)).save(src / "anim.gif")
    os.symlink(src / "gone.png", src / "dangling.png")
    os.symlink("self.png", src / "self.png")
    os.symlink(".", src / "loop")
    return {"rgb_sr.png": ((48, 32), "RGB"), "one_sr.png": ((4, 4), "RGB"), "cmyk_sr.jpg": ((32, 32), "RGB"),
            "gray16_sr.png": ((32, 32), "I;16"), "rgb16_sr.png": ((32, 32), "RGB"), "la_sr.png": ((32, 32), "LA"),
            "pal_sr.png": ((32, 32), "RGBA"), "exif6_sr.jpg": ((32, 48), "RGB")}


def test_a_folder_of_hostile_files(tmp_path, tiny_model_path, capsys):
    expected = hostile_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".rgb_sr.png.part").write_bytes(b"left by a run killed while writing")
    assert sdflow("sr", "-q", "-i", tmp_path / "in", "-o", out, "--model", tiny_model_path) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert hidden(out) == []                                  # the stale partial file is gone
    for name, (size, mode) in expected.items():
        with PILImage.open(out / name) as im:
            assert (im.size, im.mode) == (size, mode), name
    samples, _ = decode_png((out / "rgb16_sr.png").read_bytes())
    assert samples.dtype == np.uint16 and np.any(samples % 257)   # 16 bits, not 8 bits widened
    captured = capsys.readouterr()
    summary = captured.out
    assert "8 of 12 image(s) done" in summary and "4 failed" in summary
    for name, reason in (("cut.png", "cannot decode"), ("short.png", "truncated (ends at row 8 of 16)"),
                         ("empty.png", "empty"), ("text.jpg", "not an image")):
        assert f"{name}: cannot read: " in summary and reason in summary.split(f"{name}: ")[1].splitlines()[0]
    assert "4 other path(s) in the input folder not read" in summary
    for name, reason in (("anim.gif", "not a file type sdflow reads (.gif)"),
                         ("dangling.png", "broken or looping symbolic link"),
                         ("self.png", "broken or looping symbolic link"), ("loop", "a folder already searched")):
        assert reason in summary.split(f"{name}: ")[1].splitlines()[0], name
    assert "removed 1 unfinished output file(s) of an interrupted run" in captured.err


@linux_only
def test_the_memory_bomb_among_good_files_in_little_memory(tmp_path, tiny_model_path):
    """The issue's figures: the good files written, the bomb named with its reason, exit 1, peak
    resident memory under 1 GiB. Under a 3 GiB address-space limit, which makes the bomb's
    decoding fail fast (instead of filling the machine) where it is not refused beforehand."""
    import resource

    src = tmp_path / "in"
    for name in ("a", "c", "d"):
        png(src / f"{name}.png", 8, 8, b"".join(b"\0" + rgb(1, 8, ord(name)).tobytes() for _ in range(8)))
    bomb(src / "b.png")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY))

    p = subprocess.Popen([sys.executable, "-m", "sdflow", "sr", "-q", "-i", str(src), "-o", str(tmp_path / "out"),
                          "--model", str(tiny_model_path), "--workers", "1"], preexec_fn=limit,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 1, out
    assert sorted(q.name for q in (tmp_path / "out").iterdir()) == ["a_sr.png", "c_sr.png", "d_sr.png"], out
    assert "b.png: cannot read: too large for the memory available: 30000x30000 px" in out
    assert usage.ru_maxrss * 1024 < 2**30, f"peak resident memory {usage.ru_maxrss / 2**20:.2f} GiB"


def test_kill_9_during_sr_then_skip_existing_gives_the_same_files(tmp_path, tiny_model_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        PILImage.fromarray(rgb(48, 48, i)).save(src / f"im{i:02d}.png")
    args = ["sr", "-q", "-i", src, "--model", tiny_model_path, "--samples", "2", "--seed", "5"]
    assert sdflow(*args, "-o", tmp_path / "ref") == 0
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "sdflow", *map(str, args), "-o", str(killed)],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (killed.is_dir() and any(killed.iterdir())) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert sdflow(*args, "-o", killed, "--skip-existing") == 0
    ref = {q.name: q.read_bytes() for q in (tmp_path / "ref").iterdir()}
    assert {q.name: q.read_bytes() for q in killed.iterdir()} == ref and hidden(killed) == []


# ----- training ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("hostile_data"))


@pytest.fixture(scope="module")
def corrupt_lr(data, tmp_path_factory):
    """An LR folder of five files that all fail, each in its own way; header checks pass two."""
    lr = tmp_path_factory.mktemp("corrupt") / "lr"
    lr.mkdir()
    good = lr / "good.png"
    PILImage.fromarray(rgb(16, 16)).save(good)
    (lr / "cut.png").write_bytes(good.read_bytes()[:120])
    good.unlink()
    png(lr / "short.png", 16, 16, bytes(3 * (3 * 16 + 1)))
    (lr / "text.png").write_text("not an image")
    (lr / "empty.png").write_bytes(b"")
    PILImage.fromarray(rgb(16, 16)).save(lr / "cut.jpg")
    (lr / "cut.jpg").write_bytes((lr / "cut.jpg").read_bytes()[:300])
    return lr


def test_corrupt_only_training_folder_without_workers_exits_2_naming_every_file(data, corrupt_lr, tmp_path, capsys):
    from sdflow.commands import train as cmd

    cfg = make_cfg(data, **{"data.lr_dir": str(corrupt_lr)})
    cfg.save(tmp_path / "c.yaml")
    assert cmd.main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    message = err[err.index("error: "):]
    assert "none of its 5 LR image file(s) can be used" in message and "Traceback" not in err
    for name in ("cut.png", "short.png", "text.png", "empty.png", "cut.jpg"):
        assert f"{corrupt_lr / name}: " in message, name


@linux_only
def test_corrupt_only_training_folder_with_a_worker_exits_2_promptly_leaving_no_process(data, corrupt_lr, tmp_path):
    cfg = make_cfg(data, **{"data.lr_dir": str(corrupt_lr), "data.num_workers": 1})
    cfg.save(tmp_path / "c.yaml")
    # A session of its own, so that any worker left behind can be found by its group.
    p = subprocess.Popen([sys.executable, "-m", "sdflow", "train", "--config", str(tmp_path / "c.yaml"),
                          "--out", str(tmp_path / "run")], start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=30)
    finally:
        with_leftovers = p.poll() is None
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    assert not with_leftovers, "still running after 30 s"
    assert p.returncode == 2, out
    assert "none of its 5 LR image file(s) can be used" in out and "Traceback" not in out
    assert all(f"{corrupt_lr / n}: " in out for n in ("cut.png", "short.png", "text.png", "empty.png", "cut.jpg"))


def run_cfg(data, **over):
    # Both stages, a checkpoint after every step.
    return make_cfg(data, **{"train.steps": 4, "train.stage1_steps": 2, "checkpoint.every": 1,
                             "checkpoint.keep": 3, **over})


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """(run folder, final state) of the reference run."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(run_cfg(data), run)
    return run, all_state(run)


def assert_same_run(reference, run):
    state, expected = all_state(run), reference[1]
    assert state.keys() == expected.keys()
    differ = [k for k in state if not torch.equal(state[k], expected[k])]
    assert not differ, f"differs from the uninterrupted run in {differ[:5]}"


def test_a_truncated_newest_checkpoint_falls_back_to_the_older_one_bit_exactly(data, uninterrupted, tmp_path):
    run = tmp_path / "run"
    assert train(run_cfg(data, **{"debug.interrupt_after_step": 3}), run)["interrupted"]
    newest = run / "ckpt-00000003.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert train(run_cfg(data), run, resume=True)["step"] == 4
    log = (run / "train.log").read_text()
    assert f"checkpoint {newest}: cannot be read" in log and "renamed to ckpt-00000003.pt.damaged" in log
    assert "resuming from ckpt-00000002.pt, the newest intact checkpoint" in log
    assert (run / "ckpt-00000003.pt.damaged").is_file()
    assert_same_run(uninterrupted, run)


@pytest.mark.parametrize("damage", ["empty", "changed value"])
def test_damaged_checkpoints_are_named_and_passed_over(uninterrupted, tmp_path, damage):
    import shutil

    run = shutil.copytree(uninterrupted[0], tmp_path / "run")
    *others, older, newest = ckpt_io.list_checkpoints(run)
    if damage == "empty":
        newest.write_bytes(b"")
    else:
        # A flipped bit that still unpickles: the checksum, not the zip, must catch it.
        ck = torch.load(newest, weights_only=True)
        key = next(iter(ck["model"]))
        ck["model"][key] = ck["model"][key] + 1
        torch.save(ck, newest)
    warnings = []
    path, ck = ckpt_io.newest_intact(run, warnings.append, set_aside=False)
    assert path == older and ck["step"] == 3 and newest.is_file()
    assert str(newest) in warnings[0] and ("cannot be read" if damage == "empty" else "checksum") in warnings[0]
    for p in [*others, older]:
        p.write_bytes(p.read_bytes()[:100])
    from sdflow.commands import train as cmd
    assert cmd.main(["--out", str(run), "--resume"]) == 2
    assert all(p.is_file() for p in [*others, older, newest])   # nothing set aside when nothing is intact


@linux_only
def test_kill_9_during_training_then_resume_is_bit_exact(data, uninterrupted, tmp_path):
    run = tmp_path / "run"
    run_cfg(data).save(tmp_path / "c.yaml")
    p = subprocess.Popen([sys.executable, "-m", "sdflow", "train", "--config", str(tmp_path / "c.yaml"),
                          "--out", str(run)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "ckpt-00000002.pt").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL, "finished before it could be killed"
    (run / ".ckpt-00000009.pt.tmp4242").write_bytes(b"half a checkpoint")   # as a kill while saving leaves
    assert train(run_cfg(data), run, resume=True)["step"] == 4
    assert hidden(run) == [] and "removed .ckpt-00000009.pt.tmp4242" in (run / "train.log").read_text()
    assert_same_run(uninterrupted, run)


# ----- evaluation ---------------------------------------------------------------------------------

def test_eval_says_when_its_two_folders_are_one(tmp_path, capsys):
    PILImage.fromarray(rgb(16, 16)).save(tmp_path / "a.png")
    assert sdflow("eval", "-q", "--hr", tmp_path, "--lr", tmp_path / ".", "-o", tmp_path / "rep", "--model", "none") == 2
    assert "--hr and --lr are the same folder" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
