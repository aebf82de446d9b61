"""The `sdflow` command.

Each sub-command lives in its own module under `sdflow.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int` (the exit code).
Sub-command modules are imported lazily so that `sdflow --help` stays fast and a
missing optional dependency of one command never breaks the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (name, module under sdflow.commands, one-line help)
COMMANDS = [
    ("sr", "infer", "super-resolve images x4"),
    ("ds", "infer", "downscale images x4 realistically"),
    ("convert", "convert", "convert the authors' .pth checkpoints into one .safetensors file"),
    ("degrade", "degrade", "make degraded LR / paired test sets from HR photos"),
]


def build_parser() -> argparse.ArgumentParser:
    from sdflow import __version__

    parser = argparse.ArgumentParser(
        prog="sdflow",
        description="SDFlow: unpaired real-world x4 super-resolution and realistic downscaling.",
    )
    parser.add_argument("--version", action="version", version=f"sdflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    registered = set()
    for name, module, _ in COMMANDS:
        if module in registered:
            continue
        registered.add(module)
        importlib.import_module(f"sdflow.commands.{module}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
