"""Write a training run's model as the bundled default, with the metadata `sdflow demo` and the
model card rely on.

    python scripts/bundle_default.py RUN PRESET OUT.safetensors

Called by scripts/train_default.sh (BUNDLE=1). Weights are stored in float32: the tiny model is
about 2 MB, so half precision would save nothing worth a parity caveat.
"""
import sys

import yaml

from sdflow.checkpoints import load, save_model


def main(run: str, preset: str, out: str) -> None:
    with open(f"{run}/config.yaml") as f:
        cfg = yaml.safe_load(f)
    model = load(run)
    save_model(model, out, metadata={
        "sdflow.degradation": preset,
        "sdflow.steps": str(cfg["train"]["steps"]),
        "sdflow.train_config": "configs/default.yaml",
        "sdflow.data": "144 tiles (256 px) of the 12 nature photos of Debian mate-backgrounds "
                       f"1.26.0-1, in halves: clean HR / '{preset}'-degraded LR of the other tiles "
                       "(sdflow degrade --mode unpaired --seed 0)",
        "sdflow.recipe": "scripts/train_default.sh",
    })
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main(*sys.argv[1:])
