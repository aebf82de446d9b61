"""Fast inference: a fused, inference-only snapshot of an SDFlow.

    fast = sdflow.fast.FastSDFlow(model)                  # or model.fuse_for_inference()
    sr = fast.super_resolve(lr, tau=0.8, generator=g)     # same signature and results as the model's
    lr = fast.downscale(hr, tau=0.8, generator=g)
    c = fast.sr_condition(lr)                             # several samples of one image: E and
    srs = [fast.super_resolve(lr, 0.8, g, condition=c) for g in gens]  # f_HF's condition net once

`FastSDFlow` copies the weights of a trained `SDFlow` into plain tensors, rearranged for speed,
and leaves the model itself untouched (build a new one after changing the model's weights). It
runs under `torch.inference_mode` and computes no log-determinants. Its float32 results equal
the model's up to float rounding (relative error ~1e-6, checked by tests/test_fast_path.py), by
these exact rewrites:

- Every run of consecutive linear flow layers (ActNorm, invertible 1x1 convolution, and the
  coupling-free transition blocks) is composed, in float64, into one 1x1 convolution with a
  bias; inverse flows use its inverse, also formed in float64. W and W^-1 are computed once.
- Constant factors are folded into the convolution before them: the coupling nets' output
  scale exp(3 * logs) and the 2 inside atan(2 * s); the residual scales 0.2 (RRDB dense block)
  and 0.1 (modulated residual block); the 1 / (k + 1e-6) of feature modulation.
- The scale and shift outputs of coupling / injector nets are reordered to two contiguous halves
  instead of interleaved channels.
- A conditional flow reflect-pads its condition u once, not once per step, and its couplings
  read [za, u] from one buffer that holds the padded u, so no step concatenates u again.
- Downscaling needs only z_c (3 channels) of f_HR(y): f_HR's last coupling leaves those
  channels alone and is skipped, and of the last 1x1 convolution only 3 rows are computed.
- Activations are updated in place where the input is no longer needed.
- Unconditional couplings (f_HR, f_LR) run in bands of rows (`BAND_BYTES`), each band's nets on
  its rows plus one row of context per side; the coupling leaves za alone, so this is exact.
- Float32 convolutions are IEEE float32 during the calls (`ieee_float32`): on CUDA cuDNN's
  default TF32, and on a CPU a user-set oneDNN bf16 / TF32 mode, would cost ~1e-3 relative
  error, far above the float rounding above.
- Channels-last memory format (`channels_last`, default on CPU and CUDA): oneDNN's 3x3
  convolutions run faster on NHWC tensors. On the 2-core CPU of docs/performance.md this is
  most of the gain.

`precision` "bf16" / "fp16" runs the condition networks and the coupling and injector nets of
f_HR, f_HF and f_Deg in that type, while the flow state z, the 1x1 convolutions and the affine
updates stay float32, which keeps the flow inversions themselves accurate. E and f_LR stay
float32 whatever the precision: their outputs reach the image almost unchanged (z_c is decoded
straight into the SR image; f_LR^-1 makes the DS image), and with trained weights their bf16
rounding cost most of the difference from float32 (the bundled model: SR 39.6 dB PSNR against
float32 with E in bf16, 62 dB with E in float32; DS 55 dB with f_LR in bf16), for little time
(E is 17% of an SR call's FLOPs, f_LR under 1% of DS's). bf16 is fast on CPUs with AVX512-BF16 /
AMX and on GPUs; fp16 is for CUDA (on CPU it runs, slowly). Their cost in quality is measured in
docs/performance.md.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdflow.flows.flows import ConditionalFlow, HRFlow, LRFlow, SqueezeLevel
from sdflow.flows.layers import (ActNorm, AffineCoupling, AffineInjector, Expand, FlowSequence, FlowStep,
                                 InvConv1x1, Squeeze)
from sdflow.model import (CONTENT_CHANNELS, SCALE, Condition, SDFlow, _check_latent, _checked, _image_input,
                          deg_latent_shape, hf_latent_shape, image_fingerprint, padded_hr, padded_lr)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["FastSDFlow", "PRECISIONS", "prepare"]


def prepare(model: SDFlow, precision: str = "fp32", channels_last: Optional[bool] = None) -> "FastSDFlow":
    """`FastSDFlow(model, precision, channels_last)`; a FastSDFlow is returned as it is when it
    already has these settings."""
    if isinstance(model, FastSDFlow):
        if model.precision == precision and (channels_last is None or channels_last == model.channels_last):
            return model
        model = model.source
    return FastSDFlow(model, precision, channels_last)


# ----- building blocks ---------------------------------------------------------------------

class _Spec:
    """Where and how prepared weights live: the nets' dtype, the memory format, the device."""

    def __init__(self, dtype: torch.dtype, fmt: torch.memory_format, device: torch.device):
        self.dtype, self.fmt, self.device = dtype, fmt, device

    def put(self, t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        t = t.to(device=self.device, dtype=dtype or self.dtype)
        return t.contiguous(memory_format=self.fmt) if t.dim() == 4 else t.contiguous()


def _f64(t: torch.Tensor) -> torch.Tensor:
    # Weights are combined in float64 on the CPU (some devices, e.g. MPS, have no float64).
    return t.detach().to("cpu", torch.float64)


class _Conv:
    """A convolution with weights prepared once (type, memory format, folded factors)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int, reflect: bool,
                 spec: "_Spec"):
        self.weight = spec.put(weight)
        self.bias = None if bias is None else spec.put(bias)
        self.padding = padding
        self.reflect = reflect and padding > 0

    @classmethod
    def of(cls, conv: nn.Conv2d, spec: "_Spec", scale: float = 1.0) -> "_Conv":
        w, b = _f64(conv.weight), None if conv.bias is None else _f64(conv.bias)
        if scale != 1.0:
            w, b = w * scale, None if b is None else b * scale
        return cls(w, b, conv.padding[0], conv.padding_mode == "reflect", spec)

    def __call__(self, x: torch.Tensor, padded: bool = False) -> torch.Tensor:
        """`padded`: x already carries this convolution's reflect padding."""
        if self.reflect:
            if not padded:
                x = F.pad(x, (self.padding,) * 4, mode="reflect")
            return F.conv2d(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


def _lrelu_(x: torch.Tensor, slope: float) -> torch.Tensor:
    return F.leaky_relu_(x, slope)


class _Extractor:
    """The content extractor E."""

    def __init__(self, e, spec):
        self.head = _Conv.of(e.head[0], spec)
        self.modulation = [_Conv.of(c, spec) for c in e.modulation if isinstance(c, nn.Conv2d)]
        self.blocks = [(self._fm(b.fm1, spec), _Conv.of(b.conv1, spec),
                        self._fm(b.fm2, spec), _Conv.of(b.conv2, spec, scale=0.1))
                       for b in e.blocks]
        self.tail = _Conv.of(e.tail[0], spec)
        self.out = _Conv.of(e.tail[2], spec)

    @staticmethod
    def _fm(fm, spec):
        # s = tanh(proj_s(m) / (k + 1e-6)) * k, with the division folded into proj_s; the two
        # halves of proj become two convolutions so that each output is contiguous.
        k = math.exp(fm.log_gain.item())
        c = fm.proj.out_channels // 2
        w, b = _f64(fm.proj.weight), _f64(fm.proj.bias)
        inv = 1.0 / (k + 1e-6)
        return (_Conv(w[:c] * inv, b[:c] * inv, 0, False, spec), _Conv(w[c:], b[c:], 0, False, spec), k)

    @staticmethod
    def _modulate(t, m, fm):
        proj_s, proj_b, k = fm
        s = torch.tanh_(proj_s(m))
        return torch.addcmul(proj_b(m), t, s, value=k)

    def __call__(self, x):
        a = _lrelu_(self.head(x), 0.2)
        m = a
        for conv in self.modulation:
            m = _lrelu_(conv(m), 0.2)
        t = a
        for fm1, conv1, fm2, conv2 in self.blocks:
            h = _lrelu_(conv1(self._modulate(t, m, fm1)), 0.2)
            t = conv2(self._modulate(h, m, fm2)).add_(t)
        return self.out(_lrelu_(self.tail(t.add_(a)), 0.2))


class _CondNet:
    """An RRDB condition network (with f_Deg's pixel-unshuffle projection when `proj` is given)."""

    def __init__(self, cn, proj, spec):
        self.head = _Conv.of(cn.head, spec)
        self.body = [[[_Conv.of(c, spec, scale=0.2 if i == 4 else 1.0) for i, c in enumerate(rdb.convs)]
                      for rdb in rrdb.blocks] for rrdb in cn.body]
        self.body_out = _Conv.of(cn.body_out, spec)
        self.tail = (_Conv.of(cn.tail[0], spec), _Conv.of(cn.tail[2], spec))
        self.proj = None if proj is None else _Conv.of(proj, spec)

    def __call__(self, x):
        a = self.head(x)
        h = a
        for rrdb in self.body:
            skip = h
            for convs in rrdb:
                feats = h
                for conv in convs[:4]:
                    feats = torch.cat([feats, _lrelu_(conv(feats), 0.2)], 1)
                h = convs[4](feats).add_(h)
            h = h.mul_(0.2).add_(skip)
        u = self.tail[1](_lrelu_(self.tail[0](self.body_out(h).add_(a)), 0.2))
        if self.proj is not None:
            u = _lrelu_(self.proj(F.pixel_unshuffle(u, 2)), 0.2)
        return u


class _AffineNet:
    """A coupling / injector net returning (pre-atan log-scale, shift) as contiguous halves."""

    def __init__(self, net, spec):
        self.conv1 = _Conv.of(net.conv1, spec)
        self.conv2 = _Conv.of(net.conv2, spec)
        n = net.conv3.out_channels // 2
        gain = torch.exp(3 * _f64(net.out_log_scale)).flatten()
        w, b = _f64(net.conv3.weight) * gain[:, None, None, None], _f64(net.conv3.bias) * gain
        order = torch.cat([torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)])
        w, b = w[order], b[order]
        # atan(2 s): the 2 goes into the scale rows.
        w[:n] *= 2
        b[:n] *= 2
        self.conv3 = _Conv(w, b, 1, False, spec)
        self.n = n
        self.hidden = net.conv1.out_channels

    def __call__(self, x_padded):
        h = _lrelu_(self.conv1(x_padded, padded=True), 0.01)
        h = self.conv3(_lrelu_(self.conv2(h), 0.01)).float()
        return h[:, :self.n], h[:, self.n:]

    def rows(self, x_padded, r0: int, r1: int):
        """Rows r0:r1 of `self(x_padded)`: the first two convolutions on those rows and one more
        on each side (the last one's context), the last one zero-padded at the image's own top
        and bottom only."""
        height = x_padded.shape[-2] - 2
        a, b = max(r0 - 1, 0), min(r1 + 1, height)
        h = _lrelu_(self.conv1(x_padded[..., a:b + 2, :], padded=True), 0.01)
        h = _lrelu_(self.conv2(h), 0.01)
        if a == r0 or b == r1:
            h = F.pad(h, (0, 0, int(a == r0), int(b == r1)))
        h = F.conv2d(h, self.conv3.weight, self.conv3.bias, padding=(0, 1)).float()
        return h[:, :self.n], h[:, self.n:]


# Unconditional couplings (f_HR, f_LR) run in bands of rows whose hidden activations take about
# BAND_BYTES: whole, f_HR's level 1 holds two 64-channel maps at HR/2 (16 MB each for a 128x128
# LR), fresh pages that the kernel must zero on every call; bands stay in cache and are reused.
BAND_BYTES = 4 << 20
BAND_MIN_ROWS = 16


def _exp_scale_(s: torch.Tensor, sign: float) -> torch.Tensor:
    """exp(+-0.318 * atan(s)), in place on s."""
    return torch.atan_(s).mul_(sign * 0.318).exp_()


# ----- flows as programs of fused operations ----------------------------------------------

class _Affine:
    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        self.w, self.b = w, b  # float64 until finalised

    def inverse(self):
        w_inv = torch.linalg.inv(self.w)
        return _Affine(w_inv, -(w_inv @ self.b))

    def then(self, other: "_Affine") -> "_Affine":
        return _Affine(other.w @ self.w, other.w @ self.b + other.b)

    def finalise(self, spec):
        # The flow state stays float32 whatever the nets' precision.
        self.weight = spec.put(self.w[:, :, None, None], torch.float32)
        self.bias = spec.put(self.b, torch.float32)

    def __call__(self, z, ctx):
        return F.conv2d(z, self.weight, self.bias)


class _Shuffle:
    def __init__(self, unshuffle: bool):
        self.unshuffle = unshuffle

    def inverse(self):
        return _Shuffle(not self.unshuffle)

    def __call__(self, z, ctx):
        return F.pixel_unshuffle(z, 2) if self.unshuffle else F.pixel_shuffle(z, 2)


class _Injector:
    def __init__(self, layer: AffineInjector, reverse: bool = False):
        self.layer, self.reverse = layer, reverse

    def inverse(self):
        return _Injector(self.layer, not self.reverse)

    def finalise(self, spec):
        self.net = _AffineNet(self.layer.net, spec)

    def __call__(self, z, ctx):
        s, shift = self.net(ctx.u_padded)
        if self.reverse:
            return z.mul_(_exp_scale_(s, -1.0)).sub_(shift)
        return z.add_(shift).mul_(_exp_scale_(s, 1.0))


class _Coupling:
    def __init__(self, layer: AffineCoupling, reverse: bool = False):
        self.layer, self.reverse, self.split = layer, reverse, layer.split

    def inverse(self):
        return _Coupling(self.layer, not self.reverse)

    def finalise(self, spec):
        self.net = _AffineNet(self.layer.net, spec)

    def __call__(self, z, ctx):
        za_padded = F.pad(z[:, :self.split], (1, 1, 1, 1), mode="reflect")
        if ctx.u_padded is not None:
            self._update(z[:, self.split:], *self.net(ctx.coupling_input(self.split, za_padded)))
            return z
        # The couplings leave za alone, so zb can be updated band by band from za.
        inp = za_padded.to(ctx.dtype)
        height = z.shape[-2]
        row_bytes = z.shape[0] * z.shape[-1] * self.net.hidden * ctx.dtype.itemsize
        rows = max(BAND_MIN_ROWS, BAND_BYTES // row_bytes)
        for r0 in range(0, height, rows):
            r1 = min(r0 + rows, height)
            self._update(z[:, self.split:, r0:r1], *self.net.rows(inp, r0, r1))
        return z

    def _update(self, zb, s, shift):
        if self.reverse:
            zb.mul_(_exp_scale_(s, -1.0)).sub_(shift)
        else:
            zb.add_(shift).mul_(_exp_scale_(s, 1.0))


class _Context:
    """Per-call state of a conditional program: the padded condition and the coupling buffer."""

    def __init__(self, u, dtype, fmt):
        self.dtype, self.fmt = dtype, fmt
        self.u_padded = None if u is None else F.pad(u, (1, 1, 1, 1), mode="reflect")
        self._buffer = None

    def coupling_input(self, split, za_padded):
        if self._buffer is None:
            u = self.u_padded
            self._buffer = torch.empty((u.shape[0], split + u.shape[1]) + tuple(u.shape[2:]), dtype=self.dtype,
                                       device=u.device).contiguous(memory_format=self.fmt)
            self._buffer[:, split:] = u
        self._buffer[:, :split] = za_padded
        return self._buffer


def _linear_ops(module) -> list:
    """The flow `module` as a list of elementary operations, in forward order."""
    if isinstance(module, ActNorm):
        s = torch.exp(_f64(module.log_scale)).flatten()
        return [_Affine(torch.diag(s), s * _f64(module.loc).flatten())]
    if isinstance(module, InvConv1x1):
        w = _lu_weight64(module)
        return [_Affine(w, torch.zeros(w.shape[0], dtype=torch.float64))]
    if isinstance(module, Squeeze):
        return [_Shuffle(True)]
    if isinstance(module, Expand):
        return [_Shuffle(False)]
    if isinstance(module, AffineInjector):
        return [_Injector(module)]
    if isinstance(module, AffineCoupling):
        return [_Coupling(module)]
    if isinstance(module, FlowStep):
        parts = module._layers()
    elif isinstance(module, FlowSequence):
        parts = list(module)
    elif isinstance(module, (HRFlow, LRFlow, SqueezeLevel, ConditionalFlow)):
        parts = [p for p in module._parts() if p is not None]
    else:
        raise TypeError(f"no fast form for flow layer {type(module).__name__}")
    return [op for p in parts for op in _linear_ops(p)]


def _lu_weight64(conv: InvConv1x1) -> torch.Tensor:
    """W of the LU form, computed in float64 (the model computes it in its own dtype)."""
    lower = _f64(conv.lower) * _f64(conv.lower_mask) + _f64(conv.eye)
    upper = _f64(conv.upper) * _f64(conv.lower_mask).T + torch.diag(_f64(conv.sign_s) * torch.exp(_f64(conv.log_abs_s)))
    return _f64(conv.perm) @ lower @ upper


def _fuse(ops: list) -> list:
    out = []
    for op in ops:
        if isinstance(op, _Affine) and out and isinstance(out[-1], _Affine):
            out[-1] = out[-1].then(op)
        else:
            out.append(op)
    return out


class _Program:
    """A flow (or its inverse) as a list of fused operations on float32 z."""

    def __init__(self, ops: list, spec: _Spec):
        self.ops, self.dtype, self.fmt = ops, spec.dtype, spec.fmt
        for op in ops:
            if hasattr(op, "finalise"):
                op.finalise(spec)

    @classmethod
    def forward_of(cls, flow, spec):
        return cls(_fuse(_linear_ops(flow)), spec)

    @classmethod
    def inverse_of(cls, flow, spec):
        return cls(_fuse([op.inverse() for op in reversed(_linear_ops(flow))]), spec)

    def __call__(self, z, u=None):
        ctx = _Context(u, self.dtype, self.fmt)
        # The operations update z in place: work on our own copy.
        z = z.to(dtype=torch.float32, memory_format=self.fmt, copy=True)
        for op in self.ops:
            z = op(z, ctx)
        return z


def _content_program(flow: HRFlow, spec: _Spec) -> _Program:
    """f_HR forward, cut down to what z_c needs."""
    ops = _fuse(_linear_ops(flow))
    # Trailing couplings that leave the content channels alone do not affect z_c.
    while isinstance(ops[-1], _Coupling) and ops[-1].split >= CONTENT_CHANNELS:
        ops.pop()
    if isinstance(ops[-1], _Affine):
        ops[-1] = _Affine(ops[-1].w[:CONTENT_CHANNELS], ops[-1].b[:CONTENT_CHANNELS])
    return _Program(ops, spec)


# ----- the model -------------------------------------------------------------------------

@contextlib.contextmanager
def ieee_float32(device: torch.device):
    """Float32 convolutions computed as float32 on `device` while the block runs. cuDNN runs them
    as TF32 by default on Ampere and newer GPUs (10-bit mantissas, ~1e-3 relative error, which
    the flow inversions carry into the image), and oneDNN on a CPU does the same with bfloat16
    or TF32 when a user has set `torch.backends.fp32_precision` or the mkldnn flags (off by
    default). The fast path promises the model's float32 results, so its calls set "ieee" and
    restore the setting after."""
    kind = torch.device(device).type
    backend = {"cuda": torch.backends.cudnn, "cpu": torch.backends.mkldnn}.get(kind)
    conv = getattr(backend, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        # The newer API; reading the legacy flag after it has been used raises, so only this one.
        old = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = old
    elif kind == "cuda":
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = old
    else:
        yield


def _ieee(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with ieee_float32(self.device):
            return method(self, *args, **kwargs)
    return call


class FastSDFlow:
    """Inference-only fused copy of an `SDFlow`; `super_resolve` and `downscale` take the same
    arguments as the model's and give the same results (see the module docstring)."""

    def __init__(self, model: SDFlow, precision: str = "fp32", channels_last: Optional[bool] = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if model.dtype != torch.float32:
            raise ValueError(f"FastSDFlow needs a float32 model (got {model.dtype}); "
                             "use `precision` for reduced precision")
        self.source = model
        # The copy's own, fixed when it was made: the source may be moved or cast later.
        self._device, self._dtype = model.device, model.dtype
        self.precision = precision
        self.channels_last = bool(model.device.type in ("cpu", "cuda") if channels_last is None else channels_last)
        self.net_dtype = PRECISIONS[precision]
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        spec = _Spec(self.net_dtype, self.memory_format, model.device)
        spec32 = _Spec(torch.float32, self.memory_format, model.device)
        with torch.no_grad():
            self.extractor = _Extractor(model.content_extractor, spec32)
            self.hf_cond = _CondNet(model.f_hf.cond_net, None, spec)
            self.hf_inverse = _Program.inverse_of(model.f_hf, spec)
            self.hr_inverse = _Program.inverse_of(model.f_hr, spec)
            self.hr_content_program = _content_program(model.f_hr, spec)
            self.deg_cond = _CondNet(model.f_deg.cond_net, model.f_deg.cond_proj, spec)
            self.deg_inverse = _Program.inverse_of(model.f_deg, spec)
            self.lr_inverse = _Program.inverse_of(model.f_lr, spec32)

    # What callers of an SDFlow read besides the two methods.
    @property
    def config(self):
        return self.source.config

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def deg_prior(self):
        return self.source.deg_prior

    def sample_hf_latent(self, lr, tau=0.8, generator=None):
        return self.source.sample_hf_latent(lr, tau, generator)

    def sample_deg_latent(self, hr, tau=0.8, component=None, sampler="image", generator=None):
        return self.source.sample_deg_latent(hr, tau, component, sampler, generator)

    def _net_input(self, x):
        return x.to(self.net_dtype).contiguous(memory_format=self.memory_format)

    @_ieee
    def content(self, lr: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.extractor(lr.to(torch.float32).contiguous(memory_format=self.memory_format))

    @_ieee
    def hr_content(self, hr: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.hr_content_program(hr)

    @_ieee
    def super_resolve(self, lr: torch.Tensor, tau: float = 0.8, generator: Optional[torch.Generator] = None,
                      hf_latent: Optional[torch.Tensor] = None, condition: Optional[Condition] = None) -> torch.Tensor:
        lr = _image_input(lr, "lr", self.dtype)
        h, w = lr.shape[-2:]
        condition = _checked(condition, self, "sr", lr) or self.sr_condition(lr)
        with torch.inference_mode():
            if hf_latent is None:
                hf_latent = self.sample_hf_latent(lr, tau, generator)
            _check_latent(hf_latent, hf_latent_shape(lr.shape), "hf_latent")
            z_c, z_h = condition.content, self.hf_inverse(hf_latent, condition.features)
            del condition  # when it is this call's own, f_HR^-1 (the peak) runs without it
            y = self.hr_inverse(torch.cat([z_c, z_h], 1))
            return y[..., :SCALE * h, :SCALE * w].contiguous()

    @_ieee
    def sr_condition(self, lr: torch.Tensor) -> Condition:
        """`SDFlow.sr_condition`, in this copy's own format."""
        lr = _image_input(lr, "lr", self.dtype)
        with torch.inference_mode():
            z_c = self.content(padded_lr(lr))
            return Condition("sr", tuple(lr.shape), z_c, self.hf_cond(self._net_input(z_c)), id(self),
                             image_fingerprint(lr))

    @_ieee
    def downscale(self, hr: torch.Tensor, tau: float = 0.8,
                  component: Optional[Union[int, Sequence[int]]] = None, sampler: str = "image",
                  deg_latent: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None,
                  condition: Optional[Condition] = None) -> torch.Tensor:
        hr = _image_input(hr, "hr", self.dtype)
        h, w = hr.shape[-2:]
        condition = _checked(condition, self, "ds", hr) or self.ds_condition(hr)
        with torch.inference_mode():
            if deg_latent is None:
                deg_latent = self.sample_deg_latent(hr, tau, component, sampler, generator)
            _check_latent(deg_latent, deg_latent_shape(hr.shape), "deg_latent")
            z_c, z_d = condition.content, self.deg_inverse(deg_latent, condition.features)
            del condition
            x = self.lr_inverse(z_d.add_(z_c))
            return x[..., :math.ceil(h / SCALE), :math.ceil(w / SCALE)].contiguous()

    @_ieee
    def ds_condition(self, hr: torch.Tensor) -> Condition:
        """`SDFlow.ds_condition`, in this copy's own format."""
        hr = _image_input(hr, "hr", self.dtype)
        with torch.inference_mode():
            z_c = self.hr_content_program(padded_hr(hr))
            return Condition("ds", tuple(hr.shape), z_c, self.deg_cond(self._net_input(z_c)), id(self),
                             image_fingerprint(hr))

    def __repr__(self) -> str:
        return (f"FastSDFlow(precision={self.precision!r}, channels_last={self.channels_last}, "
                f"config={self.config})")
