"""The batch job behind `sdflow sr` and `sdflow ds`, independent of the command line.

Output names (Real-ESRGAN style), under the output folder, in the same sub-folder that the input
had under the input folder (a single input file goes straight into the output folder):

    {stem}_{suffix}.{ext}          one sample (suffix defaults to the mode: "sr" / "ds")
    {stem}_{suffix}_{k}.{ext}      --samples N > 1, k = 0 .. N-1
    {stem}.{ext}, {stem}_{k}.{ext} with an empty suffix

ext "auto": JPEG inputs (.jpg, .jpeg) give .jpg; every other input (PNG, WebP, BMP, TIFF) gives .png,
which is lossless and the one format here that keeps alpha and 16 bits.

Outputs may go into the input folder: a file there with exactly a name this run would write for
another input beside it (a_sr.png beside a.png; a_sr_1.png with --samples 2 or more; none with an
empty suffix) is taken for an earlier run's output, not an input, so a re-run replaces it and
--skip-existing keeps it. Other files are inputs, and inputs are never overwritten.

Seeds: sample k of every image is drawn with a generator seeded with `seed + k` on the model's
device, so a file's outputs depend only on (model, image, options, seed, k): not on which other
files are in the batch or their order. A consequence worth knowing: sample k of seed S equals
sample 0 of seed S + k. The same seed on another device type (CPU vs CUDA) gives other noise.

The model runs through a `sdflow.pipeline.Pipeline` (precision, tiling, the conditions that the
samples of one image share); this module reads, names and writes the files around it.

A file fails on its own (unreadable, too large for the memory available, out of memory, model
error, non-finite output, unwritable) and the batch goes on; problems with the request as a whole
raise InferenceError before anything is written.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from sdflow.config import SCALE, seed_range_error
from sdflow.imageio import (ImageReadError, downscale_alpha, find_images, from_tensor, partial_path,
                            read_image, to_tensor, upscale_alpha, write_image)
from sdflow.pipeline import Pipeline, Prepared
from sdflow.resize import resize

__all__ = ["InferenceError", "Options", "Job", "FileResult", "Summary", "output_extension", "processing_memory",
           "output_names", "plan", "sample", "process_file", "run", "run_batch"]

MODES = ("sr", "ds")
EXTS = ("auto", "png", "jpg")
SAMPLERS = ("image", "element")
_JPEG_SUFFIXES = (".jpg", ".jpeg")


class InferenceError(ValueError):
    """The request as a whole cannot be carried out (bad options, no inputs, outputs that would
    overwrite inputs); nothing has been written."""


@dataclass
class Options:
    mode: str = "sr"                   # "sr" | "ds"
    tau: float = 0.8
    samples: int = 1
    seed: int = 0
    suffix: Optional[str] = None       # None: the mode's name; "": none
    ext: str = "auto"                  # "auto" | "png" | "jpg"
    component: Optional[Sequence[int]] = None   # ds: mixture components to draw from (None: all)
    sampler: str = "image"             # ds: "image" | "element"
    workers: int = 0                   # threads decoding the next images while one computes
    batch_size: int = 1                # consecutive same-size, untiled images run together
    skip_existing: bool = False        # outputs already on disk are kept, not made again (resume)
    outscale: Optional[float] = None   # sr: final scale against the input (None: the model's x4)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InferenceError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau >= 0):
            raise InferenceError(f"tau must be a finite number >= 0, got {self.tau!r}")
        if int(self.samples) != self.samples or self.samples < 1:
            raise InferenceError(f"samples must be a whole number >= 1, got {self.samples!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise InferenceError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if error := seed_range_error(self.seed, self.samples):
            raise InferenceError(error)
        if self.ext not in EXTS:
            raise InferenceError(f"ext must be one of {EXTS}, got {self.ext!r}")
        if self.sampler not in SAMPLERS:
            raise InferenceError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.suffix is not None and any(c in self.suffix for c in "/\\\0"):
            raise InferenceError(f"suffix must not contain path separators, got {self.suffix!r}")
        if int(self.workers) != self.workers or self.workers < 0:
            raise InferenceError(f"workers must be a whole number >= 0, got {self.workers!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise InferenceError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if self.outscale is not None:
            if self.mode != "sr":
                raise InferenceError("outscale is for sr only (ds always gives ceil(H/4) x ceil(W/4))")
            if not (isinstance(self.outscale, (int, float)) and math.isfinite(self.outscale) and self.outscale > 0):
                raise InferenceError(f"outscale must be a finite number > 0, got {self.outscale!r}")
        if isinstance(self.component, int):
            self.component = [self.component]
        if self.component is not None:
            self.component = [int(c) for c in self.component]
            if not self.component:
                raise InferenceError("component, when given, must name at least one component")

    @property
    def name_suffix(self) -> str:
        return self.mode if self.suffix is None else self.suffix


@dataclass
class Job:
    source: Path
    rel: Path                          # source relative to the input folder (its name for a file)
    outputs: List[Path]                # one per sample
    error: Optional[str] = None        # known before running (e.g. an output name collision)


@dataclass
class FileResult:
    source: Path
    outputs: List[Path] = field(default_factory=list)   # the files actually written
    error: Optional[str] = None
    notes: List[str] = field(default_factory=list)      # done, but not all as asked

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Summary:
    done: List[FileResult] = field(default_factory=list)
    failed: List[FileResult] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)   # inputs whose outputs were all there already
    ignored: List[Tuple[Path, str]] = field(default_factory=list)   # paths of the folder not read, why

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def written(self) -> List[Path]:
        return [p for r in self.done + self.failed for p in r.outputs]

    def report(self) -> str:
        total = len(self.done) + len(self.failed) + len(self.skipped)
        lines = [f"{len(self.done)} of {total} image(s) done, {len(self.written)} file(s) written"
                 + (f", {len(self.skipped)} skipped (outputs already there)" if self.skipped else "")]
        if self.failed:
            lines.append(f"{len(self.failed)} failed:")
            lines += [f"  {r.source}: {r.error}" for r in self.failed]
        if self.ignored:
            lines.append(f"{len(self.ignored)} other path(s) in the input folder not read:")
            lines += [f"  {p}: {why}" for p, why in self.ignored]
        return "\n".join(lines)


# ----- planning -----------------------------------------------------------------------------

def output_extension(source: Path, ext: str = "auto") -> str:
    """The output extension (without dot) for `source` under --ext `ext`."""
    if ext == "auto":
        return "jpg" if Path(source).suffix.lower() in _JPEG_SUFFIXES else "png"
    return ext


def output_names(rel: Path, options: Options) -> List[Path]:
    """Output paths relative to the output folder for an input at `rel` under the input folder."""
    rel = Path(rel)
    ext = output_extension(rel, options.ext)
    stem = rel.stem + (f"_{options.name_suffix}" if options.name_suffix else "")
    if options.samples == 1:
        return [rel.with_name(f"{stem}.{ext}")]
    return [rel.with_name(f"{stem}_{k}.{ext}") for k in range(options.samples)]


def _earlier_outputs(sources: List[Path], rels: List[Path], output_dir: Path, options: Options) -> set:
    """Indices of the sources that this command would write as outputs of other sources (an
    earlier run with `-o` the input folder: a_sr.png beside a.png). Reading them as inputs would
    make a re-run fail on its own outputs and --skip-existing unable to resume. Only exact
    planned names count (suffix, extension and sample numbers of this run), so a real input such
    as scan_sr_2023.png stays an input. With an empty suffix an output's name says nothing of
    its origin, so none is set aside and the overwrite check guards."""
    if not options.name_suffix:
        return set()
    planned = {}
    for i, rel in enumerate(rels):
        for out in output_names(rel, options):
            planned.setdefault(os.path.normcase((output_dir / out).resolve()), set()).add(i)
    return {i for i, source in enumerate(sources) if planned.get(os.path.normcase(source.resolve()), set()) - {i}}


def plan(input_path: Union[str, Path], output_dir: Union[str, Path], options: Options,
         log: Optional[Callable[[str], None]] = None,
         ignored: Optional[List[Tuple[Path, str]]] = None) -> List[Job]:
    """The jobs for a file or a folder (searched recursively). Raises InferenceError when the input
    is missing or holds no images, or when an output would replace an input file. In a folder,
    files named as this command's outputs of other inputs in the folder they would be written to
    (an earlier run into the input folder) are not inputs; `log` is told how many were set aside.
    The folder's other paths that are not read (`find_images`' skipped) are added to `ignored`."""
    input_path, output_dir = Path(input_path), Path(output_dir)
    if not input_path.exists():
        raise InferenceError(f"input not found: {input_path}")
    if output_dir.exists() and not output_dir.is_dir():
        raise InferenceError(f"output {output_dir} exists and is not a folder")
    if input_path.is_dir():
        # Outputs written inside the input folder must not be picked up as inputs on a re-run.
        inside = output_dir.resolve() != input_path.resolve()
        sources = find_images(input_path, exclude=output_dir if inside else None, skipped=ignored)
        rels = [s.relative_to(input_path) for s in sources]
        earlier = _earlier_outputs(sources, rels, output_dir, options)
        if earlier:
            first = sources[min(earlier)]
            sources = [s for i, s in enumerate(sources) if i not in earlier]
            rels = [r for i, r in enumerate(rels) if i not in earlier]
            if log is not None:
                log(f"{len(earlier)} file(s) named as this command's outputs of other inputs beside "
                    f"them (e.g. {first}) are not read as inputs")
    else:
        sources, rels = [input_path], [Path(input_path.name)]
    if not sources:
        raise InferenceError(f"no image files found under {input_path}")
    jobs = [Job(s, r, [output_dir / o for o in output_names(r, options)]) for s, r in zip(sources, rels)]

    inputs = {s.resolve() for s in sources}
    clobbered = [o for j in jobs for o in j.outputs if o.resolve() in inputs]
    if clobbered:
        fix = "another --suffix" if options.name_suffix else "a non-empty --suffix"
        raise InferenceError(f"output {clobbered[0]} would overwrite an input file"
                             + (f" ({len(clobbered)} in all)" if len(clobbered) > 1 else "")
                             + f"; choose another output folder or {fix}")

    # Two inputs that map to one output (a.png and a.webp) would silently overwrite each other;
    # both fail rather than letting the order of files decide the winner. Names that differ only
    # in case (a.png, A.png) fail too, on every system: on macOS and Windows they are one file,
    # and a folder's results should not depend on where it is processed.
    owners = collections.defaultdict(list)
    for j in jobs:
        for o in j.outputs:
            owners[o.as_posix().casefold()].append((j, o))
    for group in owners.values():
        if len(group) < 2:
            continue
        for j, o in group:
            if j.error is None:
                j.error = _collision(j, o, [(g, p) for g, p in group if g is not j], options)
    return jobs


def _collision(job: Job, out: Path, others: List[tuple], options: Options) -> str:
    """Why `job` fails: its output `out` is also that of the `others` ((job, output) pairs), by
    name or by a name that differs only in letter case; and what would help."""
    reasons = []
    same = [g for g, p in others if p == out]
    if same:
        reasons.append(f"its output {out.name} would also be the output of "
                       f"{', '.join(str(g.source) for g in same)}")
    cased = [(g, p) for g, p in others if p != out]
    if cased:
        names = ", ".join(sorted({p.name for _, p in cased}))
        reasons.append(f"its output {out.name} differs only in letter case from {names}, the output of "
                       f"{', '.join(str(g.source) for g, _ in cased)}: a case-insensitive file system "
                       "(macOS, Windows) would merge them into one file")
    # --ext png / jpg can map a.png and a.jpg to one name that --ext auto keeps apart.
    by_format = same and not cased and options.ext != "auto" and all(
        output_extension(g.source) != output_extension(job.source) for g in same)
    fix = "use --ext auto, which keeps JPEG as .jpg" if by_format else "rename one of them"
    return "; ".join(reasons) + f"; {fix}"


# ----- running ------------------------------------------------------------------------------

def sample(prepared: Prepared, options: Options, k: int, progress: bool = False) -> torch.Tensor:
    """Sample k of the prepared image (or batch: each image with its own generator) in [-1, 1],
    the raw model output: drawn with seed `options.seed + k`. `progress`: a bar over the tiles
    of a tiled image."""
    n = prepared.x.shape[0]
    seed = options.seed + k if n == 1 else [options.seed + k] * n
    with _tiles_bar(prepared.tile(options.mode) is not None and progress,
                    f"tiles, sample {k}" if options.samples > 1 else "tiles") as on_tile:
        if options.mode == "sr":
            return prepared.super_resolve(options.tau, seed, on_tile=on_tile)
        return prepared.downscale(options.tau, seed, component=options.component, sampler=options.sampler,
                                  on_tile=on_tile)


@contextlib.contextmanager
def _tiles_bar(show: bool, desc: str):
    """on_tile for the pipeline: a second bar, under the images' one, that counts a large
    image's tiles (it takes minutes); None when not shown."""
    if not show:
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=desc, unit=" tile", leave=False, file=sys.stderr, dynamic_ncols=True) as bar:
        def on_tile(done, total):
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(done - bar.n)

        yield on_tile


def _output_size(image, options: Options) -> Optional[tuple]:
    """(h, w) that --outscale resizes the x4 SR output to, or None to keep it."""
    if options.mode != "sr" or options.outscale is None or options.outscale == SCALE:
        return None
    h, w = image.rgb.shape[:2]
    return max(1, round(h * options.outscale)), max(1, round(w * options.outscale))


def processing_memory(pipeline: Pipeline, options: Options) -> Callable[[int, int, int], int]:
    """(width, height, bit depth) -> bytes that running the pipeline on an image of that size takes
    beyond decoding it, for read_image to weigh against the memory available before it decodes:
    the input tensor and the temporaries of its scaling to [-1, 1]; per output pixel, the output
    tensor and its copy for writing, then the quantized samples and Pillow's copy of them (the
    writer's other planes take the tensor's place once it is freed; the 16-bit PNG encoder needs
    many more); the activations of one model call (one tile's under tiling,
    `sdflow.tiling.estimate_memory`); the conditions several samples share. An estimate, meant
    to err high: 1.6x (sr) and 1.9x (ds) the measured peak for a 1000 x 1000 photo, bundled model."""
    per_pixel = pipeline.memory_per_pixel(options.mode)
    value = torch.finfo(pipeline.dtype).bits // 8
    pad = pipeline.tile_pad_for(options.mode)

    def need(width: int, height: int, bit_depth: int) -> int:
        pixels = width * height
        if options.mode == "ds":
            out = -(-width // SCALE) * -(-height // SCALE)
        elif options.outscale is not None:
            # Both the x4 result and its resized copy are alive while it is resized.
            out = pixels * (SCALE ** 2 + options.outscale ** 2)
        else:
            out = pixels * SCALE ** 2
        if pipeline.tile == "auto":
            calls = min(pixels * per_pixel, pipeline.memory_budget)
        elif pipeline.tile:
            calls = min(pixels, (pipeline.tile + 2 * pad) ** 2) * per_pixel
        else:
            calls = pixels * per_pixel
        shared = pipeline.conditions_budget if options.samples > 1 else 0
        writer = 8 + (96 if bit_depth == 16 else 0)
        return int(3 * 3 * value * pixels + out * (2 * 3 * value + writer) + calls + shared)

    return need


def read_job(job: Job, need: Optional[Callable[[int, int, int], int]] = None):
    """The job's decoded image, or the reason there is none (a string). `need`: see read_image."""
    if job.error is not None:
        return job.error
    try:
        return read_image(job.source, need)
    except ImageReadError as e:
        return f"cannot read: {e.reason}"
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types on hostile files,
        # and in a reading thread an escaped one would end the whole batch
        return f"cannot read: {type(e).__name__}: {e}"


def process_file(pipeline: Pipeline, job: Job, options: Options, image=None, x: Optional[torch.Tensor] = None,
                 samples: Optional[Sequence[torch.Tensor]] = None, progress: bool = False) -> FileResult:
    """Read (unless `image`, read_job's answer, is given), run every sample (unless `samples`
    holds them already, one per output) on the image's tensor (`x` when already made), write.
    Every problem becomes the result's error; samples that succeeded before a failure are kept on
    disk and listed in `outputs`."""
    result = FileResult(job.source)
    if image is None:
        image = read_job(job)
    if isinstance(image, str):
        result.error = image
        return result
    try:
        return _process(pipeline, job, options, image, x, samples, progress, result)
    except MemoryError:
        # numpy's and Pillow's allocations raise it; the arrays go with the frames, so the next
        # file starts with the memory back.
        result.error = "out of memory while processing it"
        return result


def _process(pipeline: Pipeline, job: Job, options: Options, image, x, samples, progress: bool,
             result: FileResult) -> FileResult:
    prepared = None
    if samples is None:
        if x is None:
            x = to_tensor(image.rgb, device=pipeline.device, dtype=pipeline.dtype)
        prepared = pipeline.prepare(x, keep=len(job.outputs) > 1)
    problems = []
    alpha = None
    size = _output_size(image, options)
    for k, out in enumerate(job.outputs):
        label = f"sample {k}: " if len(job.outputs) > 1 else ""
        if options.skip_existing and out.is_file():
            continue  # written atomically by an earlier run, so complete
        try:
            y = samples[k] if samples is not None else sample(prepared, options, k, progress)
        except (RuntimeError, ValueError) as e:  # includes CUDA out-of-memory
            problems.append(f"{label}model failed ({type(e).__name__}: {e})")
            continue
        finite = torch.isfinite(y)
        if not bool(finite.all()):
            # Never patch over: a NaN image written as noise (as the authors' script did) looks
            # like a result; report it instead and leave no file for it.
            nan = int(torch.isnan(y).sum())
            problems.append(f"{label}model output is not finite ({nan} NaN, "
                            f"{int((~finite).sum()) - nan} Inf values); try a lower --tau")
            continue
        if size is not None:
            y = resize(y, size, "bicubic")
        rgb = from_tensor(y)
        del y   # a large output's tensor, no longer needed once copied for writing
        if image.alpha is not None and alpha is None:
            alpha = (upscale_alpha(image.alpha, SCALE, size) if options.mode == "sr"
                     else downscale_alpha(image.alpha, SCALE))
        if alpha is not None and out.suffix.lower() in _JPEG_SUFFIXES and not result.notes:
            # Real-ESRGAN switches such files to PNG; here the name was promised before the file
            # was read (--skip-existing relies on it), so the loss is said instead.
            result.notes.append("its alpha channel is not in the JPEG output (JPEG has none; "
                                "--ext png or auto keeps it)")
        try:
            write_image(out, rgb, alpha=alpha, grayscale=image.grayscale, bit_depth=image.bit_depth)
        except (OSError, ValueError) as e:
            problems.append(f"{label}cannot write {out} ({e})")
            continue
        result.outputs.append(out)
    if problems:
        result.error = "; ".join(problems)
    return result


def _check_components(model, options: Options) -> None:
    if options.mode != "ds" or options.component is None:
        return
    k = model.config.mixture_components
    bad = [c for c in options.component if not 0 <= c < k]
    if bad:
        raise InferenceError(f"component {bad[0]} does not exist: this model's degradation mixture "
                             f"has components 0..{k - 1}")


@contextlib.contextmanager
def _prefetch(jobs: Sequence[Job], workers: int, need=None):
    """read_job's answers in job order. With workers > 0, decoding runs in threads (Pillow and
    numpy release the GIL) at most 2 x workers images ahead, so memory stays bounded."""
    if workers <= 0:
        yield (read_job(j, need) for j in jobs)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdflow-read") as pool:
        def ordered():
            it = iter(jobs)
            pending = collections.deque(pool.submit(read_job, j, need) for j in itertools.islice(it, 2 * workers))
            while pending:
                image = pending.popleft().result()
                pending.extend(pool.submit(read_job, j, need) for j in itertools.islice(it, 1))
                yield image
        gen = ordered()
        try:
            yield gen
        finally:
            gen.close()  # an interrupted run: drop what was read ahead, wait for running reads


def _batched_samples(pipeline: Pipeline, xs: List[torch.Tensor], options: Options, n: int) -> List[List[torch.Tensor]]:
    """samples[i][k] for the same-size images xs: sample k of image i is drawn with its own
    generator seeded seed + k, as `sample` draws it alone, so batching changes only float rounding."""
    prepared = pipeline.prepare(torch.cat(xs), keep=n > 1)
    per_k = [sample(prepared, options, k).split(1) for k in range(n)]
    return [[per_k[k][i] for k in range(n)] for i in range(len(xs))]


def _groups(pipeline: Pipeline, jobs: Sequence[Job], images, options: Options):
    """Lists of (job, image, tensor) in job order: runs of consecutive readable images of one
    size that need no tiling, at most batch_size long; every other image alone. The tensor is
    None where none was made (batch_size 1, unreadable images)."""
    group: list = []
    for job, image in zip(jobs, images):
        x = None
        if options.batch_size > 1 and not isinstance(image, str):
            try:
                x = to_tensor(image.rgb, device=pipeline.device, dtype=pipeline.dtype)
            except MemoryError:
                pass   # alone, where process_file reports it
        batchable = x is not None and pipeline.tile_for(options.mode, *x.shape[-2:]) is None
        if group and (not batchable or x.shape != group[0][2].shape or len(group) == options.batch_size):
            yield group
            group = []
        if batchable:
            group.append((job, image, x))
        else:
            yield [(job, image, x)]
    if group:
        yield group


def run(pipeline: Pipeline, jobs: Sequence[Job], options: Options, progress: bool = True,
        log: Optional[Callable[[str], None]] = None,
        ignored: Sequence[Tuple[Path, str]] = ()) -> Summary:
    """Process `jobs` with a progress bar; failures are logged as they happen (to stderr unless
    `log` is given) and collected in the summary, with the `ignored` paths (plan's)."""
    from tqdm import tqdm

    _check_components(pipeline.model, options)
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    summary = Summary(ignored=list(ignored))
    # A run killed while writing leaves its hidden partial files; they are this run's to replace.
    stale = [p for j in jobs for p in map(partial_path, j.outputs) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log(f"note: removed {len(stale)} unfinished output file(s) of an interrupted run (e.g. {stale[0]})")
    if options.skip_existing:
        # A resumed run: images with every output on disk are not even read.
        summary.skipped = [j.source for j in jobs if j.error is None and all(p.is_file() for p in j.outputs)]
        done = set(summary.skipped)
        jobs = [j for j in jobs if j.source not in done]
    need = processing_memory(pipeline, options)
    with tqdm(total=len(jobs), desc=options.mode, unit="img", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar, _prefetch(jobs, options.workers, need) as images:
        for group in _groups(pipeline, jobs, images, options):
            samples = [None] * len(group)
            if len(group) > 1:
                try:
                    samples = _batched_samples(pipeline, [x for _, _, x in group], options,
                                               len(group[0][0].outputs))
                except (RuntimeError, ValueError, MemoryError) as e:
                    # One at a time instead: each image then succeeds or fails on its own.
                    log(f"batch of {len(group)} failed ({type(e).__name__}: {e}); "
                        f"running its images one by one")
            for (job, image, x), ys in zip(group, samples):
                bar.set_postfix_str(job.rel.as_posix()[-40:], refresh=False)
                result = process_file(pipeline, job, options, image, x, ys, progress)
                for note in result.notes:
                    log(f"note: {job.source}: {note}")
                if result.ok:
                    summary.done.append(result)
                else:
                    summary.failed.append(result)
                    log(f"FAILED {job.source}: {result.error}")
                bar.update()
    return summary


def run_batch(pipeline: Pipeline, input_path: Union[str, Path], output_dir: Union[str, Path], options: Options,
              progress: bool = True, log: Optional[Callable[[str], None]] = None) -> Summary:
    """plan + run: every image of a file or folder into `output_dir`."""
    ignored: List[Tuple[Path, str]] = []
    jobs = plan(input_path, output_dir, options, ignored=ignored)
    return run(pipeline, jobs, options, progress=progress, log=log, ignored=ignored)
