"""Paired comparison of two models on the same items: the one pairing of per-item results, used by
reports/index.html (model folders) and the training experiments (arms).

Items are paired on their identity, `item_id` (a hash of the image's pixels and the candidate
captions, written by the caption-choice engine), never on their position: two report folders run
with different seeds hold different images under the same `item` numbers, and comparing them item
by item would test nothing. When the two tables do not hold the same items the comparison is
refused, naming the probe.

The test: each item's tie credit (1/t when the true caption is among t tied best, as the accuracy
counts it; 0/1 correctness for tables without credit), compared by stats.paired_cluster_test, which
flips whole clusters (items sharing a scene, e.g. the two members of a mirrored pair, column
`cluster`). With one item per cluster and 0/1 correctness it is exactly McNemar's test.
"""
from __future__ import annotations

import sys
from pathlib import Path

KEY = "item_id"


class ItemMismatch(ValueError):
    """Two per-item tables do not hold the same items, so a paired test would pair different questions."""


def paired_comparisons(root: str | Path, baseline: str | None = None, exclude=(),
                       refused: list | None = None) -> list[dict]:
    """Compare each model folder's per-item probe tables with the baseline folder's, on item identity.

    A probe table is any `<probe>.csv` with `item_id` and `credit` or `correct` columns (what
    ProbeResult.save writes). The baseline is the given folder name, else the first folder
    alphabetically; folders named in `exclude` are skipped. A pair of tables that do not hold the
    same items (other seed, other n, a table written before item ids) is refused: one stderr line
    names the probe and the folders, and `refused` (a list, when given) gets {probe, baseline,
    model, reason}. Returns one dict per (probe, model): accuracies, n, discordant counts,
    the paired test's p-value and method.
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
            try:
                t = paired_test(a, b, probe=table.stem)
            except ItemMismatch as e:
                print(f"[clipkit] paired comparison refused: {other.name} vs {base.name}: {e}", file=sys.stderr)
                if refused is not None:
                    refused.append({"probe": table.stem, "baseline": base.name, "model": other.name, "reason": str(e)})
                continue
            out.append({"probe": table.stem, "baseline": base.name, "model": other.name, "n": t["n"],
                        "acc_baseline": t["acc_a"], "acc_model": t["acc_b"],
                        **{k: t[k] for k in ("only_a", "only_b", "p_value", "diff", "method")}})
    return out


def paired_test(a, b, key: str = KEY, probe: str = "probe") -> dict:
    """Paired test of `a` against `b`, two per-item tables of the same items, matched on `key`.

    Each table needs `key` and `credit` (or a boolean `correct`); a `cluster` column (of a) groups
    items that share a scene. Raises ItemMismatch naming `probe` when a table lacks `key` or the two
    hold different items (an item id repeated within a table is matched by its occurrence).
    Returns n, acc_a, acc_b, only_a (items a scored better on), only_b, p_value (two-sided), diff
    (acc_a - acc_b), ci_low / ci_high of diff, n_clusters and method.
    """
    from clipkit.core.stats import paired_cluster_test
    cols = []
    for name, t in (("a", a), ("b", b)):
        if key not in t.columns:
            raise ItemMismatch(f"{probe}: table {name} has no {key!r} column (written before item ids?), so its "
                               f"items cannot be matched; rerun the probe")
        if not {"credit", "correct"} & set(t.columns):
            raise ValueError(f"{probe}: per-item table {name} has neither 'credit' nor 'correct'; columns are "
                             f"{list(t.columns)}")
        score = t["credit"].astype(float) if "credit" in t else t["correct"].astype(bool).astype(float)
        cols.append(t.assign(_score=score, _k=t[key].astype(str), _occ=t.groupby(key).cumcount()))
    ka, kb = set(zip(cols[0]["_k"], cols[0]["_occ"])), set(zip(cols[1]["_k"], cols[1]["_occ"]))
    if ka != kb:
        raise ItemMismatch(f"{probe}: the two tables hold different items ({len(ka - kb)} only in a, "
                           f"{len(kb - ka)} only in b, {len(ka & kb)} shared): run both with the same spec, n and seed")
    keep = ["_k", "_occ", "_score"] + (["cluster"] if "cluster" in cols[0] else [])
    both = cols[0][keep].merge(cols[1][["_k", "_occ", "_score"]], on=["_k", "_occ"], suffixes=("_a", "_b"))
    if both.empty:
        nan = float("nan")
        return {"n": 0, "acc_a": nan, "acc_b": nan, "only_a": 0, "only_b": 0, "p_value": 1.0, "diff": nan,
                "ci_low": nan, "ci_high": nan, "n_clusters": 0, "method": "no items"}
    clusters = both["cluster"].astype(str) if "cluster" in both else both.index.to_numpy()
    t = paired_cluster_test(both["_score_a"], both["_score_b"], clusters)
    return {"n": len(both), "acc_a": float(both["_score_a"].mean()), "acc_b": float(both["_score_b"].mean()),
            **{k: t[k] for k in ("only_a", "only_b", "p_value", "diff", "ci_low", "ci_high", "n_clusters", "method")}}


def _read(pd, path: Path):
    """A caption-choice per-item table (item_id, credit/correct, cluster), or None for anything else."""
    if not path.exists():
        return None
    wanted = ("item", KEY, "correct", "credit", "cluster", "classifier")
    try:
        t = pd.read_csv(path, usecols=lambda c: c in wanted)
    except (ValueError, OSError):
        return None
    if "item" not in t.columns or not {"correct", "credit"} & set(t.columns) or "classifier" in t.columns:
        return None   # not a caption-choice table (e.g. fine-grained tables hold two classifiers)
    return t
