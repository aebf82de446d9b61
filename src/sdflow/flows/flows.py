"""The four flows of SDFlow: f_HR, f_HF, f_LR and f_Deg."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdflow.flows.layers import (Expand, FlowSequence, FlowStep, LiftingSqueeze, Squeeze, chain_forward,
                                 chain_inverse, standard_normal_logp, transition)
from sdflow.nets.rrdb import ConditionNet


class _Chain(nn.Module):
    """A flow made of named parts run in the order `parts()` gives."""

    def parts(self):
        raise NotImplementedError

    def forward(self, x, cond=None):
        return chain_forward(self.parts(), x, cond)

    def inverse(self, y, cond=None):
        return chain_inverse(self.parts(), y, cond)


class SqueezeLevel(_Chain):
    """Squeeze, a transition, then `steps` unconditional flow steps. With the lifting squeeze
    the 1x1 convolutions start by leaving the first 3 channels alone (the colours' low band,
    which becomes z_c), so that f_HR starts as the wavelet transform up to ActNorm."""

    def __init__(self, in_channels: int, steps: int, hidden: int, lifting: bool = False):
        super().__init__()
        c = 4 * in_channels
        keep = 3 if lifting else 0  # the colours' low band, in the lifting squeeze's channel order
        self.squeeze = LiftingSqueeze() if lifting else Squeeze()
        self.transition = transition(c, keep)
        self.steps = FlowSequence([FlowStep(c, hidden=hidden, keep=keep) for _ in range(steps)])

    def parts(self):
        return [self.squeeze, self.transition, self.steps]


class HRFlow(_Chain):
    """f_HR: HR image y (3, H, W) <-> z (48, H/4, W/4); z[:, :3] is the content z_c, the rest z_h.
    `squeeze` "shuffle" (the authors') or "lifting" (`LiftingSqueeze`, ours)."""

    def __init__(self, steps: int = 16, hidden: int = 64, squeeze: str = "shuffle"):
        super().__init__()
        lifting = {"shuffle": False, "lifting": True}[squeeze]
        self.levels = nn.ModuleList([SqueezeLevel(3, steps, hidden, lifting),
                                     SqueezeLevel(12, steps, hidden, lifting)])

    def parts(self):
        return list(self.levels)


class LRFlow(_Chain):
    """f_LR: LR image x <-> z_LR of the same shape. `identity`: its 1x1 convolutions start as the
    identity, so that f_LR starts as ActNorm's per-channel affine map of the picture itself (the
    partner of f_HR's lifting squeeze, whose z_c starts as the HR's picture)."""

    def __init__(self, steps: int = 16, hidden: int = 64, identity: bool = False):
        super().__init__()
        keep = 12 if identity else 0
        self.squeeze = Squeeze()
        self.transition_in = transition(12, keep)
        self.steps = FlowSequence([FlowStep(12, hidden=hidden, keep=keep) for _ in range(steps)])
        self.transition_out = transition(12, keep)
        self.expand = Expand()

    def parts(self):
        return [self.squeeze, self.transition_in, self.steps, self.transition_out, self.expand]


class ConditionalFlow(nn.Module):
    """CF: a flow on z conditioned on a content map through an RRDB condition network.

    With `squeeze`, z is squeezed to half size and the condition features are brought to that
    size by a pixel-unshuffle and a 1x1 conv. With `normal_prior`, the forward logdet includes
    log N(z_out; 0, I), so that it is the log-likelihood of z itself.
    """

    def __init__(self, channels: int, cond_in: int, steps: int, rrdb_blocks: int, squeeze: bool,
                 normal_prior: bool, cond_channels: int = 64, growth: int = 32, hidden: int = 64):
        super().__init__()
        self.squeeze = squeeze
        self.normal_prior = normal_prior
        self.cond_net = ConditionNet(cond_in, rrdb_blocks, cond_channels, growth)
        if squeeze:
            self.cond_proj = nn.Conv2d(4 * cond_channels, cond_channels, 1)
            channels *= 4
            self.squeeze_layer = Squeeze()
            self.transition = transition(channels)
        else:
            self.cond_proj = self.squeeze_layer = self.transition = None
        # The last step has no coupling: its injector alone ends the flow.
        self.steps = FlowSequence([FlowStep(channels, cond_channels, coupling=i < steps - 1, hidden=hidden)
                                   for i in range(steps)])

    def parts(self):
        return [self.squeeze_layer, self.transition, self.steps] if self.squeeze else [self.steps]

    def condition(self, content: torch.Tensor, cond_net: Optional[nn.Module] = None) -> torch.Tensor:
        """The features u that every step reads; `cond_net`: the condition network's sampling
        form (`ConditionNet.fused_copy`) instead of the trainable one."""
        u = (cond_net or self.cond_net)(content)
        if self.squeeze:
            u = F.leaky_relu(self.cond_proj(F.pixel_unshuffle(u, 2)), 0.2)
        return u

    def forward(self, z, cond):
        out, logdet = chain_forward(self.parts(), z, self.condition(cond))
        if self.normal_prior:
            logdet = logdet + standard_normal_logp(out)
        return out, logdet

    def inverse(self, eps, cond, features=None):
        """`features`: `self.condition(cond)` when the caller has it already (several samples
        for one condition)."""
        z, logdet = chain_inverse(self.parts(), eps, self.condition(cond) if features is None else features)
        if self.normal_prior:
            logdet = logdet - standard_normal_logp(eps)
        return z, logdet

    def latent_shape(self, cond: torch.Tensor, channels: int):
        b, _, h, w = cond.shape
        return (b, 4 * channels, h // 2, w // 2) if self.squeeze else (b, channels, h, w)

    @staticmethod
    def prior_sample(shape, tau: float = 0.8, generator=None, device=None, dtype=None) -> torch.Tensor:
        """A draw from N(0, tau^2 I) in the authors' form; tau below 1e-6 gives the mean (zeros)."""
        if tau < 1e-6:
            return torch.zeros(shape, device=device, dtype=dtype)
        eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return (1.0 + 1e-6) * tau * eps

    def sample(self, cond, channels: int, tau: float = 0.8, generator=None):
        """Draw z ~ f^-1(N(0, tau^2 I)); tau below 1e-6 gives the flow's image of the mean."""
        eps = self.prior_sample(self.latent_shape(cond, channels), tau, generator, cond.device, cond.dtype)
        return self.inverse(eps, cond)[0]
