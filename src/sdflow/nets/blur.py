"""The blur of DS's content picture, learnt (model.ds_blur "learnt"): DS's deterministic part.

With `ds_content` "picture", DS decodes f_LR of the HR's bicubic downscale blurred by a Gaussian,
and f_Deg adds what is random. f_Deg's samples do not blur further: the DS samples' mid band
(1-3 LR pixels) loses what that Gaussian removes, 11 % at 0.7 pixels, on every degradation alike,
where the real LR loses 16 % (realistic), 20 % (severe) or 4 % (camera's sharpened photos)
(docs/training.md, "A learnt blur"). The cycles then teach E to undo the fixed blur, whatever the
real one is. Here the Gaussian's width is a parameter the DS statistics and critics move.

Measured: they move it down on every family (0.7 to about 0.5), the real LR's blur or not: they
see its noise and resampling artefacts, not the blur under them. An option, not the recipe."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from sdflow.resize import separable_blur

# Kernel radius in LR pixels: 3 sigma of the widest blur worth learning (1.67 px, a mid band lost
# by 40 %); a wider sigma is truncated, still normalised.
RADIUS = 5
# Adam moves each parameter by about the learning rate a step, whatever its gradient's scale. The
# log-width moves RATE times that, so that 1000 steps at 5e-4 can take 0.7 px to 0.3 or to 1.6.
RATE = 4.0


class LearntWidth(nn.Module):
    """A blur width in LR pixels, learnt as a log so that it stays positive and moves by a
    proportion of itself; `sigma` is differentiable."""

    def __init__(self, sigma: float):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"a learnt blur starts from a positive width, got {sigma}")
        self.raw = nn.Parameter(torch.tensor(math.log(sigma) / RATE))

    @property
    def sigma(self) -> torch.Tensor:
        return torch.exp(self.raw * RATE)

    @torch.no_grad()
    def set_(self, sigma: float) -> None:
        self.raw.fill_(math.log(sigma) / RATE)


class ContentBlur(LearntWidth):
    """x -> x blurred by a separable Gaussian of learnt width `sigma` (LR pixels), padded as
    `gaussian_blur` pads; differentiable in x and in sigma."""

    def kernel(self, dtype: torch.dtype) -> torch.Tensor:
        t = torch.arange(-RADIUS, RADIUS + 1, dtype=dtype, device=self.raw.device)
        k = torch.exp(-0.5 * (t / self.sigma.to(dtype)) ** 2)
        return k / k.sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return separable_blur(x, self.kernel(x.dtype))
