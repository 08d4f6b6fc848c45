"""Atomic file writes: the one home for every file clipkit writes (checkpoints, caches, results, reports).

Every write goes to a temporary file in the same folder, is fsync'ed and then renamed over the
target, so a crash leaves either the old file or the new one, never half of one. The file gets the
mode a plain open() would give it (0666 less the umask, as torch.save and open_clip's files):
mkstemp alone makes it 0600, unreadable by colleagues on a shared cluster volume.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask can only be read by
    setting it, which would race with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> Path:
    """Call write(tmp_path), give it the umask's mode, fsync it and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())   # after the writer: one that recreates the file keeps it too
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


def atomic_write_with(path: Path, write) -> Path:
    """Atomically produce `path` with a writer that needs a file name, e.g.
    `lambda tmp: fig.savefig(tmp, format="png")`; the temporary name ends in .tmp, so a writer that
    picks its format from the suffix must be told the format."""
    return _atomic(path, write)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: Path, obj) -> Path:
    """Write `obj` as indented JSON (unknown types as str) to `path` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path):
    """The parsed JSON file, or None when it is missing or unreadable (e.g. cut by a crash in an
    older, non-atomic writer): callers treat that as "no record yet"."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_safetensors_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    """Save `tensors` as a safetensors file atomically; returns the path."""
    from safetensors.torch import save_file
    return _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


class OutputPathError(ValueError):
    """An output folder cannot be used; the message names the path and the reason in one line."""


def ensure_writable_dir(path, flag: str = "--out") -> Path:
    """Create folder `path` (and its parents) and check that a file can be written in it, before any
    work is done; OutputPathError (one line: the flag, the path, the reason) otherwise."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(f"{flag} {path}: is a file, not a folder; give a folder path") from None
    except NotADirectoryError:
        parent = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise OutputPathError(f"{flag} {path}: cannot be created, {parent} is a file") from None
    except OSError as e:
        raise OutputPathError(f"{flag} {path}: cannot be created ({e.strerror}); choose a folder you "
                              f"can write to") from None
    try:   # os.access is unreliable on network filesystems: write a real file
        fd, probe = tempfile.mkstemp(prefix=".clipkit-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputPathError(f"{flag} {path}: not writable ({e.strerror}); choose a folder you can write "
                              f"to") from None
    return path
