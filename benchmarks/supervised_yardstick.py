"""A plain supervised CNN on the protocol's true pairs: what supervision alone reaches.

The yardstick of issue 16 beside `sdflow train --paired`: if this network, trained with L1 on
the same pairs for the same steps, gains over bicubic on held-out photos where SDFlow's paired
mode does not, the loss is in SDFlow's SR path, not in the data. Fully convolutional: a 3x3
head, residual blocks, a x4 pixel shuffle, plus the bicubic upscale of its input.

    python benchmarks/supervised_yardstick.py WORK FAMILY [--steps 3000] [--split tune test]

WORK is `benchmarks/unpaired_protocol.py data WORK`'s folder; training reads WORK/FAMILY/pairs,
scoring WORK/FAMILY/tune and test (Y-PSNR through `sdflow.evaluation.scoring`, as `sdflow
eval` scores SR; the bicubic figure printed beside it must equal that of `sdflow eval`).
Pin it to a core for timing (`taskset -c N`, one thread).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sdflow.data.datasets import load_pair, paired_images
from sdflow.evaluation.scoring import quantised, sr_scores
from sdflow.resize import upscale


class PlainSR(nn.Module):
    def __init__(self, channels: int = 48, blocks: int = 6):
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                                                  nn.LeakyReLU(0.2),
                                                  nn.Conv2d(channels, channels, 3, padding=1))
                                    for _ in range(blocks))
        self.tail = nn.Conv2d(channels, 3 * 16, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as bicubic upscaling
        nn.init.zeros_(self.tail.bias)

    def forward(self, lr):
        h = a = self.head(lr)
        for block in self.blocks:
            h = h + 0.2 * block(h)
        return upscale(lr, 4) + F.pixel_shuffle(self.tail(h + a), 4)


def batches(pairs, steps, batch, lr_patch, seed):
    g = np.random.default_rng(seed)
    for _ in range(steps):
        hrs, lrs = [], []
        for _ in range(batch):
            hr, lr = pairs[g.integers(len(pairs))]
            y, x = g.integers(lr.shape[2] - lr_patch + 1), g.integers(lr.shape[3] - lr_patch + 1)
            l = lr[..., y:y + lr_patch, x:x + lr_patch]
            h = hr[..., 4 * y:4 * (y + lr_patch), 4 * x:4 * (x + lr_patch)]
            k = int(g.integers(8))
            if k & 4:
                l, h = l.flip(-1), h.flip(-1)
            l, h = torch.rot90(l, k & 3, (-2, -1)), torch.rot90(h, k & 3, (-2, -1))
            hrs.append(h)
            lrs.append(l)
        yield torch.cat(hrs), torch.cat(lrs)


def score(net, folder):
    """Mean SR Y-PSNR and colour shift of `net` and of bicubic upscaling over a folder's pairs,
    quantised and scored by `sdflow eval`'s own functions: {"cnn": (psnr_y, colour), "bicubic":
    (...)}, and the number of pairs. The colour shift tells what supervision can undo of a
    family's colour changes (camera's white balance and exposure are drawn per photo)."""
    rows = {"cnn": [], "bicubic": []}
    keys = ("psnr_y", "colour_shift")
    with torch.no_grad():
        for hr_path, lr_path in paired_images(folder / "HR", folder / "LR"):
            hr, lr = load_pair(hr_path, lr_path)
            ref, src = quantised(hr), quantised(lr)
            for name, y in (("cnn", net(lr)), ("bicubic", upscale(lr, 4))):
                s = sr_scores(quantised(y), ref, src, keys)
                rows[name].append([s[k] for k in keys])
    n = len(rows["cnn"])
    return {k: tuple(np.mean(v, axis=0)) for k, v in rows.items()}, n


def main(argv=None):
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("family")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--split", nargs="+", default=["tune", "test"], choices=["tune", "test"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr-patch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    fam = args.work / args.family
    pairs = [load_pair(h, l) for h, l in paired_images(fam / "pairs" / "HR", fam / "pairs" / "LR")]
    net = PlainSR()
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    milestones = [int(args.steps * f) for f in (0.5, 0.75, 0.9, 0.95)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.5)
    print(f"{len(pairs)} pairs, {sum(p.numel() for p in net.parameters()):,} parameters, {args.steps} steps")
    t0 = time.perf_counter()
    for step, (hr, lr) in enumerate(batches(pairs, args.steps, args.batch, args.lr_patch, args.seed), 1):
        loss = F.l1_loss(net(lr), hr)
        if not torch.isfinite(loss):
            raise SystemExit(f"step {step}: the loss is {loss.item()}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == args.steps:
            print(f"step {step}: L1 {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    net.eval()
    train_s = time.perf_counter() - t0
    for split in args.split:
        s, n = score(net, fam / split)
        (sr, sr_col), (bic, bic_col) = s["cnn"], s["bicubic"]
        print(f"{args.family} {split} ({n} pairs): plain CNN SR Y-PSNR {sr:.2f}, bicubic {bic:.2f}, "
              f"gain {sr - bic:+.2f} dB; colour shift {sr_col:.2f} (bicubic {bic_col:.2f}); "
              f"{args.steps} steps in {train_s:.0f} s")


if __name__ == "__main__":
    main()
