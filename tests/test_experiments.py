"""clipkit.analysis.experiments with clipkit-nano trained for a few steps, the augment option, and the three
experiment notebooks through `clipkit report --experiments` with smoke parameters."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipkit.analysis import experiments as ex
from clipkit.train.config import TrainConfig
from clipkit.data.transforms import sample_seed, seeded, train_transform

REPO = Path(__file__).resolve().parents[1]
NANO = {"model": "clipkit-nano", "steps": 3, "batch_size": 8, "warmup": 1, "workers": 0, "log_every": 1}


# --- the augment option ------------------------------------------------------------------------
def test_augment_transforms_shapes_and_determinism():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (36, 36, 3), dtype=np.uint8))
    for kind in ("none", "crop", "heavy"):
        t = train_transform(32, augment=kind)
        a, b = seeded(t, img, 7), seeded(t, img, 7)
        assert a.shape == (3, 32, 32) and torch.equal(a, b), kind          # same seed: same sample (resume)
    none = train_transform(32, augment="none")
    assert torch.equal(seeded(none, img, 1), seeded(none, img, 2))          # no augmentation: seed-free
    heavy = train_transform(32, augment="heavy")
    draws = {seeded(heavy, img, sample_seed(0, j)).sum().item() for j in range(6)}
    assert len(draws) == 6                                                  # heavy: every draw differs
    with pytest.raises(ValueError, match="augment must be"):
        train_transform(32, augment="flip")
    with pytest.raises(ValueError, match="augment must be crop, none or heavy"):
        TrainConfig(augment="strong")


def test_augmentation_examples_are_what_training_sees():
    examples = ex.augmentation_examples(["none", "heavy"], arch="clipkit-nano", k=3)
    assert list(examples) == ["none", "heavy"] and all(len(v) == 3 for v in examples.values())
    assert examples["none"][0].size == (32, 32)
    assert np.array_equal(np.asarray(examples["none"][0]), np.asarray(examples["none"][2]))
    with pytest.raises(ValueError, match="unknown architecture"):
        ex.augmentation_examples(["none"], arch="no-such-arch")


# --- arms --------------------------------------------------------------------------------------
def test_arm_definitions():
    hn = ex.hard_negative_arms(2)
    assert [a.name for a in hn] == ["no-negatives", "hard-negatives"]
    assert hn[1].overrides == {"loss": "negclip", "hard_negatives": 2}
    bs = ex.batch_size_arms([16, 64], samples=640)
    assert [(a.overrides["batch_size"], a.overrides["steps"]) for a in bs] == [(16, 40), (64, 10)]
    assert [a.overrides["warmup"] for a in bs] == [4, 1]
    with pytest.raises(ValueError, match="batch size 1000"):
        ex.batch_size_arms([1000], samples=640)
    assert [a.overrides["augment"] for a in ex.augmentation_arms()] == ["none", "crop", "heavy"]
    with pytest.raises(ValueError, match="arm name"):
        ex.Arm("bad name/../", {})


def test_arm_config_errors_name_the_arm(tmp_path):
    with pytest.raises(ValueError, match="arm 'x'.*unknown field"):
        ex.arm_config(ex.Arm("x", {"lr_typo": 1}), NANO, 0, tmp_path)
    with pytest.raises(ValueError, match="arm 'y'.*augment"):
        ex.train_arms([ex.Arm("y", {"augment": "bogus"})], NANO, run_root=tmp_path)
    with pytest.raises(ValueError, match="unique"):
        ex.train_arms([ex.Arm("z", {}), ex.Arm("z", {})], NANO, run_root=tmp_path)


@pytest.fixture(scope="module")
def two_arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("arms")
    arms = [ex.Arm("plain", {}), ex.Arm("negs", {"loss": "negclip", "hard_negatives": 2})]
    return arms, root, ex.train_arms(arms, NANO, run_root=root, log=lambda m: None)


def test_train_arms_trains_then_reuses(two_arms):
    arms, root, trained = two_arms
    assert list(trained["arm"]) == ["plain", "negs"] and not trained["reused"].any()
    assert (trained["samples"] == 24).all() and (trained["final_loss"] > 0).all()
    saved = json.loads((root / "negs-seed0" / "config.json").read_text())
    assert saved["loss"] == "negclip" and saved["hard_negatives"] == 2 and saved["seed"] == 0
    weights = root / "plain-seed0" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = ex.train_arms(arms, NANO, run_root=root, log=lambda m: None)
    assert again["reused"].all() and weights.stat().st_mtime_ns == stamp        # same config: not retrained
    assert list(again["train_seconds"]) == list(trained["train_seconds"])


def test_train_arms_retrains_when_the_config_changes(tmp_path):
    arm = [ex.Arm("a", {})]
    ex.train_arms(arm, NANO, run_root=tmp_path, log=lambda m: None)
    changed = ex.train_arms(arm, {**NANO, "steps": 4}, run_root=tmp_path, log=lambda m: None)
    assert not changed["reused"].any() and changed["steps"].iloc[0] == 4
    log = ex.loss_curve(tmp_path / "a-seed0")
    assert list(log["step"]) == [1, 2, 3, 4]     # a fresh run, not the old one's log continued


def test_probe_arms_paired_tests_and_findings(two_arms):
    _, _, trained = two_arms
    summary, items = ex.probe_arms(trained, probes=("counting", "binding"), n=12, retrieval_n=20,
                                   shift={"n": 8, "n_train": 40, "shifts": ["grayscale"], "severities": [3]})
    assert set(summary["probe"]) == {"counting", "binding", "retrieval", "shift-id", "shift-ood"}
    assert len(summary) == 10 and summary["n"].gt(0).all()
    assert summary.set_index(["arm", "probe"]).loc[("plain", "binding"), "chance"] == pytest.approx(0.5)
    assert ((summary["ci_low"] <= summary["accuracy"]) & (summary["accuracy"] <= summary["ci_high"])).all()
    retrieval = summary[summary["probe"] == "retrieval"]
    assert (retrieval["chance"] < 0.2).all() and (retrieval["n"] == 20).all()

    paired = ex.paired_tests(items, baseline="plain")
    assert set(paired["arm"]) == {"negs"} and len(paired) == 5
    row = paired.set_index("probe").loc["counting"]
    assert row["n"] == 12 and 0 <= row["p_value"] <= 1
    assert row["diff"] == pytest.approx(row["acc_arm"] - row["acc_baseline"])
    with pytest.raises(ValueError, match="baseline arm"):
        ex.paired_tests(items, baseline="nope")

    text = ex.findings(summary, paired, baseline="plain")
    assert "**counting** (chance 0.167, n=12)" in text and "negs vs plain" in text and "McNemar p" in text
    head = ex.headline(summary, paired)
    assert head["plain/counting/chance"] == pytest.approx(1 / 6) and "negs-vs-plain/binding/p_value" in head


def test_findings_call_a_difference_only_when_significant():
    summary = pd.DataFrame([{"arm": a, "seed": 0, "probe": "p", "accuracy": acc, "ci_low": acc - .05,
                             "ci_high": acc + .05, "chance": .5, "n": 100, "verdict": v}
                            for a, acc, v in (("base", .5, "at chance"), ("new", .9, "above chance"))])
    strong = pd.DataFrame([{"probe": "p", "seed": 0, "arm": "new", "baseline": "base", "n": 100, "acc_arm": .9,
                            "acc_baseline": .5, "diff": .4, "arm_only_right": 40, "baseline_only_right": 0,
                            "p_value": 1e-12}])
    assert "**higher**" in ex.findings(summary, strong, "base")
    weak = strong.assign(p_value=0.03, diff=0.02)
    assert "**higher**" in ex.findings(summary, weak, "base")       # one test: p = 0.03 < 0.05
    # two tests: Bonferroni alpha 0.05 / 2 = 0.025 < 0.03, so neither is called a difference
    two = pd.concat([weak, weak.assign(probe="q")])
    summary2 = pd.concat([summary, summary.assign(probe="q")])
    assert ex.findings(summary2, two, "base").count("no detectable difference") == 2


def test_seed_spread():
    s = pd.DataFrame({"arm": ["a"] * 2, "probe": ["p"] * 2, "seed": [0, 1], "accuracy": [0.4, 0.6]})
    r = ex.seed_spread(s).iloc[0]
    assert (r["mean"], r["min"], r["max"], r["seeds"]) == (pytest.approx(0.5), 0.4, 0.6, 2)


# --- the experiment notebooks ------------------------------------------------------------------
SMOKE = {"ARCH": "clipkit-nano", "STEPS": 3, "BATCH_SIZE": 8, "SAMPLES": 48, "BATCH_SIZES": [8, 16],
         "N": 12, "RETRIEVAL_N": 20, "SHIFT_N": 8, "WORKERS": 0}


@pytest.mark.slow
def test_experiment_notebooks_run_into_the_report(tmp_path, monkeypatch):
    from clipkit.report.runner import run_experiments
    monkeypatch.chdir(REPO)
    # the three training-recipe experiments (the world experiments have their own test,
    # tests/test_world_experiments.py); all of them are picked up by `make experiments`
    stems = ["experiment_augmentation", "experiment_batch_size", "experiment_hard_negatives"]
    nbs = [REPO / "notebooks" / f"{s}.ipynb" for s in stems]
    assert set(stems) <= {n.stem for n in (REPO / "notebooks").glob("experiment_*.ipynb")}
    params = {**SMOKE, "RUN_ROOT": str(tmp_path / "runs")}
    s = run_experiments(notebooks=[str(n.relative_to(REPO)) for n in nbs], out_root=tmp_path / "reports",
                        parameters=params, timeout_per_cell=600)
    assert not s.failed, s.failed
    folder = tmp_path / "reports" / "experiments"
    arms = {"experiment_hard_negatives": {"no-negatives", "hard-negatives"},
            "experiment_batch_size": {"batch-8", "batch-16"},
            "experiment_augmentation": {"aug-none", "aug-crop", "aug-heavy"}}
    for nb in nbs:
        record = json.loads((folder / f"{nb.stem}.metrics.json").read_text())
        m = record["metrics"]
        for arm in arms[nb.stem]:
            for probe in ("counting", "spatial", "spatial_swap", "binding", "retrieval"):
                acc, lo, hi = (m[f"{arm}/{probe}/{k}"] for k in ("accuracy", "ci_low", "ci_high"))
                assert 0 <= lo <= acc <= hi <= 1 and 0 < m[f"{arm}/{probe}/chance"] < 1
            assert m[f"{arm}/counting/n"] == 12
        assert m["wall_minutes"] > 0 and m["train_seconds"] > 0
        assert any(k.endswith("/p_value") for k in m)
        for fig in record["figures"]:
            assert (folder / "figures" / f"{fig}.png").stat().st_size > 1000
            assert (folder / "figures" / f"{fig}.svg").read_text().lstrip().startswith("<?xml")
        assert (folder / f"{nb.stem}.html").exists()
    assert "aug-heavy/shift-ood/accuracy" in json.loads((folder / "experiment_augmentation.metrics.json").read_text())["metrics"]
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "<h2>Experiments</h2>" in index and "experiments/figures/hard_negatives_probes.png" in index
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["models"] == [] and set(summary["experiments"]["probes"]) == set(arms)
