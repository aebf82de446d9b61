"""Run logging: a plain-text log, TensorBoard scalars and images, and a progress bar.

Only rank 0 writes anything; other ranks pass `enabled=False` and still report warnings
on stderr (prefixed with their rank), so a problem on one GPU is never silent.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F

LOGGER_NAME = "sdflow.train"


class _TqdmHandler(logging.Handler):
    """Console output that does not tear the progress bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class RunLogger:
    """Text logging starts at construction; TensorBoard and the progress bar start with
    `start(step)`, once a resumed run knows its step (TensorBoard then drops the events an
    interrupted run wrote after its last checkpoint, which would otherwise be doubled, and
    keeps those of the checkpoint's own step, which are logged before it is saved)."""

    def __init__(self, run_dir, enabled: bool = True, rank: int = 0):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.log = logging.getLogger(LOGGER_NAME)
        self._saved = (self.log.level, self.log.propagate)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._handlers: List[logging.Handler] = []
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        console = _TqdmHandler()
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
            fh.setFormatter(fmt)
            self._add(fh)
            console.setFormatter(logging.Formatter("%(message)s"))
        else:
            console.setLevel(logging.WARNING)
            console.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
        self._add(console)
        self.tb = None
        self.bar = None

    def start(self, step: int, total_steps: int, tensorboard: bool = True, progress: bool = True) -> None:
        if not self.enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                # Events at or past purge_step are dropped; step `step` was complete (and
                # logged) when its checkpoint was written, so only the later ones go.
                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=step + 1)
            except Exception as e:  # tensorboard is an optional dependency
                self.warning(f"TensorBoard logging is off: cannot import it ({type(e).__name__}: {e}); "
                             f"install the 'train' extra (pip install tensorboard) to enable it")
        # A bar redrawn into a log file or a pipe is noise: only on an interactive terminal.
        if progress and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=step, dynamic_ncols=True, unit="step",
                            file=sys.stderr, leave=True)

    def _add(self, h: logging.Handler) -> None:
        self.log.addHandler(h)
        self._handlers.append(h)

    def info(self, msg: str) -> None:
        if self.enabled:
            self.log.info(msg)

    def warning(self, msg: str) -> None:
        self.log.warning(msg)

    def error(self, msg: str) -> None:
        self.log.error(msg)

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            self.tb.add_scalar(k, float(v), step)

    def image(self, step: int, tag: str, grid: torch.Tensor, png: Optional[Path] = None) -> None:
        """`grid` is [3, H, W] in [0, 1]; also written as PNG when `png` is given, so runs
        without TensorBoard still leave something to look at."""
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.add_image(tag, grid, step)
        if png is not None:
            from PIL import Image
            png.parent.mkdir(parents=True, exist_ok=True)
            arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            Image.fromarray(arr).save(png)

    def progress(self, step: int, postfix: Dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self.bar.refresh()

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()
        for h in self._handlers:
            h.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        for h in self._handlers:
            self.log.removeHandler(h)
            h.close()
        self._handlers = []
        self.log.setLevel(self._saved[0])
        self.log.propagate = self._saved[1]


def image_grid(rows: Iterable[torch.Tensor], max_images: int = 4) -> torch.Tensor:
    """Rows of [B, 3, h, w] images in [-1, 1] -> one [3, H, W] grid in [0, 1]; every image
    is brought to the largest size with nearest-neighbour scaling so pixels stay visible."""
    rows = [r.detach().float().cpu()[:max_images] for r in rows]
    h = max(r.shape[-2] for r in rows)
    w = max(r.shape[-1] for r in rows)
    n = max(r.shape[0] for r in rows)
    pad = 2
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, r in enumerate(rows):
        if r.shape[-2:] != (h, w):
            r = F.interpolate(r, size=(h, w), mode="nearest")
        r = ((r.clamp(-1, 1) + 1) * 0.5).nan_to_num(0.0)
        for j in range(r.shape[0]):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, top:top + h, left:left + w] = r[j]
    return canvas


__all__ = ["RunLogger", "image_grid", "LOGGER_NAME"]
