"""Paired training (`sdflow train --paired`, data.paired): aligned crops of corresponding files,
the paired terms and their gradient rules, partners that are missing or do not fit, resume."""
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdflow.commands import train as train_cmd
from sdflow.data.datasets import PairedPatches, augment_pair, match_pairs
from sdflow.train.loop import train
from test_train import _has_grad, _objective, _smooth_image, all_state, make_cfg


def _box_down(a: np.ndarray, s: int = 4) -> np.ndarray:
    h, w = a.shape[0] // s, a.shape[1] // s
    return a[:h * s, :w * s].reshape(h, s, w, s, -1).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """HR / LR folders that correspond (LR = 4x4 box average of the HR), plus one HR without a
    partner, one LR without a partner, one pair whose sizes do not fit and one too small."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(3)
    (root / "HR" / "sub").mkdir(parents=True)
    (root / "LR" / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(48, 56), (64, 40), (44, 52)]):  # the last: LR = ceil(HR/4)
        hr = _smooth_image(rng, h, w, 20)
        lr = np.clip(np.rint(_box_down(hr)), 0, 255).astype(np.uint8)
        if h % 4:
            lr = np.concatenate([lr, lr[-1:]], 0)
        sub = "sub/" if i == 1 else ""
        Image.fromarray(hr).save(root / "HR" / f"{sub}p{i}.png")
        Image.fromarray(lr).save(root / "LR" / f"{sub}p{i}.png")
    Image.fromarray(_smooth_image(rng, 48, 48, 2)).save(root / "HR" / "lonely_hr.png")
    Image.fromarray(_smooth_image(rng, 12, 12, 2)).save(root / "LR" / "lonely_lr.png")
    Image.fromarray(_smooth_image(rng, 48, 48, 2)).save(root / "HR" / "misfit.png")
    Image.fromarray(_smooth_image(rng, 20, 12, 2)).save(root / "LR" / "misfit.png")
    Image.fromarray(_smooth_image(rng, 24, 24, 2)).save(root / "HR" / "small.png")
    Image.fromarray(_smooth_image(rng, 6, 6, 2)).save(root / "LR" / "small.png")
    return root


def test_match_pairs_and_the_dataset_name_what_they_skip(pairs, caplog):
    matched, hr_only, lr_only = match_pairs(pairs / "HR", pairs / "LR")
    assert [h.name for h, _ in matched] == ["misfit.png", "p0.png", "p2.png", "small.png", "p1.png"]
    assert all(h.relative_to(pairs / "HR") == l.relative_to(pairs / "LR") for h, l in matched)
    assert [p.name for p in hr_only] == ["lonely_hr.png"] and [p.name for p in lr_only] == ["lonely_lr.png"]
    with caplog.at_level(logging.WARNING, logger="sdflow.train"):
        ds = PairedPatches(pairs / "HR", pairs / "LR", 32, 8)
    assert sorted(h.name for h, _ in ds.pairs) == ["p0.png", "p1.png", "p2.png"]
    text = caplog.text
    for name, why in (("lonely_hr.png", "no LR file"), ("lonely_lr.png", "no HR file"),
                      ("misfit.png", "not x4 partners"), ("small.png", "smaller than the 32px patch")):
        line = next(ln for ln in text.splitlines() if name in ln)
        assert why in line


def test_paired_crops_are_aligned_through_flips_and_rotations(pairs):
    ds = PairedPatches(pairs / "HR", pairs / "LR", 32, 8)
    turned = set()
    for seed in range(40):
        b = ds[(seed % len(ds), 0, seed)]
        hr = (b["hr"].permute(1, 2, 0).numpy() + 1) * 127.5
        lr = (b["lr"].permute(1, 2, 0).numpy() + 1) * 127.5
        assert hr.shape == (32, 32, 3) and lr.shape == (8, 8, 3)
        # Box-averaging commutes with flips and quarter turns on the x4 grid: a misaligned or
        # differently turned crop would be off by tens of levels.
        assert np.abs(_box_down(hr) - lr).max() <= 0.51
        turned.add(float((b["lr"][0] - b["lr"][0].T).abs().sum()))
    assert len(turned) > 10  # the crops do vary


def test_augment_pair_keeps_the_grid_of_a_ceil_sized_lr():
    rng = np.random.default_rng(0)
    hr = np.arange(44 * 52 * 3, dtype=np.float64).reshape(44, 52, 3)
    lr = np.zeros((11, 13, 3))  # ceil(44 / 4) = 11 rows
    for seed in range(20):
        h, l = augment_pair(hr, lr, 11, np.random.default_rng(seed), False, False)
        assert h.shape == (44, 44, 3) and l.shape == (11, 11, 3)
    with pytest.raises(ValueError):  # no 12-pixel crop fits on the grid
        augment_pair(hr, lr, 12, rng, False, False)


def test_no_usable_pair_is_a_clear_error(tmp_path):
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "HR" / "a.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "LR" / "b.png")
    with pytest.raises(ValueError, match="no usable pair.*--paired"):
        PairedPatches(tmp_path / "HR", tmp_path / "LR", 32, 8)


# ----- objective -----------------------------------------------------------------------------

_PAIRED_OFF = ["loss.paired_content=0", "loss.paired_sr=0", "loss.paired_ds=0"]
_ALL_OFF = [f"loss.{n}=0" for n in ("nll_hr", "nll_lr", "content", "domain", "gan", "pixel", "content_cycle",
                                    "content_perceptual", "perceptual")]


def _paired(over):
    obj, model, crit, hr, lr = _objective(_ALL_OFF + _PAIRED_OFF + list(over))
    obj.paired = True
    return obj, model, hr, lr


def test_paired_terms_only_with_paired_data():
    obj, model, crit, hr, lr = _objective()
    assert not {"paired_content", "paired_sr", "paired_ds"} & set(obj(hr, lr)[1])
    obj.paired = True
    _, terms, _ = obj(hr, lr)
    assert {"paired_content", "paired_sr", "paired_ds"} <= set(terms)
    assert all(math.isfinite(float(terms[k])) for k in ("paired_content", "paired_sr", "paired_ds"))


def test_paired_data_drops_hr_mode_for_paired_sr():
    """With pairs f_HF learns given E(x): the decode from the HR's content (hr_mode) is left out,
    the decode from E(x) (paired_sr) stays."""
    obj, model, crit, hr, lr = _objective(["loss.hr_mode=10"])
    assert obj.weights(False)["hr_mode"] == 10 and "hr_mode" in obj(hr, lr)[1]
    obj.paired = True
    assert obj.weights(False)["hr_mode"] == 0 and obj.weights(True)["hr_mode"] == 0
    _, terms, _ = obj(hr, lr)
    assert "hr_mode" not in terms and "paired_sr" in terms


def test_paired_content_trains_e_toward_the_hrs_own_content():
    obj, model, hr, lr = _paired(["loss.paired_content=1"])
    obj.dequantize_inputs = False
    _, terms, _ = obj(hr, lr)
    with torch.no_grad():
        expect = (model.content(lr) - model.encode_hr(hr)[0]).abs().mean()
    assert float(terms["paired_content"]) == pytest.approx(float(expect), rel=1e-5)
    obj(hr, lr)[0].backward()
    assert _has_grad(model.content_extractor)
    for m in (model.f_hr, model.f_hf, model.f_lr, model.f_deg):  # the HR content is the target
        assert not _has_grad(m)


def test_paired_sr_and_ds_train_their_paths():
    obj, model, hr, lr = _paired(["loss.paired_sr=1"])
    obj(hr, lr)[0].backward()
    for m in (model.content_extractor, model.f_hr, model.f_hf):
        assert _has_grad(m)
    assert not _has_grad(model.f_lr) and not _has_grad(model.f_deg)
    obj, model, hr, lr = _paired(["loss.paired_ds=1"])
    obj(hr, lr)[0].backward()
    for m in (model.f_hr, model.f_lr, model.f_deg):
        assert _has_grad(m)
    assert not _has_grad(model.content_extractor) and not _has_grad(model.f_hf)


def test_paired_likelihoods_condition_across_the_pair(monkeypatch):
    """f_HF is conditioned on E(x) and f_Deg on z_c^h, both detached."""
    for term, flow, want in (("nll_hr", "f_hf", "content"), ("nll_lr", "f_deg", "z_c")):
        obj, model, hr, lr = _paired([f"loss.{term}=1"])
        obj.dequantize_inputs = False
        seen = []
        cls = type(getattr(model, flow))
        orig = cls.forward

        def spy(self, z, cond, _orig=orig):
            seen.append(cond)
            return _orig(self, z, cond)

        monkeypatch.setattr(cls, "forward", spy)
        obj(hr, lr)[0].backward()
        monkeypatch.setattr(cls, "forward", orig)
        with torch.no_grad():
            ref = model.content(lr) if want == "content" else model.encode_hr(hr)[0]
        assert seen and all(not c.requires_grad for c in seen)
        assert torch.allclose(seen[0], ref, atol=1e-6)
        assert not _has_grad(model.content_extractor)


# ----- the loop and the command ------------------------------------------------------------------

def test_paired_run_resumes_exactly_and_uses_the_pairs(pairs, tmp_path, capsys):
    over = {"data.hr_dir": str(pairs / "HR"), "data.lr_dir": str(pairs / "LR"), "data.paired": "true",
            "train.steps": 5, "train.stage1_steps": 2, "checkpoint.every": 100}
    cfg = make_cfg(pairs, **over)
    train(cfg, tmp_path / "a")
    log = (tmp_path / "a" / "train.log").read_text()
    assert "3 HR / LR pairs" in log and "paired_sr=" in log
    stop = {"step": 3}

    def interrupt(trainer):
        if trainer.step == stop["step"]:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGINT)

    assert train(cfg, tmp_path / "b", on_step_end=interrupt)["interrupted"]
    assert train(cfg, tmp_path / "b", resume=True)["step"] == 5
    a, b = all_state(tmp_path / "a"), all_state(tmp_path / "b")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_paired_flag_on_the_command_line(pairs, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "configs/tiny.yaml", "--paired", "--hr", str(pairs / "HR"),
                              "--lr", str(pairs / "LR"), "--out", str(tmp_path / "run")])
    assert train_cmd.build_config(args).data.paired
    args = parser.parse_args(["train", "--config", "configs/tiny.yaml", "--hr", str(pairs / "HR"),
                              "--lr", str(pairs / "LR"), "--out", str(tmp_path / "run")])
    assert not train_cmd.build_config(args).data.paired
