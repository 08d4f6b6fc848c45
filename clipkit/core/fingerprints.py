"""Cheap, stable fingerprints of files, folders and parameters: the data half of every cache key."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable


def files_fingerprint(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """A hash of file names, sizes and modification times: changes when any file is added, removed,
    replaced or edited, without reading the files. Paths are taken relative to `root` if given."""
    h = hashlib.sha256()
    for p in sorted(map(str, paths)):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{os.path.relpath(p, root) if root else p}\0{stamp}\n".encode())
    return h.hexdigest()[:16]


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """`files_fingerprint` of every file below `folder` (names relative to it)."""
    folder = Path(folder)
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    return files_fingerprint(files, root=folder)


def params_fingerprint(**params) -> str:
    """A hash of JSON-able parameters (e.g. a synthetic dataset's family, n, seed and split)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
