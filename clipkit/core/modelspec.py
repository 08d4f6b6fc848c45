"""The model spec grammar without torch: what a spec string names, and whether it can be loaded here.

    clipkit-tiny                  our preset, randomly initialised (seed 0): the chance-level control
    clipkit-tiny:random           the same, spelled out
    clipkit-tiny:synthetic        the embedded default: clipkit-tiny trained by `clipkit train` (cached)
    ViT-B-32:openai               an open_clip architecture + pretrained tag (weights must be cached)
    ViT-B-32:/path/weights.pt     an open_clip architecture + a local weights file (.safetensors/.pt/.bin)
    hf-hub:org/name               an open_clip model on the Hugging Face hub (must be cached offline)
    local-dir:/path/to/dir        a folder with open_clip_config.json + weights (open_clip's layout)
    /path/to/run_or_checkpoint    a clipkit checkpoint folder (model.safetensors + clipkit.json)

`parse` says what a spec names; `check` also says whether it can be loaded on this machine, in one line
with did-you-mean. Preset and architecture names are read from config files (ours in
clipkit/models/configs/, open_clip's bundled model_configs/ found without importing open_clip), so a
misspelt name or preset tag is refused in milliseconds; only a pretrained tag ('ViT-B-32:opnai') needs
open_clip's table, imported once the cheap checks have passed. clipkit.models loads what this names.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
import socket
import sys
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from clipkit.core.paths import clipkit_home

DEFAULT_MODEL = "clipkit-tiny:synthetic"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "models" / "configs"   # our presets' open_clip configs
PRESETS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
PRESET_TAGS = ("random", "synthetic")   # what may follow a preset's name (besides a weights path)
CHECKPOINT_META = "clipkit.json"        # sidecar of a clipkit checkpoint: architecture, config, versions
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB, LOCAL_DIR = "hf-hub:", "local-dir:"


class ModelNotAvailable(RuntimeError):
    """The spec is valid but its weights are not on this machine and cannot be fetched."""


class ModelSpecError(ValueError):
    """The spec string names nothing clipkit knows how to load."""


@dataclass(frozen=True)
class ModelSpec:
    """What a spec string names (see the module docstring); `source` says which line of the grammar."""
    spec: str                  # the spec as written, stripped
    source: str                # "preset", "pretrained", "weights", "hf-hub", "local-dir" or "run"
    name: str = ""             # the preset or open_clip architecture (preset, pretrained, weights)
    tag: str = ""              # a preset's tag ("", random, synthetic) or an open_clip pretrained tag
    path: Path | None = None   # the weights file, local-dir folder or run folder


def default_checkpoint_dir(preset: str = "clipkit-tiny") -> Path:
    """The cache folder of the trained embedded default for a preset (`<preset>:synthetic`)."""
    return clipkit_home() / "models" / f"{preset}-synthetic"


def did_you_mean(word: str, known) -> str:
    """' (did you mean 'x'?)' for the closest of `known`, or ''."""
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_weights_tag(tag: str) -> bool:
    """Is what follows 'ARCH:' a weights file (an existing path, a path, or a weights file name)?"""
    return bool(tag) and (Path(tag).expanduser().exists() or "/" in tag or tag.endswith(WEIGHTS_SUFFIXES))


@cache
def _bundled_architectures() -> tuple[str, ...]:
    """open_clip's bundled architecture names, read from its model_configs/*.json without importing it
    (the same files and the same filter as open_clip.factory._rescan_model_configs)."""
    found = importlib.util.find_spec("open_clip")
    names = []
    for folder in (found.submodule_search_locations or []) if found else []:
        for cf in Path(folder, "model_configs").glob("*.json"):
            try:
                cfg = json.loads(cf.read_text())
            except (OSError, ValueError):
                continue
            if all(a in cfg for a in ("embed_dim", "vision_cfg", "text_cfg")):
                names.append(cf.stem)
    return tuple(names)


def architectures() -> list[str]:
    """Every architecture name a spec may start with: open_clip's (open_clip.list_models() once it is
    imported, which also sees configs registered at run time, else its bundled files) and our presets."""
    oc = sys.modules.get("open_clip")
    return sorted({*(oc.list_models() if oc is not None else _bundled_architectures()), *PRESETS})


def parse(spec) -> ModelSpec:
    """What a spec string names, by the grammar alone (no check that it exists or loads: see `check`).

    Checked in this order: the hf-hub: and local-dir: prefixes; an existing path (a run folder); then
    NAME[:TAG], where TAG is a weights file when it is a path or ends like one."""
    spec = str(spec).strip()
    if spec.startswith(HUB):
        return ModelSpec(spec, "hf-hub", name=spec.removeprefix(HUB))
    if spec.startswith(LOCAL_DIR):
        return ModelSpec(spec, "local-dir", path=Path(spec.removeprefix(LOCAL_DIR)).expanduser())
    if spec and Path(spec).expanduser().exists():
        return ModelSpec(spec, "run", path=Path(spec).expanduser())
    name, _, tag = spec.partition(":")
    if is_weights_tag(tag):
        return ModelSpec(spec, "weights", name=name, path=Path(tag).expanduser())
    return ModelSpec(spec, "preset" if name in PRESETS else "pretrained", name=name, tag=tag)


def check(spec) -> ModelSpec:
    """The parsed spec if it names a model that clipkit.models.load_model can load here, else
    ModelSpecError / ModelNotAvailable / FileNotFoundError with a one-line message (did-you-mean for
    preset and architecture names and tags). Reads no weights; imports open_clip only for a
    pretrained tag, once everything else about the spec is known to be right."""
    m = parse(spec)
    if not m.spec:
        raise ModelSpecError("empty model spec; try 'clipkit-tiny:synthetic' or 'ViT-B-32:openai'")
    if m.source in ("hf-hub", "local-dir"):
        _check_hub_available(m)
        return m
    if m.source == "run":
        if not (m.path.is_dir() and (m.path / CHECKPOINT_META).exists()):
            raise ModelSpecError(
                f"{m.spec!r} exists but is not a clipkit checkpoint folder (no {CHECKPOINT_META} inside). "
                f"For a bare weights file, name its architecture: 'ViT-B-32:{m.spec}'; for an open_clip "
                f"folder with open_clip_config.json use 'local-dir:{m.spec}'.")
        return m
    known = architectures()
    if m.name not in known:
        raise ModelSpecError(unknown_arch(m.name, m.tag, known))
    if m.source == "weights":
        if not m.path.exists():
            raise FileNotFoundError(f"{m.spec!r}: weights file not found: {m.path}")
    elif m.source == "preset":
        if m.tag not in ("", *PRESET_TAGS):
            raise ModelSpecError(f"{m.spec!r}: unknown tag {m.tag!r} for the clipkit preset {m.name}"
                                 f"{did_you_mean(m.tag, PRESET_TAGS)}; known tags: {list(PRESET_TAGS)} "
                                 f"(or a weights file '{m.name}:/path/to/weights.safetensors')")
        ckpt = default_checkpoint_dir(m.name)
        if m.tag == "synthetic" and not (ckpt / WEIGHTS_FILE).exists():
            raise ModelNotAvailable(
                f"{m.spec!r}: the trained model is not cached at {ckpt}. Train it with " + (
                    f"`clipkit train --preset tiny --out {ckpt}` (or `make model`)" if m.name == "clipkit-tiny" else
                    f"`clipkit train --preset tiny --model {m.name} --out {ckpt}` (the default's recipe on "
                    f"this architecture)") + ", minutes on a CPU.")
    elif m.tag:
        _check_pretrained_available(m)
    else:
        import open_clip   # the architecture's pretrained tags, for the hint (the spec is wrong anyway)
        raise ModelSpecError(
            f"{m.spec!r} names an architecture without weights. Add a pretrained tag, e.g. "
            f"'{m.name}:{(open_clip.list_pretrained_tags_by_model(m.name) or ['openai'])[0]}', a weights "
            f"file '{m.name}:/path/to/weights.safetensors', or use a preset {list(PRESETS)} for random init.")
    return m


def check_spec(spec) -> str:
    """The stripped spec string if `check` accepts it (the CLI checks every --model this way first)."""
    return check(spec).spec


def unknown_arch(name: str, tag: str = "", known=None) -> str:
    """The one-line message for an architecture name that is neither a preset nor open_clip's."""
    known = architectures() if known is None else known
    close = [c + (f":{tag}" if tag else "") for c in difflib.get_close_matches(name, known, n=3)]
    return (f"unknown model architecture {name!r}" + (f"; did you mean {close}?" if close else "") +
            f" Presets: {list(PRESETS)} (tags: {list(PRESET_TAGS)}); open_clip has "
            f"{len(known)} (open_clip.list_models()).")


# --- offline checks ---------------------------------------------------------------------------
def network_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
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


def _check_pretrained_available(m: ModelSpec) -> None:
    import open_clip   # its pretrained tags live in Python tables, not files: the one check that needs it
    known = open_clip.list_pretrained_tags_by_model(m.name)
    if m.tag not in known:
        raise ModelSpecError(f"{m.spec!r}: unknown pretrained tag {m.tag!r} for {m.name}"
                             f"{did_you_mean(m.tag, known)}; known tags: {known}")
    cfg = open_clip.get_pretrained_cfg(m.name, m.tag)
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
    if not network_reachable():
        raise _offline_error(m.spec, f"the {m.tag!r} weights of {m.name}")


def _check_hub_available(m: ModelSpec) -> None:
    if m.source == "local-dir":
        if not (m.path / "open_clip_config.json").exists():
            raise ModelSpecError(f"{m.spec!r}: {m.path} has no open_clip_config.json (open_clip's local-dir "
                                 f"layout is that file plus open_clip_model.safetensors)")
        return
    if not _hf_cached(m.name, ["open_clip_config.json"]) and not network_reachable():
        raise _offline_error(m.spec, f"the hub repository {m.name!r}")
