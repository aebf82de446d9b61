"""`sdflow convert`: the authors' pretrained folder -> one sdflow .safetensors file."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert the authors' .pth checkpoints into one .safetensors file",
                       description="Read the authors' pretrained folder (lrencoder.pth, hrnet.pth, "
                                   "contentnet.pth, degnet.pth) and write sdflow's .safetensors format.")
    p.add_argument("authors_dir", type=Path, help="folder with the authors' four .pth files")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors file")
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from sdflow.checkpoints import CheckpointError, convert_authors, describe

    if args.output.suffix != ".safetensors":
        print(f"error: output must end in .safetensors: {args.output}", file=sys.stderr)
        return 2
    try:
        path = convert_authors(args.authors_dir, args.output, dtype=torch.float16 if args.half else None)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    info = describe(path)
    print(f"wrote {path} ({info['parameters']:,} parameters, {path.stat().st_size / 2**20:.1f} MiB)")
    return 0
