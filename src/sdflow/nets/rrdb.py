"""RRDB condition networks (non-invertible) that turn a content map into the condition u."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdflow.nets.fusing import sampling_copy, scale_conv
from sdflow.nets.precision import autocast_net

# Residual scales of a dense block and of an RRDB (ESRGAN's).
DENSE_RESIDUAL = 0.2
RRDB_RESIDUAL = 0.2


def _small_init(module: nn.Module, gain: float = 0.1) -> None:
    # Residual trunks start close to the identity; the authors scale Xavier init by 0.1.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            m.weight.data.mul_(gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResidualDenseBlock(nn.Module):
    # Sampling form: DENSE_RESIDUAL folded into the last convolution, activations in place.
    fused = False

    def __init__(self, channels: int = 64, growth: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth if i < 4 else channels, 3, padding=1)
            for i in range(5)
        )

    def forward(self, x):
        feats = [x]
        for conv in self.convs[:4]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2, inplace=self.fused))
        out = self.convs[4](torch.cat(feats, 1))
        return out.add_(x) if self.fused else out * DENSE_RESIDUAL + x


class RRDB(nn.Module):
    fused = False

    def __init__(self, channels: int = 64, growth: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x):
        out = self.blocks(x)
        return out.mul_(RRDB_RESIDUAL).add_(x) if self.fused else out * RRDB_RESIDUAL + x


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    """The 3x3 convolution of E and of the condition networks' head and tail: reflect padding."""
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")


class ConditionNet(nn.Module):
    """CN(in, nb): head conv, nb RRDBs with a long skip, and a two-conv tail."""

    def __init__(self, in_channels: int, num_blocks: int, channels: int = 64, growth: int = 32):
        super().__init__()
        self.head = conv3x3(in_channels, channels)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(num_blocks)))
        self.body_out = conv3x3(channels, channels)
        self.tail = nn.Sequential(conv3x3(channels, channels), nn.LeakyReLU(0.2), conv3x3(channels, channels))
        _small_init(self)

    @autocast_net
    def forward(self, x):
        a = self.head(x)
        return self.tail(self.body_out(self.body(a)) + a)

    def fused_copy(self, dtype: torch.dtype, memory_format: torch.memory_format) -> "ConditionNet":
        """This network for sampling (`sdflow.nets.fusing`), computing in `dtype`."""
        return sampling_copy(self, dtype, memory_format, _fold_condition_net)


def _fold_condition_net(net: ConditionNet) -> None:
    for block in net.modules():
        if isinstance(block, ResidualDenseBlock):
            scale_conv(block.convs[4], DENSE_RESIDUAL)
