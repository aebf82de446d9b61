"""Seconds per training step and peak memory of `sdflow train`, per stage.

    python benchmarks/bench_train.py                      # tiny and paper on CPU, and CUDA if present
    python benchmarks/bench_train.py --configs tiny --devices cpu --steps 20
    python benchmarks/bench_train.py --configs default --precisions fp32 bf16   # train.amp side by side

Each (config, device) runs in its own process so that peak memory is that run's alone:
peak resident set size (getrusage) on CPU, torch.cuda.max_memory_allocated on CUDA.
The real training loop runs on random images; the first step of each stage is a warm-up
and is not timed. The paper config uses a reduced batch on CPU (--paper-cpu-batch) so
that it finishes in minutes; every other setting is the config's own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _make_images(root: Path, hr_side: int, lr_side: int, n: int = 4) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, side in (("hr", hr_side), ("lr", lr_side)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def _peak_mb(device: str) -> float:
    if device == "cuda":
        import torch
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_one(config: str, device: str, steps: int, batch: int, overrides) -> dict:
    import torch

    from sdflow.train.config import TrainConfig
    from sdflow.train.loop import train

    cfg = TrainConfig.load(REPO / "configs" / f"{config}.yaml")
    per_stage = max(steps, 2)
    over = [f"train.device={device}", f"train.steps={2 * per_stage}", f"train.stage1_steps={per_stage}",
            "log.tensorboard=false", "log.progress=false", f"log.every={10 ** 9}", "log.image_every=0",
            "checkpoint.every=0", "val.every=0", "train.grad_accum=1"]
    if batch:
        over.append(f"data.batch_size={batch}")
    cfg = cfg.with_overrides(over + list(overrides))
    times = []

    def tick(trainer):
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _make_images(tmp, cfg.data.hr_patch + 32, cfg.data.lr_patch + 8)
        cfg = cfg.with_overrides([f"data.hr_dir={tmp / 'hr'}", f"data.lr_dir={tmp / 'lr'}"])
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        train(cfg, tmp / "run", on_step_end=tick)
    # times[i] is the end of step i; the gaps inside a stage, minus its first, are timed.
    s1 = [times[i] - times[i - 1] for i in range(1, per_stage)]
    s2 = [times[i] - times[i - 1] for i in range(per_stage + 1, 2 * per_stage)]
    return {"config": config, "device": device, "batch": cfg.data.batch_size,
            "hr_patch": cfg.data.hr_patch, "threads": torch.get_num_threads(),
            "stage1_s_per_step": sum(s1) / len(s1), "stage2_s_per_step": sum(s2) / len(s2),
            "peak_mb": _peak_mb(device), "timed_steps_per_stage": len(s1),
            "wall_s": time.perf_counter() - start}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "paper"])
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--steps", type=int, default=6, help="steps per stage, the first one untimed (default 6)")
    ap.add_argument("--paper-cpu-steps", type=int, default=3, help="steps per stage for paper on CPU (default 3)")
    ap.add_argument("--paper-cpu-batch", type=int, default=2, help="batch for paper on CPU (default 2)")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"],
                    help="train.amp of each run: fp32 (none), bf16, fp16 (default: fp32)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, repeatable")
    ap.add_argument("--one", nargs=4, metavar=("CONFIG", "DEVICE", "STEPS", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        config, device, steps, batch = args.one
        print("RESULT " + json.dumps(run_one(config, device, int(steps), int(batch), args.overrides)), flush=True)
        return 0

    import torch
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    print(f"{'config':8} {'device':6} {'prec':5} {'batch':>5} {'patch':>5} {'stage 1 s/step':>15} "
          f"{'stage 2 s/step':>15} {'peak MiB':>9}")
    for device in devices:
        for config in args.configs:
            for prec in args.precisions:
                cpu_paper = config == "paper" and device == "cpu"
                steps = args.paper_cpu_steps if cpu_paper else args.steps
                batch = args.paper_cpu_batch if cpu_paper else 0
                cmd = [sys.executable, __file__, "--one", config, device, str(steps), str(batch)]
                for o in args.overrides + [f"train.amp={'none' if prec == 'fp32' else prec}"]:
                    cmd += ["--set", o]
                p = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                if p.returncode or not line:
                    print(f"{config:8} {device:6} {prec:5} failed:\n{p.stderr[-2000:]}")
                    continue
                r = json.loads(line[-1][7:])
                print(f"{r['config']:8} {r['device']:6} {prec:5} {r['batch']:5d} {r['hr_patch']:5d} "
                      f"{r['stage1_s_per_step']:15.3f} {r['stage2_s_per_step']:15.3f} {r['peak_mb']:9.0f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
