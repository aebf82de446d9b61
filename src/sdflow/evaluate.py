"""Paired evaluation of super-resolution (SR) and downscaling (DS), with bicubic baselines.

The engine behind `sdflow eval` (and, for the bundled sample photos, `sdflow demo`):

    from sdflow import evaluate
    result = evaluate.evaluate_folders("test/HR", "test/LR", "out", model=model, taus=[0, 0.4, 0.8])
    # or, in steps:
    matching = evaluate.match_folders("test/HR", "test/LR")
    result = evaluate.run_evaluation(matching.pairs, model, taus=[0, 0.8], samples=3)
    paths = evaluate.write_outputs(result, "out")       # CSV, JSON, Markdown, report.html

Scoring rules, chosen so the numbers are those of the files `sdflow sr` / `sdflow ds` would write:
* every output (model or bicubic) is clamped and rounded to its source's bit depth, and made
  gray (Rec. 601 luma) for a gray source, before it is scored (the LR is SR's source, the HR
  DS's), as `sdflow sr/ds` write it; the reference images are taken as stored;
* sample k of every image is drawn with seed `seed + k`, as `sdflow sr/ds --seed` draw it, through
  the same code path (`sdflow.inference.sample`, so large images are tiled as there);
* SR against the HR: PSNR and SSIM on BT.601 luma (Y) and on RGB, with a 4-pixel border dropped
  (the SR literature's convention for x4); LR consistency: PSNR of the SR output shrunk by the
  bicubic x4 of `sdflow.resize` against the LR it came from, 1 LR pixel of border dropped (the
  same 4 HR pixels); LPIPS on the whole image, only with a user-supplied weights file;
* DS against the real LR: PSNR and SSIM on RGB over the whole image, and the noise level
  (`metrics.noise_sigma`), sharpness (`metrics.laplacian_variance`) and mean gradient magnitude
  of generated vs real LR, with the per-image absolute gap; all three on the 8-bit scale
  (levels, levels^2 for the variance) so they read like pixel values;
* with several samples a row holds the mean over samples, and `diversity` is the mean per-pixel
  standard deviation across them (8-bit levels);
* every tau and sample of an image shares the image's condition (`SDFlow.sr_condition` /
  `ds_condition`, made once), so `seconds` is per output with that shared work spread over them;
* a mean row averages the per-image rows (a PSNR of inf, i.e. identical images, makes it inf).

HR and LR must agree in size: LR = ceil(HR / 4) on both sides (sdflow's convention, LR pixel i
covering HR pixels 4i..4i+3, the last one partial; `sdflow degrade` writes HR in multiples of 4),
or LR = floor(HR / 4), in which case the HR is cropped to 4 x LR (BasicSR's mod-crop) and a note
says so. A pair that cannot be read or does not fit is skipped with its reason, and
`EvalResult.ok` turns False.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from sdflow import metrics
from sdflow.imageio import Image, ImageReadError, find_images, luminance, quantize, read_image, to_tensor
from sdflow.resize import downscale as bicubic_down, upscale as bicubic_up

__all__ = ["SCALE", "SR_BORDER", "DIRECTIONS", "Column", "SR_COLUMNS", "DS_COLUMNS", "Pair",
           "Matching", "Panel", "Visual", "EvalResult", "match_folders", "sample_pairs", "mean_rows",
           "run_evaluation", "write_outputs", "evaluate_folders", "format_value", "format_table",
           "summary_text", "pick_crop",
           "LPIPS", "load_lpips"]

PathLike = Union[str, os.PathLike]
Log = Callable[[str], None]

SCALE = 4
SR_BORDER = 4
DIRECTIONS = ("sr", "ds", "both")
# The 11 x 11 window of metrics.ssim must fit after the border crop.
_SSIM_MIN = 2 * metrics.SSIM_RADIUS + 1
LEVELS = 255.0


@dataclass(frozen=True)
class Column:
    key: str            # the key in row dicts, CSV and JSON
    title: str          # the header in the terminal, Markdown and HTML tables
    digits: int
    better: str = ""    # "+" higher is better, "-" lower is better, "" neither


SR_COLUMNS = (
    Column("psnr_y", "PSNR-Y", 2, "+"),
    Column("ssim_y", "SSIM-Y", 4, "+"),
    Column("psnr_rgb", "PSNR-RGB", 2, "+"),
    Column("ssim_rgb", "SSIM-RGB", 4, "+"),
    Column("lr_psnr", "LR-PSNR", 2, "+"),
    Column("colour_shift", "colour shift", 2, "-"),
    Column("lpips", "LPIPS", 4, "-"),
    Column("diversity", "diversity", 3),
    Column("seconds", "s/sample", 3, "-"),
)
DS_COLUMNS = (
    Column("psnr_rgb", "PSNR-RGB", 2, "+"),
    Column("ssim_rgb", "SSIM-RGB", 4, "+"),
    Column("noise", "noise", 3),
    Column("noise_gap", "noise gap", 3, "-"),
    Column("lapvar", "lap-var", 1),
    Column("lapvar_gap", "lap-var gap", 1, "-"),
    Column("grad", "grad", 3),
    Column("grad_gap", "grad gap", 3, "-"),
    Column("diversity", "diversity", 3),
    Column("seconds", "s/sample", 3, "-"),
)
# Leading columns of every row; "image" is the pair's name, or "mean" with "images" counting them.
KEY_COLUMNS = ("image", "method", "tau", "samples")
MEAN_KEY_COLUMNS = ("method", "tau", "samples", "images")


# ----- pairs ------------------------------------------------------------------------------------

@dataclass
class Pair:
    """One test image: `name` is its path relative to the folders, without extension. `hr` and
    `lr` are files, or images already in memory (`sdflow.imageio.Image`)."""
    name: str
    hr: Union[Path, Image]
    lr: Union[Path, Image]


@dataclass
class Matching:
    pairs: List[Pair]
    unmatched_hr: List[str] = field(default_factory=list)   # relative paths with no LR partner
    unmatched_lr: List[str] = field(default_factory=list)
    duplicates: List[str] = field(default_factory=list)     # files whose name another file shares


def match_folders(hr_dir: PathLike, lr_dir: PathLike, exclude: Optional[PathLike] = None) -> Matching:
    """Pair the images of two folders by relative path without extension (a/b.png with a/b.jpg),
    sorted by name; names left over are paired when they differ only by a scale or side tag
    (0801.png with 0801x4.png, Canon_001_HR.png with Canon_001_LR4.png; the pair takes the HR's
    name). Files without a partner, and names that two files of one folder share, are listed and
    left out. Nothing under `exclude` (e.g. the evaluation's own output folder) is read."""
    hr_dir, lr_dir = Path(hr_dir), Path(lr_dir)
    sides, shared = [], set()
    duplicates = []
    for root in (hr_dir, lr_dir):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        by_name: Dict[str, Path] = {}
        for p in find_images(root, exclude=exclude):
            name = p.relative_to(root).with_suffix("").as_posix()
            if name in by_name:
                # Which of a.png / a.jpg is the intended partner is anyone's guess: use neither.
                shared.add(name)
                duplicates.append(p.as_posix())
            else:
                by_name[name] = p
        sides.append(by_name)
    hr, lr = sides
    duplicates += [side[n].as_posix() for side in sides for n in shared if n in side]
    partner = {n: n for n in (set(hr) & set(lr)) - shared}
    partner.update(_tagged_partners(sorted(set(hr) - set(lr) - shared), sorted(set(lr) - set(hr) - shared)))
    lr_taken = set(partner.values())
    return Matching(
        pairs=[Pair(n, hr[n], lr[partner[n]]) for n in sorted(partner)],
        unmatched_hr=sorted(hr[n].relative_to(hr_dir).as_posix() for n in set(hr) - set(partner) - shared),
        unmatched_lr=sorted(lr[n].relative_to(lr_dir).as_posix() for n in set(lr) - lr_taken - shared),
        duplicates=sorted(duplicates))


# Scale and side tags of public test sets' file names: DIV2K's 0801.png / 0801x4.png (and the
# x4m / x4d / x4w of its real-world tracks), RealSR's Canon_001_HR.png / Canon_001_LR4.png.
_NAME_TAG = re.compile(r"(?i)[_-]?(?:hr|lr[_-]?x?4?|x4[a-z]?)$")


def _tagged_partners(hr_names: Sequence[str], lr_names: Sequence[str]) -> Dict[str, str]:
    """{HR name: LR name} for names that differ only by such a tag, where that is unambiguous."""
    def keys(names):
        found: Dict[str, List[str]] = {}
        for n in names:
            folder, _, stem = n.rpartition("/")
            base = _NAME_TAG.sub("", stem)
            if base:
                found.setdefault(f"{folder}/{base}" if folder else base, []).append(n)
        return found

    hr_keys, lr_keys = keys(hr_names), keys(lr_names)
    return {hr_keys[k][0]: lr_keys[k][0] for k in hr_keys.keys() & lr_keys.keys()
            if len(hr_keys[k]) == len(lr_keys[k]) == 1}


def sample_pairs(preset: str = "realistic", seed: int = 0) -> List[Pair]:
    """The bundled sample photos with their simulated LR, in memory: the same pairs as
    `sdflow degrade -i <samples> -o OUT --preset <preset> --seed <seed>` writes."""
    from sdflow.data.degrade import crop_to_multiple, degrade, file_rng, sample_images

    pairs = []
    for path in sample_images():
        hr = crop_to_multiple(read_image(path).rgb)
        hr_u8 = quantize(hr)
        lr_u8 = degrade(hr_u8, preset, file_rng(seed, path.name))
        pairs.append(Pair(path.stem, Image(hr_u8 / np.float32(255), path=path),
                          Image(lr_u8 / np.float32(255))))
    return pairs


# ----- results ----------------------------------------------------------------------------------

@dataclass
class Panel:
    """One crop of the report: `image` uint8 HxWx3; `scale` "hr" or "lr" tells the report at
    which pixel size it was taken (LR crops are shown enlarged to the HR crops' size)."""
    label: str
    image: np.ndarray
    scale: str
    caption: str = ""


@dataclass
class Visual:
    name: str
    box: Tuple[int, int, int]           # HR top, left, side of the crop
    sr: List[Panel] = field(default_factory=list)
    ds: List[Panel] = field(default_factory=list)


@dataclass
class EvalResult:
    settings: dict
    sr_rows: List[dict] = field(default_factory=list)
    ds_rows: List[dict] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)     # (name, reason)
    unmatched_hr: List[str] = field(default_factory=list)
    unmatched_lr: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    visuals: List[Visual] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """False when any image was skipped or had no partner."""
        return not (self.skipped or self.unmatched_hr or self.unmatched_lr)

    @property
    def sr_mean(self) -> List[dict]:
        return mean_rows(self.sr_rows, SR_COLUMNS)

    @property
    def ds_mean(self) -> List[dict]:
        return mean_rows(self.ds_rows, DS_COLUMNS)

    def columns(self, direction: str) -> Tuple[Column, ...]:
        """The metric columns of `direction` that hold a value in some row (LPIPS without weights,
        or diversity from one sample, drop out)."""
        cols, rows = (SR_COLUMNS, self.sr_rows) if direction == "sr" else (DS_COLUMNS, self.ds_rows)
        return tuple(c for c in cols if any(_present(r.get(c.key)) for r in rows))


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _method_order(row: dict) -> tuple:
    order = {"real LR": 0, "bicubic": 1}
    tau = row.get("tau")
    return (order.get(row["method"], 2), row["method"], -1.0 if tau is None else tau)


def mean_rows(rows: List[dict], columns: Sequence[Column]) -> List[dict]:
    """One row per (method, tau, samples) of per-image `rows`: the mean of each column over the
    images ("images" counts them) that have a value (an SSIM of an image smaller than its window
    has none: `run_evaluation` notes which), None where no image has one."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r.get("tau"), r.get("samples")), []).append(r)
    out = []
    for (method, tau, samples), group in groups.items():
        mean = {"method": method, "tau": tau, "samples": samples, "images": len(group)}
        for c in columns:
            values = [r.get(c.key) for r in group if _present(r.get(c.key))]
            with np.errstate(invalid="ignore"):
                mean[c.key] = float(np.mean(values)) if values else None
        out.append(mean)
    return sorted(out, key=_method_order)


# ----- evaluation -------------------------------------------------------------------------------

def run_evaluation(pairs: Sequence[Pair], model=None, *, taus: Sequence[float] = (0.0, 0.8),
                   samples: int = 1, seed: int = 0, direction: str = "both",
                   lpips: Union["LPIPS", PathLike, None] = None, crop_size: int = 128,
                   report_images: int = 12, progress: bool = True, log: Optional[Log] = None,
                   settings: Optional[dict] = None) -> EvalResult:
    """Score the bicubic baselines, and `model` (an SDFlow, or None for the baselines alone) at
    every tau with `samples` samples, on every pair; keep report crops of the first
    `report_images` pairs (`crop_size` HR pixels, the most detailed square of the image).

    `lpips`: an `LPIPS` network or the path of its weights (`load_lpips`); None leaves the column
    out, and says so once through `log` (default: stderr). `settings` are recorded in the result
    beside the run's own (model, taus, ...), for the report's header.
    """
    from tqdm import tqdm

    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    taus = [float(t) for t in taus]
    if model is not None and not taus:
        raise ValueError("at least one tau is needed to evaluate a model")
    if any(not (math.isfinite(t) and t >= 0) for t in taus):
        raise ValueError(f"every tau must be a finite number >= 0, got {taus}")
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples must be a whole number >= 1, got {samples}")
    crop_size = max(SCALE, int(crop_size) // SCALE * SCALE)
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    started = time.perf_counter()

    device = model.device if model is not None else torch.device("cpu")
    if lpips is not None and not isinstance(lpips, LPIPS):
        lpips = load_lpips(lpips, device=device)
    if lpips is not None:
        lpips = lpips.to(device).eval()

    result = EvalResult(settings={
        "model": None, "direction": direction, "taus": taus if model is not None else [],
        "samples": int(samples), "seed": int(seed), "device": str(device),
        "sr_border": SR_BORDER, "lpips": lpips.net if lpips is not None else None,
        "images": len(pairs), "crop_size": crop_size, **(settings or {})})
    if lpips is None and direction != "ds":
        result.notes.append("LPIPS not computed: no LPIPS weights file given (--lpips-weights)")
        log(result.notes[-1])
    if model is None:
        result.notes.append("no model: only the bicubic baselines (and the real LR statistics) "
                            "are computed")
    if samples < 2:
        result.notes.append("diversity needs at least 2 samples per image (--samples)")

    ctx = _Run(model, taus, int(samples), int(seed), lpips)
    # A model in training mode would let ActNorm initialise itself on the test images.
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        with tqdm(total=len(pairs), desc="eval", unit="img", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for i, pair in enumerate(pairs):
                bar.set_postfix_str(pair.name[-40:], refresh=False)
                try:
                    sr_rows, ds_rows, visual = ctx.evaluate_pair(
                        pair, direction, crop_size if i < report_images else 0)
                except _PairError as e:
                    result.skipped.append((pair.name, str(e)))
                    log(f"skipped {pair.name}: {e}")
                else:
                    result.sr_rows += sr_rows
                    result.ds_rows += ds_rows
                    if visual is not None:
                        result.visuals.append(visual)
                bar.update()
    finally:
        if was_training:
            model.train()
    for d, cols in (("SR", SR_COLUMNS), ("DS", DS_COLUMNS)):
        rows = result.sr_rows if d == "SR" else result.ds_rows
        for c in cols:
            lacking = sorted({r["image"] for r in rows if r.get(c.key) is not None and not _present(r[c.key])})
            if lacking and any(_present(r.get(c.key)) for r in rows):
                result.notes.append(f"{d} {c.title}: not defined for {len(lacking)} image(s) too small for it "
                                    f"({', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}); "
                                    f"its means are over the other images")
    if ctx.modcropped:
        result.notes.append(f"{len(ctx.modcropped)} HR image(s) cropped to 4x their LR (LR = floor(HR / 4)): "
                            + ", ".join(ctx.modcropped[:5]) + (" ..." if len(ctx.modcropped) > 5 else ""))
    result.seconds = time.perf_counter() - started
    return result


class _PairError(Exception):
    pass


def _load(side: Union[Path, Image], what: str) -> Image:
    if isinstance(side, Image):
        return side
    try:
        return read_image(side)
    except ImageReadError as e:
        raise _PairError(f"cannot read the {what} image {e.path}: {e.reason}") from None


def _pixels(img: Image) -> np.ndarray:
    """The stored integer pixels (uint8 / uint16) of a read image."""
    return quantize(img.rgb, 16 if img.bit_depth == 16 else 8)


def _as_float(a: np.ndarray) -> np.ndarray:
    return metrics.to_float(a).astype(np.float32)


def _display_u8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return quantize(metrics.to_float(a), 8)


def _ssim(a, b, border: int = 0, y: bool = False) -> float:
    h, w = a.shape[0] - 2 * border, a.shape[1] - 2 * border
    if h < _SSIM_MIN or w < _SSIM_MIN:
        return math.nan  # too small for the SSIM window: not a reason to drop the whole pair
    return metrics.ssim(a, b, crop_border=border, y_channel=y)


def _psnr(a, b, border: int = 0, y: bool = False) -> float:
    if a.shape[0] <= 2 * border or a.shape[1] <= 2 * border:
        return math.nan
    return metrics.psnr(a, b, crop_border=border, y_channel=y)


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def pick_crop(hr: np.ndarray, side: int) -> Tuple[int, int, int]:
    """(top, left, side) of the square, aligned to the x4 grid, with the largest mean gradient
    magnitude: the most detailed part of the image, where SR results differ the most."""
    H, W = hr.shape[:2]
    side = min(side, H // SCALE * SCALE, W // SCALE * SCALE)
    if side < SCALE:
        return 0, 0, 0
    g = metrics.rgb_to_y(hr) / 255.0
    mag = np.zeros((H, W))
    mag[1:-1, 1:-1] = np.hypot(g[2:, 1:-1] - g[:-2, 1:-1], g[1:-1, 2:] - g[1:-1, :-2])
    integral = np.pad(mag.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, where = -1.0, (0, 0)
    step = max(SCALE, side // 4 // SCALE * SCALE)
    for top in range(0, H - side + 1, step):
        for left in range(0, W - side + 1, step):
            s = (integral[top + side, left + side] - integral[top, left + side]
                 - integral[top + side, left] + integral[top, left])
            if s > best:
                best, where = s, (top, left)
    return where[0], where[1], side


def _spread_seconds(rows: List[dict]) -> None:
    """An image's first SDFlow output also made the condition that its other outputs (every tau
    and sample) reuse: give each SDFlow row the mean over all of them, seconds per output, rather
    than charging the first tau with it."""
    ours = [r for r in rows if r["method"] == "sdflow"]
    count = sum(r["samples"] for r in ours)
    if count:
        mean = sum(r["seconds"] * r["samples"] for r in ours) / count
        for r in ours:
            r["seconds"] = mean


def _fit_pair(hr: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """The HR that the LR is the x4 of: the HR itself when LR = ceil(HR / 4) (sdflow's and
    MATLAB's convention, a partial last LR pixel), or the HR cropped to 4 x LR when LR =
    floor(HR / 4) (the mod-crop of BasicSR and of Set14 / BSD100-style test sets)."""
    (H, W), (h, w) = hr.shape[:2], lr.shape[:2]
    ceil, floor = (math.ceil(H / SCALE), math.ceil(W / SCALE)), (H // SCALE, W // SCALE)
    if (h, w) == ceil:
        return hr
    if (h, w) == floor and min(h, w) > 0:
        return hr[:SCALE * h, :SCALE * w]
    raise _PairError(f"sizes do not match x{SCALE}: HR {W}x{H}, LR {w}x{h} (expected LR "
                     f"{ceil[1]}x{ceil[0]}, or {floor[1]}x{floor[0]} with the HR cropped to 4x it)")


class _Run:
    """One evaluation's fixed settings; `evaluate_pair` does one image in both directions."""

    def __init__(self, model, taus, samples, seed, lpips):
        self.model, self.taus, self.samples, self.seed, self.lpips = model, taus, samples, seed, lpips
        self.modcropped: List[str] = []   # pairs whose HR was cropped to 4 x LR
        self.device = model.device if model is not None else torch.device("cpu")
        self.dtype = model.dtype if model is not None else torch.float32

    def _conditions(self, mode: str, x: torch.Tensor) -> Optional[dict]:
        """The dict in which every tau and sample of x shares x's condition (it does not depend
        on tau), or None when that would hold too much memory."""
        from sdflow.inference import Options, _shared_conditions

        return _shared_conditions(self.model, x, Options(mode=mode), len(self.taus) * self.samples)

    def _sample(self, mode: str, x: torch.Tensor, tau: float, k: int, conditions: Optional[dict]) -> torch.Tensor:
        from sdflow.inference import Options, sample

        try:
            return sample(self.model, x, Options(mode=mode, tau=tau, seed=self.seed), k, conditions)
        except (RuntimeError, ValueError) as e:  # includes CUDA out-of-memory: this image only
            raise _PairError(f"{mode.upper()} at tau {tau:g} failed ({type(e).__name__}: {e})") from None

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return to_tensor(_as_float(a), device=self.device, dtype=self.dtype)

    def _lpips(self, a: np.ndarray, b: np.ndarray) -> Optional[float]:
        if self.lpips is None:
            return None
        try:
            with torch.inference_mode():
                return float(self.lpips(self._tensor(a).float(), self._tensor(b).float()).item())
        except RuntimeError:  # smaller than AlexNet/VGG's receptive chain allows
            return math.nan

    def evaluate_pair(self, pair: Pair, direction: str, crop: int):
        hr_img, lr_img = _load(pair.hr, "HR"), _load(pair.lr, "LR")
        hr, lr = _pixels(hr_img), _pixels(lr_img)
        hr = _fit_pair(hr, lr)
        if hr.shape != hr_img.rgb.shape:
            self.modcropped.append(pair.name)
        visual = None
        if crop:
            top, left, side = pick_crop(hr, crop)
            if side:
                visual = Visual(pair.name, (top, left, side))
        sr_rows = ds_rows = []
        if direction in ("sr", "both"):
            sr_rows = self._sr(pair.name, hr, lr, (lr_img.bit_depth, lr_img.grayscale), visual)
        if direction in ("ds", "both"):
            ds_rows = self._ds(pair.name, hr, lr, (hr_img.bit_depth, hr_img.grayscale), visual)
        return sr_rows, ds_rows, visual

    # --- SR ---

    def _sr(self, name, hr, lr, kind, visual):
        H, W = hr.shape[:2]
        x = self._tensor(lr)

        def finish(y: torch.Tensor) -> np.ndarray:
            return _finish(y, kind, (H, W), "SR")

        t0 = time.perf_counter()
        with torch.inference_mode():
            bic = finish(bicubic_up(x, SCALE))
        bic_time = time.perf_counter() - t0
        rows = [self._sr_row(name, "bicubic", None, [bic], hr, lr, [bic_time])]
        if visual is not None:
            top, left, side = visual.box
            cut = _cutter(visual.box)
            lr_cut = _cutter((top // SCALE, left // SCALE, side // SCALE))
            visual.sr.append(Panel("LR input", _display_u8(lr_cut(lr)), "lr"))
            visual.sr.append(Panel("bicubic", _display_u8(cut(bic)), "hr", _caption_sr(rows[-1])))
        conditions = self._conditions("sr", x) if self.model is not None else None
        for tau in (self.taus if self.model is not None else []):
            outs, times = [], []
            for k in range(self.samples):
                t0 = time.perf_counter()
                y = self._sample("sr", x, tau, k, conditions)
                times.append(time.perf_counter() - t0)
                outs.append(finish(y))
            rows.append(self._sr_row(name, "sdflow", tau, outs, hr, lr, times))
            if visual is not None:
                # At tau 0 every sample is the same mode; one panel says all.
                for k, out in enumerate(outs[:1] if tau == 0 else outs[:_REPORT_SAMPLES]):
                    label = f"SDFlow τ={tau:g}" + (f" #{k}" if tau and self.samples > 1 else "")
                    visual.sr.append(Panel(label, _display_u8(_cutter(visual.box)(out)), "hr",
                                           _caption_sr_sample(out, hr)))
        if visual is not None:
            visual.sr.append(Panel("HR (ground truth)", _display_u8(_cutter(visual.box)(hr)), "hr"))
        if conditions is not None:
            _spread_seconds(rows)
        return rows

    def _sr_row(self, name, method, tau, outs, hr, lr, times) -> dict:
        b = SR_BORDER
        per = {
            "psnr_y": [_psnr(o, hr, b, y=True) for o in outs],
            "ssim_y": [_ssim(o, hr, b, y=True) for o in outs],
            "psnr_rgb": [_psnr(o, hr, b) for o in outs],
            "ssim_rgb": [_ssim(o, hr, b) for o in outs],
            "lr_psnr": [self._lr_consistency(o, lr) for o in outs],
            "colour_shift": [colour_shift(o, hr) for o in outs],
        }
        row = {"image": name, "method": method, "tau": tau, "samples": len(outs)}
        row.update({k: _nanmean(v) for k, v in per.items()})
        lp = [self._lpips(o, hr) for o in outs]
        row["lpips"] = None if lp[0] is None else _nanmean(lp)
        row["diversity"] = LEVELS * metrics.diversity(outs) if len(outs) > 1 else None
        row["seconds"] = float(np.mean(times))
        return row

    def _lr_consistency(self, sr: np.ndarray, lr: np.ndarray) -> float:
        with torch.inference_mode():
            t = torch.from_numpy(_as_float(sr)).permute(2, 0, 1)[None]
            down = bicubic_down(t.double(), SCALE)[0].permute(1, 2, 0).numpy()
        return _psnr(np.clip(down, 0, 1), lr, SR_BORDER // SCALE)

    # --- DS ---

    def _ds(self, name, hr, lr, kind, visual):
        h, w = lr.shape[:2]
        y = self._tensor(hr)

        def finish(t: torch.Tensor) -> np.ndarray:
            return _finish(t, kind, (h, w), "DS")

        real = _lr_stats(lr)
        rows = [{"image": name, "method": "real LR", "tau": None, "samples": None, **real}]
        t0 = time.perf_counter()
        with torch.inference_mode():
            bic = finish(bicubic_down(y, SCALE))
        rows.append(self._ds_row(name, "bicubic", None, [bic], lr, real, [time.perf_counter() - t0]))
        lr_box = None
        if visual is not None:
            top, left, side = visual.box
            lr_box = (top // SCALE, left // SCALE, side // SCALE)
            visual.ds.append(Panel("HR input", _display_u8(_cutter(visual.box)(hr)), "hr"))
            visual.ds.append(Panel("bicubic", _display_u8(_cutter(lr_box)(bic)), "lr",
                                   _caption_ds(rows[-1])))
        conditions = self._conditions("ds", y) if self.model is not None else None
        for tau in (self.taus if self.model is not None else []):
            outs, times = [], []
            for k in range(self.samples):
                t0 = time.perf_counter()
                t = self._sample("ds", y, tau, k, conditions)
                times.append(time.perf_counter() - t0)
                outs.append(finish(t))
            rows.append(self._ds_row(name, "sdflow", tau, outs, lr, real, times))
            if visual is not None:
                # Unlike SR, DS at tau 0 still draws a mixture component per sample.
                for k, out in enumerate(outs[:_REPORT_SAMPLES]):
                    label = f"SDFlow τ={tau:g}" + (f" #{k}" if self.samples > 1 else "")
                    one = {"psnr_rgb": _psnr(out, lr), **_lr_stats(out)}
                    visual.ds.append(Panel(label, _display_u8(_cutter(lr_box)(out)), "lr",
                                           _caption_ds(one)))
        if visual is not None:
            visual.ds.append(Panel("real LR", _display_u8(_cutter(lr_box)(lr)), "lr",
                                   _caption_ds({"psnr_rgb": None, **real})))
        if conditions is not None:
            _spread_seconds(rows)
        return rows

    def _ds_row(self, name, method, tau, outs, lr, real, times) -> dict:
        stats = [_lr_stats(o) for o in outs]
        row = {"image": name, "method": method, "tau": tau, "samples": len(outs),
               "psnr_rgb": _nanmean([_psnr(o, lr) for o in outs]),
               "ssim_rgb": _nanmean([_ssim(o, lr) for o in outs])}
        for key in ("noise", "lapvar", "grad"):
            row[key] = float(np.mean([s[key] for s in stats]))
            row[f"{key}_gap"] = abs(row[key] - real[key])
        row["diversity"] = LEVELS * metrics.diversity(outs) if len(outs) > 1 else None
        row["seconds"] = float(np.mean(times))
        return row


_REPORT_SAMPLES = 3  # sample panels per tau in the report; more only widen the page


def _finish(y: torch.Tensor, kind: Tuple[int, bool], size: Tuple[int, int], what: str) -> np.ndarray:
    """Model/bicubic output [1,3,h,w] in [-1, 1] -> the pixels `sdflow sr/ds` would store for a
    source of `kind` = (bit depth, grayscale), cut to `size`; gray stays replicated to 3 channels
    as the reference images are read."""
    if not bool(torch.isfinite(y).all()):
        raise _PairError(f"{what} output is not finite (NaN or Inf); try a lower tau")
    depth, gray = kind
    a = ((y[0].detach().float().cpu() + 1) / 2).permute(1, 2, 0).numpy()[:size[0], :size[1]]
    if gray:
        a = np.repeat(luminance(np.ascontiguousarray(a))[..., None], 3, axis=2)
    # C order like the reference images: numpy's matmul (the Y conversion) may sum in another
    # order for other strides, which turns identical pixels into a finite PSNR-Y of ~330 dB.
    return np.ascontiguousarray(quantize(a, 16 if depth == 16 else 8))


def _cutter(box):
    top, left, side = box
    return lambda a: a[top:top + side, left:left + side]


def colour_shift(out: np.ndarray, ref: np.ndarray) -> float:
    """The largest per-channel difference of mean colour, in 8-bit levels: a global tint or
    brightness change that PSNR barely shows on a textured image. Gray images have one
    channel."""
    a, b = _as_float(out), _as_float(ref)
    axes = tuple(range(a.ndim - 1)) if a.ndim == 3 else None
    return float(LEVELS * np.max(np.abs(np.mean(a, axis=axes) - np.mean(b, axis=axes))))


def _lr_stats(a: np.ndarray) -> dict:
    return {"noise": LEVELS * metrics.noise_sigma(a),
            "lapvar": LEVELS ** 2 * metrics.laplacian_variance(a),
            "grad": LEVELS * metrics.mean_gradient_magnitude(a)}


def _caption_sr(row: dict) -> str:
    return f"PSNR-Y {format_value(row['psnr_y'], 2)} dB"


def _caption_sr_sample(out: np.ndarray, hr: np.ndarray) -> str:
    return f"PSNR-Y {format_value(_psnr(out, hr, SR_BORDER, y=True), 2)} dB"


def _caption_ds(row: dict) -> str:
    parts = []
    if row.get("psnr_rgb") is not None:
        parts.append(f"PSNR {format_value(row['psnr_rgb'], 2)} dB")
    parts.append(f"noise {format_value(row['noise'], 2)}")
    return ", ".join(parts)


# ----- tables and files -------------------------------------------------------------------------

def format_value(v, digits: int) -> str:
    """A table cell: '' for a missing value, 'inf' for infinity (identical images)."""
    if not _present(v):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_tau(tau) -> str:
    return "" if tau is None else f"{tau:g}"


def _method_label(row: dict) -> str:
    if row["method"] == "sdflow":
        return f"SDFlow tau={format_tau(row['tau'])}"
    return row["method"]


def format_table(rows: List[dict], columns: Sequence[Column], markdown: bool = False,
                 first: str = "method") -> str:
    """Rows as a text table (aligned columns) or a Markdown table. `first` is "method" for mean
    rows, "image" for per-image rows (then the method follows)."""
    heads = ["image", "method"] if first == "image" else ["method"]
    heads += ["images"] if first == "method" else []
    heads += [c.title + ({"+": " ↑", "-": " ↓"}.get(c.better, "") if markdown else "")
              for c in columns]
    body = []
    for r in rows:
        cells = [r["image"], _method_label(r)] if first == "image" else [_method_label(r)]
        cells += [str(r.get("images", ""))] if first == "method" else []
        cells += [format_value(r.get(c.key), c.digits) for c in columns]
        body.append(cells)
    if markdown:
        def line(cells):
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        n_left = len(heads) - len(columns)
        rule = "|" + "|".join(["---"] * n_left + ["---:"] * len(columns)) + "|"
        return "\n".join([line(heads), rule] + [line(b) for b in body])
    widths = [max(len(x) for x in col) for col in zip(heads, *body)]
    n_left = len(heads) - len(columns)

    def fmt(cells):
        return "  ".join(c.ljust(wd) if i < n_left else c.rjust(wd)
                         for i, (c, wd) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(heads), "  ".join("-" * wd for wd in widths)] + [fmt(b) for b in body])


def _json_value(v):
    # Strict JSON has no inf or NaN: inf (identical images) becomes the string "inf", NaN null.
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


def _json_rows(rows):
    return [{k: _json_value(v) for k, v in r.items()} for r in rows]


def _csv_text(rows: List[dict], keys: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append("" if not _present(v) else repr(float(v)) if isinstance(v, float) else v)
        writer.writerow(cells)
    return buf.getvalue()


def _directions(result: EvalResult) -> List[str]:
    return [d for d in ("sr", "ds") if getattr(result, f"{d}_rows")]


def summary_text(result: EvalResult, markdown: bool = False) -> str:
    """The mean tables (and the notes) as printed after `sdflow eval`."""
    parts = []
    titles = {"sr": f"Super-resolution x{SCALE} (Y: BT.601 luma, {SR_BORDER}-pixel border dropped)",
              "ds": f"Downscaling x{SCALE} (against the real LR; noise, lap-var, grad in 8-bit levels)"}
    for d in _directions(result):
        mean = getattr(result, f"{d}_mean")
        title = titles[d]
        parts.append(f"## {title}" if markdown else title)
        parts.append(format_table(mean, result.columns(d), markdown))
    return "\n\n".join(parts)


def write_outputs(result: EvalResult, out_dir: PathLike, title: Optional[str] = None) -> Dict[str, Path]:
    """Write, under `out_dir`: sr_per_image.csv, sr_mean.csv, ds_per_image.csv, ds_mean.csv (for
    each direction evaluated), results.json, results.md and report.html (+ report_files/).
    Returns {name: path}."""
    from sdflow import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    asked = result.settings.get("direction", "both")
    for d in ("sr", "ds"):
        if asked not in (d, "both"):
            # A table from an earlier run into this folder would read as this run's.
            for kind in ("per_image", "mean"):
                (out / f"{d}_{kind}.csv").unlink(missing_ok=True)
            continue
        cols = [c.key for c in (SR_COLUMNS if d == "sr" else DS_COLUMNS)]
        rows = getattr(result, f"{d}_rows")
        for kind, data, keys in (("per_image", rows, list(KEY_COLUMNS) + cols),
                                 ("mean", getattr(result, f"{d}_mean"), list(MEAN_KEY_COLUMNS) + cols)):
            p = out / f"{d}_{kind}.csv"
            p.write_text(_csv_text(data, keys), encoding="utf-8")
            paths[f"{d}_{kind}.csv"] = p

    doc = {"settings": result.settings, "seconds": result.seconds,
           "skipped": [{"image": n, "reason": r} for n, r in result.skipped],
           "unmatched_hr": result.unmatched_hr, "unmatched_lr": result.unmatched_lr,
           "notes": result.notes}
    for d in _directions(result):
        doc[d] = {"columns": [c.key for c in result.columns(d)],
                  "mean": _json_rows(getattr(result, f"{d}_mean")),
                  "per_image": _json_rows(getattr(result, f"{d}_rows"))}
    p = out / "results.json"
    p.write_text(json.dumps(doc, indent=1, allow_nan=False, default=str), encoding="utf-8")
    paths["results.json"] = p

    md = [f"# {title or 'sdflow evaluation'}", ""]
    md += [f"- {k}: {_json_value(v)}" for k, v in result.settings.items()]
    md += [f"- note: {n}" for n in result.notes]
    md += [f"- skipped {n}: {r}" for n, r in result.skipped]
    md += [f"- HR without LR partner: {n}" for n in result.unmatched_hr]
    md += [f"- LR without HR partner: {n}" for n in result.unmatched_lr]
    md += ["", summary_text(result, markdown=True)]
    for d in _directions(result):
        md += ["", f"## Per image: {d.upper()}", "",
               format_table(getattr(result, f"{d}_rows"), result.columns(d), True, first="image")]
    p = out / "results.md"
    p.write_text("\n".join(md) + "\n", encoding="utf-8")
    paths["results.md"] = p

    paths["report.html"] = report.write_report(result, out, title=title)
    return paths


def evaluate_folders(hr_dir: PathLike, lr_dir: PathLike, out_dir: Optional[PathLike] = None,
                     model=None, max_images: Optional[int] = None, log: Optional[Log] = None,
                     exclude: Optional[PathLike] = None, **kwargs) -> EvalResult:
    """match_folders + run_evaluation (+ write_outputs when `out_dir` is given); unmatched names
    are logged and recorded. Images under `exclude` (default: `out_dir`, whose report images a
    second run would otherwise take for test images) are not read. `kwargs` go to
    `run_evaluation`."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    m = match_folders(hr_dir, lr_dir, exclude=exclude if exclude is not None else out_dir)
    for n in m.unmatched_hr:
        log(f"no LR image for HR {n}")
    for n in m.unmatched_lr:
        log(f"no HR image for LR {n}")
    for n in m.duplicates:
        log(f"left out {n}: another file of its folder has the same name")
    pairs = m.pairs[:max_images] if max_images else m.pairs
    settings = {"hr": str(hr_dir), "lr": str(lr_dir), **kwargs.pop("settings", {})}
    result = run_evaluation(pairs, model, log=log, settings=settings, **kwargs)
    result.unmatched_hr, result.unmatched_lr = m.unmatched_hr, m.unmatched_lr
    result.skipped += [(d, "another file of its folder has the same name") for d in m.duplicates]
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


# ----- LPIPS ------------------------------------------------------------------------------------

# torchvision's layer lists (indices matter: they are the state-dict keys), and the ReLU outputs
# LPIPS compares (Zhang et al. 2018): AlexNet relu1..relu5, VGG-16 relu1_2 .. relu5_3.
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 64, 192, 5, 1, 2), ("relu",),
         ("pool", 3, 2), ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1),
         ("relu",), ("conv", 256, 256, 3, 1, 1), ("relu",)]
_VGG_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_BACKBONES = {"alex": (_ALEX, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
              "vgg": (None, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512))}


def _vgg_layers():
    layers, c_in = [], 3
    for v in _VGG_PLAN:
        if v == "M":
            layers.append(("pool", 2, 2))
        else:
            layers += [("conv", c_in, v, 3, 1, 1), ("relu",)]
            c_in = v
    return layers


def _build(spec):
    mods = []
    for s in spec:
        if s[0] == "conv":
            mods.append(nn.Conv2d(s[1], s[2], s[3], stride=s[4], padding=s[5]))
        elif s[0] == "relu":
            mods.append(nn.ReLU())
        else:
            mods.append(nn.MaxPool2d(s[1], stride=s[2]))
    return nn.Sequential(*mods)


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018): unit-normalised backbone activations of both images, squared
    differences weighted by learned 1x1 convolutions, averaged over space and summed over layers.
    Inputs are [N,3,H,W] in [-1, 1]; the output is [N]. No weights ship with sdflow: see
    `load_lpips` for the files it reads."""

    # The backbone's ImageNet input normalisation, expressed for inputs in [-1, 1].
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in _BACKBONES:
            raise ValueError(f"net must be one of {tuple(_BACKBONES)}, got {net!r}")
        spec, self.taps, channels = _BACKBONES[net]
        self.net = net
        self.features = _build(spec if spec is not None else _vgg_layers())
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x):
        x = (x - self.shift) / self.scale
        out, last = [], self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                # The epsilon is LPIPS's own; it keeps all-zero activations at 0 instead of NaN.
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if i == last:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0
        for lin, a, b in zip(self.lins, self._taps(x), self._taps(y)):
            total = total + lin((a - b).pow(2)).mean((2, 3))
        return total.flatten()


def _lpips_key(key: str) -> Optional[str]:
    """Our name for a key of the files load_lpips accepts; None for keys it does not need."""
    parts = key.split(".")
    if parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):
        return f"features.{parts[2]}.{parts[3]}"            # the lpips package: net.sliceK.N.weight
    if parts[0] == "features" and len(parts) == 3:
        return key                                          # torchvision: features.N.weight
    if parts[0].startswith("lin") and parts[0][3:].isdigit():
        return f"lins.{parts[0][3:]}.{parts[-1]}"           # linK.model.1.weight or linK.weight
    return None


def load_lpips(path: PathLike, device="cpu") -> LPIPS:
    """An LPIPS network with the weights in `path` (.pth / .pt via torch.load with weights_only, or
    .safetensors). The file must hold the backbone and the five linear layers, as
    `torch.save(lpips.LPIPS(net="alex").state_dict(), path)` of the `lpips` package writes it
    (keys net.sliceK.N.*, linK.model.1.weight); torchvision-style backbone keys (features.N.*) next
    to the linK.* keys work too. The backbone (AlexNet or VGG-16) is told by its keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LPIPS weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        raw = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    state = {}
    for k, v in raw.items():
        ours = _lpips_key(k)
        if ours is not None:
            state[ours] = v
    net = "vgg" if "features.28.weight" in state else "alex"
    model = LPIPS(net)
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ValueError(f"{path}: not a complete LPIPS ({net}) state dict; missing "
                         f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    return model.to(device).eval()
