"""Invertible layers of SDFlow.

Every layer maps `forward(x, cond=None) -> (y, logdet)` and `inverse(y, cond=None) -> (x, logdet)`,
where `logdet` is the per-sample log |det J| of the map actually applied ([B]); the inverse's logdet
is therefore the negative of the forward one. Layers that take no condition ignore `cond`, so any
sequence of them composes with one signature (`FlowSequence`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from sdflow.nets.precision import autocast_net


def _zeros_logdet(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(x.shape[0])


def chain_forward(layers, x, cond=None):
    logdet = _zeros_logdet(x)
    for layer in layers:
        x, ld = layer(x, cond)
        logdet = logdet + ld
    return x, logdet


def chain_inverse(layers, y, cond=None):
    logdet = _zeros_logdet(y)
    for layer in reversed(layers):
        y, ld = layer.inverse(y, cond)
        logdet = logdet + ld
    return y, logdet


class FlowSequence(nn.ModuleList):
    """A composition of flow layers; itself a flow layer."""

    def forward(self, x, cond=None):
        return chain_forward(self, x, cond)

    def inverse(self, y, cond=None):
        return chain_inverse(list(self), y, cond)


class Squeeze(nn.Module):
    """Checkerboard squeeze (C, H, W) -> (4C, H/2, W/2); channel index c*4 + dy*2 + dx."""

    def forward(self, x, cond=None):
        return F.pixel_unshuffle(x, 2), _zeros_logdet(x)

    def inverse(self, y, cond=None):
        return F.pixel_shuffle(y, 2), _zeros_logdet(y)


class Expand(nn.Module):
    """Inverse of `Squeeze`, as a forward layer."""

    def forward(self, x, cond=None):
        return F.pixel_shuffle(x, 2), _zeros_logdet(x)

    def inverse(self, y, cond=None):
        return F.pixel_unshuffle(y, 2), _zeros_logdet(y)


class ActNorm(nn.Module):
    """Per-channel affine map y = exp(log_scale) * (x + loc), data-initialised on the first
    forward pass in training mode."""

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        # A buffer (not a Python bool) so that it is saved and restored with the weights.
        self.register_buffer("initialized", torch.tensor(0.0))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        # Mean and E[x^2] averaged over ranks give the global statistics when every rank
        # sees a batch of the same size.
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        sq = (x * x).mean(dim=(0, 2, 3), keepdim=True)
        if dist.is_available() and dist.is_initialized():
            stats = torch.cat([mean, sq])
            dist.all_reduce(stats)
            stats /= dist.get_world_size()
            mean, sq = stats[:1], stats[1:]
        var = (sq - mean * mean).clamp_min(0)
        # Near-constant channels would get a huge scale; leave them unscaled instead.
        var = torch.where(var < 1e-4, torch.ones_like(var), var)
        self.loc.copy_(-mean)
        self.log_scale.copy_(torch.log(1.0 / (var.sqrt() + 1e-6)))
        self.initialized.fill_(1.0)

    def _logdet(self, x):
        h, w = x.shape[2:]
        return (h * w * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x, cond=None):
        if self.training and not bool(self.initialized):
            self.initialize(x)
        return torch.exp(self.log_scale) * (x + self.loc), self._logdet(x)

    def inverse(self, y, cond=None):
        return y * torch.exp(-self.log_scale) - self.loc, -self._logdet(y)


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution in LU form: W = P (L + I) (U + diag(sign * exp(log_abs_s)))."""

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.log_abs_s = nn.Parameter(torch.log(torch.abs(s)).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        # Derived from the size alone, so not saved.
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
        self.register_buffer("eye", torch.eye(channels), persistent=False)
        self._cache = None

    def weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """W, in the parameters' dtype or in `dtype`."""
        def t(x):
            return x if dtype is None else x.to(dtype)

        lower = t(self.lower) * t(self.lower_mask) + t(self.eye)
        upper = t(self.upper) * t(self.lower_mask).T + torch.diag(t(self.sign_s) * torch.exp(t(self.log_abs_s)))
        return t(self.perm) @ lower @ upper

    def _weights(self):
        """(W, W^-1). Without autograd they are computed once per parameter value instead of
        once per call (inference evaluates every 1x1 convolution many times). The cache is
        checked against copies of the values, not version counters: writes through `.data`
        (EMA updates, weight surgery) leave the counters alone and would leave W stale."""
        if torch.is_grad_enabled():
            return self.weight(), None
        state = (self.lower, self.upper, self.log_abs_s, self.perm, self.sign_s)
        if self._cache is None or not all(a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
                                          for a, b in zip(self._cache[0], state)):
            dtype = self.lower.dtype
            # No half-precision inverse exists (and none would be accurate): such models work
            # in float32 and round the results.
            work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
            w = self.weight(work).detach()
            self._cache = (tuple(t.detach().clone() for t in state), w.to(dtype), torch.linalg.inv(w).to(dtype))
        return self._cache[1], self._cache[2]

    def _logdet(self, x):
        h, w = x.shape[2:]
        return (h * w * self.log_abs_s.sum()).expand(x.shape[0])

    def forward(self, x, cond=None):
        w, _ = self._weights()
        return F.conv2d(x, w[:, :, None, None]), self._logdet(x)

    def inverse(self, y, cond=None):
        w, w_inv = self._weights()
        if w_inv is None:
            w_inv = torch.linalg.inv(w)
        return F.conv2d(y, w_inv[:, :, None, None]), -self._logdet(y)


class CouplingNet(nn.Module):
    """The small CNN inside couplings and injectors. Its last layer starts at zero so that
    every flow step starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, out_channels, 3, padding=1)
        self.out_log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv3.weight)
        nn.init.zeros_(self.conv3.bias)

    @autocast_net
    def forward(self, x):
        h = F.leaky_relu(self.conv1(x), 0.01)
        h = F.leaky_relu(self.conv2(h), 0.01)
        return self.conv3(h) * torch.exp(3 * self.out_log_scale)


def _bounded_scale_shift(h: torch.Tensor):
    # Scales and shifts are interleaved channels; atan keeps |log scale| below 0.318 * pi/2 so
    # that no single step can blow the latent up, which is what keeps sampling stable.
    scale, shift = h[:, 0::2], h[:, 1::2]
    return 0.318 * torch.atan(2 * scale), shift


class AffineCoupling(nn.Module):
    """Transforms the second part of the channels with a scale and shift predicted from the
    first part (and the condition u, if any)."""

    def __init__(self, channels: int, cond_channels: int = 0, hidden: int = 64):
        super().__init__()
        self.split = channels // 2
        self.net = CouplingNet(self.split + cond_channels, 2 * (channels - self.split), hidden)

    def _scale_shift(self, za, cond):
        inp = za if cond is None else torch.cat([za, cond], dim=1)
        return _bounded_scale_shift(self.net(inp))

    def forward(self, x, cond=None):
        za, zb = x[:, :self.split], x[:, self.split:]
        scale, shift = self._scale_shift(za, cond)
        zb = (zb + shift) * torch.exp(scale)
        return torch.cat([za, zb], dim=1), scale.flatten(1).sum(1)

    def inverse(self, y, cond=None):
        za, zb = y[:, :self.split], y[:, self.split:]
        scale, shift = self._scale_shift(za, cond)
        zb = zb * torch.exp(-scale) - shift
        return torch.cat([za, zb], dim=1), -scale.flatten(1).sum(1)


class AffineInjector(nn.Module):
    """Affine map of all channels predicted from the condition alone."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64):
        super().__init__()
        self.net = CouplingNet(cond_channels, 2 * channels, hidden)

    def forward(self, x, cond=None):
        scale, shift = _bounded_scale_shift(self.net(cond))
        return (x + shift) * torch.exp(scale), scale.flatten(1).sum(1)

    def inverse(self, y, cond=None):
        scale, shift = _bounded_scale_shift(self.net(cond))
        return y * torch.exp(-scale) - shift, -scale.flatten(1).sum(1)


class FlowStep(nn.Module):
    """ActNorm -> invertible 1x1 conv -> [affine injector] -> [affine coupling]."""

    def __init__(self, channels: int, cond_channels: int = 0, coupling: bool = True, hidden: int = 64):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.inv_conv = InvConv1x1(channels)
        self.injector = AffineInjector(channels, cond_channels, hidden) if cond_channels else None
        self.coupling = AffineCoupling(channels, cond_channels, hidden) if coupling else None

    def _layers(self):
        return [m for m in (self.actnorm, self.inv_conv, self.injector, self.coupling) if m is not None]

    def forward(self, x, cond=None):
        return chain_forward(self._layers(), x, cond)

    def inverse(self, y, cond=None):
        return chain_inverse(self._layers(), y, cond)


def transition(channels: int) -> FlowSequence:
    """Two coupling-free steps, used right after a squeeze (and before f_LR's expand) to mix
    the freshly stacked channels."""
    return FlowSequence([FlowStep(channels, coupling=False) for _ in range(2)])


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(z; 0, I), in the authors' form (the 1e-6 in the variance included)."""
    return (-0.5 * (z * z / (1.0 + 1e-6) + math.log(2 * math.pi))).flatten(1).sum(1)
