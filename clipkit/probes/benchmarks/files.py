"""Reading the benchmarks' files: the root folder (or $CLIPKIT_DATA/<benchmark>), JSON and parquet with errors that
name the file, items checked for their keys, hub image cells."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from clipkit.probes.protocol import SpecError

DATA_ENV = "CLIPKIT_DATA"   # a folder with one sub-folder per benchmark ($CLIPKIT_DATA/sugarcrepe/...)


class BenchmarkDataError(SpecError):
    """The benchmark's files are missing, malformed, or too many of its images cannot be read."""


def require_root(benchmark: str, root, expected: list[str], where: str) -> Path:
    """The root folder as a Path (unset: $CLIPKIT_DATA/<benchmark>); a missing or absent one raises naming the
    benchmark, the files expected and where the authors publish them."""
    files = ", ".join(expected)
    if not root and os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV]).expanduser() / benchmark
    if not root:
        raise BenchmarkDataError(f"{benchmark}: option root is not set (nor ${DATA_ENV}, whose {benchmark}/ "
                                 f"sub-folder is used then); it must name the folder holding {files} "
                                 f"(published at {where}); e.g. --option root=DIR")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise BenchmarkDataError(f"{benchmark}: root {str(path)!r} is not a folder; it must hold {files} "
                                 f"(published at {where})")
    return path


def require_keys(file, item_id, record, keys) -> None:
    """Raise naming the file, the item and the keys expected when `record` (a dict) lacks any of `keys`."""
    if not isinstance(record, dict):
        raise BenchmarkDataError(f"{file}: item {item_id!r} is a {type(record).__name__}, not a mapping; each item "
                                 f"needs the keys {list(keys)}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise BenchmarkDataError(f"{file}: item {item_id!r} lacks key(s) {missing}; each item needs {list(keys)}")


def read_json(path: Path):
    """json.load with an error naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BenchmarkDataError(f"{path}: cannot read as JSON ({type(e).__name__}: {e})") from e


def read_parquet(path: Path) -> pd.DataFrame:
    """A parquet file as a DataFrame; without pyarrow, a one-line error naming the install."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise BenchmarkDataError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from e
    return pq.read_table(path).to_pandas()


def image_bytes(cell) -> bytes:
    """The encoded bytes of a hub parquet image cell ({'bytes': ..., 'path': ...} or raw bytes); b"" for an
    empty cell, which then counts as an unreadable image (skipped and counted, never dropped silently)."""
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    return bytes(cell) if isinstance(cell, (bytes, bytearray, memoryview)) else b""


def limited(items: list, limit: int | None) -> list:
    """The first `limit` items (all when None)."""
    return items if limit is None else items[:limit]
