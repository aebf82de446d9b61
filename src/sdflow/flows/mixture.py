"""The prior of f_Deg: a mixture of scalar Gaussians, evaluated per latent element."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn


def _gaussian_logp(z, mean, log_std):
    # The authors' form, with 1e-6 added to the variance; kept for exact parity.
    return -0.5 * (2 * log_std + (z - mean) ** 2 / (torch.exp(2 * log_std) + 1e-6) + math.log(2 * math.pi))


class GaussianMixturePrior(nn.Module):
    def __init__(self, components: int = 16):
        super().__init__()
        self.means = nn.Parameter(torch.randn(components))
        self.log_stds = nn.Parameter(torch.zeros(components))

    @property
    def num_components(self) -> int:
        return self.means.numel()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Per-sample sum over elements of log( (1/K) sum_k N(z_e; mu_k, sigma_k) )."""
        lp = _gaussian_logp(z.unsqueeze(-1), self.means, self.log_stds)
        per_element = torch.logsumexp(lp, dim=-1) - math.log(self.num_components)
        return per_element.flatten(1).sum(1)

    def _components(self, component) -> torch.Tensor:
        k = self.num_components
        if component is None:
            ids = list(range(k))
        else:
            # One index (int, numpy integer, 0-d tensor) or a sequence of them; bools and
            # fractions are mistakes, not indices.
            if hasattr(component, "ndim"):   # numpy arrays and scalars, tensors
                items = component.reshape(-1).tolist()
            elif isinstance(component, Iterable) and not isinstance(component, (str, bytes)):
                items = list(component)
            else:
                items = [component]
            if any(isinstance(c, bool) or not float(c).is_integer() for c in items):
                raise ValueError(f"mixture components are whole numbers in [0, {k - 1}], got {component!r}")
            ids = [int(c) for c in items]
        if not ids or any(not 0 <= c < k for c in ids):
            raise ValueError(f"mixture components must be in [0, {k - 1}], got {component!r}")
        return torch.tensor(ids, device=self.means.device)

    def sample(self, shape, tau: float = 0.8,
               component: Optional[Union[int, Sequence[int]]] = None, sampler: str = "image",
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Sample z' of `shape` ([B, ...]).

        sampler="image": one component per image (uniform over `component`), every element drawn
        from it: the authors' sampler. sampler="element": one component per element, i.e. the
        mixture density that the likelihood uses.
        """
        ids = self._components(component)
        dev, dtype = self.means.device, self.means.dtype
        if sampler == "image":
            pick_shape = (shape[0],) + (1,) * (len(shape) - 1)
        elif sampler == "element":
            pick_shape = tuple(shape)
        else:
            raise ValueError(f"sampler must be 'image' or 'element', got {sampler!r}")
        pick = torch.randint(len(ids), pick_shape, generator=generator, device=dev)
        k = ids[pick]
        eps = torch.randn(tuple(shape), generator=generator, device=dev, dtype=dtype)
        return self.means[k] + (torch.exp(self.log_stds[k]) + 1e-6) * tau * eps
