"""An evaluation's tables: printed, and written as CSV, JSON and Markdown beside the HTML report."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sdflow.config import SCALE
from sdflow.evaluation import report
from sdflow.evaluation.pairs import PathLike
from sdflow.evaluation.results import (DS_COLUMNS, KEY_COLUMNS, MEAN_KEY_COLUMNS, SR_BORDER, SR_COLUMNS, Column,
                                       EvalResult, format_value, json_value, method_label, present)


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
        cells = [r["image"], method_label(r)] if first == "image" else [method_label(r)]
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


def _json_rows(rows):
    return [{k: json_value(v) for k, v in r.items()} for r in rows]


def _csv_text(rows: List[dict], keys: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append("" if not present(v) else repr(float(v)) if isinstance(v, float) else v)
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
    md += [f"- {k}: {json_value(v)}" for k, v in result.settings.items()]
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
