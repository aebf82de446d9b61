"""`sdflow sr` and `sdflow ds`: super-resolve or realistically downscale files and folders x4.

Exit status: 0 when every image succeeded, 1 when any failed (each named with its reason, and again
in the final summary), 2 for usage errors (missing input, no model, unusable options or device).
Naming and seeding rules: see `sdflow.inference`; precision, tiling and batches: `sdflow.pipeline`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from sdflow.commands.options import (LoadError, add_device_argument, add_precision_argument, default_model_source,
                                     load_pipeline, non_negative_float, non_negative_int, positive_float,
                                     positive_int, seed, usage_error)


def register(sub) -> None:
    # Only argparse here: torch is imported when a command actually runs, so --help stays quick.
    sr = sub.add_parser(
        "sr", help="super-resolve images x4",
        description="Super-resolve images x4 with SDFlow, sampling --samples outputs per image at "
                    "temperature --tau. Writes OUT/<sub-folder>/<stem>_<suffix>[_<k>].<ext>.")
    _add_common(sr, "sr")
    sr.add_argument("--outscale", "-s", type=positive_float, default=None, metavar="S",
                    help="final scale of the output against the input, e.g. 2 or 3.5: the x4 result "
                         "resized by bicubic (antialiased when shrinking) to round(S x input size) "
                         "(default: 4, no resize)")
    sr.add_argument("--blur", type=positive_float, default=None, metavar="W",
                    help="for a model whose content extractor is told the blur it undoes (trained "
                         "with model.extractor_blur=learnt): undo a blur of W LR pixels instead of "
                         "the learnt width; larger sharpens more (default: the learnt width)")
    sr.set_defaults(func=run, mode="sr")

    ds = sub.add_parser(
        "ds", help="downscale images x4 realistically",
        description="Downscale images x4 with SDFlow's learned real-world degradations "
                    "(output ceil(H/4) x ceil(W/4)). Writes OUT/<sub-folder>/<stem>_<suffix>[_<k>].<ext>.")
    _add_common(ds, "ds")
    ds.add_argument("--component", type=non_negative_int, nargs="+", default=None, metavar="K",
                    help="degradation-mixture component(s) to draw from (default: all)")
    ds.add_argument("--sampler", choices=("image", "element"), default="image",
                    help="image: one component per image, as the authors sample; element: one per "
                         "latent element, the mixture density itself (default: image)")
    ds.set_defaults(func=run, mode="ds")


def _add_common(p: argparse.ArgumentParser, mode: str) -> None:
    p.add_argument("-i", "--input", type=Path, required=True,
                   help="an image file, or a folder searched recursively (png, jpg, webp, bmp, tiff)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder; input sub-folders are recreated in it")
    p.add_argument("--model", "-m", default=None, metavar="SRC",
                   help="an sdflow .safetensors file, a training checkpoint or run folder, or the "
                        "authors' folder of .pth files (default: the model bundled with sdflow, "
                        "which --model default also names)")
    p.add_argument("--tau", type=non_negative_float, default=0.8,
                   help="sampling temperature; 0 gives the mode (default: 0.8)")
    p.add_argument("--samples", "-n", type=positive_int, default=1, metavar="N",
                   help="outputs per image, named _0 .. _N-1 when N > 1 (default: 1)")
    p.add_argument("--seed", type=seed, default=0, metavar="S",
                   help="sample k is drawn with seed S + k: the same seed gives the same files; "
                        "S + N - 1 must not exceed 2^64 - 1 (default: 0)")
    add_device_argument(p)
    add_precision_argument(p)
    p.add_argument("--tile", type=_tile_arg, default="auto", metavar="N|auto",
                   help="process in tiles of about N input pixels; auto: only when the image is "
                        "large enough to need it; 0: never (default: auto)")
    p.add_argument("--tile-pad", type=non_negative_int, default=None, metavar="P",
                   help="context pixels around each tile (default: 16 for sr, 64 for ds)")
    p.add_argument("--workers", type=non_negative_int, default=1, metavar="N",
                   help="threads decoding the next images while the model runs (0: none; default 1)")
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                   help="run up to N consecutive same-size images together when they need no "
                        "tiling; each keeps its own noise, so the files match one-at-a-time runs up "
                        "to float rounding. Pays off on a GPU with many small images (default: 1)")
    p.add_argument("--skip-existing", action="store_true",
                   help="keep outputs that are already there (files are written atomically, so they are "
                        "complete) and make only the missing ones: resumes an interrupted run")
    p.add_argument("--suffix", default=None,
                   help=f"added to output names as <stem>_<suffix> (default: {mode}; '' for none)")
    p.add_argument("--ext", choices=("auto", "png", "jpg"), default="auto",
                   help="output format; auto: jpg for JPEG inputs, png for all others (keeps alpha "
                        "and 16 bits) (default: auto)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def precision_note(device, precision: str) -> Optional[str]:
    """A warning when a reduced precision asked for by name will be slow on this CPU, or None.
    Without native arithmetic, oneDNN runs bf16 / fp16 convolutions through conversion fallbacks
    (fp16 here: 0.3x the authors' float32 path on a CPU without AMX-FP16, docs/performance.md);
    "auto" never picks them there."""
    from sdflow.nets.precision import runs_natively

    if device.type != "cpu" or precision not in ("bf16", "fp16") or runs_natively(device, precision):
        return None
    what = "bfloat16 instructions (AVX512-BF16 / AMX)" if precision == "bf16" else "float16 matrix instructions (AMX-FP16)"
    return (f"this CPU has no {what}: --precision {precision} will likely be slower than fp32 here "
            "(it is meant for CPUs that have them, and for GPUs)")


def _tile_arg(value: str):
    if value == "auto":
        return value
    return non_negative_int(value)


def run(args) -> int:
    from sdflow.inference import InferenceError, Options, plan, run as run_jobs
    from sdflow.tiling import check_tile

    try:
        options = Options(mode=args.mode, tau=args.tau, samples=args.samples, seed=args.seed,
                          suffix=args.suffix, ext=args.ext,
                          component=getattr(args, "component", None),
                          sampler=getattr(args, "sampler", "image"), workers=args.workers,
                          batch_size=args.batch_size, skip_existing=args.skip_existing,
                          outscale=getattr(args, "outscale", None))
        check_tile(args.mode, None if args.tile == "auto" else args.tile, args.tile_pad)
        # Inputs first: a typo in -i should not cost a model load.
        ignored = []
        jobs = plan(args.input, args.output, options, log=lambda msg: print(f"note: {msg}", file=sys.stderr),
                    ignored=ignored)
    except (InferenceError, ValueError) as e:
        return usage_error(str(e))

    source = args.model if args.model is not None else default_model_source()
    if source is None:
        return usage_error("no --model given and no bundled model")
    try:
        pipeline = load_pipeline(source, args.device, args.precision, tile=args.tile, tile_pad=args.tile_pad)
    except LoadError as e:
        return usage_error(str(e))
    if getattr(args, "blur", None) is not None:
        try:
            pipeline.model.set_sr_blur(args.blur)
        except ValueError as e:
            return usage_error(f"--blur: {e}")
    note = precision_note(pipeline.device, args.precision)
    if note:
        print(f"note: {note}", file=sys.stderr)

    try:
        summary = run_jobs(pipeline, jobs, options, progress=not args.quiet, ignored=ignored)
    except InferenceError as e:
        return usage_error(str(e))
    print(f"sdflow {args.mode}: {summary.report()}")
    print(f"output folder: {args.output}")
    return 0 if summary.ok else 1
