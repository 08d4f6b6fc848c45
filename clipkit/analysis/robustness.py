"""Effective and relative robustness under distribution shift (Taori et al. 2020; CLIP paper §3.3).

Across a family of models, out-of-distribution accuracy is close to a linear function of
in-distribution accuracy once both are logit-transformed. Fit that line to a *reference* family;
a model's effective robustness (ER) is how far its OOD accuracy lies above the line:

    ER = acc_ood - sigmoid(slope * logit(acc_id) + intercept)

in accuracy units (a fraction in [-1, 1]; multiply by 100 for points), as Taori et al. define it
(rho(f) = acc2(f) - beta(acc1(f)), beta fitted in logit space and mapped back). A model on the line
has ER 0. Relative robustness is any OOD gain over a baseline model, plain accuracy difference.

All functions are pure and take accuracies as fractions in [0, 1]. Accuracies of exactly 0 or 1
(common on small probe sets) have infinite logits, so `logit` clips to [EPS, 1 - EPS] first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from clipkit.core.stats import EPS, N_BOOT, logit  # noqa: F401  (logit: part of this module's API)
from clipkit.world.shifts import IN_DISTRIBUTION

def fit_trend(id_acc, ood_acc, eps: float = EPS) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line logit(ood_acc) ~ logit(id_acc) over models."""
    x, y = np.atleast_1d(logit(id_acc, eps)), np.atleast_1d(logit(ood_acc, eps))
    if x.shape != y.shape:
        raise ValueError(f"need one OOD accuracy per ID accuracy, got {x.shape} and {y.shape}")
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("fitting a trend needs at least two models with different ID accuracies")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def predicted_ood(id_acc, slope: float, intercept: float, eps: float = EPS):
    """The trend's OOD accuracy at `id_acc`: sigmoid(slope * logit(id_acc) + intercept)."""
    out = expit(slope * np.asarray(logit(id_acc, eps)) + intercept)
    return float(out) if np.ndim(out) == 0 else out


def effective_robustness(id_acc, ood_acc, slope: float, intercept: float, eps: float = EPS):
    """OOD accuracy minus the trend's prediction at the model's ID accuracy (accuracy units)."""
    out = np.asarray(ood_acc, dtype=np.float64) - predicted_ood(id_acc, slope, intercept, eps)
    return float(out) if out.ndim == 0 else out


def relative_robustness(ood_acc, baseline_ood_acc):
    """OOD accuracy gained over a baseline model (e.g. a linear probe over its zero-shot head)."""
    out = np.asarray(ood_acc, dtype=np.float64) - np.asarray(baseline_ood_acc, dtype=np.float64)
    return float(out) if out.ndim == 0 else out


def robustness_table(table: pd.DataFrame, reference=None, id_name: str = IN_DISTRIBUTION,
                     eps: float = EPS) -> pd.DataFrame:
    """Per (model, shift, severity): ID and OOD accuracy, the trend's prediction and the ER.

    `table` is tidy, with columns model, shift, severity, accuracy and exactly one row per model
    with shift == `id_name` (its severity is ignored). For each (shift, severity) a trend is fitted
    to the `reference` models (default: all models), which need at least two distinct ID accuracies.
    A reference model helps fit its own line, so prefer a separate, large reference family.
    """
    missing = {"model", "shift", "severity", "accuracy"} - set(table.columns)
    if missing:
        raise KeyError(f"table lacks columns {sorted(missing)}")
    is_id = table["shift"] == id_name
    id_rows = table[is_id]
    if id_rows["model"].duplicated().any():
        raise ValueError(f"more than one {id_name!r} row for models "
                         f"{sorted(id_rows.loc[id_rows['model'].duplicated(), 'model'].unique())}")
    id_acc = id_rows.set_index("model")["accuracy"]
    ood = table[~is_id].copy()
    if (lacking := sorted(set(ood["model"]) - set(id_acc.index))):
        raise ValueError(f"models without an {id_name!r} row: {lacking}")
    reference = list(id_acc.index) if reference is None else list(reference)
    ood["id_accuracy"] = ood["model"].map(id_acc)
    parts = []
    for (shift, severity), g in ood.groupby(["shift", "severity"], sort=True, dropna=False):
        ref = g[g["model"].isin(reference)]
        try:
            slope, intercept = fit_trend(ref["id_accuracy"], ref["accuracy"], eps)
        except ValueError as e:
            raise ValueError(f"shift {shift!r} severity {severity}: {e}") from None
        g = g.assign(slope=slope, intercept=intercept,
                     predicted=predicted_ood(g["id_accuracy"].to_numpy(), slope, intercept, eps))
        parts.append(g.assign(effective_robustness=g["accuracy"] - g["predicted"]))
    return pd.concat(parts, ignore_index=True)


def robustness_by_model(table: pd.DataFrame, reference=None, baseline: str | None = None,
                        id_name: str = IN_DISTRIBUTION, eps: float = EPS) -> pd.DataFrame:
    """One row per model: ID accuracy, mean OOD accuracy, gap (ID - OOD), effective robustness,
    and relative robustness over `baseline` (a model name) when given.

    Averages weigh each shift equally: severities are averaged within a shift first, so a style
    with one severity counts as much as a corruption with five.
    """
    rows = robustness_table(table, reference, id_name, eps)
    per_shift = rows.groupby(["model", "shift"])[["id_accuracy", "accuracy", "effective_robustness"]].mean()
    out = per_shift.groupby("model").mean().rename(columns={"accuracy": "ood_accuracy"})
    out["gap"] = out["id_accuracy"] - out["ood_accuracy"]
    out["n_shifts"] = per_shift.groupby("model").size()
    if baseline is not None:
        if baseline not in out.index:
            raise ValueError(f"baseline {baseline!r} is not a model in the table")
        base = out.loc[baseline, "ood_accuracy"]
        out["relative_robustness"] = relative_robustness(out["ood_accuracy"], base)
    return out.reset_index()


def bootstrap_effective_robustness(id_correct, ood_correct, slope: float, intercept: float, *,
                                   paired: bool = True, n_boot: int = N_BOOT, level: float = 0.95,
                                   seed: int = 0, eps: float = EPS) -> dict:
    """ER of one model with a percentile bootstrap CI over its items, the trend held fixed.

    id_correct, ood_correct: per-item correctness (0/1). paired=True when the OOD items are the ID
    items shifted (the same index is the same scene): items are then resampled jointly, which
    cancels item difficulty. The interval covers item sampling only, not the trend's uncertainty.
    """
    a, b = np.asarray(id_correct, dtype=np.float64), np.asarray(ood_correct, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("need at least one ID and one OOD item")
    if paired and a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same items in both sets, got {a.size} and {b.size}")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = ia if paired else rng.integers(0, b.size, size=(n_boot, b.size))
    ers = effective_robustness(a[ia].mean(1), b[ib].mean(1), slope, intercept, eps)
    q = (1 - level) / 2
    return {"effective_robustness": effective_robustness(a.mean(), b.mean(), slope, intercept, eps),
            "ci_low": float(np.quantile(ers, q)), "ci_high": float(np.quantile(ers, 1 - q)),
            "n_id": int(a.size), "n_ood": int(b.size)}


def effective_robustness_of(results: list, reference: list[str] | None = None) -> pd.DataFrame:
    """Effective robustness across several ShiftResults (clipkit.probes.shift), one per model: every
    (model, classifier) is a point; the logit-space trend of OOD vs ID accuracy is fitted per (shift, severity) over the
    `reference` points (default: all, named "<model> | <classifier>"), as in §3.3. Needs at least
    three points with distinct ID accuracies: two points define the line and leave no residual."""
    tidy = pd.concat([r.table.assign(model=r.model + " | " + r.table["classifier"]) for r in results],
                     ignore_index=True)
    ids = tidy[tidy["shift"] == IN_DISTRIBUTION]
    ref = ids if reference is None else ids[ids["model"].isin(reference)]
    if ref["accuracy"].nunique() < 3:
        raise ValueError(f"effective robustness needs a trend over 3+ classifiers with distinct ID accuracies, "
                         f"got {ref['accuracy'].nunique()} ({sorted(ref['model'])}); with one model report "
                         f"the drop and relative robustness in ShiftResult.robustness instead")
    return robustness_by_model(tidy[["model", "shift", "severity", "accuracy"]], reference)
