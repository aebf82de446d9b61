"""RRDB condition networks (non-invertible) that turn a content map into the condition u."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdflow.nets.precision import autocast_net


def _small_init(module: nn.Module, gain: float = 0.1) -> None:
    # Residual trunks start close to the identity; the authors scale Xavier init by 0.1.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            m.weight.data.mul_(gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResidualDenseBlock(nn.Module):
    def __init__(self, channels: int = 64, growth: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth if i < 4 else channels, 3, padding=1)
            for i in range(5)
        )

    def forward(self, x):
        feats = [x]
        for conv in self.convs[:4]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.convs[4](torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, channels: int = 64, growth: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x):
        return self.blocks(x) * 0.2 + x


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")


class ConditionNet(nn.Module):
    """CN(in, nb): head conv, nb RRDBs with a long skip, and a two-conv tail."""

    def __init__(self, in_channels: int, num_blocks: int, channels: int = 64, growth: int = 32):
        super().__init__()
        self.head = _conv3(in_channels, channels)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(num_blocks)))
        self.body_out = _conv3(channels, channels)
        self.tail = nn.Sequential(_conv3(channels, channels), nn.LeakyReLU(0.2), _conv3(channels, channels))
        _small_init(self)

    @autocast_net
    def forward(self, x):
        a = self.head(x)
        return self.tail(self.body_out(self.body(a)) + a)
