"""The scorer: every output, the model's or a bicubic baseline's, is quantised here as `sdflow
sr/ds` would write it (`quantised`) and scored against its reference, and `run_evaluation` does
so for every pair, tau and sample through a `sdflow.pipeline.Pipeline`.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from sdflow import metrics
from sdflow.config import SCALE
from sdflow.evaluation.lpips import LPIPS, load_lpips
from sdflow.evaluation.pairs import Pair, PairError, PathLike, fit_pair, load_side, match_folders
from sdflow.evaluation.results import (DIRECTIONS, DS_COLUMNS, SR_BORDER, SR_COLUMNS, EvalResult, Panel, Visual,
                                       format_value, present)
from sdflow.evaluation.tables import write_outputs
from sdflow.imageio import Image, luminance, quantize, to_tensor
from sdflow.pipeline import Pipeline, Prepared
from sdflow.resize import downscale as bicubic_down, upscale as bicubic_up

Log = Callable[[str], None]


# The 11 x 11 window of metrics.ssim must fit after the border crop.
_SSIM_MIN = 2 * metrics.SSIM_RADIUS + 1

LEVELS = 255.0


def as_pipeline(model) -> Optional[Pipeline]:
    """`model` as a pipeline: a Pipeline itself, an SDFlow at its own precision (fp32 / fp64: the
    model's results), or None."""
    if model is None or isinstance(model, Pipeline):
        return model
    return Pipeline(model, "fp64" if model.dtype == torch.float64 else "fp32")


def run_evaluation(pairs: Sequence[Pair], model=None, *, taus: Sequence[float] = (0.0, 0.8),
                   samples: int = 1, seed: int = 0, direction: str = "both",
                   lpips: Union["LPIPS", PathLike, None] = None, crop_size: int = 128,
                   report_images: int = 12, progress: bool = True, log: Optional[Log] = None,
                   settings: Optional[dict] = None) -> EvalResult:
    """Score the bicubic baselines, and `model` (a Pipeline or an SDFlow, `as_pipeline`; None for
    the baselines alone) at every tau with `samples` samples, on every pair; keep report crops of
    the first `report_images` pairs (`crop_size` HR pixels, the most detailed square of the image).

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
    pipeline = model = as_pipeline(model)

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

    ctx = _Run(pipeline, taus, int(samples), int(seed), lpips)
    # A model in training mode would let ActNorm initialise itself on the test images.
    was_training = pipeline is not None and pipeline.model.training
    if was_training:
        pipeline.model.eval()
    try:
        with tqdm(total=len(pairs), desc="eval", unit="img", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for i, pair in enumerate(pairs):
                bar.set_postfix_str(pair.name[-40:], refresh=False)
                try:
                    sr_rows, ds_rows, visual = ctx.evaluate_pair(
                        pair, direction, crop_size if i < report_images else 0)
                except PairError as e:
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
            pipeline.model.train()
    for d, cols in (("SR", SR_COLUMNS), ("DS", DS_COLUMNS)):
        rows = result.sr_rows if d == "SR" else result.ds_rows
        for c in cols:
            lacking = sorted({r["image"] for r in rows if r.get(c.key) is not None and not present(r[c.key])})
            if lacking and any(present(r.get(c.key)) for r in rows):
                result.notes.append(f"{d} {c.title}: not defined for {len(lacking)} image(s) too small for it "
                                    f"({', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}); "
                                    f"its means are over the other images")
    if ctx.modcropped:
        result.notes.append(f"{len(ctx.modcropped)} HR image(s) cropped to 4x their LR (LR = floor(HR / 4)): "
                            + ", ".join(ctx.modcropped[:5]) + (" ..." if len(ctx.modcropped) > 5 else ""))
    result.seconds = time.perf_counter() - started
    return result


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


class _Run:
    """One evaluation's fixed settings; `evaluate_pair` does one image in both directions."""

    def __init__(self, pipeline: Optional[Pipeline], taus, samples, seed, lpips):
        self.pipeline, self.taus, self.samples, self.seed, self.lpips = pipeline, taus, samples, seed, lpips
        self.modcropped: List[str] = []   # pairs whose HR was cropped to 4 x LR
        self.device = pipeline.device if pipeline is not None else torch.device("cpu")
        self.dtype = pipeline.dtype if pipeline is not None else torch.float32

    def _prepared(self, x: torch.Tensor) -> Optional[Prepared]:
        """x for every tau and sample, which share its condition (it does not depend on tau)."""
        if self.pipeline is None:
            return None
        return self.pipeline.prepare(x, keep=len(self.taus) * self.samples > 1)

    def _sample(self, mode: str, image: Prepared, tau: float, k: int) -> torch.Tensor:
        """Sample k, drawn with seed + k as by `sdflow sr/ds --seed`."""
        try:
            if mode == "sr":
                return image.super_resolve(tau, self.seed + k)
            return image.downscale(tau, self.seed + k)
        except (RuntimeError, ValueError) as e:  # includes CUDA out-of-memory: this image only
            raise PairError(f"{mode.upper()} at tau {tau:g} failed ({type(e).__name__}: {e})") from None

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
        hr_img, lr_img = load_side(pair.hr, "HR"), load_side(pair.lr, "LR")
        hr, lr = _pixels(hr_img), _pixels(lr_img)
        hr = fit_pair(hr, lr)
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
            return quantised(y, kind, (H, W), "SR")

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
        image = self._prepared(x)
        diverse = image is not None and self.samples > 1 and any(t > 0 for t in self.taus)
        mask = metrics.texture_mask(hr) if diverse else None
        mode_psnr = None   # PSNR-Y of the tau-0 output, the reference of best-of-N
        for tau in (self.taus if image is not None else []):
            outs, times = [], []
            for k in range(self.samples):
                t0 = time.perf_counter()
                y = self._sample("sr", image, tau, k)
                times.append(time.perf_counter() - t0)
                outs.append(finish(y))
            rows.append(self._sr_row(name, "sdflow", tau, outs, hr, lr, times, mask))
            if tau == 0:
                mode_psnr = rows[-1]["psnr_y"]
            if visual is not None:
                # At tau 0 every sample is the same mode; one panel says all.
                for k, out in enumerate(outs[:1] if tau == 0 else outs[:_REPORT_SAMPLES]):
                    label = f"SDFlow τ={tau:g}" + (f" #{k}" if tau and self.samples > 1 else "")
                    visual.sr.append(Panel(label, _display_u8(_cutter(visual.box)(out)), "hr",
                                           _caption_sr_sample(out, hr)))
                if tau > 0 and len(outs) > 1:
                    visual.sr.append(_spread_panel(tau, [_cutter(visual.box)(o) for o in outs]))
        if diverse:
            if mode_psnr is None:  # tau 0 not asked for: its output is the reference all the same
                mode_psnr = sr_scores(finish(self._sample("sr", image, 0.0, 0)), hr, lr, ("psnr_y",))["psnr_y"]
            for r in rows:
                if r["method"] == "sdflow" and r["tau"] > 0:
                    r["best_gain"], r["worst_gain"] = (v - mode_psnr for v in r["_psnr_y_range"])
        for r in rows:
            r.pop("_psnr_y_range", None)
        if visual is not None:
            visual.sr.append(Panel("HR (ground truth)", _display_u8(_cutter(visual.box)(hr)), "hr"))
        if image is not None and image.shares("sr"):
            _spread_seconds(rows)
        return rows

    def _sr_row(self, name, method, tau, outs, hr, lr, times, texture=None) -> dict:
        """Scores averaged over the samples `outs`; with 2 or more, their spread over the whole
        image and over the `texture` mask, and (kept apart for `_sr` to turn into the best- and
        worst-of-N gains) the best and worst sample's PSNR-Y."""
        per = [sr_scores(o, hr, lr) for o in outs]
        row = {"image": name, "method": method, "tau": tau, "samples": len(outs)}
        row.update({k: _nanmean([p[k] for p in per]) for k in SR_SCORES})
        lp = [self._lpips(o, hr) for o in outs]
        row["lpips"] = None if lp[0] is None else _nanmean(lp)
        row["diversity"] = row["diversity_tex"] = row["best_gain"] = row["worst_gain"] = None
        if len(outs) > 1:
            spread = metrics.spread_map(outs)
            row["diversity"] = LEVELS * float(spread.mean())
            if texture is not None:
                row["diversity_tex"] = LEVELS * float(spread[texture].mean())
            finite = [p["psnr_y"] for p in per if not math.isnan(p["psnr_y"])]
            row["_psnr_y_range"] = (max(finite), min(finite)) if finite else (math.nan, math.nan)
        row["seconds"] = float(np.mean(times))
        return row

    # --- DS ---

    def _ds(self, name, hr, lr, kind, visual):
        h, w = lr.shape[:2]
        y = self._tensor(hr)

        def finish(t: torch.Tensor) -> np.ndarray:
            return quantised(t, kind, (h, w), "DS")

        real = lr_stats(lr)
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
        image = self._prepared(y)
        for tau in (self.taus if image is not None else []):
            outs, times = [], []
            for k in range(self.samples):
                t0 = time.perf_counter()
                t = self._sample("ds", image, tau, k)
                times.append(time.perf_counter() - t0)
                outs.append(finish(t))
            rows.append(self._ds_row(name, "sdflow", tau, outs, lr, real, times))
            if visual is not None:
                # Unlike SR, DS at tau 0 still draws a mixture component per sample.
                for k, out in enumerate(outs[:_REPORT_SAMPLES]):
                    label = f"SDFlow τ={tau:g}" + (f" #{k}" if self.samples > 1 else "")
                    one = {"psnr_rgb": _psnr(out, lr), **lr_stats(out)}
                    visual.ds.append(Panel(label, _display_u8(_cutter(lr_box)(out)), "lr",
                                           _caption_ds(one)))
        if visual is not None:
            visual.ds.append(Panel("real LR", _display_u8(_cutter(lr_box)(lr)), "lr",
                                   _caption_ds({"psnr_rgb": None, **real})))
        if image is not None and image.shares("ds"):
            _spread_seconds(rows)
        return rows

    def _ds_row(self, name, method, tau, outs, lr, real, times) -> dict:
        per = [ds_scores(o, lr) for o in outs]
        row = {"image": name, "method": method, "tau": tau, "samples": len(outs),
               "psnr_rgb": _nanmean([p["psnr_rgb"] for p in per]),
               "ssim_rgb": _nanmean([p["ssim_rgb"] for p in per])}
        for key in ("noise", "lapvar", "grad"):
            row[key] = float(np.mean([p[key] for p in per]))
            row[f"{key}_gap"] = abs(row[key] - real[key])
        row["diversity"] = LEVELS * metrics.diversity(outs) if len(outs) > 1 else None
        row["seconds"] = float(np.mean(times))
        return row


_REPORT_SAMPLES = 3  # sample panels per tau in the report; more only widen the page


def quantised(y: torch.Tensor, kind: Tuple[int, bool] = (8, False), size: Optional[Tuple[int, int]] = None,
              what: str = "output") -> np.ndarray:
    """Model/bicubic output [1,3,h,w] in [-1, 1] -> the pixels `sdflow sr/ds` would store for a
    source of `kind` = (bit depth, grayscale), cut to `size`; gray stays replicated to 3 channels
    as the reference images are read. The one place where evaluation and validation quantise."""
    size = size or tuple(y.shape[-2:])
    if not bool(torch.isfinite(y).all()):
        raise PairError(f"{what} output is not finite (NaN or Inf); try a lower tau")
    depth, gray = kind
    a = ((y[0].detach().float().cpu() + 1) / 2).permute(1, 2, 0).numpy()[:size[0], :size[1]]
    if gray:
        a = np.repeat(luminance(np.ascontiguousarray(a))[..., None], 3, axis=2)
    # C order like the reference images: numpy's matmul (the Y conversion) may sum in another
    # order for other strides, which turns identical pixels into a finite PSNR-Y of ~330 dB.
    return np.ascontiguousarray(quantize(a, 16 if depth == 16 else 8))


# Spread maps are drawn white at this many 8-bit levels of per-pixel std and above.
SPREAD_WHITE = 8.0


def _spread_panel(tau: float, crops: List[np.ndarray]) -> Panel:
    """Where the samples of one crop differ: their per-pixel std, black at 0 and white at
    SPREAD_WHITE levels."""
    spread = LEVELS * metrics.spread_map(crops)
    grey = np.clip(np.rint(spread / SPREAD_WHITE * 255), 0, 255).astype(np.uint8)
    return Panel(f"spread τ={tau:g}", np.repeat(grey[..., None], 3, axis=2), "hr",
                 f"mean {spread.mean():.1f} levels over {len(crops)} samples; white = {SPREAD_WHITE:g}+")


def _cutter(box):
    top, left, side = box
    return lambda a: a[top:top + side, left:left + side]

# What `sr_scores` / `ds_scores` compute, in this order (the keys of SR_COLUMNS / DS_COLUMNS).
SR_SCORES = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "lr_psnr", "colour_shift")
DS_SCORES = ("psnr_rgb", "ssim_rgb", "noise", "lapvar", "grad")


def sr_scores(out: np.ndarray, hr: np.ndarray, lr: np.ndarray, keys: Sequence[str] = SR_SCORES) -> dict:
    """The SR scores `keys` of one quantised output against the HR (a SR_BORDER-pixel border
    dropped; Y: BT.601 luma) and, for lr_psnr, against the LR it came from."""
    score = {"psnr_y": lambda: _psnr(out, hr, SR_BORDER, y=True),
             "ssim_y": lambda: _ssim(out, hr, SR_BORDER, y=True),
             "psnr_rgb": lambda: _psnr(out, hr, SR_BORDER),
             "ssim_rgb": lambda: _ssim(out, hr, SR_BORDER),
             "lr_psnr": lambda: lr_consistency(out, lr),
             "colour_shift": lambda: colour_shift(out, hr)}
    return {k: score[k]() for k in keys}


def ds_scores(out: np.ndarray, lr: np.ndarray, keys: Sequence[str] = DS_SCORES) -> dict:
    """The DS scores `keys` of one quantised output: PSNR and SSIM against the real LR over the
    whole image, and its own noise / lap-var / grad statistics (`lr_stats`)."""
    stats = lr_stats(out) if set(keys) & {"noise", "lapvar", "grad"} else {}
    score = {"psnr_rgb": lambda: _psnr(out, lr), "ssim_rgb": lambda: _ssim(out, lr)}
    return {k: stats[k] if k in stats else score[k]() for k in keys}


def lr_consistency(sr: np.ndarray, lr: np.ndarray) -> float:
    """PSNR of the SR output shrunk by bicubic x4 against the LR it came from, 1 LR pixel of
    border dropped (the same 4 HR pixels as SR's)."""
    with torch.inference_mode():
        t = torch.from_numpy(_as_float(sr)).permute(2, 0, 1)[None]
        down = bicubic_down(t.double(), SCALE)[0].permute(1, 2, 0).numpy()
    return _psnr(np.clip(down, 0, 1), lr, SR_BORDER // SCALE)


def colour_shift(out: np.ndarray, ref: np.ndarray) -> float:
    """The largest per-channel difference of mean colour, in 8-bit levels: a global tint or
    brightness change that PSNR barely shows on a textured image. Gray images have one
    channel."""
    a, b = _as_float(out), _as_float(ref)
    axes = tuple(range(a.ndim - 1)) if a.ndim == 3 else None
    return float(LEVELS * np.max(np.abs(np.mean(a, axis=axes) - np.mean(b, axis=axes))))


def lr_stats(a: np.ndarray) -> dict:
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
