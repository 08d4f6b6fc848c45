"""Turn one model spec string into (model, preprocess, tokenizer): presets, open_clip zoo, hf-hub, local files.

Spec grammar (the same string names a model in the CLI, notebooks and report folders):

    clipkit-tiny                  our preset, randomly initialised (seed 0): the chance-level control
    clipkit-tiny:random           the same, spelled out
    clipkit-tiny:synthetic        the embedded default: clipkit-tiny trained by `clipkit train` (cached)
    ViT-B-32:openai               an open_clip architecture + pretrained tag (weights must be cached)
    ViT-B-32:/path/weights.pt     an open_clip architecture + a local weights file (.safetensors/.pt/.bin)
    hf-hub:org/name               an open_clip model on the Hugging Face hub (must be cached offline)
    local-dir:/path/to/dir        a folder with open_clip_config.json + weights (open_clip's layout)
    /path/to/run_or_checkpoint    a clipkit checkpoint folder (model.safetensors + clipkit.json)

Weights are never fetched silently on a machine without network: a missing file raises
`ModelNotAvailable` within a few seconds, naming the spec and how to supply the weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from pathlib import Path

import open_clip
import torch

from clipkit.core.paths import clipkit_home, slugify  # noqa: F401  (re-exported)

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)  # the one import-time side effect: register our presets
PRESETS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
DEFAULT_MODEL = "clipkit-tiny:synthetic"
CHECKPOINT_META = "clipkit.json"   # sidecar of a clipkit checkpoint: architecture, config, versions
WEIGHTS_FILE = "model.safetensors"


class ModelNotAvailable(RuntimeError):
    """The spec is valid but its weights are not on this machine and cannot be fetched."""


class ModelSpecError(ValueError):
    """The spec string names nothing clipkit knows how to load."""


def default_checkpoint_dir(preset: str = "clipkit-tiny") -> Path:
    """The cache folder of the trained embedded default for a preset (`<preset>:synthetic`)."""
    return clipkit_home() / "models" / f"{preset}-synthetic"


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
        raise ModelSpecError(_unknown_arch(name))
    import logging
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)   # open_clip warns "initialized randomly": we mean it
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model_and_transforms(name, pretrained=None, **kwargs)
    finally:
        logging.getLogger().setLevel(quiet)


PRESET_TAGS = ("random", "synthetic")   # what may follow a preset's name (besides a weights path)


def _did_you_mean(word: str, known) -> str:
    """' (did you mean 'x'?)' for the closest of `known`, or ''."""
    import difflib
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_weights_tag(tag: str) -> bool:
    return bool(tag) and (Path(tag).expanduser().exists() or "/" in tag or tag.endswith(
        (".pt", ".pth", ".bin", ".safetensors")))


def check_spec(spec: str) -> str:
    """The stripped spec if it names a model that load_model can load here, else ModelSpecError /
    ModelNotAvailable / FileNotFoundError with a one-line message (did-you-mean for preset names and
    tags). Reads no weights: the CLI calls it for every --model before loading any of them."""
    spec = str(spec).strip()
    if not spec:
        raise ModelSpecError("empty model spec; try 'clipkit-tiny:synthetic' or 'ViT-B-32:openai'")
    if spec.startswith(("hf-hub:", "local-dir:")):
        _check_hub_available(spec)
        return spec
    path = Path(spec).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / CHECKPOINT_META).exists()):
            raise ModelSpecError(
                f"{spec!r} exists but is not a clipkit checkpoint folder (no {CHECKPOINT_META} inside). "
                f"For a bare weights file, name its architecture: 'ViT-B-32:{spec}'; for an open_clip "
                f"folder with open_clip_config.json use 'local-dir:{spec}'.")
        return spec
    name, _, tag = spec.partition(":")
    if name not in open_clip.list_models():
        raise ModelSpecError(_unknown_arch(name, tag))
    if _is_weights_tag(tag):
        if not Path(tag).expanduser().exists():
            raise FileNotFoundError(f"{spec!r}: weights file not found: {Path(tag).expanduser()}")
    elif name in PRESETS:
        if tag not in ("", *PRESET_TAGS):
            raise ModelSpecError(f"{spec!r}: unknown tag {tag!r} for the clipkit preset {name}"
                                 f"{_did_you_mean(tag, PRESET_TAGS)}; known tags: {list(PRESET_TAGS)} "
                                 f"(or a weights file '{name}:/path/to/weights.safetensors')")
        ckpt = default_checkpoint_dir(name)
        if tag == "synthetic" and not (ckpt / WEIGHTS_FILE).exists():
            raise ModelNotAvailable(
                f"{spec!r}: the trained default model is not cached at {ckpt}. Train it with "
                f"`clipkit train --preset {name.removeprefix('clipkit-')} --out {ckpt}` "
                f"(or `make model`), a few minutes on a CPU.")
    elif tag:
        _check_pretrained_available(name, tag, spec)
    else:
        raise ModelSpecError(
            f"{spec!r} names an architecture without weights. Add a pretrained tag, e.g. "
            f"'{name}:{(open_clip.list_pretrained_tags_by_model(name) or ['openai'])[0]}', a weights "
            f"file '{name}:/path/to/weights.safetensors', or use a preset {list(PRESETS)} for random init.")
    return spec


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device = "cpu"):
    """Load any model spec (see the module docstring) as (model, preprocess, tokenizer), in eval mode.

    `preprocess` is the model's evaluation transform (resize, centre crop, normalise). Every spec is
    first checked by check_spec, so a typo fails in one line before any weights are read.
    """
    spec = check_spec(spec)
    if spec.startswith(("hf-hub:", "local-dir:")):
        model, _, preprocess = open_clip.create_model_and_transforms(spec)
        tokenizer = open_clip.get_tokenizer(spec)
    elif Path(spec).expanduser().exists():   # a clipkit checkpoint folder (check_spec made sure)
        model, preprocess, tokenizer = _load_clipkit_checkpoint(Path(spec).expanduser())
    else:
        name, _, tag = spec.partition(":")
        if _is_weights_tag(tag):
            sd = read_state_dict(Path(tag).expanduser())
            model, _, preprocess = create_model(name, **architecture_kwargs(sd))
            _load_state_dict(model, sd, Path(tag).expanduser(), spec=spec)
        elif name in PRESETS and tag == "synthetic":
            model, preprocess, _ = _load_clipkit_checkpoint(default_checkpoint_dir(name))
        elif name in PRESETS:
            model, _, preprocess = create_model(name)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag)
        tokenizer = open_clip.get_tokenizer(name)
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


def _load_clipkit_checkpoint(folder: Path):
    try:
        meta = json.loads((folder / CHECKPOINT_META).read_text())
        arch = meta["arch"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ModelSpecError(f"{folder / CHECKPOINT_META} is not a clipkit checkpoint sidecar ({e})") from e
    sd = read_state_dict(folder / WEIGHTS_FILE)
    model, _, preprocess = create_model(arch, **architecture_kwargs(sd))
    _load_state_dict(model, sd, folder / WEIGHTS_FILE, spec=str(folder))
    return model, preprocess, open_clip.get_tokenizer(arch)


# --- offline checks ---------------------------------------------------------------------------
def _unknown_arch(name: str, tag: str = "") -> str:
    import difflib
    close = [c + (f":{tag}" if tag else "") for c in difflib.get_close_matches(name, open_clip.list_models(), n=3)]
    return (f"unknown model architecture {name!r}" + (f"; did you mean {close}?" if close else "") +
            f" Presets: {list(PRESETS)} (tags: {list(PRESET_TAGS)}); open_clip has "
            f"{len(open_clip.list_models())} (open_clip.list_models()).")


def _network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True if a TCP connection to host:443 opens within `timeout` s (DNS included, run in a thread)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CLIPKIT_OFFLINE") == "1":
        return False
    ok = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _hf_cached(repo_id: str, filenames) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in filenames)


def _offline_error(spec: str, what: str) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"{spec!r}: {what} is not on this machine and the network is unreachable. Supply the weights "
        f"by (a) copying the Hugging Face cache (~/.cache/huggingface/hub) from a machine that has it, "
        f"(b) passing a local file as 'ARCH:/path/to/weights.safetensors', or (c) an open_clip folder "
        f"as 'local-dir:/path'.")


def _check_pretrained_available(name: str, tag: str, spec: str) -> None:
    known = open_clip.list_pretrained_tags_by_model(name)
    if tag not in known:
        raise ModelSpecError(f"{spec!r}: unknown pretrained tag {tag!r} for {name}{_did_you_mean(tag, known)}; "
                             f"known tags: {known}")
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("hf_hub"):
        # open_clip writes 'org/repo/file.bin', or 'org/repo/' for the default file name
        repo, fname = os.path.split(cfg["hf_hub"])
        fname = fname or "open_clip_pytorch_model.bin"
        names = [fname, fname.rsplit(".", 1)[0] + ".safetensors", "open_clip_model.safetensors"]
        if _hf_cached(repo, names):
            return
    if cfg.get("url"):
        cached = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if cached.exists():
            return
    if not _network_reachable():
        raise _offline_error(spec, f"the {tag!r} weights of {name}")


def _check_hub_available(spec: str) -> None:
    if spec.startswith("local-dir:"):
        path = Path(spec.removeprefix("local-dir:")).expanduser()
        if not (path / "open_clip_config.json").exists():
            raise ModelSpecError(f"{spec!r}: {path} has no open_clip_config.json (open_clip's local-dir "
                                 f"layout is that file plus open_clip_model.safetensors)")
        return
    repo = spec.removeprefix("hf-hub:")
    if not _hf_cached(repo, ["open_clip_config.json"]) and not _network_reachable():
        raise _offline_error(spec, f"the hub repository {repo!r}")
