"""`sdflow train`: train SDFlow on unpaired HR and LR folders (alone or under torchrun)."""
from __future__ import annotations

import sys
from pathlib import Path

EXIT_INTERRUPTED = 130
EXIT_DIVERGED = 3


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train SDFlow on unpaired (or, with --paired, paired) HR and LR folders",
        description="Train SDFlow from two unpaired folders of photos (searched recursively). "
                    "Runs alone or under `torchrun --nproc_per_node N` (DDP). Ctrl-C finishes the "
                    "current step, saves a checkpoint and exits; --resume continues exactly.",
        epilog="examples:\n"
               "  sdflow train --config configs/tiny.yaml --hr data/train_HR --lr data/train_LR --out runs/tiny\n"
               "  sdflow train --out runs/tiny --resume\n"
               "  sdflow train --config configs/tiny.yaml --paired --hr data/HR --lr data/LR --out runs/paired\n"
               "  torchrun --nproc_per_node 4 -m sdflow train --config configs/paper.yaml "
               "--hr HR --lr LR --out runs/paper --set train.amp=bf16",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path,
                   help="YAML config (configs/paper.yaml, configs/tiny.yaml...); with --resume the "
                        "run's own config.yaml is used when omitted")
    p.add_argument("--hr", type=Path, help="folder of HR (clean) training images")
    p.add_argument("--lr", type=Path, help="folder of LR (real-world) training images")
    p.add_argument("--paired", action="store_true",
                   help="the HR and LR folders correspond file by file (same relative names, LR = "
                        "HR/4): train from aligned pairs (data.paired; docs/training.md)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, logs, model.safetensors")
    p.add_argument("--steps", type=int, help="total optimiser steps (overrides train.steps; the "
                                             "learning-rate milestones scale with it)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--init", metavar="MODEL",
                   help="start from this model's weights (fine-tuning; train.init): an sdflow .safetensors, "
                        "a checkpoint or run folder, the authors' folder, or 'default'; its architecture "
                        "must match the config's model section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=2e-4 (repeatable; values are YAML)")
    p.add_argument("--val-hr", type=Path, help="paired validation: HR images")
    p.add_argument("--val-lr", type=Path, help="paired validation: LR images with the same names")
    p.add_argument("--vgg-weights", type=Path,
                   help="VGG-19 weights (torchvision layout) for the perceptual terms")
    p.set_defaults(func=run)


def build_config(args):
    """The run's TrainConfig from the command line (also used by tests)."""
    from sdflow.train.config import TrainConfig

    overrides = list(args.overrides)
    if args.hr is not None:
        overrides.append(f"data.hr_dir={_yaml_str(args.hr)}")
    if args.lr is not None:
        overrides.append(f"data.lr_dir={_yaml_str(args.lr)}")
    if args.val_hr is not None:
        overrides.append(f"val.hr_dir={_yaml_str(args.val_hr)}")
    if args.val_lr is not None:
        overrides.append(f"val.lr_dir={_yaml_str(args.val_lr)}")
    if args.vgg_weights is not None:
        overrides.append(f"loss.vgg_weights={_yaml_str(args.vgg_weights)}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.paired:
        overrides.append("data.paired=true")
    if args.init is not None:
        overrides.append(f"train.init={args.init if args.init == 'default' else _yaml_str(args.init)}")

    if args.config is not None:
        return TrainConfig.load(args.config, overrides)
    saved = args.out / "config.yaml"
    if args.resume and saved.is_file():
        return TrainConfig.load(saved, overrides)
    raise ValueError("--config is required (with --resume it defaults to the run's config.yaml, "
                     f"but {saved} does not exist)")


def _yaml_str(path) -> str:
    import json
    # JSON strings are valid YAML and survive spaces, colons and quotes in paths.
    return json.dumps(str(Path(path).resolve()))


def run(args) -> int:
    from sdflow.train.loop import TrainingDiverged, train

    try:
        cfg = build_config(args)
        if (args.val_hr is None) != (args.val_lr is None):
            raise ValueError("--val-hr and --val-lr go together")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg, args.out, resume=args.resume)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return EXIT_INTERRUPTED if summary.get("interrupted") else 0


def main(argv=None) -> int:
    """`python -m sdflow.commands.train ...`: the same command without the other sub-commands,
    handy as a torchrun target."""
    import argparse

    parser = argparse.ArgumentParser(prog="sdflow")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train"] + list(sys.argv[1:] if argv is None else argv))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
