"""Paired comparison of models on the same probe items (exact McNemar test), for reports/index.html."""
from __future__ import annotations

from pathlib import Path


def paired_comparisons(root: str | Path, baseline: str | None = None, exclude=()) -> list[dict]:
    """Compare each model folder's per-item probe tables with the baseline folder's, item by item.

    A probe table is any `<probe>.csv` with `item` and `correct` columns (what ProbeResult.save
    writes). Two models are compared only on the items both answered, which are the same images
    when they ran the same spec and seed. The baseline is the given folder name, else the first
    folder alphabetically; folders named in `exclude` are skipped. Returns one dict per (probe, model): accuracies, n, discordant counts,
    the exact two-sided McNemar p-value.
    """
    import pandas as pd
    from clipkit.core.stats import mcnemar
    root = Path(root)
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name not in exclude and any(d.glob("*.csv")))
    if len(dirs) < 2:
        return []
    base = next((d for d in dirs if d.name == baseline), dirs[0])
    out = []
    for table in sorted(base.glob("*.csv")):
        a = _read(pd, table)
        if a is None:
            continue
        for other in dirs:
            if other == base or (b := _read(pd, other / table.name)) is None:
                continue
            both = a.merge(b, on="item", suffixes=("_a", "_b"))
            if both.empty:
                continue
            test = mcnemar(both["correct_a"].astype(bool), both["correct_b"].astype(bool))
            out.append({"probe": table.stem, "baseline": base.name, "model": other.name, "n": len(both),
                        "acc_baseline": float(both["correct_a"].mean()), "acc_model": float(both["correct_b"].mean()),
                        **test})
    return out


def _read(pd, path: Path):
    if not path.exists():
        return None
    try:
        t = pd.read_csv(path, usecols=lambda c: c in ("item", "correct", "classifier"))
    except (ValueError, OSError):
        return None
    if not {"item", "correct"} <= set(t.columns) or "classifier" in t.columns:
        return None   # not a caption-choice table (e.g. fine-grained tables hold two classifiers)
    return t[["item", "correct"]]
