"""Model files: this project's safetensors format, and import of the authors' four .pth files.

Our format is one `.safetensors` file holding the state dict of `SDFlow` under its own names,
with the architecture (`ModelConfig`) as JSON in the metadata under "sdflow.config".
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Union

import torch

from sdflow.config import ModelConfig
from sdflow.model import SDFlow

FORMAT_KEY = "sdflow.format"
FORMAT_VERSION = "1"
CONFIG_KEY = "sdflow.config"
AUTHORS_FILES = ("lrencoder.pth", "hrnet.pth", "contentnet.pth", "degnet.pth")
# `load("default")` names the model shipped inside the package (docs/model_card.md).
DEFAULT_NAME = "default"
BUNDLED_FILE = Path(__file__).parent / "assets" / "model" / "sdflow_default.safetensors"

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A model file or folder that cannot be loaded; the message says which and why."""


# ----- our own format ------------------------------------------------------------------------

def save_model(model: SDFlow, path: PathLike, dtype: torch.dtype = None, metadata: dict = None) -> Path:
    """Write `model` as .safetensors (atomically). `dtype` (e.g. torch.float16) stores a smaller
    copy; loading converts back to the requested dtype."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    reserved = {FORMAT_KEY, CONFIG_KEY} & {str(k) for k in (metadata or {})}
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are sdflow's own")
    meta = {FORMAT_KEY: FORMAT_VERSION, CONFIG_KEY: model.config.to_json()}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        # safetensors creates its file private (0600); a model is shared like any other file.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        # A half-written model can be as large as a whole one; never leave it behind.
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    try:  # Linux states it; setting it to read it would race with threads creating files.
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _read_safetensors(path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_KEY not in meta:
        raise CheckpointError(f"{path}: a .safetensors file without sdflow metadata "
                              f"(expected key {CONFIG_KEY!r}); was it written by sdflow?")
    return ModelConfig.from_json(meta[CONFIG_KEY]), load_file(str(path))


def _read_training_checkpoint(path: Path):
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors come in many types
        raise CheckpointError(f"{path}: not a readable PyTorch file ({e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: not an sdflow training checkpoint (needs 'model' and "
                              f"'model_config' entries); for the authors' files pass their folder")
    return ModelConfig.from_dict(ckpt["model_config"]), ckpt["model"]


# ----- the authors' format -------------------------------------------------------------------

# Renaming rules: (authors' pattern, our template) for the part of a key after its prefix
# (see _authors_rules). Masks and identities (_AUTHORS_DERIVED) are recomputed, not imported.
_STEP_RULES = [
    (r"actnorm\.(loc|log_scale|initialized)", r"actnorm.\1"),
    (r"(?:permute|inv_conv)\.w_p", "inv_conv.perm"),
    (r"(?:permute|inv_conv)\.s_sign", "inv_conv.sign_s"),
    (r"(?:permute|inv_conv)\.w_l", "inv_conv.lower"),
    (r"(?:permute|inv_conv)\.w_s", "inv_conv.log_abs_s"),
    (r"(?:permute|inv_conv)\.w_u", "inv_conv.upper"),
    (r"affine_coulping\.net\.conv(1|2)\.conv2d\.(weight|bias)", r"coupling.net.conv\1.\2"),
    (r"affine_coulping\.net\.conv3\.conv\.(weight|bias)", r"coupling.net.conv3.\1"),
    (r"affine_coulping\.net\.conv3\.logs", "coupling.net.out_log_scale"),
    (r"affine_injector\.net\.conv(1|2)\.conv2d\.(weight|bias)", r"injector.net.conv\1.\2"),
    (r"affine_injector\.net\.conv3\.conv\.(weight|bias)", r"injector.net.conv3.\1"),
    (r"affine_injector\.net\.conv3\.logs", "injector.net.out_log_scale"),
]
_CN_RULES = [
    (r"in_conv\.1\.(weight|bias)", r"head.\1"),
    (r"trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)",
     lambda m: f"body.{m[1]}.blocks.{int(m[2]) - 1}.convs.{int(m[3]) - 1}.{m[4]}"),
    (r"trans\.1\.(weight|bias)", r"body_out.\1"),
    (r"out_conv\.1\.(weight|bias)", r"tail.0.\1"),
    (r"out_conv\.4\.(weight|bias)", r"tail.2.\1"),
]
_AUTHORS_DERIVED = re.compile(r"(u_mask|l_mask|l_eye)$")


def _authors_rules() -> Dict[str, list]:
    """Per authors' file: a list of (authors' prefix, our prefix, rules for the rest of the key).
    A prefix's groups fill our prefix's \\1, \\2...; the rest of the key is renamed by the
    inner rules, whose own groups fill their replacements."""
    transitions = r"squeeze_transition\.transitions\.(\d+)\."
    hf = r"blocks\.1\.split\.conditional_flow\."
    e_rules = [
        (r"in_conv\.1\.(weight|bias)", r"head.0.\1"),
        (r"mf_conv\.(\d+)\.(weight|bias)", lambda m: f"modulation.{(int(m[1]) - 1) // 3 * 2}.{m[2]}"),
        (r"trunk\.(\d+)\.(fm1|fm2)\.log_scale", r"blocks.\1.\2.log_gain"),
        (r"trunk\.(\d+)\.(fm1|fm2)\.affine\.(weight|bias)", r"blocks.\1.\2.proj.\3"),
        (r"trunk\.(\d+)\.(conv1|conv2)\.1\.(weight|bias)", r"blocks.\1.\2.\3"),
        (r"out_conv\.1\.(weight|bias)", r"tail.0.\1"),
        (r"out_conv\.3\.(weight|bias)", r"tail.2.\1"),
    ]
    mixture = [(r"(means|log_stds)", r"\1")]
    proj = [(r"(weight|bias)", r"\1")]
    return {
        "lrencoder": [("", "content_extractor.", e_rules)],
        "hrnet": [(r"blocks\.(\d)\." + transitions, r"f_hr.levels.\1.transition.\2.", _STEP_RULES),
                  (r"blocks\.(\d)\.steps\.(\d+)\.", r"f_hr.levels.\1.steps.\2.", _STEP_RULES),
                  (hf + r"cond_net\.", "f_hf.cond_net.", _CN_RULES),
                  (hf + r"additional_flow_steps\.(\d+)\.", r"f_hf.steps.\1.", _STEP_RULES)],
        "contentnet": [(r"blocks\.0\." + transitions, r"f_lr.transition_in.\1.", _STEP_RULES),
                       (r"blocks\.0\.steps\.(\d+)\.", r"f_lr.steps.\1.", _STEP_RULES),
                       (r"blocks\.0\.expand_transition\.transitions\.(\d+)\.", r"f_lr.transition_out.\1.",
                        _STEP_RULES)],
        "degnet": [("", "deg_prior.", mixture),
                   (r"deg_net\.cond_net\.0\.", "f_deg.cond_net.", _CN_RULES),
                   (r"deg_net\.cond_net\.2\.", "f_deg.cond_proj.", proj),
                   (r"deg_net\." + transitions, r"f_deg.transition.\1.", _STEP_RULES),
                   (r"deg_net\.additional_flow_steps\.(\d+)\.", r"f_deg.steps.\1.", _STEP_RULES)],
    }


def _rename(key: str, rules) -> str:
    for prefix, our_prefix, inner in rules:
        pm = re.match(prefix, key)
        if not pm:
            continue
        rest = key[pm.end():]
        for pat, repl in inner:
            m = re.fullmatch(pat, rest)
            if m:
                return pm.expand(our_prefix) + (repl(m) if callable(repl) else m.expand(repl))
    return None


def convert_authors_state_dicts(state_dicts: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Rename the authors' four state dicts ({"lrencoder", "hrnet", "contentnet", "degnet"})
    into one state dict of `SDFlow`. Every key must be recognised: an unknown key means a
    file this converter does not understand, and is an error rather than silently dropped."""
    ours = {}
    for part, rules in _authors_rules().items():
        if part not in state_dicts:
            raise CheckpointError(f"missing the authors' {part}.pth")
        for key, value in state_dicts[part].items():
            if _AUTHORS_DERIVED.search(key):
                continue
            new = _rename(key, rules)
            if new is None:
                raise CheckpointError(f"{part}.pth: unrecognised key {key!r}")
            ours[new] = value
    return ours


def _infer_authors_config(sd: Dict[str, torch.Tensor]) -> ModelConfig:
    """The authors' files carry no config; read the sizes off the tensors."""
    def count(pattern):
        rx = re.compile(pattern)
        return len({m[1] for k in sd for m in [rx.match(k)] if m})

    return ModelConfig(
        hr_steps=count(r"f_hr\.levels\.0\.steps\.(\d+)\."),
        lr_steps=count(r"f_lr\.steps\.(\d+)\."),
        hf_steps=count(r"f_hf\.steps\.(\d+)\."),
        deg_steps=count(r"f_deg\.steps\.(\d+)\."),
        coupling_hidden=sd["f_lr.steps.0.coupling.net.conv1.weight"].shape[0],
        cond_channels=sd["f_hf.cond_net.head.weight"].shape[0],
        hf_rrdb_blocks=count(r"f_hf\.cond_net\.body\.(\d+)\."),
        deg_rrdb_blocks=count(r"f_deg\.cond_net\.body\.(\d+)\."),
        rrdb_growth=sd["f_hf.cond_net.body.0.blocks.0.convs.0.weight"].shape[0],
        mixture_components=sd["deg_prior.means"].numel(),
        extractor_channels=sd["content_extractor.head.0.weight"].shape[0],
        extractor_blocks=count(r"content_extractor\.blocks\.(\d+)\."),
        extractor_modulation_convs=count(r"content_extractor\.modulation\.(\d+)\."),
    )


def read_authors_folder(folder: PathLike):
    folder = Path(folder)
    missing = [f for f in AUTHORS_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: not the authors' pretrained folder (missing {', '.join(missing)})")
    sds = {}
    for f in AUTHORS_FILES:
        try:
            sd = torch.load(str(folder / f), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{folder / f}: cannot read ({e})") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"{folder / f}: holds {_kind(sd)}, not a state dict (names -> "
                                  "tensors) of the authors' network")
        # Checkpoints saved from DataParallel carry a "module." prefix.
        sds[f[:-4]] = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    state = convert_authors_state_dicts(sds)
    try:
        return _infer_authors_config(state), state
    except (KeyError, IndexError, ValueError) as e:
        # Every key was recognised, but a network is incomplete (a file of another version).
        raise CheckpointError(f"{folder}: the authors' files lack weights the model needs "
                              f"({type(e).__name__}: {e})") from e


def _kind(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, dict):
        bad = next(v for v in obj.values() if not isinstance(v, torch.Tensor))
        return f"a dict with a {type(bad).__name__} among its values"
    return f"a {type(obj).__name__}"


# ----- loading -------------------------------------------------------------------------------

def bundled_model_path() -> Union[Path, None]:
    """The model shipped with the package, or None where this installation has none."""
    return BUNDLED_FILE if BUNDLED_FILE.is_file() else None


def bundled_metadata() -> Dict[str, str]:
    """The bundled model's safetensors metadata (training data, degradation preset, steps), or
    {} where there is none."""
    from safetensors import safe_open

    path = bundled_model_path()
    if path is None:
        return {}
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_model_state(source: PathLike):
    """(ModelConfig, state dict) from any supported source; "default" is the bundled model."""
    if str(source) == DEFAULT_NAME and not Path(source).exists():
        bundled = bundled_model_path()
        if bundled is None:
            raise CheckpointError("this installation of sdflow ships no bundled model "
                                  f"(expected {BUNDLED_FILE}); give a model file or folder")
        source = bundled
    path = Path(source)
    if path.is_dir():
        if (path / "model.safetensors").is_file():  # a training run directory
            return _read_safetensors(path / "model.safetensors")
        return read_authors_folder(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path)
    return _read_training_checkpoint(path)


def _looks_like_safetensors(path: Path) -> bool:
    # save_model writes safetensors whatever the name; the format begins with the 8-byte length
    # of a JSON header, and the header with "{" (a torch.save zip begins with "PK").
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def load(source: PathLike, device: Union[str, torch.device] = "cpu",
         dtype: torch.dtype = torch.float32) -> SDFlow:
    """Load an SDFlow from our `.safetensors`, a training checkpoint, a training run directory,
    the authors' pretrained folder (lrencoder/hrnet/contentnet/degnet .pth), or "default" (the
    model bundled with the package). The model is returned in eval mode."""
    config, state = read_model_state(source)
    model = SDFlow(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit the model ({e})") from e
    return model.to(device=device, dtype=dtype).eval()


def convert_authors(folder: PathLike, out: PathLike, dtype: torch.dtype = None) -> Path:
    """`sdflow convert`: the authors' folder -> one .safetensors file."""
    model = load(folder)
    return save_model(model, out, dtype=dtype, metadata={"sdflow.source": "authors:" + Path(folder).name})


def describe(source: PathLike) -> dict:
    """The config and the number of learned parameters; the state dict's buffers (ActNorm's
    initialised flags, the 1x1 convolutions' permutations and signs) are not counted."""
    config, state = read_model_state(source)
    names = [n for n, _ in SDFlow(config).named_parameters()]
    return {"config": config.to_dict(), "parameters": int(sum(state[n].numel() for n in names if n in state))}


__all__ = ["save_model", "load", "bundled_model_path", "bundled_metadata", "convert_authors", "convert_authors_state_dicts", "read_model_state",
           "CheckpointError", "describe"]
