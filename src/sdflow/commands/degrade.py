"""`sdflow degrade`: HR photos -> a paired test set or unpaired training sets.

paired (default): OUT/HR/<name>.png, the photo cropped to a multiple of 4, and
OUT/LR/<name>.png, its simulated real-world x4 LR, with the same relative names.

unpaired: the photos are split into two disjoint groups (a seeded shuffle); OUT/train_HR
gets the clean photos of one group and OUT/train_LR the degraded LR of the other, so no
scene appears on both sides, as in real unpaired data.

Each file's degradation is seeded from --seed and its path relative to the input folder,
so re-running, adding files or switching mode leaves every other file's LR unchanged.
A record of the settings and of each file's random draws goes to OUT/degrade.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from sdflow.commands.options import non_negative_int


def register(sub) -> None:
    from sdflow.data.degrade import PRESETS  # numpy only: keeps `sdflow --help` quick

    presets = ", ".join(f"{p.name} ({p.description})" for p in PRESETS.values())
    p = sub.add_parser(
        "degrade", help="make degraded LR / paired test sets from HR photos",
        description="Simulate realistic x4 degradations of HR photos (blur, resize, noise, JPEG; "
                    "optionally twice) to build a paired test set or unpaired training sets. "
                    f"Presets: {presets}.")
    p.add_argument("-i", "--input", type=Path, required=True,
                   help="folder of HR photos (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--preset", default="realistic", choices=list(PRESETS),
                   help="degradation preset (default: realistic)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="global seed (default: 0)")
    p.add_argument("--mode", choices=("paired", "unpaired"), default="paired",
                   help="paired: OUT/HR + OUT/LR of the same photos; unpaired: OUT/train_HR and "
                        "OUT/train_LR from disjoint halves (default: paired)")
    p.add_argument("--split", type=float, default=0.5,
                   help="unpaired mode: fraction of the photos that go to train_HR; the rest "
                        "are degraded into train_LR (default: 0.5)")
    p.set_defaults(func=run)


def find_images(root: Path) -> list:
    """Relative paths of the image files under root (`sdflow.imageio.find_images`), sorted."""
    from sdflow.imageio import find_images as find

    return [p.relative_to(root) for p in find(root)]


def output_names(rels: list) -> tuple:
    """({rel: output rel (.png)}, {rel: the other inputs its output would collide with}). Inputs
    that would collide (a.jpg, a.png) keep their extension in the stem (a_jpg.png). Names are
    compared case-folded, as macOS and Windows file systems compare them; what still collides
    (a.jpg beside a file called a_jpg.png, or b.PNG beside b.png) is left out, to be reported."""
    def key(rel):
        return rel.as_posix().casefold()

    plain = {}
    for rel in rels:
        plain.setdefault(key(rel.with_suffix(".png")), []).append(rel)
    names = {}
    for group in plain.values():
        for rel in group:
            names[rel] = (rel.with_suffix(".png") if len(group) == 1 else
                          rel.with_name(f"{rel.stem}_{rel.suffix[1:]}.png"))
    taken = {}
    for rel, name in names.items():
        taken.setdefault(key(name), []).append(rel)
    clashes = {rel: [o for o in group if o != rel] for group in taken.values() if len(group) > 1 for rel in group}
    return {r: n for r, n in names.items() if r not in clashes}, clashes


def split_unpaired(rels: list, seed: int, fraction: float):
    """(hr_side, lr_side): a seeded shuffle cut at round(n * fraction), each side sorted."""
    import numpy as np

    order = np.random.default_rng([int(seed), 0x5D_F10E]).permutation(len(rels))
    k = int(round(len(rels) * fraction))
    hr = sorted((rels[i] for i in order[:k]), key=lambda r: r.as_posix())
    lr = sorted((rels[i] for i in order[k:]), key=lambda r: r.as_posix())
    return hr, lr


def load_rgb(path: Path):
    """uint8 H x W x 3, EXIF orientation applied; raises on anything unreadable."""
    from sdflow.imageio import read_rgb8

    return read_rgb8(path)


def _opens(path: Path) -> bool:
    """Whether Pillow opens the file (its header only: quick for thousands of photos)."""
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken files
        return False


def save_png(arr, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def run(args) -> int:
    from tqdm import tqdm

    from sdflow.data.degrade import crop_to_multiple, degrade, file_rng, get_preset

    src, out = args.input, args.output
    if not src.is_dir():
        print(f"error: input folder not found: {src}", file=sys.stderr)
        return 2
    if not 0.0 <= args.split <= 1.0:
        print(f"error: --split must be in [0, 1], got {args.split}", file=sys.stderr)
        return 2
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        # Writing into the input would make a second run pick up its own outputs.
        print(f"error: output folder must not be inside the input folder: {out}", file=sys.stderr)
        return 2
    rels = find_images(src)
    if not rels:
        from sdflow.imageio import IMAGE_EXTENSIONS

        print(f"error: no images ({', '.join(IMAGE_EXTENSIONS)}) under {src}", file=sys.stderr)
        return 1
    preset = get_preset(args.preset)
    names, clashes = output_names(rels)
    failed = sorted(clashes, key=lambda r: r.as_posix())
    for r in failed:
        print(f"failed: {src / r}: its output name would also be that of "
              f"{', '.join(o.as_posix() for o in clashes[r])}; rename one", file=sys.stderr)
    rels = [r for r in rels if r in names]

    # (relative input path, write clean HR to, write LR to)
    if args.mode == "paired":
        jobs = [(r, out / "HR" / names[r], out / "LR" / names[r]) for r in rels]
    else:
        # Split what can be opened: a broken file must not take a place on either side.
        unreadable = [r for r in rels if not _opens(src / r)]
        for r in unreadable:
            print(f"failed: {src / r}: not an image Pillow can open", file=sys.stderr)
        failed += unreadable
        skip = set(unreadable)
        rels = [r for r in rels if r not in skip]
        hr_side, lr_side = split_unpaired(rels, args.seed, args.split)
        if not hr_side or not lr_side:
            print(f"warning: --split {args.split} with {len(rels)} photos leaves "
                  f"{'train_HR' if not hr_side else 'train_LR'} empty", file=sys.stderr)
        jobs = ([(r, out / "train_HR" / names[r], None) for r in hr_side]
                + [(r, None, out / "train_LR" / names[r]) for r in lr_side])
        jobs.sort(key=lambda j: j[0].as_posix())

    record, n_hr, n_lr = {}, 0, 0
    for rel, hr_path, lr_path in tqdm(jobs, desc=f"degrade ({preset.name})", unit="img",
                                      disable=None):
        try:
            img = load_rgb(src / rel)
            if lr_path is not None:
                # Paired HR is cropped exactly as `degrade` crops it so the pair aligns;
                # unpaired clean HR stays whole.
                lr, params = degrade(img, preset, file_rng(args.seed, rel), return_params=True)
                img = crop_to_multiple(img)
            if hr_path is not None:
                save_png(img, hr_path)
                n_hr += 1
            if lr_path is not None:
                save_png(lr, lr_path)
                n_lr += 1
                record[rel.as_posix()] = params
        except Exception as e:  # one bad photo must not sink a batch of thousands
            failed.append(rel)
            tqdm.write(f"failed: {src / rel}: {type(e).__name__}: {e}", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    manifest = {"preset": preset.as_dict(), "seed": args.seed, "mode": args.mode,
                "split": args.split if args.mode == "unpaired" else None,
                "input": str(src), "failed": [r.as_posix() for r in failed], "lr": record}
    (out / "degrade.json").write_text(json.dumps(manifest, indent=1, default=str))

    if args.mode == "paired":
        print(f"wrote {n_hr} HR and {n_lr} LR images to {out / 'HR'} and {out / 'LR'} "
              f"(preset {preset.name}, seed {args.seed})")
    else:
        print(f"wrote {n_hr} clean HR images to {out / 'train_HR'} and {n_lr} degraded LR images "
              f"of other photos to {out / 'train_LR'} (preset {preset.name}, seed {args.seed})")
    if failed:
        print(f"{len(failed)} file(s) could not be read or processed: "
              + ", ".join(r.as_posix() for r in failed), file=sys.stderr)
        return 1
    return 0
