"""How far tiled SR / DS is from the untiled result, by tile size and context (tile_pad).

    python benchmarks/bench_tiling.py                 # paper-size and tiny models, tau 0 and 0.8
    python benchmarks/bench_tiling.py --save diffs/   # also write |tiled - untiled| maps (x50)
    python benchmarks/bench_tiling.py --model trained.safetensors   # a trained model instead of "paper"

Models: the paper-size model of bench_inference.py (random-but-perturbed weights) and the tiny
preset with seeded perturbed weights, both through a Pipeline at fp32. Images: crops of the
bundled sample photos (SR: 128x128 LR made by 4x4 averaging of a 512x512 crop; DS: the
512x512 crop). tau 0.8 uses one noise field for both runs (the tiler's shared field), so the
difference is the tiling's alone. Figures: max and mean |tiled - untiled| in 8-bit levels
(1 level = 2/255 in the model's [-1, 1] range) of the raw outputs, and the largest difference of
the 8-bit images that would be written (clamped and rounded).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import REPO, bench_model  # noqa: E402

from sdflow.pipeline import Pipeline  # noqa: E402


def tiny_model():
    from sdflow.config import ModelConfig
    from sdflow.model import SDFlow

    torch.manual_seed(1)
    model = SDFlow(ModelConfig.preset("tiny"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("out_log_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 - 0.5)
            elif "conv3" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def photos(n):
    out = []
    for path in sorted((REPO / "src" / "sdflow" / "assets" / "samples").glob("*.png"))[:n]:
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1
        out.append((path.stem, torch.from_numpy(img).permute(2, 0, 1)[None, :, :512, :512].contiguous()))
    return out


def to8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=2)
    ap.add_argument("--save", type=Path, default=None)
    ap.add_argument("--model", default=None, help="measure this model (any sdflow.load source) as 'paper'")
    args = ap.parse_args(argv)
    if args.model:
        import sdflow

        paper, source = sdflow.load(args.model), args.model
    else:
        paper, source = bench_model()
    models = {"paper": paper, "tiny": tiny_model()}
    sr_cases = [(32, 0), (32, 8), (32, 16), (64, 8), (64, 16), (64, 24)]
    ds_cases = [(128, 0), (128, 32), (128, 64), (256, 32), (256, 64), (256, 96)]
    print(f"# tiled vs untiled (paper: {source}; {', '.join(n for n, _ in photos(args.photos))})")
    print(f"{'model':<6} {'task':<4} {'tau':>4} {'tile':>5} {'pad':>4} {'max lv':>8} {'mean lv':>9} {'max 8-bit':>9}")
    for name, model in models.items():
        for task, cases in (("sr", sr_cases), ("ds", ds_cases)):
            for tau in (0.0, 0.8):
                stats = {c: [] for c in cases}
                for stem, img in photos(args.photos):
                    x = torch.nn.functional.avg_pool2d(img, 4) if task == "sr" else img
                    g = torch.Generator().manual_seed(0)
                    if task == "sr":
                        z = model.sample_hf_latent(x, tau, g)
                        ref = model.super_resolve(x, hf_latent=z)
                    else:
                        z = model.sample_deg_latent(x, tau, generator=g)
                        ref = model.downscale(x, deg_latent=z)
                    for tile, pad in cases:
                        image = Pipeline(model, "fp32", tile=tile, tile_pad=pad).prepare(x, keep=False)
                        if task == "sr":
                            out = image.super_resolve(hf_latent=z)
                        else:
                            out = image.downscale(deg_latent=z)
                        d = (out - ref).abs() * 127.5
                        stats[(tile, pad)].append((d.max().item(), d.mean().item(),
                                                   (to8(out) - to8(ref)).abs().max().item()))
                        if args.save is not None:
                            args.save.mkdir(parents=True, exist_ok=True)
                            diff = (d[0].mean(0) * 50).clamp(0, 255).to(torch.uint8).numpy()
                            Image.fromarray(diff).save(args.save / f"{name}_{task}_tau{tau}_{tile}_{pad}_{stem}.png")
                for (tile, pad), v in stats.items():
                    print(f"{name:<6} {task:<4} {tau:>4} {tile:>5} {pad:>4} {max(s[0] for s in v):8.4f} "
                          f"{max(s[1] for s in v):9.5f} {max(s[2] for s in v):9.0f}")


if __name__ == "__main__":
    main()
