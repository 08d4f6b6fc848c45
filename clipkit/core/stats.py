"""Honest statistics for probe results: bootstrap confidence intervals, per-factor tables, paired tests."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

EPS = 1e-3  # logit clip: logit(1 - 1e-3) = 6.9, i.e. 0/1 accuracies count as 0.1% / 99.9%
N_BOOT = 2000  # bootstrap resamples: enough for stable 95% percentile intervals at n in the hundreds


def logit(p, eps: float = EPS):
    """ln(p / (1 - p)) of p clipped to [eps, 1 - eps]; same shape as p (a float for a scalar)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    out = np.log(p) - np.log1p(-p)
    return float(out) if out.ndim == 0 else out


def bootstrap_ci(values, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (e.g. per-item correctness). (nan, nan) if empty."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def accuracy_summary(correct, chance, seed: int = 0) -> dict:
    """accuracy, 95% CI, n, chance level and whether the CI lies above / below / around chance."""
    c = np.asarray(correct, dtype=np.float64)
    ch = float(np.mean(chance)) if np.size(chance) else float("nan")
    lo, hi = bootstrap_ci(c, seed=seed)
    verdict = "above chance" if lo > ch else "below chance" if hi < ch else "at chance"
    return {"accuracy": float(c.mean()) if c.size else float("nan"), "ci_low": lo, "ci_high": hi,
            "n": int(c.size), "chance": ch, "verdict": verdict}


def by_factor(table: pd.DataFrame, factor: str, correct: str = "correct", chance: str = "chance") -> pd.DataFrame:
    """One row per level of `factor`: accuracy, CI, n, chance, verdict."""
    if factor not in table:
        raise KeyError(f"no factor {factor!r} in the table; factors: {list(table.columns)}")
    rows = [{factor: level, **accuracy_summary(g[correct], g[chance], seed=i)}
            for i, (level, g) in enumerate(table.groupby(factor, sort=True))]
    return pd.DataFrame(rows)


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test of two models on the same items: do they differ in accuracy?

    Counts the discordant items (a right / b wrong and vice versa); the p-value is the two-sided
    binomial test of those counts against 1/2.
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError("paired test needs the same items for both models")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(sps.binomtest(only_a, n, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p, "diff": float(a.mean() - b.mean())}
