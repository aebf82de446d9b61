"""Training configuration: nested dataclasses read from YAML, with dotted overrides.

Every value that shapes a run lives here, so that a run directory's `config.yaml` alone
(plus the data) reproduces it. Unknown keys are errors rather than silently ignored: a
misspelt loss weight would otherwise train a different objective without a word.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from sdflow.config import ModelConfig


@dataclass
class DataConfig:
    hr_dir: Optional[str] = None      # filled from --hr; stored so that --resume needs no paths
    lr_dir: Optional[str] = None
    hr_patch: int = 192
    lr_patch: int = 48
    # Images per optimiser step, summed over ranks and accumulation steps, so that a config
    # means the same optimisation on one GPU or eight.
    batch_size: int = 32
    num_workers: int = 4
    hflip: bool = True
    rot90: bool = True
    dequantize: bool = True           # uniform noise of one 8-bit step in the likelihood terms
    # The HR and LR folders correspond file by file (RealSR, `sdflow degrade --mode paired`): each
    # batch holds aligned crops of pairs and the paired terms of `loss` apply (--paired).
    paired: bool = False


# What `train.amp_float32` may keep in float32.
AMP_FLOAT32_NETS = ("critics", "content_extractor", "f_lr")


@dataclass
class TrainSchedule:
    steps: int = 200_000
    stage1_steps: int = 50_000        # N_pre: likelihood, content and domain terms only
    seed: int = 0
    grad_accum: int = 1
    amp: str = "none"                 # none | auto | bf16 | fp16: the networks inside the flows (fp16 CUDA
                                      # only; auto: bf16 where the device runs it natively, else none)
    # Networks that stay float32 when `amp` reduces the others: any of critics (all three),
    # content_extractor (E), f_lr (its coupling nets). docs/training.md, "Reduced precision".
    amp_float32: List[str] = field(default_factory=list)
    max_consecutive_skips: int = 20
    device: str = "auto"              # auto | cpu | cuda
    # A model whose weights a new run starts from (fine-tuning: BasicSR's pretrain_network_g): any
    # MODEL `sdflow.load` reads (our .safetensors, a checkpoint or run folder, the authors' folder,
    # "default"). Its architecture must be the model section's; critics and optimiser start fresh.
    # A resumed run takes its checkpoint instead.
    init: Optional[str] = None


@dataclass
class OptimConfig:
    lr: float = 1e-4
    d_lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    # Fractions of `train.steps` at which both learning rates are multiplied by lr_gamma.
    lr_milestones: List[float] = field(default_factory=lambda: [0.5, 0.75, 0.9, 0.95])
    lr_gamma: float = 0.5
    clip_grad_norm: float = 10.0      # 0 disables clipping (the norm is still logged)
    d_clip_grad_norm: float = 10.0
    freeze: List[str] = field(default_factory=list)  # SDFlow sub-modules kept fixed, e.g. [f_lr]


@dataclass
class LossConfig:
    # Weights; 0 turns a term off (and skips computing it).
    nll_hr: float = 1.0
    nll_lr: float = 1.0
    content: float = 1.0
    content_perceptual: float = 0.05
    domain: float = 0.05
    gan: float = 0.1
    pixel: float = 0.5
    perceptual: float = 0.5
    content_cycle: float = 1.0
    # [ours, off in the spec's objective] L1 between an HR patch and its decoding at tau 0,
    # f_HR^-1([z_c^h, f_HF^-1(0; z_c^h)]): without it the flow's mode is free to be a poor
    # picture, and tau-0 SR of small models stays below bicubic (docs/training.md, ablation).
    hr_mode: float = 0.0
    # [ours, off in the spec's objective] The LR side's counterpart: L1 between a real LR patch and
    # f_LR^-1(c + f_Deg^-1(mu_k; c)), its own content with a mixture mean as degradation (c
    # detached, so that E is not asked to carry the noise). It makes tau-0 DS the typical
    # degradation rather than an arbitrary latent point.
    lr_mode: float = 0.0
    # [ours, off in the spec's objective] Stage 2: the HR -> DS -> SR cycle. The DS sample
    # (detached) is super-resolved at tau 0 and compared with the HR patch it came from, L1:
    # the SR path is trained on the learnt degradation, as supervised SR is on a simulated one.
    sr_cycle: float = 0.0
    # [ours, off in the spec's objective] Stage 2: NLL_HR with f_HF conditioned on E of the DS
    # sample (detached) instead of z_c^h, training f_HF only: at test time f_HF is conditioned on
    # E(x), which is not z_c^h; paired training does the same on real pairs.
    sr_cycle_nll: float = 0.0
    # Temperature of the DS samples the cycles learn from; None: the critics' (stage2_tau).
    cycle_tau: Optional[float] = None
    # [ours] [lo, hi] LR pixels: the cycles' DS samples start from content pictures blurred by a
    # width drawn per image, uniform in the range, instead of the model's one DS blur, so that E
    # learns to restore a range of blurs and to tell them apart, not to undo one whatever the LR's
    # (docs/training.md, "Cycles over a range of blurs"). Needs model.ds_content picture. Empty: off.
    cycle_blur: List[float] = field(default_factory=list)
    # [ours] f > 1, with a told E (model.extractor_blur learnt) instead of cycle_blur: the widths are
    # drawn uniform in [w / f, w f] around w, the width E assumes for real LR now, so that the
    # cycles train E where it is used and follow the width as it moves ("A told E"). 0: off.
    cycle_blur_spread: float = 0.0
    # Where content_cycle and paired_content compare E's content with the known one: latent (f_LR's
    # latent space, whose scale drifts in training) or picture (the contents decoded by f_LR^-1).
    cycle_space: str = "latent"
    # [ours, off in the spec's objective] Stage 2: the DS samples' per-image high-pass energies
    # (Immerkaer's mask, as metrics.noise_sigma) must be distributed as the real LR batch's
    # (L1 between the sorted values). Matches sharpness and noise level, which a small LR critic
    # left about 4x too high at tau 0 (docs/training.md).
    ds_hf_match: float = 0.0
    ds_hf_levels: int = 1             # scales compared (1 = full resolution only; see hf_distribution_l1)
    ds_hf_statistic: str = "energy"   # energy or log, as content_hf_statistic below
    # [ours, off in the spec's objective] E's content maps c must have the high-pass energy
    # distribution of f_HR's z_c^h (detached): sharp, not blurred like the LR they come from, a
    # statistic the domain critic can miss. It narrows that latent gap but did not make DS blur
    # (docs/training.md, "What did not fix it"; content_target_sigma did).
    content_hf_match: float = 0.0
    # Where content_hf_match compares: latent (c against z_c^h, both moved through f_LR's latent,
    # which a residual E's f_LR games: t12) or picture (E's picture f_LR^-1(c) against the HR's
    # content target picture, f_LR frozen and f_LR(x) detached in a residual E's sum, so only E's
    # correction moves: a prior that the restored LR be as clean and as sharp as HR content is).
    content_hf_space: str = "latent"
    content_hf_levels: int = 1        # scales compared, as ds_hf_levels
    # The per-image statistic of content_hf_match: energy (mean |response|) or log (log(energy +
    # 0.01)). Measured on 16-pixel crops of the protocol's training photos, the log separates a
    # degradation from a change of scene 2.5-7x better: a flat patch with a level of noise is as far
    # from a clean one as a textured patch from a blurred one (docs/training.md, "E's prior and a
    # frozen f_LR").
    content_hf_statistic: str = "energy"
    # [ours, off in the spec's objective] L1 between per-image, per-channel mean colours: each
    # content picture and its target (stage 1), and in stage 2 the SR sample and its LR, the DS
    # sample and its HR. The L1 terms fit medians and left SR a few levels off in colour.
    colour: float = 0.0
    # Paired data only (data.paired), [ours]. The SR path from the true pairs: E(x) toward the
    # HR's own content z_c^h (detached), L1; the tau-0 SR of x toward y, L1. The DS path: the
    # tau-0 DS (a mixture mean as degradation) of y toward x, L1. With pairs the likelihoods are
    # also conditioned across: f_HF's on E(x), f_Deg's on z_c^h (both detached).
    paired_content: float = 10.0
    paired_sr: float = 10.0
    paired_ds: float = 1.0
    # [ours] What the critics judge (domain and image GANs): 0 = the whole images / content maps;
    # sigma > 0 = only what a Gaussian low-pass of sigma LR pixels leaves (4 sigma HR pixels for
    # the HR critic). With HR and LR photos of different scenes the low band differs by scene and
    # colour, and a critic that sees it drags E's colours toward the HR photos' (docs/training.md).
    critic_highpass: float = 0.0
    # [ours] The HR's content as the SR side sees it: latent (z_c^h itself, the spec's) or target
    # (f_LR of the content target picture, the blurred bicubic image, f_LR fixed). f_HR's likelihood
    # leaves z_c^h unmodelled, so f_HR writes HR detail into it as a code of a few 8-bit levels
    # that f_HR^-1 then reads, and that no E can read off a real LR. `target` trains what SR
    # depends on (f_HF's condition in NLL_HR, hr_mode's decode, the content cycle's and
    # paired_content's target) on a content without the code (docs/training.md, "The code").
    sr_content: str = "latent"
    # [ours] The content f_Deg learns the real LR's degradation from (NLL_LR, lr_mode): extractor
    # (E(x), the spec's) or picture (f_LR of E's picture blurred as the model's DS content is,
    # `ds_content_sigma`; needs model.ds_content picture). With a residual E that starts as f_LR(x)
    # (model.extractor), E(x) leaves f_Deg nothing to learn but the dequantisation noise, and DS
    # none of the LR's degradation; `picture` gives f_Deg the same kind of content DS starts from.
    deg_content: str = "extractor"
    # [ours] 0 = off (the spec's). s > 0: NLL_HR also scores z_c^h, under the density that f_LR
    # carries N(target picture, s^2 I) to (s in image units, [-1, 1]; f_LR fixed): log N(f_LR^-1(z_c^h);
    # target, s^2) + log|det d f_LR^-1 / dz|. Without a density for z_c, growing z_c^h or writing a
    # code into it is free log-determinant for f_HR; with one, every level of code costs nats.
    content_prior_sigma: float = 0.0
    # [ours] The domain term's generator side moves E only (z_c^h detached), not both contents.
    domain_detach_hr: bool = False
    # Switches and details.
    nll_lr_detach_content: bool = True
    content_freeze_f_lr: bool = True
    cycle_detach_ds: bool = True
    lpf_sigma: float = 1.0            # Gaussian low-pass for content / pixel terms, in LR pixels
    # The HR half of the content loss compares with a clean bicubic image, so it can be full
    # band (0): a low-pass there leaves z_c's high frequencies free for NLL_HR to inflate,
    # which showed as noisy DS (docs/training.md, ablation). None = lpf_sigma.
    content_hr_lpf_sigma: Optional[float] = 0.0
    content_lr_lpf_sigma: Optional[float] = None   # the LR half's low-pass; None = lpf_sigma
    # [ours] Gaussian blur (LR pixels) of both content targets, the bicubic image and the real LR,
    # but not of the decoded contents. Tau-0 DS shows the content picture f_LR^-1(z_c^h); pinned to
    # a sharp bicubic image it cannot reproduce a blurred LR (docs/training.md, "What fixed DS").
    content_target_sigma: float = 0.0
    # [ours] The x4 downscale that makes the HR side's content target and compares SR samples with
    # their LR (pixel): bicubic (antialiased), or area, the 4x4 box mean f_HR's two squeezes can
    # represent with its 1x1 convolutions alone.
    content_kernel: str = "bicubic"
    stage2_tau: float = 0.8
    ds_sampler: str = "image"         # image | element
    quantize_fakes: bool = True
    vgg_weights: Optional[str] = None
    perceptual_layers: List[str] = field(default_factory=lambda: ["conv2_2", "conv3_4", "conv4_4"])


@dataclass
class DiscriminatorConfig:
    latent_channels: int = 64
    latent_layers: int = 2
    image_channels: int = 64
    hr_layers: int = 3
    lr_layers: int = 2
    lr_channels: Optional[int] = None   # the LR critic's width; None: image_channels. LR patches
                                        # are 16x smaller than HR ones, so a wide LR critic is cheap


@dataclass
class LogConfig:
    every: int = 50
    image_every: int = 1000
    tensorboard: bool = True
    progress: bool = True


@dataclass
class CheckpointConfig:
    every: int = 5000
    keep: int = 3


@dataclass
class ValConfig:
    hr_dir: Optional[str] = None
    lr_dir: Optional[str] = None
    every: int = 5000
    max_images: int = 10
    crop: int = 0                     # centre-crop HR to this side (LR to side/4) for speed; 0 = whole
    ds_tau: float = 0.0


@dataclass
class DebugConfig:
    # Steps (0-based) whose loss is replaced by NaN: exercises the skip path end to end.
    inject_nan_steps: List[int] = field(default_factory=list)
    # Stop as if interrupted after finishing this step (0 = never): resume tests under torchrun.
    interrupt_after_step: int = 0


# The least value of each ModelConfig size: widths need a channel, flows a step; the
# networks' block counts may be 0.
_MODEL_MINIMUM = {"hr_steps": 1, "lr_steps": 1, "hf_steps": 1, "deg_steps": 1, "coupling_hidden": 1,
                  "cond_channels": 1, "hf_rrdb_blocks": 0, "deg_rrdb_blocks": 0, "rrdb_growth": 1,
                  "mixture_components": 1, "extractor_channels": 1, "extractor_blocks": 0,
                  "extractor_modulation_convs": 0}


def _at_least(key: str, value, low: float, strict: bool = False) -> None:
    """Raise a ValueError naming `key` and its range unless `value` is finite and >= `low`
    (> with `strict`). NaN and infinities fail: they would pass a bare comparison or
    surface steps later as skipped steps."""
    if (isinstance(value, float) and not math.isfinite(value)) or (value <= low if strict else value < low):
        kind = "an integer" if isinstance(value, int) else "a finite number"
        raise ValueError(f"{key} must be {kind} {'>' if strict else '>='} {low:g}, got {value!r}")


def hf_levels_min_side(levels: int) -> int:
    """The smallest image side that `objective.hf_distribution_l1` with `levels` scales takes:
    each level halves the side, and the 3x3 high-pass of the last needs 3 pixels."""
    return 3 * 2 ** (levels - 1)


@dataclass
class TrainConfig:
    model: Dict[str, Any] = field(default_factory=lambda: {"preset": "paper"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSchedule = field(default_factory=TrainSchedule)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    val: ValConfig = field(default_factory=ValConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    # ----- conversions ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "TrainConfig":
        cfg = _build(cls, d or {}, "")
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path, overrides: Sequence[str] = ()) -> "TrainConfig":
        with open(path, "r", encoding="utf-8") as f:
            d = yaml.safe_load(f) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: the top level of a config must be a mapping")
        return cls.from_dict(apply_overrides(d, overrides))

    def save(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    def with_overrides(self, overrides: Sequence[str]) -> "TrainConfig":
        return TrainConfig.from_dict(apply_overrides(self.to_dict(), overrides))

    # ----- derived values ------------------------------------------------------------------

    def model_config(self) -> ModelConfig:
        m = dict(self.model)
        preset = m.pop("preset", "paper")
        base = ModelConfig.preset(preset).to_dict()
        unknown = set(m) - set(base)
        if unknown:
            raise ValueError(f"unknown model keys {sorted(unknown)}; valid: preset, {', '.join(base)}")
        for k, v in m.items():
            # The section is a free mapping, so its values arrive unchecked by _build.
            m[k] = _coerce(type(base[k]), v, f"model.{k}")
            if isinstance(m[k], int):
                _at_least(f"model.{k}", m[k], _MODEL_MINIMUM.get(k, 1))
        base.update(m)
        return ModelConfig.from_dict(base)

    def milestones(self) -> List[int]:
        return sorted({int(round(f * self.train.steps)) for f in self.optim.lr_milestones})

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at `step`: a pure function of the step, so resuming
        needs no scheduler state."""
        return self.optim.lr_gamma ** sum(step >= m for m in self.milestones())

    def micro_batch(self, world_size: int) -> int:
        per = self.data.batch_size // (world_size * self.train.grad_accum)
        if per * world_size * self.train.grad_accum != self.data.batch_size or per < 1:
            raise ValueError(f"data.batch_size={self.data.batch_size} must be a positive multiple of "
                             f"world size ({world_size}) x train.grad_accum ({self.train.grad_accum})")
        return per

    def validate(self) -> None:
        d, t = self.data, self.train
        if d.hr_patch != 4 * d.lr_patch:
            raise ValueError(f"data.hr_patch ({d.hr_patch}) must be 4 x data.lr_patch ({d.lr_patch})")
        if d.hr_patch % 8:
            raise ValueError(f"data.hr_patch ({d.hr_patch}) must be a multiple of 8 (f_HR squeezes "
                             f"twice and f_Deg once)")
        if d.hr_patch < 16:
            raise ValueError("data.hr_patch must be at least 16")
        if t.amp not in ("none", "auto", "bf16", "fp16"):
            raise ValueError(f"train.amp must be none, auto, bf16 or fp16, got {t.amp!r}")
        bad = set(t.amp_float32) - set(AMP_FLOAT32_NETS)
        if bad:
            raise ValueError(f"train.amp_float32: unknown networks {sorted(bad)}; valid: {', '.join(AMP_FLOAT32_NETS)}")
        if t.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got {t.device!r}")
        o, lo, lg, v, dc = self.optim, self.loss, self.log, self.val, self.disc
        least = {  # key: (value, least allowed); None values mean "as another key" and pass
            "train.steps": (t.steps, 1), "train.grad_accum": (t.grad_accum, 1),
            "data.batch_size": (d.batch_size, 1), "train.stage1_steps": (t.stage1_steps, 0),
            "train.max_consecutive_skips": (t.max_consecutive_skips, 1), "data.num_workers": (d.num_workers, 0),
            "optim.clip_grad_norm": (o.clip_grad_norm, 0), "optim.d_clip_grad_norm": (o.d_clip_grad_norm, 0),
            "loss.lpf_sigma": (lo.lpf_sigma, 0), "loss.content_hr_lpf_sigma": (lo.content_hr_lpf_sigma, 0),
            "loss.content_lr_lpf_sigma": (lo.content_lr_lpf_sigma, 0),
            "loss.content_target_sigma": (lo.content_target_sigma, 0), "loss.stage2_tau": (lo.stage2_tau, 0),
            "loss.critic_highpass": (lo.critic_highpass, 0), "loss.cycle_tau": (lo.cycle_tau, 0),
            "log.every": (lg.every, 1), "log.image_every": (lg.image_every, 0),
            "checkpoint.every": (self.checkpoint.every, 0), "checkpoint.keep": (self.checkpoint.keep, 0),
            "val.every": (v.every, 0), "val.max_images": (v.max_images, 0), "val.crop": (v.crop, 0),
            "val.ds_tau": (v.ds_tau, 0), "debug.interrupt_after_step": (self.debug.interrupt_after_step, 0),
            "disc.latent_channels": (dc.latent_channels, 1), "disc.latent_layers": (dc.latent_layers, 1),
            "disc.image_channels": (dc.image_channels, 1), "disc.hr_layers": (dc.hr_layers, 1),
            "disc.lr_layers": (dc.lr_layers, 1), "disc.lr_channels": (dc.lr_channels, 0),
        }
        for key, (value, low) in least.items():
            if value is not None:
                _at_least(key, value, low)
        for key, value in (("optim.lr", o.lr), ("optim.d_lr", o.d_lr)):
            _at_least(key, value, 0)   # 0 is Adam's "hold still", a legitimate ablation
        _at_least("optim.lr_gamma", o.lr_gamma, 0, strict=True)
        for key, values in (("debug.inject_nan_steps", self.debug.inject_nan_steps),
                            ("optim.lr_milestones", o.lr_milestones), ("optim.betas", o.betas)):
            for value in values:
                _at_least(key, value, 0)
        if any(b >= 1 for b in o.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        if self.loss.content_kernel not in ("bicubic", "area"):
            raise ValueError(f"loss.content_kernel must be bicubic or area, got {self.loss.content_kernel!r}")
        if self.loss.sr_content not in ("latent", "target"):
            raise ValueError(f"loss.sr_content must be latent or target, got {self.loss.sr_content!r}")
        if self.loss.deg_content not in ("extractor", "picture"):
            raise ValueError(f"loss.deg_content must be extractor or picture, got {self.loss.deg_content!r}")
        if self.loss.deg_content == "picture" and self.model_config().ds_content != "picture":
            raise ValueError("loss.deg_content=picture needs model.ds_content=picture (the blur it applies is "
                             "model.ds_content_sigma, the DS content's)")
        if self.loss.cycle_blur:
            widths = self.loss.cycle_blur
            if len(widths) != 2 or not 0 <= widths[0] <= widths[1]:
                raise ValueError(f"loss.cycle_blur must be two widths 0 <= lo <= hi, got {widths}")
            if self.model_config().ds_content != "picture" or not self.loss.cycle_detach_ds:
                raise ValueError("loss.cycle_blur needs model.ds_content=picture and loss.cycle_detach_ds")
        spread = self.loss.cycle_blur_spread
        if spread and not (spread > 1 and self.model_config().extractor_blur == "learnt" and not self.loss.cycle_blur):
            raise ValueError(f"loss.cycle_blur_spread must be > 1 (or 0: off), with model.extractor_blur=learnt "
                             f"and without loss.cycle_blur, got {spread}")
        if spread and (self.model_config().ds_content != "picture" or not self.loss.cycle_detach_ds):
            raise ValueError("loss.cycle_blur_spread needs model.ds_content=picture and loss.cycle_detach_ds")
        if self.model_config().extractor_blur == "learnt" and not (self.loss.cycle_blur or spread or self.data.paired):
            raise ValueError("model.extractor_blur=learnt needs loss.cycle_blur or loss.cycle_blur_spread: the "
                             "cycles show a told E the widths it is told (without pairs nothing else does)")
        if self.loss.cycle_space not in ("latent", "picture"):
            raise ValueError(f"loss.cycle_space must be latent or picture, got {self.loss.cycle_space!r}")
        if self.loss.ds_sampler not in ("image", "element"):
            raise ValueError(f"loss.ds_sampler must be image or element, got {self.loss.ds_sampler!r}")
        if self.loss.content_hf_space not in ("latent", "picture"):
            raise ValueError(f"loss.content_hf_space must be latent or picture, got {self.loss.content_hf_space!r}")
        for key in ("content_hf_statistic", "ds_hf_statistic"):
            if getattr(self.loss, key) not in ("energy", "log"):
                raise ValueError(f"loss.{key} must be energy or log, got {getattr(self.loss, key)!r}")
        for match in ("ds", "content"):
            levels, weight = getattr(self.loss, f"{match}_hf_levels"), getattr(self.loss, f"{match}_hf_match")
            # The latent content map is half the LR patch's side (f_LR squeezes once).
            side = d.lr_patch // 2 if match == "content" and self.loss.content_hf_space == "latent" else d.lr_patch
            if levels < 1 or (weight > 0 and side < hf_levels_min_side(levels)):
                raise ValueError(f"loss.{match}_hf_levels ({levels}) must be >= 1 and fit the {side}-pixel "
                                 f"side it compares (data.lr_patch {d.lr_patch}; each level halves it, "
                                 f"the last needs 3)")
        if len(self.optim.betas) != 2:
            raise ValueError("optim.betas must be two numbers")
        for name in ("nll_hr", "nll_lr", "content", "content_perceptual", "domain", "gan", "pixel",
                     "perceptual", "content_cycle", "hr_mode", "lr_mode", "sr_cycle", "ds_hf_match",
                     "content_hf_match", "paired_content", "paired_sr", "paired_ds", "sr_cycle_nll", "colour",
                     "content_prior_sigma"):
            _at_least(f"loss.{name}", getattr(self.loss, name), 0)
        valid = {"content_extractor", "f_hr", "f_hf", "f_lr", "f_deg", "deg_prior", "ds_blur"}
        bad = set(self.optim.freeze) - valid
        if bad:
            raise ValueError(f"optim.freeze: unknown modules {sorted(bad)}; valid: {sorted(valid)}")
        if "ds_blur" in self.optim.freeze and self.model_config().ds_blur != "learnt":
            raise ValueError("optim.freeze: ds_blur exists only with model.ds_blur=learnt")
        self.model_config()


def _build(cls, d: dict, where: str):
    """Dataclass `cls` from mapping `d`, recursing into nested dataclasses and coercing
    scalars to the annotated type (YAML reads `1e-4` as a string)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in sorted(unknown))}; "
                         f"valid under {where or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for name in names & set(d):
        kwargs[name] = _coerce(hints[name], d[name], where + name)
    return cls(**kwargs)


def _coerce(tp, value, where: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, value, where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, where) for v in value]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(float(value)) if tp is float else _to_int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _to_int(value) -> int:
    f = float(value)
    if f != int(f):
        raise ValueError(value)
    return int(f)


def apply_overrides(d: dict, overrides: Sequence[str]) -> dict:
    """Apply `section.key=value` strings to a nested dict (a deep copy is returned).

    Values are parsed as YAML, so `optim.betas=[0.5,0.99]`, `loss.vgg_weights=null` and
    `train.amp=bf16` all do what they look like.
    """
    import copy

    out = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ValueError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: cannot parse the value ({e})") from None
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


__all__ = ["TrainConfig", "DataConfig", "TrainSchedule", "OptimConfig", "LossConfig",
           "DiscriminatorConfig", "LogConfig", "CheckpointConfig", "ValConfig", "DebugConfig",
           "apply_overrides"]
