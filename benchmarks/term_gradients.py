"""Which loss terms move a parameter, and which way: per term of the objective, the gradient of its
weighted value on one model parameter, over batches of the run's own training data, from one of
its checkpoints (issue 16; docs/training.md, "A learnt blur").

    python benchmarks/term_gradients.py RUN STEP PARAM [--terms gan ds_hf_match ...] [--batches 16]

RUN is a run folder (`sdflow train --out`), STEP one of its checkpoints, PARAM a parameter name of
the model (`ds_blur.raw`, `deg_prior.log_stds`, ...). The stage is the checkpoint's, the critics
and the weights are the run's. Printed per term: for a one-element parameter the mean, spread and
share of positive gradients over the batches (a positive gradient moves the parameter down); for
others the norm of the mean gradient and the mean of the norms (their ratio: how consistently the
term pulls one way). Each batch's terms see the same random draws (dequantisation, samples).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sdflow.config import ModelConfig  # noqa: E402
from sdflow.data.datasets import make_loader  # noqa: E402
from sdflow.model import SDFlow  # noqa: E402
from sdflow.train import checkpoint as ckpt_io  # noqa: E402
from sdflow.train.config import TrainConfig  # noqa: E402
from sdflow.train.loop import make_critic, training_patches  # noqa: E402
from sdflow.train.objective import GeneratorObjective  # noqa: E402


def load(run: Path, step: int):
    """The run's config, model, critics and objective at checkpoint `step`, and whether it is stage 2."""
    cfg = TrainConfig.load(run / "config.yaml")
    ck = ckpt_io.load_checkpoint(run / f"ckpt-{step:08d}.pt")
    model = SDFlow(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    model.train()
    critics = {}
    for name, state in ck.get("critics", {}).items():
        critics[name] = make_critic(name, cfg.disc)
        critics[name].load_state_dict(state)
    obj = GeneratorObjective(model, cfg.loss, critics, None, cfg.data.dequantize, paired=cfg.data.paired)
    return cfg, model, obj, step >= cfg.train.stage1_steps


def term_gradients(run, step: int, param: str, terms, batches: int = 16, seed: int = 123):
    """{term: [gradient per batch]} (each a float for one-element parameters, else an array)."""
    cfg, model, obj, stage2 = load(Path(run), step)
    p = dict(model.named_parameters()).get(param)
    if p is None:
        raise SystemExit(f"term_gradients: the model has no parameter {param!r}")
    it = iter(make_loader(training_patches(cfg), cfg.data.batch_size, seed))
    weights = obj.weights
    out = {t: [] for t in terms}
    for b in range(batches):
        batch = next(it)
        for t in terms:
            obj.weights = lambda s, t=t: {k: (v if k == t else 0.0) for k, v in weights(s).items()}
            model.zero_grad(set_to_none=True)
            torch.manual_seed(seed + b)
            obj(batch["hr"], batch["lr"], stage2=stage2)[0].backward()
            g = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            out[t].append(float(g) if g.numel() == 1 else g.numpy())
    obj.weights = weights
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("step", type=int)
    ap.add_argument("param")
    ap.add_argument("--terms", nargs="+", default=["gan", "ds_hf_match", "pixel", "colour"])
    ap.add_argument("--batches", type=int, default=16)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    grads = term_gradients(args.run, args.step, args.param, args.terms, args.batches)
    print(f"{args.run.name} step {args.step}: gradient of each weighted term on {args.param} "
          f"({args.batches} batches)")
    for t, gs in grads.items():
        if isinstance(gs[0], float):
            a = np.array(gs)
            print(f"  {t:14s} mean {a.mean():+.4g}  sd {a.std():.4g}  positive {(a > 0).mean():.2f}")
        else:
            norms = [float(np.linalg.norm(g)) for g in gs]
            print(f"  {t:14s} |mean| {float(np.linalg.norm(np.mean(gs, axis=0))):.4g}  mean |g| {np.mean(norms):.4g}")


if __name__ == "__main__":
    main()
