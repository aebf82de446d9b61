"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint is a plain dict saved with `torch.save` and loadable with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only, so that
opening one never runs code. `sdflow.load` reads its "model" and "model_config" entries.
Random-generator states are stored as tensors, one entry per rank. Its "sha256" entry is a digest
of all the others (`content_digest`), written in the same file, so that a damaged checkpoint is
told from an intact one before a resume trusts it.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

FORMAT = "sdflow-train"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
_PARTIAL = re.compile(r"^\.ckpt-\d+\.pt\.tmp\d+$")   # atomic_torch_save's temporaries of checkpoints
DIGEST_KEY = "sha256"


class CheckpointDamaged(ValueError):
    """A checkpoint file that cannot be read, or whose contents do not match their digest."""


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


def content_digest(obj) -> str:
    """SHA-256 of a checkpoint's contents (tensors with dtype and shape, numbers, strings,
    lists, dicts with their keys in a fixed order), the same before saving and after loading."""
    h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}:".encode())
            for k in sorted(x, key=repr):
                feed(k)
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}:".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(obj)
    return h.hexdigest()


def write_checkpoint(state: dict, path) -> None:
    """`atomic_torch_save` of `state` with its digest added."""
    atomic_torch_save({**state, DIGEST_KEY: content_digest(state)}, path)


def remove_partial_checkpoints(run_dir) -> List[Path]:
    """Delete the temporary files of checkpoints whose writing was killed (kill -9, power loss),
    which nothing else would ever remove; returns them."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.iterdir() if _PARTIAL.match(p.name)] if run_dir.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


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
    """The checkpoint at `path`, verified: CheckpointDamaged when it cannot be read, is no
    sdflow checkpoint, or its contents differ from its digest (checkpoints of sdflow versions
    that wrote none are taken as they load)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a cut or corrupt zip fails in many ways, by torch version
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointDamaged(f"{path}: cannot be read ({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointDamaged(f"{path}: not an sdflow training checkpoint")
    if int(ckpt.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: written by a newer sdflow (format version {ckpt['version']})")
    digest = ckpt.pop(DIGEST_KEY, None)
    if digest is not None and digest != content_digest(ckpt):
        raise CheckpointDamaged(f"{path}: its contents do not match the checksum saved with them")
    return ckpt


def newest_intact(run_dir, warn: Callable[[str], None],
                  set_aside: bool = True) -> Tuple[Optional[Path], Optional[dict]]:
    """(path, contents) of the newest checkpoint of `run_dir` that load_checkpoint accepts, or
    (None, None) when there is none. Each newer damaged one is named through `warn` and, with
    `set_aside` (the process that owns the run folder), renamed to NAME.damaged: kept for a look,
    never again taken for a checkpoint or counted by pruning. Raises CheckpointDamaged, naming
    them all and moving none (a later --resume must not find an empty run and start afresh),
    when every checkpoint is damaged."""
    damaged: List[Tuple[Path, str]] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointDamaged as e:
            damaged.append((path, str(e)))
            continue
        for bad, why in damaged:
            aside = bad.with_name(bad.name + ".damaged")
            if set_aside:
                os.replace(bad, aside)
            warn(f"checkpoint {why}" + (f"; renamed to {aside.name}" if set_aside else ""))
        if damaged:
            warn(f"resuming from {path.name}, the newest intact checkpoint")
        return path, ckpt
    if damaged:
        raise CheckpointDamaged("no intact checkpoint to resume from:\n  " + "\n  ".join(w for _, w in damaged))
    return None, None


__all__ = ["FORMAT", "VERSION", "DIGEST_KEY", "CheckpointDamaged", "checkpoint_name", "list_checkpoints",
           "latest_checkpoint", "atomic_torch_save", "content_digest", "write_checkpoint",
           "remove_partial_checkpoints", "prune_checkpoints", "capture_rng", "restore_rng", "load_checkpoint",
           "newest_intact"]
