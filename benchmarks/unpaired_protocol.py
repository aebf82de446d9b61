"""The unpaired-training benchmark of docs/benchmark.md: data as users have it.

HR and LR training photos are *different photos* (no photo gives tiles to both sides), each
side drawn from at least two photo sources; the test and tuning photos are in neither. Three
degradation families: `realistic`, `severe`, and `camera`, the held-out family (written
before any recipe was tuned; reported, never tuned on).

    python benchmarks/unpaired_protocol.py data WORK                 # photos, splits, all families
    python benchmarks/unpaired_protocol.py train WORK FAMILY MODE NAME [--steps N] [--set K=V ...]
    python benchmarks/unpaired_protocol.py score WORK [NAME ...] [--split test|tune] [--tau 0.8 ...]

MODE is `unpaired` (WORK/FAMILY/train_HR + train_LR: disjoint photos) or `paired` (WORK/FAMILY/
pairs: the HR training photos and their degraded LR, `sdflow train --paired`), the yardstick.
A run is WORK/runs/NAME (FAMILY and MODE are kept in WORK/runs/NAME/protocol.json); `score`
evaluates each run on its family's held-out pairs with `sdflow eval` at tau 0 and prints one
table per family beside bicubic. Long runs: pin each to a core (`taskset -c N`, one thread).

Photo sources, all redistributable and served by the package registries (nothing else is
downloaded): Debian's mate-backgrounds 1.26.0-1 (nature/), lomiri-wallpapers-20.04 20.04.0-2
(Kleiber), the scikit-image 0.26.0 wheel (motorcycle_left, and the test photos below, five of
which sdflow bundles), and the TID2013 / Kodak reference crops in the pyiqa 0.1.16 wheel
(ResultsCalibra/ref_dir). Debian's plasma-workspace-wallpapers and ukui-wallpapers are
reserved for independent evaluation and are never used here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("realistic", "severe", "camera")
HELD_OUT = "camera"
TILE = 256
TEST_DRAWS = (1, 2)     # degradation seeds of the test pairs
TUNE_DRAWS = (1, 2, 3)
MATE = "mate-backgrounds=1.26.0-1"
LOMIRI = "lomiri-wallpapers-20.04=20.04.0-2"
PYIQA = "pyiqa==0.1.16"

# Which photo goes where. The mate photos alternate between the two sides in name order.
HR_EXTRA = [("lomiri", "Kleiber_by_Lukas_Baubkus"), ("skimage", "motorcycle_left")]
LR_EXTRA = [("kodak", "I03"), ("kodak", "I04"), ("kodak", "I06")]
TUNE = [("kodak", "I08"), ("kodak", "I19")]
TEST = [("skimage", n) for n in ("astronaut", "chelsea", "coffee", "rocket", "grass",
                                 "camera", "coins", "brick", "gravel")]
# Large photos are reduced first: it averages away their own JPEG blocks and noise, so the HR
# side is clean, and brings every source to a similar scale of detail.
REDUCE = {"mate": 2, "lomiri": 4, "skimage_motorcycle_left": 2}


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def sh(*cmd, **kw) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


# ----- photos -------------------------------------------------------------------------------

def _deb(spec: str, cache: Path) -> Path:
    """Unpack a Debian package (downloaded with apt-get, not installed) into cache/<name>."""
    name = spec.split("=")[0]
    root = cache / name
    if not (root / ".done").exists():
        tmp = Path(tempfile.mkdtemp())
        tmp.chmod(0o777)  # apt-get download runs as the _apt user, which must write here
        sh("apt-get", "download", spec, cwd=tmp)
        deb = next(tmp.glob("*.deb"))
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        sh("dpkg-deb", "-x", deb, root)
        (root / ".done").touch()
        shutil.rmtree(tmp)
    return root


def _pyiqa_refs(cache: Path) -> Path:
    root = cache / "pyiqa"
    if not any(root.glob("*.bmp")):
        tmp = Path(tempfile.mkdtemp())
        sh(python(), "-m", "pip", "download", "--no-deps", "-d", tmp, PYIQA)
        with zipfile.ZipFile(next(tmp.glob("*.whl"))) as z:
            for n in z.namelist():
                if n.startswith("ResultsCalibra/ref_dir/") and n.endswith(".bmp"):
                    (root / Path(n).name).parent.mkdir(parents=True, exist_ok=True)
                    (root / Path(n).name).write_bytes(z.read(n))
        shutil.rmtree(tmp)
    return root


def source_files(cache: Path) -> dict:
    """{(source, name): path} of every photo the protocol uses."""
    import skimage

    files = {}
    mate = _deb(MATE, cache) / "usr/share/backgrounds/mate/nature"
    for p in sorted(mate.glob("*.jpg")):
        files[("mate", p.stem)] = p
    lomiri = _deb(LOMIRI, cache) / "usr/share/backgrounds"
    files[("lomiri", "Kleiber_by_Lukas_Baubkus")] = lomiri / "Kleiber_by_Lukas_Baubkus.jpg"
    sk = Path(skimage.__file__).parent / "data"
    for n in ("motorcycle_left", "camera", "coins", "brick", "gravel"):
        files[("skimage", n)] = sk / f"{n}.png"
    for p in (REPO / "src/sdflow/assets/samples").glob("*.png"):  # from the same wheel
        files[("skimage", p.stem)] = p
    for p in sorted(_pyiqa_refs(cache).glob("*.bmp")):
        files[("kodak", p.stem)] = p
    return files


def splits(files: dict) -> dict:
    mate = sorted(k for k in files if k[0] == "mate")
    out = {"hr_train": mate[0::2] + HR_EXTRA, "lr_train": mate[1::2] + LR_EXTRA, "tune": TUNE, "test": TEST}
    seen = {}
    for split, keys in out.items():
        for k in keys:
            if k not in files:
                raise SystemExit(f"photo {k} not found")
            if k in seen:
                raise SystemExit(f"photo {k} is in both {seen[k]} and {split}")
            seen[k] = split
    return out


def load_photo(key, path: Path) -> np.ndarray:
    import torch

    from sdflow.data.datasets import read_rgb
    from sdflow.resize import downscale

    a = read_rgb(path)
    factor = REDUCE.get(key[0], REDUCE.get(f"{key[0]}_{key[1]}", 1))
    if factor > 1:
        t = torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]
        t = downscale(t, factor, "bicubic")
        a = np.clip(np.rint(t[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    return a


def _save(path: Path, a: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def make_data(work: Path) -> None:
    files = source_files(work / "cache")
    parts = splits(files)
    photos = work / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    manifest = {}
    for split, keys in parts.items():
        for key in keys:
            a = load_photo(key, files[key])
            name = f"{key[0]}_{key[1]}"
            if split in ("hr_train", "lr_train"):
                # Tiles keep decoding cheap; all tiles of one photo stay on one side.
                for y in range(0, a.shape[0] - TILE + 1, TILE):
                    for x in range(0, a.shape[1] - TILE + 1, TILE):
                        _save(photos / split / f"{name}_{y:04d}_{x:04d}.png", a[y:y + TILE, x:x + TILE])
            else:
                h, w = a.shape[0] // 8 * 8, a.shape[1] // 8 * 8
                _save(photos / split / f"{name}.png", a[:h, :w])
            manifest.setdefault(split, []).append(
                {"photo": name, "file": str(files[key]), "shape": list(a.shape),
                 "sha256": hashlib.sha256(a.tobytes()).hexdigest()})
    (work / "split.json").write_text(json.dumps(manifest, indent=1))
    for split in parts:
        print(f"{split}: {len(manifest[split])} photos, {len(list((photos / split).glob('*.png')))} files")

    for fam in FAMILIES:
        root = work / fam
        shutil.rmtree(root, ignore_errors=True)
        tmp = root / "_lr_side"
        # LR side: the LR training tiles, degraded (their HR versions are thrown away).
        sh(python(), "-m", "sdflow", "degrade", "-i", photos / "lr_train", "-o", tmp, "--preset", fam, "--seed", 0)
        shutil.move(str(tmp / "LR"), str(root / "train_LR"))
        shutil.rmtree(tmp)
        shutil.copytree(photos / "hr_train", root / "train_HR")
        # Paired: the HR training tiles and their own degraded LR.
        sh(python(), "-m", "sdflow", "degrade", "-i", photos / "hr_train", "-o", root / "pairs",
           "--preset", fam, "--seed", 0)
        for split, draws in (("test", TEST_DRAWS), ("tune", TUNE_DRAWS)):
            for seed in draws:
                d = root / f"_{split}{seed}"
                sh(python(), "-m", "sdflow", "degrade", "-i", photos / split, "-o", d, "--preset", fam,
                   "--seed", seed)
                for side in ("HR", "LR"):
                    (root / split / side).mkdir(parents=True, exist_ok=True)
                    for f in (d / side).glob("*.png"):
                        shutil.move(str(f), str(root / split / side / f"{f.stem}_s{seed}.png"))
                shutil.rmtree(d)


# ----- runs ---------------------------------------------------------------------------------

def train(work: Path, family: str, mode: str, name: str, steps, overrides, config: str) -> None:
    run = work / "runs" / name
    fam = work / family
    if mode == "paired":
        data = ["--paired", "--hr", fam / "pairs" / "HR", "--lr", fam / "pairs" / "LR"]
    else:
        data = ["--hr", fam / "train_HR", "--lr", fam / "train_LR"]
    resume = (run / "config.yaml").exists()
    cmd = [python(), "-m", "sdflow", "train", "--out", run, *data]
    cmd += ["--resume"] if resume else ["--config", REPO / "configs" / f"{config}.yaml"]
    if steps:
        cmd += ["--steps", steps]
    for o in ["log.progress=false", *overrides]:
        cmd += ["--set", o]
    run.mkdir(parents=True, exist_ok=True)
    info = {"family": family, "mode": mode, "config": config, "overrides": list(overrides)}
    if resume and (run / "protocol.json").exists():
        info = json.loads((run / "protocol.json").read_text())
    (run / "protocol.json").write_text(json.dumps(info, indent=1))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    sh(*cmd, env=env)


def _precision_flag() -> list:
    """fp32 scoring where this sdflow has --precision (its default, auto, picks bf16 on some
    machines): the tables must not depend on the machine."""
    out = subprocess.run([python(), "-m", "sdflow", "eval", "--help"], capture_output=True, text=True).stdout
    return ["--precision", "fp32"] if "--precision" in out else []


def _eval(work: Path, run: Path, family: str, split: str, taus=(0.0,)) -> dict:
    PRECISION = _precision_flag()
    out = run / (f"eval_{split}" + "".join(f"_t{t:g}" for t in taus if t))
    fam = work / family
    if not (out / "results.json").exists() or (out / "results.json").stat().st_mtime < (run / "model.safetensors").stat().st_mtime:
        sh(python(), "-m", "sdflow", "eval", "--hr", fam / split / "HR", "--lr", fam / split / "LR",
           "--model", run, "-o", out, "--tau", *taus, "-q", "--report-images", 0, *PRECISION)
    return json.loads((out / "results.json").read_text())


def _row(doc: dict, direction: str, method: str, tau=None) -> dict:
    return next(r for r in doc[direction]["mean"]
                if r["method"] == method and (tau is None or r.get("tau") == tau))


def score(work: Path, names, split: str, taus=(0.0,)) -> None:
    """One table per family: SR and DS of each run beside bicubic, a row per tau. The issue's
    criteria read SR at tau 0 and DS (PSNR against the real LR, and its noise level) at each tau."""
    taus = tuple(sorted(set(float(t) for t in taus) | {0.0}))
    runs = [work / "runs" / n for n in names] if names else sorted((work / "runs").glob("*"))
    by_family = {}
    for run in runs:
        if not (run / "model.safetensors").exists():
            continue
        info = json.loads((run / "protocol.json").read_text())
        if split == "tune" and info["family"] == HELD_OUT:
            print(f"{run.name}: the held-out family is never scored on the tuning split")
            continue
        by_family.setdefault(info["family"], []).append((run, info, _eval(work, run, info["family"], split, taus)))
    for family, items in by_family.items():
        doc0 = items[0][2]
        bic_sr, bic_ds, real = _row(doc0, "sr", "bicubic"), _row(doc0, "ds", "bicubic"), _row(doc0, "ds", "real LR")
        print(f"\n## {family} ({split}: {bic_sr['images']} pairs)\n")
        print("| method | mode | tau | SR PSNR-Y | gain | SSIM-Y | colour shift | DS PSNR | DS - bicubic | DS noise | DS lap-var |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| bicubic | | | {bic_sr['psnr_y']:.2f} | | {bic_sr['ssim_y']:.4f} | {bic_sr['colour_shift']:.2f} | "
              f"{bic_ds['psnr_rgb']:.2f} | | {bic_ds['noise']:.2f} | {bic_ds['lapvar']:.0f} |")
        for run, info, doc in items:
            for tau in taus:
                sr, ds = _row(doc, "sr", "sdflow", tau), _row(doc, "ds", "sdflow", tau)
                print(f"| {run.name} | {info['mode']} | {tau:g} | {sr['psnr_y']:.2f} | "
                      f"{sr['psnr_y'] - bic_sr['psnr_y']:+.2f} | {sr['ssim_y']:.4f} | {sr['colour_shift']:.2f} | "
                      f"{ds['psnr_rgb']:.2f} | {ds['psnr_rgb'] - bic_ds['psnr_rgb']:+.2f} | {ds['noise']:.2f} | "
                      f"{ds['lapvar']:.0f} |")
        print(f"| real LR | | | | | | | | | {real['noise']:.2f} | {real['lapvar']:.0f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("data")
    a.add_argument("work", type=Path)
    a = sub.add_parser("train")
    a.add_argument("work", type=Path)
    a.add_argument("family", choices=FAMILIES)
    a.add_argument("mode", choices=("unpaired", "paired"))
    a.add_argument("name")
    a.add_argument("--steps", type=int)
    a.add_argument("--config", default="default")
    a.add_argument("--set", dest="overrides", action="append", default=[])
    a = sub.add_parser("score")
    a.add_argument("work", type=Path)
    a.add_argument("names", nargs="*")
    a.add_argument("--split", choices=("test", "tune"), default="test")
    a.add_argument("--tau", type=float, nargs="+", default=[0.0],
                   help="temperatures to score besides 0 (SR's criterion is at 0; DS is read at each)")
    args = ap.parse_args(argv)
    if args.cmd == "data":
        make_data(args.work)
    elif args.cmd == "train":
        train(args.work, args.family, args.mode, args.name, args.steps, args.overrides, args.config)
    else:
        score(args.work, args.names, args.split, args.tau)
    return 0


if __name__ == "__main__":
    sys.exit(main())
