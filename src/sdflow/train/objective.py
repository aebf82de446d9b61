"""The training objective of SDFlow (this project's reconstruction; see docs/training.md).

Two modules, each the unit that DistributedDataParallel wraps, because DDP only
synchronises gradients of computations that run inside the wrapped module's forward:

* `GeneratorObjective`: every term that updates the five networks, in both stages.
* `CriticObjective`: the least-squares losses of a group of discriminators, on inputs
  that arrive detached.

Gradient-stopping rules that the spec fixes are implemented here and nowhere else:
z_c enters f_HF detached; c enters NLL_LR detached (switch); f_LR's parameters get no
gradient from the content loss (switch); the generator's adversarial terms reach the
images but never the discriminators' parameters; the content cycle reaches only E
(switch).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from sdflow.model import CONTENT_CHANNELS, HF_CHANNELS, SDFlow
from sdflow.nets.discriminators import VGG19Features, perceptual_distance
from sdflow.resize import downscale, gaussian_blur
from sdflow.train.config import hf_levels_min_side
from sdflow.train.config import LossConfig

EIGHT_BIT_STEP = 2.0 / 255.0  # one 8-bit level of an image scaled to [-1, 1]


def bits_per_dim_nll(log_density: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample NLL in bits per dimension of the 8-bit image, from log p (nats) of its
    dequantised version in [-1, 1]: each 8-bit bin is 2/255 wide."""
    dims = x[0].numel()
    return -(log_density.float() + dims * math.log(EIGHT_BIT_STEP)) / (dims * math.log(2.0))


def gaussian_log_density(e: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(e; 0, sigma^2 I) per sample, in nats."""
    e = e.float().flatten(1)
    return -0.5 * (e / sigma).pow(2).sum(1) - e.shape[1] * (math.log(sigma) + 0.5 * math.log(2 * math.pi))


def dequantize(x: torch.Tensor) -> torch.Tensor:
    """Uniform noise over the image's 8-bit bin: without it a continuous density can
    grow without bound on the 256 discrete values."""
    return x + (torch.rand_like(x) - 0.5) * EIGHT_BIT_STEP


def quantize_st(x: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits (clipping to [-1, 1]) with a straight-through gradient, so that the
    critics judge generated images as they would be stored while the generator still
    receives a gradient."""
    q = torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0
    return x + (q - x).detach()


def lsgan(pred: torch.Tensor, target: float) -> torch.Tensor:
    return (pred.float() - target).pow(2).mean()


def mean_colour_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the per-image, per-channel means of two batches (of any sizes)."""
    return (a.float().mean(dim=(2, 3)) - b.float().mean(dim=(2, 3))).abs().mean()


def low_pass_l1(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    return F.l1_loss(gaussian_blur(a, sigma), gaussian_blur(b, sigma))


_SECOND_DIFF = torch.tensor([1.0, -2.0, 1.0])


def high_pass_energy(x: torch.Tensor) -> torch.Tensor:
    """Mean |response| to Immerkaer's mask (the outer product of two second differences, as in
    `metrics.noise_sigma`) per image and channel, shape (B, C): blind to flat areas and linear
    ramps, so it measures noise plus sharpness."""
    k = torch.outer(_SECOND_DIFF, _SECOND_DIFF).to(x)
    ch = x.shape[1]
    return F.conv2d(x, k.expand(ch, 1, 3, 3), groups=ch).abs().mean(dim=(2, 3))


HF_LOG_FLOOR = 0.01  # added before the log: a flat clean patch is ~0, a level of noise ~0.04


def hf_distribution_l1(fake: torch.Tensor, real: torch.Tensor, levels: int = 1, log: bool = False) -> torch.Tensor:
    """L1 between the sorted per-image high-pass energies of two equal-size batches, per channel:
    the 1-D optimal transport between their distributions. Sorting, not means, because real
    degradations are mostly smooth (JPEG) with a few very noisy images; a mean match would make
    every generated image a little noisy.

    `levels` > 1 adds the same comparison on 2x, 4x... average-pooled copies (mean over levels):
    at one scale a sharp clean image and a blurred noisy one can have equal energy; pooling
    divides white noise's energy by 2 per level but keeps edges, so the profile over scales
    separates blur from noise.

    `log` compares log(energy + HF_LOG_FLOOR) instead: the distance of a clean flat patch from a
    slightly noisy one then counts as much as that of a sharp textured patch from a blurred one."""
    if fake.shape[0] != real.shape[0]:
        raise ValueError(f"hf_distribution_l1 needs batches of one size, got {fake.shape[0]} and {real.shape[0]}")
    total = fake.new_zeros(())
    for level in range(levels):
        if level:
            fake, real = F.avg_pool2d(fake, 2), F.avg_pool2d(real, 2)
            if min(fake.shape[-2:]) < 3:
                raise ValueError(f"hf_distribution_l1: {levels} levels need images of at least "
                                 f"{hf_levels_min_side(levels)} pixels a side")
        a, b = high_pass_energy(fake), high_pass_energy(real)
        if log:
            a, b = torch.log(a + HF_LOG_FLOOR), torch.log(b + HF_LOG_FLOOR)
        total = total + (a.sort(dim=0).values - b.sort(dim=0).values).abs().mean()
    return total / levels


class _Inverse(nn.Module):
    """Exposes a flow's inverse as `forward`, so `functional_call` can run it with
    substituted parameters."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def forward(self, z, cond=None):
        return self.flow.inverse(z, cond)


def sr_from_content(m: SDFlow, z_c: torch.Tensor, tau: float) -> torch.Tensor:
    """f_HR^-1([z_c, f_HF^-1(tau eps; sg(z_c))]): an HR image from a content map. f_HF sees the
    content detached (the spec's rule: f_HF may not shape the content); f_HR sees it whole."""
    return m.decode_hr(z_c, m.f_hf.sample(z_c.detach(), HF_CHANNELS, tau))


def ds_from_content(m: SDFlow, z_c: torch.Tensor, tau: float, sampler: str) -> torch.Tensor:
    """f_LR^-1(z_c + f_Deg^-1(z'; z_c)), z' from the mixture at temperature tau: an LR image from
    a content map."""
    z = m.deg_prior.sample(m.f_deg.latent_shape(z_c, CONTENT_CHANNELS), tau, None, sampler).to(z_c.dtype)
    return m.f_lr.inverse(z_c + m.f_deg.inverse(z, z_c)[0])[0]


def call_frozen(module: nn.Module, *args, inverse: bool = False):
    """Run `module` (or its inverse) with its parameters detached: gradients reach the
    inputs but not the parameters. Cheaper and safer than toggling requires_grad, which
    would race with DDP's bookkeeping of which parameters took part in a step."""
    target = _Inverse(module) if inverse else module
    prefix = "flow." if inverse else ""
    params = {prefix + n: p.detach() for n, p in module.named_parameters()}
    return functional_call(target, params, args)


class GeneratorObjective(nn.Module):
    """forward(hr, lr, stage2) -> (weighted total, terms, critic_inputs).

    `terms` holds each term's unweighted value (detached), plus the bits/dim figures;
    `critic_inputs` holds, per critic, the detached (real, fake) pair it must learn from.
    The critics are passed in but not registered as sub-modules: their parameters belong
    to another optimiser and another DDP wrapper.
    """

    def __init__(self, model: SDFlow, cfg: LossConfig, critics: Optional[Dict[str, nn.Module]] = None,
                 vgg: Optional[VGG19Features] = None, dequantize_inputs: bool = True, paired: bool = False):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.paired = paired  # batches hold aligned (HR, LR) pairs: data.paired
        self.vgg = vgg
        self.dequantize_inputs = dequantize_inputs
        self.__dict__["critics"] = dict(critics or {})  # bypasses nn.Module registration

    def weights(self, stage2: bool) -> Dict[str, float]:
        """The weight of each term in this stage; terms whose prerequisites are missing
        (no VGG weights, no critic) are 0."""
        c = self.cfg
        has_vgg = self.vgg is not None
        w = {"nll_hr": c.nll_hr, "nll_lr": c.nll_lr, "content": c.content, "hr_mode": c.hr_mode,
             "lr_mode": c.lr_mode, "content_hf_match": c.content_hf_match, "colour": c.colour,
             "content_perceptual": c.content_perceptual if (has_vgg and c.content > 0) else 0.0,
             "domain": c.domain if "content" in self.critics else 0.0}
        if self.paired:
            w.update({"paired_content": c.paired_content, "paired_sr": c.paired_sr, "paired_ds": c.paired_ds})
            # With pairs f_HF's likelihood is conditioned on E(x), so hr_mode would decode from a
            # condition f_HF never sees (the HR's content); paired_sr is the same decode from E(x).
            # With it p8 broke at step 600, without it p10 trained through (docs/training.md).
            w["hr_mode"] = 0.0
        if stage2:
            w.update({"gan": c.gan if {"hr", "lr"} <= set(self.critics) else 0.0,
                      "pixel": c.pixel, "perceptual": c.perceptual if has_vgg else 0.0,
                      "content_cycle": c.content_cycle, "sr_cycle": c.sr_cycle, "sr_cycle_nll": c.sr_cycle_nll,
                      "ds_hf_match": c.ds_hf_match})
        return w

    @torch.no_grad()
    def run_every_flow(self, hr: torch.Tensor, lr: torch.Tensor) -> None:
        """The forward passes of both likelihood terms, whatever their weights: the first
        such pass in training mode initialises every ActNorm layer from the data, and a
        switched-off term must not leave its flows' layers at their untrained defaults
        (the stage-2 and mode terms only run the flows backwards). Inputs and order are
        those of `forward`, so with both terms on the statistics are the same."""
        m = self.model
        hr_in = dequantize(hr) if self.dequantize_inputs else hr
        lr_in = dequantize(lr) if self.dequantize_inputs else lr
        m.hr_log_density(hr_in)
        m.lr_log_density(lr_in, m.content(lr))

    def _critic(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return call_frozen(self.critics[name], x)

    def content_distance(self, c: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 from an estimated content map to a known one (detached): in f_LR's latent space, or
        with `cycle_space: picture` between the pictures f_LR^-1 decodes them to (f_LR's
        parameters untouched). The latent's scale is not pinned (f_HR and f_LR gain
        log-determinant by growing z_c together while the content pictures stay put), so a latent
        L1 drifts with it; a picture L1 is in image units throughout."""
        if self.cfg.cycle_space == "latent":
            return F.l1_loss(c, target.detach())
        inv = lambda z: call_frozen(self.model.f_lr, z, inverse=True)[0]  # noqa: E731
        with torch.no_grad():
            ref = inv(target)
        return F.l1_loss(inv(c), ref)

    def content_hf_match(self, c: torch.Tensor, c_own: torch.Tensor, z_c_h: torch.Tensor,
                         target_pic: torch.Tensor) -> torch.Tensor:
        """E must deblur and denoise: its content as sharp and as clean as the HR side's, compared
        as distributions over the batch (the photos differ). In latent space against z_c^h (held
        fixed); in picture space (`content_hf_space`), E's picture against the HR's content
        target picture, through a frozen f_LR and with a residual E's f_LR(x) detached: t12 showed
        a latent match met by f_LR reshaping the latent while no picture changed. `c_own` is E(x)
        with a residual E's f_LR(x) detached (`SDFlow.content_parts`)."""
        cfg, m = self.cfg, self.model
        log = cfg.content_hf_statistic == "log"
        if cfg.content_hf_space == "latent":
            return hf_distribution_l1(c, z_c_h.detach(), cfg.content_hf_levels, log)
        picture = call_frozen(m.f_lr, c_own, inverse=True)[0]
        return hf_distribution_l1(picture, target_pic.detach(), cfg.content_hf_levels, log)

    def content_log_prior(self, z_c: torch.Tensor, target_pic: torch.Tensor) -> torch.Tensor:
        """log p(z_c) in nats per sample under f_LR's image of N(target picture, s^2 I) (f_LR's
        parameters untouched; gradients reach z_c): in picture units, so the latent's scale and
        f_LR's gain do not change what a level of difference costs."""
        pic, logdet = call_frozen(self.model.f_lr, z_c, inverse=True)
        return gaussian_log_density(pic - target_pic.detach(), self.cfg.content_prior_sigma) + logdet

    @staticmethod
    def blur_range(pictures: torch.Tensor, widths) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each picture blurred by its own width, uniform in [lo, hi] LR pixels (training's RNG),
        and the widths."""
        lo, hi = widths
        drawn = lo + (hi - lo) * torch.rand(pictures.shape[0])
        return torch.cat([gaussian_blur(p[None], float(s)) for p, s in zip(pictures, drawn)]), drawn

    def critic_view(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """What critic `name` judges of x: x itself, or with `critic_highpass` > 0 only what a
        Gaussian low-pass of that many LR pixels leaves (4x as many on the HR critic's HR
        images). With HR and LR photos of different scenes, the low band tells the sets apart
        by their colours and scenes, not by their degradations; the content and pixel terms
        already pin it, so the critics are kept to the band they are needed for."""
        sigma = self.cfg.critic_highpass * (4 if name == "hr" else 1)
        return x if sigma <= 0 else x - gaussian_blur(x, sigma)

    def forward(self, hr: torch.Tensor, lr: torch.Tensor, stage2: bool = False,
                inject_nan: bool = False) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict]:
        cfg, m = self.cfg, self.model
        w = self.weights(stage2)
        terms: Dict[str, torch.Tensor] = {}
        critic_inputs: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        sigma = cfg.lpf_sigma

        hr_in = dequantize(hr) if self.dequantize_inputs else hr
        lr_in = dequantize(lr) if self.dequantize_inputs else lr

        # One pass of f_HR serves the likelihood, the content, the domain and DS terms.
        z_c_h, z_h, logdet_hr = m.encode_hr(hr_in)
        # E sees the 8-bit image: the likelihood is conditioned on the data itself.
        told = m.content_extractor.blur
        e_blur = None
        if told is not None:
            terms["sr_blur_sigma"] = told.sigma.detach()
            if not self.paired:
                # Without pairs only the HR critic, through SR of the real LR (below), judges the
                # width against clean photos. The content term, which pins E's picture to the LR's
                # low band, would move it as a nuisance: it pulled 20x harder than the critic, down
                # on every family (docs/training.md, "A told E").
                e_blur = told.sigma.detach()
        correction, base = m.content_parts(lr, e_blur)
        c = correction if base is None else correction + base
        c_own = c if base is None else correction + base.detach()  # E's part alone moves
        # The HR's content where the SR side learns from it (loss.sr_content: z_c^h, or f_LR of the
        # content target picture) and where DS starts (the model's ds_content: z_c^h, or f_LR of the
        # model's own content picture, as `sdflow ds` makes it), both fixed.
        hr_small, target_pic, z_c_pic = None, None, None
        if cfg.sr_content == "target" or cfg.content_prior_sigma > 0:
            hr_small = downscale(hr, 4, cfg.content_kernel)
            target_pic = gaussian_blur(hr_small, cfg.content_target_sigma)
            with torch.no_grad():
                z_c_pic = m.f_lr(target_pic)[0]
        z_c_sr = z_c_pic if cfg.sr_content == "target" else z_c_h
        z_c_ds = z_c_h
        ds_pic = None
        if m.ds_blur is not None and (stage2 or self.paired):
            # DS's statistics and critics move the learnt blur, not f_LR.
            ds_pic = m.content_picture(hr)
            z_c_ds = call_frozen(m.f_lr, ds_pic)[0]
            terms["ds_blur_sigma"] = m.ds_blur.sigma.detach()
        elif m.config.ds_content == "picture":
            with torch.no_grad():
                z_c_ds = m.hr_content(hr)

        if w["nll_hr"] > 0:
            # The spec's stop-gradient: f_HF may not shape the content. With pairs, f_HF learns the
            # HR's detail given what SR will condition it on, E(x): supervised flow SR.
            _, logdet_hf = m.f_hf(z_h, (c if self.paired else z_c_sr).detach())
            log_density = logdet_hr + logdet_hf
            if cfg.content_prior_sigma > 0:
                log_density = log_density + self.content_log_prior(z_c_h, target_pic)
            terms["nll_hr"] = bits_per_dim_nll(log_density, hr).mean()
        # f_Deg's content of the real LR (unpaired): E(x), or (deg_content) f_LR of E's picture
        # blurred as DS's content picture is, fixed.
        c_deg = c
        if cfg.deg_content == "picture" and not self.paired:
            with torch.no_grad():
                pic = m.blur_picture(m.f_lr.inverse(c)[0])
                c_deg = m.f_lr(pic)[0]
        if w["nll_lr"] > 0:
            # With pairs, f_Deg learns the real LR's degradation given the HR's own content.
            cond = z_c_ds.detach() if self.paired else (c_deg.detach() if cfg.nll_lr_detach_content else c_deg)
            z_lr, logdet_lr = m.f_lr(lr_in)
            z_deg, logdet_deg = m.f_deg(z_lr - cond, cond)
            terms["nll_lr"] = bits_per_dim_nll(logdet_lr + logdet_deg + m.deg_prior.log_prob(z_deg), lr).mean()

        if w["hr_mode"] > 0:
            terms["hr_mode"] = F.l1_loss(sr_from_content(m, z_c_sr, 0.0), hr)
        if w["lr_mode"] > 0:
            terms["lr_mode"] = F.l1_loss(ds_from_content(m, c_deg.detach(), 0.0, cfg.ds_sampler), lr)

        if self.paired:
            if w["paired_content"] > 0:
                terms["paired_content"] = self.content_distance(c, z_c_sr)
            if w["paired_sr"] > 0:
                terms["paired_sr"] = F.l1_loss(sr_from_content(m, c, 0.0), hr)
            if w["paired_ds"] > 0:
                terms["paired_ds"] = F.l1_loss(ds_from_content(m, z_c_ds, 0.0, cfg.ds_sampler), lr)

        if hr_small is None and (w["content"] > 0 or w["content_hf_match"] > 0 or stage2):
            # Antialiased bicubic (or `content_kernel`): the low frequencies y and x share.
            hr_small = downscale(hr, 4, cfg.content_kernel)
        if target_pic is None and (w["content"] > 0 or w["content_hf_match"] > 0):
            target_pic = gaussian_blur(hr_small, cfg.content_target_sigma)
        if w["content"] > 0:
            inv = (lambda z: call_frozen(m.f_lr, z, inverse=True)[0]) if cfg.content_freeze_f_lr \
                else (lambda z: m.f_lr.inverse(z)[0])
            lr_from_hr, lr_from_c = inv(z_c_h), inv(c)
            sigma_hr = sigma if cfg.content_hr_lpf_sigma is None else cfg.content_hr_lpf_sigma
            sigma_lr = sigma if cfg.content_lr_lpf_sigma is None else cfg.content_lr_lpf_sigma
            # At tau 0, DS is almost exactly the content picture f_LR^-1(z_c^h): pinned full band to
            # the bicubic image, it can be no blurrier than bicubic, however blurred the real LR is.
            # Blurred targets let DS take on the LR's blur (sigma 0 leaves them as they are).
            target_lr = gaussian_blur(lr, cfg.content_target_sigma)
            # Both halves are logged apart: which side fails to pin its content tells a lot.
            terms["content_hr"] = low_pass_l1(lr_from_hr, target_pic, sigma_hr)
            terms["content_lr"] = low_pass_l1(lr_from_c, target_lr, sigma_lr)
            terms["content"] = terms["content_hr"] + terms["content_lr"]
            if w["colour"] > 0:
                # L1 fits medians: content pictures a few levels off in mean colour pass it, and SR
                # inherits the tint. Image means are the statistic that matters here.
                terms["colour"] = mean_colour_l1(lr_from_hr, hr_small) + mean_colour_l1(lr_from_c, lr)
            if w["content_perceptual"] > 0:
                terms["content_perceptual"] = (perceptual_distance(self.vgg, lr_from_hr, target_pic)
                                               + perceptual_distance(self.vgg, lr_from_c, target_lr))
        if w["content_hf_match"] > 0:
            terms["content_hf_match"] = self.content_hf_match(c, c_own, z_c_h, target_pic)
        if w["domain"] > 0:
            # Least squares with swapped labels: each side is pushed towards the other.
            # With `domain_detach_hr` only E is moved: z_c^h is pinned to a known picture, and pulling
            # it toward an E that is still wrong would spoil DS, which decodes it.
            v_c = self.critic_view("content", c)
            v_h = self.critic_view("content", z_c_h.detach() if cfg.domain_detach_hr else z_c_h)
            terms["domain"] = 0.5 * (lsgan(self._critic("content", v_c), 1.0)
                                     + lsgan(self._critic("content", v_h), 0.0))
            critic_inputs["content"] = (v_h.detach(), v_c.detach())

        if stage2:
            tau = cfg.stage2_tau
            c_live = c
            if e_blur is not None:
                # E again at its own width, live (the HR critic moves it); f_LR(x) is the same.
                c_live = m.content_extractor(lr) if base is None else m.content_extractor(lr) + base
            y_sr = sr_from_content(m, c_live, tau)                  # SR from real LR
            x_ds = ds_from_content(m, z_c_ds, tau, cfg.ds_sampler)  # DS from real HR
            y_sr_j = quantize_st(y_sr) if cfg.quantize_fakes else y_sr
            x_ds_j = quantize_st(x_ds) if cfg.quantize_fakes else x_ds

            if w["gan"] > 0:
                v_sr, v_ds = self.critic_view("hr", y_sr_j), self.critic_view("lr", x_ds_j)
                terms["gan"] = lsgan(self._critic("hr", v_sr), 1.0) + lsgan(self._critic("lr", v_ds), 1.0)
                critic_inputs["hr"] = (self.critic_view("hr", hr), v_sr.detach())
                critic_inputs["lr"] = (self.critic_view("lr", lr), v_ds.detach())
            y_sr_small = downscale(y_sr, 4, cfg.content_kernel)
            if w["pixel"] > 0:
                # DS against its own content picture where the blur is learnt: against the unblurred
                # one, this term alone would decide the blur (none), not the real LR's statistics.
                ds_target = hr_small if ds_pic is None else ds_pic.detach()
                terms["pixel"] = low_pass_l1(y_sr_small, lr, sigma) + low_pass_l1(x_ds, ds_target, sigma)
            if w["colour"] > 0 and "colour" in terms:
                terms["colour"] = terms["colour"] + mean_colour_l1(y_sr, lr) + mean_colour_l1(x_ds, hr)
            if w["perceptual"] > 0:
                terms["perceptual"] = (perceptual_distance(self.vgg, y_sr_small, lr)
                                       + perceptual_distance(self.vgg, x_ds, hr_small))
            if w["ds_hf_match"] > 0:
                # A batch statistic, not a pixel target: the sets are unpaired, but the DS samples'
                # sharpness and noise should be distributed as the real LR images' are.
                terms["ds_hf_match"] = hf_distribution_l1(x_ds_j, lr, cfg.ds_hf_levels, cfg.ds_hf_statistic == "log")
            # The cycles train the SR path on pseudo-pairs (y, x_ds), as paired training does on
            # real pairs. `cycle_tau` draws them from the learnt degradation at their own
            # temperature (1: the density itself) instead of reusing the critics' samples.
            x_cyc = x_ds_j
            cyc_tau = tau if cfg.cycle_tau is None else cfg.cycle_tau
            # A told E is told each pseudo-pair's blur: drawn, or the one DS blurs by.
            cyc_blur = None if told is None else m.blur_width().detach()
            widths = cfg.cycle_blur
            if cfg.cycle_blur_spread:
                w_now, f = float(told.sigma.detach()), cfg.cycle_blur_spread
                widths = (w_now / f, w_now * f)
            if (cyc_tau != tau or widths) and cfg.cycle_detach_ds:
                with torch.no_grad():
                    z_cyc = z_c_ds
                    if widths:
                        pictures, drawn = self.blur_range(hr_small, widths)
                        z_cyc = m.f_lr(pictures)[0]
                        cyc_blur = None if told is None else drawn
                    x_cyc = ds_from_content(m, z_cyc, cyc_tau, cfg.ds_sampler)
                    x_cyc = quantize_st(x_cyc) if cfg.quantize_fakes else x_cyc
            c_ds = None
            if w["content_cycle"] > 0:
                x_in = x_cyc.detach() if cfg.cycle_detach_ds else x_cyc
                c_ds = m.content(x_in, cyc_blur)
                terms["content_cycle"] = self.content_distance(c_ds, z_c_sr)
            if (w["sr_cycle"] > 0 or w["sr_cycle_nll"] > 0) and (c_ds is None or not cfg.cycle_detach_ds):
                c_ds = m.content(x_cyc.detach(), cyc_blur)
            if w["sr_cycle"] > 0:
                terms["sr_cycle"] = F.l1_loss(sr_from_content(m, c_ds, 0.0), hr)
            if w["sr_cycle_nll"] > 0:
                # f_HF learns the HR's detail given what SR conditions it on, E of an LR image,
                # here a pseudo one (paired training's nll_hr on real pairs). Only f_HF learns.
                _, logdet_hf = m.f_hf(z_h.detach(), c_ds.detach())
                terms["sr_cycle_nll"] = bits_per_dim_nll(logdet_hr.detach() + logdet_hf, hr).mean()
            terms["sr_range"] = (y_sr.detach().abs() > 1.0).float().mean()  # how far samples overshoot

        total = sum(w[k] * terms[k].float() for k in w if w[k] > 0 and k in terms)
        if not torch.is_tensor(total):  # every weight zero: keep the graph shape valid
            total = z_c_h.sum() * 0.0
        if inject_nan:
            total = total * float("nan")
        out = {k: v.detach().float() for k, v in terms.items()}
        out["total"] = total.detach().float()
        return total, out, critic_inputs


class CriticObjective(nn.Module):
    """Least-squares GAN losses for a group of critics: mean over the group of
    0.5 * [(D(real) - 1)^2 + D(fake)^2]."""

    def __init__(self, critics: Dict[str, nn.Module]):
        super().__init__()
        self.critics = nn.ModuleDict(critics)

    def forward(self, pairs: Dict[str, Tuple[torch.Tensor, torch.Tensor]]):
        terms = {}
        for name, d in self.critics.items():
            real, fake = pairs[name]
            terms[f"d_{name}"] = 0.5 * (lsgan(d(real.detach()), 1.0) + lsgan(d(fake.detach()), 0.0))
        loss = sum(terms.values())
        return loss, {k: v.detach() for k, v in terms.items()}


__all__ = ["GeneratorObjective", "CriticObjective", "bits_per_dim_nll", "dequantize", "quantize_st",
           "lsgan", "call_frozen", "low_pass_l1", "high_pass_energy", "hf_distribution_l1", "EIGHT_BIT_STEP"]
