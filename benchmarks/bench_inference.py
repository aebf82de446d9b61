"""Inference speed, peak memory and reduced-precision cost of SR and DS; the 4K memory check.

    python benchmarks/bench_inference.py                  # everything (about 10 minutes on 2 CPU cores)
    python benchmarks/bench_inference.py --parts speed --repeats 7
    python benchmarks/bench_inference.py --parts memory 4k

Model: the paper-size SDFlow with the parity fixture's weights (seeded random weights, every
parameter perturbed) when ../shared/fixtures/official_parity.pt exists, otherwise the paper
config with seeded perturbed weights; the same weights for every path.

Paths:
  authors       the authors' code path, emulated faithfully (benchmarks/authors_path.py)
  modules       SDFlow.super_resolve / downscale through the model's own modules (training mode,
                under torch.no_grad): the differentiable reference, what sampling was before it fused
  library       sdflow.load(...) then super_resolve / downscale, exactly as a library user calls
                them: eval mode, float32, the model's fused sampling form (channels-last)
  library-bf16  the same with precision="bf16": the convolutional nets in bfloat16
  library-fp16  the same in float16 (CUDA; on CPU only timed at the smallest size: it is slow there)

speed:   paths measured side by side in one process, interleaved round by round, after one
         warm-up call each; the median over rounds. Seconds per call and per output megapixel.
memory:  each (path, task, size) in a fresh process: peak resident set (ru_maxrss) and its rise
         over the resident set just before the call; CUDA: torch.cuda.max_memory_allocated.
floor:   the convolution FLOPs of one library (fused fp32) call (torch.utils.flop_counter), this machine's
         best float32 rate on the model's 3x3 convolution shapes, and the speed-up over the
         authors' path that an exact float32 implementation could reach at most (authors' time /
         (FLOPs / rate)), next to the one reached; on a CPU also one convolution with oneDNN's
         bfloat16 products (alone, and as float32 emulated by three bf16 products), time and error.
samples: N samples of one image (--samples, default 4): the authors' path N times, the library
         N times, and the library with the image's condition made once (what --samples N does).
quality: PSNR of the reduced-precision outputs against the library's fp32 (images mapped to [0, 1],
         not clamped), SR and DS of the sample photos at tau 0 and at tau 0.8 with shared noise.
batch:   `sdflow sr/ds --batch-size B` on a folder of many small images (the job behind the command,
         reading and writing PNGs included), images per second for B = 1, 4, 16; the bundled
         default model and the paper-size one, both through a Pipeline at fp32.
4k:      `sdflow sr` of a 960x540 image to 3840x2160 in a fresh process, peak ru_maxrss: a
         Pipeline at fp32 with auto tiles, and the `sdflow sr` command as installed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("SDFLOW_PARITY_FIXTURE") or REPO.parent / "shared" / "fixtures" / "official_parity.pt")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PATHS = ["authors", "modules", "library", "library-bf16", "library-fp16"]
SR_SIZES = [64, 128]      # LR sides
DS_SIZES = [256, 512]     # HR sides
GIB = 2 ** 30


def bench_model(device="cpu"):
    """The benchmark's paper-size model with random-but-perturbed weights."""
    import torch

    import sdflow
    from sdflow.config import ModelConfig
    from sdflow.model import SDFlow

    if FIXTURE.is_file():
        fx = torch.load(FIXTURE, weights_only=True)
        with tempfile.TemporaryDirectory() as d:
            for name, sd in fx["state_dicts"].items():
                torch.save(sd, Path(d) / f"{name}.pth")
            return sdflow.load(d, device=device), "parity fixture weights"
    torch.manual_seed(0)
    model = SDFlow(ModelConfig.preset("paper"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("out_log_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 - 0.5)
            elif "conv3" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(device).eval(), "seeded perturbed weights (fixture not found)"


def make_runner(model, path):
    """f(task, x, tau) for one path."""
    import torch

    if path == "authors":
        from authors_path import AuthorsPath

        a = AuthorsPath(model)
        return lambda task, x, tau: a.super_resolve(x, tau) if task == "sr" else a.downscale(x, tau)
    if path == "modules":
        import copy

        modules = copy.deepcopy(model).train()   # sampling in training mode runs the modules themselves

        def run(task, x, tau):
            with torch.no_grad():
                return modules.super_resolve(x, tau) if task == "sr" else modules.downscale(x, tau)
        return run
    precision = path.split("-")[1] if "-" in path else None
    return lambda task, x, tau: (model.super_resolve(x, tau, precision=precision) if task == "sr"
                                 else model.downscale(x, tau, precision=precision))


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(device, f) -> float:
    """Seconds one call of f takes, the device's queued work included."""
    _sync(device)
    t = time.perf_counter()
    f()
    _sync(device)
    return time.perf_counter() - t


def _interleaved(device, runs: dict, repeats: int) -> dict:
    """{name: [seconds per round]}: each round calls every run once, in turn, so that load from
    other work on shared cores falls on all of them alike."""
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            times[k].append(_timed(device, f))
    return times


def _image(task, side, device):
    import torch

    g = torch.Generator().manual_seed(side)
    return (torch.rand(1, 3, side, side, generator=g) * 2 - 1).to(device)


def speed(device, repeats, sr_sizes, ds_sizes, fp16_all, only=None):
    import torch

    model, source = bench_model(device)
    print(f"\n## speed ({device}, torch {torch.__version__}, {torch.get_num_threads()} threads; {source})")
    from authors_path import AuthorsPath

    lr, hr = _image("sr", 24, device), _image("ds", 64, device)
    err_sr, err_ds = AuthorsPath(model).check(lr, hr)
    print(f"authors-path emulation vs model: relative error SR {err_sr:.1e}, DS {err_ds:.1e}")
    chosen = [p for p in PATHS if not only or p in only or p == "authors"]
    runners = {p: make_runner(model, p) for p in chosen}
    print(f"{'task':<4} {'input':>9} {'path':<10} {'median s':>9} {'s/out MP':>9} {'speed-up':>9}  rounds")
    for task, sizes in (("sr", sr_sizes), ("ds", ds_sizes)):
        for side in sizes:
            x = _image(task, side, device)
            out_mp = (side * 4 if task == "sr" else side // 4) ** 2 / 1e6
            paths = [p for p in chosen if p != "library-fp16" or device == "cuda" or fp16_all or side == sizes[0]]
            times = {p: [] for p in paths}
            for p in paths:  # warm-up
                runners[p](task, x, 0.8)
            for _ in range(repeats):
                for p in paths:
                    if p == "library-fp16" and device == "cpu" and times[p]:
                        continue  # one timing is enough to show it is slow on a CPU
                    times[p].append(_timed(device, lambda: runners[p](task, x, 0.8)))
            base = statistics.median(times["authors"])
            for p in paths:
                med = statistics.median(times[p])
                print(f"{task:<4} {f'{side}x{side}':>9} {p:<10} {med:9.3f} {med / out_mp:9.2f} {base / med:8.2f}x  "
                      f"{' '.join(f'{t:.2f}' for t in times[p])}")


# ----- memory -------------------------------------------------------------------------------

def _current_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def memory_child(path, task, side, device):
    import torch

    model, _ = bench_model(device)
    run = make_runner(model, path)
    run(task, _image(task, 16 if task == "sr" else 32, device), 0.8)  # warm-up at a tiny size
    x = _image(task, side, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _current_rss()
    run(task, x, 0.8)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        rise = peak - before
    else:
        peak = _peak_rss()
        rise = peak - before
    print(json.dumps({"peak": peak, "rise": rise}))


def _child(args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(device, sr_sizes, ds_sizes):
    from sdflow.config import ModelConfig
    from sdflow.tiling import estimate_memory

    paper = ModelConfig.preset("paper")
    print(f"\n## peak memory ({device}; each in a fresh process)")
    what = "max_memory_allocated" if device == "cuda" else "ru_maxrss"
    print(f"{'task':<4} {'input':>9} {'path':<10} {'peak MiB':>9} {'rise MiB':>9} {'B/in px':>8} {'est B/px':>8}"
          f"   ({what}; rise = peak - before the call)")
    for task, sizes in (("sr", sr_sizes), ("ds", ds_sizes)):
        for side in sizes:
            for p in ["authors", "modules", "library", "library-bf16"]:
                r = _child(["--child-memory", p, task, str(side), device])
                est = estimate_memory(paper, task, p.split("-")[1] if "-" in p else "fp32",
                                      fused=p.startswith("library"))
                print(f"{task:<4} {f'{side}x{side}':>9} {p:<10} {r['peak'] / 2**20:9.0f} {r['rise'] / 2**20:9.0f} "
                      f"{r['rise'] / side ** 2:8.0f} {est:8.0f}")


# ----- quality of reduced precision ------------------------------------------------------

def quality(device, source=None):
    import numpy as np
    import torch
    from PIL import Image

    if source is None:
        model, source = bench_model(device)
    else:
        import sdflow

        model = sdflow.load(source, device=device)
    print(f"\n## reduced precision against fp32 ({device}; {source}; --precision auto here: "
          f"{model.sampling_precision('auto')})")
    samples = sorted((REPO / "src" / "sdflow" / "assets" / "samples").glob("*.png"))
    precisions = ["bf16", "fp16"]
    print(f"{'task':<4} {'tau':>4} {'precision':<9} {'PSNR dB':>8} {'max |d| (8-bit levels)':>24}")
    rows = {}
    for path in samples:
        img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1)
        img = img.permute(2, 0, 1)[None, :, :256, :256].to(device)
        lr = torch.nn.functional.avg_pool2d(img, 4)
        for task, x in (("sr", lr), ("ds", img)):
            for tau in (0.0, 0.8):
                g = torch.Generator(device=device).manual_seed(0)
                if task == "sr":
                    z = model.sample_hf_latent(x, tau, g)
                    outs = {p: model.super_resolve(x, hf_latent=z, precision=p) for p in ("fp32", *precisions)}
                else:
                    z = model.sample_deg_latent(x, tau, generator=g)
                    outs = {p: model.downscale(x, deg_latent=z, precision=p) for p in ("fp32", *precisions)}
                for p in precisions:
                    d = (outs[p] - outs["fp32"]) / 2
                    rows.setdefault((task, tau, p), []).append(
                        (10 * np.log10(1.0 / max(d.pow(2).mean().item(), 1e-20)), d.abs().max().item() * 255))
    for (task, tau, p), v in rows.items():
        psnr = min(r[0] for r in v)
        mx = max(r[1] for r in v)
        print(f"{task:<4} {tau:>4} {p:<9} {psnr:8.1f} {mx:24.2f}   (worst of {len(v)} photos)")


# ----- the 4K SR memory check ------------------------------------------------------------

def fourk_child(model_file, image_file, out_file):
    """A Pipeline at fp32 with auto tiles, then write the PNG."""
    import numpy as np
    import torch
    from PIL import Image

    from sdflow.pipeline import Pipeline

    t0 = time.perf_counter()
    pipe = Pipeline.load(model_file, "cpu", "fp32")
    x = torch.from_numpy(np.asarray(Image.open(image_file).convert("RGB"), dtype=np.float32) / 127.5 - 1)
    x = x.permute(2, 0, 1)[None].contiguous()
    tile = pipe.tile_for("sr", x.shape[2], x.shape[3])
    y = pipe.super_resolve(x, 0.8, seed=0)
    if not bool(torch.isfinite(y).all()):
        raise SystemExit("non-finite output")
    rgb = ((y[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    del y
    Image.fromarray(rgb).save(out_file)
    print(json.dumps({"peak": _peak_rss(), "tile": tile, "seconds": time.perf_counter() - t0,
                      "shape": list(rgb.shape)}))


def fourk(sr_budget=2 * GIB):
    from PIL import Image

    from sdflow.checkpoints import save_model

    print("\n## sdflow sr of a 960x540 image to 3840x2160 (cpu, fresh process, peak ru_maxrss; target <= 2 GiB)")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model, source = bench_model("cpu")
        save_model(model, d / "model.safetensors")
        del model
        photo = Image.open(REPO / "src" / "sdflow" / "assets" / "samples" / "astronaut.png").convert("RGB")
        photo.resize((960, 540), Image.BICUBIC).save(d / "in.png")
        r = _child(["--child-4k", str(d / "model.safetensors"), str(d / "in.png"), str(d / "out.png")])
        verdict = "meets" if r["peak"] <= sr_budget else "MISSES"
        print(f"Pipeline (fp32, auto tile {r['tile']}, pad 16): peak {r['peak'] / GIB:.2f} GiB, "
              f"{r['seconds']:.0f} s, output {r['shape'][1]}x{r['shape'][0]}: {verdict} the target")
        # The command as it is wired now, in a fresh process that reports its own peak; with
        # --samples 2 the tiles' conditions are kept for the second sample.
        env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        report = ("import resource, sys; from sdflow.cli import main; rc = main(sys.argv[1:]); "
                  "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(rc)")
        for extra in (["--precision", "fp32"], ["--precision", "fp32", "--samples", "2"], []):
            cmd = [sys.executable, "-c", report, "sr", "-i", str(d / "in.png"), "-o", str(d / f"cli{len(extra)}"),
                   "--model", str(d / "model.safetensors"), "--quiet", *extra]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - t0
            peaks = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
            status = "ok" if proc.returncode == 0 and peaks else f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
            peak = peaks[0] if peaks else float("nan")
            verdict = "meets" if peak <= sr_budget else "MISSES"
            print(f"`sdflow sr` {' '.join(extra) or '(defaults)'}: peak {peak / GIB:.2f} GiB, {seconds:.0f} s, "
                  f"{status}: {verdict} the target")


def batch(device, repeats, count=32, sr_side=32, ds_side=128, sizes=(1, 4, 16)):
    import numpy as np
    import torch

    import sdflow
    from sdflow.checkpoints import bundled_model_path
    from sdflow.imageio import write_image
    from sdflow.inference import Options, plan, run
    from sdflow.pipeline import Pipeline

    models = {"bundled default": sdflow.load(bundled_model_path(), device=device),
              "paper size": bench_model(device)[0]}
    rng = np.random.default_rng(0)
    print(f"\n## batch: {count} images per folder, device {device}, {torch.get_num_threads()} threads; "
          f"images/s, median of {repeats}")
    print("model            task  input     " + "  ".join(f"B={b:<4d}" for b in sizes))
    with tempfile.TemporaryDirectory() as tmp:
        for task, side in (("sr", sr_side), ("ds", ds_side)):
            src = Path(tmp) / task
            for i in range(count):
                write_image(src / f"im{i:03d}.png", rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
            for name, model in models.items():
                pipe = Pipeline(model, "fp32")
                rates = []
                for b in sizes:
                    opts = Options(mode=task, tau=0.8, batch_size=b, workers=1)
                    times = []
                    for r in range(repeats + 1):  # round 0 warms up; outputs go to fresh folders
                        jobs = plan(src, Path(tmp) / f"out_{task}_{b}_{r}", opts)
                        summaries = []
                        times.append(_timed(device, lambda: summaries.append(run(pipe, jobs, opts, progress=False))))
                        assert summaries[0].ok, summaries[0].report()
                    rates.append(count / statistics.median(times[1:]))
                print(f"{name:16s} {task:4s}  {side}x{side:<5d} " + "  ".join(f"{v:6.1f}" for v in rates))



# ----- several samples of one image ---------------------------------------------------------

def samples(device, repeats, sr_side, ds_side, n=4):
    """N samples of one image: the authors' code runs everything N times; sdflow makes the
    image's condition once (`sr_condition` / `ds_condition`, as `--samples N` does)."""
    import torch

    from authors_path import AuthorsPath

    model, source = bench_model(device)
    authors, library = AuthorsPath(model), model
    print(f"\n## {n} samples of one image ({device}, {torch.get_num_threads()} threads; {source})")
    print(f"{'task':<4} {'input':>9} {'path':<22} {'s / image':>9} {'s / sample':>10} {'speed-up':>9}")
    for task, side in (("sr", sr_side), ("ds", ds_side)):
        x = _image(task, side, device)
        gens = lambda: [torch.Generator(device).manual_seed(k) for k in range(n)]  # noqa: E731
        if task == "sr":
            one, make = (lambda g, c=None: library.super_resolve(x, 0.8, g, condition=c)), library.sr_condition
            theirs = lambda: authors.super_resolve(x, 0.8)  # noqa: E731
        else:
            one, make = (lambda g, c=None: library.downscale(x, 0.8, generator=g, condition=c)), library.ds_condition
            theirs = lambda: authors.downscale(x, 0.8)  # noqa: E731

        def shared():
            c = make(x)
            return [one(g, c) for g in gens()]
        runs = {"authors (N calls)": lambda: [theirs() for _ in range(n)],
                "library (N calls)": lambda: [one(g) for g in gens()],
                "library (shared)": shared}
        a, b = runs["library (N calls)"](), runs["library (shared)"]()
        assert all(torch.equal(u, v) for u, v in zip(a, b)), "sharing the condition changed a sample"
        times = _interleaved(device, runs, repeats)
        base = statistics.median(times["authors (N calls)"])
        for k in runs:
            med = statistics.median(times[k])
            print(f"{task:<4} {f'{side}x{side}':>9} {k:<22} {med:9.2f} {med / n:10.3f} {base / med:8.2f}x")


# ----- how fast float32 can be at all -------------------------------------------------------

def _bf16_emulation(repeats, side):
    """The one way around the float32 rate: oneDNN's bf16 "fpmath" mode (bfloat16 products,
    float32 sums and output) on one 64->64 convolution, alone (too inexact: sampling allows
    1e-4) and as "bf16x3" (x = x_hi + x_lo, w = w_hi + w_lo, the three leading products as one
    convolution over 3x the channels), which is exact enough but has to beat float32."""
    import torch
    import torch.nn.functional as F

    fmt, conv = torch.channels_last, torch.backends.mkldnn.conv
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, side, side, generator=g).contiguous(memory_format=fmt)
    w = (torch.randn(64, 64, 3, 3, generator=g) * 0.05).contiguous(memory_format=fmt)

    def split(t):
        hi = t.bfloat16().float()
        return hi, (t - hi).bfloat16().float()

    (xh, xl), (wh, wl) = split(x), split(w)
    x3 = torch.cat([xh, xl, xh], 1).contiguous(memory_format=fmt)
    w3 = torch.cat([wh, wh, wl], 1).contiguous(memory_format=fmt)
    exact = F.conv2d(x.double(), w.double(), padding=1)
    before = conv.fp32_precision
    rows = []
    try:
        for name, mode, a, b in (("float32", "ieee", x, w), ("bf16 fpmath", "bf16", x, w),
                                 ("bf16x3 (conv only)", "bf16", x3, w3)):
            conv.fp32_precision = mode
            with torch.inference_mode():
                y = F.conv2d(a, b, padding=1)
                ts = [_timed("cpu", lambda: F.conv2d(a, b, padding=1)) for _ in range(max(repeats, 3) + 2)]
            err = ((y.double() - exact).norm() / exact.norm()).item()
            rows.append((name, min(ts[2:]) * 1e3, err))
    finally:
        conv.fp32_precision = before
    print(f"64->64 3x3 convolution at {side}x{side}, oneDNN float32 vs bfloat16 products:")
    for name, ms, err in rows:
        print(f"  {name:<20} {ms:7.2f} ms  relative error {err:.1e}")


def floor(device, repeats, sr_side, ds_side):
    """The convolutions' FLOPs of one library (fused fp32) call, this machine's best float32
    convolution rate on the model's own layer shapes, and what they allow: no exact float32
    implementation that runs these convolutions is faster than FLOPs / rate."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from authors_path import AuthorsPath

    model, source = bench_model(device)
    authors, library = AuthorsPath(model), model
    fmt = torch.channels_last
    best = 0.0
    with torch.inference_mode():
        # The shapes that carry most of the FLOPs: RRDB dense-block and 64-channel 3x3 convolutions.
        for cin, cout in ((64, 64), (192, 64), (128, 32), (64, 32)):
            x = torch.randn(1, cin, sr_side, sr_side, device=device).contiguous(memory_format=fmt)
            w = torch.randn(cout, cin, 3, 3, device=device).contiguous(memory_format=fmt)
            flops = 2 * cin * cout * 9 * sr_side * sr_side
            ts = [_timed(device, lambda: F.conv2d(x, w, padding=1)) for _ in range(max(repeats, 3) + 2)]
            best = max(best, flops / min(ts[2:]) / 1e9)
    print(f"\n## float32 floor ({device}, {torch.get_num_threads()} threads; {source})")
    print(f"best float32 3x3 convolution rate on the model's shapes: {best:.0f} GFLOP/s")
    if device == "cpu":
        _bf16_emulation(repeats, sr_side)
    print(f"{'task':<4} {'input':>9} {'conv GFLOP':>10} {'floor s':>8} {'authors s':>9} {'library':>7} "
          f"{'max speed-up':>12} {'reached':>8}")
    for task, side in (("sr", sr_side), ("ds", ds_side)):
        x = _image(task, side, device)
        fast_run = (lambda: library.super_resolve(x, 0.8)) if task == "sr" else (lambda: library.downscale(x, 0.8))
        auth_run = (lambda: authors.super_resolve(x, 0.8)) if task == "sr" else (lambda: authors.downscale(x, 0.8))
        counter = FlopCounterMode(display=False)
        with counter:
            fast_run()
        conv = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op)) / 1e9
        times = _interleaved(device, {"authors": auth_run, "fast": fast_run}, repeats)
        lower = conv / best
        a, f = statistics.median(times["authors"]), statistics.median(times["fast"])
        print(f"{task:<4} {f'{side}x{side}':>9} {conv:10.1f} {lower:8.2f} {a:9.2f} {f:7.2f} {a / lower:11.2f}x "
              f"{a / f:7.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["speed", "floor", "samples", "memory", "quality", "batch", "4k"],
                    choices=["speed", "floor", "samples", "memory", "quality", "batch", "4k"])
    ap.add_argument("--samples", type=int, default=4, help="samples per image for --parts samples")
    ap.add_argument("--model", default=None,
                    help="--parts quality with this model (any sdflow.load source, e.g. 'default', a trained "
                         "model) instead of the random-weight paper-size one")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sr-sizes", type=int, nargs="+", default=SR_SIZES, help="LR sides for SR")
    ap.add_argument("--ds-sizes", type=int, nargs="+", default=DS_SIZES, help="HR sides for DS")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                    help="--parts speed: only these paths (beside the authors' one, the baseline)")
    ap.add_argument("--fp16-all-sizes", action="store_true", help="time fp16 at every size on CPU too")
    ap.add_argument("--child-memory", nargs=4, metavar=("PATH", "TASK", "SIDE", "DEVICE"), help=argparse.SUPPRESS)
    ap.add_argument("--child-4k", nargs=3, metavar=("MODEL", "IMAGE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_memory:
        p, task, side, device = args.child_memory
        return memory_child(p, task, int(side), device)
    if args.child_4k:
        return fourk_child(*args.child_4k)

    import platform

    import torch

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"# bench_inference: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, devices {devices}")
    for device in devices:
        if "speed" in args.parts:
            speed(device, args.repeats, args.sr_sizes, args.ds_sizes, args.fp16_all_sizes, args.paths)
        if "floor" in args.parts:
            floor(device, args.repeats, args.sr_sizes[-1], args.ds_sizes[-1])
        if "samples" in args.parts:
            samples(device, args.repeats, args.sr_sizes[-1], args.ds_sizes[-1], args.samples)
        if "memory" in args.parts:
            memory(device, args.sr_sizes, args.ds_sizes)
        if "quality" in args.parts:
            quality(device, args.model)
        if "batch" in args.parts:
            batch(device, args.repeats)
    if "4k" in args.parts:
        fourk()


if __name__ == "__main__":
    main()
