"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint is a plain dict saved with `torch.save` and loadable with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only, so that
opening one never runs code. `sdflow.load` reads its "model" and "model_config" entries.
Random-generator states are stored as tensors, one entry per rank.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

FORMAT = "sdflow-train"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir) -> List[Path]:
    """Checkpoint files of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m[1]), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def atomic_torch_save(obj, path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a crash
    or Ctrl-C at any moment leaves either the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def prune_checkpoints(run_dir, keep: int) -> List[Path]:
    """Delete all but the newest `keep` checkpoints; returns the deleted paths."""
    if keep <= 0:
        return []
    old = list_checkpoints(run_dir)[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old


# ----- random states ---------------------------------------------------------------------------

def capture_rng() -> Dict[str, object]:
    """Python, numpy, torch CPU and every CUDA device's generator, as tensors."""
    version, internal, gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(list(internal), dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": [gauss is not None, float(gauss or 0.0)],
        "numpy": torch.from_numpy(np_key.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_gauss": [int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, object]) -> None:
    has_gauss, gauss = state["python_gauss"]
    random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python"].tolist()),
                     float(gauss) if has_gauss else None))
    has, cached = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(has), float(cached)))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path) -> dict:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an sdflow training checkpoint")
    if int(ckpt.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: written by a newer sdflow (format version {ckpt['version']})")
    return ckpt


__all__ = ["FORMAT", "VERSION", "checkpoint_name", "list_checkpoints", "latest_checkpoint",
           "atomic_torch_save", "prune_checkpoints", "capture_rng", "restore_rng", "load_checkpoint"]
