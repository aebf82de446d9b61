"""Invertible layers of SDFlow.

Every layer maps `forward(x, cond=None) -> (y, logdet)` and `inverse(y, cond=None) -> (x, logdet)`,
where `logdet` is the per-sample log |det J| of the map actually applied ([B]); the inverse's logdet
is therefore the negative of the forward one. Layers that take no condition ignore `cond`, so any
sequence of them composes with one signature (`FlowSequence`).

Sampling form. `FusedFlow(flow, sign)` is a flow (sign +1) or its inverse (sign -1) made for
sampling from the same layers: each layer contributes its `sampling_op`, consecutive linear
layers (ActNorm, invertible 1x1, and so the coupling-free transition blocks) are composed in
float64 into one `Affine1x1`, couplings and injectors run with their nets folded
(`CouplingNet.fused`) and update z in place, and no log-determinant is computed. Its results
are the flow's up to float rounding (tests/test_fused.py).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from sdflow.nets.fusing import exact, sampling_copy, set_weights
from sdflow.nets.precision import autocast_net

# Coupling and injector scales are SCALE_BOUND * atan(ATAN_GAIN * s): |log scale| < 0.5.
SCALE_BOUND = 0.318
ATAN_GAIN = 2.0
# The sampling form's unconditional couplings (f_HR, f_LR) run in bands of rows whose hidden
# activations take about BAND_BYTES: whole, f_HR's level 1 holds two 64-channel maps at HR/2
# (16 MB each for a 128x128 LR), fresh pages that the kernel must zero on every call; bands stay
# in cache and their memory is reused (docs/performance.md).
BAND_BYTES = 4 << 20
BAND_MIN_ROWS = 16


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

    def parts(self):
        return list(self)

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

    def sampling_op(self, sign, dtype, memory_format):
        return Shuffle(unshuffle=sign > 0)


# [ours] The detail predictor of the lifting squeeze below: the difference of a pair of pixels
# from the averages of the two pairs on either side, exact for polynomials up to degree four.
_PREDICT = (3.0 / 64, -22.0 / 64, 0.0, 22.0 / 64, -3.0 / 64)


def _taps(x: torch.Tensor, weights, axis: int) -> torch.Tensor:
    """sum_k weights[k] * x[n + k - len // 2] along `axis` (-1 or -2), edges replicated (any size)."""
    n, r = x.shape[axis], len(weights) // 2
    padded = F.pad(x, (r, r, 0, 0) if axis == -1 else (0, 0, r, r), mode="replicate")
    return sum(w * padded.narrow(axis, k, n) for k, w in enumerate(weights) if w)


def _lift(x: torch.Tensor, axis: int):
    """(low, high) halves along `axis` by three lifting steps, each of determinant 1: the pair
    difference, the pair mean (so the low band is centred between its pixels, as a bicubic
    downscale is), and the difference less what the neighbouring means predict of it."""
    even, odd = x.unflatten(axis, (-1, 2)).unbind(axis)
    diff = odd - even
    low = even + 0.5 * diff
    return low, diff - _taps(low, _PREDICT, axis)


def _unlift(low: torch.Tensor, high: torch.Tensor, axis: int) -> torch.Tensor:
    diff = high + _taps(low, _PREDICT, axis)
    even = low - 0.5 * diff
    stacked = torch.stack([even, even + diff], dim=axis)  # axis -1: (..., n, 2); -2: (..., n, 2, W)
    return stacked.flatten(-2, -1) if axis == -1 else stacked.flatten(-3, -2)


class LiftingSqueeze(nn.Module):
    """[ours] A squeeze (C, H, W) -> (4C, H/2, W/2) by one level of a separable interpolating
    wavelet (lifting scheme, log-determinant 0): channels [LL | LH | HL | HH], C each, LL first.
    Where the checkerboard squeeze stacks pixels, this one separates a picture from its detail:
    the low band is the 2x2 mean, and the inverse with the detail bands at 0 is an interpolation
    exact for polynomials up to degree four. In f_HR (`ModelConfig.hr_squeeze`), two of them make z_c start
    as the HR's x4 picture and f_HR^-1([z_c, 0]) as a bicubic-like upscale of it, so the SR path
    starts as an interpolator instead of having to learn one."""

    def forward(self, x, cond=None):
        low, high = _lift(x, -1)
        ll, lh = _lift(low, -2)
        hl, hh = _lift(high, -2)
        return torch.cat([ll, lh, hl, hh], dim=1), _zeros_logdet(x)

    def inverse(self, y, cond=None):
        ll, lh, hl, hh = y.chunk(4, dim=1)
        x = _unlift(_unlift(ll, lh, -2), _unlift(hl, hh, -2), -1)
        return x, _zeros_logdet(y)

    def sampling_op(self, sign, dtype, memory_format):
        return LiftingOp(self, sign, memory_format)


class LiftingOp:
    """A LiftingSqueeze (or its inverse) in a FusedFlow, on the float32 flow state."""

    def __init__(self, layer: LiftingSqueeze, sign: float, memory_format: torch.memory_format):
        self.layer, self.sign, self.memory_format = layer, sign, memory_format

    def __call__(self, z: torch.Tensor, u=None) -> torch.Tensor:
        out = (self.layer.forward if self.sign > 0 else self.layer.inverse)(z)[0]
        return out.contiguous(memory_format=self.memory_format)


class Expand(nn.Module):
    """Inverse of `Squeeze`, as a forward layer."""

    def forward(self, x, cond=None):
        return F.pixel_shuffle(x, 2), _zeros_logdet(x)

    def inverse(self, y, cond=None):
        return F.pixel_unshuffle(y, 2), _zeros_logdet(y)

    def sampling_op(self, sign, dtype, memory_format):
        return Shuffle(unshuffle=sign < 0)


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

    def sampling_op(self, sign, dtype, memory_format):
        scale = torch.exp(exact(self.log_scale)).flatten()
        return Affine1x1(torch.diag(scale), scale * exact(self.loc).flatten(), self.loc.device, sign)


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution in LU form: W = P (L + I) (U + diag(sign * exp(log_abs_s)))."""

    def __init__(self, channels: int, keep: int = 0):
        """Starts as a random rotation; `keep` > 0: of the channels after the first `keep`, which
        it starts by leaving alone (with `ModelConfig.hr_squeeze` lifting, so that the content
        latents of f_HR and f_LR start as pictures)."""
        super().__init__()
        q = torch.eye(channels, dtype=torch.float64)
        if keep < channels:
            q[keep:, keep:], _ = torch.linalg.qr(torch.randn(channels - keep, channels - keep, dtype=torch.float64))
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

    def weight(self, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """W, in the parameters' dtype and device or in `dtype` / on `device`."""
        def t(x):
            return x if dtype is None and device is None else x.to(device=device, dtype=dtype)

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

    def sampling_op(self, sign, dtype, memory_format):
        w = self.weight(torch.float64, "cpu").detach()   # float64 whatever the model's dtype
        return Affine1x1(w, torch.zeros(w.shape[0], dtype=torch.float64), self.lower.device, sign)


class CouplingNet(nn.Module):
    """The small CNN inside couplings and injectors: (scale, shift) pairs as interleaved output
    channels. Its last layer starts at zero so that every flow step starts as the identity.

    Sampling form (`fused`): exp(3 logs) and atan's gain folded into conv3, whose outputs are
    reordered to two contiguous halves [ATAN_GAIN * scale | shift]."""

    fused = False

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
    def forward(self, x, padded: bool = False, rows=None):
        """`padded`: x already carries conv1's one pixel of reflect padding (a fused flow pads
        once per call). `rows` = (r0, r1), with `padded`: only output rows r0:r1, from the rows
        of x they depend on (one more on each side for conv3), conv3 zero-padded at the image's
        own top and bottom only: exact, and the hidden maps are those of a band."""
        top = bottom = 1
        if padded:
            if rows is not None:
                r0, r1 = rows
                a, b = max(r0 - 1, 0), min(r1 + 1, x.shape[-2] - 2)
                x = x[..., a:b + 2, :]
                top, bottom = int(a == r0), int(b == r1)
            h = F.conv2d(x, self.conv1.weight, self.conv1.bias)
        else:
            h = self.conv1(x)
        h = F.leaky_relu(h, 0.01, inplace=self.fused)
        h = F.leaky_relu(self.conv2(h), 0.01, inplace=self.fused)
        if top and bottom:
            h = self.conv3(h)
        else:
            h = F.conv2d(F.pad(h, (0, 0, top, bottom)), self.conv3.weight, self.conv3.bias, padding=(0, 1))
        return h if self.fused else h * torch.exp(3 * self.out_log_scale)

    def fused_copy(self, dtype: torch.dtype, memory_format: torch.memory_format) -> "CouplingNet":
        return sampling_copy(self, dtype, memory_format, _fold_coupling_net)


def _fold_coupling_net(net: CouplingNet) -> None:
    n = net.conv3.out_channels // 2
    gain = torch.exp(3 * exact(net.out_log_scale)).flatten()
    order = torch.cat([torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)])
    w = (exact(net.conv3.weight) * gain[:, None, None, None])[order]
    b = (exact(net.conv3.bias) * gain)[order]
    w[:n] *= ATAN_GAIN
    b[:n] *= ATAN_GAIN
    set_weights(net.conv3, w, b)
    del net.out_log_scale


def _scale_shift(h: torch.Tensor):
    """(log scale, shift) from a CouplingNet's interleaved output. atan keeps |log scale| below
    SCALE_BOUND * pi / 2, so that no single step can blow the latent up, which is what keeps
    sampling stable."""
    scale, shift = h[:, 0::2], h[:, 1::2]
    return SCALE_BOUND * torch.atan(ATAN_GAIN * scale), shift


def _affine(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, sign: float) -> torch.Tensor:
    """(z + shift) * exp(scale) (sign +1) or its inverse z * exp(-scale) - shift (sign -1)."""
    return (z + shift) * torch.exp(scale) if sign > 0 else z * torch.exp(-scale) - shift


def _affine_(z: torch.Tensor, h: torch.Tensor, sign: float) -> torch.Tensor:
    """`_affine` in place on z, from a fused CouplingNet's output h = [ATAN_GAIN * scale | shift]
    (in float32; its first half may be overwritten)."""
    n = h.shape[1] // 2
    scale = h[:, :n]
    if not h.is_contiguous():
        # Channels-last h: the scale half is every other run of n floats, over which atan and
        # exp run unvectorised, 3x slower than copying it out dense first (bit-identical).
        scale = scale.clone()
    factor = scale.atan_().mul_(sign * SCALE_BOUND).exp_()
    return z.add_(h[:, n:]).mul_(factor) if sign > 0 else z.mul_(factor).sub_(h[:, n:])


class AffineCoupling(nn.Module):
    """Transforms the second part of the channels with a scale and shift predicted from the
    first part (and the condition u, if any)."""

    def __init__(self, channels: int, cond_channels: int = 0, hidden: int = 64):
        super().__init__()
        self.split = channels // 2
        self.net = CouplingNet(self.split + cond_channels, 2 * (channels - self.split), hidden)

    def _scale_shift(self, za, cond):
        inp = za if cond is None else torch.cat([za, cond], dim=1)
        return _scale_shift(self.net(inp))

    def forward(self, x, cond=None):
        za, zb = x[:, :self.split], x[:, self.split:]
        scale, shift = self._scale_shift(za, cond)
        return torch.cat([za, _affine(zb, scale, shift, 1)], dim=1), scale.flatten(1).sum(1)

    def inverse(self, y, cond=None):
        za, zb = y[:, :self.split], y[:, self.split:]
        scale, shift = self._scale_shift(za, cond)
        return torch.cat([za, _affine(zb, scale, shift, -1)], dim=1), -scale.flatten(1).sum(1)

    def sampling_op(self, sign, dtype, memory_format):
        return _SamplingStep(self, sign, dtype, memory_format)

    def sample_step(self, z, u: Optional["CouplingInput"], net: CouplingNet, sign: float) -> torch.Tensor:
        """This coupling (sign +1) or its inverse (-1) with the folded `net`, updating z in place:
        za is read from z, zb overwritten."""
        za_padded = F.pad(z[:, :self.split], (1, 1, 1, 1), mode="reflect")
        zb = z[:, self.split:]
        if u is not None:
            _affine_(zb, net(u.with_leading(za_padded), padded=True).float(), sign)
            return z
        # za is left alone, so zb can be updated band by band from it.
        dtype = net.compute_dtype
        za_padded = za_padded.to(dtype)
        row_bytes = z.shape[0] * z.shape[-1] * net.conv1.out_channels * dtype.itemsize
        rows = max(BAND_MIN_ROWS, BAND_BYTES // row_bytes)
        for r0 in range(0, z.shape[-2], rows):
            r1 = min(r0 + rows, z.shape[-2])
            _affine_(zb[:, :, r0:r1], net(za_padded, padded=True, rows=(r0, r1)).float(), sign)
        return z


class AffineInjector(nn.Module):
    """Affine map of all channels predicted from the condition alone."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64):
        super().__init__()
        self.net = CouplingNet(cond_channels, 2 * channels, hidden)

    def forward(self, x, cond=None):
        scale, shift = _scale_shift(self.net(cond))
        return _affine(x, scale, shift, 1), scale.flatten(1).sum(1)

    def inverse(self, y, cond=None):
        scale, shift = _scale_shift(self.net(cond))
        return _affine(y, scale, shift, -1), -scale.flatten(1).sum(1)

    def sampling_op(self, sign, dtype, memory_format):
        return _SamplingStep(self, sign, dtype, memory_format)

    def sample_step(self, z, u: "CouplingInput", net: CouplingNet, sign: float) -> torch.Tensor:
        """This injector (sign +1) or its inverse (-1) with the folded `net`, in place on z."""
        return _affine_(z, net(u.padded, padded=True).float(), sign)


class FlowStep(nn.Module):
    """ActNorm -> invertible 1x1 conv -> [affine injector] -> [affine coupling]."""

    def __init__(self, channels: int, cond_channels: int = 0, coupling: bool = True, hidden: int = 64,
                 keep: int = 0):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.inv_conv = InvConv1x1(channels, keep)
        self.injector = AffineInjector(channels, cond_channels, hidden) if cond_channels else None
        self.coupling = AffineCoupling(channels, cond_channels, hidden) if coupling else None

    def parts(self):
        return [m for m in (self.actnorm, self.inv_conv, self.injector, self.coupling) if m is not None]

    def forward(self, x, cond=None):
        return chain_forward(self.parts(), x, cond)

    def inverse(self, y, cond=None):
        return chain_inverse(self.parts(), y, cond)


def transition(channels: int, keep: int = 0) -> FlowSequence:
    """Two coupling-free steps, used right after a squeeze (and before f_LR's expand) to mix
    the freshly stacked channels (all but the first `keep`, at the start: `InvConv1x1`)."""
    return FlowSequence([FlowStep(channels, coupling=False, keep=keep) for _ in range(2)])


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(z; 0, I), in the authors' form (the 1e-6 in the variance included)."""
    return (-0.5 * (z * z / (1.0 + 1e-6) + math.log(2 * math.pi))).flatten(1).sum(1)


# ----- the sampling form --------------------------------------------------------------------

def elementary_layers(flow: nn.Module) -> list:
    """The layers of `flow` in forward order, every container (anything with `parts()`) opened."""
    parts = getattr(flow, "parts", None)
    if parts is None:
        return [flow]
    return [layer for part in parts() if part is not None for layer in elementary_layers(part)]


class Affine1x1:
    """z -> W z + b at every pixel: the sampling form of a run of linear flow layers (ActNorm,
    invertible 1x1 convolutions). Composed in float64 on the CPU; computed in float32 whatever
    the networks' precision, since it is the flow state itself."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, device, sign: float = 1.0):
        if sign < 0:
            w = torch.linalg.inv(w)
            b = -(w @ b)
        self.w, self.b, self.device = w, b, device
        self.weight = self.bias = None

    def then(self, other: "Affine1x1") -> "Affine1x1":
        """`other` after this one, as one map."""
        return Affine1x1(other.w @ self.w, other.w @ self.b + other.b, self.device)

    def first_rows(self, n: int) -> "Affine1x1":
        """Only the first n output channels."""
        return Affine1x1(self.w[:n], self.b[:n], self.device)

    def prepare(self, memory_format: torch.memory_format) -> None:
        self.weight = self.w[:, :, None, None].to(self.device, torch.float32).contiguous(memory_format=memory_format)
        self.bias = self.b.to(self.device, torch.float32)

    def __call__(self, z: torch.Tensor, u=None) -> torch.Tensor:
        return F.conv2d(z, self.weight, self.bias)


class Shuffle:
    """Squeeze (unshuffle) or expand, in a FusedFlow."""

    def __init__(self, unshuffle: bool):
        self.unshuffle = unshuffle

    def __call__(self, z: torch.Tensor, u=None) -> torch.Tensor:
        return F.pixel_unshuffle(z, 2) if self.unshuffle else F.pixel_shuffle(z, 2)


class _SamplingStep:
    """A coupling or an injector in a FusedFlow: the layer's `sample_step` with its folded net."""

    def __init__(self, layer: nn.Module, sign: float, dtype: torch.dtype, memory_format: torch.memory_format):
        self.layer, self.sign = layer, sign
        self.split = getattr(layer, "split", 0)
        self.net = layer.net.fused_copy(dtype, memory_format)

    def __call__(self, z: torch.Tensor, u: Optional["CouplingInput"]) -> torch.Tensor:
        return self.layer.sample_step(z, u, self.net, self.sign)


class CouplingInput:
    """What every step of one call of a fused conditional flow shares: the condition u,
    reflect-padded once (not once per step) in the nets' dtype, and one buffer holding
    [za | u] that each coupling fills with its own za (no concatenation per step)."""

    def __init__(self, u: torch.Tensor, dtype: torch.dtype, memory_format: torch.memory_format):
        self.padded = F.pad(u, (1, 1, 1, 1), mode="reflect").to(dtype)
        self.memory_format = memory_format
        self._buffer = None

    def with_leading(self, za_padded: torch.Tensor) -> torch.Tensor:
        split = za_padded.shape[1]
        if self._buffer is None or self._buffer.shape[1] != split + self.padded.shape[1]:
            u = self.padded
            self._buffer = torch.empty((u.shape[0], split + u.shape[1]) + tuple(u.shape[2:]), dtype=u.dtype,
                                       device=u.device).contiguous(memory_format=self.memory_format)
            self._buffer[:, split:] = u
        self._buffer[:, :split] = za_padded
        return self._buffer


class FusedFlow:
    """`flow` (sign +1) or its inverse (sign -1) in its sampling form (see the module docstring):
    `fused(z, u=None) -> z`, u the condition features of a conditional flow. The networks
    compute in `dtype`, the flow state in float32. `keep` > 0: only the first `keep` output
    channels are wanted (f_HR's z_c for downscaling), so trailing couplings that leave them
    alone are skipped and the last linear map computes only those."""

    def __init__(self, flow: nn.Module, sign: float, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.contiguous_format, keep: int = 0):
        layers = elementary_layers(flow)
        self.dtype, self.memory_format = dtype, memory_format
        ops: List = []
        for layer in (layers if sign > 0 else reversed(layers)):
            op = layer.sampling_op(sign, dtype, memory_format)
            if isinstance(op, Affine1x1) and ops and isinstance(ops[-1], Affine1x1):
                ops[-1] = ops[-1].then(op)
            else:
                ops.append(op)
        if keep:
            while isinstance(ops[-1], _SamplingStep) and ops[-1].split >= keep:
                ops.pop()
            if isinstance(ops[-1], Affine1x1):
                ops[-1] = ops[-1].first_rows(keep)
        for op in ops:
            if isinstance(op, Affine1x1):
                op.prepare(memory_format)
        self.ops = ops

    def __call__(self, z: torch.Tensor, u: Optional[torch.Tensor] = None) -> torch.Tensor:
        u = None if u is None else CouplingInput(u, self.dtype, self.memory_format)
        # The steps update z in place: on a copy of the caller's.
        z = z.to(dtype=torch.float32, memory_format=self.memory_format, copy=True)
        for op in self.ops:
            z = op(z, u)
        return z
