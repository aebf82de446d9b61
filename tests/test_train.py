"""Training: config, data, objective (terms and gradient-stopping rules), loop, checkpoints,
exact resume, skipped steps, logging and validation. Tiny model, CPU, synthetic images."""
import dataclasses
import logging
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import sdflow
from sdflow.config import ModelConfig
from sdflow.data.datasets import UnpairedPatches, UnpairedStream, make_loader
from sdflow.model import SDFlow
from sdflow.resize import downscale, gaussian_blur
from sdflow.nets.discriminators import ContentDiscriminator, PatchDiscriminator, VGG19Features
from sdflow.train import checkpoint as ckpt_io
from sdflow.train.config import TrainConfig, apply_overrides
from sdflow.train.loop import TrainingDiverged, train
from sdflow.train.objective import (CriticObjective, GeneratorObjective, bits_per_dim_nll, hf_distribution_l1,
                                    high_pass_energy)

REPO = Path(__file__).resolve().parents[1]


def _smooth_image(rng, h, w, noise):
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(0.05, 0.3, 3)
    base = np.stack([np.sin(xx * f[0] + yy * f[1]), np.cos(yy * f[2]), np.sin((xx - yy) * f[1])], -1)
    img = base * 90 + 128 + rng.normal(0, noise, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def make_data(root):
    """Unpaired HR/LR folders (with a nested folder, a too-small and a broken file), plus a
    paired validation set, in `root`."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "hr" / "sub").mkdir(parents=True)
    (root / "lr").mkdir()
    for i in range(4):
        Image.fromarray(_smooth_image(rng, 48, 56, 2)).save(root / "hr" / ("sub" if i % 2 else "") / f"h{i}.png")
        Image.fromarray(_smooth_image(rng, 14, 16, 12)).save(root / "lr" / f"l{i}.png")
    Image.fromarray(_smooth_image(rng, 20, 20, 2)).save(root / "hr" / "too_small.png")
    (root / "lr" / "broken.png").write_bytes(b"not a png at all")
    (root / "val_hr").mkdir()
    (root / "val_lr").mkdir()
    for i in range(2):
        hr = _smooth_image(rng, 32, 40, 0)
        Image.fromarray(hr).save(root / "val_hr" / f"v{i}.png")
        lr = np.asarray(Image.fromarray(hr).resize((10, 8), Image.BICUBIC))
        Image.fromarray(lr).save(root / "val_lr" / f"v{i}.png")
    return root


def make_cfg(data, **over) -> TrainConfig:
    base = {
        "model": {"preset": "tiny"},
        "data": {"hr_dir": str(data / "hr"), "lr_dir": str(data / "lr"), "hr_patch": 32, "lr_patch": 8,
                 "batch_size": 4, "num_workers": 0},
        "train": {"steps": 6, "stage1_steps": 3, "seed": 1, "device": "cpu"},
        "disc": {"latent_channels": 8, "latent_layers": 1, "image_channels": 8, "hr_layers": 2, "lr_layers": 1},
        "log": {"every": 2, "image_every": 0, "tensorboard": False, "progress": False},
        "checkpoint": {"every": 0, "keep": 2},
        "val": {"every": 0},
    }
    return TrainConfig.from_dict(apply_overrides(base, [f"{k}={v}" for k, v in over.items()]))


def all_state(run_dir: Path) -> dict:
    ck = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(run_dir))
    out = {f"model.{k}": v for k, v in ck["model"].items()}
    for name, sd in ck["critics"].items():
        out.update({f"critic.{name}.{k}": v for k, v in sd.items()})
    for name, sd in ck["optimizers"].items():
        for pid, st in sd.get("state", {}).items():
            out.update({f"opt.{name}.{pid}.{k}": v for k, v in st.items()})
    return out


# ----- config ------------------------------------------------------------------------------------

def test_overrides_parse_types_and_reject_unknown_keys(data):
    cfg = make_cfg(data)
    c2 = cfg.with_overrides(["optim.lr=2e-4", "optim.betas=[0.5, 0.99]", "loss.vgg_weights=null",
                             "train.amp=bf16", "data.hflip=false", "model.coupling_hidden=8"])
    assert c2.optim.lr == 2e-4 and isinstance(c2.optim.lr, float)
    assert c2.optim.betas == [0.5, 0.99] and c2.train.amp == "bf16" and c2.data.hflip is False
    assert c2.model_config().coupling_hidden == 8 and c2.model_config().hr_steps == 2  # preset kept
    assert cfg.optim.lr == 1e-4  # the original is untouched
    with pytest.raises(ValueError, match="optim.lrr"):
        cfg.with_overrides(["optim.lrr=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        cfg.with_overrides(["optim.lr"])
    with pytest.raises(ValueError, match="train.steps"):
        cfg.with_overrides(["train.steps=abc"])
    with pytest.raises(ValueError, match="4 x data.lr_patch"):
        cfg.with_overrides(["data.lr_patch=16"])
    with pytest.raises(ValueError, match="multiple"):
        cfg.with_overrides(["data.batch_size=6", "train.grad_accum=4"]).micro_batch(1)
    with pytest.raises(ValueError, match="unknown model keys"):
        cfg.with_overrides(["model.depth=3"]).model_config()
    patch = cfg.data.lr_patch  # ds_hf_levels must leave the last pooled copy 3 pixels or more
    top = max(k for k in range(1, 8) if patch >= 3 * 2 ** (k - 1))
    cfg.with_overrides(["loss.ds_hf_match=1", f"loss.ds_hf_levels={top}"])
    with pytest.raises(ValueError, match="ds_hf_levels"):
        cfg.with_overrides(["loss.ds_hf_match=1", f"loss.ds_hf_levels={top + 1}"])
    # content_hf_levels likewise, on E's picture (the LR patch) or on the latent (half its side).
    picture = ["loss.content_hf_match=1", "loss.content_hf_space=picture"]
    cfg.with_overrides([*picture, f"loss.content_hf_levels={top}"])
    with pytest.raises(ValueError, match="content_hf_levels"):
        cfg.with_overrides(["loss.content_hf_match=1", f"loss.content_hf_levels={top}"])
    for bad in ("loss.content_hf_space=pixels", "loss.content_hf_statistic=median", "loss.ds_hf_statistic=l2"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            cfg.with_overrides([bad])
    # YAML reads 1e-4 as a string; the loader must still produce a float.
    assert TrainConfig.from_dict({"optim": {"lr": "1e-4"}}).optim.lr == 1e-4


@pytest.mark.parametrize("override, message", [
    ("log.every=0", "log.every must be an integer >= 1, got 0"),
    ("train.max_consecutive_skips=0", "train.max_consecutive_skips must be an integer >= 1, got 0"),
    ("model.coupling_hidden=-4", "model.coupling_hidden must be an integer >= 1, got -4"),
    ("model.coupling_hidden=0", "model.coupling_hidden must be an integer >= 1, got 0"),
    ("model.coupling_hidden=abc", "model.coupling_hidden: expected int, got 'abc'"),
    ("model.hf_rrdb_blocks=-1", "model.hf_rrdb_blocks must be an integer >= 0, got -1"),
    ("checkpoint.every=-1", "checkpoint.every must be an integer >= 0, got -1"),
    ("optim.lr=.inf", "optim.lr must be a finite number >= 0, got inf"),
    ("optim.lr=-1e-4", "optim.lr must be a finite number >= 0, got -0.0001"),
    ("optim.lr_gamma=0", "optim.lr_gamma must be a finite number > 0, got 0.0"),
    ("loss.nll_hr=.nan", "loss.nll_hr must be a finite number >= 0, got nan"),
    ("loss.sr_cycle=-1", "loss.sr_cycle must be a finite number >= 0, got -1.0"),
    ("optim.betas=[0.9,1]", "optim.betas must be two numbers in [0, 1)"),
])
def test_out_of_range_values_are_usage_errors_naming_the_key(data, tmp_path, capsys, override, message):
    from sdflow.commands import train as cmd

    cfg_path = tmp_path / "c.yaml"
    make_cfg(data).save(cfg_path)
    assert cmd.main(["--config", str(cfg_path), "--out", str(tmp_path / "run"), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything is written
    # The block counts of the model may be 0, its widths may not.
    make_cfg(data, **{"model.hf_rrdb_blocks": 0}).model_config()


def test_paper_and_tiny_configs(tmp_path):
    paper = TrainConfig.load(REPO / "configs" / "paper.yaml")
    assert paper.model_config() == ModelConfig.preset("paper")
    assert (paper.data.batch_size, paper.data.hr_patch, paper.data.lr_patch) == (32, 192, 48)
    assert paper.train.stage1_steps == 50_000 and paper.optim.lr == 1e-4 and paper.optim.betas == [0.9, 0.999]
    assert (paper.loss.domain, paper.loss.gan, paper.loss.pixel, paper.loss.perceptual) == (0.05, 0.1, 0.5, 0.5)
    n = paper.train.steps
    # Halved at 50/75/90/95 % of the iterations.
    assert paper.lr_factor(n // 2 - 1) == 1.0 and paper.lr_factor(n // 2) == 0.5
    assert paper.lr_factor(int(0.75 * n)) == 0.25 and paper.lr_factor(n - 1) == 0.0625
    tiny = TrainConfig.load(REPO / "configs" / "tiny.yaml", ["train.steps=10"])
    assert tiny.model_config() == ModelConfig.preset("tiny") and tiny.train.steps == 10
    TrainConfig.load(REPO / "configs" / "small.yaml")
    unpaired = TrainConfig.load(REPO / "configs" / "unpaired.yaml")
    assert unpaired.loss.cycle_space == "picture" and unpaired.train.amp == "auto"
    m = unpaired.model_config()  # the lifting recipe (docs/training.md, "The lifting squeeze")
    assert (m.hr_squeeze, m.extractor, m.ds_content, m.ds_content_sigma) == ("lifting", "residual", "picture", 0.7)
    assert (unpaired.loss.sr_content, unpaired.loss.content_target_sigma, unpaired.loss.ds_hf_match) == ("target", 0.0, 3.0)
    # Tempered cycles, with f_LR fixed (docs/training.md, "Tempered cycles").
    assert unpaired.loss.cycle_tau == 2.0 and unpaired.optim.freeze == ["f_lr"]
    assert unpaired.loss.gan == 1.0 and paper.loss.gan == 0.1  # "A stronger critic"
    # A saved config reads back identically.
    paper.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == paper


# ----- data --------------------------------------------------------------------------------------

def test_dataset_skips_small_and_broken_images_by_name(data, caplog):
    with caplog.at_level(logging.WARNING, logger="sdflow.train"):
        ds = UnpairedPatches(data / "hr", data / "lr", 32, 8)
    assert len(ds.hr_paths) == 4 and len(ds.lr_paths) == 4  # recursive; bad files dropped
    assert "too_small.png" in caplog.text and "broken.png" in caplog.text
    item = ds[(0, 1, 123)]
    assert item["hr"].shape == (3, 32, 32) and item["lr"].shape == (3, 8, 8)
    assert item["hr"].min() >= -1 and item["hr"].max() <= 1
    assert torch.equal(ds[(2, 3, 7)]["hr"], ds[(2, 3, 7)]["hr"])
    assert not torch.equal(ds[(2, 3, 7)]["hr"], ds[(2, 3, 8)]["hr"])


def test_data_stream_is_repeatable_and_independent_of_workers(data):
    ds = UnpairedPatches(data / "hr", data / "lr", 32, 8)

    def batches(workers, start=0, n=3, rank=0, world=1):
        it = iter(make_loader(ds, 2, seed=5, rank=rank, world_size=world, start=start, num_workers=workers))
        return [next(it) for _ in range(n)]

    a, b = batches(0), batches(2)
    for x, y in zip(a, b):
        assert torch.equal(x["hr"], y["hr"]) and torch.equal(x["lr"], y["lr"])
    # Starting at sample 2 is the same as skipping the first batch: what resuming relies on.
    c = batches(0, start=2, n=2)
    assert torch.equal(c[0]["hr"], a[1]["hr"]) and torch.equal(c[1]["lr"], a[2]["lr"])
    # Ranks take interleaved positions of one stream: disjoint samples.
    s0, s1 = UnpairedStream(4, 4, 5, 0, 2), UnpairedStream(4, 4, 5, 1, 2)
    k0 = [k for k, _ in zip(iter(s0), range(4))]
    k1 = [k for k, _ in zip(iter(s1), range(4))]
    assert {k[2] for k in k0}.isdisjoint({k[2] for k in k1})
    # Every HR image is visited once per epoch.
    single = [k for k, _ in zip(iter(UnpairedStream(4, 3, 5)), range(12))]
    for e in range(3):
        assert sorted(k[0] for k in single[4 * e:4 * e + 4]) == [0, 1, 2, 3]


# ----- objective ---------------------------------------------------------------------------------

def _objective(loss_over=(), critics=True, vgg=None, **model_over):
    torch.manual_seed(0)
    model = SDFlow(dataclasses.replace(ModelConfig.preset("tiny"), **model_over)).train()
    # Flows start as identities (zeroed last layers), where conditions have no effect and
    # gradient paths are invisible; random last layers make every path carry a gradient.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv3" in name or "out_log_scale" in name:
                p.normal_(0, 0.05)
    cfg = TrainConfig.from_dict(apply_overrides({}, list(loss_over))).loss
    crit = {}
    if critics:
        crit = {"content": ContentDiscriminator(3, 8, 1), "hr": PatchDiscriminator(3, 8, 2),
                "lr": PatchDiscriminator(3, 8, 1)}
    obj = GeneratorObjective(model, cfg, crit, vgg)
    hr = torch.rand(2, 3, 32, 32) * 2 - 1
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        obj(hr, lr)  # ActNorm initialisation
    return obj, model, crit, hr, lr


def _only(term, *extra):
    names = ["nll_hr", "nll_lr", "content", "content_perceptual", "domain", "gan", "pixel", "perceptual",
             "content_cycle", "hr_mode", "lr_mode", "sr_cycle", "ds_hf_match", "content_hf_match", "sr_cycle_nll",
             "colour"]
    return [f"loss.{n}={1.0 if n == term else 0.0}" for n in names] + list(extra)


def _grads(module):
    return [p.grad for p in module.parameters()]


def _has_grad(module):
    return any(g is not None and g.abs().sum() > 0 for g in _grads(module))


def test_every_term_is_finite_in_both_stages():
    obj, model, crit, hr, lr = _objective()
    for stage2 in (False, True):
        total, terms, critic_inputs = obj(hr, lr, stage2=stage2)
        expect = {"nll_hr", "nll_lr", "content", "domain"} | ({"gan", "pixel", "content_cycle"} if stage2 else set())
        assert expect <= set(terms)
        assert all(math.isfinite(float(v)) for v in terms.values())
        # The content term's two halves are logged apart and add up to it.
        assert float(terms["content"]) == pytest.approx(float(terms["content_hr"] + terms["content_lr"]))
        total.backward()
        assert set(critic_inputs) == ({"content", "hr", "lr"} if stage2 else {"content"})
        d_loss, d_terms = CriticObjective(crit)(critic_inputs) if stage2 else \
            CriticObjective({"content": crit["content"]})(critic_inputs)
        assert math.isfinite(float(d_loss.detach()))


def test_nll_terms_match_the_models_bits_per_dim():
    obj, model, _, hr, lr = _objective()
    obj.dequantize_inputs = False
    _, terms, _ = obj(hr, lr)
    with torch.no_grad():
        assert torch.allclose(terms["nll_hr"], -model.hr_log_likelihood(hr).mean(), atol=1e-5)
        assert torch.allclose(terms["nll_lr"], -model.lr_log_likelihood(lr).mean(), atol=1e-5)
    # Dequantisation noise stays within one 8-bit step.
    from sdflow.train.objective import dequantize
    x = torch.zeros(1000)
    assert (dequantize(x).abs() <= 1 / 255 + 1e-7).all()


def test_content_loss_never_trains_f_lr():
    obj, model, _, hr, lr = _objective(_only("content"))
    obj(hr, lr)[0].backward()
    assert not _has_grad(model.f_lr)
    assert _has_grad(model.f_hr) and _has_grad(model.content_extractor)  # the content does move
    # The switch really is what stops it.
    obj2, model2, _, hr, lr = _objective(_only("content", "loss.content_freeze_f_lr=false"))
    obj2(hr, lr)[0].backward()
    assert _has_grad(model2.f_lr)


def test_content_target_sigma_blurs_the_targets_only():
    from sdflow.resize import downscale
    obj, model, _, hr, lr = _objective(_only("content", "loss.content_target_sigma=0.8",
                                             "loss.content_lr_lpf_sigma=0"))
    _, terms, _ = obj(hr, lr)
    with torch.no_grad():
        lr_from_c = model.f_lr.inverse(model.content(lr))[0]
        expect_lr = (lr_from_c - gaussian_blur(lr, 0.8)).abs().mean()
        unblurred = (lr_from_c - lr).abs().mean()
    # Full band on the decoded content, blurred target: neither the old target nor a blur of both.
    assert float(terms["content_lr"]) == pytest.approx(float(expect_lr), rel=1e-5)
    assert abs(float(expect_lr) - float(unblurred)) > 1e-3
    obj.dequantize_inputs = False
    _, terms, _ = obj(hr, lr)
    with torch.no_grad():
        lr_from_hr = model.f_lr.inverse(model.encode_hr(hr)[0])[0]
        expect_hr = (lr_from_hr - gaussian_blur(downscale(hr, 4), 0.8)).abs().mean()
    assert float(terms["content_hr"]) == pytest.approx(float(expect_hr), rel=1e-5)


def test_hr_mode_term_is_the_tau0_reconstruction_error_and_trains_both_hr_flows():
    obj, model, _, hr, lr = _objective(_only("hr_mode"))
    obj.dequantize_inputs = False
    total, terms, _ = obj(hr, lr)
    assert set(k for k, v in obj.weights(False).items() if v > 0) == {"hr_mode"}
    # Independently: decode the HR patch's own content with f_HF's mode (z = 0).
    with torch.no_grad():
        z_c, _, _ = model.encode_hr(hr)
        z_h0 = model.f_hf.inverse(torch.zeros(2, 45, 8, 8), z_c)[0]
        expect = (model.decode_hr(z_c, z_h0) - hr).abs().mean()
    assert float(terms["hr_mode"]) == pytest.approx(float(expect), rel=1e-5)
    total.backward()
    assert _has_grad(model.f_hr) and _has_grad(model.f_hf)
    assert not _has_grad(model.f_lr) and not _has_grad(model.content_extractor)
    # Off by default: the spec's objective has no such term.
    assert TrainConfig().loss.hr_mode == 0.0
    assert "hr_mode" not in _objective()[0](hr, lr)[1]


def test_lr_mode_term_decodes_the_lr_content_with_a_mixture_mean():
    obj, model, _, hr, lr = _objective(_only("lr_mode"))
    obj.dequantize_inputs = False
    with torch.no_grad():  # every component mean moved apart, so the component drawn matters
        model.deg_prior.means.normal_(0, 0.1)
    torch.manual_seed(3)
    total, terms, _ = obj(hr, lr)
    with torch.no_grad():
        c = model.content(lr)
        errs = []
        for k in range(model.deg_prior.means.shape[0]):
            z = model.deg_prior.sample(model.f_deg.latent_shape(c, 3), 0.0, component=k)
            errs.append(float((model.f_lr.inverse(c + model.f_deg.inverse(z, c)[0])[0] - lr).abs().mean()))
    assert min(errs) - 1e-6 <= float(terms["lr_mode"]) <= max(errs) + 1e-6
    total.backward()
    assert _has_grad(model.f_lr) and _has_grad(model.f_deg)
    assert not _has_grad(model.content_extractor) and not _has_grad(model.f_hr)  # c is detached
    assert TrainConfig().loss.lr_mode == 0.0


def test_z_c_enters_f_hf_detached(monkeypatch):
    obj, model, _, hr, lr = _objective(_only("nll_hr"))
    seen = []
    orig = type(model.f_hf).forward

    def spy(self, z, cond):
        seen.append(cond)
        return orig(self, z, cond)

    monkeypatch.setattr(type(model.f_hf), "forward", spy)
    obj.dequantize_inputs = False
    obj(hr, lr)[0].backward()
    assert seen and all(c.grad_fn is None and not c.requires_grad for c in seen)
    assert _has_grad(model.f_hf) and _has_grad(model.f_hr)
    g_obj = [p.grad.clone() for p in model.f_hr.parameters()]

    def f_hr_grads(detach):
        model.zero_grad()
        z_c, z_h, ld = model.encode_hr(hr)
        _, ld_hf = model.f_hf(z_h, z_c.detach() if detach else z_c)
        bits_per_dim_nll(ld + ld_hf, hr).mean().backward()
        return [p.grad.clone() for p in model.f_hr.parameters()]

    close = lambda a, b: all(torch.allclose(x, y, atol=1e-7, rtol=1e-5) for x, y in zip(a, b))
    assert close(g_obj, f_hr_grads(detach=True))
    assert not close(g_obj, f_hr_grads(detach=False))  # the stop-gradient is not a no-op here


def test_content_detached_in_nll_lr_by_default():
    obj, model, _, hr, lr = _objective(_only("nll_lr"))
    obj(hr, lr)[0].backward()
    assert not _has_grad(model.content_extractor)
    assert _has_grad(model.f_lr) and _has_grad(model.f_deg) and _has_grad(model.deg_prior)
    obj2, model2, _, hr, lr = _objective(_only("nll_lr", "loss.nll_lr_detach_content=false"))
    obj2(hr, lr)[0].backward()
    assert _has_grad(model2.content_extractor)


def test_adversarial_terms_never_train_the_critics_and_vice_versa():
    obj, model, crit, hr, lr = _objective(_only("gan", "loss.domain=1.0"))
    total, _, critic_inputs = obj(hr, lr, stage2=True)
    total.backward()
    assert all(g is None for c in crit.values() for g in _grads(c))
    assert _has_grad(model.f_hr) and _has_grad(model.content_extractor)  # but they reach the generator
    model.zero_grad()
    d_loss, _ = CriticObjective(crit)(critic_inputs)
    d_loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(_has_grad(c) for c in crit.values())


def test_content_cycle_trains_only_e_by_default():
    obj, model, _, hr, lr = _objective(_only("content_cycle"))
    obj(hr, lr, stage2=True)[0].backward()
    assert _has_grad(model.content_extractor)
    for m in (model.f_hr, model.f_hf, model.f_lr, model.f_deg, model.deg_prior):
        assert not _has_grad(m)
    obj2, model2, _, hr, lr = _objective(_only("content_cycle", "loss.cycle_detach_ds=false"))
    obj2(hr, lr, stage2=True)[0].backward()
    assert _has_grad(model2.f_deg)


def test_sr_cycle_trains_the_sr_path_on_detached_ds_samples():
    obj, model, _, hr, lr = _objective(_only("sr_cycle"))
    assert "sr_cycle" not in obj(hr, lr)[1]  # a stage-2 term
    total, terms, _ = obj(hr, lr, stage2=True)
    assert 0 < float(terms["sr_cycle"]) < 2
    total.backward()
    for m in (model.content_extractor, model.f_hr, model.f_hf):
        assert _has_grad(m)
    for m in (model.f_lr, model.f_deg):  # the DS sample is detached: it is the data here
        assert not _has_grad(m)


def test_hf_distribution_l1_compares_sorted_per_image_energies():
    g = torch.Generator().manual_seed(0)
    flat = torch.zeros(1, 3, 10, 10)
    ramp = torch.linspace(-1, 1, 10).expand(1, 3, 10, 10)
    noise = torch.randn(1, 3, 10, 10, generator=g) * 0.1
    assert float(high_pass_energy(ramp).max()) < 1e-6                # blind to linear ramps
    # Immerkaer's mask has L2 norm 6: on white noise of std s, E|r| = 6 s sqrt(2 / pi).
    big = torch.randn(1, 3, 200, 200, generator=g) * 0.1
    assert torch.allclose(high_pass_energy(big), torch.full((1, 3), 0.6 * math.sqrt(2 / math.pi)), rtol=0.03)
    real = torch.cat([flat, noise])
    # A batch with one smooth and one noisy image matches another in either order...
    assert float(hf_distribution_l1(torch.cat([noise, flat]), real)) == 0.0
    # ...but not a batch of two half-noisy images, although the means agree.
    half = torch.cat([flat + noise / 2, flat + noise / 2])
    assert torch.allclose(high_pass_energy(half).mean(0), high_pass_energy(real).mean(0))
    assert float(hf_distribution_l1(half, real)) > 0.05
    with pytest.raises(ValueError, match="one size"):
        hf_distribution_l1(noise, real)


def test_hf_distribution_levels_tell_blur_from_noise():
    g = torch.Generator().manual_seed(1)
    edges = (torch.rand(4, 3, 6, 6, generator=g) > 0.5).float().repeat_interleave(8, -1).repeat_interleave(8, -2)
    sharp = edges * 2 - 1
    # Blurred edges plus just enough white noise to restore the full-resolution energy.
    blurred = gaussian_blur(sharp, 1.5)
    deficit = high_pass_energy(sharp).mean() - high_pass_energy(blurred).mean()
    noisy = blurred + torch.randn(sharp.shape, generator=g) * float(deficit) / (6 * math.sqrt(2 / math.pi))
    one = float(hf_distribution_l1(noisy, sharp))
    three = float(hf_distribution_l1(noisy, sharp, levels=3))
    assert one < 0.15 * float(high_pass_energy(sharp).mean())    # one scale: nearly indistinguishable
    assert three > 10 * one                                       # the coarser scales see the blur
    assert float(hf_distribution_l1(sharp, sharp, levels=3)) == 0.0
    with pytest.raises(ValueError, match="at least 12 pixels"):
        hf_distribution_l1(sharp[..., :8, :8], sharp[..., :8, :8], levels=3)


def test_hf_distribution_log_weighs_noise_on_flat_patches():
    g = torch.Generator().manual_seed(2)
    flat = torch.zeros(4, 3, 16, 16)
    texture = (torch.rand(4, 3, 16, 16, generator=g) > 0.5).float() * 0.6 - 0.3  # random edges
    level = torch.randn(4, 3, 16, 16, generator=g) * (2 / 255)  # one 8-bit level of noise
    noise = [float(hf_distribution_l1(flat + level, flat, log=log)) for log in (False, True)]
    halved = [float(hf_distribution_l1(texture / 2, texture, log=log)) for log in (False, True)]
    # As energies, a level of noise on clean flat patches is nothing beside texture at half contrast;
    # as logs it counts for more: that noise is what a restoration must remove.
    assert noise[0] < 0.1 * halved[0]
    assert noise[1] > 1.5 * halved[1]
    expected = (torch.log(high_pass_energy(flat + level) + 0.01).sort(0).values
                - torch.log(high_pass_energy(flat) + 0.01).sort(0).values).abs().mean()
    assert noise[1] == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("extractor", ["direct", "residual"])
def test_content_hf_match_in_picture_space_moves_e_alone(extractor):
    over = ("loss.content_hf_space=picture", "loss.content_hf_levels=2", "loss.content_hf_statistic=log")
    obj, model, _, hr, lr = _objective(_only("content_hf_match", *over), extractor=extractor)
    total, terms, _ = obj(hr, lr)
    with torch.no_grad():  # E's picture against the HR's unblurred bicubic picture, two scales, logs
        picture = model.f_lr.inverse(model.content(lr))[0]
        expected = hf_distribution_l1(picture, downscale(hr, 4), levels=2, log=True)
    assert float(expected) > 0
    assert float(terms["content_hf_match"]) == pytest.approx(float(expected), rel=1e-4)
    total.backward()
    assert _has_grad(model.content_extractor)
    # f_LR neither through its inverse (frozen) nor through a residual E's f_LR(x) (detached).
    for m in (model.f_hr, model.f_lr, model.f_deg, model.f_hf):
        assert not _has_grad(m)
    if extractor == "residual":  # the latent form does reach f_LR through f_LR(x): t12's loophole
        obj, model, _, hr, lr = _objective(_only("content_hf_match"), extractor=extractor)
        obj(hr, lr)[0].backward()
        assert _has_grad(model.f_lr)


@pytest.mark.parametrize("statistic", ["energy", "log"])
def test_ds_hf_match_trains_the_ds_path_only(statistic, monkeypatch):
    from sdflow.train import objective

    obj, model, _, hr, lr = _objective(_only("ds_hf_match", f"loss.ds_hf_statistic={statistic}"))
    assert "ds_hf_match" not in obj(hr, lr)[1]  # a stage-2 term
    calls = []
    spy = lambda fake, real, levels=1, log=False: calls.append(log) or hf_distribution_l1(fake, real, levels, log)  # noqa: E731
    monkeypatch.setattr(objective, "hf_distribution_l1", spy)
    total, terms, _ = obj(hr, lr, stage2=True)
    assert calls == [statistic == "log"]
    assert float(terms["ds_hf_match"]) > 0
    total.backward()
    for m in (model.f_hr, model.f_lr, model.f_deg):  # z_c^h, f_Deg^-1 and f_LR^-1 make the sample
        assert _has_grad(m)
    for m in (model.content_extractor, model.f_hf):
        assert not _has_grad(m)


def test_content_hf_match_sharpens_e_against_a_fixed_hr_content():
    obj, model, _, hr, lr = _objective(_only("content_hf_match"))
    total, terms, _ = obj(hr, lr)  # stage 1 already
    expected = hf_distribution_l1(model.content(lr), model.encode_hr(hr)[0])
    # (f_HR sees the dequantised HR in the objective: equal up to that noise)
    expected = expected.detach()
    assert torch.allclose(terms["content_hf_match"], expected, rtol=1e-3) and float(expected) > 0
    total.backward()
    assert _has_grad(model.content_extractor)
    for m in (model.f_hr, model.f_lr, model.f_deg, model.f_hf):
        assert not _has_grad(m)


def test_pixel_consistency_reaches_the_samplers():
    obj, model, _, hr, lr = _objective(_only("pixel"))
    obj(hr, lr, stage2=True)[0].backward()
    for m in (model.content_extractor, model.f_hr, model.f_hf, model.f_lr, model.f_deg):
        assert _has_grad(m)


def test_perceptual_terms_with_user_vgg_weights(tmp_path):
    ref = VGG19Features(["conv1_2", "conv2_2"])
    # A torchvision-layout file: features.N.* plus classifier keys that must be ignored.
    full = {k: torch.randn_like(v) * 0.1 for k, v in ref.state_dict().items()}
    full["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(full, tmp_path / "vgg19.pth")
    vgg = VGG19Features.from_file(tmp_path / "vgg19.pth", ["conv1_2", "conv2_2"])
    assert torch.equal(vgg.features[2].weight, full["features.2.weight"])
    assert not any(p.requires_grad for p in vgg.parameters())
    obj, model, _, hr, lr = _objective(_only("perceptual", "loss.content_perceptual=1.0", "loss.content=1.0"),
                                       vgg=vgg)
    total, terms, _ = obj(hr, lr, stage2=True)
    assert {"perceptual", "content_perceptual"} <= set(terms) and math.isfinite(float(total.detach()))
    total.backward()
    assert _has_grad(model.f_hr) and not any(p.grad is not None for p in vgg.parameters())
    with pytest.raises(ValueError, match="torchvision"):
        VGG19Features(["conv2_2"]).load_features({"foo": torch.zeros(1)})


# ----- the loop ----------------------------------------------------------------------------------

def test_short_run_both_stages_and_run_dir(data, tmp_path, capsys):
    cfg = make_cfg(data, **{"train.grad_accum": 2, "checkpoint.every": 2, "checkpoint.keep": 2,
                            "log.tensorboard": "true", "log.image_every": 3, "val.every": 3,
                            "val.hr_dir": str(data / "val_hr"), "val.lr_dir": str(data / "val_lr"),
                            "disc.lr_channels": 12})
    run = tmp_path / "run"
    s = train(cfg, run)
    assert s["step"] == 6 and s["skipped"] == 0 and not s["interrupted"]
    assert {"nll_hr", "nll_lr", "content", "domain", "gan", "pixel", "content_cycle",
            "d_content", "d_hr", "d_lr"} <= set(s["last_terms"])
    assert all(math.isfinite(v) for v in s["last_terms"].values())
    # Validation ran and reports SR / DS beside their bicubic baselines.
    assert {"sr_psnr_y", "sr_ssim_y", "bicubic_up_psnr_y", "ds_psnr", "bicubic_down_psnr", "ds_noise",
            "lr_noise", "bicubic_down_noise"} <= set(s["val"])
    assert all(math.isfinite(v) for v in s["val"].values())
    # Keep-last-K, atomic writes leave no temporaries, the config is saved.
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["ckpt-00000004.pt", "ckpt-00000006.pt"]
    assert not list(run.glob(".*tmp*"))
    assert TrainConfig.load(run / "config.yaml") == cfg
    log = (run / "train.log").read_text()
    assert "perceptual loss: off" in log and "step 6/6 stage 2" in log and "validation at step 6" in log
    assert (run / "samples" / "sr-00000003.png").is_file() and (run / "samples" / "ds-00000006.png").is_file()
    # TensorBoard got every loss term, the learning rate and the skip counter.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"loss/nll_hr", "loss/gan", "loss/content_cycle", "critic/hr", "optim/lr",
            "train/skipped_steps", "val/sr_psnr_y"} <= tags
    assert ea.Tags()["images"]

    # The checkpoint is loadable without unpickling code, and by sdflow.load; so is the run dir.
    ck = torch.load(ckpt_io.latest_checkpoint(run), weights_only=True)
    assert ck["step"] == 6 and ck["model_config"] == ModelConfig.preset("tiny").to_dict()
    # disc.lr_channels widens the LR critic alone.
    assert ck["critics"]["lr"]["net.0.weight"].shape[0] == 12 and ck["critics"]["hr"]["net.0.weight"].shape[0] == 8
    for source in (run / "model.safetensors", run, ckpt_io.latest_checkpoint(run)):
        m = sdflow.load(source)
        assert all(torch.equal(m.state_dict()[k], v) for k, v in ck["model"].items())
    with torch.no_grad():
        assert torch.isfinite(m.super_resolve(torch.zeros(1, 3, 8, 8), 0.0)).all()

    # The stand-alone evaluation reads the run folder and scores several DS temperatures.
    from sdflow.train import evaluate
    assert evaluate.main(["--model", str(run), "--hr", str(data / "val_hr"), "--lr", str(data / "val_lr"),
                          "--ds-tau", "0", "0.5", "--json"]) == 0
    import json
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["images"] == 2 and {"ds_psnr@tau0", "ds_psnr@tau0.5", "sr_psnr_y"} <= set(res)
    # Validation in the loop and the stand-alone tool agree on the final model.
    assert res["sr_psnr_y"] == pytest.approx(s["val"]["sr_psnr_y"], abs=1e-9)

    # A second run into the same folder without --resume is refused.
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, run)


def test_interrupted_then_resumed_equals_uninterrupted(data, tmp_path):
    # 2 workers in the interrupted run, none in the reference: the data must not depend on it.
    cfg = make_cfg(data, **{"train.steps": 7, "train.stage1_steps": 3, "checkpoint.every": 100})
    train(cfg, tmp_path / "a")

    def interrupt(trainer):
        if trainer.step == 4:  # a real SIGINT, as Ctrl-C sends: the step finishes, a checkpoint is saved
            os.kill(os.getpid(), signal.SIGINT)

    cfg_b = cfg.with_overrides(["data.num_workers=2"])
    s = train(cfg_b, tmp_path / "b", on_step_end=interrupt)
    assert s["interrupted"] and s["step"] == 4
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "b")] == ["ckpt-00000004.pt"]
    assert "interrupted: stopped after step 4" in (tmp_path / "b" / "train.log").read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler removed again
    s = train(cfg_b, tmp_path / "b", resume=True)
    assert s["step"] == 7 and not s["interrupted"]

    a, b = all_state(tmp_path / "a"), all_state(tmp_path / "b")
    assert a.keys() == b.keys() and any(k.startswith("opt.critics") for k in a)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"


def sigterm_at_step_2(kill: str, target: str) -> str:
    """A script that runs `sdflow train` with its arguments and, once step 2 ends on the main
    rank, has another process call os.<kill>(<target>, SIGTERM), as a shell's kill or a terminal
    would: a worker killed by its own parent would exit quietly, and the defect would not show.
    `target` is a Python expression evaluated in the trainer's process (os.getpgrp(): its own
    process group; os.getppid(): torchrun)."""
    return f"""
import os, subprocess, sys
from sdflow.commands import train as cmd
from sdflow.train import loop

def send(trainer):
    if trainer.step == 2 and trainer.dist.is_main:
        subprocess.run([sys.executable, "-c", "import os, signal, sys; "
                        "os.{kill}(int(sys.argv[1]), signal.SIGTERM)", str({target})])

plain = loop.train
loop.train = lambda cfg, out, resume=False: plain(cfg, out, resume, on_step_end=send)
sys.exit(cmd.main(sys.argv[1:]))
"""


def test_sigterm_to_the_process_group_with_workers_saves_and_exits_130(data, tmp_path):
    import subprocess
    import sys

    cfg_path = tmp_path / "c.yaml"
    make_cfg(data, **{"train.steps": 5, "data.num_workers": 2}).save(cfg_path)
    run = tmp_path / "run"
    # A session of its own: the signal goes to the trainer and its workers, not to pytest.
    p = subprocess.Popen([sys.executable, "-c", sigterm_at_step_2("killpg", "os.getpgrp()"), "--config", str(cfg_path),
                          "--out", str(run)], start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 130, out
    # The handler may run only once the next step is under way; that one is finished too.
    saved = ckpt_io.list_checkpoints(run)
    assert len(saved) == 1 and 2 <= ckpt_io.load_checkpoint(saved[0])["step"] < 5, out
    with pytest.raises(ProcessLookupError):  # the workers have gone with their parent
        os.killpg(p.pid, 0)
    from sdflow.commands import train as cmd
    assert cmd.main(["--out", str(run), "--resume"]) == 0
    assert f"resumed from {saved[0].name}" in (run / "train.log").read_text()
    assert ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(run))["step"] == 5


@pytest.mark.parametrize("off", ["nll_hr", "nll_lr"])
def test_actnorm_is_initialised_with_a_likelihood_term_off(data, tmp_path, off):
    cfg = make_cfg(data, **{f"loss.{off}": 0, "train.steps": 1, "train.stage1_steps": 1})
    assert train(cfg, tmp_path / "run")["step"] == 1
    ck = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "run"))
    flags = {k: float(v) for k, v in ck["model"].items() if k.endswith(".initialized")}
    # The switched-off term's flows too: f_HF for nll_hr, f_Deg for nll_lr.
    assert any(k.startswith("f_hf.") for k in flags) and any(k.startswith("f_deg.") for k in flags)
    assert set(flags.values()) == {1.0}


def test_run_extended_past_stage_1_starts_its_image_critics_fresh(data, tmp_path):
    # A constant learning rate: the milestones would otherwise move with train.steps.
    over = {"train.stage1_steps": 4, "optim.lr_milestones": "[]"}
    train(make_cfg(data, **over, **{"train.steps": 6}), tmp_path / "whole")
    short = make_cfg(data, **over, **{"train.steps": 3})
    train(short, tmp_path / "ext")
    assert set(ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "ext"))["critics"]) == {"content"}
    s = train(short.with_overrides(["train.steps=6"]), tmp_path / "ext", resume=True)
    assert s["step"] == 6 and {"d_hr", "d_lr"} <= set(s["last_terms"])
    assert "start fresh" in (tmp_path / "ext" / "train.log").read_text()
    # Fresh critics are those an uninterrupted run has at its stage 1's end: the same run.
    a, b = all_state(tmp_path / "whole"), all_state(tmp_path / "ext")
    assert a.keys() == b.keys() and any(k.startswith("critic.hr") for k in a)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"extended run differs in {diff[:5]}"


def test_checkpoint_past_stage_1_without_image_critics_is_refused(data, tmp_path):
    cfg = make_cfg(data, **{"loss.gan": 0, "train.steps": 4, "train.stage1_steps": 2})
    train(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match=r"no weights for discriminator\(s\) \['hr', 'lr'\]"):
        train(cfg.with_overrides(["loss.gan=0.1", "train.steps=5"]), tmp_path / "run", resume=True)


def test_resume_keeps_the_checkpoint_steps_tensorboard_events(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Crash(Exception):
        pass

    def crash_after_3(trainer):
        if trainer.step == 3:  # logged step 3, but its checkpoint is step 2's
            raise Crash

    cfg = make_cfg(data, **{"train.steps": 4, "train.stage1_steps": 10, "log.every": 1,
                            "log.tensorboard": "true", "checkpoint.every": 2})
    with pytest.raises(Crash):
        train(cfg, tmp_path / "run", on_step_end=crash_after_3)
    assert ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "run"))["step"] == 2
    train(cfg, tmp_path / "run", resume=True)
    ea = EventAccumulator(str(tmp_path / "run" / "tb"))
    ea.Reload()
    # Step 3 once (the resumed run's), step 2 kept: nothing lost, nothing doubled.
    assert [e.step for e in ea.Scalars("loss/total")] == [1, 2, 3, 4]


def test_non_finite_step_is_skipped_never_applied(data, tmp_path):
    cfg = make_cfg(data, **{"debug.inject_nan_steps": "[1]", "train.steps": 3, "train.stage1_steps": 10})
    snaps = {}

    def snap(trainer):
        snaps[trainer.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    s = train(cfg, tmp_path / "run", on_step_end=snap)
    assert s["skipped"] == 1 and s["step"] == 3
    # Step index 1 (the second) was skipped: weights after it equal those before it...
    assert all(torch.equal(snaps[1][k], snaps[2][k]) for k in snaps[1])
    # ...while the steps around it did move them.
    assert not all(torch.equal(snaps[2][k], snaps[3][k]) for k in snaps[2])
    log = (tmp_path / "run" / "train.log").read_text()
    # Numbered as the log's "step N/total" lines: the second step is step 2.
    assert "step 2: skipped (injected NaN" in log and "skipped 1" in log
    ck = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "run"))
    assert ck["counters"]["skipped"] == 1
    # Adam took two steps, not three.
    assert all(int(st["step"]) == 2 for st in ck["optimizers"]["generator"]["state"].values())


def test_consecutive_non_finite_steps_stop_the_run(data, tmp_path):
    cfg = make_cfg(data, **{"debug.inject_nan_steps": "[1, 2, 3]", "train.max_consecutive_skips": 3,
                            "checkpoint.every": 1, "checkpoint.keep": 1})
    snaps = {}

    def snap(trainer):
        snaps[trainer.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps.*ckpt-00000004\.pt holds the weights "
                                               r"of the last good step \(1\)"):
        train(cfg, run, on_step_end=snap)
    assert "consecutive steps had a non-finite" in (run / "train.log").read_text()
    # Saved without pruning (checkpoint.keep=1): the one before stays for a resume from it.
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    ck = ckpt_io.load_checkpoint(run / "ckpt-00000004.pt")
    assert ck["step"] == 4 and ck["counters"]["skipped"] == 3
    assert all(torch.equal(ck["model"][k], snaps[1][k]) for k in snaps[1])
    # It resumes: the injected steps are behind it.
    s = train(cfg, run, resume=True)
    assert s["step"] == 6 and s["skipped"] == 3


def test_cli_builds_config_and_reports_errors(data, tmp_path, capsys):
    from sdflow.commands import train as cmd

    cfg_path = tmp_path / "c.yaml"
    make_cfg(data, **{"train.steps": 2, "train.stage1_steps": 1}).save(cfg_path)
    run = tmp_path / "run"
    argv = ["--config", str(cfg_path), "--hr", str(data / "hr"), "--lr", str(data / "lr"), "--out", str(run),
            "--steps", "2", "--set", "optim.lr=3e-4", "--set", "loss.gan=0"]
    assert cmd.main(argv) == 0
    saved = TrainConfig.load(run / "config.yaml")
    assert saved.optim.lr == 3e-4 and saved.loss.gan == 0 and saved.train.steps == 2
    assert Path(saved.data.hr_dir) == (data / "hr").resolve()
    # Same folder again without --resume: refused with a message, not a traceback.
    assert cmd.main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume alone finds config and data paths in the run folder.
    assert cmd.main(["--out", str(run), "--resume", "--steps", "3"]) == 0
    assert ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(run))["step"] == 3
    assert cmd.main(["--out", str(tmp_path / "nothing")]) == 2
    assert cmd.main(["--config", str(cfg_path), "--out", str(tmp_path / "x"), "--set", "optim.nope=1"]) == 2
    assert "optim.nope" in capsys.readouterr().err


def test_refused_resume_leaves_the_runs_config_alone(data, tmp_path, capsys):
    from sdflow.commands import train as cmd

    cfg_path = tmp_path / "c.yaml"
    make_cfg(data, **{"train.steps": 1}).save(cfg_path)
    run = tmp_path / "run"
    assert cmd.main(["--config", str(cfg_path), "--out", str(run)]) == 0
    before = (run / "config.yaml").read_text()
    # Another model size: the checkpoint does not fit and the resume is refused.
    assert cmd.main(["--config", str(cfg_path), "--out", str(run), "--resume", "--steps", "2",
                     "--set", "model.coupling_hidden=8"]) == 2
    assert "differs from the config" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before
    assert cmd.main(["--out", str(run), "--resume", "--steps", "2"]) == 0
    # Fewer steps than the checkpoint has had: refused, and the config still says 2.
    after = (run / "config.yaml").read_text()
    assert cmd.main(["--out", str(run), "--resume", "--steps", "1"]) == 2
    assert "is at step 2, past train.steps=1" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == after


def test_missing_tensorboard_is_a_warning_not_an_error(tmp_path, monkeypatch):
    import sys

    from sdflow.train.logging import RunLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    log = RunLogger(tmp_path)
    log.start(0, 10, tensorboard=True, progress=False)
    log.scalars(1, {"loss/x": 1.0})  # a no-op, not a crash
    log.info("still logging")
    log.close()
    text = (tmp_path / "train.log").read_text()
    assert "TensorBoard logging is off" in text and "still logging" in text
    assert not (tmp_path / "tb").exists()


# ----- the unpaired objective's switches for photos of different scenes ------------------------------

def test_colour_term_matches_image_means():
    obj, model, _, hr, lr = _objective(_only("content", "loss.colour=1.0"))
    assert "colour" not in _objective(_only("content"))[0](hr, lr)[1]  # off by default
    obj.dequantize_inputs = False
    _, terms, _ = obj(hr, lr)
    from sdflow.resize import downscale
    with torch.no_grad():
        pic_h = model.f_lr.inverse(model.encode_hr(hr)[0])[0]
        pic_c = model.f_lr.inverse(model.content(lr))[0]
        m = lambda a: a.mean(dim=(2, 3))  # noqa: E731
        expect = (m(pic_h) - m(downscale(hr, 4))).abs().mean() + (m(pic_c) - m(lr)).abs().mean()
    assert float(terms["colour"]) == pytest.approx(float(expect), rel=1e-4)
    s2 = obj(hr, lr, stage2=True)[1]
    assert float(s2["colour"]) > float(terms["colour"])  # stage 2 adds the SR and DS samples' means


def test_critic_highpass_hides_the_low_band_from_the_critics():
    obj, model, crit, hr, lr = _objective(_only("gan", "loss.domain=1.0", "loss.critic_highpass=1.0"))
    _, _, inputs = obj(hr, lr, stage2=True)
    shift = torch.full_like(hr, 0.3)
    _, _, shifted = obj(hr + shift, lr, stage2=True)
    # A uniform colour change of the HR batch is invisible to the HR critic's real input.
    assert torch.allclose(inputs["hr"][0], shifted["hr"][0], atol=1e-5)
    smooth = torch.linspace(-0.8, 0.8, 64).expand(1, 3, 64, 64)
    assert obj.critic_view("hr", smooth)[..., 16:-16, 16:-16].abs().max() < 0.01  # the low band is gone
    assert obj.critic_view("lr", lr).abs().mean() > 0.3 * lr.abs().mean()       # the high band stays
    obj0, *_ = _objective(_only("gan", "loss.domain=1.0"))
    assert torch.equal(obj0(hr, lr, stage2=True)[2]["hr"][0], hr)  # off by default: the images as they are


def test_cycle_space_picture_is_scale_free_and_trains_e_only():
    obj, model, _, hr, lr = _objective(_only("content_cycle", "loss.cycle_space=picture"))
    z = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        d_same = obj.content_distance(z, z)
        d_pic = obj.content_distance(z, z + 0.1)
        expect = (model.f_lr.inverse(z)[0] - model.f_lr.inverse(z + 0.1)[0]).abs().mean()
    assert float(d_same) == 0 and float(d_pic) == pytest.approx(float(expect), rel=1e-5)
    obj(hr, lr, stage2=True)[0].backward()
    assert _has_grad(model.content_extractor) and not _has_grad(model.f_lr)


def test_sr_cycle_nll_trains_f_hf_on_the_ds_samples_content():
    obj, model, _, hr, lr = _objective(_only("sr_cycle_nll"))
    total, terms, _ = obj(hr, lr, stage2=True)
    assert math.isfinite(float(terms["sr_cycle_nll"]))
    total.backward()
    assert _has_grad(model.f_hf)
    for m in (model.content_extractor, model.f_hr, model.f_lr, model.f_deg):
        assert not _has_grad(m)


def test_cycle_tau_draws_the_cycles_own_samples(monkeypatch):
    import sdflow.train.objective as O
    taus = []
    orig = O.ds_from_content
    monkeypatch.setattr(O, "ds_from_content", lambda m, z, tau, s: taus.append(tau) or orig(m, z, tau, s))
    obj, *_, hr, lr = _objective(_only("sr_cycle", "loss.cycle_tau=1.0", "loss.stage2_tau=0.5"))
    obj(hr, lr, stage2=True)
    assert taus == [0.5, 1.0]
    taus.clear()
    obj, *_, hr, lr = _objective(_only("sr_cycle", "loss.stage2_tau=0.5"))
    obj(hr, lr, stage2=True)
    assert taus == [0.5]


def test_sr_content_target_trains_the_sr_side_on_the_target_pictures_content():
    """sr_content=target: hr_mode decodes, f_HF's likelihood is conditioned on, and the content cycle
    aims at f_LR(blurred bicubic image), not z_c^h; f_LR is not moved by them."""
    from sdflow.model import HF_CHANNELS
    from sdflow.resize import downscale
    from sdflow.train.objective import sr_from_content
    over = ["loss.content_target_sigma=0.7", "loss.cycle_space=picture"]
    obj, model, _, hr, lr = _objective(_only("hr_mode", "loss.sr_content=target", *over))
    obj.dequantize_inputs = False  # z_c^h of the patch itself, for exact comparisons
    with torch.no_grad():
        z_t = model.f_lr(gaussian_blur(downscale(hr, 4), 0.7))[0]
        z_c_h = model.encode_hr(hr)[0]
        expect_t = (sr_from_content(model, z_t, 0.0) - hr).abs().mean()
        expect_h = (sr_from_content(model, z_c_h, 0.0) - hr).abs().mean()
    total, terms, _ = obj(hr, lr)
    assert float(terms["hr_mode"]) == pytest.approx(float(expect_t), rel=1e-5)
    assert abs(float(expect_t) - float(expect_h)) > 1e-4  # the two contents decode differently
    total.backward()
    assert _has_grad(model.f_hr) and _has_grad(model.f_hf) and not _has_grad(model.f_lr)
    latent = _objective(_only("hr_mode", *over))[0]
    latent.dequantize_inputs = False
    assert float(latent(hr, lr)[1]["hr_mode"]) == pytest.approx(float(expect_h), rel=1e-5)

    obj, model, _, hr, lr = _objective(_only("nll_hr", "loss.sr_content=target", *over))
    obj.dequantize_inputs = False
    with torch.no_grad():
        z_t = model.f_lr(gaussian_blur(downscale(hr, 4), 0.7))[0]
        _, z_h, logdet = model.encode_hr(hr)
        expect = bits_per_dim_nll(logdet + model.f_hf(z_h, z_t)[1], hr).mean()
    assert float(obj(hr, lr)[1]["nll_hr"]) == pytest.approx(float(expect), rel=1e-5, abs=1e-6)

    obj, model, _, hr, lr = _objective(_only("content_cycle", "loss.sr_content=target", *over))
    seen = []
    orig = obj.content_distance
    obj.content_distance = lambda c, target: seen.append(target) or orig(c, target)
    obj(hr, lr, stage2=True)
    with torch.no_grad():
        z_t = model.f_lr(gaussian_blur(downscale(hr, 4), 0.7))[0]
    assert len(seen) == 1 and torch.allclose(seen[0], z_t, atol=1e-6)
    assert HF_CHANNELS + 3 == 48  # the split the decode above relies on


def test_ds_content_picture_trains_ds_from_the_target_pictures_content(monkeypatch):
    """With the model's ds_content=picture the DS samples of stage 2 (critics' and cycles') and the
    paired DS term start from f_LR(blurred bicubic image), blurred as the model says whatever the
    content targets' blur."""
    from dataclasses import replace
    import sdflow.train.objective as O
    from sdflow.resize import downscale
    cfg = TrainConfig.from_dict(apply_overrides({}, ["loss.content_target_sigma=0.7", "loss.cycle_tau=1.0",
                                                     "loss.sr_cycle=1.0"])).loss
    torch.manual_seed(0)
    base = SDFlow(ModelConfig.preset("tiny")).train()
    model = SDFlow(replace(base.config, ds_content="picture", ds_content_sigma=0.7)).train()
    hr, lr = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    seen = []
    orig = O.ds_from_content
    monkeypatch.setattr(O, "ds_from_content", lambda m, z, tau, s: seen.append(z) or orig(m, z, tau, s))
    for paired in (False, True):
        obj = GeneratorObjective(model, cfg, paired=paired)
        with torch.no_grad():
            obj(hr, lr)  # ActNorm initialisation
        seen.clear()
        obj(hr, lr, stage2=True)
        with torch.no_grad():
            z_t = model.f_lr(gaussian_blur(downscale(hr, 4), 0.7))[0]
        assert len(seen) >= 2 and all(torch.allclose(z, z_t, atol=1e-6) for z in seen)
    seen.clear()
    obj = GeneratorObjective(base, cfg)
    with torch.no_grad():
        obj(hr, lr)
    obj(hr, lr, stage2=True)
    assert seen and not torch.allclose(seen[0], base.f_lr(gaussian_blur(downscale(hr, 4), 0.7))[0], atol=1e-3)
    # The content targets may be blurred otherwise: DS still starts from the model's own picture.
    sharp = TrainConfig.from_dict(apply_overrides({}, ["loss.content_target_sigma=0", "loss.cycle_tau=1.0",
                                                       "loss.sr_cycle=1.0"])).loss
    obj = GeneratorObjective(model, sharp)
    seen.clear()
    obj(hr, lr, stage2=True)
    with torch.no_grad():
        z_t = model.f_lr(gaussian_blur(downscale(hr, 4), 0.7))[0]
    assert len(seen) >= 2 and all(torch.allclose(z, z_t, atol=1e-6) for z in seen)


def test_content_prior_scores_z_c_under_a_gaussian_at_the_target_content():
    """content_prior_sigma=s adds log N(f_LR^-1(z_c^h); target picture, s^2) + log|det df_LR^-1| to
    NLL_HR's density: it reaches f_HR (through z_c^h) but not f_LR (held fixed there)."""
    import math as _m
    from sdflow.resize import downscale
    over = ["loss.content_target_sigma=0.7"]
    obj, model, _, hr, lr = _objective(_only("nll_hr", *over))
    obj.dequantize_inputs = False
    base = float(obj(hr, lr)[1]["nll_hr"])
    obj, model, _, hr, lr = _objective(_only("nll_hr", "loss.content_prior_sigma=0.05", *over))
    obj.dequantize_inputs = False
    with torch.no_grad():
        pic, logdet = model.f_lr.inverse(model.encode_hr(hr)[0])
        e = pic - gaussian_blur(downscale(hr, 4), 0.7)
        log_n = (-0.5 * (e / 0.05) ** 2 - _m.log(0.05) - 0.5 * _m.log(2 * _m.pi)).flatten(1).sum(1) + logdet
        dims = hr[0].numel()
        expect = base - float(log_n.mean()) / (dims * _m.log(2.0))
    total, terms, _ = obj(hr, lr)
    assert float(terms["nll_hr"]) == pytest.approx(expect, rel=1e-5)
    assert abs(float(terms["nll_hr"]) - base) > 1e-2
    total.backward()
    assert _has_grad(model.f_hr) and not _has_grad(model.f_lr)
    with pytest.raises(ValueError, match="content_prior_sigma"):
        TrainConfig.from_dict(apply_overrides({}, ["loss.content_prior_sigma=-1"])).validate()


def test_domain_detach_hr_moves_only_e():
    obj, model, _, hr, lr = _objective(_only("domain"))
    obj(hr, lr)[0].backward()
    assert _has_grad(model.content_extractor) and _has_grad(model.f_hr)  # both sides pushed by default
    obj, model, _, hr, lr = _objective(_only("domain", "loss.domain_detach_hr=true"))
    obj(hr, lr)[0].backward()
    assert _has_grad(model.content_extractor) and not _has_grad(model.f_hr)


def test_deg_content_picture_gives_f_deg_the_blurred_picture_of_es_content(monkeypatch):
    """loss.deg_content=picture: NLL_LR and lr_mode condition f_Deg on f_LR(blur(f_LR^-1(E(x)))),
    blurred by the model's ds_content_sigma, instead of E(x); the config refuses it without
    model.ds_content=picture."""
    from dataclasses import replace
    torch.manual_seed(0)
    model = SDFlow(replace(ModelConfig.preset("tiny"), ds_content="picture", ds_content_sigma=0.7,
                           extractor="residual")).train()
    hr, lr = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    conds = {}
    for setting in ("extractor", "picture"):
        cfg = TrainConfig.from_dict(apply_overrides({}, _only("nll_lr", "loss.lr_mode=1.0",
                                                              f"loss.deg_content={setting}",
                                                              "model.ds_content=picture"))).loss
        obj = GeneratorObjective(model, cfg)
        with torch.no_grad():
            obj(hr, lr)   # ActNorm initialisation
        seen = []
        orig = model.f_deg.forward
        monkeypatch.setattr(model.f_deg, "forward", lambda z, cond: seen.append(cond) or orig(z, cond))
        orig_inv = model.f_deg.inverse
        monkeypatch.setattr(model.f_deg, "inverse", lambda z, cond, **k: seen.append(cond) or orig_inv(z, cond, **k))
        terms = obj(hr, lr)[1]
        monkeypatch.undo()
        assert torch.isfinite(terms["nll_lr"]) and torch.isfinite(terms["lr_mode"])
        assert len(seen) == 2 and torch.equal(seen[0], seen[1])
        conds[setting] = seen[0]
    with torch.no_grad():
        c = model.content(lr)
        expect = model.f_lr(gaussian_blur(model.f_lr.inverse(c)[0], 0.7))[0]
    assert torch.allclose(conds["extractor"], c, atol=1e-6)
    assert torch.allclose(conds["picture"], expect, atol=1e-5)
    assert (conds["picture"] - c).abs().max() > 1e-2
    with pytest.raises(ValueError, match="deg_content"):
        TrainConfig.from_dict(apply_overrides({}, ["model.preset=tiny", "loss.deg_content=picture"])).validate()


def test_init_starts_a_run_from_a_models_weights(data, tmp_path, capsys):
    """train.init / --init: a new run starts from the model's weights (ActNorm statistics too: with
    a learning rate of 0 they come out unchanged); a resumed run keeps its checkpoint; a model of
    another architecture is refused by field."""
    from sdflow.checkpoints import read_model_state

    first = train(make_cfg(data, **{"train.steps": 2, "train.stage1_steps": 2}), tmp_path / "a")
    assert first["step"] == 2
    _, weights = read_model_state(tmp_path / "a" / "model.safetensors")
    cfg = make_cfg(data, **{"train.steps": 2, "train.stage1_steps": 1, "optim.lr": 0,
                            "train.init": str(tmp_path / "a")})
    assert train(cfg, tmp_path / "b")["step"] == 2
    _, after = read_model_state(tmp_path / "b" / "model.safetensors")
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
    log = (tmp_path / "b" / "train.log").read_text()
    assert "train.init" in log and "ActNorm layers initialised" not in log
    fresh = train(make_cfg(data, **{"train.steps": 1, "train.stage1_steps": 1, "optim.lr": 0}), tmp_path / "c")
    assert fresh["step"] == 1
    _, other = read_model_state(tmp_path / "c" / "model.safetensors")
    assert not all(torch.equal(other[k], weights[k]) for k in weights)  # without init: not a's weights
    # Resumed with more steps and a learning rate: trains on from its checkpoint, no reload.
    cfg = make_cfg(data, **{"train.steps": 3, "train.stage1_steps": 1, "train.init": str(tmp_path / "c")})
    assert train(cfg, tmp_path / "b", resume=True)["step"] == 3
    assert "resumed from" in (tmp_path / "b" / "train.log").read_text()
    wide = make_cfg(data, **{"model.coupling_hidden": 8, "train.init": str(tmp_path / "a")})
    with pytest.raises(ValueError, match=r"coupling_hidden \(init 16, config 8\)"):
        train(wide, tmp_path / "d")
    # From the command line.
    from sdflow.commands.train import build_config
    from sdflow.cli import build_parser
    args = build_parser("train").parse_args(["train", "--config", str(REPO / "configs" / "tiny.yaml"),
                                             "--out", str(tmp_path / "e"), "--init", "default"])
    assert build_config(args).train.init == "default"


LEARNT_BLUR = {"ds_content": "picture", "ds_content_sigma": 0.7, "hr_squeeze": "lifting", "ds_blur": "learnt"}


def test_a_learnt_ds_blur_moves_with_the_ds_statistics_and_critics_only():
    """The blur is DS's: stage 2's critics and DS statistics move it, with f_LR's parameters
    untouched by that path; stage 1 and the cycles (pseudo-pairs, not the degradation's judges) do
    not move it, and the pixel term measures DS against its own content picture."""
    import sdflow.train.objective as O
    raw = lambda m: m.ds_blur.raw.grad  # noqa: E731
    obj, model, _, hr, lr = _objective(**LEARNT_BLUR)
    total, terms, _ = obj(hr, lr)
    total.backward()
    assert raw(model) is None and "ds_blur_sigma" not in terms  # constant until stage 2
    for term in ("gan", "ds_hf_match"):
        obj, model, _, hr, lr = _objective(_only(term), **LEARNT_BLUR)
        obj(hr, lr, stage2=True)[0].backward()
        assert raw(model) is not None and float(raw(model).abs()) > 0, term
    for term in ("content_cycle", "sr_cycle", "sr_cycle_nll", "lr_mode", "nll_lr"):
        obj, model, _, hr, lr = _objective(_only(term), **LEARNT_BLUR)
        obj(hr, lr, stage2=True)[0].backward()
        assert raw(model) is None or float(raw(model).abs()) == 0, term
    # The pixel term's DS half: against the blurred content picture, not the unblurred bicubic one.
    obj, model, _, hr, lr = _objective(_only("pixel"), **LEARNT_BLUR)
    seen = []
    orig = O.low_pass_l1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(O, "low_pass_l1", lambda a, b, s: seen.append(b) or orig(a, b, s))
        obj(hr, lr, stage2=True)
    with torch.no_grad():
        assert torch.allclose(seen[-1], model.content_picture(hr), atol=1e-6)
        assert not torch.allclose(seen[-1], downscale(hr, 4), atol=1e-3)


def test_a_short_run_learns_the_ds_blur_and_resumes_it(data, tmp_path):
    over = {f"model.{k}": v for k, v in LEARNT_BLUR.items()}
    cfg = make_cfg(data, **over, **{"train.steps": 5, "train.stage1_steps": 2, "checkpoint.every": 3})
    run = tmp_path / "run"
    s = train(cfg, run)
    # Logged before each step's update: it has moved by the last step (the first of stage 2 moves it).
    assert s["last_terms"]["ds_blur_sigma"] != pytest.approx(0.7, abs=1e-6)
    sigma = lambda path: float(sdflow.load(path).ds_blur.sigma.detach())  # noqa: E731
    assert sigma(run / "model.safetensors") != pytest.approx(s["last_terms"]["ds_blur_sigma"], abs=1e-7)
    # Resumed from step 3, it ends where the uninterrupted run did.
    again = tmp_path / "again"
    train(make_cfg(data, **over, **{"train.steps": 3, "train.stage1_steps": 2, "checkpoint.every": 3}), again)
    train(cfg, again, resume=True)
    assert sigma(again / "model.safetensors") == sigma(run / "model.safetensors")
    with pytest.raises(ValueError, match="ds_blur exists only"):
        make_cfg(data, **{"optim.freeze": "[ds_blur]"})


TOLD_E = {"ds_content": "picture", "ds_content_sigma": 0.7, "hr_squeeze": "lifting", "extractor": "residual",
          "extractor_blur": "learnt"}


def _tell(model):
    """A told E whose output depends on the width (both start at zero)."""
    e = model.content_extractor
    with torch.no_grad():
        e.blur_embed.weight.normal_(0, 0.1)
        e.tail[-1].weight.normal_(0, 0.05)


def test_a_told_extractor_learns_its_width_from_real_lr_terms_and_is_told_the_cycles_widths(monkeypatch):
    """model.extractor_blur=learnt: the cycles tell E each pseudo-pair's drawn width; without pairs
    the width E assumes for real LR is held in stage 1 and moved in stage 2 by the terms on SR of
    the real LR (the HR critic, the pixel term), never by E's content terms or the cycles; with
    pairs, the pairs move it."""
    from sdflow.nets.content import ContentExtractor
    raw = lambda m: m.content_extractor.blur.raw.grad  # noqa: E731
    blur = ["loss.cycle_blur=[0.3,1.1]", "loss.cycle_tau=2.0", "model.ds_content=picture"]
    obj, model, _, hr, lr = _objective(blur, **TOLD_E)
    total, terms, _ = obj(hr, lr)
    total.backward()
    assert raw(model) is None or float(raw(model).abs()) == 0  # held in stage 1
    assert float(terms["sr_blur_sigma"]) == pytest.approx(0.7)
    for term in ("gan", "pixel"):
        obj, model, _, hr, lr = _objective(_only(term, *blur), **TOLD_E)
        _tell(model)
        obj(hr, lr, stage2=True)[0].backward()
        assert raw(model) is not None and float(raw(model).abs()) > 0, term
    for term in ("content", "domain", "content_cycle", "sr_cycle", "sr_cycle_nll", "nll_lr", "lr_mode"):
        obj, model, _, hr, lr = _objective(_only(term, *blur), **TOLD_E)
        _tell(model)
        total, terms, _ = obj(hr, lr, stage2=True)
        total.backward()
        assert terms["total"] > 0 and (raw(model) is None or float(raw(model).abs()) == 0), term
    obj, model, _, hr, lr = _objective(["loss.paired_content=1.0"], **TOLD_E)
    obj.paired = True
    _tell(model)
    obj(hr, lr)[0].backward()
    assert raw(model) is not None and float(raw(model).abs()) > 0
    # What E is told: on the real LR its own width, held for the content terms and live for SR;
    # in the cycles the drawn widths.
    told = []
    orig = ContentExtractor.forward
    monkeypatch.setattr(ContentExtractor, "forward", lambda self, x, sigma=None: told.append(sigma) or orig(self, x, sigma))
    drawn, draw = [], GeneratorObjective.blur_range
    monkeypatch.setattr(GeneratorObjective, "blur_range", staticmethod(lambda p, w: drawn.append(draw(p, w)) or drawn[-1]))
    obj, model, _, hr, lr = _objective(_only("content_cycle", *blur), **TOLD_E)
    told.clear()
    obj(hr, lr, stage2=True)
    widths = drawn[-1][1]
    assert float(told[0]) == pytest.approx(0.7) and not told[0].requires_grad and told[1] is None
    assert torch.equal(told[-1], widths) and ((widths >= 0.3) & (widths <= 1.1)).all()
    # Without a range every pseudo-pair is blurred by DS's own width, and E is told that.
    obj, model, _, hr, lr = _objective(_only("content_cycle", "loss.cycle_tau=2.0", "model.ds_content=picture"), **TOLD_E)
    told.clear()
    obj(hr, lr, stage2=True)
    assert float(told[-1]) == pytest.approx(0.7)
    # cycle_blur_spread: the widths drawn around the width E now assumes, and told.
    spread = ["loss.cycle_tau=2.0", "loss.cycle_blur_spread=1.25", "model.ds_content=picture",
              "model.extractor_blur=learnt"]
    obj, model, _, hr, lr = _objective(_only("content_cycle", *spread), **TOLD_E)
    model.content_extractor.blur.set_(1.0)
    told.clear()
    obj(hr, lr, stage2=True)
    widths = drawn[-1][1]
    assert torch.equal(told[-1], widths) and ((widths >= 0.8 - 1e-6) & (widths <= 1.25 + 1e-6)).all()
    for bad in (["loss.cycle_blur_spread=0.9"], ["loss.cycle_blur_spread=1.25", "loss.cycle_blur=[0.3,1.1]"]):
        with pytest.raises(ValueError, match="cycle_blur_spread must be > 1"):
            TrainConfig.from_dict(apply_overrides({"model": TOLD_E}, bad))
    with pytest.raises(ValueError, match="cycle_blur_spread must be > 1"):
        TrainConfig.from_dict(apply_overrides({"model": {**TOLD_E, "extractor_blur": "none"}}, ["loss.cycle_blur_spread=1.25"]))
    TrainConfig.from_dict(apply_overrides({"model": TOLD_E}, ["loss.cycle_blur_spread=1.25"]))
    with pytest.raises(ValueError, match="extractor_blur=learnt needs loss.cycle_blur"):
        TrainConfig.from_dict(apply_overrides({"model": TOLD_E}, []))
    TrainConfig.from_dict(apply_overrides({"model": TOLD_E}, blur))
    TrainConfig.from_dict(apply_overrides({"model": TOLD_E, "data": {"paired": True}}, []))


def test_a_short_run_learns_the_told_width_and_resumes_it(data, tmp_path):
    over = {f"model.{k}": v for k, v in TOLD_E.items()}
    over.update({"loss.cycle_blur": "[0.3,1.1]", "loss.content_cycle": 1.0, "loss.sr_cycle": 1.0})
    cfg = make_cfg(data, **over, **{"train.steps": 5, "train.stage1_steps": 2, "checkpoint.every": 3})
    run = tmp_path / "run"
    s = train(cfg, run)
    width = lambda path: float(sdflow.load(path).content_extractor.blur.sigma.detach())  # noqa: E731
    # Held through stage 1, moved in stage 2.
    assert s["last_terms"]["sr_blur_sigma"] != pytest.approx(0.7, abs=1e-6)
    assert width(run / "model.safetensors") != pytest.approx(0.7, abs=1e-6)
    again = tmp_path / "again"
    train(make_cfg(data, **over, **{"train.steps": 3, "train.stage1_steps": 2, "checkpoint.every": 3}), again)
    train(cfg, again, resume=True)
    assert width(again / "model.safetensors") == width(run / "model.safetensors")


def test_cycle_blur_draws_each_pseudo_pairs_blur_from_the_range(monkeypatch):
    """loss.cycle_blur: the cycles' DS samples start from f_LR of content pictures blurred by a
    width per image drawn from the range, while the critics' samples keep the model's one blur."""
    import sdflow.train.objective as O
    model_over = {"ds_content": "picture", "ds_content_sigma": 0.7, "hr_squeeze": "lifting"}
    over = ["loss.cycle_tau=2.0", "loss.sr_cycle=1.0", "loss.content_cycle=1.0", "model.ds_content=picture"]
    seen = []
    orig = O.ds_from_content
    monkeypatch.setattr(O, "ds_from_content", lambda m, z, tau, s: seen.append((z, tau)) or orig(m, z, tau, s))
    for lo, hi in ((1.2, 1.2), (0.4, 0.4)):
        obj, model, _, hr, lr = _objective(over + [f"loss.cycle_blur=[{lo},{hi}]"], **model_over)
        seen.clear()
        obj(hr, lr, stage2=True)
        (z_ds, tau_ds), (z_cyc, tau_cyc) = seen[0], seen[-1]
        assert (tau_ds, tau_cyc) == (0.8, 2.0)
        with torch.no_grad():
            pictures = downscale(hr, 4)
            assert torch.allclose(z_ds, model.f_lr(gaussian_blur(pictures, 0.7))[0], atol=1e-5)
            expect = model.f_lr(gaussian_blur(pictures, lo))[0]
        assert torch.allclose(z_cyc, expect, atol=1e-5)
    # The draws: one width per image, uniform in the range, from training's RNG (resumes exactly).
    pictures = torch.rand(4, 3, 12, 12) * 2 - 1
    torch.manual_seed(3)
    out, drawn = GeneratorObjective.blur_range(pictures, (0.3, 1.1))
    torch.manual_seed(3)
    widths = 0.3 + 0.8 * torch.rand(4)
    assert len(set(widths.tolist())) == 4 and torch.equal(drawn, widths)
    for p, w, o in zip(pictures, widths, out):
        assert torch.equal(o[None], gaussian_blur(p[None], float(w)))
    for bad in ("[1.0]", "[1.0,0.5]", "[-0.1,0.5]"):
        with pytest.raises(ValueError, match="cycle_blur"):
            TrainConfig.from_dict(apply_overrides({"model": model_over}, [f"loss.cycle_blur={bad}"]))
    with pytest.raises(ValueError, match="cycle_blur needs"):
        TrainConfig.from_dict(apply_overrides({}, ["loss.cycle_blur=[0.3,1.1]"]))
