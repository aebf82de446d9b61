"""`sdflow sr` and `sdflow ds`: super-resolve or downscale files and folders."""
from __future__ import annotations

import sys
from pathlib import Path

DTYPES = {"fp32": "float32", "fp64": "float64"}


def default_model_source():
    """The model used when --model is not given: the bundled one, once the package ships it."""
    from importlib import resources

    bundled = resources.files("sdflow") / "assets" / "model" / "sdflow_default.safetensors"
    return Path(str(bundled)) if bundled.is_file() else None


def pick_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _add_common(p) -> None:
    p.add_argument("-i", "--input", type=Path, required=True, help="an image file or a folder (recursive)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--model", "-m", default=None,
                   help="sdflow .safetensors, training checkpoint / run folder, or the authors' "
                        "pretrained folder (default: the bundled model)")
    p.add_argument("--tau", type=float, default=0.8, help="sampling temperature; 0 = the mode (default 0.8)")
    p.add_argument("--samples", "-n", type=int, default=1, help="outputs per input (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sample k uses seed + k (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--suffix", default=None,
                   help="appended to output names: NAME_SUFFIX.ext (default: the command, sr/ds; '' for none)")
    p.add_argument("--ext", default="auto", choices=["auto", "png", "jpg"],
                   help="auto: JPEG stays JPEG, other inputs become PNG")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def register(sub) -> None:
    sr = sub.add_parser("sr", help="super-resolve images x4",
                        description="Super-resolve images x4 with SDFlow. Outputs: "
                                    "OUT/<subdir>/<name>_<suffix>[_k].<ext>.")
    _add_common(sr)
    sr.set_defaults(func=run, mode="sr")
    ds = sub.add_parser("ds", help="downscale images x4 realistically",
                        description="Downscale images x4 with SDFlow's learned degradations.")
    _add_common(ds)
    ds.add_argument("--component", type=int, nargs="+", default=None,
                    help="mixture component(s) to draw the degradation from (default: all)")
    ds.add_argument("--sampler", default="image", choices=["image", "element"],
                    help="image: one component per image (the authors'); element: one per latent element")
    ds.set_defaults(func=run, mode="ds")


def run(args) -> int:
    import torch

    from sdflow.checkpoints import CheckpointError, load
    from sdflow.inference import Options, process

    if not args.input.exists():
        print(f"error: input not found: {args.input}", file=sys.stderr)
        return 2
    if args.samples < 1:
        print("error: --samples must be at least 1", file=sys.stderr)
        return 2
    if args.tau < 0:
        print("error: --tau must be >= 0", file=sys.stderr)
        return 2
    source = args.model if args.model is not None else default_model_source()
    if source is None:
        print("error: no --model given and no bundled model in this installation", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    dtype = getattr(torch, DTYPES[args.precision])
    try:
        model = load(source, device=device, dtype=dtype)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    component = getattr(args, "component", None)
    if component is not None:
        k = model.deg_prior.num_components
        if any(not 0 <= c < k for c in component):
            print(f"error: --component must be in 0..{k - 1}", file=sys.stderr)
            return 2
        component = component[0] if len(component) == 1 else component
    opts = Options(mode=args.mode, tau=args.tau, samples=args.samples, seed=args.seed, suffix=args.suffix,
                   ext=args.ext, component=component, sampler=getattr(args, "sampler", "image"))
    summary = process(model, args.input, args.output, opts, progress=not args.quiet)
    print(f"{len(summary.written)} file(s) written to {args.output}")
    if summary.failed:
        print(f"{len(summary.failed)} input(s) failed:", file=sys.stderr)
        for _, reason in summary.failed:
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0
