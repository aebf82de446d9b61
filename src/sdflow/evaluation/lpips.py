"""LPIPS (Zhang et al. 2018) for `sdflow eval --lpips-weights`: the network, and the weight files it reads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

PathLike = Union[str, os.PathLike]


# torchvision's layer lists (indices matter: they are the state-dict keys), and the ReLU outputs
# LPIPS compares (Zhang et al. 2018): AlexNet relu1..relu5, VGG-16 relu1_2 .. relu5_3.
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 64, 192, 5, 1, 2), ("relu",),
         ("pool", 3, 2), ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1),
         ("relu",), ("conv", 256, 256, 3, 1, 1), ("relu",)]


_VGG_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]

_BACKBONES = {"alex": (_ALEX, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
              "vgg": (None, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512))}


def _vgg_layers():
    layers, c_in = [], 3
    for v in _VGG_PLAN:
        if v == "M":
            layers.append(("pool", 2, 2))
        else:
            layers += [("conv", c_in, v, 3, 1, 1), ("relu",)]
            c_in = v
    return layers


def _build(spec):
    mods = []
    for s in spec:
        if s[0] == "conv":
            mods.append(nn.Conv2d(s[1], s[2], s[3], stride=s[4], padding=s[5]))
        elif s[0] == "relu":
            mods.append(nn.ReLU())
        else:
            mods.append(nn.MaxPool2d(s[1], stride=s[2]))
    return nn.Sequential(*mods)


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018): unit-normalised backbone activations of both images, squared
    differences weighted by learned 1x1 convolutions, averaged over space and summed over layers.
    Inputs are [N,3,H,W] in [-1, 1]; the output is [N]. No weights ship with sdflow: see
    `load_lpips` for the files it reads."""

    # The backbone's ImageNet input normalisation, expressed for inputs in [-1, 1].
    NORM_SHIFT = (-0.030, -0.088, -0.188)
    NORM_SCALE = (0.458, 0.448, 0.450)

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in _BACKBONES:
            raise ValueError(f"net must be one of {tuple(_BACKBONES)}, got {net!r}")
        spec, self.taps, channels = _BACKBONES[net]
        self.net = net
        self.features = _build(spec if spec is not None else _vgg_layers())
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(self.NORM_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.NORM_SCALE).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x):
        x = (x - self.shift) / self.scale
        out, last = [], self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                # The epsilon is LPIPS's own; it keeps all-zero activations at 0 instead of NaN.
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if i == last:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0
        for lin, a, b in zip(self.lins, self._taps(x), self._taps(y)):
            total = total + lin((a - b).pow(2)).mean((2, 3))
        return total.flatten()


def _lpips_key(key: str) -> Optional[str]:
    """Our name for a key of the files load_lpips accepts; None for keys it does not need."""
    parts = key.split(".")
    if parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):
        return f"features.{parts[2]}.{parts[3]}"            # the lpips package: net.sliceK.N.weight
    if parts[0] == "features" and len(parts) == 3:
        return key                                          # torchvision: features.N.weight
    if parts[0].startswith("lin") and parts[0][3:].isdigit():
        return f"lins.{parts[0][3:]}.{parts[-1]}"           # linK.model.1.weight or linK.weight
    return None


def load_lpips(path: PathLike, device="cpu") -> LPIPS:
    """An LPIPS network with the weights in `path` (.pth / .pt via torch.load with weights_only, or
    .safetensors). The file must hold the backbone and the five linear layers, as
    `torch.save(lpips.LPIPS(net="alex").state_dict(), path)` of the `lpips` package writes it
    (keys net.sliceK.N.*, linK.model.1.weight); torchvision-style backbone keys (features.N.*) next
    to the linK.* keys work too. The backbone (AlexNet or VGG-16) is told by its keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LPIPS weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        raw = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    state = {}
    for k, v in raw.items():
        ours = _lpips_key(k)
        if ours is not None:
            state[ours] = v
    net = "vgg" if "features.28.weight" in state else "alex"
    model = LPIPS(net)
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ValueError(f"{path}: not a complete LPIPS ({net}) state dict; missing "
                         f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    return model.to(device).eval()
