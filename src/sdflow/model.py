"""SDFlow: the five networks together, with super-resolution, downscaling and likelihoods.

Sampling (`super_resolve`, `downscale`, `sr_condition`, `ds_condition`) is written once, over
eight steps (E, the two condition networks, f_HF^-1, f_HR^-1, z_c of f_HR, f_Deg^-1, f_LR^-1)
that come either from the model's own modules or from their sampling form:

- in eval mode, a float32 model samples through its sampling form, made from its own modules on
  first use (`FusedFlow` for the flows, `fused_copy` for the networks: linear layers composed,
  constants folded, channels-last, no log-determinants) and made again when its parameters
  change or `train()` / `eval()` is called; `precision` "bf16" / "fp16" runs the non-invertible
  networks of f_HR, f_HF and f_Deg in that type (E and f_LR stay float32, the flow state too);
- in training mode, and for float64 or half-precision models, the modules themselves
  (differentiable, the reference: tests/test_parity.py).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdflow.config import SCALE, ModelConfig
from sdflow.flows.flows import ConditionalFlow, HRFlow, LRFlow
from sdflow.flows.layers import FusedFlow
from sdflow.flows.mixture import GaussianMixturePrior
from sdflow.nets.blur import ContentBlur
from sdflow.nets.content import ContentExtractor
from sdflow.nets.precision import DTYPES, ieee_float32, reduced_precision, resolve_precision
from sdflow.resize import downscale as bicubic_downscale, gaussian_blur

CONTENT_CHANNELS = 3
HF_CHANNELS = 45
# f_HR squeezes twice and f_Deg once more at LR size: HR sides must be multiples of 8.
HR_MULTIPLE = 8
# f_Deg's reflect-padded convolutions run at HR/8 and need 2 pixels there; E's need 2 LR pixels.
MIN_HR_SIDE = 16
MIN_LR_SIDE = 2
# f_LR squeezes once, and its couplings reflect-pad at LR/2: the LR likelihood needs even sides >= 4.
LR_MULTIPLE = 2
_PRECISION_OF = {dtype: name for name, dtype in DTYPES.items()}


def even_sided(fn, x: torch.Tensor) -> torch.Tensor:
    """fn of x, for a map at x's own size that needs even sides (f_LR squeezes once): x is
    edge-padded by a row and a column where odd, and the result cut back."""
    h, w = x.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return fn(x)
    return fn(F.pad(x, (0, w % 2, 0, h % 2), mode="replicate"))[..., :h, :w]


class SDFlow(nn.Module):
    """Images are NCHW tensors in [-1, 1]; outputs are returned raw (not clamped)."""

    def __init__(self, config: Optional[ModelConfig] = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        hidden = config.coupling_hidden
        self.content_extractor = ContentExtractor(config.extractor_channels, config.extractor_blocks,
                                                  config.extractor_modulation_convs,
                                                  zero_output=config.extractor == "residual",
                                                  blur=config.ds_content_sigma
                                                  if config.extractor_blur == "learnt" else None)
        self.f_hr = HRFlow(config.hr_steps, hidden, config.hr_squeeze)
        self.f_hf = ConditionalFlow(HF_CHANNELS, CONTENT_CHANNELS, config.hf_steps, config.hf_rrdb_blocks,
                                    squeeze=False, normal_prior=True, cond_channels=config.cond_channels,
                                    growth=config.rrdb_growth, hidden=hidden)
        self.f_lr = LRFlow(config.lr_steps, hidden, identity=config.hr_squeeze == "lifting")
        self.f_deg = ConditionalFlow(CONTENT_CHANNELS, CONTENT_CHANNELS, config.deg_steps,
                                     config.deg_rrdb_blocks, squeeze=True, normal_prior=False,
                                     cond_channels=config.cond_channels, growth=config.rrdb_growth,
                                     hidden=hidden)
        self.deg_prior = GaussianMixturePrior(config.mixture_components)
        self.ds_blur = ContentBlur(config.ds_content_sigma) if config.ds_blur == "learnt" else None
        # precision -> (the tensors it was made from, their (pointer, version), the _Fused form)
        self._sampling_forms = {}

    @property
    def device(self) -> torch.device:
        return self.deg_prior.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.deg_prior.means.dtype

    # ----- the HR side ---------------------------------------------------------------------

    def encode_hr(self, y: torch.Tensor):
        """f_HR(y) -> (z_c, z_h, logdet)."""
        z, logdet = self.f_hr(y)
        return z[:, :CONTENT_CHANNELS], z[:, CONTENT_CHANNELS:], logdet

    def decode_hr(self, z_c: torch.Tensor, z_h: torch.Tensor) -> torch.Tensor:
        return self.f_hr.inverse(torch.cat([z_c, z_h], dim=1))[0]

    def hr_log_density(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) in nats per image: logdet f_HR + logdet f_HF + log N(f_HF(z_h; z_c); 0, I)."""
        _check_sides(y, "hr", HR_MULTIPLE, HR_MULTIPLE)
        z_c, z_h, logdet = self.encode_hr(y)
        # f_HF must not shape the content: the gradient stops at z_c.
        _, logdet_hf = self.f_hf(z_h, z_c.detach())
        return logdet + logdet_hf

    def hr_log_likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """log2 p(y) per dimension (bits/dim; the NLL is its negative), for images in [-1, 1]."""
        return _bits_per_dim(self.hr_log_density(y), y)

    # ----- the LR side ---------------------------------------------------------------------

    def content(self, x: torch.Tensor, blur: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The content extractor E(x); with `config.extractor` "residual", f_LR(x) + E's output.
        `blur`: the blur width a told E (`config.extractor_blur`) assumes, one or one per image;
        None: its learnt one."""
        correction, base = self.content_parts(x, blur)
        return correction if base is None else correction + base

    def set_sr_blur(self, width: float) -> None:
        """Make a told E (`config.extractor_blur` "learnt") undo a blur of `width` LR pixels from
        now on instead of its learnt width: larger sharpens more. The width is the parameter
        itself, so saving the model keeps it."""
        if self.content_extractor.blur is None:
            raise ValueError("this model's content extractor is blind (model.extractor_blur=none): "
                             "it cannot be told a blur width")
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"a blur width must be a positive number of LR pixels, got {width}")
        self.content_extractor.blur.set_(width)

    def content_parts(self, x: torch.Tensor, blur: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """E(x) in its two parts: the extractor network's output and the f_LR(x) a residual
        extractor adds it to (None for a direct one). Training terms that must move E's
        correction alone detach the second part without running f_LR again."""
        c = self.content_extractor(x, blur)
        if self.config.extractor != "residual":
            return c, None
        return c, even_sided(lambda v: self.f_lr(v)[0], x)

    def lr_log_density(self, x: torch.Tensor, content: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p(x | z_c) in nats per image, with z_c = E(x) unless `content` is given."""
        _check_sides(x, "lr", LR_MULTIPLE, 2 * LR_MULTIPLE)
        z_c = self.content(x) if content is None else content
        z_lr, logdet = self.f_lr(x)
        z, logdet_deg = self.f_deg(z_lr - z_c, z_c)
        return logdet + logdet_deg + self.deg_prior.log_prob(z)

    def lr_log_likelihood(self, x: torch.Tensor, content: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log2 p(x | E(x)) per dimension (bits/dim)."""
        return _bits_per_dim(self.lr_log_density(x, content), x)

    # ----- sampling ------------------------------------------------------------------------
    # Sampling is inference, as in Real-ESRGAN's `enhance` and diffusers' pipelines: without
    # no_grad a user's call would keep the whole graph (8x the memory, 2x the time). Training
    # differentiates through the flows themselves (`sdflow.train.objective`), not through these.

    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor, tau: float = 0.8,
                      generator: Optional[torch.Generator] = None,
                      hf_latent: Optional[torch.Tensor] = None,
                      condition: Optional["Condition"] = None,
                      precision: Optional[str] = None) -> torch.Tensor:
        """[B,3,h,w] -> [B,3,4h,4w]: y = f_HR^-1([z_c, f_HF^-1(z'_h; z_c)]), z_c = E(lr).

        z'_h ~ N(0, tau^2 I) is drawn by `sample_hf_latent` unless `hf_latent` gives it directly
        (then `tau` and `generator` are unused); its shape is that of `sample_hf_latent(lr)`.
        `condition`: `sr_condition(lr)`, made once for several samples of one image (with the
        same `precision`). `precision`: None (the model's own dtype), "fp32", "bf16", "fp16",
        "fp64" or "auto" (`sdflow.nets.precision.resolve_precision`).
        """
        lr = _image_input(lr, "lr", self.dtype)
        h, w = lr.shape[-2:]
        steps = self._steps(precision)
        condition = _checked(condition, steps, "sr", lr) or self.sr_condition(lr, precision)
        with steps.running():
            if hf_latent is None:
                hf_latent = self.sample_hf_latent(lr, tau, generator)
            _check_latent(hf_latent, hf_latent_shape(lr.shape), "hf_latent")
            z_c = condition.content
            z_h = steps.hf_inverse(hf_latent.to(z_c.dtype), z_c, condition.features)
            del condition  # when it is this call's own, f_HR^-1 (the peak) runs without it
            y = steps.hr_inverse(torch.cat([z_c, z_h], dim=1))[..., :SCALE * h, :SCALE * w]
        return steps.output(y)

    @torch.no_grad()
    def sr_condition(self, lr: torch.Tensor, precision: Optional[str] = None) -> "Condition":
        """What every SR sample of `lr` shares: z_c = E(lr) and f_HF's condition network on it,
        most of an SR call's work; pass it to `super_resolve(lr, ..., condition=c)` for each sample."""
        lr = _image_input(lr, "lr", self.dtype)
        steps = self._steps(precision)
        with steps.running():
            z_c = steps.content(padded_lr(lr))
            return Condition("sr", tuple(lr.shape), z_c, steps.hf_condition(z_c), steps.maker, image_fingerprint(lr))

    def sample_hf_latent(self, lr: torch.Tensor, tau: float = 0.8,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """z'_h ~ N(0, tau^2 I) for the LR batch `lr` (only its shape, device and dtype are used):
        exactly what `super_resolve(lr, tau, generator)` draws, so the two agree sample for sample."""
        _check_tau(tau)
        shape = hf_latent_shape(lr.shape)
        # In the model's dtype whatever the image's: a float64 image must draw the float32 model's
        # noise, tiled, batched or whole alike.
        return self.f_hf.prior_sample(shape, tau, generator, device=lr.device, dtype=self.dtype)

    def sample_deg_latent(self, hr: torch.Tensor, tau: float = 0.8,
                          component: Optional[Union[int, Sequence[int]]] = None, sampler: str = "image",
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """z'_d from the mixture prior for the HR batch `hr` (only its shape and dtype are used): exactly
        what `downscale(hr, tau, component, sampler, generator=generator)` draws."""
        _check_tau(tau)
        shape = deg_latent_shape(hr.shape)
        return self.deg_prior.sample(shape, tau, component, sampler, generator).to(self.dtype)

    def hr_content(self, hr: torch.Tensor) -> torch.Tensor:
        """The content DS starts from, of an HR image whose sides are multiples of 8: z_c of f_HR,
        or with `config.ds_content` "picture" f_LR of `content_picture(hr)`."""
        if self.config.ds_content == "picture":
            return self.f_lr(self.content_picture(hr))[0]
        return self.f_hr(hr)[0][:, :CONTENT_CHANNELS]

    def content_picture(self, hr: torch.Tensor) -> torch.Tensor:
        """The LR picture of an HR image's content: its x4 antialiased bicubic downscale blurred by
        `config.ds_content_sigma` LR pixels (or the learnt `ds_blur`)."""
        return self.blur_picture(bicubic_downscale(hr, SCALE))

    def blur_width(self) -> torch.Tensor:
        """The width (LR pixels) of DS's content-picture blur: the learnt `ds_blur`, or
        `config.ds_content_sigma`."""
        if self.ds_blur is not None:
            return self.ds_blur.sigma
        return torch.tensor(self.config.ds_content_sigma, device=self.device)

    def blur_picture(self, x: torch.Tensor) -> torch.Tensor:
        """An LR picture blurred as DS blurs its content picture."""
        if self.ds_blur is not None:
            return self.ds_blur(x)
        return gaussian_blur(x, self.config.ds_content_sigma)

    @torch.no_grad()
    def downscale(self, hr: torch.Tensor, tau: float = 0.8,
                  component: Optional[Union[int, Sequence[int]]] = None, sampler: str = "image",
                  deg_latent: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None,
                  condition: Optional["Condition"] = None,
                  precision: Optional[str] = None) -> torch.Tensor:
        """[B,3,H,W] -> [B,3,ceil(H/4),ceil(W/4)]: x = f_LR^-1(z_c + f_Deg^-1(z'_d; z_c)).

        Any size works: the image is padded (edge replication) to a multiple of 8 (and at least
        16) and the result cropped back. `component` restricts the mixture components drawn from, `sampler` is
        "image" (one component per image, the authors' sampler) or "element"; `deg_latent`
        gives z'_d directly (its spatial size must match the padded image / 8).
        `condition`: `ds_condition(hr)`, made once for several samples of one image.
        `precision`: as for `super_resolve`.
        """
        hr = _image_input(hr, "hr", self.dtype)
        h, w = hr.shape[-2:]
        steps = self._steps(precision)
        condition = _checked(condition, steps, "ds", hr) or self.ds_condition(hr, precision)
        with steps.running():
            if deg_latent is None:
                deg_latent = self.sample_deg_latent(hr, tau, component, sampler, generator)
            _check_latent(deg_latent, deg_latent_shape(hr.shape), "deg_latent")
            z_c = condition.content
            z_d = steps.deg_inverse(deg_latent.to(z_c.dtype), z_c, condition.features)
            del condition
            x = steps.lr_inverse(z_d + z_c)[..., :math.ceil(h / SCALE), :math.ceil(w / SCALE)]
        return steps.output(x)

    @torch.no_grad()
    def ds_condition(self, hr: torch.Tensor, precision: Optional[str] = None) -> "Condition":
        """What every DS sample of `hr` shares: z_c of f_HR(hr) and f_Deg's condition network on
        it, most of a DS call's work; pass it to `downscale(hr, ..., condition=c)` for each sample."""
        hr = _image_input(hr, "hr", self.dtype)
        steps = self._steps(precision)
        with steps.running():
            z_c = steps.hr_content(padded_hr(hr))
            return Condition("ds", tuple(hr.shape), z_c, steps.deg_condition(z_c), steps.maker, image_fingerprint(hr))

    def sampling_precision(self, precision: Optional[str] = None) -> str:
        """The precision that sampling with `precision` runs at: None (and "auto" for a model that
        is not float32) is the model's own; "auto" is bf16 where the device multiplies it natively,
        else fp32 (`sdflow.nets.precision.resolve_precision`); a float32 model also samples in
        "bf16" / "fp16" (its networks in that type). ValueError for anything else."""
        own = _PRECISION_OF.get(self.dtype)
        if precision is None or (precision == "auto" and own != "fp32"):
            return own
        precision = resolve_precision(precision, self.device)
        if precision != own and not (own == "fp32" and precision in ("bf16", "fp16")):
            raise ValueError(f"precision {precision} needs a float32 model (fp64: a float64 one); this one is "
                             f"{self.dtype} and samples at its own: load it with sdflow.load(..., dtype=...)")
        return precision

    def _steps(self, precision: Optional[str]):
        """The eight sampling steps for `precision`: the modules themselves, or their sampling
        form (made now when it is missing or its parameters have changed since)."""
        precision = self.sampling_precision(precision)
        if self.dtype != torch.float32:
            return _ModuleSteps(self, None)
        if self.training:
            return _ModuleSteps(self, None if precision == "fp32" else DTYPES[precision])
        made = self._sampling_forms.get(precision)
        if made is None or [(t.data_ptr(), t._version) for t in made[0]] != made[1]:
            tensors = list(self.parameters()) + list(self.buffers())
            made = (tensors, [(t.data_ptr(), t._version) for t in tensors], _FusedSteps(self, precision))
            self._sampling_forms[precision] = made
        return made[2]

    def train(self, mode: bool = True):
        # Also the moment to drop the sampling forms: training changes the parameters (they
        # would be made again anyway), and after weights are written through `.data` (which
        # leaves version counters alone) `model.eval()` is what brings sampling up to date.
        self._sampling_forms.clear()
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        # .to(), .double(), .cuda(): the forms made before are of the old tensors.
        self._sampling_forms.clear()
        return super()._apply(*args, **kwargs)

    def __getstate__(self):
        # Copies and pickles of a model leave its sampling forms behind (made again on use).
        return {**self.__dict__, "_sampling_forms": {}}

    def extra_repr(self) -> str:
        return f"config={self.config}"


@dataclass(frozen=True)
class Condition:
    """What every sample of one image shares, made by `sr_condition` / `ds_condition`: the
    content z_c and the condition network's features. Only the model that made it takes it."""
    mode: str                     # "sr" | "ds"
    shape: Tuple[int, ...]        # the image's shape
    content: torch.Tensor
    features: torch.Tensor
    maker: object                 # who made it: the model and precision, or one sampling form
    fingerprint: Tuple[float, ...] = ()     # `image_fingerprint` of the image


class _ModuleSteps:
    """The sampling steps of the model's own modules (differentiable; the reference), with the
    networks under `reduced_precision(net_dtype)` when one is given."""

    def __init__(self, model: SDFlow, net_dtype: Optional[torch.dtype]):
        self.m, self.net_dtype = model, net_dtype
        self.maker = (id(model), str(net_dtype))

    def running(self):
        return reduced_precision(self.net_dtype) if self.net_dtype is not None else contextlib.nullcontext()

    def output(self, y):
        return y

    def content(self, lr):
        return self.m.content(lr)

    def hf_condition(self, z_c):
        return self.m.f_hf.condition(z_c)

    def hf_inverse(self, eps, z_c, features):
        return self.m.f_hf.inverse(eps, z_c, features=features)[0]

    def hr_inverse(self, z):
        return self.m.f_hr.inverse(z)[0]

    def hr_content(self, hr):
        return self.m.hr_content(hr)

    def deg_condition(self, z_c):
        return self.m.f_deg.condition(z_c)

    def deg_inverse(self, eps, z_c, features):
        return self.m.f_deg.inverse(eps, z_c, features=features)[0]

    def lr_inverse(self, z):
        return self.m.f_lr.inverse(z)[0]


_FORMS_MADE = itertools.count()


class _FusedSteps:
    """The sampling steps of the model's sampling form at `precision`, made from its modules
    (see the module docstring). Runs under inference mode with IEEE float32 convolutions
    (`ieee_float32`); channels-last on CPU and CUDA, where oneDNN and cuDNN run the 3x3
    convolutions faster on NHWC tensors."""

    channels_last = True

    def __init__(self, model: SDFlow, precision: str):
        dtype, self.device = DTYPES[precision], model.device
        # Not id(self): a form made after this one is dropped could get its id, and take its
        # conditions for its own.
        self.maker = ("fused", next(_FORMS_MADE))
        nhwc = self.channels_last and self.device.type in ("cpu", "cuda")
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        self.memory_format = fmt
        self._f_hf, self._f_deg = model.f_hf, model.f_deg
        with torch.no_grad():
            # E and f_LR stay float32 at every precision: z_c goes straight into the SR image and
            # f_LR^-1 makes the DS image; in bf16 they were most of its cost (docs/performance.md).
            extractor = model.content_extractor.fused_copy(torch.float32, fmt)
            if model.config.extractor == "residual":
                lr_content = FusedFlow(model.f_lr, 1, torch.float32, fmt)
                self._extractor = lambda lr: extractor(lr).add_(even_sided(lr_content, lr))
            else:
                self._extractor = extractor
            self._hf_net = model.f_hf.cond_net.fused_copy(dtype, fmt)
            self._deg_net = model.f_deg.cond_net.fused_copy(dtype, fmt)
            self._hf_inverse = FusedFlow(model.f_hf, -1, dtype, fmt)
            self._hr_inverse = FusedFlow(model.f_hr, -1, dtype, fmt)
            if model.config.ds_content == "picture":
                lr_forward, picture = FusedFlow(model.f_lr, 1, torch.float32, fmt), model.content_picture
                self._hr_content = lambda hr: lr_forward(picture(hr.float()))
            else:
                self._hr_content = FusedFlow(model.f_hr, 1, dtype, fmt, keep=CONTENT_CHANNELS)
            self._deg_inverse = FusedFlow(model.f_deg, -1, dtype, fmt)
            self._lr_inverse = FusedFlow(model.f_lr, -1, torch.float32, fmt)

    @contextlib.contextmanager
    def running(self):
        with torch.inference_mode(), ieee_float32(self.device):
            yield

    def output(self, y):
        # Outside inference mode: the caller gets an ordinary tensor (in-place operations on an
        # inference tensor are refused outside it), NCHW.
        return y.clone(memory_format=torch.contiguous_format)

    def content(self, lr):
        return self._extractor(lr.contiguous(memory_format=self.memory_format))

    def hf_condition(self, z_c):
        return self._f_hf.condition(z_c, self._hf_net)

    def hf_inverse(self, eps, z_c, features):
        return self._hf_inverse(eps, features)

    def hr_inverse(self, z):
        return self._hr_inverse(z)

    def hr_content(self, hr):
        return self._hr_content(hr)

    def deg_condition(self, z_c):
        return self._f_deg.condition(z_c, self._deg_net)

    def deg_inverse(self, eps, z_c, features):
        return self._deg_inverse(eps, features)

    def lr_inverse(self, z):
        return self._lr_inverse(z)


def _checked(condition: Optional[Condition], steps, mode: str, image: torch.Tensor) -> Optional[Condition]:
    if condition is None:
        return None
    if condition.maker != steps.maker or condition.mode != mode:
        raise ValueError(f"this condition was made by another model, at another precision, before this "
                         f"model's parameters changed or for {condition.mode!r}, not by this one's "
                         f"{mode}_condition")
    if condition.shape != tuple(image.shape):
        raise ValueError(f"this condition was made for an image of shape {condition.shape}, "
                         f"not {tuple(image.shape)}")
    if condition.fingerprint != image_fingerprint(image):
        # Same shape, other pixels: the samples would silently be those of the other image.
        raise ValueError("this condition was made for another image of this shape")
    return condition


def image_fingerprint(x: torch.Tensor) -> Tuple[float, ...]:
    """Float64 sums of the pixels, plain, squared and weighted by row and by column (so a flipped
    or shifted image differs too): what tells a Condition's image from another of its shape, in
    one pass over the image, little next to the networks."""
    rows = torch.sum(x, dim=(0, 1, 3), dtype=torch.float64)
    cols = torch.sum(x, dim=(0, 1, 2), dtype=torch.float64)
    h, w = len(rows), len(cols)
    return (float(rows.sum()), float(torch.linalg.vector_norm(x, dtype=torch.float64)),
            float(rows @ torch.arange(1, h + 1, dtype=torch.float64, device=x.device)),
            float(cols @ torch.arange(1, w + 1, dtype=torch.float64, device=x.device)))


def padded_lr(lr: torch.Tensor) -> torch.Tensor:
    """`lr` padded (edge replication) to the 2 pixels per side that reflect padding inside the
    networks needs; itself when it has them."""
    h, w = lr.shape[-2:]
    return pad_to(lr, max(h, MIN_LR_SIDE), max(w, MIN_LR_SIDE))


def padded_hr(hr: torch.Tensor) -> torch.Tensor:
    """`hr` padded (edge replication) as `downscale` pads it: see `padded_hr_size`."""
    return pad_to(hr, *padded_hr_size(*hr.shape[-2:]))


def padded_hr_size(h: int, w: int):
    """The size `downscale` pads an HR image of size (h, w) to."""
    return _round_up(max(h, MIN_HR_SIDE), HR_MULTIPLE), _round_up(max(w, MIN_HR_SIDE), HR_MULTIPLE)


def hf_latent_shape(lr_shape) -> tuple:
    """Shape of z'_h for an LR batch of shape [B, 3, h, w] (sides below 2 are padded to 2)."""
    b, _, h, w = lr_shape
    return (b, HF_CHANNELS, max(h, MIN_LR_SIDE), max(w, MIN_LR_SIDE))


def deg_latent_shape(hr_shape) -> tuple:
    """Shape of z'_d for an HR batch of shape [B, 3, H, W]: 12 channels at the padded size / 8."""
    b, _, h, w = hr_shape
    ph, pw = padded_hr_size(h, w)
    return (b, 4 * CONTENT_CHANNELS, ph // HR_MULTIPLE, pw // HR_MULTIPLE)


def _check_latent(z: torch.Tensor, shape: tuple, name: str) -> None:
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} for this image, got {tuple(z.shape)}")


def _bits_per_dim(log_density: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # Images live in [-1, 1]: one 8-bit level is 2/255 wide, so log p of the 8-bit image is
    # log p(x) + D * log(2/255); bits/dim are then comparable with the usual 8-bit figures.
    dims = x[0].numel()
    return (log_density + dims * math.log(2.0 / 255.0)) / (dims * math.log(2.0))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad bottom/right by edge replication up to (h, w); a no-op when already that size."""
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def check_image(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be a [B, 3, H, W] tensor, got shape {tuple(x.shape)}")


def _image_input(x: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A checked image in the model's dtype: numpy's float64 (or a half-precision image) is
    converted, so that both paths take it alike and the noise is drawn in the model's dtype."""
    check_image(x, name)
    return x if x.dtype == dtype else x.to(dtype)


def _check_sides(x: torch.Tensor, name: str, multiple: int, minimum: int) -> None:
    # A density of a padded image would not be the image's: the caller crops.
    check_image(x, name)
    h, w = x.shape[-2:]
    if h % multiple or w % multiple or min(h, w) < minimum:
        raise ValueError(f"the likelihood of {name} needs sides that are multiples of {multiple} and at "
                         f"least {minimum}, got {h}x{w}; crop it, e.g. {name}[..., :{max(h // multiple * multiple, minimum)}, "
                         f":{max(w // multiple * multiple, minimum)}]")


def _check_tau(tau: float) -> None:
    # A negative tau draws the same samples as -tau and a NaN one makes a NaN image: both are
    # a caller's mistake, not a request.
    try:
        ok = not isinstance(tau, (str, bytes)) and math.isfinite(float(tau)) and float(tau) >= 0
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
