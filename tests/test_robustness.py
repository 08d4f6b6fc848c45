"""Effective robustness: logit-space trend, distance from it, tidy-table helpers, bootstrap CI.

Hand-made inputs with known answers; in-memory, no network."""
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.special import expit

from clipkit.analysis import crossdata
from clipkit.analysis.robustness import (EPS, IN_DISTRIBUTION, bootstrap_effective_robustness, bootstrap_family,
                                         effective_robustness, effective_robustness_of, fit_trend, logit,
                                         predicted_ood, relative_robustness, robustness_by_model, robustness_table)


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
    # the reference fits the line: it is never scored against it
    assert er.drop("zs", level="model").isna().all() and rows.groupby("model")["in_reference"].first().sum() == 3
    assert rows["predicted"].to_numpy() == pytest.approx(expit(logit(rows["id_accuracy"].to_numpy()) - 1))

    by = robustness_by_model(table, reference=refs, baseline="r1").set_index("model")
    # severities averaged within a shift, then shifts weighted equally: ((0.06 + 0.02) / 2 + 0.10) / 2
    assert by.loc["zs", "effective_robustness"] == pytest.approx(0.07)
    assert np.isnan(by.loc["r2", "effective_robustness"]) and by.loc["r2", "in_reference"]
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


def test_in_sample_trend_is_labelled_or_refused():
    table, refs = _table()
    rows = robustness_table(table)                                # no reference: the trend of all four
    assert "effective_robustness" not in rows and "residual_from_trend" in rows and rows["in_reference"].all()
    assert "effective_robustness" not in robustness_by_model(table)
    with pytest.raises(ValueError, match="every model is in the reference"):
        robustness_table(table, reference=[*refs, "zs"])
    with pytest.raises(ValueError, match=r"reference models \['nope'\]"):
        robustness_table(table, reference=["nope", "r1"])


# --- a family of ShiftResults with known accuracies ------------------------------------------------
N_ITEMS = 1000
CONDITIONS = ((IN_DISTRIBUTION, 0), ("fog", 3), ("grayscale", 1), ("grayscale", 3))


def _result(name, zs, lp, seed):
    """A ShiftResult whose zero-shot / probe accuracy in each condition is exactly the given fraction;
    item i of every condition is the same scene (a shuffled order, the same in every condition)."""
    from clipkit.probes import load_spec
    from clipkit.probes.shift_results import summarise
    order = np.random.default_rng(seed).permutation(N_ITEMS)
    parts = [pd.DataFrame({"shift": sh, "severity": sv, "item": np.arange(N_ITEMS), "target": np.arange(N_ITEMS) % 4,
                           "zs_correct": order < round(z * N_ITEMS), "lp_correct": order < round(p * N_ITEMS)})
             for (sh, sv), z, p in zip(CONDITIONS, zs, lp)]
    spec = load_spec({"name": "t", "kind": "shift", "options": {"shifts": ["fog", "grayscale"]}})
    return summarise(pd.concat(parts, ignore_index=True), 4, spec, name)


def _on_line(a, shifts=(-1.0, -0.5, -0.7)):
    """ID accuracy a and its OOD accuracies on the lines ood = sigmoid(logit(a) + c), one per condition."""
    return [a, *[float(expit(logit(a) + c)) for c in shifts]]


def _family(zs_bump=0.0):
    """Three models whose probes lie on the per-condition lines; m0's zero-shot point on them too, m1's
    `zs_bump` above them in every condition, m2's zero-shot below."""
    zs = {"m0": _on_line(0.65), "m1": [0.75] + [v + zs_bump for v in _on_line(0.75)[1:]],
          "m2": [0.85] + [v - 0.05 for v in _on_line(0.85)[1:]]}
    lp = {"m0": _on_line(0.55), "m1": _on_line(0.7), "m2": _on_line(0.9)}
    return [_result(m, zs[m], lp[m], seed=i) for i, m in enumerate(zs)]


def test_er_against_the_linear_probe_reference():
    er = effective_robustness_of(_family(zs_bump=0.08), n_boot=500).set_index("model")
    assert er.attrs["reference"] == [f"m{i} | linear probe" for i in range(3)]
    ref = er[er["in_reference"]]
    assert len(ref) == 3 and ref["effective_robustness"].isna().all() and ref["ci_low"].isna().all()
    on, above, below = (er.loc[f"m{i} | zero-shot"] for i in range(3))
    assert on["effective_robustness"] == pytest.approx(0.0, abs=2e-3)        # on the reference line: 0
    assert on["ci_low"] < 0 < on["ci_high"]
    assert above["effective_robustness"] == pytest.approx(0.08, abs=2e-3)    # above it: positive, CI excludes 0
    assert 0 < above["ci_low"] < 0.08 < above["ci_high"]
    assert below["effective_robustness"] == pytest.approx(-0.05, abs=2e-3) and below["ci_high"] < 0


def test_bootstrap_family_matches_the_table_and_resamples_the_line():
    results = _family(zs_bump=0.08)
    from clipkit.analysis.robustness import family_arrays
    points, id_c, ood_c, w, paired = family_arrays(results, [("zero-shot", "zs_correct"), ("linear probe", "lp_correct")])
    assert paired and id_c.shape == (6, N_ITEMS) and ood_c.shape == (6, 3, N_ITEMS) and w == pytest.approx([0.5, 0.25, 0.25])
    in_ref = np.array([p.endswith("linear probe") for p in points])
    boot = bootstrap_family(id_c, ood_c, w, in_ref, n_boot=300, seed=1)
    er = effective_robustness_of(results, n_boot=10).set_index("model")["effective_robustness"]
    scored = ~in_ref
    assert boot["estimate"][scored] == pytest.approx(er[np.array(points)[scored]].to_numpy())
    assert boot["n_boot"] == 300 and (boot["ci_low"] < boot["estimate"]).all() and (boot["estimate"] < boot["ci_high"]).all()
    # the reference line is refitted per replicate: with the reference's answers shuffled apart from the
    # scored model's, the line moves more from replicate to replicate and the interval widens
    noisy = id_c.copy(), ood_c.copy()
    rng = np.random.default_rng(5)
    for m in np.flatnonzero(in_ref):
        perm = rng.permutation(N_ITEMS)
        noisy[0][m], noisy[1][m] = id_c[m][perm], ood_c[m][:, perm]
    wide = bootstrap_family(*noisy, w, in_ref, n_boot=300, seed=1)
    assert wide["estimate"] == pytest.approx(boot["estimate"])
    assert (wide["ci_high"] - wide["ci_low"])[scored].mean() > (boot["ci_high"] - boot["ci_low"])[scored].mean()
    with pytest.raises(ValueError, match="2\\+ reference models"):
        bootstrap_family(id_c, ood_c, w, np.eye(6, dtype=bool)[0])


def test_er_refuses_a_too_small_reference_and_labels_the_in_sample_residual():
    results = _family()
    with pytest.raises(ValueError, match="reference .* needs 2\\+ points"):
        effective_robustness_of(results[:1])
    res = effective_robustness_of(results, reference=None, n_boot=200)
    assert "effective_robustness" not in res and res["in_reference"].all()
    assert res.attrs["reference"] == "in-sample (these models)"
    assert (res["ci_low"] <= res["residual_from_trend"]).all() and (res["residual_from_trend"] <= res["ci_high"]).all()
    other = dataclasses.replace(results[1], items=results[1].items.assign(target=results[1].items["target"] + 1))
    with pytest.raises(ValueError, match="same scenes"):
        effective_robustness_of([results[0], other])


def test_trend_against_reference_points_and_labelled_residuals():
    pts = pd.DataFrame({"point": ["r1", "r2", "zs"], "id_accuracy": [0.5, 0.9, 0.7],
                        "ood_accuracy": [float(expit(-1)), float(expit(logit(0.9) - 1)), float(expit(logit(0.7) - 1)) + 0.05]})
    trend, why = crossdata.trend_or_reason(pts, reference=["r1", "r2"])
    assert set(trend["er"]) == {"zs"} and trend["er"]["zs"] == pytest.approx(0.05)   # the reference is not scored
    assert trend["slope"] == pytest.approx(1.0) and "reference" in why and "effective robustness" in trend["label"]
    own, why = crossdata.trend_or_reason(pts)
    assert "er" not in own and set(own["residual"]) == {"r1", "r2", "zs"} and "residual" in own["label"]
    assert "not effective robustness" in why


def test_reference_robustness_for_the_notebook():
    results = _family(zs_bump=0.08)
    points, trend, why = crossdata.reference_robustness(results, n_boot=300)
    row = points.set_index("point").loc["m1 | zero-shot"]
    assert "er" in trend and not row["in_reference"] and row["effective_robustness"] > 0
    assert 0 < row["effective_robustness_ci_low"] < row["effective_robustness"] < row["effective_robustness_ci_high"]
    assert points.loc[points["in_reference"], "effective_robustness"].isna().all()
    one, trend, why = crossdata.reference_robustness(results[:1])
    assert trend is None and "no reference line" in why and len(one) == 2
    # a reference of one point gives no line: the trend of all six points, labelled as residuals
    points, trend, why = crossdata.reference_robustness(results, reference=["m0 | linear probe"], n_boot=100)
    assert "residual" in trend and "residual_from_trend" in points and "effective_robustness" not in points
