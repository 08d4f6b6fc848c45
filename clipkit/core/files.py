"""Atomic file writes: the one home for every file clipkit writes (checkpoints, caches, results, reports).

Every write goes to a temporary file in the same folder, is fsync'ed and then renamed over the
target, so a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _atomic(path: Path, write) -> Path:
    """Call write(tmp_path), fsync it and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_safetensors_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file
    return _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
