"""Where a trained model's tau-0 SR and DS lose to bicubic: decode the same photos from several
contents and compare (issue 16; docs/training.md, "The content code").

    python benchmarks/content_probe.py RUN/model.safetensors /tmp/proto/realistic [--split tune]

The family folder is one that `benchmarks/unpaired_protocol.py data` wrote (SPLIT/HR, SPLIT/LR,
train_HR). Printed, as means over the split's pairs:

- SR Y-PSNR (4-pixel border, as `sdflow eval`) of f_HR^-1([z_c, f_HF^-1(0; z_c)]) for z_c = E(x)
  (the model's SR), z_c^h = the HR's own f_HR content (an oracle E), z_c^h with its content
  picture rounded to 8 bits, z_c^t = f_LR(target picture), the target picture being the HR's
  x4 bicubic downscale blurred by --sigma LR pixels (what training pins the content to), and
  f_LR(x), the real LR taken as its own content picture (an E that restores nothing);
  bicubic upscaling of the real LR and of the target picture beside them;
- PSNR to the target picture of E's content picture f_LR^-1(E(x)), of f_HR's f_LR^-1(z_c^h), and
  of the real LR itself;
- DS PSNR against the real LR of the tau-0 DS (the model's own content setting), of f_HR's content
  picture and of the target picture;
- the decode of z_c^t against bicubic upscaling of the target picture on every 6th training HR
  tile too: below bicubic on the training photos means the SR path underfits, not that it fails
  to carry over;
- on the same tiles' degraded partners in FAMILY/pairs (LR images E never saw in unpaired
  training), E's picture and the LR against the clean target picture, and SR from E(x) against
  bicubic upscaling: what E restores, measured on some 15 tiles where the tuning split has 2 photos;
  and a DS sample of the tile at --cycle-tau (the run's `loss.cycle_tau`: what the cycles teach E
  from) and E's picture of it against the same target: whether E's training inputs are as degraded
  as the real LR, and what E does to them;
- where each degradation lives: the RMS (8-bit levels) of the real LR's and of that DS sample's
  difference from the clean target in three bands, `low` (what a Gaussian low-pass of 3 LR pixels
  leaves), `mid` (between 1 and 3 LR pixels) and `high` (what a 1-pixel low-pass removes), and
  the sign of each in the mid band (`mid gain`: < 0 a blur, > 0 a sharpening);
- and on the split's pairs, the same bands (4x as wide, in HR pixels) of the tau-0 SR's and of
  bicubic upscaling's error against the HR: which band SR gains or loses in.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import sdflow  # noqa: E402
from sdflow.data.datasets import load_pair, read_rgb, to_tensor  # noqa: E402
from sdflow.evaluation.results import SR_BORDER  # noqa: E402
from sdflow.evaluation.scoring import quantised  # noqa: E402
from sdflow.metrics import psnr, psnr_y  # noqa: E402
from sdflow.model import CONTENT_CHANNELS, HF_CHANNELS  # noqa: E402
from sdflow.resize import downscale, gaussian_blur, upscale  # noqa: E402


def decode(m, z_c):
    return m.decode_hr(z_c, m.f_hf.sample(z_c, HF_CHANNELS, 0.0))


def rounded(x):
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def probe_pair(m, hr, lr, sigma):
    """One (HR, LR) pair of tensors in [-1, 1], the HR cut to 4x the LR: the figures of one row."""
    q = quantised
    ref_hr, ref_lr = q(hr), q(lr)
    sr = lambda y: psnr_y(q(y), ref_hr, SR_BORDER)  # noqa: E731
    target = gaussian_blur(downscale(hr, 4), sigma)
    z_h = m.encode_hr(hr)[0][:, :CONTENT_CHANNELS]
    pic_h = m.f_lr.inverse(z_h)[0]
    z_t = m.f_lr(target)[0]
    c = m.content(lr)
    to_target = lambda x: psnr(q(x), q(target))  # noqa: E731
    # At tau 0 the image sampler still draws the mixture component: seeded, as eval seeds it.
    ds = m.downscale(hr, 0.0, precision="fp32", generator=torch.Generator().manual_seed(0))
    y, bic = decode(m, c), upscale(lr, 4)
    # Where SR wins or loses against bicubic: its error's bands (on the 8-bit images eval scores).
    t_hr = to_tensor(ref_hr)[None]
    bands = {f"{who}-HR {k}": v for who, out in (("sr", y), ("bicubic", bic))
             for k, v in band_rms(to_tensor(q(out))[None] - t_hr, 4).items()}
    return {"sr E(x)": sr(y), "sr z_c^h": sr(decode(m, z_h)),
            "sr z_c^h 8-bit": sr(decode(m, m.f_lr(rounded(pic_h))[0])), "sr z_c^t": sr(decode(m, z_t)),
            "sr f_LR(x)": sr(decode(m, m.f_lr(lr)[0])),
            "bicubic LR": sr(bic), "bicubic target": sr(upscale(target, 4)),
            "E pic ~ target": to_target(m.f_lr.inverse(c)[0]), "z_c^h pic ~ target": to_target(pic_h),
            "LR ~ target": to_target(lr),
            "ds": psnr(q(ds), ref_lr), "ds z_c^h pic": psnr(q(pic_h), ref_lr), "ds target": psnr(q(target), ref_lr),
            **bands}


# Each band is what a Gaussian low-pass of `finer` LR pixels keeps and one of `coarser` removes
# (None: nothing removed; 0: nothing blurred), so the three add up to the whole difference.
BANDS = (("low", None, 3.0), ("mid", 3.0, 1.0), ("high", 1.0, 0.0))


def band(x, name: str, scale: int = 1):
    """The `BANDS` entry `name` of x; `scale` 4 for HR images, whose bands are 4x as wide."""
    _, coarser, finer = next(b for b in BANDS if b[0] == name)
    lp = lambda s: x if s == 0 else gaussian_blur(x, s * scale)  # noqa: E731
    return lp(finer) - (0 if coarser is None else lp(coarser))


def band_rms(d, scale: int = 1):
    """RMS in 8-bit levels of a difference of [-1, 1] images in each of the `BANDS`."""
    return {name: float(band(d, name, scale).pow(2).mean().sqrt()) * 127.5 for name, _, _ in BANDS}


def band_gain(d, clean, name: str = "mid"):
    """How a degradation `d` acts on the clean picture's band `name`: the least-squares slope of d's
    band on the clean one's (-1 removes the band, 0 leaves it, > 0 amplifies it). Blur and
    sharpening of equal energy have equal `band_rms`; their gains have opposite signs."""
    dd, cc = band(d, name), band(clean, name)
    return float((dd * cc).sum() / (cc * cc).sum().clamp_min(1e-12))


def fit_tile(m, hr, sigma, lr=None, cycle_tau=1.0):
    """One training HR tile; with `lr`, its degraded partner from FAMILY/pairs (an LR that E never
    saw: the unpaired LR side is other photos), how far E restores it toward the clean target."""
    target = gaussian_blur(downscale(hr, 4), sigma)
    ref = quantised(hr)
    out = {"train sr z_c^t": psnr_y(quantised(decode(m, m.f_lr(target)[0])), ref, SR_BORDER),
           "train bicubic target": psnr_y(quantised(upscale(target, 4)), ref, SR_BORDER)}
    if lr is not None:
        q_target = quantised(target)
        to_target = lambda x: psnr(quantised(x), q_target)  # noqa: E731
        c = m.content(lr)
        # The pseudo-pair the cycles teach E from (a DS sample at the run's cycle_tau):
        # as far from the target as the real LR is, E's training input is as degraded as its test input.
        ds = m.downscale(hr, cycle_tau, precision="fp32", generator=torch.Generator().manual_seed(0))
        ds = to_tensor(quantised(ds))[None]  # the 8-bit sample the cycles see
        t = to_tensor(q_target)[None]
        out.update({"pairs E pic ~ target": to_target(m.f_lr.inverse(c)[0]), "pairs LR ~ target": to_target(lr),
                    "pairs sr E(x)": psnr_y(quantised(decode(m, c)), ref, SR_BORDER),
                    "pairs bicubic LR": psnr_y(quantised(upscale(lr, 4)), ref, SR_BORDER),
                    f"pairs DS(t{cycle_tau:g}) ~ target": to_target(ds),
                    "pairs E(DS) pic ~ target": to_target(m.f_lr.inverse(m.content(ds))[0])})
        for who, d in (("LR", lr - t), ("DS", ds - t)):
            out.update({f"pairs {who}-target {k}": v for k, v in band_rms(d).items()})
            out[f"pairs {who} mid gain"] = band_gain(d, t)
    return out


def probe(model_path, family: Path, split: str = "tune", sigma: float = 0.7, train_every: int = 6,
          cycle_tau: float = 1.0):
    """The means of `probe_pair` over the split's pairs and of `fit_tile` over every
    `train_every`-th training HR tile (empty for 0), and the number of pairs."""
    with torch.no_grad():  # not set_grad_enabled: a caller (the tests) keeps its own mode
        return _probe(model_path, family, split, sigma, train_every, cycle_tau)


def _probe(model_path, family, split, sigma, train_every, cycle_tau):
    m = sdflow.load(model_path, dtype=torch.float32).eval()
    rows = []
    for hr_path in sorted((family / split / "HR").glob("*.png")):
        hr, lr = load_pair(hr_path, family / split / "LR" / hr_path.name)
        rows.append(probe_pair(m, hr, lr, sigma))
    fits = []
    for p in (sorted((family / "train_HR").glob("*.png"))[::train_every] if train_every else []):
        partner = family / "pairs" / "LR" / p.name
        if partner.exists():
            hr, lr = load_pair(family / "pairs" / "HR" / p.name, partner)
            fits.append(fit_tile(m, hr, sigma, lr, cycle_tau))
        else:
            hr = to_tensor(read_rgb(p))[None]
            fits.append(fit_tile(m, hr[..., :hr.shape[-2] // 8 * 8, :hr.shape[-1] // 8 * 8], sigma))
    # Tiles without a partner lack the pairs figures: each figure is the mean where it exists.
    mean = lambda group: {k: float(np.mean([r[k] for r in group if k in r]))  # noqa: E731
                          for k in dict.fromkeys(k for r in group for k in r)} if group else {}
    return mean(rows), mean(fits), len(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("family", type=Path)
    ap.add_argument("--split", default="tune")
    ap.add_argument("--sigma", type=float, default=0.7, help="the target picture's blur (content_target_sigma)")
    ap.add_argument("--train-every", type=int, default=6, help="probe every Nth training HR tile (0: none)")
    ap.add_argument("--cycle-tau", type=float, default=1.0, help="the DS sample's temperature (loss.cycle_tau)")
    args = ap.parse_args(argv)
    rows, fits, n = probe(args.model, args.family, args.split, args.sigma, args.train_every, args.cycle_tau)
    print(f"{args.model} on {args.family.name}/{args.split} ({n} pairs), target blur {args.sigma}:")
    for group in (rows, fits):
        if group:
            print("  " + " | ".join(f"{k} {v:.2f}" for k, v in group.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
