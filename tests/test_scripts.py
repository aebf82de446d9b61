"""The maintenance scripts under scripts/ (training curves, bundling the default model), and the supervised yardstick and the content probe under benchmarks/."""
import importlib.util
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def script(name, folder="scripts"):
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOG = """\
2026-12-01 20:16:11 INFO sdflow train: run runs/x | device cpu x 1 rank(s)
2026-12-01 20:19:25 INFO step 100/300 stage 1 | nll_hr=3.4497 nll_lr=4.4500 total=9.9279 | g_norm 111 | lr 0.0005 | skipped 0 | 0.347 s/step
2026-12-01 20:19:26 INFO validation at step 100: sr_psnr_y=21.9420, bicubic_up_psnr_y=23.7637, ds_psnr=23.8460, bicubic_down_psnr=24.5308
2026-12-01 20:19:30 INFO step 200/300 stage 2 | nll_hr=3.1000 nll_lr=nan total=9.0 | g_norm 90 | lr 0.0005 | skipped 1 | 0.5 s/step
2026-12-01 20:23:04 INFO interrupted: stopped after step 200; continue with `sdflow train --out runs/x --resume`
2026-12-01 20:23:14 INFO resumed from ckpt-00000100.pt at step 100
2026-12-01 20:24:27 INFO step 200/300 stage 2 | nll_hr=3.0500 nll_lr=4.2000 total=8.9 | g_norm 80 | lr 0.0005 | skipped 0 | 0.5 s/step
2026-12-01 20:25:00 INFO validation at step 200: sr_psnr_y=22.5000, bicubic_up_psnr_y=23.7637, ds_psnr=24.4000, bicubic_down_psnr=24.5308
"""


def test_plot_training_reads_a_resumed_log(tmp_path):
    plot = script("plot_training")
    terms, val = plot.parse(LOG)
    assert sorted(terms) == [100, 200] and sorted(val) == [100, 200]
    # A step logged twice (before an interruption and after the resume) keeps its last value.
    assert terms[200] == {"nll_hr": 3.05, "nll_lr": 4.2, "total": 8.9}
    assert math.isnan(plot.parse(LOG.split("interrupted")[0])[0][200]["nll_lr"])
    assert val[200]["sr_psnr_y"] == 22.5 and val[100]["bicubic_down_psnr"] == 24.5308
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text(LOG)
    plot.main(str(run), str(tmp_path / "curves"))
    nll, v = (tmp_path / "curves_nll.svg").read_text(), (tmp_path / "curves_val.svg").read_text()
    assert nll.startswith("<svg") and "NLL HR" in nll and "NLL LR" in nll
    assert "SR Y" in v and "bicubic down" in v


def test_bundle_default_writes_the_runs_model_with_its_metadata(tmp_path):
    import torch

    import sdflow
    from safetensors import safe_open

    from sdflow.checkpoints import save_model
    from sdflow.train.config import TrainConfig

    cfg = TrainConfig.load(REPO / "configs" / "default.yaml", ["train.steps=10"])
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.yaml")
    torch.manual_seed(0)
    model = sdflow.SDFlow(cfg.model_config())
    save_model(model, run / "model.safetensors")
    out = tmp_path / "bundled.safetensors"
    script("bundle_default").main(str(run), "severe", str(out))
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["sdflow.degradation"] == "severe" and meta["sdflow.steps"] == "10"
    assert meta["sdflow.train_config"] == "configs/default.yaml" and "mate-backgrounds" in meta["sdflow.data"]
    bundled = sdflow.load(out)
    assert all(torch.equal(a, b) for a, b in zip(bundled.state_dict().values(), model.state_dict().values()))


def test_the_bundled_model_is_configs_default():
    """configs/default.yaml is the recipe of the model that ships: the same architecture."""
    import sdflow
    from sdflow.checkpoints import bundled_metadata
    from sdflow.train.config import TrainConfig

    cfg = TrainConfig.load(REPO / "configs" / "default.yaml")
    assert sdflow.load("default").config == cfg.model_config()
    assert bundled_metadata()["sdflow.train_config"].startswith("configs/default.yaml")


def test_supervised_yardstick_starts_as_bicubic_and_scores_as_eval_does(tmp_path, capsys):
    import re

    import numpy as np
    from PIL import Image

    from sdflow.metrics import psnr_y
    from sdflow.data.datasets import load_pair
    from sdflow.evaluation.scoring import colour_shift, quantised
    from sdflow.resize import upscale

    ys = script("supervised_yardstick", "benchmarks")
    g = np.random.default_rng(0)
    for split in ("pairs", "tune", "test"):
        for i in range(2):
            hr = g.integers(0, 256, (64, 96, 3), dtype=np.uint8)
            lr = np.asarray(Image.fromarray(hr).resize((24, 16), Image.BICUBIC))
            for side, a in (("HR", hr), ("LR", lr)):
                (tmp_path / "fam" / split / side).mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(tmp_path / "fam" / split / side / f"{i}.png")
    ys.main([str(tmp_path), "fam", "--steps", "0"])
    out = capsys.readouterr().out
    test = [load_pair(tmp_path / "fam/test/HR" / f"{i}.png", tmp_path / "fam/test/LR" / f"{i}.png")
            for i in range(2)]
    want = np.mean([psnr_y(quantised(upscale(lr, 4)), quantised(hr), 4) for hr, lr in test])
    want_colour = np.mean([colour_shift(quantised(upscale(lr, 4)), quantised(hr)) for hr, lr in test])
    line = next(l for l in out.splitlines() if l.startswith("fam test"))
    cnn, bic = map(float, re.search(r"Y-PSNR ([\d.]+), bicubic ([\d.]+)", line).groups())
    assert cnn == bic and abs(bic - want) < 0.005 and "gain +0.00" in line  # the zero tail: bicubic
    col, col_bic = map(float, re.search(r"colour shift ([\d.]+) \(bicubic ([\d.]+)\)", line).groups())
    assert col == col_bic and abs(col_bic - want_colour) < 0.005 and want_colour > 0.05
    ys.main([str(tmp_path), "fam", "--steps", "3", "--split", "test"])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("fam test (2 pairs)") and "3 steps" in line


def test_content_probe_band_gain_tells_blur_from_sharpening():
    """Blur and an unsharp mask change the mid band by similar energy and opposite sign."""
    import torch

    from sdflow.resize import gaussian_blur

    probe = script("content_probe", "benchmarks")
    clean = gaussian_blur(torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1, 0.8)
    blurred = gaussian_blur(clean, 1.5)
    sharpened = clean + 1.0 * (clean - gaussian_blur(clean, 1.5))
    assert probe.band_gain(clean - clean, clean) == 0.0
    assert probe.band_gain(blurred - clean, clean) < -0.2 and probe.band_gain(sharpened - clean, clean) > 0.2
    assert abs(probe.band_gain(-0.5 * clean, clean) + 0.5) < 1e-5  # a linear change: its own slope


def test_content_probe_decodes_as_the_model_samples(tmp_path, tiny_model_path, capsys):
    """The probe's "sr E(x)" is the model's own tau-0 SR and its "ds" the model's tau-0 DS, scored
    as eval scores them; the oracle and target rows are of the same pair."""
    import numpy as np
    import torch
    from PIL import Image

    import sdflow
    from sdflow.data.datasets import load_pair
    from sdflow.evaluation.scoring import quantised
    from sdflow.metrics import psnr, psnr_y

    probe = script("content_probe", "benchmarks")
    g = np.random.default_rng(0)
    hr = np.asarray(Image.fromarray(g.integers(0, 256, (16, 24, 3), dtype=np.uint8)).resize((96, 64), Image.BICUBIC))
    lr = np.asarray(Image.fromarray(hr).resize((24, 16), Image.BICUBIC))
    for folder, a in (("tune/HR", hr), ("tune/LR", lr), ("train_HR", hr)):
        (tmp_path / "fam" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(tmp_path / "fam" / folder / "0.png")
    got, fits, n = probe.probe(tiny_model_path, tmp_path / "fam", train_every=1)
    m = sdflow.load(tiny_model_path, dtype=torch.float32).eval()
    t_hr, t_lr = load_pair(tmp_path / "fam/tune/HR/0.png", tmp_path / "fam/tune/LR/0.png")
    want_sr = psnr_y(quantised(m.super_resolve(t_lr, 0.0, precision="fp32")), quantised(t_hr), 4)
    seed0 = torch.Generator().manual_seed(0)
    want_ds = psnr(quantised(m.downscale(t_hr, 0.0, precision="fp32", generator=seed0)), quantised(t_lr))
    assert n == 1 and abs(got["sr E(x)"] - want_sr) < 0.02 and abs(got["ds"] - want_ds) < 0.02
    assert abs(got["ds target"] - got["LR ~ target"]) < 1e-6   # one PSNR, both ways
    assert got["sr z_c^h"] != got["sr z_c^t"] and set(fits) == {"train sr z_c^t", "train bicubic target"}
    # With a degraded partner in pairs/, E's restoration of it, here of the tuning pair itself.
    for folder, a in (("pairs/HR", hr), ("pairs/LR", lr)):
        (tmp_path / "fam" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(tmp_path / "fam" / folder / "0.png")
    _, fits, _ = probe.probe(tiny_model_path, tmp_path / "fam", train_every=1)
    assert abs(fits["pairs sr E(x)"] - got["sr E(x)"]) < 1e-6 and abs(fits["pairs E pic ~ target"] - got["E pic ~ target"]) < 1e-6
    assert abs(fits["pairs bicubic LR"] - got["bicubic LR"]) < 1e-6
    from sdflow.resize import downscale, gaussian_blur
    ds1 = m.downscale(t_hr, 1.0, precision="fp32", generator=torch.Generator().manual_seed(0))
    target = gaussian_blur(downscale(t_hr, 4), 0.7)  # the probe's default --sigma
    assert abs(fits["pairs DS(t1) ~ target"] - psnr(quantised(ds1), quantised(target))) < 1e-6
    # The three bands split the difference: their energies add up to its own (nearly: the bands
    # are not exactly orthogonal), and the LR's total matches its PSNR to the target.
    for who in ("LR", "DS"):
        bands = [fits[f"pairs {who}-target {b}"] for b in ("low", "mid", "high")]
        assert min(bands) >= 0 and max(bands) > 0
    total = 255 * 10 ** (-fits["pairs LR ~ target"] / 20)  # RMS in 8-bit levels from the PSNR
    energy = sum(fits[f"pairs LR-target {b}"] ** 2 for b in ("low", "mid", "high"))
    assert 0.5 * total ** 2 < energy < 1.5 * total ** 2
    # SR's error bands are of the model's own 8-bit SR: their energies add up to its error's.
    y = quantised(m.super_resolve(t_lr, 0.0, precision="fp32")).astype(np.float64)
    err = np.sqrt(np.mean((y - quantised(t_hr)) ** 2))
    sr_energy = sum(got[f"sr-HR {b}"] ** 2 for b in ("low", "mid", "high"))
    assert 0.7 * err ** 2 < sr_energy < 1.3 * err ** 2
    assert min(got[f"bicubic-HR {b}"] for b in ("low", "mid", "high")) > 0
    # The unblurred LR has more of the mid band than the target picture blurred by --sigma 0.7.
    assert fits["pairs LR mid gain"] > 0.05 and "pairs DS mid gain" in fits
    _, hot, _ = probe.probe(tiny_model_path, tmp_path / "fam", train_every=1, cycle_tau=2.0)
    assert "pairs DS(t2) ~ target" in hot and hot["pairs LR-target mid"] == fits["pairs LR-target mid"]
    probe.main([str(tiny_model_path), str(tmp_path / "fam"), "--train-every", "0"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and f"sr E(x) {got['sr E(x)']:.2f}" in out[1]
    assert torch.is_grad_enabled()  # the tests that follow differentiate


def test_term_gradients_split_the_total_gradient_by_term(tmp_path, capsys):
    """term_gradients.py: per-term gradients of a run's checkpoint add up to the gradient of the whole
    objective on the same batch and draws; a term that does not reach the parameter reports zero."""
    import torch

    from sdflow.train.loop import train
    from test_train import make_cfg, make_data

    tg = script("term_gradients", "benchmarks")
    data = make_data(tmp_path / "data")
    over = {"model.ds_content": "picture", "model.hr_squeeze": "lifting", "model.ds_blur": "learnt",
            "loss.ds_hf_match": 1.0, "train.steps": 3, "train.stage1_steps": 2, "checkpoint.every": 3}
    train(make_cfg(data, **over), tmp_path / "run")
    cfg, model, obj, stage2 = tg.load(tmp_path / "run", 3)
    assert stage2 and float(model.ds_blur.sigma.detach()) != 0.7  # stage 2 moved it once
    terms = [t for t, w in obj.weights(True).items() if w > 0]
    assert {"gan", "ds_hf_match", "content_cycle"} <= set(terms)
    per_term = tg.term_gradients(tmp_path / "run", 3, "ds_blur.raw", terms, batches=1)
    assert per_term["content_cycle"] == [0.0] and per_term["gan"][0] != 0.0 and per_term["ds_hf_match"][0] != 0.0
    # The whole objective on the same batch and draws.
    from sdflow.data.datasets import make_loader
    from sdflow.train.loop import training_patches
    batch = next(iter(make_loader(training_patches(cfg), cfg.data.batch_size, 123)))
    torch.manual_seed(123)
    obj(batch["hr"], batch["lr"], stage2=True)[0].backward()
    whole = float(model.ds_blur.raw.grad)
    assert abs(sum(g[0] for g in per_term.values()) - whole) < 1e-5 * max(1.0, abs(whole))
    tg.main([str(tmp_path / "run"), "3", "deg_prior.log_stds", "--terms", "nll_lr", "gan", "--batches", "1"])
    out = capsys.readouterr().out
    assert "nll_lr" in out and "|mean|" in out
