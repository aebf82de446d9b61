"""The CPU suite's main promises, checked again on a CUDA device when one is present:
the authors' results in float32, the sampling form and its reduced precisions, tiling, the
command line and training. CI has no GPU, so these skip there; a session lent one runs them with
benchmarks/device_check.sh. SDFLOW_TEST_DEVICE=cpu runs them on the CPU (to check the tests)."""
import contextlib
import math
import os
import signal

import numpy as np
import pytest
import torch

import sdflow
from sdflow.cli import main
from sdflow.nets.precision import ieee_float32
from sdflow.pipeline import Pipeline
from sdflow.tiling import DEFAULT_DS_TILE_PAD, DEFAULT_SR_TILE_PAD

from test_cli_infer import save
from test_fused import perturbed, rel_err
from test_parity import load_authors
from test_tiling import levels
from test_train import all_state, make_cfg, make_data


def _accelerator():
    name = os.environ.get("SDFLOW_TEST_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda") if torch.cuda.is_available() else None


DEVICE = _accelerator()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA device here (CI has none; "
                                "SDFLOW_TEST_DEVICE=cpu runs these tests on the CPU)")


def on_device(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


@pytest.fixture(scope="module")
def tiny():
    return perturbed(seed=1).to(DEVICE)


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    return load_authors(tmp_path_factory, DEVICE)


def test_float32_reproduces_the_authors_on_the_device(authors):
    """The fixture's float64 outputs within 1e-4, as on the CPU. Eval-mode sampling (the fused
    form) switches cuDNN's TF32 off by itself; the modules (training mode) compute in whatever
    PyTorch's defaults say (TF32 for convolutions on CUDA, about 1e-3), so they are checked
    inside `ieee_float32` too."""
    model, fx = authors
    inp = {k: v.float().to(DEVICE) for k, v in fx["inputs"].items()}
    out = fx["outputs"]
    with torch.no_grad():
        for name in ("fused", "modules"):
            model.train(name == "modules")
            with ieee_float32(DEVICE) if name == "modules" else contextlib.nullcontext():
                sr = model.super_resolve(inp["lr"], tau=0)
                ds = model.downscale(inp["hr"], deg_latent=inp["ds.deg_sample"])
            assert rel_err(sr.cpu(), out["sr.image_tau0"]) < 1e-4, name
            assert rel_err(ds.cpu(), out["ds.image"]) < 1e-4, name
        model.eval()
        with ieee_float32(DEVICE):
            assert rel_err(model.hr_log_density(inp["hr"]).cpu(), out["hr.logdet_plus_logp_hf"]) < 1e-4
            assert rel_err(model.lr_log_density(inp["lr"]).cpu(),
                           out["lr.logdet"] + out["deg.logdet_plus_mixture_logp"]) < 1e-4


def test_sampling_form_matches_the_modules_and_the_cpu(tiny):
    fast = tiny
    lr = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    hr = torch.rand(2, 3, 30, 42, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cpu = perturbed(seed=1)
    with torch.no_grad(), ieee_float32(DEVICE):
        for tau in (0.0, 0.9):
            tiny.train()   # the modules themselves
            ref = tiny.super_resolve(lr.to(DEVICE), tau, on_device(3))
            ref_ds = tiny.downscale(hr.to(DEVICE), tau, component=[1, 2], generator=on_device(4))
            tiny.eval()
            out = fast.super_resolve(lr.to(DEVICE), tau, on_device(3))
            assert out.device.type == DEVICE.type and rel_err(out.cpu(), ref.cpu()) < 1e-4
            out = fast.downscale(hr.to(DEVICE), tau, component=[1, 2], generator=on_device(4))
            assert rel_err(out.cpu(), ref_ds.cpu()) < 1e-4
        # At tau 0 SR draws nothing: the device and the CPU give the same image.
        assert rel_err(fast.super_resolve(lr.to(DEVICE), 0.0).cpu(), cpu.super_resolve(lr, 0.0)) < 1e-4
        # The samples really depend on the seed.
        assert rel_err(fast.super_resolve(lr.to(DEVICE), 0.9, on_device(5)).cpu(),
                       fast.super_resolve(lr.to(DEVICE), 0.9, on_device(3)).cpu()) > 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_the_device(tiny, precision):
    """Finite, and close to float32 (PSNR in 8-bit levels; docs/performance.md has the paper
    model's figures): a precision that broke the flows would fall far below."""
    lr = (torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(DEVICE)
    hr = (torch.rand(1, 3, 64, 56, generator=torch.Generator().manual_seed(3)) * 2 - 1).to(DEVICE)
    fp32, low = Pipeline(tiny, "fp32"), Pipeline(tiny, precision)
    for a, b in ((fp32.super_resolve(lr, 0.8, generator=on_device(1)), low.super_resolve(lr, 0.8, generator=on_device(1))),
                 (fp32.downscale(hr, 0.8, generator=on_device(1)), low.downscale(hr, 0.8, generator=on_device(1)))):
        assert b.dtype == torch.float32 and bool(torch.isfinite(b).all())
        mse = ((a - b).cpu().double() * 127.5).pow(2).mean().item()
        psnr = 10 * math.log10(255 ** 2 / max(mse, 1e-20))
        assert psnr > 40, f"{precision}: {psnr:.1f} dB against float32"


def test_tiles_agree_with_the_whole_image_on_the_device(tiny):
    fast = tiny
    lr = (torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(4)) * 2 - 1).to(DEVICE)
    hr = (torch.rand(1, 3, 160, 200, generator=torch.Generator().manual_seed(5)) * 2 - 1).to(DEVICE)
    sr_tiles = Pipeline(tiny, "fp32", tile=16, tile_pad=DEFAULT_SR_TILE_PAD)
    for tau in (0.0, 0.9):  # tau > 0: one noise field on the device, cropped per tile
        mx, mean = levels(sr_tiles.super_resolve(lr, tau, generator=on_device(6)),
                          fast.super_resolve(lr, tau, on_device(6)))
        assert mx < 0.05 and mean < 0.005
    ds_tiles = Pipeline(tiny, "fp32", tile=64, tile_pad=DEFAULT_DS_TILE_PAD)
    mx, mean = levels(ds_tiles.downscale(hr, 0.9, generator=on_device(6), component=0),
                      fast.downscale(hr, 0.9, component=0, generator=on_device(6)))
    assert mx < 0.05 and mean < 0.005


def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path), dtype=float)


def test_command_line_on_the_device(tmp_path, tiny_model_path):
    src = tmp_path / "in"
    src.mkdir()
    save(src / "a.png", 12, 10, "RGB", 0)
    save(src / "b.png", 12, 10, "RGBA", 1)
    save(src / "c.png", 9, 14, "L", 2)
    (src / "broken.png").write_bytes(b"not an image")
    common = ["-i", src, "--model", tiny_model_path, "-q", "--precision", "fp32"]
    run = lambda *a: main([str(x) for x in a])  # noqa: E731
    # The broken file fails by name (exit 1), the others are made on either device.
    assert run("sr", *common, "-o", tmp_path / "dev", "--device", DEVICE.type, "--tau", "0") == 1
    assert run("sr", *common, "-o", tmp_path / "cpu", "--device", "cpu", "--tau", "0") == 1
    for name in ("a_sr.png", "b_sr.png", "c_sr.png"):
        a, b = _pixels(tmp_path / "dev" / name), _pixels(tmp_path / "cpu" / name)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, name
    # Several samples with tiles, batches, bf16 on the device.
    for name, options in (("tiles", ["--tile", "8"]), ("batch", ["--batch-size", "2"]),
                          ("bf16", ["--precision", "bf16"]), ("auto", ["--precision", "auto"])):
        assert run("sr", *common, "-o", tmp_path / name, "--device", DEVICE.type, "--samples", "2", *options) == 1
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
            f"{s}_sr_{k}.png" for s in "abc" for k in (0, 1)], name
    assert run("ds", *common, "-o", tmp_path / "ds", "--device", DEVICE.type, "--seed", "3") == 1
    assert _pixels(tmp_path / "ds" / "a_ds.png").shape == (3, 3, 3)
    assert _pixels(tmp_path / "ds" / "b_ds.png").shape == (3, 3, 4)


def test_training_on_the_device(tmp_path):
    """Both stages run (with bf16 autocast on CUDA), every term finite, and an interrupted run
    resumed lands where the uninterrupted one does. On CUDA some kernels add in a varying order,
    so the two may differ by rounding: the check is that they differ by far less than the
    steps after the interruption moved the weights (a resume that lost state would not)."""
    from sdflow.train import checkpoint as ckpt_io
    from sdflow.train.loop import train

    amp = "bf16" if DEVICE.type == "cuda" else "none"
    cfg = make_cfg(make_data(tmp_path / "data"), **{"train.device": DEVICE.type, "train.amp": amp, "train.steps": 7,
                            "train.stage1_steps": 3, "checkpoint.every": 4})
    s = train(cfg, tmp_path / "a")
    assert s["step"] == 7 and s["skipped"] == 0
    assert all(math.isfinite(v) for v in s["last_terms"].values())
    b = tmp_path / "b"

    def interrupt(trainer):
        if trainer.step == 4:  # as Ctrl-C: the step finishes and is saved
            os.kill(os.getpid(), signal.SIGINT)

    assert train(cfg, b, on_step_end=interrupt)["interrupted"]
    at4 = all_state(b)
    assert train(cfg, b, resume=True)["step"] == 7
    a, b7 = all_state(tmp_path / "a"), all_state(b)
    assert a.keys() == b7.keys()
    model_keys = [k for k in a if k.startswith("model.") and a[k].is_floating_point()]
    moved = sum((a[k].double() - at4[k].double()).pow(2).sum().item() for k in model_keys)
    apart = sum((a[k].double() - b7[k].double()).pow(2).sum().item() for k in model_keys)
    assert moved > 0 and apart <= 1e-4 * moved, (apart, moved)
    # The checkpoint loads anywhere.
    m = sdflow.load(ckpt_io.latest_checkpoint(tmp_path / "a"))
    with torch.no_grad():
        assert torch.isfinite(m.super_resolve(torch.zeros(1, 3, 8, 8), 0.0)).all()
