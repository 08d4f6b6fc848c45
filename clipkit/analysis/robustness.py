"""Effective and relative robustness under distribution shift (Taori et al. 2020; CLIP paper §3.3).

Across a family of models, out-of-distribution accuracy is close to a linear function of
in-distribution accuracy once both are logit-transformed. Fit that line to a *reference* family;
a model's effective robustness (ER) is how far its OOD accuracy lies above the line:

    ER = acc_ood - sigmoid(slope * logit(acc_id) + intercept)

in accuracy units (a fraction in [-1, 1]; multiply by 100 for points), as Taori et al. define it
(rho(f) = acc2(f) - beta(acc1(f)), beta fitted in logit space and mapped back). A model on the line
has ER 0. Relative robustness is any OOD gain over a baseline model, plain accuracy difference.

Reference, never in-sample (CLIP §3.3 fits the line to 204 ImageNet-trained models and scores
zero-shot CLIP, which is not among them). A model that helps fit the line is partly scored against
itself: with two points the line passes through both and every "ER" is 0 by construction. So:

- with a `reference` (model names, or for ShiftResults the points of one classifier), the trend is
  fitted to the reference alone and only the *other* models get an `effective_robustness`; the
  reference rows get NaN there (they define the line) and `in_reference` True;
- without one, the number is what it is, the residual of each model from the trend of all the
  models in the table, and its column is named `residual_from_trend`, never effective robustness.

For the synthetic world the documented reference is the *linear-probe* points (REFERENCE_CLASSIFIER):
one ID-trained classifier per model, the analogue of CLIP §3.3's ImageNet-trained models, on the same
features and scenes, at no extra training cost; zero-shot points are scored against their line.

Intervals: `effective_robustness_of` bootstraps scenes (a scene and all its shifted copies are one
cluster, resampled together for every model), refitting the reference line in every replicate, so
the CI covers the scored model's items and the line's own uncertainty.

All functions are pure and take accuracies as fractions in [0, 1]. Accuracies of exactly 0 or 1
(common on small probe sets) have infinite logits, so `logit` clips to [EPS, 1 - EPS] first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from clipkit.core.stats import EPS, LEVEL, N_BOOT, logit  # noqa: F401  (logit: part of this module's API)
from clipkit.probes.shift_results import CLASSIFIERS
from clipkit.world.shifts import IN_DISTRIBUTION

ER = "effective_robustness"          # distance from a line fitted to an independent reference family
RESIDUAL = "residual_from_trend"     # distance from a line fitted to the same models (in-sample)
REFERENCE_CLASSIFIER = "linear probe"  # the synthetic world's reference family (see the docstring)


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


def _reference(models, reference) -> tuple[list, str]:
    """(reference model names, the distance's column name) after checking `reference` against `models`."""
    models = list(dict.fromkeys(models))
    if reference is None:
        return models, RESIDUAL
    reference = list(dict.fromkeys([reference] if isinstance(reference, str) else reference))
    if (unknown := [r for r in reference if r not in models]):
        raise ValueError(f"reference models {unknown} are not in the table (models: {models})")
    if not [m for m in models if m not in reference]:
        raise ValueError("every model is in the reference, so none can be scored against it: pass the models to "
                         "score beside a reference family, or reference=None for the residual from the trend of "
                         "these models (named residual_from_trend, not effective robustness)")
    return reference, ER


def robustness_table(table: pd.DataFrame, reference=None, id_name: str = IN_DISTRIBUTION,
                     eps: float = EPS) -> pd.DataFrame:
    """Per (model, shift, severity): ID and OOD accuracy, the trend's prediction and the distance from it.

    `table` is tidy, with columns model, shift, severity, accuracy and exactly one row per model
    with shift == `id_name` (its severity is ignored). For each (shift, severity) a trend is fitted
    to the `reference` models (two or more distinct ID accuracies) and every other model gets its
    `effective_robustness`; reference rows get NaN (they fit the line) and `in_reference` True.
    reference=None fits the trend to all models and names the distance `residual_from_trend`: an
    in-sample residual, not effective robustness (see the module docstring).
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
    reference, column = _reference(id_acc.index, reference)
    ood["id_accuracy"] = ood["model"].map(id_acc)
    ood["in_reference"] = ood["model"].isin(reference)
    parts = []
    for (shift, severity), g in ood.groupby(["shift", "severity"], sort=True, dropna=False):
        ref = g[g["in_reference"]]
        try:
            slope, intercept = fit_trend(ref["id_accuracy"], ref["accuracy"], eps)
        except ValueError as e:
            raise ValueError(f"shift {shift!r} severity {severity}: {e}") from None
        g = g.assign(slope=slope, intercept=intercept,
                     predicted=predicted_ood(g["id_accuracy"].to_numpy(), slope, intercept, eps))
        dist = g["accuracy"] - g["predicted"]
        parts.append(g.assign(**{column: dist.where(~g["in_reference"]) if column == ER else dist}))
    return pd.concat(parts, ignore_index=True)


def robustness_by_model(table: pd.DataFrame, reference=None, baseline: str | None = None,
                        id_name: str = IN_DISTRIBUTION, eps: float = EPS) -> pd.DataFrame:
    """One row per model: ID accuracy, mean OOD accuracy, gap (ID - OOD), the distance from the trend
    (`effective_robustness` against a reference, else `residual_from_trend`: see robustness_table),
    `in_reference`, and relative robustness over `baseline` (a model name) when given.

    Averages weigh each shift equally: severities are averaged within a shift first, so a style
    with one severity counts as much as a corruption with five.
    """
    rows = robustness_table(table, reference, id_name, eps)
    column = ER if ER in rows else RESIDUAL
    per_shift = rows.groupby(["model", "shift"])[["id_accuracy", "accuracy", column]].mean()
    out = per_shift.groupby("model").mean().rename(columns={"accuracy": "ood_accuracy"})
    out["gap"] = out["id_accuracy"] - out["ood_accuracy"]
    out["n_shifts"] = per_shift.groupby("model").size()
    out["in_reference"] = rows.groupby("model")["in_reference"].first()   # in-sample: every model
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

    The trend (slope, intercept) must come from a reference family the model is not part of (e.g. a
    published one); `effective_robustness_of` fits it from several results and resamples it too.

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


def bootstrap_family(id_correct, ood_correct, weights, in_reference, *, n_boot: int = N_BOOT,
                     level: float = LEVEL, seed: int = 0, eps: float = EPS) -> dict:
    """Distance of every model from the logit trend of the reference models, with a bootstrap CI.

    id_correct (M, n): per-item credit of M models on the n ID items; ood_correct (M, S, n) on S
    shifted conditions of the *same* n items (item i of every condition is scene i shifted); weights
    (S,): each condition's share of the OOD mean (they sum to 1); in_reference (M,) bool. Per
    condition a trend is fitted to the reference models and each model's distance from it is
    weighted into one number, as robustness_by_model does. A replicate resamples the n scenes once,
    with every condition's copy and every model's answer on them (scenes are the clusters), and
    refits the trends, so the CI covers the line's uncertainty too. Reference models' distances are
    in-sample: effective_robustness_of reports them only when every model is in the reference,
    as residuals. Returns {"estimate" (M,), "ci_low" (M,), "ci_high" (M,), "n_boot" (replicates
    with a defined trend)}.
    """
    a, b = np.asarray(id_correct, np.float64), np.asarray(ood_correct, np.float64)
    w, ref = np.asarray(weights, np.float64), np.asarray(in_reference, bool)
    if a.ndim != 2 or b.shape != (a.shape[0], w.size, a.shape[1]) or ref.shape != (a.shape[0],):
        raise ValueError(f"need id_correct (M, n), ood_correct (M, S, n), weights (S,), in_reference (M,); "
                         f"got {a.shape}, {b.shape}, {w.shape}, {ref.shape}")
    if ref.sum() < 2:
        raise ValueError(f"a trend needs 2+ reference models, got {int(ref.sum())}")

    def distance(id_acc, ood_acc):             # (M, B), (M, S, B) -> (M, B); NaN where a trend is undefined
        x, y = logit(id_acc, eps), logit(ood_acc, eps)
        xr, yr = x[ref], y[ref]                 # (R, B), (R, S, B)
        xm, ym = xr.mean(0), yr.mean(0)         # (B,), (S, B)
        sxx = ((xr - xm) ** 2).sum(0)           # (B,)
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = ((xr - xm)[:, None] * (yr - ym)).sum(0) / sxx          # (S, B): least squares per condition
        pred = expit(slope * x[:, None] + (ym - slope * xm))               # (M, S, B)
        return ((ood_acc - pred) * w[:, None]).sum(1)                      # weighted over conditions

    n = a.shape[1]
    est = distance(a.mean(1)[:, None], b.mean(2)[..., None])[:, 0]
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).T / n   # (n, B)
    reps = distance(a @ counts, b @ counts)                                                        # (M, B)
    ok = np.isfinite(reps).all(0)
    q = (1 - level) / 2
    lo, hi = (np.quantile(reps[:, ok], [q, 1 - q], axis=1) if ok.any() else np.full((2, a.shape[0]), np.nan))
    return {"estimate": est, "ci_low": lo, "ci_high": hi, "n_boot": int(ok.sum())}


def family_arrays(results, classifier_columns):
    """(points, id (M, n), ood (M, S, n), weights (S,), paired) from ShiftResults' per-item tables.

    classifier_columns: (classifier, item column) pairs, e.g. ("zero-shot", "zs_correct"); a point per
    (result, classifier present). Every result must hold the same conditions, items and targets. paired
    is True when every condition holds the ID items (shifted copies of the same scenes); otherwise the
    arrays are None (a folder of other images is no copy, and scenes cannot be resampled together)."""
    first = results[0].items
    keys = ["shift", "severity", "item"]
    conds = first[["shift", "severity"]].drop_duplicates()
    conds = conds[conds["shift"] != IN_DISTRIBUTION]
    n_sev = conds.groupby("shift")["severity"].transform("size").to_numpy()
    weights = 1.0 / (n_sev * conds["shift"].nunique())                    # severities within a shift, then shifts
    order = first.sort_values(keys)
    sizes = order.groupby(["shift", "severity"], sort=False).size()
    ids = order.loc[order["shift"] == IN_DISTRIBUTION, "item"].to_numpy()
    paired = sizes.nunique() == 1 and all(
        np.array_equal(g["item"].to_numpy(), ids) for _, g in order.groupby(["shift", "severity"]))
    points, id_rows, ood_rows = [], [], []
    for r in results:
        t = r.items.sort_values(keys)
        if not t[keys].reset_index(drop=True).equals(order[keys].reset_index(drop=True)) or (
                "target" in t and not np.array_equal(t["target"].to_numpy(), order["target"].to_numpy())):
            raise ValueError(f"model {r.model!r} was not scored on the same scenes as {results[0].model!r}: "
                             f"run every model on the same spec, n and seed")
        for clf, col in classifier_columns:
            if col not in t:
                continue
            points.append(f"{r.model} | {clf}")
            id_rows.append(t.loc[t["shift"] == IN_DISTRIBUTION, col].to_numpy(np.float64))
            ood_rows.append([t.loc[(t["shift"] == sh) & (t["severity"] == sv), col].to_numpy(np.float64)
                             for sh, sv in conds.itertuples(index=False)])
    if not paired:
        return points, None, None, weights, False
    return points, np.stack(id_rows), np.array(ood_rows), weights, True


def effective_robustness_of(results: list, reference=REFERENCE_CLASSIFIER, n_boot: int = N_BOOT,
                            level: float = LEVEL, seed: int = 0) -> pd.DataFrame:
    """Effective robustness across several ShiftResults (clipkit.probes.shift), one per model, as in §3.3.

    Every (model, classifier) is a point named "<model> | <classifier>". `reference` is the family
    the logit-space trend is fitted to, per (shift, severity): a classifier name (default "linear
    probe": every model's ID-trained probe, the synthetic world's documented reference, see the
    module docstring) or a list of point names. Only the points outside it are scored, with a scene
    bootstrap CI (bootstrap_family: the line is refitted in every replicate). reference=None fits the
    trend to every point and reports `residual_from_trend` (in-sample, not effective robustness), with
    the same CI. The reference needs 2+ points with distinct ID accuracies; without a reference, 3+.
    The CI is NaN when the shifted conditions are not copies of the ID scenes (see family_arrays).
    The table's attrs["reference"] names the reference ("in-sample (these models)" without one).
    """
    columns = list(zip(CLASSIFIERS, ("zs_correct", "lp_correct")))
    points, id_c, ood_c, weights, paired = family_arrays(results, columns)
    if isinstance(reference, str) and reference in CLASSIFIERS:
        reference = [p for p in points if p.endswith(f" | {reference}")]
    tidy = pd.concat([r.table.assign(model=r.model + " | " + r.table["classifier"]) for r in results],
                     ignore_index=True)
    ids = tidy[tidy["shift"] == IN_DISTRIBUTION]
    ref = ids if reference is None else ids[ids["model"].isin(reference)]
    need = 3 if reference is None else 2
    if ref["accuracy"].nunique() < need:
        what = ("the trend of these models needs 3+ points" if reference is None else
                f"the reference {sorted(reference)} needs 2+ points")
        raise ValueError(f"effective robustness not computed: {what} with distinct ID accuracies, got "
                         f"{ref['accuracy'].nunique()}; add models (each brings a linear-probe reference point), "
                         f"pass reference=None for the residual from the trend of these models, or with one model "
                         f"read the drop and relative robustness in ShiftResult.robustness")
    out = robustness_by_model(tidy[["model", "shift", "severity", "accuracy"]], reference)
    column = ER if ER in out else RESIDUAL
    out["ci_low"] = out["ci_high"] = np.nan
    if paired:
        in_ref = np.array([p in set(ref["model"]) for p in points])
        boot = bootstrap_family(id_c, ood_c, weights, in_ref, n_boot=n_boot, level=level, seed=seed)
        ci = pd.DataFrame({"model": points, "ci_low": boot["ci_low"], "ci_high": boot["ci_high"]})
        out = out.drop(columns=["ci_low", "ci_high"]).merge(ci, on="model", how="left")
        out.loc[out[column].isna(), ["ci_low", "ci_high"]] = np.nan      # reference points: no distance, no CI
    out.attrs["reference"] = "in-sample (these models)" if reference is None else sorted(reference)
    return out
