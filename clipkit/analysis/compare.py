"""Paired comparison of two models on the same items (exact McNemar test): the one pairing of per-item
correctness, used by reports/index.html (model folders) and the training experiments (arms)."""
from __future__ import annotations

from pathlib import Path


def paired_comparisons(root: str | Path, baseline: str | None = None, exclude=()) -> list[dict]:
    """Compare each model folder's per-item probe tables with the baseline folder's, item by item.

    A probe table is any `<probe>.csv` with `item` and `correct` columns (what ProbeResult.save
    writes). Two models are compared only on the items both answered, which are the same images
    when they ran the same spec and seed. The baseline is the given folder name, else the first
    folder alphabetically; folders named in `exclude` are skipped. The pairing and the test are
    `paired_test`. Returns one dict per (probe, model): accuracies, n, discordant counts, the exact
    two-sided McNemar p-value.
    """
    import pandas as pd
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
            t = paired_test(a, b)
            if not t["n"]:
                continue
            out.append({"probe": table.stem, "baseline": base.name, "model": other.name, "n": t["n"],
                        "acc_baseline": t["acc_a"], "acc_model": t["acc_b"],
                        **{k: t[k] for k in ("only_a", "only_b", "p_value", "diff")}})
    return out


def paired_test(a, b, key: str = "item") -> dict:
    """Exact McNemar test of `a` against `b`, two per-item tables (DataFrames with `key` and a boolean
    `correct` column), on the items both answered (an inner join on `key`, in a's order).

    Returns n, acc_a, acc_b, only_a (items only a got right), only_b, p_value (two-sided) and
    diff (acc_a - acc_b); with no shared item n is 0, the accuracies and diff NaN and p 1.
    """
    from clipkit.core.stats import mcnemar
    for name, t in (("a", a), ("b", b)):
        if missing := {key, "correct"} - set(t.columns):
            raise ValueError(f"per-item table {name} has no column(s) {sorted(missing)}; columns are "
                             f"{list(t.columns)} (paired tests need {key!r} and 'correct')")
    both = a[[key, "correct"]].merge(b[[key, "correct"]], on=key, suffixes=("_a", "_b"))
    if both.empty:
        nan = float("nan")
        return {"n": 0, "acc_a": nan, "acc_b": nan, "only_a": 0, "only_b": 0, "p_value": 1.0, "diff": nan}
    ca, cb = both["correct_a"].astype(bool), both["correct_b"].astype(bool)
    return {"n": len(both), "acc_a": float(ca.mean()), "acc_b": float(cb.mean()), **mcnemar(ca, cb)}


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
