"""Training data: random HR and LR patches from two folders of photos, unpaired (the two
folders show different scenes) or paired (aligned crops of corresponding files).

Repeatability is designed in rather than hoped for. Every sample is addressed by its
position `g` in one global stream (shared by all ranks: rank r takes g = k * world + r).
Which HR and LR image the position uses comes from a per-epoch permutation seeded by
(seed, epoch), and the crop / flip / rotation come from a generator seeded by (seed, g).
So a sample never depends on which worker process loaded it, how many workers there are,
or what ran before it, and resuming a run only needs the number of samples consumed.
"""
from __future__ import annotations

import logging
import random
import signal
import warnings
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sdflow.imageio import IMAGE_EXTENSIONS, ImageReadError, find_images, read_rgb8 as read_rgb

log = logging.getLogger("sdflow.train")


class DataError(ValueError):
    """Training data that cannot be used (no readable image on one side); the message names
    each file and why it was left out."""


def worker_message(e: DataError) -> str:
    """The message a DataLoader worker raised `e` with: torch re-raises it in the training
    process as the same type around the worker's whole traceback text."""
    return str(e).rpartition(f"{DataError.__module__}.{DataError.__qualname__}: ")[2].strip()


def list_images(root, skipped: Optional[list] = None) -> List[Path]:
    """Image files under the folder `root` (`sdflow.imageio.find_images`: recursive, symbolic
    links followed, hidden entries skipped), sorted by relative path; the other paths passed
    over go to `skipped` as (path, reason)."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    return find_images(root, skipped=skipped)


def usable_images(paths: Sequence[Path], min_side: int, what: str,
                  rejected: Optional[list] = None) -> List[Path]:
    """The paths that can be opened and have both sides >= min_side; the others are named
    in one warning each (and added to `rejected` as (path, reason)). Only headers are read, so
    this is quick even for large folders."""
    from PIL import Image

    keep = []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception as e:  # PIL raises many types for broken files
            reason = f"unreadable ({type(e).__name__}: {e})"
        else:
            if min(w, h) >= min_side:
                keep.append(p)
                continue
            reason = f"{w}x{h} is smaller than the {min_side}px patch"
        _warn(f"{what}: skipping {p}: {reason}")
        if rejected is not None:
            rejected.append((p, reason))
    return keep


def _warn(msg: str) -> None:
    log.warning(msg)
    if not log.handlers and not logging.getLogger().handlers:
        warnings.warn(msg, stacklevel=3)


def _draw_augmentation(h: int, w: int, patch: int, rng: np.random.Generator):
    """(top, left, flip, turns) of a random `patch` crop of an h x w image. Every number is
    drawn whether or not it is used, so that switching an augmentation off leaves the crops of
    a seed unchanged."""
    top = int(rng.integers(0, h - patch + 1))
    left = int(rng.integers(0, w - patch + 1))
    return top, left, bool(rng.integers(0, 2)), int(rng.integers(0, 4))


def _flip_rotate(img: np.ndarray, flip: bool, turns: int, hflip: bool, rot90: bool) -> np.ndarray:
    if hflip and flip:
        img = img[:, ::-1]
    if rot90 and turns:
        img = np.rot90(img, turns)
    return img


def augment(img: np.ndarray, patch: int, rng: np.random.Generator, hflip: bool, rot90: bool) -> np.ndarray:
    """A random `patch` x `patch` crop, then a random member of the flip / rotation group."""
    top, left, flip, turns = _draw_augmentation(*img.shape[:2], patch, rng)
    return _flip_rotate(img[top:top + patch, left:left + patch], flip, turns, hflip, rot90)


def augment_pair(hr: np.ndarray, lr: np.ndarray, lr_patch: int, rng: np.random.Generator, hflip: bool,
                 rot90: bool, scale: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """Aligned random crops of a pair (the HR one `scale` times the LR one, on the x`scale`
    grid), with the same flip / rotation applied to both."""
    h, w = min(lr.shape[0], hr.shape[0] // scale), min(lr.shape[1], hr.shape[1] // scale)
    top, left, flip, turns = _draw_augmentation(h, w, lr_patch, rng)
    lr = lr[top:top + lr_patch, left:left + lr_patch]
    s, p = scale, scale * lr_patch
    hr = hr[s * top:s * top + p, s * left:s * left + p]
    return _flip_rotate(hr, flip, turns, hflip, rot90), _flip_rotate(lr, flip, turns, hflip, rot90)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float32 3 x H x W in [-1, 1]."""
    # A copy: crops and rotations are views of a read-only decoded image.
    t = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float()
    return t.div_(127.5).sub_(1.0)


def sample_seed(seed: int, position: int) -> int:
    """A 64-bit seed for one stream position, mixed so nearby positions are unrelated."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, position & 0xFFFFFFFFFFFF]).generate_state(2, np.uint64)[0])


class UnpairedPatches(Dataset):
    """Indexed by `(hr_index, lr_index, aug_seed)` from `UnpairedStream`; returns a dict
    with an HR patch `hr` [3, P, P] and an LR patch `lr` [3, P/4, P/4], both in [-1, 1]."""

    def __init__(self, hr_dir, lr_dir, hr_patch: int, lr_patch: int, hflip: bool = True,
                 rot90: bool = True):
        self.hr_patch, self.lr_patch = hr_patch, lr_patch
        self.hflip, self.rot90 = hflip, rot90
        self.folders = {"HR": hr_dir, "LR": lr_dir}
        found, skipped = {}, []
        for what, folder in self.folders.items():
            found[what] = list_images(folder, skipped)
        for p, reason in skipped:
            _warn(f"not reading {p}: {reason}")
        self.found = {what: len(paths) for what, paths in found.items()}
        # Why each left-out file is out, by side: the header check's, then decoding's (a worker's
        # own copy of the dataset adds those), for the message when a side has nothing left.
        self._left_out = {"HR": [], "LR": []}
        self.hr_paths = usable_images(found["HR"], hr_patch, "HR", self._left_out["HR"])
        self.lr_paths = usable_images(found["LR"], lr_patch, "LR", self._left_out["LR"])
        for what, paths, folder in (("HR", self.hr_paths, hr_dir), ("LR", self.lr_paths, lr_dir)):
            if not found[what]:
                raise DataError(f"{folder}: no {what} image files ({', '.join(IMAGE_EXTENSIONS)}) in it "
                                f"or its sub-folders")
            if not paths:
                raise self._unusable(what)
        self._broken = set()
        self._complete = set()

    def _unusable(self, what: str) -> DataError:
        patch = self.hr_patch if what == "HR" else self.lr_patch
        named = "".join(f"\n  {p}: {reason}" for p, reason in self._left_out[what])
        return DataError(f"{self.folders[what]}: none of its {self.found[what]} {what} image file(s) can be "
                         f"used (readable, both sides >= {patch} px):{named}")

    def __len__(self) -> int:
        return max(len(self.hr_paths), len(self.lr_paths))

    def _load(self, paths: List[Path], index: int, patch: int, rng, what: str) -> np.ndarray:
        # A file that passed the header check can still fail to decode (truncated); fall back
        # to the next one deterministically rather than killing a long run.
        for k in range(len(paths)):
            p = paths[(index + k) % len(paths)]
            if p in self._broken:
                continue
            try:
                # A file's data is checked for completeness once: the check costs another inflate.
                img = read_rgb(p, check_data=p not in self._complete)
                self._complete.add(p)
            except Exception as e:
                reason = str(e.reason) if isinstance(e, ImageReadError) else f"{type(e).__name__}: {e}"
                reason = f"unreadable ({reason})"
            else:
                if min(img.shape[:2]) >= patch:
                    return augment(img, patch, rng, self.hflip, self.rot90)
                reason = f"smaller than the {patch}px patch"   # EXIF rotation cannot shrink a side
            self._broken.add(p)
            self._left_out[what].append((p, reason))
            _warn(f"{what}: skipping {p}: {reason}")
        raise self._unusable(what)

    def __getitem__(self, key: Tuple[int, int, int]) -> dict:
        hr_index, lr_index, seed = key
        rng = np.random.default_rng(seed)
        hr = self._load(self.hr_paths, hr_index, self.hr_patch, rng, "HR")
        lr = self._load(self.lr_paths, lr_index, self.lr_patch, rng, "LR")
        return {"hr": to_tensor(hr), "lr": to_tensor(lr)}


def match_pairs(hr_dir, lr_dir) -> Tuple[List[Tuple[Path, Path]], List[Path], List[Path]]:
    """(pairs, HR files without an LR partner, LR files without an HR partner): partners share
    their path relative to the folder, extension ignored (`a/b.png` and `a/b.jpg`)."""
    hr_root, lr_root = Path(hr_dir), Path(lr_dir)

    def key(p, root):
        return p.relative_to(root).with_suffix("").as_posix()

    lr_by_key = {key(p, lr_root): p for p in list_images(lr_root)}
    pairs, hr_only = [], []
    for p in list_images(hr_root):
        partner = lr_by_key.pop(key(p, hr_root), None)
        if partner is None:
            hr_only.append(p)
        else:
            pairs.append((p, partner))
    return pairs, hr_only, sorted(lr_by_key.values())


def _header_size(path: Path) -> Tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


class PairedPatches(Dataset):
    """Aligned HR / LR patches of corresponding files (`data.paired`). Keys are those of
    `UnpairedStream` over one list (the pair index is the HR index; the LR index is unused),
    so the data stay a pure function of the stream position, as for unpaired data."""

    def __init__(self, hr_dir, lr_dir, hr_patch: int, lr_patch: int, hflip: bool = True,
                 rot90: bool = True, scale: int = 4):
        self.hr_patch, self.lr_patch, self.scale = hr_patch, lr_patch, scale
        self.hflip, self.rot90 = hflip, rot90
        pairs, hr_only, lr_only = match_pairs(hr_dir, lr_dir)
        for p in hr_only:
            _warn(f"paired: skipping {p}: no LR file of the same name in {lr_dir}")
        for p in lr_only:
            _warn(f"paired: skipping {p}: no HR file of the same name in {hr_dir}")
        self.pairs = []
        for hp, lp in pairs:
            try:
                (hw, hh), (lw, lh) = _header_size(hp), _header_size(lp)
            except Exception as e:  # PIL raises many types for broken files
                _warn(f"paired: skipping {hp} / {lp}: unreadable ({type(e).__name__}: {e})")
                continue
            # LR = floor or ceil of HR / scale, as BasicSR's and sdflow degrade's pairs are.
            if not all(h // scale <= l <= -(-h // scale) for h, l in ((hw, lw), (hh, lh))):
                _warn(f"paired: skipping {hp} / {lp}: sizes {hw}x{hh} and {lw}x{lh} are not x{scale} partners")
                continue
            if min(hw, hh) // scale < lr_patch:
                _warn(f"paired: skipping {hp}: {hw}x{hh} is smaller than the {hr_patch}px patch")
                continue
            self.pairs.append((hp, lp))
        if not self.pairs:
            raise ValueError(f"{hr_dir} / {lr_dir}: no usable pair (same relative name, LR = HR/{scale}, "
                             f"HR sides >= {hr_patch} px; the warnings above name each file); "
                             f"for unpaired folders leave out --paired")
        # The loader's stream takes the two lists' lengths.
        self.hr_paths = self.lr_paths = [hp for hp, _ in self.pairs]
        self._broken = set()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: Tuple[int, int, int]) -> dict:
        index, _, seed = key
        rng = np.random.default_rng(seed)
        for k in range(len(self.pairs)):
            hp, lp = self.pairs[(index + k) % len(self.pairs)]
            if hp in self._broken:
                continue
            try:
                hr, lr = read_rgb(hp), read_rgb(lp)
            except Exception as e:
                self._broken.add(hp)
                _warn(f"paired: skipping unreadable pair {hp} / {lp} ({type(e).__name__}: {e})")
                continue
            hr, lr = augment_pair(hr, lr, self.lr_patch, rng, self.hflip, self.rot90, self.scale)
            return {"hr": to_tensor(hr), "lr": to_tensor(lr)}
        raise DataError(f"paired: none of the {len(self.pairs)} pairs could be read")


class UnpairedStream(Sampler):
    """Infinite stream of `(hr_index, lr_index, aug_seed)` keys for one rank, starting at
    this rank's `start`-th sample. Each side walks through its own reshuffled epochs, so
    folders of different sizes are both covered evenly."""

    def __init__(self, n_hr: int, n_lr: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        self.n_hr, self.n_lr = n_hr, n_lr
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start

    def _perm(self, n: int, side: int, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(sample_seed(self.seed ^ (0x5DF10 + side), epoch) & 0x7FFFFFFFFFFFFFFF)
        return torch.randperm(n, generator=g)

    def key(self, position: int) -> Tuple[int, int, int]:
        """The key of global stream position `position` (uncached; for tests and tools)."""
        return (int(self._perm(self.n_hr, 0, position // self.n_hr)[position % self.n_hr]),
                int(self._perm(self.n_lr, 1, position // self.n_lr)[position % self.n_lr]),
                sample_seed(self.seed, position))

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:
        cache = {0: (-1, None), 1: (-1, None)}

        def pick(side, n, g):
            epoch = g // n
            if cache[side][0] != epoch:
                cache[side] = (epoch, self._perm(n, side, epoch))
            return int(cache[side][1][g % n])

        k = self.start
        while True:
            g = k * self.world_size + self.rank
            yield pick(0, self.n_hr, g), pick(1, self.n_lr, g), sample_seed(self.seed, g)
            k += 1


def _worker_init(worker_id: int) -> None:
    # Ctrl-C and `kill -TERM` to the process group (torchrun forwards signals that way) reach
    # the workers too, and a worker that dies of one makes the training process raise at once,
    # before it can finish its step and save. The training process owns the graceful stop;
    # the workers end when the loader shuts them down.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    # The samples carry their own seeds; seeding the worker's global generators as well
    # keeps any library that draws from them repeatable too.
    info = torch.utils.data.get_worker_info()
    s = info.seed % 2**32
    random.seed(s)
    np.random.seed(s)
    torch.set_num_threads(1)


def make_loader(dataset: UnpairedPatches, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                start: int = 0, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """An endless loader of batches for one rank, beginning at its `start`-th sample."""
    stream = UnpairedStream(len(dataset.hr_paths), len(dataset.lr_paths), seed, rank, world_size, start)
    g = torch.Generator().manual_seed(seed * 1000 + rank)  # only seeds the workers' base seed
    return DataLoader(dataset, batch_size=batch_size, sampler=stream, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=True, worker_init_fn=_worker_init,
                      generator=g, persistent_workers=num_workers > 0,
                      prefetch_factor=2 if num_workers > 0 else None)


# ----- paired validation -----------------------------------------------------------------

def paired_images(hr_dir, lr_dir, max_images: Optional[int] = None) -> List[Tuple[Path, Path]]:
    """(HR, LR) path pairs with the same relative path (extension ignored), sorted."""
    pairs = match_pairs(hr_dir, lr_dir)[0]
    if not pairs:
        raise ValueError(f"no image in {hr_dir} has a partner with the same name in {lr_dir}")
    return pairs[:max_images] if max_images else pairs


def load_pair(hr_path, lr_path, crop: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A validation pair as [1, 3, H, W] / [1, 3, H/4, W/4] tensors in [-1, 1], HR cut to a
    multiple of 8 (and, with `crop`, centre-cropped) and LR cut to match."""
    hr, lr = read_rgb(hr_path), read_rgb(lr_path)
    h, w = min(hr.shape[0], 4 * lr.shape[0]), min(hr.shape[1], 4 * lr.shape[1])
    h, w = h // 8 * 8, w // 8 * 8
    top = left = 0
    if crop:
        side = crop // 8 * 8
        if h > side:
            top = (h - side) // 2 // 4 * 4
            h = side
        if w > side:
            left = (w - side) // 2 // 4 * 4
            w = side
    if h < 16 or w < 16:
        raise ValueError(f"{hr_path}: too small for validation ({hr.shape[1]}x{hr.shape[0]})")
    hr = hr[top:top + h, left:left + w]
    lr = lr[top // 4:(top + h) // 4, left // 4:(left + w) // 4]
    return to_tensor(hr)[None], to_tensor(lr)[None]


__all__ = ["DataError", "worker_message", "list_images", "read_rgb", "usable_images", "augment", "augment_pair", "to_tensor", "UnpairedPatches",
           "PairedPatches", "match_pairs",
           "UnpairedStream", "make_loader", "paired_images", "load_pair", "sample_seed"]
