"""Architecture sizes of SDFlow (the authors' model is the `paper` preset), and the constants
that every part of sdflow shares. No torch here: the command line parses its options from this
module without loading torch."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields

# SR / DS factor, fixed by the architecture (two squeezes in f_HR).
SCALE = 4
# torch.Generator.manual_seed takes an unsigned 64-bit integer; sample k is drawn with seed + k.
MAX_SEED = 2**64 - 1


def seed_range_error(seed: int, samples: int):
    """Why sample seeds seed .. seed + samples - 1 do not all fit torch's generator, or None."""
    last = int(seed) + int(samples) - 1
    if last <= MAX_SEED:
        return None
    return (f"seed {seed} with {samples} sample(s) would use seeds up to {last}, above {MAX_SEED} "
            "(2^64 - 1), the largest seed torch accepts; sample k is drawn with seed + k")


# Arithmetic of sampling (`sdflow.nets.precision.DTYPES`): "auto" is bf16 where the hardware
# multiplies bfloat16 natively, else fp32 (`sdflow.nets.precision.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")


@dataclass(frozen=True)
class ModelConfig:
    """Every size that shapes the five networks. Scale (x4) and channel counts of the
    latents are fixed by the architecture and not configurable."""

    hr_steps: int = 16            # flow steps per level of f_HR (two levels)
    lr_steps: int = 16            # flow steps of f_LR
    hf_steps: int = 8             # conditional steps of f_HF
    deg_steps: int = 8            # conditional steps of f_Deg
    coupling_hidden: int = 64     # width of every coupling / injector network
    cond_channels: int = 64       # width of the RRDB condition networks and of u
    hf_rrdb_blocks: int = 8       # RRDBs in f_HF's condition network
    deg_rrdb_blocks: int = 4      # RRDBs in f_Deg's condition network
    rrdb_growth: int = 32
    mixture_components: int = 16  # components of f_Deg's prior
    extractor_channels: int = 64  # width of the content extractor E
    extractor_blocks: int = 16    # modulated residual blocks of E
    extractor_modulation_convs: int = 8
    # [ours] Where DS takes an HR image's content: "flow", z_c of f_HR (the paper's), or
    # "picture", f_LR of the image's x4 bicubic downscale blurred by `ds_content_sigma` LR pixels,
    # the picture that training pins z_c to. f_HR's z_c misses that picture by a detail code of
    # several 8-bit levels (docs/training.md, "The content code"), and DS shows it.
    ds_content: str = "flow"
    ds_content_sigma: float = 0.7
    # [ours] That blur "fixed" at ds_content_sigma, or "learnt" from it by DS's statistics and critics
    # (nets/blur.py; docs/training.md, "A learnt blur").
    ds_blur: str = "fixed"
    # [ours] f_HR's squeezes: "shuffle", the authors' pixel stacking, or "lifting", a wavelet whose
    # low band is the picture and whose zero detail decodes to a smooth upscale, so that z_c starts
    # as the HR's x4 picture and SR as an interpolator; with it f_LR starts as the identity (up to
    # ActNorm), so that both content latents start as pictures (docs/training.md, "The lifting squeeze").
    hr_squeeze: str = "shuffle"
    # [ours] What E computes: "direct", the content itself (the paper's), or "residual", a
    # correction added to f_LR(x), its last layer starting at zero, so that the content starts as
    # the LR picture itself and E learns only what restoring changes (docs/training.md, "The
    # lifting squeeze": a direct E started, and stayed, worse than no restoring at all).
    extractor: str = "direct"
    # [ours] "none": E is blind. "learnt": E is told the width of the blur it undoes, and the width
    # it assumes for real LR images is learnt, starting at ds_content_sigma (nets/content.py;
    # docs/training.md, "A told E"). Unpaired training needs loss.cycle_blur or loss.cycle_blur_spread
    # to show it widths.
    extractor_blur: str = "none"

    PRESETS = ("paper", "tiny", "small")
    DS_CONTENTS = ("flow", "picture")
    HR_SQUEEZES = ("shuffle", "lifting")
    EXTRACTORS = ("direct", "residual")
    DS_BLURS = ("fixed", "learnt")
    EXTRACTOR_BLURS = ("none", "learnt")

    def __post_init__(self):
        if self.extractor not in self.EXTRACTORS:
            raise ValueError(f"extractor must be one of {', '.join(self.EXTRACTORS)}, got {self.extractor!r}")
        if self.hr_squeeze not in self.HR_SQUEEZES:
            raise ValueError(f"hr_squeeze must be one of {', '.join(self.HR_SQUEEZES)}, got {self.hr_squeeze!r}")
        if self.ds_content not in self.DS_CONTENTS:
            raise ValueError(f"ds_content must be one of {', '.join(self.DS_CONTENTS)}, got {self.ds_content!r}")
        if not self.ds_content_sigma >= 0:
            raise ValueError(f"ds_content_sigma must be >= 0, got {self.ds_content_sigma}")
        if self.ds_blur not in self.DS_BLURS:
            raise ValueError(f"ds_blur must be one of {', '.join(self.DS_BLURS)}, got {self.ds_blur!r}")
        if self.ds_blur == "learnt" and not (self.ds_content == "picture" and self.ds_content_sigma > 0):
            raise ValueError("ds_blur=learnt needs ds_content=picture and a positive ds_content_sigma "
                             "to start from")
        if self.extractor_blur not in self.EXTRACTOR_BLURS:
            raise ValueError(f"extractor_blur must be one of {', '.join(self.EXTRACTOR_BLURS)}, "
                             f"got {self.extractor_blur!r}")
        if self.extractor_blur == "learnt" and not self.ds_content_sigma > 0:
            raise ValueError("extractor_blur=learnt needs a positive ds_content_sigma to start from")

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        if name == "paper":
            return cls()
        if name == "small":
            return cls(hr_steps=8, lr_steps=8, hf_steps=4, deg_steps=4, coupling_hidden=48,
                       cond_channels=48, hf_rrdb_blocks=2, deg_rrdb_blocks=1, rrdb_growth=24,
                       extractor_channels=48, extractor_blocks=6, extractor_modulation_convs=3)
        if name == "tiny":
            return cls(hr_steps=2, lr_steps=2, hf_steps=2, deg_steps=2, coupling_hidden=16,
                       cond_channels=16, hf_rrdb_blocks=1, deg_rrdb_blocks=1, rrdb_growth=8,
                       mixture_components=4, extractor_channels=16, extractor_blocks=2,
                       extractor_modulation_convs=2)
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(cls.PRESETS)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        kinds = {"int": int, "float": float, "str": str}
        return cls(**{f.name: kinds[f.type](d[f.name]) for f in fields(cls) if f.name in d})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))
