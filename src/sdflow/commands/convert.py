"""`sdflow convert`: the authors' pretrained folder -> one sdflow .safetensors file.

Exit status: 0 when written; 2 when the request cannot be carried out (an output path that cannot
be a file, a folder that is not the authors' or holds unreadable files); 1 when writing fails.
Nothing is left at the output path, or beside it, unless the whole file was written.
"""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert the authors' .pth checkpoints into one .safetensors file",
                       description="Read the authors' pretrained folder (lrencoder.pth, hrnet.pth, "
                                   "contentnet.pth, degnet.pth) and write sdflow's .safetensors format.")
    p.add_argument("authors_dir", type=Path, help="folder with the authors' four .pth files")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .safetensors file (replaced if it exists)")
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")
    p.set_defaults(func=run)


def _error(message: str, code: int) -> int:
    print(f"sdflow convert: error: {message}", file=sys.stderr)
    return code


def _output_problem(out: Path):
    """Why `out` cannot become the output file, or None; checked before a 50 MB model is read."""
    if out.suffix != ".safetensors":
        return f"output must end in .safetensors: {out}"
    if out.is_dir():
        return (f"output {out} is a folder; give the path of the file to write, "
                f"e.g. {out / 'model.safetensors'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"cannot write {out}: {parent} is a file, not a folder"
            break
    return None


def run(args) -> int:
    import torch

    from sdflow.checkpoints import CheckpointError, convert_authors, describe

    problem = _output_problem(args.output)
    if problem:
        return _error(problem, 2)
    try:
        path = convert_authors(args.authors_dir, args.output, dtype=torch.float16 if args.half else None)
    except CheckpointError as e:
        return _error(str(e), 2)
    except OSError as e:
        return _error(f"cannot write {args.output}: {e}", 1)
    info = describe(path)
    print(f"wrote {path} ({info['parameters']:,} parameters, {path.stat().st_size / 2**20:.1f} MiB)")
    return 0
