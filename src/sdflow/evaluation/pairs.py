"""Test pairs: HR and LR images matched by name across two folders, or the bundled sample photos
with a simulated LR; and how an HR image is fitted to the LR it is x4 of."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from sdflow.config import SCALE
from sdflow.imageio import Image, ImageReadError, find_images, quantize, read_image

PathLike = Union[str, os.PathLike]


@dataclass
class Pair:
    """One test image: `name` is its path relative to the folders, without extension. `hr` and
    `lr` are files, or images already in memory (`sdflow.imageio.Image`)."""
    name: str
    hr: Union[Path, Image]
    lr: Union[Path, Image]


@dataclass
class Matching:
    pairs: List[Pair]
    unmatched_hr: List[str] = field(default_factory=list)   # relative paths with no LR partner
    unmatched_lr: List[str] = field(default_factory=list)
    duplicates: List[str] = field(default_factory=list)     # files whose name another file shares


def match_folders(hr_dir: PathLike, lr_dir: PathLike, exclude: Optional[PathLike] = None) -> Matching:
    """Pair the images of two folders by relative path without extension (a/b.png with a/b.jpg),
    sorted by name; names left over are paired when they differ only by a scale or side tag
    (0801.png with 0801x4.png, Canon_001_HR.png with Canon_001_LR4.png; the pair takes the HR's
    name). Files without a partner, and names that two files of one folder share, are listed and
    left out. Nothing under `exclude` (e.g. the evaluation's own output folder) is read."""
    hr_dir, lr_dir = Path(hr_dir), Path(lr_dir)
    sides, shared = [], set()
    duplicates = []
    for root in (hr_dir, lr_dir):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        by_name: Dict[str, Path] = {}
        for p in find_images(root, exclude=exclude):
            name = p.relative_to(root).with_suffix("").as_posix()
            if name in by_name:
                # Which of a.png / a.jpg is the intended partner is anyone's guess: use neither.
                shared.add(name)
                duplicates.append(p.as_posix())
            else:
                by_name[name] = p
        sides.append(by_name)
    hr, lr = sides
    duplicates += [side[n].as_posix() for side in sides for n in shared if n in side]
    partner = {n: n for n in (set(hr) & set(lr)) - shared}
    partner.update(_tagged_partners(sorted(set(hr) - set(lr) - shared), sorted(set(lr) - set(hr) - shared)))
    lr_taken = set(partner.values())
    return Matching(
        pairs=[Pair(n, hr[n], lr[partner[n]]) for n in sorted(partner)],
        unmatched_hr=sorted(hr[n].relative_to(hr_dir).as_posix() for n in set(hr) - set(partner) - shared),
        unmatched_lr=sorted(lr[n].relative_to(lr_dir).as_posix() for n in set(lr) - lr_taken - shared),
        duplicates=sorted(duplicates))

# Scale and side tags of public test sets' file names: DIV2K's 0801.png / 0801x4.png (and the
# x4m / x4d / x4w of its real-world tracks), RealSR's Canon_001_HR.png / Canon_001_LR4.png.
_NAME_TAG = re.compile(r"(?i)[_-]?(?:hr|lr[_-]?x?4?|x4[a-z]?)$")


def _tagged_partners(hr_names: Sequence[str], lr_names: Sequence[str]) -> Dict[str, str]:
    """{HR name: LR name} for names that differ only by such a tag, where that is unambiguous."""
    def keys(names):
        found: Dict[str, List[str]] = {}
        for n in names:
            folder, _, stem = n.rpartition("/")
            base = _NAME_TAG.sub("", stem)
            if base:
                found.setdefault(f"{folder}/{base}" if folder else base, []).append(n)
        return found

    hr_keys, lr_keys = keys(hr_names), keys(lr_names)
    return {hr_keys[k][0]: lr_keys[k][0] for k in hr_keys.keys() & lr_keys.keys()
            if len(hr_keys[k]) == len(lr_keys[k]) == 1}


def sample_pairs(preset: str = "realistic", seed: int = 0) -> List[Pair]:
    """The bundled sample photos with their simulated LR, in memory: the same pairs as
    `sdflow degrade -i <samples> -o OUT --preset <preset> --seed <seed>` writes."""
    from sdflow.data.degrade import crop_to_multiple, degrade, file_rng, sample_images

    pairs = []
    for path in sample_images():
        hr = crop_to_multiple(read_image(path).rgb)
        hr_u8 = quantize(hr)
        lr_u8 = degrade(hr_u8, preset, file_rng(seed, path.name))
        pairs.append(Pair(path.stem, Image(hr_u8 / np.float32(255), path=path),
                          Image(lr_u8 / np.float32(255))))
    return pairs


class PairError(Exception):
    pass


def load_side(side: Union[Path, Image], what: str) -> Image:
    if isinstance(side, Image):
        return side
    try:
        return read_image(side)
    except ImageReadError as e:
        raise PairError(f"cannot read the {what} image {e.path}: {e.reason}") from None


def fit_pair(hr: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """The HR that the LR is the x4 of: the HR itself when LR = ceil(HR / 4) (sdflow's and
    MATLAB's convention, a partial last LR pixel), or the HR cropped to 4 x LR when LR =
    floor(HR / 4) (the mod-crop of BasicSR and of Set14 / BSD100-style test sets)."""
    (H, W), (h, w) = hr.shape[:2], lr.shape[:2]
    ceil, floor = (math.ceil(H / SCALE), math.ceil(W / SCALE)), (H // SCALE, W // SCALE)
    if (h, w) == ceil:
        return hr
    if (h, w) == floor and min(h, w) > 0:
        return hr[:SCALE * h, :SCALE * w]
    raise PairError(f"sizes do not match x{SCALE}: HR {W}x{H}, LR {w}x{h} (expected LR "
                     f"{ceil[1]}x{ceil[0]}, or {floor[1]}x{floor[0]} with the HR cropped to 4x it)")
