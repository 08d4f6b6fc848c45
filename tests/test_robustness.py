"""Effective robustness: logit-space trend, distance from it, tidy-table helpers, bootstrap CI.

Hand-made inputs with known answers; in-memory, no network."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.special import expit

from clipkit.analysis.robustness import (EPS, IN_DISTRIBUTION, bootstrap_effective_robustness,
                                         effective_robustness, fit_trend, logit, predicted_ood,
                                         relative_robustness, robustness_by_model, robustness_table)


def test_logit_values_and_clipping():
    assert logit(0.5) == 0.0
    assert logit(0.9) == pytest.approx(math.log(9))
    assert logit(0.0) == pytest.approx(math.log(EPS / (1 - EPS))) == -logit(1.0)
    assert np.isfinite(logit([0.0, 1.0])).all() and logit([0.2, 0.8]).shape == (2,)
    assert logit(1.0, eps=1e-2) == pytest.approx(math.log(99))


def test_fit_trend_recovers_a_known_line():
    ida = np.array([0.3, 0.45, 0.6, 0.75, 0.9])
    ood = expit(0.7 * logit(ida) - 0.4)
    slope, intercept = fit_trend(ida, ood)
    assert slope == pytest.approx(0.7) and intercept == pytest.approx(-0.4)
    # noisy points: same answer as scipy's ordinary least squares in logit space
    rng = np.random.default_rng(0)
    noisy = expit(0.7 * logit(ida) - 0.4 + rng.normal(0, 0.2, ida.size))
    ref = sps.linregress(logit(ida), logit(noisy))
    assert fit_trend(ida, noisy) == pytest.approx((ref.slope, ref.intercept))


def test_fit_trend_needs_two_distinct_models():
    with pytest.raises(ValueError, match="two models"):
        fit_trend([0.8], [0.5])
    with pytest.raises(ValueError, match="two models"):
        fit_trend([0.8, 0.8], [0.5, 0.6])
    with pytest.raises(ValueError, match="one OOD accuracy per ID"):
        fit_trend([0.7, 0.8], [0.5])


def test_effective_robustness_by_hand():
    # on the line ood = id (slope 1, intercept 0): ER is the plain difference
    assert effective_robustness(0.8, 0.8, 1.0, 0.0) == pytest.approx(0.0)
    assert effective_robustness(0.8, 0.85, 1.0, 0.0) == pytest.approx(0.05)
    assert effective_robustness(0.8, 0.70, 1.0, 0.0) == pytest.approx(-0.10)
    # slope 2, intercept -1 at id 0.5: logit 0, prediction sigmoid(-1) = 0.268941...
    assert predicted_ood(0.5, 2.0, -1.0) == pytest.approx(1 / (1 + math.e))
    assert effective_robustness(0.5, 0.3, 2.0, -1.0) == pytest.approx(0.3 - 1 / (1 + math.e))
    # a model exactly on a fitted trend has ER 0; one above it, positive
    ida = np.array([0.4, 0.6, 0.8])
    slope, intercept = fit_trend(ida, expit(0.5 * logit(ida) - 1))
    on = expit(0.5 * logit(0.7) - 1)
    assert effective_robustness(0.7, on, slope, intercept) == pytest.approx(0.0, abs=1e-12)
    assert effective_robustness(0.7, on + 0.04, slope, intercept) == pytest.approx(0.04)
    assert effective_robustness(ida, ida, slope, intercept).shape == (3,)


def test_relative_robustness():
    assert relative_robustness(0.62, 0.55) == pytest.approx(0.07)
    assert relative_robustness([0.5, 0.4], 0.45) == pytest.approx([0.05, -0.05])


def _table():
    """Three reference models exactly on ood = sigmoid(logit(id) - 1) for shifts A (severities 1, 2)
    and B (severity 1); "zs" sits 0.06 above on A-1, 0.02 above on A-2 and 0.10 above on B-1."""
    refs = {"r1": 0.5, "r2": 0.7, "r3": 0.9}
    rows = []
    for model, a in {**refs, "zs": 0.6}.items():
        rows.append({"model": model, "shift": IN_DISTRIBUTION, "severity": np.nan, "accuracy": a})
        on = float(expit(logit(a) - 1))
        bump = {("A", 1): 0.06, ("A", 2): 0.02, ("B", 1): 0.10} if model == "zs" else {}
        for key in (("A", 1), ("A", 2), ("B", 1)):
            rows.append({"model": model, "shift": key[0], "severity": key[1],
                         "accuracy": on + bump.get(key, 0)})
    return pd.DataFrame(rows), list(refs)


def test_robustness_table_and_by_model():
    table, refs = _table()
    rows = robustness_table(table, reference=refs)
    assert len(rows) == 12 and set(rows["shift"]) == {"A", "B"}
    assert rows["slope"].to_numpy() == pytest.approx(1.0)
    assert rows["intercept"].to_numpy() == pytest.approx(-1.0)
    er = rows.set_index(["model", "shift", "severity"])["effective_robustness"]
    assert er[("zs", "A", 1)] == pytest.approx(0.06) and er[("zs", "B", 1)] == pytest.approx(0.10)
    assert er.drop("zs", level="model").to_numpy() == pytest.approx(0.0, abs=1e-12)

    by = robustness_by_model(table, reference=refs, baseline="r1").set_index("model")
    # severities averaged within a shift, then shifts weighted equally: ((0.06 + 0.02) / 2 + 0.10) / 2
    assert by.loc["zs", "effective_robustness"] == pytest.approx(0.07)
    assert by.loc["r2", "effective_robustness"] == pytest.approx(0.0, abs=1e-12)
    assert by.loc["zs", "n_shifts"] == 2 and by.loc["zs", "id_accuracy"] == pytest.approx(0.6)
    on_zs = float(expit(logit(0.6) - 1))
    assert by.loc["zs", "ood_accuracy"] == pytest.approx(on_zs + 0.07)
    assert by.loc["zs", "gap"] == pytest.approx(0.6 - on_zs - 0.07)
    assert by.loc["r1", "relative_robustness"] == 0.0
    assert by.loc["zs", "relative_robustness"] == pytest.approx(on_zs + 0.07 - float(expit(logit(0.5) - 1)))


def test_robustness_table_errors():
    table, refs = _table()
    with pytest.raises(ValueError, match="without an 'in_distribution' row"):
        robustness_table(table[~((table["model"] == "zs") & (table["shift"] == IN_DISTRIBUTION))])
    with pytest.raises(ValueError, match="more than one"):
        robustness_table(pd.concat([table, table.iloc[:1]]))
    with pytest.raises(KeyError, match="accuracy"):
        robustness_table(table.drop(columns="accuracy"))
    with pytest.raises(ValueError, match="shift 'A' severity 1.*two models"):
        robustness_table(table, reference=["r1"])
    with pytest.raises(ValueError, match="baseline"):
        robustness_by_model(table, reference=refs, baseline="nope")


def test_bootstrap_effective_robustness():
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.7
    # identical ID and OOD answers on the line ood = id: paired resampling cancels item noise exactly
    same = bootstrap_effective_robustness(correct, correct, 1.0, 0.0)
    assert same["effective_robustness"] == pytest.approx(0.0)
    assert same["ci_low"] == pytest.approx(0.0, abs=1e-12)
    assert same["ci_high"] == pytest.approx(0.0, abs=1e-12)
    indep = bootstrap_effective_robustness(correct, correct, 1.0, 0.0, paired=False)
    assert indep["ci_low"] < -0.02 and indep["ci_high"] > 0.02
    ood = correct & (rng.random(300) < 0.9)  # the shift breaks ~10% of the correct answers
    res = bootstrap_effective_robustness(correct, ood, 1.0, 0.0, seed=3)
    assert res["ci_low"] <= res["effective_robustness"] <= res["ci_high"] < 0
    assert res == bootstrap_effective_robustness(correct, ood, 1.0, 0.0, seed=3)
    with pytest.raises(ValueError, match="same items"):
        bootstrap_effective_robustness(correct, correct[:10], 1.0, 0.0)
    assert bootstrap_effective_robustness(correct, correct[:10], 1.0, 0.0, paired=False)["n_ood"] == 10
