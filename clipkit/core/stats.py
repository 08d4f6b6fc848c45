"""Honest statistics for probe results: exact and cluster-aware intervals for accuracies, per-factor
tables, paired tests (exact McNemar, cluster sign-flip), Bonferroni, and the bootstrap for the rest.

Which tool for which number:

    an accuracy (a proportion)                 accuracy_summary: Clopper-Pearson + exact binomial test
    an accuracy over clustered items           accuracy_summary(clusters=...): Korn-Graubard, see there
    a statistic that is not a proportion       bootstrap_ci / cluster_bootstrap_ci (percentile)
    two models on the same independent items   mcnemar (exact)
    two models on the same clustered items     paired_cluster_test (cluster sign-flip, exact when it can be)
    several tests in one table                 bonferroni

The percentile bootstrap of a proportion collapses to [1, 1] when every item is right (n = 2 both
right would be "above chance" at chance 0.5), so it never decides a verdict about an accuracy here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

EPS = 1e-3  # logit clip: logit(1 - 1e-3) = 6.9, i.e. 0/1 accuracies count as 0.1% / 99.9%
N_BOOT = 2000  # bootstrap resamples: enough for stable 95% percentile intervals at n in the hundreds
LEVEL = 0.95  # confidence level of every interval; the tests against chance are two-sided at 1 - LEVEL
N_FLIPS = 20000  # Monte Carlo sign flips when the paired cluster test cannot be enumerated exactly


def logit(p, eps: float = EPS):
    """ln(p / (1 - p)) of p clipped to [eps, 1 - eps]; same shape as p (a float for a scalar)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    out = np.log(p) - np.log1p(-p)
    return float(out) if out.ndim == 0 else out


def bootstrap_ci(values, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values`, for statistics that are not proportions (margins,
    scores, differences); accuracies get accuracy_summary's exact interval. (nan, nan) if empty."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def _cluster_codes(clusters, n: int) -> np.ndarray:
    """Cluster ids (any hashable values, one per item) as codes 0..G-1; a one-line error on a bad length."""
    ids = pd.Series(list(clusters) if not isinstance(clusters, (np.ndarray, pd.Series)) else clusters)
    if len(ids) != n:
        raise ValueError(f"clusters has {len(ids)} ids for {n} items: give one cluster id per item "
                         f"(e.g. the scene or image each item was made from)")
    if ids.isna().any():
        raise ValueError("clusters has missing ids: every item needs the id of its scene, image or pair")
    return pd.factorize(ids, sort=True)[0]


def cluster_bootstrap_ci(values, clusters, stat=np.mean, n_boot: int = N_BOOT, level: float = LEVEL,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile CI of stat(values) resampling whole clusters with replacement (items sharing a scene,
    an image or a mirrored pair stay together), for statistics that are not proportions.

    For stat=np.mean the resampled mean is computed from cluster sums (fast); any other stat is
    applied to the concatenated items of each resample. (nan, nan) if empty.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    codes = _cluster_codes(clusters, v.size)
    g = codes.max() + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, g, size=(n_boot, g))                      # (n_boot, G) cluster picks
    if stat is np.mean:
        sums, sizes = np.bincount(codes, v, g), np.bincount(codes, minlength=g)
        counts = np.stack([np.bincount(d, minlength=g) for d in draws])  # (n_boot, G) multiplicities
        boots = (counts @ sums) / (counts @ sizes)
    else:
        members = [np.flatnonzero(codes == c) for c in range(g)]
        boots = np.array([stat(v[np.concatenate([members[c] for c in d])]) for d in draws])
    a = (1 - level) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


# --- exact binomial machinery (real-valued counts allowed: the effective counts of clustered data) ---
def clopper_pearson(k: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion from beta quantiles: k successes of n.

    lower = Beta(a/2; k, n-k+1), upper = Beta(1-a/2; k+1, n-k), with 0 and 1 at k = 0 and k = n.
    k and n may be real (an effective count); for integers this is the textbook interval, the one
    scipy.stats.binomtest(k, n).proportion_ci(method="exact") gives.
    """
    if n <= 0:
        return float("nan"), float("nan")
    a = 1 - level
    lo = 0.0 if k <= 0 else float(sps.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(sps.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def binomial_p_value(k: float, n: float, p0: float) -> float:
    """Two-sided exact binomial test of k successes of n against p0: twice the smaller tail (capped at 1).

    This central form is the test the Clopper-Pearson interval inverts, so p < 1 - level exactly when
    p0 lies outside clopper_pearson(k, n, level): the verdict and the interval never disagree.
    Tails via the beta-binomial identity P(X >= k) = I_p0(k, n-k+1), which also accepts real k, n.
    """
    if n <= 0 or not np.isfinite(p0):
        return float("nan")
    upper = 1.0 if k <= 0 else float(sps.beta.cdf(p0, k, n - k + 1))      # P(X >= k | p0)
    lower = 1.0 if k >= n else float(sps.beta.sf(p0, k + 1, n - k))       # P(X <= k | p0)
    return min(1.0, 2 * min(upper, lower))


def _effective_count(credit: np.ndarray, codes: np.ndarray) -> tuple[float, int]:
    """Korn-Graubard effective sample size of a clustered proportion: (n_eff, number of clusters)."""
    g = int(codes.max()) + 1
    m = credit.size
    sums, sizes = np.bincount(codes, credit, g), np.bincount(codes, minlength=g)
    p = sums.sum() / m
    if g >= 2:
        # linearisation variance of the ratio estimator sum(S_g) / sum(m_g), clusters drawn with replacement
        var = g / (g - 1) * float(((sums - p * sizes) ** 2).sum()) / m ** 2
    else:
        var = 0.0
    # no between-cluster variation seen (all right, all wrong, or one cluster): count each cluster once,
    # the most the design can be worth when every cluster is a copy of one item
    n_eff = min(m, p * (1 - p) / var) if var > 0 else float(g)
    if g >= 2:  # degrees-of-freedom adjustment (t quantiles at n - 1 vs G - 1): few clusters widen it
        q = 1 - (1 - LEVEL) / 2
        n_eff *= (sps.t.ppf(q, m - 1) / sps.t.ppf(q, g - 1)) ** 2
    return float(min(n_eff, m)), g


def accuracy_summary(correct, chance, seed: int = 0, clusters=None) -> dict:
    """accuracy, 95% CI, n, chance level and whether the accuracy is above / below / at chance.

    correct: per-item correctness or tie credit in [0, 1] (the engine's `credit` column: 1/t when the
    true caption is among t tied best). chance: a level, or one per item (their mean is used: when
    items differ in chance, the count under chance is Poisson-binomial, whose variance is at most
    the binomial's at the mean level, so the test is conservative).

    Without clusters (items independent): the interval is Clopper-Pearson and the verdict comes from
    the two-sided exact binomial test against chance at alpha = 0.05 (`p_value`), in the central form
    the interval inverts, so "above chance" means exactly ci_low > chance. Tie credit: `accuracy` is the
    exact mean credit; the test and the interval use successes = the sum of credits rounded to the
    nearest integer (half to even). The credit is the expected score of breaking the tie at random,
    so the rounded count is the likeliest outcome of that draw; it moves the proportion by at most
    0.5 / n, far inside the interval's width, and an all-tied item set still tests as chance.

    With clusters (one id per item; items sharing a scene, an image or a mirrored pair share an id):
    Korn & Graubard (1998): the design effect from the cluster-level (linearisation) variance of the
    accuracy gives an effective sample size n_eff = p(1-p) / var, shrunk by the degrees-of-freedom
    factor (t_{n-1} / t_{G-1})^2 for G clusters, and the Clopper-Pearson interval and exact test are
    taken at n_eff with p * n_eff successes. Duplicating every item therefore leaves the interval as
    it was (up to that small degrees-of-freedom factor). When the clusters show no variation (all right, all wrong), n_eff = G: each cluster
    counts once. Tie credit enters the cluster sums as it is (no rounding: p * n_eff is real anyway).
    (A cluster bootstrap's percentile interval collapses at all-right as the item bootstrap does.)

    Keys: accuracy, ci_low, ci_high, n, chance, verdict ("above chance" / "below chance" /
    "at chance"; "no items" when n = 0), p_value, ci_method, and n_clusters, n_eff with clusters.
    `seed` is kept for callers; the exact methods draw nothing.
    """
    c = np.asarray(correct, dtype=np.float64).reshape(-1)
    if c.size and (not np.isfinite(c).all() or (c < 0).any() or (c > 1).any()):
        raise ValueError("correct must hold per-item correctness or tie credit in [0, 1]; got values outside")
    ch = float(np.mean(chance)) if np.size(chance) else float("nan")
    if c.size and not 0 <= ch <= 1:
        raise ValueError(f"chance must be a probability in [0, 1], got {ch}")
    out = {"accuracy": float(c.mean()) if c.size else float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "n": int(c.size), "chance": ch, "verdict": "no items",
           "p_value": float("nan"),
           "ci_method": "clopper-pearson" if clusters is None else "korn-graubard (clustered)"}
    if clusters is not None:
        codes = _cluster_codes(clusters, c.size)
        if not c.size:
            return {**out, "n_clusters": 0, "n_eff": 0.0}
        n_eff, g = _effective_count(c, codes)
        k, n = out["accuracy"] * n_eff, n_eff
        out.update(n_clusters=g, n_eff=n_eff)
    else:
        if not c.size:
            return out
        k, n = float(np.rint(c.sum())), float(c.size)
    out["ci_low"], out["ci_high"] = clopper_pearson(k, n)
    p = out["p_value"] = binomial_p_value(k, n, ch)
    out["verdict"] = ("at chance" if not p < 1 - LEVEL else "above chance" if k / n > ch else "below chance")
    return out


def by_factor(table: pd.DataFrame, factor: str, correct: str = "correct", chance: str = "chance",
              clusters: str | None = None) -> pd.DataFrame:
    """One row per level of `factor`: accuracy_summary of its items (accuracy, CI, n, chance, verdict...).

    clusters: the name of a column of cluster ids (scene, image, pair), passed on to accuracy_summary.
    """
    for col, what in ((factor, "factor"), (correct, "correctness column"), (chance, "chance column"),
                      (clusters, "cluster column")):
        if col is not None and col not in table:
            raise KeyError(f"no {what} {col!r} in the table; columns: {list(table.columns)}")
    rows = [{factor: level, **accuracy_summary(g[correct], g[chance], seed=i,
                                               clusters=None if clusters is None else g[clusters])}
            for i, (level, g) in enumerate(table.groupby(factor, sort=True))]
    return pd.DataFrame(rows)


# --- paired comparisons --------------------------------------------------------------------------
def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test of two models on the same items: do they differ in accuracy?

    Counts the discordant items (a right / b wrong and vice versa); the p-value is the two-sided
    binomial test of those counts against 1/2. It assumes the items are independent: for items that
    share a scene, an image or a mirrored pair use paired_cluster_test, which flips whole clusters.
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError("paired test needs the same items for both models")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(sps.binomtest(only_a, n, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p, "diff": float(a.mean() - b.mean())}


def _sign_flip_p(d: np.ndarray, n_flips: int, seed: int) -> tuple[float, str]:
    """Two-sided p of |sum(s_g d_g)| >= |sum(d_g)| over random signs s_g = +-1 (one per cluster)."""
    obs = abs(d.sum())
    if np.allclose(d, np.rint(d)):  # integer cluster differences: the exact null by convolution
        di = np.abs(np.rint(d).astype(np.int64))
        di = di[di > 0]
        total = int(di.sum())
        dist = np.zeros(2 * total + 1)
        dist[total] = 1.0                                  # index total + s: P(sum of signed d = s)
        for x in di:
            dist = 0.5 * (np.roll(dist, x) + np.roll(dist, -x))  # no wrap: |partial sums| <= total
        s = np.arange(-total, total + 1)
        return float(min(1.0, dist[np.abs(s) >= round(obs)].sum())), "cluster sign-flip (exact)"
    rng = np.random.default_rng(seed)
    flips = rng.choice([-1.0, 1.0], size=(n_flips, d.size)) @ d
    hits = int((np.abs(flips) >= obs - 1e-12).sum())
    return (hits + 1) / (n_flips + 1), f"cluster sign-flip ({n_flips} random flips)"


def paired_cluster_test(correct_a, correct_b, clusters, n_flips: int = N_FLIPS, n_boot: int = N_BOOT,
                        seed: int = 0) -> dict:
    """Paired test of two models on the same clustered items: is mean(a) - mean(b) different from 0?

    Under the null the two models are exchangeable within each cluster, so each cluster's summed
    difference d_g = sum over its items of (a - b) is as likely to carry either sign. The p-value is
    the two-sided sign-flip (permutation) test of sum(d_g), flipping whole clusters: exact by
    convolution when the d_g are integers (0/1 correctness), else N_FLIPS random flips. With one item
    per cluster and 0/1 correctness it equals the exact McNemar test. The CI of the difference is a
    cluster bootstrap (percentile). Keys: diff, ci_low, ci_high, p_value, n, n_clusters, only_a,
    only_b (discordant items), method.
    """
    a, b = np.asarray(correct_a, np.float64).reshape(-1), np.asarray(correct_b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same items for both models: {a.size} vs {b.size} items")
    codes = _cluster_codes(clusters, a.size)
    if not a.size:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"),
                "n": 0, "n_clusters": 0, "only_a": 0, "only_b": 0, "method": "no items"}
    d = np.bincount(codes, a - b)                                  # (G,) summed difference per cluster
    p, method = _sign_flip_p(d, n_flips, seed)
    lo, hi = cluster_bootstrap_ci(a - b, codes, n_boot=n_boot, seed=seed)
    return {"diff": float(a.mean() - b.mean()), "ci_low": lo, "ci_high": hi, "p_value": p, "n": int(a.size),
            "n_clusters": int(d.size), "only_a": int(((a > b)).sum()), "only_b": int((a < b).sum()),
            "method": method}


def bonferroni(p_values, alpha: float = 1 - LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Bonferroni over the m tests a table makes: (adjusted p = min(1, m p), reject = adjusted p < alpha).

    NaN p-values (tests that could not be made) stay NaN, are never rejected and do not count in m.
    State the correction under the table: "Bonferroni over m tests".
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    m = int(np.isfinite(p).sum())
    adjusted = np.where(np.isfinite(p), np.minimum(1.0, p * max(m, 1)), np.nan)
    return adjusted, np.nan_to_num(adjusted, nan=1.0) < alpha
