"""clipkit.analysis.world_experiments: style-probe items match the probes, CSV corpora, gaps, effective
robustness and conclusions on hand-made tables, and the two notebooks with nano arms of 3 steps."""
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipkit.analysis import world_experiments as wx
from clipkit.world import styles, synth

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("probe", ["counting", "spatial", "spatial_swap", "binding"])
def test_classic_items_are_the_probes_own_items(probe):
    from clipkit.probes import load_spec
    from clipkit.probes.protocol import KINDS
    spec = load_spec(probe, n=8, seed=999)
    theirs = KINDS[spec.kind].items(spec)
    ours = wx.probe_scenes(probe, 8, seed=999)
    for it, (scene, caps, answer, _) in zip(theirs, ours):
        img = synth.render(scene, 72, style=wx.family_style("classic", 0))
        assert np.array_equal(np.asarray(img), np.asarray(it.image)) and caps == it.captions and answer == it.answer
    with pytest.raises(ValueError, match="unknown style probe"):
        wx.probe_scenes("countng", 4)


def test_style_hits_on_an_untrained_model():
    from clipkit.models import load_model
    model, pre, tok = load_model("clipkit-nano")
    hits = wx.style_hits(model, pre, tok, probes=("binding", "spatial"), families=("classic", "texture"), n=6)
    assert len(hits) == 24 and set(hits["family"]) == {"classic", "texture"}
    assert hits["credit"].between(0, 1).all() and set(hits["chance"]) == {0.5, 0.25}
    # the same item id in both families: a scene's two renderings pair up
    b = hits[hits["probe"] == "binding"]
    assert list(b[b["family"] == "classic"]["item_id"]) == list(b[b["family"] == "texture"]["item_id"])
    with pytest.raises(ValueError, match="unknown style families"):
        wx.style_hits(model, pre, tok, families=("paper",), n=2)


def test_write_corpus_renders_rows_and_reuses_them(tmp_path):
    path = wx.write_corpus(tmp_path, 12, families=("dark", "light"), size=36)
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 12 and (path.parent / rows[3]["filepath"]).exists()
    for i, r in enumerate(rows):
        scene = synth.corpus_item(i, 0)
        assert r["title"] == styles.framed(synth.caption(scene), styles.corpus_style(i, 0, ("dark", "light")).frame, scene)
    assert json.loads((path.parent / "corpus.json").read_text())["families"] == ["dark", "light"]
    stamp = path.stat().st_mtime_ns
    assert wx.write_corpus(tmp_path, 12, families=("dark", "light"), size=36) == path and path.stat().st_mtime_ns == stamp
    sparse = wx.write_corpus(tmp_path, 12, families=("dark", "light"), partial=1.0, size=36)
    assert sparse != path
    titles = [r["title"] for r in csv.DictReader(open(sparse))]
    assert all(len(a.split()) < len(b["title"].split()) for a, b in zip(titles, rows))
    with pytest.raises(ValueError, match="partial in"):
        wx.write_corpus(tmp_path, 4, partial=2.0)
    with pytest.raises(ValueError, match="families must be"):
        wx.write_corpus(tmp_path, 4, families=("sketchy",))


def test_arm_definitions(tmp_path):
    arms = wx.diversity_arms(tmp_path, 8, drop="noise", size=36)
    assert [a.name for a in arms] == ["one-style", "varied", "minus-noise"]
    assert all(a.overrides["data"] == "csv" and Path(a.overrides["data_path"]).exists() for a in arms)
    assert len({a.overrides["data_path"] for a in arms}) == 3
    with pytest.raises(ValueError, match="drop must be a training family"):
        wx.diversity_arms(tmp_path, 8, drop="texture")
    assert [a.name for a in wx.density_arms(tmp_path, 8, size=36)] == ["complete", "partial-50", "partial-100"]
    assert wx.corpus_rows(300, 128) == 12_800 and wx.corpus_rows(3, 8) == 24 and wx.corpus_rows(3, 8, 40) == 40
    assert wx.render_size("clipkit-tiny") == 54
    with pytest.raises(ValueError, match="unknown architecture"):
        wx.render_size("clipkit-huge")


def _summary():
    rows = []
    for arm, (idf, tex) in {"one-style": (0.8, 0.3), "one-style-half": (0.6, 0.25), "varied": (0.75, 0.7)}.items():
        for fam, acc in (("classic", idf), ("texture", tex)):
            rows.append({"arm": arm, "seed": 0, "probe": f"counting@{fam}", "accuracy": acc, "ci_low": acc - .05,
                         "ci_high": acc + .05, "chance": 1 / 6, "n": 100, "verdict": "above chance"})
    return pd.DataFrame(rows)


def test_gaps_effective_robustness_and_the_conclusion():
    gaps = wx.style_gaps(_summary())
    v = gaps.set_index("arm").loc["varied"]
    assert v["gap"] == pytest.approx(0.05) and bool(v["within_tolerance"])
    assert not gaps.set_index("arm").loc["one-style", "within_tolerance"]
    er = wx.effective_robustness(gaps, reference=["one-style", "one-style-half"])
    assert list(er["arm"]) == ["varied"]
    # the line through the two single-style points, in logit space, predicts about 0.29 at ID 0.75
    from scipy.special import logit, expit
    slope = (logit(0.3) - logit(0.25)) / (logit(0.8) - logit(0.6))
    pred = expit(logit(0.3) + slope * (logit(0.75) - logit(0.8)))
    assert er["effective_robustness"].iloc[0] == pytest.approx(0.7 - pred)
    lone = wx.effective_robustness(gaps, reference=["one-style"])
    assert lone["effective_robustness"].isna().all() and "at least two" in lone["note"].iloc[0]
    paired = pd.DataFrame([{"probe": "counting@texture", "seed": 0, "arm": "varied", "baseline": "one-style",
                            "diff": 0.4, "p_value": 1e-9}])
    text = wx.diversity_conclusion(gaps, paired)
    assert text.startswith("**Does variety make the unseen style in-distribution? yes**") and "better" in text
    worse = wx.diversity_conclusion(gaps.assign(within_tolerance=False), paired.assign(p_value=0.5))
    assert "? no**" in worse and "no detectable difference" in worse
    # a chance-level in-distribution accuracy makes a small gap meaningless: not counted as in distribution
    flat = _summary()
    flat.loc[(flat["arm"] == "varied"), ["accuracy", "ci_low"]] = [[0.17, 0.12], [0.16, 0.11]]
    chance_gaps = wx.style_gaps(flat)
    assert not chance_gaps.set_index("arm").loc["varied", "id_above_chance"]
    assert chance_gaps.set_index("arm").loc["varied", "within_tolerance"]          # the gap alone would say yes
    blind = wx.diversity_conclusion(chance_gaps, paired)
    seen = wx.diversity_conclusion(gaps.assign(family="light"), paired)     # a family the varied arm trained on
    assert "? not testable**" in seen and "seen in varied's training, so not counted" in seen
    assert "? not testable**" in blind and "not testable: varied's in-distribution accuracy 0.170" in blind


def test_density_conclusion_counts_only_significant_drops():
    paired = pd.DataFrame([{"probe": p, "seed": 0, "arm": "partial-100", "baseline": "complete", "acc_arm": .6,
                            "acc_baseline": .8, "diff": -.2, "p_value": pv} for p, pv in (("binding", 1e-6), ("spatial_swap", .04))])
    text = wx.density_conclusion(paired)
    assert "1 of 2" in text and "**lower**" in text and "no detectable difference" in text


SMOKE = {"ARCH": "clipkit-nano", "STEPS": 3, "BATCH_SIZE": 8, "N": 12, "RETRIEVAL_N": 20, "WORKERS": 0}


@pytest.mark.slow
def test_world_experiment_notebooks_run_into_the_report(tmp_path, monkeypatch):
    from clipkit.report.runner import run_experiments
    monkeypatch.chdir(REPO)
    nbs = [REPO / "notebooks" / f"{n}.ipynb" for n in ("experiment_diversity", "experiment_caption_density")]
    for nb in nbs:
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code")        # committed clean
        assert not any(line.lstrip().startswith(("def ", "class ")) for c in cells for line in c["source"])
    s = run_experiments(notebooks=nbs, out_root=tmp_path / "reports", parameters={**SMOKE, "RUN_ROOT": str(tmp_path / "runs")},
                        timeout_per_cell=600)
    assert not s.failed, s.failed
    folder = tmp_path / "reports" / "experiments"
    m = json.loads((folder / "experiment_diversity.metrics.json").read_text())["metrics"]
    for arm in ("one-style", "varied", "minus-light"):
        for fam in ("classic", "light", "texture", "sketch"):
            acc, lo, hi = (m[f"{arm}/counting@{fam}/{k}"] for k in ("accuracy", "ci_low", "ci_high"))
            assert 0 <= lo <= acc <= hi <= 1 and m[f"{arm}/counting@{fam}/n"] == 12
    assert "varied-vs-one-style/binding@texture/p_value" in m and "varied/counting@texture/gap" in m
    d = json.loads((folder / "experiment_caption_density.metrics.json").read_text())["metrics"]
    for arm in ("complete", "partial-50", "partial-100"):
        assert 0 <= d[f"{arm}/binding/accuracy"] <= 1 and d[f"{arm}/spatial_swap/n"] == 12
    assert "partial-100-vs-complete/binding/p_value" in d and d["train_seconds"] > 0
