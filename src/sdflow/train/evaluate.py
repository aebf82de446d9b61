"""Paired evaluation of SR and DS against ground truth, beside the bicubic baselines.

Used by the training loop's validation and on its own, after training:

    python -m sdflow.train.evaluate --model runs/tiny --hr test/HR --lr test/LR --ds-tau 0 0.8

SR: super-resolution of the true LR at tau = 0, scored against the true HR (Y-PSNR and
Y-SSIM with a 4-pixel border, as in the SR literature). DS: realistic downscaling of the
true HR, scored against the true (degraded) LR by RGB PSNR and by the noise level it
shows (`sdflow.metrics.noise_sigma`, in 8-bit levels), which a bicubic downscale lacks.
All images are rounded to 8 bits before scoring, as they would be saved: the scorer of
`sdflow eval` (`sdflow.evaluation.scoring`), with the training log's names for its figures.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch


def _tau_key(name: str, tau: float, taus: Sequence[float]) -> str:
    return name if len(taus) == 1 else f"{name}@tau{tau:g}"


@torch.no_grad()
def evaluate_pairs(model, pairs: List[Tuple[torch.Tensor, torch.Tensor]], ds_taus: Sequence[float] = (0.0,),
                   device=None, seed: int = 0) -> Dict[str, float]:
    """Mean metrics over (HR [1,3,H,W], LR [1,3,H/4,W/4]) pairs in [-1, 1], sampled through a
    `sdflow.pipeline.Pipeline` at the model's own precision (float32: the same figures on every
    machine) and scored by `sdflow.evaluation`'s scorer. The model is put in eval mode for the
    duration and restored after."""
    from sdflow.evaluation import ds_scores, quantised, sr_scores
    from sdflow.pipeline import Pipeline
    from sdflow.resize import downscale, upscale

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    pipeline = Pipeline(model, "fp64" if model.dtype == torch.float64 else "fp32", tile=0)
    rows = []
    try:
        for i, (hr, lr) in enumerate(pairs):
            hr, lr = hr.to(device), lr.to(device)
            H, L = quantised(hr), quantised(lr)
            sr = pipeline.super_resolve(lr, 0.0)
            nonfinite = not bool(torch.isfinite(sr).all())
            # A diverged model scores low instead of stopping the run (NaN as the lowest level).
            sr_y = sr_scores(quantised(torch.nan_to_num(sr, nan=-1.0)), H, L, ("psnr_y", "ssim_y"))
            bic_y = sr_scores(quantised(upscale(lr, 4)), H, L, ("psnr_y", "ssim_y"))
            bic_down = ds_scores(quantised(downscale(hr, 4)), L, ("psnr_rgb", "noise"))
            row = {
                "sr_psnr_y": sr_y["psnr_y"],
                "sr_ssim_y": sr_y["ssim_y"],
                "bicubic_up_psnr_y": bic_y["psnr_y"],
                "bicubic_up_ssim_y": bic_y["ssim_y"],
                "sr_nonfinite": float(nonfinite),
                "bicubic_down_psnr": bic_down["psnr_rgb"],
                "lr_noise": ds_scores(L, L, ("noise",))["noise"],
                "bicubic_down_noise": bic_down["noise"],
            }
            for tau in ds_taus:
                g = torch.Generator(device=device).manual_seed(seed * 100_003 + i)
                ds = ds_scores(quantised(torch.nan_to_num(pipeline.downscale(hr, float(tau), generator=g), nan=-1.0)),
                               L, ("psnr_rgb", "noise"))
                row[_tau_key("ds_psnr", tau, ds_taus)] = ds["psnr_rgb"]
                row[_tau_key("ds_noise", tau, ds_taus)] = ds["noise"]
            rows.append(row)
    finally:
        model.train(was_training)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdflow.train.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="run folder, model.safetensors or training checkpoint")
    ap.add_argument("--hr", required=True, help="folder of true HR images")
    ap.add_argument("--lr", required=True, help="folder of true LR images with the same names")
    ap.add_argument("--ds-tau", type=float, nargs="+", default=[0.0], help="DS temperatures (default 0)")
    ap.add_argument("--crop", type=int, default=0, help="centre-crop HR to this side (0 = whole image)")
    ap.add_argument("--max-images", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)

    import sdflow
    from sdflow.data.datasets import load_pair, paired_images

    model = sdflow.load(args.model, device=args.device)
    pairs = [load_pair(h, l, args.crop) for h, l in paired_images(args.hr, args.lr, args.max_images or None)]
    res = evaluate_pairs(model, pairs, args.ds_tau, torch.device(args.device))
    res["images"] = len(pairs)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:28} {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
