"""`sdflow demo`: the bundled model on the bundled sample photos, as an HTML report.

The photos are degraded in memory with the preset the bundled model was trained for (recorded in
its metadata), so the report has a ground truth on both sides: SR against the original photo, DS
against the simulated real LR. The LR and HR images are written beside the report so that the
next command a user tries (`sdflow sr -i OUT/LR -o ...`) has inputs.
"""
from __future__ import annotations

import sys
from pathlib import Path

from sdflow.commands.options import (LoadError, add_device_argument, add_precision_argument, default_model_source,
                                     load_pipeline, non_negative_float, positive_int, seed, usage_error)
from sdflow.config import seed_range_error

DEFAULT_TAUS = (0.0, 0.4, 0.8)
FALLBACK_PRESET = "realistic"


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="super-resolve and downscale the bundled sample photos; writes an HTML report",
        description="Run SDFlow (the bundled model unless --model is given) on the bundled sample "
                    "photos: SR of their simulated LR at several temperatures and samples, DS of "
                    "the photos, with bicubic baselines, and write an HTML report.")
    p.add_argument("-o", "--output", type=Path, default=Path("sdflow-demo"),
                   help="output folder (default: ./sdflow-demo)")
    p.add_argument("--model", "-m", default=None, metavar="SRC",
                   help="model to show instead of the bundled one (.safetensors, training run, "
                        "or the authors' folder)")
    p.add_argument("--preset", default=None,
                   help="degradation that makes the LR inputs (default: the one the model was "
                        f"trained for when it says so, else {FALLBACK_PRESET})")
    p.add_argument("--tau", type=non_negative_float, nargs="+", default=list(DEFAULT_TAUS),
                   metavar="T", help="sampling temperatures (default: 0 0.4 0.8)")
    p.add_argument("--samples", "-n", type=positive_int, default=2, metavar="N",
                   help="samples per image and tau (default: 2)")
    p.add_argument("--seed", type=seed, default=0, metavar="S",
                   help="seed of the degradations and of the samples (default: 0)")
    add_device_argument(p)
    add_precision_argument(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from sdflow import evaluation
    from sdflow.checkpoints import bundled_metadata
    from sdflow.data.degrade import PRESETS
    from sdflow.imageio import write_image

    if error := seed_range_error(args.seed, args.samples):
        return usage_error(error)
    source = args.model if args.model is not None else default_model_source()
    if source is None:
        return usage_error("this installation ships no bundled model; give one with --model")
    preset = args.preset
    if preset is None:
        meta = bundled_metadata() if args.model is None else {}
        preset = meta.get("sdflow.degradation", FALLBACK_PRESET)
    if preset not in PRESETS:
        return usage_error(f"--preset: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    try:
        pipeline = load_pipeline(source, args.device, args.precision)   # as sdflow sr/ds would run it
    except LoadError as e:
        return usage_error(str(e))

    pairs = evaluation.sample_pairs(preset, args.seed)
    out = args.output
    for pair in pairs:
        write_image(out / "HR" / f"{pair.name}.png", pair.hr.rgb)
        write_image(out / "LR" / f"{pair.name}.png", pair.lr.rgb)

    label = "the bundled model" if args.model is None else str(source)
    result = evaluation.run_evaluation(
        pairs, pipeline, taus=args.tau, samples=args.samples, seed=args.seed,
        progress=not args.quiet,
        settings={"model": str(source), "precision": pipeline.precision,
                  "lr": f"bundled sample photos, '{preset}' preset, seed {args.seed}"})
    paths = evaluation.write_outputs(
        result, out, title=f"sdflow demo: {label} on the bundled sample photos ({preset} LR)")
    print(evaluation.summary_text(result))
    print(f"\nreport: {paths['report.html'].resolve()}")
    print(f"inputs: {out / 'LR'} (simulated LR), {out / 'HR'} (originals); try "
          f"`sdflow sr -i {out / 'LR'} -o {out / 'sr'}`")
    for name, reason in result.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 0 if result.ok else 1
