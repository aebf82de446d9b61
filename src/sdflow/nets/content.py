"""The LR content extractor E: a plain CNN estimating the content z_c of an LR image."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from sdflow.nets.blur import LearntWidth
from sdflow.nets.fusing import exact, sampling_copy, scale_conv, set_weights
from sdflow.nets.precision import autocast_net
from sdflow.nets.rrdb import conv3x3

# The residual scale of the modulated blocks, and the epsilon of the modulation's gain.
BLOCK_RESIDUAL = 0.1
GAIN_EPS = 1e-6
# A blur width w enters a told E as (log w - log BLUR_REF) / BLUR_SCALE: about -1.7 to +0.9 over
# the widths the cycles draw (0.3 to 1.1 LR pixels).
BLUR_REF = 0.7
BLUR_SCALE = 0.5


class FeatureModulation(nn.Module):
    """t -> t * s + b with (s, b) predicted from the modulation features m; s is bounded by a
    learnable gain k = exp(g), tanh(s / k) * k, which starts at k = 1.

    Sampling form: `proj` split into its two halves (each output contiguous), 2 / (k + eps)
    folded into the first one, and tanh(s) written 2 sigmoid(2s) - 1: without AVX-512, PyTorch's
    tanh runs at a quarter of sigmoid's speed on a CPU, and it was a seventh of E's time."""

    fused = False

    def __init__(self, channels: int):
        super().__init__()
        self.log_gain = nn.Parameter(torch.zeros(1))
        self.proj = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, t, m):
        if self.fused:
            # t k tanh(s) + b = 2k t sigmoid(2s) - k t + b
            out = torch.addcmul(self.proj_b(m), t, torch.sigmoid_(self.proj_s(m)), value=2.0 * self.gain)
            return out.sub_(t, alpha=self.gain)
        s, b = self.proj(m).chunk(2, dim=1)
        k = torch.exp(self.log_gain)
        return t * (torch.tanh(s / (k + GAIN_EPS)) * k) + b

    def fold(self) -> None:
        k = math.exp(self.log_gain.item())
        c = self.proj.out_channels // 2
        w, b = exact(self.proj.weight), exact(self.proj.bias)
        # On the meta device: no initialisation (it would draw from torch's global generator).
        self.proj_s, self.proj_b = (nn.Conv2d(w.shape[1], c, 1, device="meta") for _ in range(2))
        set_weights(self.proj_s, w[:c] * (2.0 / (k + GAIN_EPS)), b[:c] * (2.0 / (k + GAIN_EPS)))
        set_weights(self.proj_b, w[c:], b[c:])
        self.gain = k
        del self.proj, self.log_gain


class ModulatedResBlock(nn.Module):
    # Sampling form: BLOCK_RESIDUAL folded into conv2.
    fused = False

    def __init__(self, channels: int):
        super().__init__()
        self.fm1 = FeatureModulation(channels)
        self.conv1 = conv3x3(channels, channels)
        self.fm2 = FeatureModulation(channels)
        self.conv2 = conv3x3(channels, channels)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, t, m):
        h = self.act(self.conv1(self.fm1(t, m)))
        out = self.conv2(self.fm2(h, m))
        return out.add_(t) if self.fused else t + BLOCK_RESIDUAL * out


class ContentExtractor(nn.Module):
    """E. With `blur` (a width in LR pixels; model.extractor_blur "learnt") E is told the width
    of the blur it undoes, as a bias of its first features: the cycles teach it to restore DS
    samples blurred by widths drawn per image, each with its width (no hedging between them, as
    a blind E must), and the width it assumes for real LR images is a parameter, `blur.sigma`,
    that training moves through SR of the real LR (the HR critic): a judge that compares with
    clean HR photos, where DS's judges, which moved `ds_blur`, were misled by the real LR's noise.
    Measured: it finds `severe`'s blur and not `realistic`'s, and SR gained less than a blind E
    trained at one width (docs/training.md, "A told E"). `sdflow sr --blur` sets it."""

    fused = False

    def __init__(self, channels: int = 64, num_blocks: int = 16, modulation_convs: int = 8,
                 zero_output: bool = False, blur: Optional[float] = None):
        super().__init__()
        self.head = nn.Sequential(conv3x3(3, channels), nn.LeakyReLU(0.2))
        self.blur = self.blur_embed = None
        if blur is not None:
            self.blur = LearntWidth(blur)
            self.blur_embed = nn.Linear(1, channels)
            # Told nothing at first: E starts as a blind one.
            nn.init.zeros_(self.blur_embed.weight)
            nn.init.zeros_(self.blur_embed.bias)
        layers = []
        for _ in range(modulation_convs):
            layers += [conv3x3(channels, channels), nn.LeakyReLU(0.2)]
        self.modulation = nn.Sequential(*layers)
        self.blocks = nn.ModuleList(ModulatedResBlock(channels) for _ in range(num_blocks))
        self.tail = nn.Sequential(conv3x3(channels, channels), nn.LeakyReLU(0.2), nn.Conv2d(channels, 3, 1))
        if zero_output:  # a correction to another content (ModelConfig.extractor): none at first
            nn.init.zeros_(self.tail[-1].weight)
            nn.init.zeros_(self.tail[-1].bias)

    def blur_bias(self, sigma: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The first features' bias for a blur of width `sigma` (a number, or one per image;
        None: the learnt width), shaped (N or 1, C, 1, 1)."""
        w = self.blur.sigma if sigma is None else torch.as_tensor(sigma, dtype=self.blur.raw.dtype,
                                                                  device=self.blur.raw.device)
        told = ((torch.log(w) - math.log(BLUR_REF)) / BLUR_SCALE).reshape(-1, 1)
        return self.blur_embed(told)[:, :, None, None]

    @autocast_net
    def forward(self, x, sigma=None):
        """E's output for LR images `x`; `sigma`: the blur width to assume (a told E only; the
        learnt one if None)."""
        if sigma is not None and (self.blur is None or self.fused):
            raise ValueError("only a told E (model.extractor_blur=learnt), and not its sampling form, "
                             "takes a blur width")
        a = self.head[0](x)
        if self.blur is not None and not self.fused:
            a = a + self.blur_bias(sigma).to(a.dtype)
        a = self.head[1](a)
        m = self.modulation(a)
        t = a
        for block in self.blocks:
            t = block(t, m)
        return self.tail(t.add_(a) if self.fused else a + t)

    def fused_copy(self, dtype: torch.dtype, memory_format: torch.memory_format) -> "ContentExtractor":
        """This network for sampling (`sdflow.nets.fusing`), computing in `dtype`."""
        return sampling_copy(self, dtype, memory_format, _fold_extractor)


def _fold_extractor(net: ContentExtractor) -> None:
    if net.blur is not None:
        # The learnt width is a constant when sampling: its bias joins the first convolution's.
        conv = net.head[0]
        set_weights(conv, exact(conv.weight), exact(conv.bias) + exact(net.blur_bias()).flatten())
        net.blur = net.blur_embed = None
    for block in net.blocks:
        block.fm1.fold()
        block.fm2.fold()
        scale_conv(block.conv2, BLOCK_RESIDUAL)
