"""The tables of docs/benchmark.md: `sdflow eval` on the benchmark of scripts/make_benchmark_data.sh.

    python benchmarks/bench_eval.py --data bench                       # bicubic rows, every preset built
    python benchmarks/bench_eval.py --data bench --model trained.safetensors --tau 0 0.8
    python benchmarks/bench_eval.py --data bench --presets realistic --random tiny   # timing only

Each preset folder (bench/<preset>/HR, LR) is evaluated once with sdflow.evaluation, exactly as
`sdflow eval --hr bench/<preset>/HR --lr bench/<preset>/LR -o <out>/<preset>` would (the full
outputs, report included, go to --out), and its wall time is measured. The Markdown tables printed
give the means per photo subset (samples, skimage, mate: the first folder of each name) and over all.

--random PRESET evaluates a model of that size with seeded random weights (every parameter
perturbed, as the tests do): its quality rows are meaningless, its time is what a trained model of
that size costs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sdflow import evaluation
from sdflow.evaluation import DS_COLUMNS, SR_COLUMNS, format_value, mean_rows

SR_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "lr_psnr")
DS_KEYS = ("psnr_rgb", "ssim_rgb", "noise", "noise_gap", "lapvar", "lapvar_gap", "grad", "grad_gap")


def random_model(preset: str):
    from sdflow import ModelConfig, SDFlow

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SDFlow(ModelConfig.preset(preset))
        with torch.no_grad():
            # Zero-initialised last layers make couplings identities; perturbed, every layer works.
            for p in model.parameters():
                if p.abs().max() == 0:
                    p.normal_(0.0, 0.02)
    return model.eval()


def subset_means(rows, columns):
    """[(subset, mean rows)] for each first path component of the image names, then "all"."""
    subsets = sorted({r["image"].split("/")[0] for r in rows if "/" in r["image"]})
    out = [(s, mean_rows([r for r in rows if r["image"].startswith(s + "/")], columns)) for s in subsets]
    return out + [("all", mean_rows(rows, columns))]


def markdown(table_rows, columns, keys):
    cols = [c for c in columns if c.key in keys]
    head = ["preset", "photos", "method", "images"] + [c.title for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * len(cols)]
    for preset, subset, r in table_rows:
        method = f"SDFlow τ={r['tau']:g}" if r["method"] == "sdflow" else r["method"]
        cells = [preset, subset, method, str(r["images"])]
        cells += [format_value(r.get(c.key), c.digits) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("bench"), help="output folder of make_benchmark_data.sh")
    ap.add_argument("--presets", nargs="+", default=None,
                    help="preset folders to evaluate (default: every OUT/<name> with HR and LR)")
    ap.add_argument("--out", type=Path, default=None, help="evaluation outputs (default: DATA/eval)")
    ap.add_argument("--model", default=None, help="an SDFlow checkpoint to evaluate beside bicubic")
    ap.add_argument("--random", default=None, metavar="PRESET",
                    help="a random-weight model of this size instead (timing only)")
    ap.add_argument("--tau", type=float, nargs="+", default=[0.0])
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--direction", choices=("sr", "ds", "both"), default="both")
    ap.add_argument("--max-images", type=int, default=None)
    args = ap.parse_args(argv)

    presets = args.presets or sorted(p.name for p in args.data.iterdir()
                                     if (p / "HR").is_dir() and (p / "LR").is_dir())
    if not presets:
        print(f"no <preset>/HR and <preset>/LR under {args.data}; run scripts/make_benchmark_data.sh",
              file=sys.stderr)
        return 2
    out = args.out or args.data / "eval"
    model = None
    if args.model:
        import sdflow
        model = sdflow.load(args.model)
    elif args.random:
        model = random_model(args.random)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: "
          f"{args.model or (f'random {args.random}' if args.random else 'none (bicubic only)')}")

    sr_table, ds_table, times = [], [], []
    for preset in presets:
        t0 = time.perf_counter()
        res = evaluation.evaluate_folders(
            args.data / preset / "HR", args.data / preset / "LR", out / preset, model=model,
            max_images=args.max_images, taus=args.tau, samples=args.samples,
            direction=args.direction, progress=False, log=lambda m: None,
            settings={"model": args.model or (f"random {args.random}" if args.random else None)})
        wall = time.perf_counter() - t0
        n = len({r["image"] for r in res.sr_rows + res.ds_rows})
        times.append((preset, n, res.seconds, wall))
        sr_table += [(preset, s, r) for s, rows in subset_means(res.sr_rows, SR_COLUMNS) for r in rows]
        ds_table += [(preset, s, r) for s, rows in subset_means(res.ds_rows, DS_COLUMNS) for r in rows]
        if not res.ok:
            print(f"{preset}: problems: {res.skipped} {res.unmatched_hr} {res.unmatched_lr}", file=sys.stderr)

    if sr_table:
        print("\n### Super-resolution (against the HR; Y with a 4-pixel border)\n")
        print(markdown(sr_table, SR_COLUMNS, SR_KEYS))
    if ds_table:
        print("\n### Downscaling (against the real LR; noise, lap-var, grad in 8-bit levels)\n")
        print(markdown(ds_table, DS_COLUMNS, DS_KEYS))
    print("\n### Time\n\n| preset | images | evaluation (s) | with writing the outputs (s) |\n|---|---:|---:|---:|")
    for preset, n, seconds, wall in times:
        print(f"| {preset} | {n} | {seconds:.1f} | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
