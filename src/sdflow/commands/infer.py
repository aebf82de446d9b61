"""`sdflow sr` and `sdflow ds`: super-resolve or realistically downscale files and folders x4.

Exit status: 0 when every image succeeded, 1 when any failed (each named with its reason, and again
in the final summary), 2 for usage errors (missing input, no model, unusable options or device).
Naming and seeding rules: see `sdflow.inference`.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

# fp32, bf16 and fp16 run the fused fast path (sdflow.fast) on a float32 model; fp64 the plain model.
PRECISIONS = {"fp32": "float32", "bf16": "float32", "fp16": "float32", "fp64": "float64"}
# sdflow.inference.MAX_SEED, repeated so that parsing does not import torch.
MAX_SEED = 2**64 - 1


def default_model_source():
    """The model used when --model is not given: the one bundled with the package (None in an
    installation without it)."""
    from sdflow.checkpoints import bundled_model_path

    return bundled_model_path()


def register(sub) -> None:
    # Only argparse here: torch is imported when a command actually runs, so --help stays quick.
    sr = sub.add_parser(
        "sr", help="super-resolve images x4",
        description="Super-resolve images x4 with SDFlow, sampling --samples outputs per image at "
                    "temperature --tau. Writes OUT/<sub-folder>/<stem>_<suffix>[_<k>].<ext>.")
    _add_common(sr, "sr")
    sr.add_argument("--outscale", "-s", type=_positive_float, default=None, metavar="S",
                    help="final scale of the output against the input, e.g. 2 or 3.5: the x4 result "
                         "resized by bicubic (antialiased when shrinking) to round(S x input size) "
                         "(default: 4, no resize)")
    sr.set_defaults(func=run, mode="sr")

    ds = sub.add_parser(
        "ds", help="downscale images x4 realistically",
        description="Downscale images x4 with SDFlow's learned real-world degradations "
                    "(output ceil(H/4) x ceil(W/4)). Writes OUT/<sub-folder>/<stem>_<suffix>[_<k>].<ext>.")
    _add_common(ds, "ds")
    ds.add_argument("--component", type=_non_negative_int, nargs="+", default=None, metavar="K",
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
    p.add_argument("--tau", type=_non_negative_float, default=0.8,
                   help="sampling temperature; 0 gives the mode (default: 0.8)")
    p.add_argument("--samples", "-n", type=_positive_int, default=1, metavar="N",
                   help="outputs per image, named _0 .. _N-1 when N > 1 (default: 1)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="sample k is drawn with seed S + k: the same seed gives the same files; "
                        "S + N - 1 must not exceed 2^64 - 1 (default: 0)")
    add_device_argument(p)
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="model arithmetic. fp32, bf16, fp16 run the fused fast path (fp32: the model's "
                        "float32 results; bf16/fp16: faster, small quality cost, docs/performance.md; "
                        "fp16 is for CUDA); fp64 runs the plain model, the reference (default: fp32)")
    p.add_argument("--tile", type=_tile_arg, default="auto", metavar="N|auto",
                   help="process in tiles of about N input pixels; auto: only when the image is "
                        "large enough to need it; 0: never (default: auto)")
    p.add_argument("--tile-pad", type=_non_negative_int, default=None, metavar="P",
                   help="context pixels around each tile (default: 16 for sr, 64 for ds)")
    p.add_argument("--workers", type=_non_negative_int, default=1, metavar="N",
                   help="threads decoding the next images while the model runs (0: none; default 1)")
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
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


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    value = _non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most 2^64 - 1 = {MAX_SEED}, got {value}")
    return value


def seed_range_error(seed: int, samples: int):
    """`sdflow.inference.seed_range_error`, imported when a command runs (it needs torch)."""
    from sdflow.inference import seed_range_error as check

    return check(seed, samples)


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _device_name(text: str) -> str:
    name = text.strip().lower()
    if name in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", name):
        return name
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=_device_name, default="auto", metavar="{auto,cpu,cuda,cuda:N,mps}",
                   help="auto: cuda, else mps, else cpu; cuda:N picks GPU N (default: auto)")


def resolve_device(name: str):
    """torch.device for --device; raises ValueError when the requested backend is absent."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available in this PyTorch installation")
    if name.startswith("cuda:"):
        count = torch.cuda.device_count()
        if int(name[5:]) >= count:
            raise ValueError(f"--device {name}: there are {count} CUDA devices (cuda:0 .. cuda:{count - 1})")
    if name == "mps" and not has_mps:
        raise ValueError("--device mps: MPS is not available on this machine")
    return torch.device(name)


def precision_note(device, precision: str) -> Optional[str]:
    """A warning when a reduced precision will be slow on this CPU, or None. Without native
    arithmetic, oneDNN runs bf16 / fp16 convolutions through conversion fallbacks (fp16 here:
    0.3x the authors' float32 path on a CPU without AMX-FP16, docs/performance.md)."""
    import torch

    if device.type != "cpu" or precision not in ("bf16", "fp16"):
        return None
    cpu = torch.cpu
    if precision == "bf16":
        native = getattr(cpu, "_is_avx512_bf16_supported", lambda: True)()
        what = "bfloat16 instructions (AVX512-BF16 / AMX)"
    else:
        native = getattr(cpu, "_is_amx_fp16_supported", lambda: True)()
        what = "float16 matrix instructions (AMX-FP16)"
    if native:
        return None
    return (f"this CPU has no {what}: --precision {precision} will likely be slower than fp32 here "
            "(it is meant for CPUs that have them, and for GPUs)")


def _usage_error(message: str) -> int:
    print(f"sdflow: error: {message}", file=sys.stderr)
    return 2


def _tile_arg(value: str):
    if value == "auto":
        return value
    return _non_negative_int(value)


def run(args) -> int:
    import torch

    from sdflow.checkpoints import CheckpointError, load
    from sdflow.inference import InferenceError, Options, plan, run as run_jobs

    try:
        options = Options(mode=args.mode, tau=args.tau, samples=args.samples, seed=args.seed,
                          suffix=args.suffix, ext=args.ext,
                          component=getattr(args, "component", None),
                          sampler=getattr(args, "sampler", "image"), tile=args.tile,
                          tile_pad=args.tile_pad, workers=args.workers, batch_size=args.batch_size,
                          skip_existing=args.skip_existing, outscale=getattr(args, "outscale", None))
        # Inputs first: a typo in -i should not cost a model load.
        ignored = []
        jobs = plan(args.input, args.output, options, log=lambda msg: print(f"note: {msg}", file=sys.stderr),
                    ignored=ignored)
    except InferenceError as e:
        return _usage_error(str(e))

    source = args.model if args.model is not None else default_model_source()
    if source is None:
        return _usage_error("no --model given and no bundled model")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return _usage_error(str(e))
    dtype = getattr(torch, PRECISIONS[args.precision])
    if device.type == "mps" and dtype == torch.float64:
        return _usage_error("MPS has no float64 arithmetic; use --precision fp32 or another device")
    try:
        model = load(source, device=device, dtype=dtype)
    except CheckpointError as e:
        return _usage_error(f"cannot load the model: {e}")
    except Exception as e:  # noqa: BLE001 - safetensors/torch errors on a damaged file vary by version
        return _usage_error(f"cannot load the model {source}: {type(e).__name__}: {e}")
    if args.precision != "fp64":
        # The fused snapshot gives the plain float32 model's results (relative error ~1e-6,
        # tests/test_fast_path.py) in less time and memory; fp64 stays the plain reference path.
        from sdflow.fast import FastSDFlow

        model = FastSDFlow(model, args.precision)
        note = precision_note(device, args.precision)
        if note:
            print(f"note: {note}", file=sys.stderr)

    try:
        summary = run_jobs(model, jobs, options, progress=not args.quiet, ignored=ignored)
    except InferenceError as e:
        return _usage_error(str(e))
    print(f"sdflow {args.mode}: {summary.report()}")
    print(f"output folder: {args.output}")
    return 0 if summary.ok else 1
