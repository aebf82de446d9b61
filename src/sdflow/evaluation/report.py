"""The HTML report of an evaluation: one page that opens from the file alone.

    report.write_report(result, "out")     # out/report.html + out/report_files/*.png

Layout, top to bottom: title and settings; notes (LPIPS missing, skipped or unmatched images); the
tables of means for SR and for DS (best value per column in bold); side by side, the plots of PSNR
against tau for SR and DS, each bicubic baseline a dashed line in its curve's colour; example crops
per image (SR: LR input, bicubic, the SDFlow samples at each tau, ground truth; DS: HR input,
bicubic, SDFlow samples, real LR), LR crops enlarged to the HR crops' size with square pixels; the
per-image tables, folded.

Self-contained on purpose: CSS and the plots (SVG) are inline, the crops are PNG files in
report_files/ beside the page, linked relatively, so the folder can be zipped, mailed or opened
from disk with no server and nothing fetched from the network.
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import numpy as np

from sdflow.config import SCALE
from sdflow.evaluation.results import Column, EvalResult, Panel, format_value, json_value, method_label

__all__ = ["FILES_DIR", "write_report", "render_html", "svg_plot", "nice_ticks", "display_size"]

FILES_DIR = "report_files"
# Crops are shown about this many CSS pixels wide, at a size where every LR pixel is a whole
# number of screen pixels (HR crops are smoothed when their zoom is fractional).
_TARGET_PX = 192
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 24px auto; max-width: 1340px; padding: 0 16px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 28px 0 8px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #555; font-size: 13px; } .meta code { background: #f4f4f4; padding: 0 3px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.best { font-weight: 700; }
.notes { background: #fff8e1; border: 1px solid #f0d98c; padding: 6px 12px; border-radius: 4px; }
.notes li { margin: 2px 0; }
.row { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; } figure img { display: block; border: 1px solid #ccc; }
img.px { image-rendering: pixelated; }
figcaption { font-size: 12px; max-width: 260px; } figcaption b { display: block; }
.kind { font-size: 12px; color: #666; margin: 10px 0 4px; text-transform: uppercase; letter-spacing: .05em; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
details { margin: 8px 0; } summary { cursor: pointer; }
.side { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
"""


# ----- numbers on axes --------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, count: int = 5) -> List[float]:
    """About `count` round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got {lo}, {hi}")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _tick_label(v: float, step: float) -> str:
    digits = max(0, -int(math.floor(math.log10(step)))) if step < 1 else 0
    return f"{v:.{digits}f}"


def svg_plot(series: Sequence[Tuple[str, Sequence[Tuple[float, float]]]],
             baselines: Sequence[Tuple[str, float]] = (), x_label: str = "τ",
             y_label: str = "PSNR (dB)", title: str = "", width: int = 560, height: int = 340) -> str:
    """A line plot as an inline <svg>: `series` are (name, [(x, y), ...]) drawn as lines with
    markers; `baselines` (name, y) are dashed horizontal lines across the plot, baseline i in the
    colour of series i (a method and its reference read as a pair). Points with a non-finite y
    (identical images give PSNR inf) are left out, and so are baselines at a non-finite y; the
    title says how many of each."""
    pts = [(n, sorted((float(x), float(y)) for x, y in p if math.isfinite(y))) for n, p in series]
    dropped = sum(len(p) for _, p in series) - sum(len(p) for _, p in pts)
    base = [(n, float(y), _COLORS[i % len(_COLORS)]) for i, (n, y) in enumerate(baselines)
            if math.isfinite(y)]
    dropped_lines = [n for n, y in baselines if not math.isfinite(y)]
    xs = [x for _, p in pts for x, _ in p] or [0.0, 1.0]
    ys = [y for _, p in pts for _, y in p] + [y for _, y, _ in base] or [0.0, 1.0]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.1, x_hi + 0.1
    y_ticks = nice_ticks(min(ys), max(ys))
    x_ticks = [t for t in nice_ticks(x_lo, x_hi) if x_lo - 1e-9 <= t <= x_hi + 1e-9]
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    # The legend sits in lines above the plot area, so it never hides a curve.
    legend = [(n, c, True) for n, _, c in base]
    legend += [(n, _COLORS[i % len(_COLORS)], False) for i, (n, _) in enumerate(pts)]
    left, right, bottom = 58, 16, 44
    spots, lx, line = [], left, 0
    for name, _, _ in legend:
        item = 40 + 7 * len(name)  # about 7 px per character at 12 px
        if lx > left and lx + item > width - right:
            lx, line = left, line + 1
        spots.append((lx, line))
        lx += item
    legend_top = 26 if title else 8
    top = legend_top + 16 * (line + 1) + (6 if legend else 0)
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y):
        return top + (y_hi - y) / (y_hi - y_lo) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img">']
    if title:
        parts = ([f"{dropped} infinite point{'s' * (dropped > 1)}"] if dropped else []) + \
            [f"the {n} line (infinite)" for n in dropped_lines]
        note = f" ({' and '.join(parts)} not drawn)" if parts else ""
        out.append(f'<text x="{left}" y="16" font-weight="600">{html.escape(title + note)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>')
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for t in y_ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
                   f'stroke="#eee"/><text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">'
                   f'{_tick_label(t, y_step)}</text>')
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for t in x_ticks:
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
                   f'stroke="#999"/><text x="{sx(t):.1f}" y="{top + ph + 17}" text-anchor="middle">'
                   f'{_tick_label(t, x_step)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">'
               f'{html.escape(x_label)}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{html.escape(y_label)}</text>')
    for name, y, color in base:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
                   f'stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4" opacity="0.8">'
                   f'<title>{html.escape(name)}: {y:.2f}</title></line>')
    for i, (name, p) in enumerate(pts):
        color = _COLORS[i % len(_COLORS)]
        if len(p) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in p:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}">'
                       f'<title>{html.escape(name)}: {x:g}, {y:.2f}</title></circle>')
    for (name, color, dashed), (lx, line) in zip(legend, spots):
        ly = legend_top + 12 + 16 * line
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                   f'stroke-width="2"{dash}/><text x="{lx + 27}" y="{ly}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


# ----- tables -----------------------------------------------------------------------------------


def _html_table(rows: List[dict], columns: Sequence[Column], first: str = "method") -> str:
    """Like tables.format_table, in HTML; in tables of means the best value of each column with
    a direction is bold (the real-LR reference row does not compete)."""
    best = {}
    if first == "method":
        for c in columns:
            vals = [r.get(c.key) for r in rows if r["method"] != "real LR"]
            vals = [v for v in vals if v is not None and not math.isnan(v)]
            if c.better and len(vals) > 1:
                best[c.key] = max(vals) if c.better == "+" else min(vals)
    arrows = {"+": " ↑", "-": " ↓"}
    heads = (["image"] if first == "image" else []) + ["method"] + (["images"] if first == "method" else [])
    out = ["<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in heads)
           + "".join(f'<th title="{html.escape(c.key)}">{html.escape(c.title + arrows.get(c.better, ""))}</th>'
                     for c in columns) + "</tr></thead><tbody>"]
    for r in rows:
        cells = [html.escape(str(r["image"]))] if first == "image" else []
        cells.append(html.escape(method_label(r).replace("tau=", "τ=")))
        if first == "method":
            cells.append(str(r.get("images", "")))
        tds = "".join(f"<td>{c}</td>" for c in cells)
        for c in columns:
            v = r.get(c.key)
            cls = "num best" if c.key in best and v == best[c.key] else "num"
            tds += f'<td class="{cls}">{format_value(v, c.digits)}</td>'
        out.append(f"<tr>{tds}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# ----- crops ------------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("._")[:60] or "image"


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image as PILImage

    PILImage.fromarray(np.ascontiguousarray(image)).save(path, optimize=False)


def display_size(side: int) -> int:
    """CSS pixels for a crop of `side` HR pixels: a whole multiple of its LR side near _TARGET_PX."""
    lr_side = max(1, side // SCALE)
    return lr_side * max(1, round(_TARGET_PX / lr_side))


def _figure(src: str, panel: Panel, side: int, px: int) -> str:
    caption = f"<b>{html.escape(panel.label)}</b>"
    if panel.caption:
        caption += html.escape(panel.caption)
    native = side if panel.scale == "hr" else max(1, side // SCALE)
    # Square pixels only at whole zooms; a fractional zoom of an HR crop would give uneven ones.
    cls = ' class="px"' if px % native == 0 else ""
    return (f'<figure><img{cls} src="{src}" width="{px}" height="{px}" '
            f'alt="{html.escape(panel.label)}"><figcaption>{caption}</figcaption></figure>')


# ----- the page ---------------------------------------------------------------------------------


def _settings_html(result: EvalResult) -> str:
    items = []
    for k, v in result.settings.items():
        if v is None or v == []:
            continue
        if isinstance(v, (list, tuple)):
            v = ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
        items.append(f"{html.escape(str(k))}: <code>{html.escape(str(json_value(v)))}</code>")
    items.append(f"time: <code>{result.seconds:.1f} s</code>")
    return '<p class="meta">' + " · ".join(items) + "</p>"


def _notes_html(result: EvalResult) -> str:
    lines = [html.escape(n) for n in result.notes]
    lines += [f"skipped <b>{html.escape(n)}</b>: {html.escape(r)}" for n, r in result.skipped]
    lines += [f"HR image without LR partner: <b>{html.escape(n)}</b>" for n in result.unmatched_hr]
    lines += [f"LR image without HR partner: <b>{html.escape(n)}</b>" for n in result.unmatched_lr]
    if not lines:
        return ""
    return '<div class="notes"><ul>' + "".join(f"<li>{x}</li>" for x in lines) + "</ul></div>"


def _plot_for(result: EvalResult, direction: str) -> str:
    mean = result.sr_mean if direction == "sr" else result.ds_mean
    model_rows = [r for r in mean if r["method"] == "sdflow"]
    if not model_rows:
        return ""
    if direction == "sr":
        keys = [("psnr_y", "SDFlow Y"), ("psnr_rgb", "SDFlow RGB")]
        title = "SR, against the HR"
    else:
        keys = [("psnr_rgb", "SDFlow RGB")]
        title = "DS, against the real LR"
    series = [(label, [(r["tau"], r[k]) for r in model_rows if r.get(k) is not None])
              for k, label in keys]
    bic = next((r for r in mean if r["method"] == "bicubic"), None)
    baselines = [(label.replace("SDFlow", "bicubic"), bic[k]) for k, label in keys
                 if bic is not None and bic.get(k) is not None]
    return svg_plot(series, baselines, title=title, y_label="PSNR (dB)")


def render_html(result: EvalResult, images: dict, title: Optional[str] = None) -> str:
    """The page; `images` maps (visual index, "sr"/"ds", panel index) to the crop's relative URL."""
    title = title or "sdflow evaluation"
    from sdflow import __version__

    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", _settings_html(result), _notes_html(result)]
    heads = {"sr": f"Super-resolution ×{SCALE}",
             "ds": f"Downscaling ×{SCALE}"}
    explain = {
        "sr": "Against the HR image. Y: BT.601 luma; a 4-pixel border is dropped. LR-PSNR: the SR "
              "output shrunk by bicubic ×4 against its LR input (consistency). diversity: mean "
              "per-pixel std across samples, 8-bit levels, over the whole image and over its most "
              "detailed quarter (textured). best- / worst-of-N gain: the best / worst sample's "
              "PSNR-Y minus τ=0's. s/sample: seconds per output (the work that an image's taus "
              "and samples share counted once and spread over them).",
        "ds": "Against the real LR. noise: estimated noise σ; lap-var: variance of the Laplacian "
              "(sharpness); grad: mean gradient magnitude; all in 8-bit levels; gaps: per-image "
              "|generated − real|, averaged. The real-LR row is the target.",
    }
    for d in ("sr", "ds"):
        rows = getattr(result, f"{d}_rows")
        if not rows:
            continue
        parts += [f"<h2>{heads[d]}</h2>", f'<p class="meta">{explain[d]}</p>',
                  _html_table(getattr(result, f"{d}_mean"), result.columns(d))]
    plots = [_plot_for(result, d) for d in ("sr", "ds") if getattr(result, f"{d}_rows")]
    if any(plots):
        parts += ["<h2>PSNR against the sampling temperature τ</h2>",
                  '<div class="side">' + "".join(plots) + "</div>"]

    if result.visuals:
        parts.append("<h2>Examples</h2>")
        parts.append('<p class="meta">The most detailed square of each image (largest mean gradient). '
                     'LR crops are enlarged to the HR crops\' size with square pixels; captions give '
                     'the whole image\'s scores.</p>')
    for i, v in enumerate(result.visuals):
        top, left, side = v.box
        px = display_size(side)
        parts.append(f"<h3>{html.escape(v.name)} <span class=\"meta\">HR crop {side}×{side} at "
                     f"x={left}, y={top}; LR crop {side // SCALE}×{side // SCALE}</span></h3>")
        for d, label in (("sr", "super-resolution"), ("ds", "downscaling")):
            panels = getattr(v, d)
            if not panels:
                continue
            figs = [_figure(images[(i, d, j)], p, side, px) for j, p in enumerate(panels)]
            parts.append(f'<div class="kind">{label}</div><div class="row">{"".join(figs)}</div>')

    for d in ("sr", "ds"):
        rows = getattr(result, f"{d}_rows")
        if rows:
            parts.append(f"<details><summary>Per-image results: {d.upper()} ({len(rows)} rows)</summary>"
                         f"{_html_table(rows, result.columns(d), first='image')}</details>")
    parts.append(f'<p class="meta">sdflow {__version__} · {stamp} · tables also in results.md, '
                 f'results.json and the CSV files beside this page</p></body></html>')
    return "\n".join(p for p in parts if p)


def write_report(result: EvalResult, out_dir: Union[str, os.PathLike],
                 title: Optional[str] = None) -> Path:
    """Write out_dir/report.html and its crops in out_dir/report_files/ (PNGs left there by an
    earlier report are removed first). Returns the page's path."""
    out = Path(out_dir)
    files = out / FILES_DIR
    files.mkdir(parents=True, exist_ok=True)
    for old in files.glob("*.png"):
        old.unlink()
    images = {}
    for i, v in enumerate(result.visuals):
        for d in ("sr", "ds"):
            for j, panel in enumerate(getattr(v, d)):
                name = f"{i:03d}_{_safe_name(v.name)}_{d}{j:02d}.png"
                _save_png(files / name, panel.image)
                images[(i, d, j)] = f"{FILES_DIR}/{quote(name)}"
    page = out / "report.html"
    page.write_text(render_html(result, images, title), encoding="utf-8")
    return page
