"""Turn one model spec string into (model, preprocess, tokenizer): presets, open_clip zoo, hf-hub, local files.

The spec grammar (one string names a model in the CLI, notebooks and report folders: presets and
their tags, `ARCH:pretrained`, `ARCH:/path/weights`, `hf-hub:`, `local-dir:`, a run folder) has one
home, clipkit.core.modelspec, which parses and checks it without torch; load_model follows it.

Weights are never fetched silently on a machine without network: a missing file raises
`ModelNotAvailable` within a few seconds, naming the spec and how to supply the weights.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import open_clip
import torch

from clipkit.core.modelspec import (  # noqa: F401  (re-exported: the grammar and its errors live in core)
    CHECKPOINT_META, CONFIG_DIR, DEFAULT_MODEL, PRESET_TAGS, PRESETS, WEIGHTS_FILE, ModelNotAvailable,
    ModelSpecError, check, check_spec, default_checkpoint_dir, parse, unknown_arch)
from clipkit.core.paths import clipkit_home, slugify  # noqa: F401  (re-exported)

open_clip.add_model_config(CONFIG_DIR)  # the one import-time side effect: register our presets


def fingerprint(model: torch.nn.Module) -> str:
    """A stable hash of a model's weights (names, shapes, dtypes, values): the feature cache key."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


def create_model(name: str, seed: int = 0, **kwargs):
    """A randomly initialised open_clip model of architecture `name` (deterministic for a seed).

    Returns (model, preprocess_train, preprocess_val). Used by training and by the `:random` specs.
    """
    if name not in open_clip.list_models():
        raise ModelSpecError(unknown_arch(name))
    import logging
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)   # open_clip warns "initialized randomly": we mean it
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model_and_transforms(name, pretrained=None, **kwargs)
    finally:
        logging.getLogger().setLevel(quiet)


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device = "cpu"):
    """Load any model spec (see the module docstring) as (model, preprocess, tokenizer), in eval mode.

    `preprocess` is the model's evaluation transform (resize, centre crop, normalise). Every spec is
    first checked by clipkit.core.modelspec.check, so a typo fails in one line before any weights are read.
    """
    m = check(spec)   # the one grammar (clipkit.core.modelspec): what the spec names, checked
    if m.source in ("hf-hub", "local-dir"):
        model, _, preprocess = open_clip.create_model_and_transforms(m.spec)
        tokenizer = open_clip.get_tokenizer(m.spec)
    elif m.source == "run":
        model, preprocess, tokenizer = _load_clipkit_checkpoint(m.path)
    else:
        if m.source == "weights":
            sd = read_state_dict(m.path)
            model, _, preprocess = create_model(m.name, **architecture_kwargs(sd))
            _load_state_dict(model, sd, m.path, spec=m.spec)
        elif m.source == "preset" and m.tag == "synthetic":
            model, preprocess, _ = _load_clipkit_checkpoint(default_checkpoint_dir(m.name))
        elif m.source == "preset":
            model, _, preprocess = create_model(m.name)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(m.name, pretrained=m.tag)
        tokenizer = open_clip.get_tokenizer(m.name)
    model = model.to(device).eval()
    return model, preprocess, tokenizer


# --- local weights ----------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file (safetensors, or a torch file loaded with weights_only=True)."""
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelSpecError(f"weights file {path} is empty (0 bytes): an interrupted copy?")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated files, pickles with code in them, foreign formats
        raise ModelSpecError(f"could not read weights from {path}: {type(e).__name__}: {e}. "
                             f"clipkit reads .safetensors, or torch files that hold only tensors.") from e
    if isinstance(sd, dict) and "state_dict" in sd:  # open_clip_train checkpoints
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise ModelSpecError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}  # DDP-wrapped saves


def architecture_kwargs(sd: dict[str, torch.Tensor]) -> dict:
    """create_model keyword arguments that the weights themselves require, beyond the architecture name.

    A model trained with the SigLIP loss has a learned `logit_bias` (SigLIP §3: initialised to -10) that
    open_clip builds only when asked (`init_logit_bias`); its value here is a placeholder that the
    loaded weights overwrite. Read from the weights, not the sidecar, so that any weights file (a run
    folder, a training checkpoint's model.safetensors, 'ARCH:/path') loads whatever loss made it.
    """
    return {"init_logit_bias": 0.0} if "logit_bias" in sd else {}


def load_weights(model: torch.nn.Module, path: Path, spec: str | None = None) -> None:
    """Load a weights file into `model` strictly, with an error that says what does not match."""
    _load_state_dict(model, read_state_dict(Path(path)), Path(path), spec)


def _load_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path, spec: str | None) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [k for k in set(own) & set(sd) if own[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            missing and f"{len(missing)} missing (e.g. {missing[:3]})",
            unexpected and f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})",
            wrong and f"{len(wrong)} with other shapes (e.g. {wrong[0]}: file {tuple(sd[wrong[0]].shape)} "
                      f"vs model {tuple(own[wrong[0]].shape)})"]))
        raise ModelSpecError(
            f"{path} does not fit the architecture of {spec or type(model).__name__}: {detail}. "
            f"Is it a checkpoint of another architecture? Name the right one as 'ARCH:{path}'.")
    model.load_state_dict(sd, strict=True)


def save_model(model: torch.nn.Module, out_dir: str | Path, arch: str, extra: dict | None = None) -> Path:
    """Save weights (safetensors) + a clipkit.json sidecar, atomically, as a loadable checkpoint folder.

    Everything load_model needs beyond the architecture is in the weights (a SigLIP model's
    logit_bias: see architecture_kwargs), so the folder loads whatever loss trained the model.
    """
    from clipkit.core.files import atomic_write_json, save_safetensors_atomic
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    save_safetensors_atomic({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                            out / WEIGHTS_FILE)
    atomic_write_json(out / CHECKPOINT_META, {"arch": arch, "format": 1, **(extra or {})})
    return out


# architectures renamed since a checkpoint may have been saved: (name then, a key only its weights hold,
# name now). clipkit-tiny was a ViT until the default became a CLIP ResNet (issue 14); that ViT is
# clipkit-tiny-vit, and a checkpoint saved under the old name loads as what it is.
RENAMED = (("clipkit-tiny", "visual.class_embedding", "clipkit-tiny-vit"),)


def _load_clipkit_checkpoint(folder: Path):
    try:
        meta = json.loads((folder / CHECKPOINT_META).read_text())
        arch = meta["arch"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ModelSpecError(f"{folder / CHECKPOINT_META} is not a clipkit checkpoint sidecar ({e})") from e
    sd = read_state_dict(folder / WEIGHTS_FILE)
    arch = next((now for then, key, now in RENAMED if arch == then and key in sd), arch)
    model, _, preprocess = create_model(arch, **architecture_kwargs(sd))
    _load_state_dict(model, sd, folder / WEIGHTS_FILE, spec=str(folder))
    return model, preprocess, open_clip.get_tokenizer(arch)
