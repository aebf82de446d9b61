"""The LR content extractor E: a plain CNN estimating the content z_c of an LR image."""
from __future__ import annotations

import torch
import torch.nn as nn

from sdflow.nets.precision import autocast_net
from sdflow.nets.rrdb import _conv3


class FeatureModulation(nn.Module):
    """t -> t * s + b with (s, b) predicted from the modulation features m; s is bounded by a
    learnable gain k = exp(g), tanh(s / k) * k, which starts at k = 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.log_gain = nn.Parameter(torch.zeros(1))
        self.proj = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, t, m):
        s, b = self.proj(m).chunk(2, dim=1)
        k = torch.exp(self.log_gain)
        return t * (torch.tanh(s / (k + 1e-6)) * k) + b


class ModulatedResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.fm1 = FeatureModulation(channels)
        self.conv1 = _conv3(channels, channels)
        self.fm2 = FeatureModulation(channels)
        self.conv2 = _conv3(channels, channels)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, t, m):
        h = self.act(self.conv1(self.fm1(t, m)))
        return t + 0.1 * self.conv2(self.fm2(h, m))


class ContentExtractor(nn.Module):
    def __init__(self, channels: int = 64, num_blocks: int = 16, modulation_convs: int = 8):
        super().__init__()
        self.head = nn.Sequential(_conv3(3, channels), nn.LeakyReLU(0.2))
        layers = []
        for _ in range(modulation_convs):
            layers += [_conv3(channels, channels), nn.LeakyReLU(0.2)]
        self.modulation = nn.Sequential(*layers)
        self.blocks = nn.ModuleList(ModulatedResBlock(channels) for _ in range(num_blocks))
        self.tail = nn.Sequential(_conv3(channels, channels), nn.LeakyReLU(0.2), nn.Conv2d(channels, 3, 1))

    @autocast_net
    def forward(self, x):
        a = self.head(x)
        m = self.modulation(a)
        t = a
        for block in self.blocks:
            t = block(t, m)
        return self.tail(a + t)
