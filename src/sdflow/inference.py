"""The batch job behind `sdflow sr` and `sdflow ds`: files in, files out, failures reported.

Output names are predictable (Real-ESRGAN style): `{stem}_{suffix}.{ext}`, or with several samples
`{stem}_{suffix}_{k}.{ext}` for k = 0..N-1, in the same sub-folder under the output folder as the
input had under the input folder. Sample k of every image uses a generator seeded with
`seed + k`, so a file's output does not depend on which other files are processed, or in what order.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from sdflow.imageio import Image, ImageReadError, find_images, from_tensor, read_image, to_tensor, write_image

JPEG_EXTS = (".jpg", ".jpeg")


@dataclass
class Options:
    mode: str                          # "sr" or "ds"
    tau: float = 0.8
    samples: int = 1
    seed: int = 0
    suffix: Optional[str] = None       # None: the mode's name
    ext: str = "auto"                  # auto | png | jpg
    component: Optional[Union[int, Sequence[int]]] = None
    sampler: str = "image"
    tile: int = 0                      # 0: no tiling


@dataclass
class Summary:
    written: List[Path] = field(default_factory=list)
    failed: List[Tuple[Path, str]] = field(default_factory=list)


class OutputNotFinite(RuntimeError):
    pass


def output_ext(src: Path, ext: str) -> str:
    if ext == "auto":
        # JPEG stays JPEG; everything else becomes PNG, which is lossless and keeps alpha and 16 bits.
        return ".jpg" if src.suffix.lower() in JPEG_EXTS else ".png"
    return "." + ext.lstrip(".")


def output_paths(src: Path, in_root: Path, out_dir: Path, opts: Options) -> List[Path]:
    rel = src.relative_to(in_root).parent if in_root.is_dir() else Path()
    suffix = opts.mode if opts.suffix is None else opts.suffix
    stem = src.stem + (f"_{suffix}" if suffix else "")
    ext = output_ext(src, opts.ext)
    if opts.samples == 1:
        return [out_dir / rel / f"{stem}{ext}"]
    return [out_dir / rel / f"{stem}_{k}{ext}" for k in range(opts.samples)]


def _resize_plane(plane: np.ndarray, size: Tuple[int, int], down: bool) -> np.ndarray:
    """Alpha is not modelled: it is resized on its own (bicubic up, antialiased down)."""
    from sdflow.resize import resize

    t = torch.from_numpy(np.ascontiguousarray(plane))[None, None].float()
    out = resize(t, size, kernel="area" if down else "bicubic", antialias=down)
    return out[0, 0].clamp_(0, 1).numpy()


def run_model(model, image: Image, opts: Options, generator: torch.Generator,
              transform: Optional[Callable] = None) -> np.ndarray:
    """One sample for one image: H x W x 3 float in [0, 1]. Raises OutputNotFinite rather than
    writing NaN or Inf pixels."""
    x = to_tensor(image.rgb, device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        if transform is not None:
            y = transform(model, x, opts, generator)
        elif opts.mode == "sr":
            y = model.super_resolve(x, tau=opts.tau, generator=generator)
        else:
            y = model.downscale(x, tau=opts.tau, component=opts.component, sampler=opts.sampler,
                                generator=generator)
    bad = (~torch.isfinite(y)).sum().item()
    if bad:
        raise OutputNotFinite(f"model output has {bad} non-finite values (NaN/Inf); "
                              f"try a lower --tau")
    return from_tensor(y)


def process(model, inputs: Union[Path, Sequence[Path]], out_dir: Path, opts: Options,
            transform: Optional[Callable] = None, progress: bool = True, log=None) -> Summary:
    """Run `opts.mode` on every image of `inputs` (a file, a folder searched recursively, or a
    list of files) and write the results below `out_dir`. One file's failure is reported and the
    others go on."""
    from tqdm import tqdm

    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    if isinstance(inputs, (str, Path)):
        in_root = Path(inputs)
        files = find_images(in_root)
    else:
        files = [Path(f) for f in inputs]
        in_root = Path(files[0]).parent if files else Path(".")
    out_dir = Path(out_dir)
    summary = Summary()
    bar = tqdm(files, desc=opts.mode, unit="img", disable=not progress)
    for src in bar:
        bar.set_postfix_str(src.name[-30:], refresh=False)
        try:
            targets = output_paths(src, in_root, out_dir, opts)
            if any(t.resolve() == src.resolve() for t in targets):
                raise ValueError("output would overwrite the input; give --suffix or another -o")
            image = read_image(src)
            for k, target in enumerate(targets):
                generator = torch.Generator(device=model.device).manual_seed(opts.seed + k)
                rgb = run_model(model, image, opts, generator, transform)
                alpha = None
                if image.alpha is not None:
                    alpha = _resize_plane(image.alpha, rgb.shape[:2], down=opts.mode == "ds")
                write_image(target, rgb, alpha, image.grayscale, image.bit_depth)
                summary.written.append(target)
        except (ImageReadError, OutputNotFinite, ValueError, OSError, RuntimeError) as e:
            reason = str(e) if isinstance(e, ImageReadError) else f"{src}: {e}"
            summary.failed.append((src, reason))
            log(f"FAILED {reason}")
    return summary
