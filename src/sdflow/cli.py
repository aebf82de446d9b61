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
    ("demo", "demo", "super-resolve and downscale the bundled sample photos; writes an HTML report"),
    ("sr", "infer", "super-resolve images x4"),
    ("ds", "infer", "downscale images x4 realistically"),
    ("convert", "convert", "convert the authors' .pth checkpoints into one .safetensors file"),
    ("degrade", "degrade", "make degraded LR / paired test sets from HR photos"),
    ("train", "train", "train SDFlow on unpaired HR and LR folders"),
    ("eval", "eval", "evaluate SR and DS on paired folders, with bicubic baselines and an HTML report"),
]


def build_parser(command: str = None) -> argparse.ArgumentParser:
    """The parser; only the module of `command` (if given) is imported and registers its real
    sub-parser, the others appear as stubs carrying their help line."""
    from sdflow import __version__

    parser = argparse.ArgumentParser(
        prog="sdflow",
        description="SDFlow: unpaired real-world x4 super-resolution and realistic downscaling.",
    )
    parser.add_argument("--version", action="version", version=f"sdflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, _ in COMMANDS:
        if name == command:
            importlib.import_module(f"sdflow.commands.{module}").register(sub)
    for name, _, help_line in COMMANDS:
        if name not in sub.choices:
            sub.add_parser(name, help=help_line)
    # main() reports an option unknown to a command with that command's usage.
    parser.commands = sub.choices
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    # parse_args would blame the top-level parser, whose usage does not list the command's options.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Options before the command name are the top-level parser's.
        before = argv[:argv.index(args.command)] if args.command in argv else []
        owner = parser if any(u in before for u in unknown) else parser.commands[args.command]
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    from sdflow.imageio import allow_large_images

    allow_large_images()   # photos of 200 MP are photos, not decompression bombs
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
