"""clipkit.analysis on hand-made inputs (in-memory, no network), and the analysis notebooks through papermill."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipkit.analysis import crossdata

ROOT = Path(__file__).resolve().parents[1]


def test_win_summary_counts_wins_losses_ties():
    table = pd.DataFrame({"diff": [0.1, -0.2, 0.0, 0.05, -0.01]})
    w = crossdata.win_summary(table)
    assert (w["zs_wins"], w["zs_losses"], w["ties"], w["n_datasets"]) == (2, 2, 1, 5)
    assert w["mean_diff"] == pytest.approx(-0.06 / 5)


def test_modality_gap_of_constructed_embeddings():
    # images on e1, captions on e2: centroids (1,0) and (0,1) -> distance sqrt(2), cosine 0
    img = np.array([[1.0, 0.0], [1.0, 0.0]])
    txt = np.array([[0.0, 1.0], [0.0, 1.0]])
    g = crossdata.modality_gap(img, txt)
    assert g["gap"] == pytest.approx(np.sqrt(2))
    assert g["centroid_cosine"] == pytest.approx(0.0, abs=1e-9)
    assert g["paired_cosine"] == pytest.approx(0.0)
    same = crossdata.modality_gap(img, img)
    assert same["gap"] == 0 and same["paired_cosine"] == pytest.approx(1.0)


def _points(ids, oods):
    return pd.DataFrame({"point": [f"m{i}" for i in range(len(ids))], "id_accuracy": ids, "ood_accuracy": oods})


def test_trend_needs_three_distinct_id_accuracies():
    trend, why = crossdata.trend_or_reason(_points([0.9, 0.6], [0.5, 0.3]))
    assert trend is None and "no trend" in why
    trend, why = crossdata.trend_or_reason(_points([0.9, 0.9, 0.6], [0.5, 0.4, 0.3]))
    assert trend is None   # only two distinct ID accuracies


def test_trend_recovers_a_logit_line_and_zero_er():
    from clipkit.analysis.robustness import logit
    ids = np.array([0.6, 0.75, 0.9])
    oods = 1 / (1 + np.exp(-(0.5 * logit(ids) - 1.0)))     # exactly on slope 0.5, intercept -1
    trend, _ = crossdata.trend_or_reason(_points(ids, oods))
    assert trend["slope"] == pytest.approx(0.5) and trend["intercept"] == pytest.approx(-1.0)
    # fitted to the same points it scores (no reference), the distances are residuals, never "er"
    assert "er" not in trend and all(abs(v) < 1e-9 for v in trend["residual"].values())
    assert "not effective robustness" in trend["label"]


def test_robustness_points_from_a_shift_table():
    from clipkit.probes import load_spec
    from clipkit.probes.shift_results import CLASSIFIERS, summarise
    rng = np.random.default_rng(0)
    items = pd.concat([pd.DataFrame({"shift": s, "severity": sev, "item": np.arange(20),
                                     "zs_correct": rng.random(20) < p, "lp_correct": rng.random(20) < p - 0.1})
                       for s, sev, p in (("in_distribution", 0, 0.9), ("fog", 3, 0.6), ("grayscale", 1, 0.7))])
    res = summarise(items, 4, load_spec({"name": "t", "kind": "shift", "options": {"shifts": ["fog", "grayscale"]}}), "m")
    pts = crossdata.robustness_points([res])
    assert list(pts["classifier"]) == list(CLASSIFIERS) and (pts["n_shifts"] == 2).all()
    zs = items[items["shift"] != "in_distribution"].groupby("shift")["zs_correct"].mean().mean()
    assert pts.loc[0, "ood_accuracy"] == pytest.approx(zs)
    assert pts.loc[0, "drop"] == pytest.approx(pts.loc[0, "id_accuracy"] - zs)
    assert {"id_ci_low", "id_ci_high", "id_n", "id_chance"} <= set(pts.columns)


def test_prompt_table_shape_and_spread(nano):
    model, _, tokenizer = nano
    classes = ["circle", "square", "triangle"]
    feats = torch.nn.functional.normalize(torch.randn(12, model.visual.output_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    sets = {"family": ["a {c}.", "a photo of a {c}."], "ensemble-7": ["itap of a {c}.", "a photo of a {c}."]}
    t = crossdata.prompt_sensitivity(model, tokenizer, feats, np.arange(12) % 3, classes, sets)
    # 2 ensembles + distinct singles: bare, "a {c}.", "a photo of a {c}.", "itap of a {c}."
    assert len(t) == 6 and (t["kind"] == "ensemble").sum() == 2
    assert t["accuracy"].is_monotonic_decreasing and (t["n"] == 12).all() and np.allclose(t["chance"], 1 / 3)
    s = crossdata.spread_summary(t)
    assert s["n_templates"] == 4 and s["single_range"] == pytest.approx(s["single_best"] - s["single_worst"])
    assert {"family_accuracy", "ensemble-7_gain_over_median"} <= set(s)
    # parity: the batched ensembles equal clipkit's zero-shot classifier on the same features
    for name, ts in sets.items():
        ref = (crossdata._zs_pred(model, tokenizer, feats, classes, ts) == np.arange(12) % 3).mean()
        assert t.loc[(t["set"] == name) & (t["kind"] == "ensemble"), "accuracy"].item() == pytest.approx(ref)


def test_template_sets_are_the_papers():
    sets = crossdata.template_sets(["a {c}."])
    assert [len(v) for v in sets.values()] == [1, 7, 80]


NOTEBOOKS = ["analysis_zeroshot_vs_linear", "analysis_robustness", "analysis_atlas", "analysis_prompts", "analysis_where"]
EXTRA = {"analysis_zeroshot_vs_linear": {"DATASETS": ["synthetic:shape", "synthetic:colour", "synthetic:count"],
                                         "KSHOTS": [1, 2]},   # 3 of the 6 families keep the test short
         "analysis_robustness": {"SHIFTS": ["fog", "grayscale"], "SEVERITIES": [3]},
         "analysis_where": {"PROBES": ["counting", "spatial_swap"], "POINTING_N": 4, "FAILURES": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_analysis_notebook_runs(stem, tmp_path):
    import papermill as pm
    pm.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"), str(tmp_path / f"{stem}.ipynb"),
                        parameters={"MODEL": "clipkit-nano", "N": 24, "OUT_DIR": str(tmp_path), **EXTRA.get(stem, {})},
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    record = json.loads((tmp_path / f"{stem}.metrics.json").read_text())
    m = record["metrics"]
    for key in ("accuracy", "ci_low", "ci_high", "chance", "n"):
        assert m[key] is not None, key
    assert 0 < m["chance"] < 1 and m["n"] > 0
    if stem != "analysis_zeroshot_vs_linear":  # there the bounds are means over datasets, not one CI
        assert m["ci_low"] <= m["accuracy"] <= m["ci_high"]
    if stem == "analysis_zeroshot_vs_linear":
        assert m["n_datasets"] == 3 and 0 <= m["zs_wins"] <= 3
    if stem == "analysis_robustness":
        assert m["trend_fitted"] is False and m["n_points"] == 2   # one model: no trend is faked
    if stem == "analysis_atlas":
        assert m["modality_gap"] > 0
    if stem == "analysis_prompts":
        assert m["n"] == 24 and m["n_templates"] >= 80
    if stem == "analysis_where":   # headline: the pooled pointing game of the patch map, 3 kinds x 4 scenes
        assert m["pointing_method"] == "patch" and m["n"] == 12 and m["pointing_all_gradcam"] is not None
        assert record["figures"] == ["where_three_numbers", "where_layers", "where_pointing"]
        for probe in ("counting", "spatial_swap"):
            assert m[f"{probe}_cross_modal_n"] == 24
            for side in ("image_side", "text_side", "cross_modal"):
                assert m[f"{probe}_{side}_ci_low"] <= m[f"{probe}_{side}_accuracy"] <= m[f"{probe}_{side}_ci_high"]
            assert f"({m[f'{probe}_cross_modal_accuracy']:.2f}" in m[f"{probe}_diagnosis"]   # read from the numbers
        assert (tmp_path / "figures" / "where_failures_counting.png").exists()


def test_analysis_where_is_committed_clean_with_checked_parameters():
    nb = json.loads((ROOT / "notebooks" / "analysis_where.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert code[0]["metadata"]["tags"] == ["parameters"] and "check(globals()" in "".join(code[1]["source"])
    for name in ("MODEL", "N", "SEED", "DEVICE", "OUT_DIR", "PROBES", "POINTING_N", "FAILURES", "MAP_OPACITY"):
        assert f"\n{name} = " in "\n" + "".join(code[0]["source"]) and f'"{name}"' in "".join(code[1]["source"])
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in c["source"])
