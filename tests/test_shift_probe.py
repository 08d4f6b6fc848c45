"""Tests for the distribution-shift probe: tables and robustness from constructed per-item results,
spec validation, a clipkit-nano run, a model blind to the image, and the notebook. No network."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipkit.probes import SpecError, load_spec
from clipkit.analysis.robustness import effective_robustness_of as effective_robustness
from clipkit.probes.shift import conditions, run_shift, summarise
from clipkit.analysis.robustness import IN_DISTRIBUTION
from conftest import BlindImageModel

ROOT = Path(__file__).resolve().parents[1]


def _spec(**options):
    return load_spec({"name": "t", "kind": "shift", "options": options})


def _items(zs, lp, n=20):
    """Per-item results: {(shift, severity): (zero-shot accuracy, probe accuracy)} with exact fractions."""
    parts = []
    for (shift, sev), (a, b) in zip(conditions(_spec(shifts=["gaussian_noise", "outline"], severities=[1, 3])),
                                    zip(zs, lp)):
        k, j = int(round(a * n)), int(round(b * n))
        parts.append(pd.DataFrame({"shift": shift, "severity": sev, "item": np.arange(n), "target": 0,
                                   "zs_correct": np.arange(n) < k, "lp_correct": np.arange(n) < j}))
    return pd.concat(parts, ignore_index=True)


def test_conditions_id_first_and_only_valid_severities():
    c = conditions(_spec(shifts=["gaussian_noise", "outline"], severities=[1, 3]))
    assert c == [(IN_DISTRIBUTION, 0), ("gaussian_noise", 1), ("gaussian_noise", 3), ("outline", 1)]


def test_summary_drop_and_relative_robustness():
    # conditions: ID, noise@1, noise@3, outline@1. Zero-shot holds; the probe gains ID and loses OOD.
    r = summarise(_items(zs=[0.5, 0.5, 0.5, 0.5], lp=[0.9, 0.5, 0.3, 0.2]), 4, _spec(), "m")
    s = r.summary
    assert s["accuracy"] == 0.5 and s["lp_accuracy"] == 0.9 and s["n"] == 20 and s["chance"] == 0.25
    assert s["ci_low"] < 0.5 < s["ci_high"] and s["n_conditions"] == 3 and s["n_shifts"] == 2
    # per shift first (noise: mean of 0.5 and 0.3 = 0.4), then over shifts: (0.4 + 0.2) / 2
    assert s["lp_ood_accuracy"] == pytest.approx(0.3) and s["lp_drop"] == pytest.approx(0.6)
    assert s["zs_drop"] == pytest.approx(0) and s["relative_robustness_zs_vs_lp"] == pytest.approx(0.2)
    t = r.table
    assert len(t) == 8 and set(t["n"]) == {20} and set(t["chance"]) == {0.25}
    assert set(t.loc[t["shift"] == "outline", "kind"]) == {"style"}
    m = r.metrics()
    assert m["lp[gaussian_noise@3]"] == pytest.approx(0.3) and "zs[outline@1]" in m


def test_effective_robustness_needs_a_family():
    one = summarise(_items(zs=[0.5] * 4, lp=[0.9, 0.5, 0.3, 0.2]), 4, _spec(), "m1")
    with pytest.raises(ValueError, match="needs 2\\+ points with distinct ID accuracies"):
        effective_robustness([one])
    two = summarise(_items(zs=[0.7, 0.6, 0.5, 0.6], lp=[0.8, 0.6, 0.4, 0.4]), 4, _spec(), "m2")
    er = effective_robustness([one, two])
    assert len(er) == 4 and {"effective_robustness", "id_accuracy", "ood_accuracy", "gap"} <= set(er.columns)
    # the trend is fitted to the reference (the linear-probe points) and scores only the others, never in-sample
    ref = er[er["in_reference"]]
    assert set(ref["model"]) == {"m1 | linear probe", "m2 | linear probe"} and ref["effective_robustness"].isna().all()
    scored = er[~er["in_reference"]]
    assert scored["effective_robustness"].notna().all()
    assert ((scored["ci_low"] <= scored["effective_robustness"]) & (scored["effective_robustness"] <= scored["ci_high"])).all()


S = {"name": "x", "kind": "shift"}


@pytest.mark.parametrize("spec, match", [
    ({"kind": "shift"}, "missing required key 'name'"),
    ({"name": "x", "family": "shape"}, "'family:' is now 'kind:'"),
    ({**S, "options": {"shifts": ["blurry"]}}, "unknown shift"),
    ({**S, "options": {"severities": [0, 6]}}, "integers in 1..5"),
    ({**S, "options": {"severities": []}}, "integers in 1..5"),
    ({**S, "options": {"family": "dogs"}}, "unknown family"),
    ({**S, "n": 2.5}, "'n' must be int"),
    ({**S, "options": {"corruptions": []}}, "unknown option"),
    ({**S, "corruptions": []}, "unknown key"),
])
def test_spec_errors(spec, match):
    with pytest.raises(SpecError, match=match):
        load_spec(spec)


def test_shipped_spec_and_overrides():
    s = load_spec("shift")
    assert s.options.family == "shape" and s.n >= 100 and len(conditions(s)) > 20
    o = load_spec("shift", n=8, seed=3, options={"severities": [3]})   # analysis.experiments' form
    assert o.n == 8 and o.seed == 3 and o.options.severities == [3] and o.options.n_train == 400


def test_run_on_nano(nano, tmp_path):
    spec = {"name": "s", "kind": "shift", "n": 12,
            "options": {"shifts": ["gaussian_noise", "outline"], "severities": [1, 5], "n_train": 24}}
    r = run_shift(spec, *nano, model_name="clipkit-nano", cache=False)
    assert len(r.items) == 4 * 12 and len(r.table) == 4 * 2
    assert r.summary["n"] == 12 and r.summary["chance"] == pytest.approx(1 / 6)
    assert set(r.robustness["classifier"]) == {"zero-shot", "linear probe"}
    rec = json.loads(r.save(tmp_path).read_text())
    assert rec["task"] == "distribution_shift" and len(rec["table"]) == 8 and "versions" in rec
    assert rec["spec"]["kind"] == "shift" and rec["spec"]["options"]["severities"] == [1, 5]



def test_a_model_blind_to_the_image_is_at_chance_everywhere(nano):
    model, preprocess, tokenizer = nano
    spec = {"name": "s", "kind": "shift", "n": 12, "options": {"shifts": ["contrast"], "severities": [3], "n_train": 12}}
    r = run_shift(spec, BlindImageModel(model), preprocess, tokenizer, cache=False)
    assert np.allclose(r.table["accuracy"], 1 / 6)            # 12 balanced items over 6 shapes, one answer
    assert r.summary["zs_drop"] == 0 and r.summary["lp_drop"] == 0


@pytest.mark.slow
def test_notebook_runs_and_records_metrics(tmp_path):
    import papermill as pm
    pm.execute_notebook(str(ROOT / "notebooks/probe_shift.ipynb"), str(tmp_path / "out.ipynb"),
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                        parameters={"MODEL": "clipkit-nano", "N": 24, "OUT_DIR": str(tmp_path)})
    m = json.loads((tmp_path / "probe_shift.metrics.json").read_text())["metrics"]
    assert {"accuracy", "ci_low", "ci_high", "chance", "n", "zs_drop", "lp_drop"} <= set(m)
    assert m["n"] == 24 and m["chance"] == pytest.approx(1 / 6)
