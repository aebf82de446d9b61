"""The training loop: one code path for a single process and for `torchrun` (DDP).

Order of a step (the same on every rank):
  1. for each accumulation micro-batch: generator forward + backward (DDP syncs the
     gradients on the last one), then the critics' forward + backward on detached fakes;
  2. gradient norms (clipping), and one all-reduce of "was anything non-finite, and was
     a stop requested", so that every rank takes the same decision;
  3. both optimisers step, or neither does (a skipped step is counted and logged).
The learning rate is a pure function of the step, and every sample is a pure function
of its stream position, so a checkpoint (weights, optimisers, scaler, step, RNG states)
is enough to continue bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from sdflow.checkpoints import save_model
from sdflow.data.datasets import PairedPatches, UnpairedPatches, load_pair, make_loader, paired_images
from sdflow.data.datasets import DataError, worker_message
from sdflow.flows.layers import ActNorm
from sdflow.model import SDFlow
from sdflow.nets.discriminators import ContentDiscriminator, PatchDiscriminator, VGG19Features
from sdflow.nets.precision import (SUPPORTED, cpu_has_native_bf16, keep_float32, reduced_precision,
                                   resolve_precision)
from sdflow.train import checkpoint as ckpt_io
from sdflow.train.config import TrainConfig
from sdflow.train.logging import RunLogger, image_grid
from sdflow.train.objective import CriticObjective, GeneratorObjective


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group and must destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group that `torchrun` describes through its environment (if any)
    and pick this rank's device: NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, device, owns)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rank_seed(seed: int, rank: int) -> int:
    # Ranks draw different dequantisation noise and samples; the model itself is built
    # before this, from the shared seed, so every rank starts from the same weights.
    return (seed * 1_000_003 + 7919 * (rank + 1)) % 2**63


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to finish the current step, save and exit; a second
    Ctrl-C aborts at once without saving."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handler)

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _grad_scaler(enabled: bool):
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def make_critic(name: str, dc) -> nn.Module:
    """Critic `name` (content, hr or lr) as the config's `disc` section shapes it."""
    if name == "content":
        return ContentDiscriminator(3, dc.latent_channels, dc.latent_layers)
    if name == "hr":
        return PatchDiscriminator(3, dc.image_channels, dc.hr_layers)
    if name == "lr":
        return PatchDiscriminator(3, dc.lr_channels or dc.image_channels, dc.lr_layers)
    raise ValueError(f"unknown critic {name!r}; the critics are content, hr and lr")


def training_patches(cfg: TrainConfig):
    """The run's training patches: paired or unpaired, as `data` says."""
    patches = PairedPatches if cfg.data.paired else UnpairedPatches
    d = cfg.data
    return patches(d.hr_dir, d.lr_dir, d.hr_patch, d.lr_patch, d.hflip, d.rot90)


def _all_params(*modules: Optional[nn.Module]) -> List[torch.Tensor]:
    return [p for m in modules if m is not None for p in m.parameters()]


def _close_loader(batches) -> None:
    """Stop a DataLoader iterator's worker processes now. An exception raised inside the
    iterator keeps it alive in its traceback, and the workers ignore SIGTERM (datasets'
    _worker_init), so at exit multiprocessing would wait for them forever."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is None:
        return
    shutdown()
    for w in getattr(batches, "_workers", ()):
        if w.is_alive():
            w.kill()   # one busy decoding a file never reads the request to stop
            w.join(5)


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir, resume: bool = False,
                 on_step_end: Optional[Callable[["Trainer"], None]] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.on_step_end = on_step_end

    # ----- construction --------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.cfg
        d = self.dist
        if cfg.data.hr_dir is None or cfg.data.lr_dir is None:
            raise ValueError("no training data: give --hr and --lr (or data.hr_dir / data.lr_dir)")
        self.micro = cfg.micro_batch(d.world_size)

        self.amp_dtype = None
        amp = cfg.train.amp
        if amp == "auto":  # inference's --precision auto: bf16 where it runs natively, else float32
            amp = {"fp32": "none"}.get(resolve_precision("auto", d.device), "bf16")
            self.logger.info(f"train.amp=auto: {amp} on this {d.device.type}")
        if amp != "none":
            wanted = torch.bfloat16 if amp == "bf16" else torch.float16
            if wanted not in SUPPORTED.get(d.device.type, ()):
                self.logger.warning(f"train.amp={amp} is not supported on {d.device.type}; "
                                    f"training in float32")
            else:
                self.amp_dtype = wanted
                if d.device.type == "cpu" and not cpu_has_native_bf16():
                    self.logger.warning("train.amp=bf16: this CPU has no native bfloat16 (AVX512-BF16 / AMX); "
                                        "oneDNN emulates it, which is usually slower than float32")
        # Loss scaling only for fp16: bfloat16 has float32's exponent range and needs none.
        scaler_on = self.amp_dtype == torch.float16
        self.scaler_g = _grad_scaler(scaler_on)
        self.scaler_d = _grad_scaler(scaler_on)

        # Same seed on every rank: identical initial weights without relying on a broadcast.
        _seed_all(cfg.train.seed)
        self.model = SDFlow(cfg.model_config()).to(d.device).train()
        self.critics: Dict[str, nn.Module] = {}
        dc = cfg.disc
        if cfg.loss.domain > 0:
            self.critics["content"] = make_critic("content", dc)
        if cfg.loss.gan > 0 and cfg.train.stage1_steps < cfg.train.steps:
            # Built without advancing the global generator, so that what follows (the ActNorm
            # pass's noise) does not depend on whether the run reaches stage 2: a stage-1 run
            # extended past it then matches one configured that long from the start.
            with torch.random.fork_rng(devices=[]):
                self.critics["hr"] = make_critic("hr", dc)
                self.critics["lr"] = make_critic("lr", dc)
            for name, patch in (("hr", cfg.data.hr_patch), ("lr", cfg.data.lr_patch)):
                if patch < self.critics[name].min_input():
                    raise ValueError(f"data.{name}_patch={patch} is too small for the {name.upper()} "
                                     f"discriminator ({self.critics[name].min_input()} px at least); "
                                     f"lower disc.{name}_layers")
        for c in self.critics.values():
            c.to(d.device).train()

        self.vgg = None
        wants_vgg = cfg.loss.perceptual > 0 or cfg.loss.content_perceptual > 0
        if wants_vgg and cfg.loss.vgg_weights:
            self.vgg = VGG19Features.from_file(cfg.loss.vgg_weights, cfg.loss.perceptual_layers).to(d.device)
            self.logger.info(f"perceptual loss: VGG-19 from {cfg.loss.vgg_weights}, layers "
                             f"{', '.join(cfg.loss.perceptual_layers)}")
        elif wants_vgg:
            self.logger.info("perceptual loss: off (no VGG-19 weights; set loss.vgg_weights to a "
                             "torchvision-layout vgg19 .pth / .safetensors file to enable it)")

        if self.amp_dtype is not None:
            for name in cfg.train.amp_float32:
                for net in self.critics.values() if name == "critics" else [getattr(self.model, name)]:
                    keep_float32(net)
                self.logger.info(f"train.amp: {name} in float32")
        for name in cfg.optim.freeze:
            getattr(self.model, name).requires_grad_(False)
            self.logger.info(f"frozen: {name}")

        self.gen_obj = GeneratorObjective(self.model, cfg.loss, self.critics, self.vgg, cfg.data.dequantize,
                                          paired=cfg.data.paired)
        self.critic_groups = {}
        if "content" in self.critics:
            self.critic_groups["latent"] = CriticObjective({"content": self.critics["content"]})
        if "hr" in self.critics:
            self.critic_groups["image"] = CriticObjective({"hr": self.critics["hr"], "lr": self.critics["lr"]})

        self.dataset = training_patches(cfg)

    def _wrap(self) -> None:
        d = self.dist
        if d.distributed:
            ids = [d.local_rank] if d.device.type == "cuda" else None
            # Buffers (ActNorm flags, LU permutations) never change after the first batch and
            # are identical on every rank, so re-broadcasting them each forward is wasted
            # traffic. Newer torch spells that option differently.
            import inspect
            params = inspect.signature(DDP.__init__).parameters
            quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in params \
                else {"broadcast_buffers": False}
            self.gen = DDP(self.gen_obj, device_ids=ids, find_unused_parameters=not self._every_param_used(),
                           **quiet)
            self.critic_ddp = {k: DDP(v, device_ids=ids, **quiet) for k, v in self.critic_groups.items()}
        else:
            self.gen = self.gen_obj
            self.critic_ddp = dict(self.critic_groups)
        cfg = self.cfg
        betas = tuple(cfg.optim.betas)
        gen_params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(gen_params, lr=cfg.optim.lr, betas=betas)
        critic_params = _all_params(*self.critics.values())
        self.opt_d = torch.optim.Adam(critic_params, lr=cfg.optim.d_lr, betas=betas) if critic_params else None

    def _every_param_used(self) -> bool:
        """Whether every trainable generator parameter gets a gradient in every step; if
        not, DDP must search the graph for the unused ones (find_unused_parameters)."""
        c = self.cfg.loss
        e_used = c.content > 0 or c.domain > 0 or (c.nll_lr > 0 and not c.nll_lr_detach_content)
        # A learnt DS blur, and a told E's learnt width, move only in stage 2 (and with pairs).
        return (c.nll_hr > 0 and c.nll_lr > 0 and e_used and self.model.ds_blur is None
                and self.model.config.extractor_blur == "none")

    # ----- state ---------------------------------------------------------------------------

    def _state(self) -> dict:
        """The checkpoint dict (called on every rank: RNG states are gathered)."""
        rng = ckpt_io.capture_rng()
        if self.dist.distributed:
            gathered = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        return {
            "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "model_config": self.model.config.to_dict(),
            "critics": {k: {n: t.detach().cpu() for n, t in c.state_dict().items()}
                        for k, c in self.critics.items()},
            "optimizers": {"generator": self.opt_g.state_dict(),
                           "critics": self.opt_d.state_dict() if self.opt_d else {}},
            "scalers": {"generator": self.scaler_g.state_dict(), "critics": self.scaler_d.state_dict()},
            "schedule": {"milestones": self.cfg.milestones(), "gamma": self.cfg.optim.lr_gamma},
            "rng": rng_all,
            "data": {"position": self.data_position, "seed": self.cfg.train.seed,
                     "world_size": self.dist.world_size, "micro_batch": self.micro},
            "counters": {"skipped": self.skipped, "consecutive_skipped": self.consecutive_skipped},
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, prune: bool = True) -> Optional[Path]:
        state = self._state()
        path = None
        if self.dist.is_main:
            path = self.run_dir / ckpt_io.checkpoint_name(self.step)
            ckpt_io.write_checkpoint(state, path)
            save_model(self.model, self.run_dir / "model.safetensors",
                       metadata={"sdflow.train_step": self.step})
            for old in ckpt_io.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep) if prune else ():
                self.logger.info(f"removed old checkpoint {old.name}")
            self.logger.info(f"saved checkpoint {path.name} and model.safetensors at step {self.step}")
        self.last_saved_step = self.step
        return path

    def _load_weights(self, path: Path, ck: dict) -> dict:
        """First half of a resume, from the checkpoint `ck` read from `path`: weights, counters
        and the data position (before DDP wraps the modules and the loader is built)."""
        if ck["model_config"] != self.model.config.to_dict():
            raise ValueError(f"{path}: its model ({ck['model_config']}) differs from the config's "
                             f"({self.model.config.to_dict()})")
        self.model.load_state_dict(ck["model"])
        self.step = int(ck["step"])
        missing = set(self.critics) - set(ck["critics"])
        # The image critics exist only in runs configured to reach stage 2, so a run extended
        # past train.stage1_steps finds none in its stage-1 checkpoints. They have not trained
        # before stage 2, so starting them now is what an uninterrupted run does.
        self.fresh_critics = sorted(missing & {"hr", "lr"}) if self.step <= self.cfg.train.stage1_steps else []
        missing -= set(self.fresh_critics)
        if missing:
            raise ValueError(f"{path}: has no weights for discriminator(s) {sorted(missing)}; the loss "
                             f"weights must match the run that wrote it")
        for k, c in self.critics.items():
            if k not in self.fresh_critics:
                c.load_state_dict(ck["critics"][k])
        if self.fresh_critics:
            self.logger.info(f"discriminator(s) {self.fresh_critics} start fresh: {path.name} is from stage 1 "
                             f"(step {self.step}, train.stage1_steps={self.cfg.train.stage1_steps})")
        self.skipped = int(ck["counters"]["skipped"])
        self.consecutive_skipped = int(ck["counters"]["consecutive_skipped"])
        data = ck["data"]
        saved_world = int(data["world_size"])
        self.exact_resume = saved_world == self.dist.world_size and int(data["micro_batch"]) == self.micro
        if self.exact_resume:
            self.data_position = int(data["position"])
        else:
            self.logger.warning(f"resuming with world size {self.dist.world_size} (micro-batch {self.micro}) "
                                f"from a run with {saved_world} (micro-batch {data['micro_batch']}): "
                                f"training continues, but not bit-exactly")
            self.data_position = int(data["position"]) * saved_world // self.dist.world_size
        return ck

    def _load_rest(self, ck: dict, path: Path) -> None:
        """Second half: optimisers, loss scalers and finally the random generators."""
        self.opt_g.load_state_dict(ck["optimizers"]["generator"])
        if self.opt_d is not None and ck["optimizers"]["critics"]:
            self.opt_d.load_state_dict(self._with_fresh_critics(ck["optimizers"]["critics"], path))
        for scaler, key in ((self.scaler_g, "generator"), (self.scaler_d, "critics")):
            if scaler.is_enabled() and ck["scalers"][key]:
                scaler.load_state_dict(ck["scalers"][key])
        rngs = ck["rng"]
        if self.exact_resume and self.dist.rank < len(rngs):
            ckpt_io.restore_rng(rngs[self.dist.rank])
        else:
            _seed_all(_rank_seed(self.cfg.train.seed + self.step, self.dist.rank))
        self.logger.info(f"resumed from {path.name} at step {self.step}")

    def _with_fresh_critics(self, saved: dict, path: Path) -> dict:
        """The critics' saved Adam state renumbered for the current critics, with none for
        those that start fresh (Adam creates it at their first step)."""
        if not self.fresh_critics:
            return saved
        index, loaded = 0, []
        for k, c in self.critics.items():
            n = sum(1 for _ in c.parameters())
            if k not in self.fresh_critics:
                loaded.extend(range(index, index + n))
            index += n
        (group,) = saved["param_groups"]
        if len(group["params"]) != len(loaded):
            raise ValueError(f"{path}: its critics' optimiser holds {len(group['params'])} parameters, "
                             f"the discriminators it has weights for {len(loaded)}")
        # The saved ids number the saved critics' parameters in the same critic order.
        renumber = dict(zip(group["params"], loaded))
        return {"state": {renumber[i]: st for i, st in saved["state"].items()},
                "param_groups": [dict(group, params=list(range(index)))]}

    # ----- the loop ------------------------------------------------------------------------

    def _autocast(self):
        # The networks inside the flows run in the reduced dtype, the flows themselves (latent
        # state, 1x1 convolutions, log-determinants) in float32: sdflow.nets.precision.
        return reduced_precision(self.amp_dtype)

    def _next_batch(self):
        try:
            batch = next(self.batches)
        except DataError as e:
            raise DataError(worker_message(e)) from None
        self.data_position += self.micro
        nb = self.dist.device.type == "cuda"
        return batch["hr"].to(self.dist.device, non_blocking=nb), batch["lr"].to(self.dist.device, non_blocking=nb)

    def _sync_max(self, values: List[float]) -> List[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.dist.device)
        if self.dist.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def _sync_mean(self, values: Dict[str, float]) -> Dict[str, float]:
        if not self.dist.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.dist.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.dist.world_size).tolist()))

    @torch.no_grad()
    def _init_actnorm(self) -> None:
        """Data-dependent ActNorm initialisation on the first batch (all ranks together,
        before DDP: the layers average their statistics over the process group)."""
        pending = [m for m in self.model.modules() if isinstance(m, ActNorm) and not bool(m.initialized)]
        if not pending:
            return
        hr, lr = self._next_batch()
        self.data_position -= self.micro  # the batch is trained on as well
        self._first_batch = (hr, lr)
        self.gen_obj.run_every_flow(hr, lr)
        # Inverse-only paths (f_LR^-1 in stage 2) reuse layers the forward pass initialised.
        left = [m for m in self.model.modules() if isinstance(m, ActNorm) and not bool(m.initialized)]
        if left:
            raise RuntimeError(f"{len(left)} ActNorm layers were not reached by the initialisation pass")
        self.logger.info("ActNorm layers initialised from the first batch"
                         + (f" (statistics averaged over {self.dist.world_size} ranks)" if self.dist.distributed else ""))

    def _train_step(self) -> dict:
        cfg = self.cfg
        stage2 = self.step >= cfg.train.stage1_steps
        factor = cfg.lr_factor(self.step)
        for g in self.opt_g.param_groups:
            g["lr"] = cfg.optim.lr * factor
        if self.opt_d is not None:
            for g in self.opt_d.param_groups:
                g["lr"] = cfg.optim.d_lr * factor
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)

        accum = cfg.train.grad_accum
        inject = self.step in cfg.debug.inject_nan_steps
        sums: Dict[str, float] = {}
        loss_finite = True
        groups = [k for k in self.critic_ddp if stage2 or k == "latent"]
        for micro in range(accum):
            if self._first_batch is not None:
                hr, lr = self._first_batch
                self._first_batch = None
                self.data_position += self.micro
            else:
                hr, lr = self._next_batch()
            last = micro == accum - 1
            sync_off = self.dist.distributed and not last
            with (self.gen.no_sync() if sync_off else contextlib.nullcontext()):
                with self._autocast():
                    total, terms, critic_inputs = self.gen(hr, lr, stage2=stage2, inject_nan=inject)
                self.scaler_g.scale(total / accum).backward()
            for name in groups:
                crit = self.critic_ddp[name]
                names = list(self.critic_groups[name].critics)
                with (crit.no_sync() if sync_off else contextlib.nullcontext()):
                    with self._autocast():
                        d_loss, d_terms = crit({n: critic_inputs[n] for n in names})
                    self.scaler_d.scale(d_loss / accum).backward()
                terms.update(d_terms)
            # One device-to-host copy for all terms: a float() per term would sync each time.
            values = torch.stack([v.float().reshape(()) for v in terms.values()]).tolist()
            for k, v in zip(terms, values):
                loss_finite &= math.isfinite(v)
                sums[k] = sums.get(k, 0.0) + v / accum
            self._last_batch = (hr, lr)

        if self.scaler_g.is_enabled():
            self.scaler_g.unscale_(self.opt_g)
        g_norm = float(torch.nn.utils.clip_grad_norm_(
            self.opt_g.param_groups[0]["params"], cfg.optim.clip_grad_norm or float("inf")))
        d_norm = 0.0
        d_params = [p for p in self.opt_d.param_groups[0]["params"] if p.grad is not None] if self.opt_d else []
        if d_params:
            if self.scaler_d.is_enabled():
                self.scaler_d.unscale_(self.opt_d)
            d_norm = float(torch.nn.utils.clip_grad_norm_(d_params, cfg.optim.d_clip_grad_norm or float("inf")))
        bad_local = not (loss_finite and math.isfinite(g_norm) and math.isfinite(d_norm))
        bad, _ = self._sync_max([float(bad_local), 0.0])
        skipped = bad > 0
        if skipped:
            # Never applied: the gradients are dropped and the optimisers do not move. The
            # scalers still update, which lowers the fp16 loss scale after an overflow.
            self.opt_g.zero_grad(set_to_none=True)
            if self.opt_d is not None:
                self.opt_d.zero_grad(set_to_none=True)
            self.skipped += 1
            self.consecutive_skipped += 1
            reason = "injected NaN" if inject else ("non-finite loss" if not loss_finite else "non-finite gradient")
            # Numbered from 1, as the log's "step N/total" lines and the checkpoints are.
            self.logger.warning(f"step {self.step + 1}: skipped ({reason}; g_norm={g_norm:.4g}, d_norm={d_norm:.4g}); "
                                f"{self.skipped} skipped so far, {self.consecutive_skipped} in a row")
        else:
            self.consecutive_skipped = 0
            self.scaler_g.step(self.opt_g)
            if d_params:
                self.scaler_d.step(self.opt_d)
        # An enabled scaler needs update() after every unscale_, stepped or not: that is how
        # an fp16 overflow lowers the loss scale.
        if self.scaler_g.is_enabled():
            self.scaler_g.update()
        if d_params and self.scaler_d.is_enabled():
            self.scaler_d.update()
        return {"terms": sums, "g_norm": g_norm, "d_norm": d_norm, "skipped": skipped,
                "stage": 2 if stage2 else 1, "lr": cfg.optim.lr * factor}

    def _load_init(self, source: str) -> None:
        """The generator's weights from `source` (train.init), ActNorm statistics included, so the
        first batch initialises nothing; refused, naming the fields, where the architectures differ."""
        from sdflow.checkpoints import read_model_state

        config, state = read_model_state(source)
        theirs, mine = config.to_dict(), self.cfg.model_config().to_dict()
        differ = [f"{k} (init {theirs.get(k)!r}, config {mine.get(k)!r})"
                  for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)]
        if differ:
            raise ValueError(f"train.init {source}: its architecture differs from the config's model section in "
                             f"{', '.join(differ)}; set those with --set model.KEY=VALUE")
        self.model.load_state_dict(state, strict=True)
        self.logger.info(f"weights from {source} (train.init)")

    def run(self) -> dict:
        cfg = self.cfg
        self.dist = setup_distributed(cfg.train.device)
        d = self.dist
        existing = ckpt_io.latest_checkpoint(self.run_dir)
        if existing is not None and not self.resume:
            raise FileExistsError(f"{self.run_dir} already holds checkpoints ({existing.name}); pass --resume "
                                  f"to continue that run, or choose another --out")
        if d.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.step = 0
        self.skipped = 0
        self.consecutive_skipped = 0
        self.data_position = 0
        self.last_saved_step = -1
        self._first_batch = None
        self._last_batch = None
        self.batches = None
        self.logger = RunLogger(self.run_dir, enabled=d.is_main, rank=d.rank)
        if d.is_main:
            for partial in ckpt_io.remove_partial_checkpoints(self.run_dir):
                self.logger.info(f"removed {partial.name}, a checkpoint whose writing was interrupted")
        stop = _StopFlag()
        summary = {"interrupted": False, "diverged": False}
        try:
            self._build()
            if existing is not None:
                # A damaged newest checkpoint is named and the newest intact one taken instead.
                existing, ck = ckpt_io.newest_intact(self.run_dir, self.logger.warning, set_aside=d.is_main)
            ck = self._load_weights(existing, ck) if existing is not None else None
            if self.step > cfg.train.steps:
                # Writing train.steps into the run's config would make it claim fewer steps
                # than its weights have had.
                raise ValueError(f"{existing.name} is at step {self.step}, past train.steps={cfg.train.steps}; "
                                 f"give --steps {self.step} or more to continue")
            if existing is None and self.resume:
                self.logger.info(f"--resume: no checkpoint in {self.run_dir}; starting a new run")
            self.batches = iter(make_loader(self.dataset, self.micro, cfg.train.seed, d.rank, d.world_size,
                                            start=self.data_position, num_workers=cfg.data.num_workers,
                                            pin_memory=d.device.type == "cuda"))
            if ck is None and cfg.train.init:
                self._load_init(cfg.train.init)
            if ck is None:
                self._init_actnorm()
            self._wrap()
            if ck is not None:
                self._load_rest(ck, existing)
                del ck
            else:
                _seed_all(_rank_seed(cfg.train.seed, d.rank))
            # Only now that the checkpoint has been accepted: a refused --resume must leave
            # the run's config as it was, or a plain --resume would fail from then on.
            if d.is_main:
                cfg.save(self.run_dir / "config.yaml")
            self._log_header()
            self.logger.start(self.step, cfg.train.steps, cfg.log.tensorboard, cfg.log.progress)
            self.val_pairs = self._load_val() if d.is_main else []
            stop.install()
            summary.update(self._loop(stop))
            if d.owns_group:
                # No rank tears the group down while another still has work in flight on it
                # (gloo then aborts the process at exit: seen once in CI, "terminate called
                # without an active exception" after a finished run). Not on the error path,
                # where the other ranks may never arrive.
                dist.barrier()
        finally:
            stop.uninstall()
            _close_loader(self.batches)
            self.batches = None
            self.logger.close()
            if d.owns_group and dist.is_initialized():
                # The DDP wrappers hold the group and their reducers' pending work: gone first.
                self.gen, self.critic_ddp = None, {}
                dist.destroy_process_group()
        return summary

    def _log_header(self) -> None:
        cfg, d = self.cfg, self.dist
        n_gen = sum(p.numel() for p in self.model.parameters())
        n_crit = sum(p.numel() for p in _all_params(*self.critics.values()))
        self.logger.info(f"sdflow train: run {self.run_dir} | device {d.device} x {d.world_size} rank(s) | "
                         f"model {cfg.model} ({n_gen:,} parameters) | critics {sorted(self.critics)} "
                         f"({n_crit:,}) | " + (f"{len(self.dataset)} HR / LR pairs" if cfg.data.paired else
                                               f"{len(self.dataset.hr_paths)} HR / {len(self.dataset.lr_paths)} LR images"))
        self.logger.info(f"steps {cfg.train.steps} (stage 1 until {cfg.train.stage1_steps}) | batch "
                         f"{cfg.data.batch_size} = {d.world_size} rank(s) x {cfg.train.grad_accum} accumulation "
                         f"x {self.micro} | patches HR {cfg.data.hr_patch} / LR {cfg.data.lr_patch} | "
                         f"lr halved at steps {cfg.milestones()} | amp {AMP_NAMES.get(self.amp_dtype, 'none')}")
        w1 = self.gen_obj.weights(False)
        w2 = self.gen_obj.weights(True)
        self.logger.info("loss weights: stage 1 " + ", ".join(f"{k}={v:g}" for k, v in w1.items())
                         + " | stage 2 adds " + ", ".join(f"{k}={v:g}" for k, v in w2.items() if k not in w1))

    def _loop(self, stop: _StopFlag) -> dict:
        cfg, d = self.cfg, self.dist
        acc: Dict[str, float] = {}
        acc_n: Dict[str, int] = {}  # per key: stage-2 terms exist only in part of a window
        t_last, steps_since = time.time(), 0
        last_terms: Dict[str, float] = {}
        out = {"interrupted": False, "diverged": False}
        while self.step < cfg.train.steps:
            res = self._train_step()
            if not res["skipped"]:
                for k, v in list(res["terms"].items()) + [("g_norm", res["g_norm"]), ("d_norm", res["d_norm"])]:
                    acc[k] = acc.get(k, 0.0) + v
                    acc_n[k] = acc_n.get(k, 0) + 1
                last_terms = res["terms"]
            self.step += 1
            steps_since += 1
            if self.consecutive_skipped >= cfg.train.max_consecutive_skips:
                # The skipped steps moved neither weights nor optimisers, so this is the last
                # good step's state. Earlier checkpoints are kept for a resume from before it.
                self.save_checkpoint(prune=False)
                name = ckpt_io.checkpoint_name(self.step)
                msg = (f"stopping: {self.consecutive_skipped} consecutive steps had a non-finite loss or "
                       f"gradient (train.max_consecutive_skips={cfg.train.max_consecutive_skips}). "
                       f"{self.run_dir / name} holds the weights of the last good step "
                       f"({self.step - self.consecutive_skipped}): lower optim.lr or enable clipping "
                       f"(optim.clip_grad_norm) and continue with `sdflow train --out {self.run_dir} "
                       f"--resume`, or delete {name} to resume from an earlier checkpoint.")
                self.logger.error(msg)
                raise TrainingDiverged(msg)

            if self.step % cfg.log.every == 0 or self.step == cfg.train.steps:
                # Every rank reaches this point at the same steps, so the mean is a collective.
                avg = self._sync_mean({k: v / acc_n[k] for k, v in acc.items()})
                dt = (time.time() - t_last) / max(steps_since, 1)
                self._log_scalars(res, avg, dt)
                acc, acc_n, t_last, steps_since = {}, {}, time.time(), 0
            if d.is_main:
                self.logger.progress(self.step, {k: v for k, v in
                                                 (("loss", last_terms.get("total", float("nan"))),
                                                  ("nll_hr", last_terms.get("nll_hr", float("nan"))),
                                                  ("nll_lr", last_terms.get("nll_lr", float("nan"))),
                                                  ("skip", float(self.skipped)))})
                if cfg.log.image_every and self.step % cfg.log.image_every == 0:
                    self._log_images()
                if self.val_pairs and cfg.val.every and (self.step % cfg.val.every == 0
                                                         or self.step == cfg.train.steps):
                    self.validate()

            if self.on_step_end is not None:
                self.on_step_end(self)
            requested = stop.requested or (cfg.debug.interrupt_after_step and
                                           self.step == cfg.debug.interrupt_after_step)
            halt = self._sync_max([float(requested)])[0] > 0 if d.distributed else requested
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save_checkpoint()
            if halt and self.step < cfg.train.steps:
                if self.last_saved_step != self.step:
                    self.save_checkpoint()
                self.logger.info(f"interrupted: stopped after step {self.step}; continue with "
                                 f"`sdflow train --out {self.run_dir} --resume`")
                out["interrupted"] = True
                break
        else:
            if self.last_saved_step != self.step:
                self.save_checkpoint()
            self.logger.info(f"finished {self.step} steps ({self.skipped} skipped)")
        if d.distributed:
            out["replica_max_diff"] = self.replica_difference()
            diff = out["replica_max_diff"]
            (self.logger.info if diff == 0 else self.logger.warning)(
                f"replica check: largest parameter difference across {d.world_size} ranks = {diff:.3g}")
        out.update(step=self.step, skipped=self.skipped, last_terms=last_terms,
                   val=getattr(self, "last_val", None))
        return out

    def _log_scalars(self, res: dict, avg: Dict[str, float], sec_per_step: float) -> None:
        if not self.dist.is_main:
            return
        scal = {}
        for k, v in avg.items():
            if k in ("g_norm", "d_norm"):
                scal[f"optim/{k}"] = v
            elif k.startswith("d_"):
                scal[f"critic/{k[2:]}"] = v
            else:
                scal[f"loss/{k}"] = v
        scal.update({"optim/lr": res["lr"], "train/skipped_steps": self.skipped, "train/stage": res["stage"],
                     "train/sec_per_step": sec_per_step,
                     "train/images_per_sec": self.cfg.data.batch_size / max(sec_per_step, 1e-9)})
        self.logger.scalars(self.step, scal)
        shown = " ".join(f"{k}={v:.4f}" for k, v in avg.items() if k not in ("g_norm", "d_norm"))
        self.logger.info(f"step {self.step}/{self.cfg.train.steps} stage {res['stage']} | {shown} | "
                         f"g_norm {avg.get('g_norm', float('nan')):.3g} | lr {res['lr']:.3g} | "
                         f"skipped {self.skipped} | {sec_per_step:.3f} s/step")
        self.logger.flush()

    # ----- images and validation -----------------------------------------------------------

    @torch.no_grad()
    def _log_images(self) -> None:
        if self._last_batch is None:
            return
        from sdflow.resize import downscale, upscale
        hr, lr = (t[:4] for t in self._last_batch)
        m = self.model
        m.eval()
        try:
            g = torch.Generator(device=self.dist.device).manual_seed(self.step)
            sr0 = m.super_resolve(lr, 0.0)
            sr8 = m.super_resolve(lr, self.cfg.loss.stage2_tau, generator=g)
            ds = m.downscale(hr, self.cfg.loss.stage2_tau, generator=g)
            grid_sr = image_grid([lr, upscale(lr, 4), sr0, sr8])
            grid_ds = image_grid([hr, downscale(hr, 4), ds])
        finally:
            m.train()
        self.logger.image(self.step, "samples/sr (LR | bicubic | tau 0 | tau 0.8)", grid_sr,
                          self.run_dir / "samples" / f"sr-{self.step:08d}.png")
        self.logger.image(self.step, "samples/ds (HR | bicubic | sampled)", grid_ds,
                          self.run_dir / "samples" / f"ds-{self.step:08d}.png")

    def _load_val(self) -> list:
        v = self.cfg.val
        if not (v.hr_dir and v.lr_dir):
            return []
        pairs = []
        for hp, lp in paired_images(v.hr_dir, v.lr_dir, v.max_images or None):
            try:
                pairs.append(load_pair(hp, lp, v.crop))
            except Exception as e:
                self.logger.warning(f"validation: skipping {hp.name} ({e})")
        self.logger.info(f"validation: {len(pairs)} pairs from {v.hr_dir} / {v.lr_dir}, every {v.every} steps")
        return pairs

    def validate(self) -> Dict[str, float]:
        """SR at tau 0 against the true HR and DS against the true LR, beside bicubic
        (see sdflow.train.evaluate)."""
        from sdflow.train.evaluate import evaluate_pairs

        res = evaluate_pairs(self.model, self.val_pairs, (self.cfg.val.ds_tau,), self.dist.device)
        self.last_val = res
        self.logger.scalars(self.step, {f"val/{k}": v for k, v in res.items()})
        self.logger.info(f"validation at step {self.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.items()))
        return res

    def replica_difference(self) -> float:
        """Largest elementwise spread of the weights across ranks (0 when in sync)."""
        flat = torch.cat([t.detach().float().flatten() for t in
                          list(self.model.state_dict().values()) + _all_params(*self.critics.values())])
        hi, lo = flat.clone(), flat.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        return float((hi - lo).max())


def train(cfg: TrainConfig, run_dir, resume: bool = False,
          on_step_end: Optional[Callable[["Trainer"], None]] = None) -> dict:
    """Train (or, with `resume`, continue) a run in `run_dir`; returns a summary dict with
    the final step, skipped steps, the last loss terms and validation figures.
    `on_step_end(trainer)` runs after every step (on every rank), before the stop check."""
    return Trainer(cfg, run_dir, resume, on_step_end).run()


__all__ = ["Trainer", "train", "TrainingDiverged", "setup_distributed", "DistInfo"]
