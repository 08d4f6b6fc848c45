"""Tests for the fine-grained probe: the analysis on hand-made features, spec validation, a clipkit-nano
run (synthetic and an image folder), and the notebook through papermill. No network."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipkit.probes import ProbeSpec, SpecError, load_spec
from clipkit.probes.finegrained import FineGrainedOptions, analyse, pair_table, run_finegrained, spearman

ROOT = Path(__file__).resolve().parents[1]
SPEC = ProbeSpec(name="t", kind="finegrained", n=300, options=FineGrainedOptions(dataset="synthetic:polygon"))


def _blobs(n_per_class, classes=3, noise=0.05, seed=0):
    """Features near the basis vector of their class (d = classes), labels in class order."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    X = np.eye(classes)[y] + noise * rng.standard_normal((len(y), classes))
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


def test_perfect_features_give_perfect_zero_shot_and_probe():
    trX, trY = _blobs(20, seed=1)
    teX, teY = _blobs(10, seed=2)
    r = analyse(trX, trY, teX, teY, np.eye(3), ["a", "b", "c"], SPEC)
    m = r.metrics()
    assert m["accuracy"] == 1.0 and m["lp_accuracy"] == 1.0
    # 30 of 30 right: the exact (Clopper-Pearson) 95% interval is [0.025 ** (1/30), 1]
    assert m["ci_high"] == 1.0 and m["ci_low"] == pytest.approx(0.025 ** (1 / 30))
    assert m["n"] == 30 and m["chance"] == pytest.approx(1 / 3)
    assert m["verdict"] == "above chance" and m["n_train"] == 60
    assert set(r.per_class["n"]) == {10} and len(r.per_class) == 6          # 3 classes x 2 classifiers
    assert np.array_equal(r.confusion.to_numpy(), np.diag([10, 10, 10]))
    assert (r.pairs["confusions"] == 0).all()
    assert np.isnan(m["confusion_text_spearman"])                            # no confusions: undefined, not 0


def test_a_model_that_ignores_the_image_is_at_chance():
    trX, trY = np.ones((30, 3)) / np.sqrt(3), np.repeat(np.arange(3), 10)
    teX, teY = np.ones((12, 3)) / np.sqrt(3), np.repeat(np.arange(3), 4)
    r = analyse(trX, trY, teX, teY, np.eye(3), ["a", "b", "c"], SPEC)
    assert r.summary["accuracy"] == pytest.approx(1 / 3) and r.summary["lp_accuracy"] == pytest.approx(1 / 3)
    assert r.summary["verdict"] == "at chance"
    assert r.table["zs_pred"].nunique() == 1                                 # one answer for every image


def test_zero_shot_wrong_where_probe_right():
    """Features that separate the classes but a text head that swaps two of them."""
    trX, trY = _blobs(20, seed=1)
    teX, teY = _blobs(10, seed=2)
    swapped = np.eye(3)[:, [1, 0, 2]]
    r = analyse(trX, trY, teX, teY, swapped, ["a", "b", "c"], SPEC)
    assert r.summary["accuracy"] == pytest.approx(1 / 3) and r.summary["lp_accuracy"] == 1.0
    assert r.summary["mcnemar_p"] < 1e-3
    top = r.pairs.iloc[0]
    assert {top["class_a"], top["class_b"]} == {"a", "b"} and top["confusions"] == 20 and top["n"] == 20


def test_pair_table_and_confusion_text_correlation():
    import pandas as pd
    classes = ["w", "x", "y", "z"]
    conf = pd.DataFrame([[8, 2, 0, 0], [3, 7, 0, 0], [0, 1, 9, 0], [0, 0, 0, 10]], index=classes, columns=classes)
    sim = np.array([[1, .9, .2, .1], [.9, 1, .5, .3], [.2, .5, 1, .4], [.1, .3, .4, 1]])
    pairs = pair_table(conf, sim)
    assert len(pairs) == 6 and pairs.iloc[0][["class_a", "class_b", "confusions", "n"]].tolist() == ["w", "x", 5, 20]
    assert pairs.iloc[0]["rate"] == pytest.approx(0.25) and pairs.iloc[0]["text_cosine"] == pytest.approx(0.9)
    rho = spearman(pairs["rate"], pairs["text_cosine"])
    assert rho["rho"] > 0.5 and rho["n_pairs"] == 6


FG = {"name": "x", "kind": "finegrained"}


@pytest.mark.parametrize("spec, match", [
    (FG, "option 'dataset' is required"),
    ({**FG, "options": {"dataset": "synthetic:polygon", "n_test": 3}}, r"unknown option.*'n_test'.*known"),
    ({**FG, "n": "many", "options": {"dataset": "synthetic:polygon"}}, "'n' must be int"),
    ({**FG, "n": 0, "options": {"dataset": "synthetic:polygon"}}, ">= 1"),
    ({**FG, "options": {"dataset": "synthetic:polygon", "n_train": 0}}, "'n_train' must be >= 1"),
    ({**FG, "options": {"dataset": "synthetic:hexagons"}}, "unknown synthetic family"),
    ({**FG, "options": {"dataset": "cifar10"}}, "needs option 'root'"),
    ({**FG, "seed": True, "options": {"dataset": "synthetic:shade"}}, "'seed' must be int"),
    ("no_such_spec", "unknown probe spec"),
])
def test_spec_errors(spec, match):
    with pytest.raises(SpecError, match=match):
        load_spec(spec)


def test_shipped_specs_validate():
    for name in ("finegrained_polygon", "finegrained_shade", "finegrained_star"):
        s = load_spec(name, n=12)
        assert s.kind == "finegrained" and s.n == 12 and s.options.dataset.startswith("synthetic:")


def test_run_on_nano_synthetic(nano, tmp_path):
    spec = load_spec("finegrained_shade", n=15, options={"n_train": 30})
    r = run_finegrained(spec, *nano, model_name="clipkit-nano", cache=False)
    m = r.metrics()
    assert m["n"] == 15 and m["chance"] == pytest.approx(0.2) and 0 <= m["ci_low"] <= m["accuracy"] <= m["ci_high"]
    assert r.confusion.to_numpy().sum() == 15 and r.summary["confusion_text_n_pairs"] == 10
    assert set(r.per_class["class"]) == {"navy", "blue", "sky blue", "cyan", "teal"}
    path = r.save(tmp_path)
    rec = json.loads(path.read_text())
    assert rec["metrics"]["n"] == 15 and (tmp_path / "finegrained_shade.per_class.csv").exists()


def test_run_on_an_image_folder(nano, tmp_path):
    for c, colour in (("red_thing", (220, 30, 30)), ("green_thing", (30, 200, 40))):
        (tmp_path / c).mkdir()
        for i in range(8):
            Image.new("RGB", (32, 32), tuple(max(0, v - 9 * i) for v in colour)).save(tmp_path / c / f"{i}.png")
    spec = {"name": "folder", "kind": "finegrained",
            "options": {"dataset": "imagefolder", "root": str(tmp_path), "templates": "photo"}}
    r = run_finegrained(spec, *nano, model_name="clipkit-nano", cache=False)
    # the folder's own seeded stratified split: 20% test (2 of 8 per class), the probe fits on the other 80%
    assert r.classes == ["green thing", "red thing"] and r.summary["n"] == 4 and r.summary["n_train"] == 12
    assert r.summary["chance"] == 0.5
    from clipkit.probes import load_spec
    from clipkit.probes.finegrained import datasets
    train, test, _, _ = datasets(load_spec(spec), None)
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}      # never the same image


@pytest.mark.slow
def test_notebook_runs_and_records_metrics(tmp_path):
    import papermill as pm
    pm.execute_notebook(str(ROOT / "notebooks/probe_finegrained.ipynb"), str(tmp_path / "out.ipynb"),
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                        parameters={"MODEL": "clipkit-nano", "N": 24, "OUT_DIR": str(tmp_path)})
    m = json.loads((tmp_path / "probe_finegrained.metrics.json").read_text())["metrics"]
    assert {"accuracy", "ci_low", "ci_high", "chance", "n", "lp_accuracy", "confusion_text_spearman"} <= set(m)
    assert m["n"] == 24 and m["chance"] == pytest.approx(1 / 6) and m["shade_n"] == 24
