"""Paired evaluation of SR and DS against ground truth, beside the bicubic baselines.

Used by the training loop's validation and on its own, after training:

    python -m sdflow.train.evaluate --model runs/tiny --hr test/HR --lr test/LR --ds-tau 0 0.8

SR: super-resolution of the true LR at tau = 0, scored against the true HR (Y-PSNR and
Y-SSIM with a 4-pixel border, as in the SR literature). DS: realistic downscaling of the
true HR, scored against the true (degraded) LR by RGB PSNR and by the noise level it
shows (`sdflow.metrics.noise_sigma`, in 8-bit levels), which a bicubic downscale lacks.
All images are rounded to 8 bits before scoring, as they would be saved.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch


def _u8(t: torch.Tensor) -> np.ndarray:
    return ((t[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _tau_key(name: str, tau: float, taus: Sequence[float]) -> str:
    return name if len(taus) == 1 else f"{name}@tau{tau:g}"


@torch.no_grad()
def evaluate_pairs(model, pairs: List[Tuple[torch.Tensor, torch.Tensor]], ds_taus: Sequence[float] = (0.0,),
                   device=None, seed: int = 0) -> Dict[str, float]:
    """Mean metrics over (HR [1,3,H,W], LR [1,3,H/4,W/4]) pairs in [-1, 1]. The model is
    put in eval mode for the duration and restored after."""
    from sdflow import metrics
    from sdflow.resize import downscale, upscale

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i, (hr, lr) in enumerate(pairs):
            hr, lr = hr.to(device), lr.to(device)
            H, L = _u8(hr), _u8(lr)
            sr = model.super_resolve(lr, 0.0)
            bic_up, bic_down = _u8(upscale(lr, 4)), _u8(downscale(hr, 4))
            row = {
                "sr_psnr_y": metrics.psnr_y(_u8(sr), H, crop_border=4),
                "sr_ssim_y": metrics.ssim_y(_u8(sr), H, crop_border=4),
                "bicubic_up_psnr_y": metrics.psnr_y(bic_up, H, crop_border=4),
                "bicubic_up_ssim_y": metrics.ssim_y(bic_up, H, crop_border=4),
                "sr_nonfinite": float(not torch.isfinite(sr).all()),
                "bicubic_down_psnr": metrics.psnr(bic_down, L),
                "lr_noise": 255 * metrics.noise_sigma(L),
                "bicubic_down_noise": 255 * metrics.noise_sigma(bic_down),
            }
            for tau in ds_taus:
                g = torch.Generator(device=device).manual_seed(seed * 100_003 + i)
                ds = _u8(model.downscale(hr, float(tau), generator=g))
                row[_tau_key("ds_psnr", tau, ds_taus)] = metrics.psnr(ds, L)
                row[_tau_key("ds_noise", tau, ds_taus)] = 255 * metrics.noise_sigma(ds)
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
