"""What the commands share: argument types, the --device / --precision / --model options, usage
errors (exit status 2) and loading a model into a pipeline. Only argparse at import time: torch
is imported when a command runs, so `sdflow --help` stays quick."""
from __future__ import annotations

import argparse
import re
import sys

from sdflow.config import MAX_SEED, PRECISIONS


def usage_error(message: str) -> int:
    """Print the message as the command's error and return the exit status of usage errors."""
    print(f"sdflow: error: {message}", file=sys.stderr)
    return 2


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def positive_int(text: str) -> int:
    value = whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seed(text: str) -> int:
    value = non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most 2^64 - 1 = {MAX_SEED}, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def device_name(text: str) -> str:
    name = text.strip().lower()
    if name in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", name):
        return name
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_name, default="auto", metavar="{auto,cpu,cuda,cuda:N,mps}",
                   help="auto: cuda, else mps, else cpu; cuda:N picks GPU N (default: auto)")


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="model arithmetic. auto: bf16 where the device multiplies it natively (CPUs with "
                        "AVX512-BF16 or AMX, CUDA), else fp32; fp32: the model's float32 results, the same "
                        "on every machine; bf16 / fp16: faster, a small quality cost (README, "
                        "docs/performance.md; fp16 is for CUDA); fp64: the reference (default: auto)")


def default_model_source():
    """The model used when --model is not given: the one bundled with the package (None in an
    installation without it)."""
    from sdflow.checkpoints import bundled_model_path

    return bundled_model_path()


class LoadError(Exception):
    """A model or device that a command cannot use: its message is the usage error."""


def load_pipeline(source, device: str = "auto", precision: str = "auto", **settings):
    """`sdflow.pipeline.Pipeline.load(source, device, precision, **settings)`, with every reason it
    cannot be made (no such device, a damaged or foreign model file, MPS in float64) as a
    LoadError."""
    from sdflow.checkpoints import CheckpointError
    from sdflow.pipeline import Pipeline, resolve_device

    try:
        torch_device = resolve_device(device)
    except ValueError as e:
        raise LoadError(str(e)) from None
    if torch_device.type == "mps" and precision == "fp64":
        raise LoadError("MPS has no float64 arithmetic; use --precision fp32 or another device")
    try:
        return Pipeline.load(source, torch_device, precision, **settings)
    except CheckpointError as e:
        raise LoadError(f"cannot load the model: {e}") from None
    except Exception as e:  # noqa: BLE001 - safetensors/torch errors on a damaged file vary by version
        raise LoadError(f"cannot load the model {source}: {type(e).__name__}: {e}") from None
