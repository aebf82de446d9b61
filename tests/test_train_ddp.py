"""Two-process training under torchrun (gloo on CPU): replicas stay identical, ActNorm is
initialised from statistics of both ranks, an interrupted DDP run resumes exactly, and a
SIGTERM to torchrun with DataLoader workers on still saves a checkpoint."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdflow.train import checkpoint as ckpt_io
from sdflow.train.config import TrainConfig, apply_overrides
from test_train import sigterm_at_step_2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("ddp_data")
    rng = np.random.default_rng(3)
    for side, n, size, noise in (("hr", 4, 48, 2), ("lr", 4, 16, 10)):
        (root / side).mkdir()
        for i in range(n):
            img = rng.normal(128, 40, (size // 4, size // 4, 3)).repeat(4, 0).repeat(4, 1)
            img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / side / f"{i}.png")
    return root


def torchrun(run_dir, *args, interrupted=False, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sdflow.commands.train", "--out", str(run_dir), *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    report = f"torchrun exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    if interrupted:
        # Workers exit 130 after saving (as for Ctrl-C); torchrun reports that as its own failure.
        assert p.returncode != 0 and "exitcode  : 130" in p.stderr, report
    else:
        assert p.returncode == 0, report
    return p


def state(run_dir):
    ck = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(run_dir))
    out = {f"model.{k}": v for k, v in ck["model"].items()}
    for name, sd in ck["critics"].items():
        out.update({f"critic.{name}.{k}": v for k, v in sd.items()})
    return ck, out


def tiny_config(path, *extra):
    cfg = TrainConfig.from_dict(apply_overrides({}, [
        "model.preset=tiny", "data.hr_patch=32", "data.lr_patch=8", "data.batch_size=4", "data.num_workers=0",
        "train.steps=5", "train.stage1_steps=2", "train.device=cpu", "log.every=1", "log.tensorboard=false",
        "log.image_every=0", "checkpoint.every=0", "disc.latent_channels=8", "disc.latent_layers=1",
        "disc.image_channels=8", "disc.hr_layers=2", "disc.lr_layers=1", *extra]))
    cfg.save(path)
    return path


def test_two_ranks_stay_identical_and_resume_exactly(data, tmp_path):
    cfg_path = tiny_config(tmp_path / "cfg.yaml")
    common = ["--config", str(cfg_path), "--hr", str(data / "hr"), "--lr", str(data / "lr")]

    torchrun(tmp_path / "a", *common)
    log_a = (tmp_path / "a" / "train.log").read_text()
    assert "device cpu x 2 rank(s)" in log_a and "averaged over 2 ranks" in log_a
    assert "largest parameter difference across 2 ranks = 0" in log_a
    ck_a, a = state(tmp_path / "a")
    assert ck_a["step"] == 5 and len(ck_a["rng"]) == 2  # one RNG state per rank
    # The ranks drew different noise (they are not two copies of one process).
    assert not torch.equal(ck_a["rng"][0]["torch"], ck_a["rng"][1]["torch"])

    torchrun(tmp_path / "b", *common, "--set", "debug.interrupt_after_step=3", interrupted=True)
    assert ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "b"))["step"] == 3
    torchrun(tmp_path / "b", "--resume")
    log_b = (tmp_path / "b" / "train.log").read_text()
    assert "resumed from ckpt-00000003.pt" in log_b and "finished 5 steps" in log_b
    ck_b, b = state(tmp_path / "b")
    assert ck_b["step"] == 5
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed DDP run differs in {diff[:5]}"


def test_sigterm_to_torchrun_with_workers_saves_a_checkpoint(data, tmp_path):
    script = tmp_path / "term.py"
    # torchrun passes SIGTERM on to each rank's process group, DataLoader workers included.
    script.write_text(sigterm_at_step_2("kill", "os.getppid()"))
    cfg_path = tiny_config(tmp_path / "cfg.yaml", "train.steps=6", "data.num_workers=1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), "--out", str(tmp_path / "run"), "--config", str(cfg_path),
                        "--hr", str(data / "hr"), "--lr", str(data / "lr")],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    report = f"torchrun exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "killed by signal" not in p.stderr, report
    saved = ckpt_io.list_checkpoints(tmp_path / "run")
    # Both ranks stop after the same step, whichever of them saw the signal first.
    assert len(saved) == 1 and 2 <= ckpt_io.load_checkpoint(saved[0])["step"] < 6, report
    torchrun(tmp_path / "run", "--resume")
    assert ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "run"))["step"] == 6
