"""Networks used only for training: the discriminators and a VGG-19 feature extractor.

The discriminators carry no normalisation layers and no buffers: the generator's
adversarial term evaluates them with detached parameters (`torch.func.functional_call`),
which is only exact when the forward pass has no state of its own, and instance norm
would fail on the 1x1 maps that tiny patches produce.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdflow.nets.precision import autocast_net


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: `layers` stride-2 4x4 convolutions, then two stride-1 ones, giving a
    map of per-patch scores (receptive field 70 px for layers=3, as in pix2pix)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError("a PatchDiscriminator needs at least one stride-2 layer")
        mods: List[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = channels
        for i in range(1, layers):
            nc = channels * min(2 ** i, 8)
            mods += [nn.Conv2d(c, nc, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c = nc
        nc = channels * min(2 ** layers, 8)
        mods += [nn.Conv2d(c, nc, 4, 1, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(nc, 1, 4, 1, 1)]
        self.net = nn.Sequential(*mods)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def min_input(self) -> int:
        """Smallest input side that still leaves a 1x1 score map."""
        n = sum(1 for m in self.net if isinstance(m, nn.Conv2d) and m.stride == (2, 2))
        return 2 ** n * 3

    @autocast_net
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContentDiscriminator(nn.Module):
    """Critic of content maps (3 channels, LR size): which side, HR or LR, a z_c came from.
    3x3 convolutions with `layers` stride-2 reductions keep it usable on 4x4 maps."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 2):
        super().__init__()
        mods: List[nn.Module] = [nn.Conv2d(in_channels, channels, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        c = channels
        for i in range(layers):
            nc = channels * min(2 ** (i + 1), 4)
            mods += [nn.Conv2d(c, nc, 3, 2, 1), nn.LeakyReLU(0.2, True)]
            c = nc
        mods += [nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    @autocast_net
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


# ----- VGG-19 --------------------------------------------------------------------------------

# The 16 convolutions of VGG-19 (configuration "E"), "M" = 2x2 max-pool. The module indices
# of `features` below follow the classic layout, so a torchvision-format state dict
# ("features.0.weight", ...) loads unchanged.
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"]


def _vgg_layer_names() -> Dict[str, int]:
    """'conv3_4' / 'relu3_4' / 'pool3' -> index into `features`."""
    names, block, conv, i = {}, 1, 0, 0
    for v in _VGG19:
        if v == "M":
            names[f"pool{block}"] = i
            block, conv, i = block + 1, 0, i + 1
        else:
            conv += 1
            names[f"conv{block}_{conv}"] = i
            names[f"relu{block}_{conv}"] = i + 1
            i += 2
    return names


VGG_LAYERS = _vgg_layer_names()


class VGG19Features(nn.Module):
    """Frozen VGG-19 feature extractor for images in [-1, 1]. No weights ship with sdflow:
    `from_file` loads a user's state dict (torchvision's `vgg19-*.pth` layout)."""

    def __init__(self, layers: Sequence[str] = ("conv2_2", "conv3_4", "conv4_4")):
        super().__init__()
        bad = [n for n in layers if n not in VGG_LAYERS]
        if bad:
            raise ValueError(f"unknown VGG-19 layers {bad}; valid: conv1_1 .. conv5_4, relu*, pool1..5")
        self.layers = list(layers)
        self._index = {VGG_LAYERS[n]: n for n in self.layers}
        last = max(self._index)
        mods: List[nn.Module] = []
        c = 3
        for v in _VGG19:
            if v == "M":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods += [nn.Conv2d(c, v, 3, 1, 1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*mods[:last + 1])  # layers past the deepest one are dead weight
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # Always in eval mode: it is a fixed measuring instrument, never trained.
        return super().train(False)

    @classmethod
    def from_file(cls, path, layers: Sequence[str] = ("conv2_2", "conv3_4", "conv4_4")) -> "VGG19Features":
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
                sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: not a state dict")
        net = cls(layers)
        net.load_features(sd, str(path))
        return net

    def load_features(self, sd: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        ours = {}
        for k, v in sd.items():
            k = k[7:] if k.startswith("module.") else k
            k = k[4:] if k.startswith("vgg.") else k
            if k.startswith("features."):
                idx = int(k.split(".")[1])
                if idx < len(self.features):
                    ours[k] = v
        want = {k for k in self.state_dict() if k.startswith("features.")}
        missing = sorted(want - set(ours))
        if missing:
            raise ValueError(f"{source}: not VGG-19 weights in torchvision layout (missing {missing[:3]}...)")
        self.load_state_dict(ours, strict=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = ((x + 1) * 0.5 - self.mean) / self.std
        out = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self._index:
                out[self._index[i]] = x
        return out


def perceptual_distance(vgg: VGG19Features, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the chosen layers of the L1 distance between VGG features; `b` is the
    target and gets no gradient."""
    fa = vgg(a)
    with torch.no_grad():
        fb = vgg(b)
    return sum(F.l1_loss(fa[n], fb[n]) for n in vgg.layers) / len(vgg.layers)


__all__ = ["PatchDiscriminator", "ContentDiscriminator", "VGG19Features", "VGG_LAYERS", "perceptual_distance"]
