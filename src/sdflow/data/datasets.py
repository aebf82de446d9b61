"""Unpaired training data: random HR and LR patches from two folders of photos.

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

from sdflow.imageio import IMAGE_EXTENSIONS, find_images, read_rgb8 as read_rgb

log = logging.getLogger("sdflow.train")


def list_images(root) -> List[Path]:
    """Image files under the folder `root` (`sdflow.imageio.find_images`: recursive, symbolic
    links followed, hidden entries skipped), sorted by relative path."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    return find_images(root)


def usable_images(paths: Sequence[Path], min_side: int, what: str) -> List[Path]:
    """The paths that can be opened and have both sides >= min_side; the others are named
    in one warning each. Only headers are read, so this is quick even for large folders."""
    from PIL import Image

    keep = []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception as e:  # PIL raises many types for broken files
            _warn(f"{what}: skipping unreadable image {p} ({type(e).__name__}: {e})")
            continue
        if min(w, h) < min_side:
            _warn(f"{what}: skipping {p}: {w}x{h} is smaller than the {min_side}px patch")
            continue
        keep.append(p)
    return keep


def _warn(msg: str) -> None:
    log.warning(msg)
    if not log.handlers and not logging.getLogger().handlers:
        warnings.warn(msg, stacklevel=3)


def augment(img: np.ndarray, patch: int, rng: np.random.Generator, hflip: bool, rot90: bool) -> np.ndarray:
    """A random `patch` x `patch` crop, then a random member of the flip / rotation group."""
    h, w = img.shape[:2]
    top = int(rng.integers(0, h - patch + 1))
    left = int(rng.integers(0, w - patch + 1))
    out = img[top:top + patch, left:left + patch]
    # Draw every number whether or not it is used, so that switching an augmentation off
    # leaves the crops of a seed unchanged.
    flip, turns = bool(rng.integers(0, 2)), int(rng.integers(0, 4))
    if hflip and flip:
        out = out[:, ::-1]
    if rot90 and turns:
        out = np.rot90(out, turns)
    return out


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
        found = {"HR": list_images(hr_dir), "LR": list_images(lr_dir)}
        self.hr_paths = usable_images(found["HR"], hr_patch, "HR")
        self.lr_paths = usable_images(found["LR"], lr_patch, "LR")
        for what, paths, folder in (("HR", self.hr_paths, hr_dir), ("LR", self.lr_paths, lr_dir)):
            if not found[what]:
                raise ValueError(f"{folder}: no {what} image files ({', '.join(IMAGE_EXTENSIONS)}) in it "
                                 f"or its sub-folders")
            if not paths:
                raise ValueError(f"{folder}: none of its {len(found[what])} {what} image file(s) is usable "
                                 f"(readable, both sides >= {hr_patch if what == 'HR' else lr_patch} px; "
                                 f"the warnings above name each)")
        self._broken = set()

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
                img = read_rgb(p)
            except Exception as e:
                self._broken.add(p)
                _warn(f"{what}: skipping unreadable image {p} ({type(e).__name__}: {e})")
                continue
            if min(img.shape[:2]) < patch:  # EXIF rotation cannot shrink a side, but be safe
                self._broken.add(p)
                _warn(f"{what}: skipping {p}: smaller than the {patch}px patch")
                continue
            return augment(img, patch, rng, self.hflip, self.rot90)
        raise RuntimeError(f"{what}: none of the {len(paths)} images could be read")

    def __getitem__(self, key: Tuple[int, int, int]) -> dict:
        hr_index, lr_index, seed = key
        rng = np.random.default_rng(seed)
        hr = self._load(self.hr_paths, hr_index, self.hr_patch, rng, "HR")
        lr = self._load(self.lr_paths, lr_index, self.lr_patch, rng, "LR")
        return {"hr": to_tensor(hr), "lr": to_tensor(lr)}


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
    hr_root, lr_root = Path(hr_dir), Path(lr_dir)
    lr_by_key = {p.relative_to(lr_root).with_suffix("").as_posix(): p for p in list_images(lr_root)}
    pairs = []
    for p in list_images(hr_root):
        key = p.relative_to(hr_root).with_suffix("").as_posix()
        if key in lr_by_key:
            pairs.append((p, lr_by_key[key]))
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


__all__ = ["list_images", "read_rgb", "usable_images", "augment", "to_tensor", "UnpairedPatches",
           "UnpairedStream", "make_loader", "paired_images", "load_pair", "sample_seed"]
