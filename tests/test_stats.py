"""Statistics on hand-made data with known answers: exact intervals and verdicts, clusters, paired tests."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from clipkit.core import stats


def test_two_of_two_right_is_not_above_chance():
    s = stats.accuracy_summary([1, 1], 0.5)
    assert s["accuracy"] == 1.0 and s["ci_high"] == 1.0
    assert s["ci_low"] == pytest.approx(0.1581, abs=1e-4)      # 0.025 ** (1/2): no collapse to [1, 1]
    assert s["verdict"] == "at chance" and s["p_value"] == pytest.approx(0.5)


@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.3085), (10, 10, 0.6915, 1.0), (5, 10, 0.1871, 0.8129)])
def test_clopper_pearson_known_values(k, n, lo, hi):
    s = stats.accuracy_summary([1] * k + [0] * (n - k), 0.5)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi), abs=1e-4)
    assert s["ci_method"] == "clopper-pearson"


@pytest.mark.parametrize("k,n", [(0, 7), (3, 7), (7, 7), (1, 40), (23, 40), (39, 40), (150, 500)])
def test_interval_and_test_match_scipy_and_each_other(k, n):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert stats.clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)
    for p0 in (0.02, 0.1, 0.25, 0.5, 0.9):
        central = min(1.0, 2 * min(sps.binomtest(k, n, p0, alternative="less").pvalue,
                                   sps.binomtest(k, n, p0, alternative="greater").pvalue))
        s = stats.accuracy_summary([1] * k + [0] * (n - k), p0)
        assert s["p_value"] == pytest.approx(central, rel=1e-6, abs=1e-12)
        outside = p0 < s["ci_low"] or p0 > s["ci_high"]
        assert outside == (s["verdict"] != "at chance")           # the verdict is the interval's dual


def test_verdicts_on_hand_made_data():
    assert stats.accuracy_summary([1] * 9 + [0], 0.5)["verdict"] == "above chance"    # p = 0.021
    assert stats.accuracy_summary([1] * 8 + [0] * 2, 0.5)["verdict"] == "at chance"   # p = 0.109
    assert stats.accuracy_summary([0] * 10, 0.25)["verdict"] == "at chance"           # p = 2 * 0.75^10 = 0.113
    assert stats.accuracy_summary([0] * 13, 0.25)["verdict"] == "below chance"        # p = 2 * 0.75^13 = 0.048
    s = stats.accuracy_summary([1, 1, 1, 1] * 25, [0.25] * 100)
    assert s["verdict"] == "above chance" and s["n"] == 100 and s["chance"] == 0.25
    empty = stats.accuracy_summary([], 0.5)
    assert empty["verdict"] == "no items" and empty["n"] == 0 and np.isnan(empty["ci_low"])


def test_tie_credit_rounds_the_count_and_keeps_the_exact_accuracy():
    # 10 items each a 2-way tie: credit 0.5 each -> 5 successes of 10, exactly chance
    s = stats.accuracy_summary([0.5] * 10, 0.5)
    assert s["accuracy"] == 0.5 and s["verdict"] == "at chance" and s["p_value"] == 1.0
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((0.1871, 0.8129), abs=1e-4)
    # 9 right and one 3-way tie: credit sum 9.33 -> 9 successes; accuracy stays 0.933
    s = stats.accuracy_summary([1] * 9 + [1 / 3], 1 / 3)
    assert s["accuracy"] == pytest.approx(28 / 30) and s["ci_low"] == pytest.approx(
        stats.clopper_pearson(9, 10)[0])


def test_bad_inputs_get_one_line_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.accuracy_summary([2, 0], 0.5)
    with pytest.raises(ValueError, match="chance"):
        stats.accuracy_summary([1, 0], 1.5)
    with pytest.raises(ValueError, match="one cluster id per item"):
        stats.accuracy_summary([1, 0, 1], 0.5, clusters=[0, 1])


def test_duplicated_items_leave_the_cluster_interval_as_wide_while_the_naive_one_shrinks():
    rng = np.random.default_rng(0)
    x = (rng.random(80) < 0.7).astype(float)
    one = stats.accuracy_summary(x, 0.5)
    naive = stats.accuracy_summary(np.repeat(x, 2), 0.5)
    clustered = stats.accuracy_summary(np.repeat(x, 2), 0.5, clusters=np.repeat(np.arange(80), 2))
    width = lambda s: s["ci_high"] - s["ci_low"]  # noqa: E731
    assert width(naive) < 0.8 * width(one)                      # ~1/sqrt(2): twice the items, no new information
    assert width(one) <= width(clustered) < 1.03 * width(one)   # the clusters undo it (df factor: a bit wider)
    assert clustered["n_clusters"] == 80 and clustered["n_eff"] == pytest.approx(80, rel=0.05)
    assert clustered["accuracy"] == one["accuracy"] and clustered["ci_method"].startswith("korn-graubard")


def test_clustered_all_right_does_not_collapse_and_few_clusters_are_not_above_chance():
    # 3 scenes x 10 conditions, every item right: 30 "items" but 3 independent units at most
    s = stats.accuracy_summary([1] * 30, 0.5, clusters=np.repeat([0, 1, 2], 10))
    assert s["verdict"] == "at chance" and s["ci_low"] < 0.5 and s["n_eff"] <= 3
    assert stats.accuracy_summary([1] * 30, 0.5)["verdict"] == "above chance"   # what ignoring clusters says


def test_by_factor_passes_clusters_and_rejects_misspelled_columns():
    t = pd.DataFrame({"f": ["a"] * 20 + ["b"] * 20, "correct": [1] * 20 + [1, 0] * 10, "chance": 0.5,
                      "scene": np.repeat(np.arange(8), 5)})
    plain = stats.by_factor(t, "f").set_index("f")
    clust = stats.by_factor(t, "f", clusters="scene").set_index("f")
    assert plain.loc["a", "verdict"] == "above chance" and clust.loc["a", "verdict"] == "at chance"
    assert clust.loc["a", "n_clusters"] == 4 and plain.loc["b", "accuracy"] == 0.5
    with pytest.raises(KeyError, match="cluster column"):
        stats.by_factor(t, "f", clusters="scnee")


def test_cluster_bootstrap_keeps_clusters_together():
    v = np.repeat([0.0, 1.0], 50)                  # two clusters: every resample is 0, 0.5 or 1
    lo, hi = stats.cluster_bootstrap_ci(v, np.repeat([0, 1], 50))
    assert (lo, hi) == (0.0, 1.0)
    ilo, ihi = stats.bootstrap_ci(v)               # items resampled: a narrow band around 0.5
    assert 0.35 < ilo < 0.5 < ihi < 0.65
    med = stats.cluster_bootstrap_ci(v, np.repeat([0, 1], 50), stat=np.median)
    assert med == (0.0, 1.0)


def test_paired_cluster_test_known_answers():
    # a beats b on every item of one scene only: 10 discordant items, but one cluster -> no evidence
    a = np.r_[np.ones(10), np.zeros(40)].astype(bool)
    b = np.zeros(50, bool)
    clusters = np.repeat(np.arange(5), 10)
    assert stats.mcnemar(a, b)["p_value"] < 0.01
    r = stats.paired_cluster_test(a, b, clusters)
    assert r["p_value"] == 1.0 and r["diff"] == pytest.approx(0.2) and r["n_clusters"] == 5
    # a beats b on one item in each of 12 scenes: exactly 2 * 2**-12 (both all-plus and all-minus)
    a2, b2 = np.tile([1, 0, 0], 12).astype(bool), np.zeros(36, bool)
    r2 = stats.paired_cluster_test(a2, b2, np.repeat(np.arange(12), 3))
    assert r2["p_value"] == pytest.approx(2 * 2 ** -12) and r2["method"].endswith("(exact)")
    assert 0 < r2["ci_low"] <= r2["diff"] <= r2["ci_high"]
    # one item per cluster: the sign-flip test is the exact McNemar test
    rng = np.random.default_rng(1)
    x, y = rng.random(60) < 0.7, rng.random(60) < 0.5
    assert stats.paired_cluster_test(x, y, np.arange(60))["p_value"] == pytest.approx(stats.mcnemar(x, y)["p_value"])
    with pytest.raises(ValueError, match="same items"):
        stats.paired_cluster_test(x, y[:-1], np.arange(60))


def test_paired_cluster_test_with_tie_credit_uses_random_flips():
    a = np.tile([1.0, 0.5, 1.0], 10)
    b = np.tile([0.0, 0.5, 0.5], 10)
    r = stats.paired_cluster_test(a, b, np.repeat(np.arange(10), 3), n_flips=4000)
    assert "random flips" in r["method"] and r["p_value"] < 0.01    # exact answer 2 / 1024


def test_bonferroni():
    adj, reject = stats.bonferroni([0.01, 0.02, np.nan, 0.5])
    assert adj[:2] == pytest.approx([0.03, 0.06]) and np.isnan(adj[2]) and adj[3] == 1.0
    assert reject.tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="alpha"):
        stats.bonferroni([0.1], alpha=0)
