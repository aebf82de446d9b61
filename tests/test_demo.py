"""`sdflow demo` and the bundled default model."""
import json

import numpy as np
import pytest
import torch

import sdflow
from sdflow import checkpoints
from sdflow.cli import main
from sdflow.data.degrade import PRESETS, sample_images
from sdflow.imageio import read_image, write_image


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_demo_writes_report_and_inputs(tmp_path, tiny_model_path):
    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "--model", str(tiny_model_path), "--tau", "0", "0.8",
               "--samples", "2", "--preset", "mild", "-q"])
    assert rc == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "sdflow demo" in html and "<img" in html
    # Every image the report shows lies beside it, so it opens from the file alone.
    for src in __import__("re").findall(r'<img[^>]+src="([^"]+)"', html):
        assert not src.startswith(("http:", "https:", "/")) and (out / src).is_file(), src

    doc = json.loads((out / "results.json").read_text())
    photos = sorted(p.stem for p in sample_images())
    assert sorted({r["image"] for r in doc["sr"]["per_image"]}) == photos
    sr_taus = {r["tau"] for r in doc["sr"]["mean"] if r["method"] == "sdflow"}
    ds_taus = {r["tau"] for r in doc["ds"]["mean"] if r["method"] == "sdflow"}
    assert sr_taus == ds_taus == {0.0, 0.8}
    assert any(r["method"] == "bicubic" for r in doc["sr"]["mean"])
    # Two samples at tau 0.8 differ; at tau 0 SR is deterministic.
    div = {r["tau"]: r["diversity"] for r in doc["sr"]["mean"] if r["method"] == "sdflow"}
    assert div[0.0] == pytest.approx(0.0, abs=1e-6) and div[0.8] > 0

    for name in photos:
        hr = read_image(out / "HR" / f"{name}.png").rgb
        lr = read_image(out / "LR" / f"{name}.png").rgb
        assert lr.shape[:2] == (-(-hr.shape[0] // 4), -(-hr.shape[1] // 4))


def test_demo_rejects_unknown_preset(tmp_path, tiny_model_path, capsys):
    rc = main(["demo", "-o", str(tmp_path), "--model", str(tiny_model_path), "--preset", "nope"])
    assert rc == 2
    assert "unknown preset" in capsys.readouterr().err


def test_load_default_without_bundled_model(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoints, "BUNDLED_FILE", tmp_path / "absent.safetensors")
    assert checkpoints.bundled_model_path() is None
    assert checkpoints.bundled_metadata() == {}
    with pytest.raises(checkpoints.CheckpointError, match="no bundled model"):
        sdflow.load("default")


bundled = pytest.mark.skipif(checkpoints.bundled_model_path() is None,
                             reason="this checkout ships no bundled model")


@bundled
def test_bundled_model_loads_and_describes_itself():
    meta = checkpoints.bundled_metadata()
    assert meta.get("sdflow.degradation") in PRESETS
    assert int(meta["sdflow.steps"]) > 0
    model = sdflow.load("default")
    assert not model.training
    lr = torch.rand(1, 3, 12, 10) * 2 - 1
    sr = model.super_resolve(lr, tau=0.0)
    assert sr.shape == (1, 3, 48, 40) and torch.isfinite(sr).all()
    # Its weights are the training run's float32 weights: nothing was rounded to save space.
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())


@bundled
def test_sr_and_ds_use_the_bundled_model_without_model_flag(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "in" / "a.png", rng.uniform(0, 1, (20, 24, 3)))
    assert main(["sr", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "sr"), "--tau", "0"]) == 0
    assert read_image(tmp_path / "sr" / "a_sr.png").rgb.shape == (80, 96, 3)
    assert main(["ds", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "ds")]) == 0
    assert read_image(tmp_path / "ds" / "a_ds.png").rgb.shape == (5, 6, 3)
