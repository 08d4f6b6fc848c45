"""The on-disk feature cache: features keyed by (model fingerprint, dataset fingerprint, preprocessing).

Every measurement in clipkit stands on image features; computing them is the slow part, reading
them back is not. An entry is two files under `clipkit_home()/features/<dataset>-<data hash>/`
(one folder per dataset x preprocessing x precision, one entry per model in it):

    <model fingerprint>-<key>.json          what the entry is (the key's parts, counts, non-tensor labels)
    <model fingerprint>-<key>.safetensors   the tensors (features (N, d) float32, index (N,), targets (N,))

The folder is named without the model so that a first request can see it is a miss before the
model's fingerprint (a hash of all its weights, ~1 s for a ViT-B) is known, and hash meanwhile.

Both are written atomically (temporary file + rename), the JSON first: an entry exists when its
safetensors file does, so a crash mid-write leaves a miss, never half an entry. An unreadable
entry is logged and treated as a miss (and then overwritten).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from clipkit.core.fingerprints import files_fingerprint, folder_fingerprint, params_fingerprint  # noqa: F401
from clipkit.core.files import atomic_write_json, save_safetensors_atomic
from clipkit.models import clipkit_home, fingerprint, slugify

log = logging.getLogger("clipkit.evaluate")
CACHE_FORMAT = 1  # bump when the entry layout changes: old entries then simply miss

_fp_memo: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def model_fingerprint(model: torch.nn.Module) -> str:
    """`clipkit.models.fingerprint`, memoised per model object while its weights are unchanged.

    Hashing a ViT-B/32 reads 600 MB; a cached lookup should not. Each tensor's version counter
    moves on every in-place write (optimiser steps, load_state_dict), so (identity, storage,
    version) of every parameter and buffer says whether the weights can have changed.
    """
    model = getattr(model, "module", model)  # DDP-wrapped
    tensors = list(model.parameters()) + list(model.buffers())
    sig = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
    hit = _fp_memo.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    fp = fingerprint(model)
    _fp_memo[model] = (sig, fp)
    return fp


def transform_fingerprint(transform) -> str:
    """A hash of a preprocessing pipeline's description (torchvision's repr lists every step's size,
    interpolation, mean and std). Memory addresses in reprs of plain functions are dropped."""
    if transform is None:
        return "none"
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FeatureCache:
    """Features on disk under `root` (default `clipkit_home()/features`).

    Use: key = cache.key(model=<model fp>, dataset=<dataset fp>, preprocess=<transform fp>, ...);
    then cache.load(key, name) -> (tensors, meta) or None, and cache.save(key, tensors, meta, name).
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else clipkit_home() / "features"

    def key(self, **parts: str) -> dict:
        """The cache key: its parts (kept in the entry's JSON), their hash, and the hash of the parts
        other than the model (`data`: which dataset, preprocessing and precision). `model` is required."""
        if "model" not in parts:
            raise ValueError("a feature cache key needs the model fingerprint (model=...)")
        data = {k: v for k, v in parts.items() if k != "model"}
        return {"parts": {"format": CACHE_FORMAT, **parts}, "hash": params_fingerprint(format=CACHE_FORMAT, **parts),
                "data": self.data_hash(**data)}

    @staticmethod
    def data_hash(**data_parts: str) -> str:
        """The hash of a key's parts other than the model: names the folder of that data's entries."""
        return params_fingerprint(format=CACHE_FORMAT, **data_parts)

    def folder(self, data_hash: str, name: str = "features") -> Path:
        """Entries of one (dataset, preprocessing, precision), one per model; `name` only makes it readable."""
        return self.root / f"{slugify(name)[:60]}-{data_hash}"

    def has_entries(self, data_hash: str, name: str = "features") -> bool:
        """Whether any model has an entry for this data (False: a miss for every model, no fingerprint needed)."""
        folder = self.folder(data_hash, name)
        with _lock:
            if any(p.parent == folder for p in _pending):
                return True
        return folder.is_dir() and any(folder.glob("*.safetensors"))

    def paths(self, key: dict, name: str = "features") -> tuple[Path, Path]:
        """(json, safetensors) paths of an entry."""
        stem = f"{key['parts']['model']}-{key['hash'][:8]}"
        folder = self.folder(key["data"], name)
        return folder / f"{stem}.json", folder / f"{stem}.safetensors"

    def load(self, key: dict, name: str = "features") -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, meta) of a cached entry, or None on a miss."""
        meta_path, tensor_path = self.paths(key, name)
        _wait(tensor_path)
        if not tensor_path.exists():
            return None
        try:
            from safetensors.torch import load_file
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key["parts"]:
                raise ValueError("key in the entry differs from the requested key (hash collision?)")
            return load_file(str(tensor_path)), meta
        except Exception as e:  # truncated by a full disk, edited by hand, written by another version
            log.warning("feature cache entry %s is unreadable (%s: %s); recomputing", tensor_path,
                        type(e).__name__, e)
            return None

    def save(self, key: dict, tensors: dict[str, torch.Tensor], meta: dict | None = None,
             name: str = "features", background: bool = False) -> Path:
        """Write an entry atomically (JSON first, then the tensors: the tensors' file marks it complete).

        background=True returns at once and writes in a writer thread (the caller's request need
        not wait for the fsyncs); the tensors are copied first, so the caller may modify its own.
        A later load of the same entry, in this process, waits for the write.
        """
        meta_path, tensor_path = self.paths(key, name)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        record = {"key": key["parts"], **(meta or {})}
        if not background:
            return _write(meta_path, tensor_path, tensors, record)
        tensors = {k: v.clone() for k, v in tensors.items()}
        with _lock:
            _pending[tensor_path] = _writer().submit(_write, meta_path, tensor_path, tensors, record)
        return tensor_path


# --- writes in the background -------------------------------------------------------------------
_lock = threading.Lock()
_pending: dict[Path, Future] = {}  # entry being written -> its write
_pool: ThreadPoolExecutor | None = None


def _writer() -> ThreadPoolExecutor:
    """One writer thread; Python joins it at exit, so an entry being written is finished, not lost."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(1, thread_name_prefix="feature-cache-writer")
    return _pool


def _write(meta_path: Path, tensor_path: Path, tensors: dict, record: dict) -> Path:
    try:
        atomic_write_json(meta_path, record)
        return save_safetensors_atomic(tensors, tensor_path)
    except Exception as e:  # a full disk costs a cache entry, not the measurement
        log.warning("could not write feature cache entry %s: %s: %s", tensor_path, type(e).__name__, e)
        raise


def _wait(path: Path | None = None) -> None:
    """Wait for the background write of `path` (every pending write when None); errors were logged."""
    with _lock:
        futures = [f for p, f in _pending.items() if path is None or p == path]
    for f in futures:
        try:
            f.result()
        except Exception:
            pass
    with _lock:
        for p, f in list(_pending.items()):
            if f.done():
                del _pending[p]


def flush() -> None:
    """Wait until every feature-cache entry being written in the background is on disk."""
    _wait()


def as_cache(cache) -> FeatureCache | None:
    """Normalise a `cache=` argument: True -> the default cache, False/None -> none, a path -> a cache there."""
    if cache is True:
        return FeatureCache()
    if cache is None or cache is False:
        return None
    if isinstance(cache, FeatureCache):
        return cache
    return FeatureCache(cache)
