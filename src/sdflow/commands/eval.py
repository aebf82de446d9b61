"""`sdflow eval`: score SR and DS on paired HR / LR folders, beside the bicubic baselines.

Writes OUT/{sr,ds}_per_image.csv, OUT/{sr,ds}_mean.csv, OUT/results.json, OUT/results.md and
OUT/report.html (+ OUT/report_files/), and prints the tables of means. Without --model (and no
bundled model) only the baselines are scored. Scoring rules: `sdflow.evaluation`.

Exit status: 0 when every image was scored, 1 when any pair was skipped (unreadable, sizes that do
not match x4, non-finite model output) or an image had no partner, 2 for usage errors.
"""
from __future__ import annotations

import sys
from pathlib import Path

from sdflow.commands.options import (LoadError, add_device_argument, add_precision_argument, default_model_source,
                                     load_pipeline, non_negative_float, non_negative_int, positive_int, seed,
                                     usage_error)
from sdflow.config import seed_range_error


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate SR and DS on paired folders, with bicubic baselines and an HTML report",
        description="Evaluate super-resolution (LR -> HR) and realistic downscaling (HR -> LR) on "
                    "paired folders, matched by relative name without extension (or up to a "
                    "scale tag: 0801.png / 0801x4.png, Canon_001_HR.png / Canon_001_LR4.png), with "
                    "bicubic baselines, per-tau metrics, CSV / JSON / Markdown tables and an HTML report.")
    p.add_argument("--hr", type=Path, required=True, help="folder of ground-truth HR images")
    p.add_argument("--lr", type=Path, required=True,
                   help="folder of the matching real LR images: ceil(H/4) x ceil(W/4), or "
                        "floor(H/4) x floor(W/4) with the HR cropped to 4x the LR (mod-crop)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--model", "-m", default=None, metavar="SRC",
                   help="SDFlow to evaluate (.safetensors, training checkpoint or run folder, or the "
                        "authors' folder; default: the bundled model); 'none' scores only the "
                        "bicubic baselines")
    p.add_argument("--direction", choices=("sr", "ds", "both"), default="both",
                   help="what to evaluate (default: both)")
    p.add_argument("--tau", type=non_negative_float, nargs="+", default=[0.0, 0.8], metavar="T",
                   help="sampling temperatures; SR at 0 is the usual headline number (default: 0 0.8)")
    p.add_argument("--samples", "-n", type=positive_int, default=1, metavar="N",
                   help="samples per image and tau; diversity needs 2 or more (default: 1)")
    p.add_argument("--seed", type=seed, default=0, metavar="S",
                   help="sample k is drawn with seed S + k, as by `sdflow sr/ds` (default: 0)")
    add_device_argument(p)
    add_precision_argument(p)
    p.add_argument("--lpips-weights", type=Path, default=None, metavar="FILE",
                   help="LPIPS state dict (backbone and linear layers, e.g. "
                        "torch.save(lpips.LPIPS(net='alex').state_dict(), FILE)); without it "
                        "there is no LPIPS column")
    p.add_argument("--max-images", type=positive_int, default=None, metavar="N",
                   help="only the first N pairs (by name)")
    p.add_argument("--crop-size", type=positive_int, default=128, metavar="PX",
                   help="side of the report's example crops in HR pixels, a multiple of 4 "
                        "(default: 128)")
    p.add_argument("--report-images", type=non_negative_int, default=12, metavar="N",
                   help="images with example crops in the report (default: 12)")
    p.add_argument("--title", default=None, help="title of the report")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from sdflow import evaluation
    from sdflow.pipeline import resolve_device

    if error := seed_range_error(args.seed, args.samples):
        return usage_error(error)
    for flag, folder in (("--hr", args.hr), ("--lr", args.lr)):
        if not folder.is_dir():
            return usage_error(f"{flag}: no such folder: {folder}")
    if args.hr.resolve() == args.lr.resolve():
        # Every image would be paired with itself, and no pair is HR and LR x4 apart.
        return usage_error(f"--hr and --lr are the same folder ({args.hr}); give the HR images and "
                           f"their LR versions in two folders")
    if args.lpips_weights is not None and not args.lpips_weights.is_file():
        return usage_error(f"--lpips-weights: no such file: {args.lpips_weights}")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return usage_error(str(e))

    matching = evaluation.match_folders(args.hr, args.lr, exclude=args.output)
    if not matching.pairs:
        return usage_error(f"no image in {args.hr} has a partner of the same name in {args.lr} "
                           f"(or the same up to a scale tag, as 0801.png / 0801x4.png)")

    if args.model is None:
        source = default_model_source()
    else:
        source = None if args.model.lower() == "none" else args.model
    pipeline = None
    if source is not None:
        try:
            # What `sdflow sr/ds` run with these options, so the scores are those of the files they write.
            pipeline = load_pipeline(source, device, args.precision)
        except LoadError as e:
            return usage_error(str(e))
    lpips = None
    if args.lpips_weights is not None:
        try:
            lpips = evaluation.load_lpips(args.lpips_weights, device=device)
        except Exception as e:  # noqa: BLE001 - torch.load's errors on a foreign file vary
            return usage_error(f"cannot load the LPIPS weights: {type(e).__name__}: {e}")

    settings = {"model": str(source) if source is not None else None,
                "precision": pipeline.precision if pipeline is not None else None}
    result = evaluation.evaluate_folders(
        args.hr, args.lr, None, model=pipeline, max_images=args.max_images, taus=args.tau,
        samples=args.samples, seed=args.seed, direction=args.direction, lpips=lpips,
        crop_size=args.crop_size, report_images=args.report_images, progress=not args.quiet,
        settings=settings, exclude=args.output)
    paths = evaluation.write_outputs(result, args.output, title=args.title)

    print(evaluation.summary_text(result))
    scored = len({r["image"] for r in result.sr_rows + result.ds_rows})
    print(f"\n{scored} image pair(s) scored in {result.seconds:.1f} s; report: {paths['report.html']}")
    problems = ([f"skipped {n}: {r}" for n, r in result.skipped]
                + [f"no LR partner: {n}" for n in result.unmatched_hr]
                + [f"no HR partner: {n}" for n in result.unmatched_lr])
    if problems:
        print(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems), file=sys.stderr)
    return 0 if result.ok else 1
