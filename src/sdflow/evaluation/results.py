"""Rows of an evaluation and what reads them: the metric columns, the result of a run, the means
over images, and the formatting of a value for tables and reports."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

DIRECTIONS = ("sr", "ds", "both")
# SR is scored without a border of this many HR pixels, the SR literature's convention for x4.
SR_BORDER = 4


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
    Column("diversity_tex", "diversity (textured)", 3),
    Column("best_gain", "best-of-N gain", 2),
    Column("worst_gain", "worst-of-N gain", 2),
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


# ----- results ---------------------------------------------------------------------------------


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
        return tuple(c for c in cols if any(present(r.get(c.key)) for r in rows))


def present(v) -> bool:
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
            values = [r.get(c.key) for r in group if present(r.get(c.key))]
            with np.errstate(invalid="ignore"):
                mean[c.key] = float(np.mean(values)) if values else None
        out.append(mean)
    return sorted(out, key=_method_order)


# ----- values ------------------------------------------------------------------------------------


def format_value(v, digits: int) -> str:
    """A table cell: '' for a missing value, 'inf' for infinity (identical images)."""
    if not present(v):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_tau(tau) -> str:
    return "" if tau is None else f"{tau:g}"


def method_label(row: dict) -> str:
    if row["method"] == "sdflow":
        return f"SDFlow tau={format_tau(row['tau'])}"
    return row["method"]


def json_value(v):
    # Strict JSON has no inf or NaN: inf (identical images) becomes the string "inf", NaN null.
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v
