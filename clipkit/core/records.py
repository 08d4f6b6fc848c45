"""The one results writer: JSON records (CLIP_benchmark-compatible) with config, versions and git revision,
the tidy per-item table as CSV beside them, and the merge of many records into one table.

Every result clipkit writes (probes, evaluation, experiments, report metrics) goes through
`write_record` (or `write_result`, its CLIP_benchmark-named form) and `jsonable`.

A record: {"dataset", "model", "pretrained", "task", "metrics": {...}, "language": "en", "config": {...},
"versions": {...}} -- CLIP_benchmark's fields (its `build` step reads them) plus the configuration
and package versions that produced it. File names come from one template, RESULT_TEMPLATE.
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from clipkit.core.files import atomic_write_json
from clipkit.core.paths import slugify

if TYPE_CHECKING:   # pandas only where a table is merged: notebooks import this via clipkit.report
    import pandas as pd

RESULT_TEMPLATE = "{dataset}_{model}_{task}.json"   # CLIP_benchmark's default output template
TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "image_caption_selection")
_PACKAGES = ("clipkit", "torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn", "pillow")


def split_spec(spec: str) -> tuple[str, str]:
    """(model, pretrained) as CLIP_benchmark names them: 'ViT-B-32:openai' -> ('ViT-B-32', 'openai');
    'clipkit-tiny' -> ('clipkit-tiny', 'random'); hub names and paths stay whole with pretrained ''."""
    spec = str(spec)
    if spec.startswith(("hf-hub:", "local-dir:")) or "/" in spec.partition(":")[0]:
        return spec, ""
    model, _, tag = spec.partition(":")
    return model, tag or ("random" if model.startswith("clipkit-") else "")


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(dist: str) -> str | None:
    """An installed distribution's version from its metadata (no import of the package), or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions(extra: Iterable[str] = ()) -> dict:
    """Versions of python and of the packages behind a measurement (plus the distributions named in
    `extra`, e.g. papermill for a report run), and clipkit's git revision."""
    out = {"python": platform.python_version()}
    for p in dict.fromkeys((*_PACKAGES, *extra)):
        out[p] = package_version(p)
    out["git_revision"] = _git_revision()
    return out


def jsonable(x):
    """A JSON-safe copy: numpy scalars and arrays -> Python, NaN/inf -> None (JSON has neither;
    CLIP_benchmark's files hold NaN, which strict parsers reject), tuples -> lists, dict keys -> str,
    dataclasses -> dicts, paths -> str."""
    import dataclasses
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):   # numpy scalars and arrays, torch tensors
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_record(out_dir, name: str, record: dict, table: pd.DataFrame | None = None,
                 tables: dict | None = None) -> Path:
    """Write `<name>.json` (the record, JSON-safe, with `versions` added unless present) and, when given,
    `<name>.csv` (the tidy per-item table) and `<name>.<key>.csv` for each extra table, all atomically.
    Returns the JSON path."""
    from clipkit.core.files import atomic_write_text
    out = Path(out_dir)
    if table is not None:
        atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    for key, df in (tables or {}).items():
        atomic_write_text(out / f"{name}.{key}.csv", df.to_csv(index=False))
    record = {**record, "versions": record.get("versions") or versions()}
    return atomic_write_text(out / f"{name}.json", json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")


def result_record(dataset: str, model: str, task: str, metrics: dict, config: dict | None = None,
                  language: str = "en") -> dict:
    """A CLIP_benchmark-style record for `model` (a clipkit spec) on `dataset` for `task`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; CLIP_benchmark's tasks are {TASKS}")
    name, pretrained = split_spec(model)
    return {"dataset": dataset, "model": name, "pretrained": pretrained, "task": task,
            "metrics": jsonable(dict(metrics)), "language": language,
            "config": jsonable({"model_spec": model, **(config or {})}), "versions": versions()}


def result_path(out_dir, dataset: str, model: str, task: str) -> Path:
    """out_dir / RESULT_TEMPLATE, with the dataset and the model spec slugified."""
    return Path(out_dir) / RESULT_TEMPLATE.format(dataset=slugify(dataset), model=slugify(model), task=task)


def write_result(record: dict, out_dir) -> Path:
    """Write a record atomically to its templated file name; returns the path."""
    spec = record.get("config", {}).get("model_spec") or ":".join(
        p for p in (record["model"], record["pretrained"]) if p)
    return atomic_write_json(result_path(out_dir, record["dataset"], spec, record["task"]), record)


def load_results(paths: str | Path | Iterable) -> list[dict]:
    """Records from JSON files: a folder (every *.json in it), one file, or a list of files."""
    if isinstance(paths, (str, Path)):
        p = Path(paths)
        paths = sorted(p.glob("*.json")) if p.is_dir() else [p]
    records = []
    for p in paths:
        rec = json.loads(Path(p).read_text())
        if not {"dataset", "model", "task", "metrics"} <= set(rec):
            raise ValueError(f"{p} is not a result record (needs dataset, model, task, metrics)")
        records.append({**rec, "_path": str(p)})
    return records


def merge_results(paths: str | Path | Iterable) -> pd.DataFrame:
    """One row per record: dataset, model, pretrained, task, language, then one column per metric
    (NaN where a task has no such metric), like CLIP_benchmark's `build` table."""
    import pandas as pd
    rows = [{"dataset": r["dataset"], "model": r["model"], "pretrained": r.get("pretrained", ""),
             "task": r["task"], "language": r.get("language", "en"),
             **{k: (float("nan") if v is None else v) for k, v in r["metrics"].items()
                if not isinstance(v, (dict, list))}}
            for r in load_results(paths)]
    cols = ["dataset", "model", "pretrained", "task", "language"]
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(rows).sort_values(cols[:4], ignore_index=True)
