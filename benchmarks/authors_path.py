"""The authors' inference computation (their sdflow_sr.py / sdflow_ds.py), re-expressed over this
project's modules, as the baseline of benchmarks/bench_inference.py.

It follows their code step by step in what costs time, with this project's weights:
- autograd off by `torch.no_grad()` (their `torch.set_grad_enabled(False)`), no inference mode;
- every invertible 1x1 convolution recomputes W = P (L + I) (U + diag) on every call, and its
  inverse with `torch.inverse` on every inverse call;
- squeezes by reshape / permute / contiguous; couplings split, concatenate [za, u], and
  concatenate [za, zb] back; the coupling nets reflect-pad explicitly and zero-pad their last
  convolution explicitly; log-scales and shifts are read from interleaved channels;
- after every coupling and injector of an inverse pass, a NaN / Inf scan of z (their
  `check_nan_inf`), and a scan of the log-determinant after every forward one;
- DS runs the whole f_HR *and f_HF* forward pass with log-determinants and the N(0, I) density
  of f_HF's output, only to keep z_c;
- the final `torch.where(isnan(x), rand_like(x), x)` of their scripts.
The networks without invertible parts (E and the RRDB condition networks) are this project's
modules: their computation is the authors' layer for layer. `check()` verifies that the results
equal the model's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_nan_inf(x):
    # Their ops.check_nan_inf: two full scans and a host sync.
    return bool(torch.isnan(x).any() or torch.isinf(x).any())


def _squeeze(z, reverse=False):
    b, c, h, w = z.shape
    if not reverse:
        z = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).contiguous()
        return z.reshape(b, 4 * c, h // 2, w // 2)
    z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).contiguous()
    return z.reshape(b, c // 4, h * 2, w * 2)


def _actnorm(an, z, ldj, reverse):
    h, w = z.shape[2:]
    if not reverse:
        z = torch.exp(an.log_scale) * (z + an.loc)
        return z, None if ldj is None else ldj + h * w * torch.sum(an.log_scale)
    z = z * torch.exp(-an.log_scale) - an.loc
    return z, None if ldj is None else ldj - h * w * torch.sum(an.log_scale)


def _invconv(c, z, ldj, reverse):
    h, w = z.shape[2:]
    weight = c.weight()
    if not reverse:
        return F.conv2d(z, weight[:, :, None, None]), None if ldj is None else ldj + h * w * torch.sum(c.log_abs_s)
    z = F.conv2d(z, weight.inverse()[:, :, None, None])
    return z, None if ldj is None else ldj - h * w * torch.sum(c.log_abs_s)


def _fcn(net, x):
    h = F.leaky_relu(F.conv2d(F.pad(x, [1] * 4, mode="reflect"), net.conv1.weight, net.conv1.bias), 0.01)
    h = F.leaky_relu(F.conv2d(h, net.conv2.weight, net.conv2.bias), 0.01)
    h = F.conv2d(F.pad(h, [1, 1, 1, 1], value=0), net.conv3.weight, net.conv3.bias)
    return h * torch.exp(net.out_log_scale * 3.0)


def _coupling(cp, z, ldj, u, reverse):
    za, zb = torch.split_with_sizes(z, [cp.split, z.shape[1] - cp.split], dim=1)
    h = _fcn(cp.net, za if u is None else torch.cat((za, u), 1))
    scale, shift = h[:, 0::2], h[:, 1::2]
    scale = 0.318 * torch.atan(2 * scale)
    if not reverse:
        zb = (zb + shift) * torch.exp(scale)
        z = torch.cat((za, zb), 1)
        ldj = ldj + scale.sum(dim=[1, 2, 3])
        _check_nan_inf(ldj)
        return z, ldj
    zb = zb * torch.exp(-scale) - shift
    if ldj is not None:
        ldj = ldj - scale.sum(dim=[1, 2, 3])
    z = torch.cat((za, zb), 1)
    _check_nan_inf(z)
    return z, ldj


def _injector(inj, z, ldj, u, reverse):
    h = _fcn(inj.net, u)
    scale, shift = h[:, 0::2], h[:, 1::2]
    scale = 0.318 * torch.atan(2 * scale)
    if not reverse:
        z = (z + shift) * torch.exp(scale)
        ldj = ldj + scale.sum(dim=[1, 2, 3])
        _check_nan_inf(ldj)
        return z, ldj
    z = z * torch.exp(-scale) - shift
    if ldj is not None:
        ldj = ldj - scale.sum(dim=[1, 2, 3])
    _check_nan_inf(z)
    return z, ldj


def _step(st, z, ldj, u=None, reverse=False):
    if not reverse:
        z, ldj = _actnorm(st.actnorm, z, ldj, False)
        z, ldj = _invconv(st.inv_conv, z, ldj, False)
        if u is not None:
            z, ldj = _injector(st.injector, z, ldj, u, False)
        if st.coupling is not None:
            z, ldj = _coupling(st.coupling, z, ldj, u, False)
        return z, ldj
    if st.coupling is not None:
        z, ldj = _coupling(st.coupling, z, ldj, u, True)
    if u is not None:
        z, ldj = _injector(st.injector, z, ldj, u, True)
    z, ldj = _invconv(st.inv_conv, z, ldj, True)
    return _actnorm(st.actnorm, z, ldj, True)


def _steps(seq, z, ldj, u=None, reverse=False):
    for st in (reversed(list(seq)) if reverse else seq):
        z, ldj = _step(st, z, ldj, u, reverse)
    return z, ldj


def _gaussian_logp(x, mean, log_std):
    return -0.5 * (log_std * 2.0 + ((x - mean) ** 2) / (torch.exp(log_std * 2.0) + 1e-6) + math.log(2 * math.pi))


def _gaussian_sample(mean, log_std, tau):
    if tau < 1e-6:
        return mean
    eps = torch.normal(mean=torch.zeros_like(mean), std=torch.ones_like(log_std) * tau)
    return mean + (torch.exp(log_std) + 1e-6) * eps


class AuthorsPath:
    def __init__(self, model):
        self.m = model

    def _hr_forward(self, y):
        """Their HRNet(y, zeros(1)): f_HR and the whole f_HF likelihood; returns z_c."""
        m, ldj = self.m, torch.zeros(1, device=y.device, dtype=y.dtype)
        z = y
        for level in m.f_hr.levels:
            z = _squeeze(z)
            z, ldj = _steps(level.transition, z, ldj)
            z, ldj = _steps(level.steps, z, ldj)
        za, zb = torch.split(z, [3, z.shape[1] - 3], dim=1)
        u = m.f_hf.cond_net(za.detach())
        zb, ldj = _steps(m.f_hf.steps, zb, ldj, u)
        ldj = ldj + _gaussian_logp(zb, torch.zeros_like(zb), torch.zeros_like(zb)).sum(dim=[1, 2, 3])
        return za, ldj

    def _hr_reverse(self, z_c, tau, hf_latent=None):
        m = self.m
        b, _, h, w = z_c.shape
        u = m.f_hf.cond_net(z_c.detach())
        mean = torch.zeros(b, 45, h, w, device=z_c.device, dtype=z_c.dtype)
        log_std = torch.zeros(b, 45, h, w, device=z_c.device, dtype=z_c.dtype)
        zb = _gaussian_sample(mean, log_std, tau) if hf_latent is None else hf_latent
        zb, _ = _steps(m.f_hf.steps, zb, None, u, reverse=True)
        z = torch.cat([z_c, zb], dim=1)
        _check_nan_inf(z)
        for level in reversed(list(m.f_hr.levels)):
            z, _ = _steps(level.steps, z, None, reverse=True)
            z, _ = _steps(level.transition, z, None, reverse=True)
            z = _squeeze(z, reverse=True)
        return z

    def super_resolve(self, lr, tau=0.8, hf_latent=None):
        with torch.no_grad():
            z_c = self.m.content_extractor(lr)
            y = self._hr_reverse(z_c, tau, hf_latent)
            return torch.where(torch.isnan(y), torch.rand_like(y), y)

    def downscale(self, hr, tau=0.8, deg_latent=None):
        m = self.m
        with torch.no_grad():
            z_c, _ = self._hr_forward(hr)
            u = m.f_deg.condition(z_c)
            if deg_latent is None:
                b, _, h, w = z_c.shape
                c, h, w = 12, h // 2, w // 2
                idx = torch.randint(m.deg_prior.num_components, (b,)).tolist()
                deg_latent = torch.cat([_gaussian_sample(m.deg_prior.means[i].expand(1, c, h, w),
                                                         m.deg_prior.log_stds[i].expand(1, c, h, w), tau)
                                        for i in idx], dim=0)
            z, _ = _steps(m.f_deg.steps, deg_latent, None, u, reverse=True)
            z, _ = _steps(m.f_deg.transition, z, None, reverse=True)
            z_d = _squeeze(z, reverse=True)
            z = _squeeze(z_c + z_d)  # their expand, reversed
            z, _ = _steps(m.f_lr.transition_out, z, None, reverse=True)
            z, _ = _steps(m.f_lr.steps, z, None, reverse=True)
            z, _ = _steps(m.f_lr.transition_in, z, None, reverse=True)
            x = _squeeze(z, reverse=True)
            return torch.where(torch.isnan(x), torch.rand_like(x), x)

    def check(self, lr, hr):
        """Relative errors of this path against the model's own (SR at tau 0, DS with a fixed latent)."""
        with torch.no_grad():
            a = self.super_resolve(lr, 0.0)
            b = self.m.super_resolve(lr, 0.0)
            d = self.m.sample_deg_latent(hr, 0.8)
            c = self.downscale(hr, deg_latent=d)
            e = self.m.downscale(hr, deg_latent=d)
        rel = lambda x, y: ((x - y).abs().max() / y.abs().max()).item()  # noqa: E731
        return rel(a, b), rel(c, e)
