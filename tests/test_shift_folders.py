"""Tests for the folder distribution-shift probe (shift_folders.py) and the multi-model `clipkit probe`
effective-robustness table: tiny ImageFolders of synthetic shapes in tmp_path, clipkit-nano. No network."""
import json

import numpy as np
import pandas as pd
import pytest

from clipkit.world import synth
from clipkit.probes import SpecError, load_spec
from clipkit.analysis.robustness import effective_robustness_of as effective_robustness
from clipkit.data.classification import FolderSet
from clipkit.probes.shift_folders import run_folder_shift
from clipkit.analysis.robustness import IN_DISTRIBUTION
from clipkit.world.shifts import shifted_image
from conftest import BlindImageModel

SHAPES = ["circle", "square", "triangle"]


def _write(root, classes, per_class, seed, shift=None):
    """root/<shape>/<i>.png: one object of that shape per image; `shift` renders it under a clipkit shift."""
    for c, shape in enumerate(classes):
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            scene = synth.make_single_scene(seed * 1000 + c * 100 + i, shapes=(shape,))
            img = synth.render(scene, 48) if shift is None else shifted_image(scene, shift, 1, seed=i, size=48)
            img.save(root / shape / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """ID train (3 classes x 6), ID test (3 x 4), OOD 'sketch' (outline style, 2 of the 3 classes x 4),
    OOD 'noisy' (all 3 classes x 3, gaussian noise)."""
    base = tmp_path_factory.mktemp("folders")
    return {"train": _write(base / "train", SHAPES, 6, 1), "test": _write(base / "test", SHAPES, 4, 2),
            "sketch": _write(base / "sketch", SHAPES[:2], 4, 3, shift="outline"),
            "noisy": _write(base / "noisy", SHAPES, 3, 4, shift="gaussian_noise"), "base": base}


def _spec(folders, n=None, drop=(), **kw):
    """A folder_shift spec mapping over the fixture's folders; `drop`: options to leave out."""
    options = {"id_train": str(folders["train"]), "id_test": str(folders["test"]),
               "ood": {"sketch": str(folders["sketch"]), "noisy": str(folders["noisy"])}, "templates": "photo", **kw}
    return {"name": "fs", "kind": "folder_shift", "n": n, "options": {k: v for k, v in options.items() if k not in drop}}


def test_folder_set_maps_labels_to_id_classes_and_subsets(folders):
    ds = FolderSet(folders["sketch"], SHAPES)
    assert list(ds.class_ids) == [0, 1] and sorted({y for _, y in ds.samples}) == [0, 1] and len(ds) == 8
    # the sorted ID folders are circle, square, triangle; a folder holding only 'triangle' maps to 2
    assert FolderSet(folders["sketch"], ["square", "triangle", "circle"]).class_ids.tolist() == [2, 0]
    sub = FolderSet(folders["test"], SHAPES, n=5, seed=0)
    assert len(sub) == 5 and sub.samples == FolderSet(folders["test"], SHAPES, n=5, seed=0).samples
    assert sub.fingerprint != FolderSet(folders["test"], SHAPES, n=6, seed=0).fingerprint


def test_run_on_nano(folders, nano, tmp_path):
    r = run_folder_shift(_spec(folders, classnames={"circle": "circle", "square": "square", "triangle": "triangle"}),
                         *nano, model_name="clipkit-nano", cache=False)
    t = r.table
    assert len(t) == 3 * 2 and set(t["classifier"]) == {"zero-shot", "linear probe"}
    n = t.set_index(["classifier", "shift"])["n"]
    assert n["zero-shot", IN_DISTRIBUTION] == 12 and n["zero-shot", "sketch"] == 8 and n["linear probe", "noisy"] == 9
    chance = t.groupby("shift")["chance"].first()
    # each set is scored among its own classes: 1/2 for the 2-class sketch set, 1/3 elsewhere
    assert chance["sketch"] == pytest.approx(1 / 2) and chance["noisy"] == chance[IN_DISTRIBUTION] == pytest.approx(1 / 3)
    assert set(t.loc[t["shift"] != IN_DISTRIBUTION, "kind"]) == {"dataset"} and set(t["severity"]) == {0}
    sk = r.items[r.items["shift"] == "sketch"]
    assert set(sk["zs_pred"]) <= {0, 1} and set(sk["lp_pred"]) <= {0, 1}   # the absent class is never predicted
    s = r.summary
    assert s["n"] == 12 and s["chance"] == pytest.approx(1 / 3) and s["n_shifts"] == 2 and s["n_ood_sets"] == 2
    assert np.isfinite(s["lp_accuracy"]) and s["lp_lambda"] > 0 and s["skipped_images"] == 0
    rec = json.loads(r.save(tmp_path).read_text())
    assert rec["task"] == "distribution_shift" and len(rec["table"]) == 6 and rec["spec"]["options"]["ood"]["sketch"]


def test_zero_shot_only_and_caps(folders, nano):
    spec = _spec(folders, n=5, drop=("id_train",))
    r = run_folder_shift(spec, *nano, cache=False)
    assert set(r.table["classifier"]) == {"zero-shot"} and set(r.table["n"]) == {5}
    assert np.isnan(r.summary["lp_accuracy"]) and np.isnan(r.summary["lp_drop"]) and "lp_correct" not in r.items



def test_a_blind_model_is_at_chance_on_balanced_sets(folders, nano):
    model, preprocess, tokenizer = nano
    spec = _spec(folders, drop=("id_train",))
    r = run_folder_shift(spec, BlindImageModel(model), preprocess, tokenizer, cache=False)
    # one answer for every image: exactly one class's share of each balanced set, i.e. its chance level
    assert np.allclose(r.table["accuracy"], r.table["chance"])


def test_effective_robustness_over_folder_results():
    """Three synthetic 'models' with known accuracies go through analysis.robustness.effective_robustness_of."""
    from clipkit.probes import ProbeSpec
    from clipkit.probes.shift_folders import FolderShiftOptions
    from clipkit.probes.shift_results import summarise
    spec = ProbeSpec("fs", "folder_shift", options=FolderShiftOptions(id_test="/x", ood={"r": "/y"}))
    results = []
    for m, (a, b) in enumerate([(0.5, 0.3), (0.7, 0.4), (0.9, 0.6)]):
        items = pd.DataFrame({"shift": [IN_DISTRIBUTION] * 10 + ["r"] * 10, "severity": 0, "kind": "dataset",
                              "n_classes": [4] * 10 + [2] * 10, "item": list(range(10)) * 2,
                              "zs_correct": np.r_[np.arange(10) < a * 10, np.arange(10) < b * 10]})
        results.append(summarise(items, 4, spec, f"m{m}"))
    assert results[0].summary["chance"] == 0.25 and results[0].table["chance"].tolist() == [0.25, 0.5]
    # these results carry no linear probe, so there is no reference family: the trend of the three
    # models themselves, whose distances are residuals (in-sample), named as such
    er = effective_robustness(results, reference=None)
    assert len(er) == 3 and "effective_robustness" not in er and abs(er["residual_from_trend"].mean()) < 0.05
    with pytest.raises(ValueError, match=r"reference .* needs 2\+ points"):
        effective_robustness(results)                      # the default reference (linear probes) is absent


@pytest.mark.parametrize("edit, match", [
    (lambda o, f: o.update(id_test=str(f["base"] / "nope")), "id_test folder .*nope does not exist"),
    (lambda o, f: o["ood"].update(r=str(f["base"] / "gone")), "ood 'r' folder .*gone does not exist"),
    (lambda o, f: o.update(id_train=str(f["sketch"])), r"lacks ID class folder\(s\) \['triangle'\]"),
    (lambda o, f: o.update(classnames={"circle": "a circle"}), r"no name for ID class folder\(s\) \['square', 'triangle'\]"),
    (lambda o, f: o.update(classnames=str(f["base"] / "names.json")), "classnames file .*names.json does not exist"),
    (lambda o, f: o.update(ood={}), "non-empty mapping"),
    (lambda o, f: o.update(ood={IN_DISTRIBUTION: str(f["noisy"])}), "the ID set's name"),
    (lambda o, f: o.update(n_train=0), "'n_train' must be >= 1 or null"),
    (lambda o, f: o.update(templates="nope"), "unknown templates"),
    (lambda o, f: o.update(shifts=["x"]), r"unknown option\(s\) \['shifts'\] for kind 'folder_shift'"),
    (lambda o, f: o.pop("id_test"), "option 'id_test' is required"),
])
def test_spec_errors(folders, edit, match):
    spec = _spec(folders)
    spec["options"]["ood"] = dict(spec["options"]["ood"])
    edit(spec["options"], folders)
    with pytest.raises(SpecError, match=match):
        load_spec(spec)


def test_n_is_null_or_at_least_one(folders):
    assert load_spec(_spec(folders)).n is None          # null: every image of every set
    with pytest.raises(SpecError, match="'n' must be >= 1 or null"):
        load_spec(_spec(folders, n=0))


def test_ood_classes_not_in_id_are_listed(folders, tmp_path):
    _write(tmp_path / "odd", ["circle", "hexagon", "star"], 1, 5)
    spec = _spec(folders)
    spec["options"]["ood"] = {"odd": str(tmp_path / "odd")}
    with pytest.raises(SpecError, match=r"not ID classes .*\['hexagon', 'star'\]"):
        load_spec(spec)


def test_yaml_spec_relative_paths_and_classnames_file(folders):
    base = folders["base"]
    (base / "names.json").write_text(json.dumps({"circle": "round disc", "square": "square", "triangle": "triangle",
                                                 "star": "unused extra names are fine"}))
    (base / "spec.yaml").write_text("name: rel\nkind: folder_shift\nn: 3\nseed: 1\noptions:\n  id_test: test\n"
                                    "  ood: {sketch: sketch}\n  classnames: names.json\n")
    s = load_spec(str(base / "spec.yaml"))
    o = s.options
    assert o.id_test == str(folders["test"].resolve()) and o.ood["sketch"] == str(folders["sketch"].resolve())
    assert o.classnames == {"circle": "round disc", "square": "square", "triangle": "triangle"}
    assert o.id_train is None and s.n == 3 and s.seed == 1 and o.templates is None


# --- multi-model `clipkit probe`: the effective-robustness table -----------------------------------------
@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    """clipkit-nano with other random weights, saved as a checkpoint folder (itself a model spec)."""
    from clipkit.models import create_model, save_model
    model, _, _ = create_model("clipkit-nano", seed=1)
    return str(save_model(model, tmp_path_factory.mktemp("m2") / "nano-seed1", "clipkit-nano"))


@pytest.fixture(scope="module")
def same_weights_model(tmp_path_factory):
    """clipkit-nano's own random weights (seed 0) saved as a checkpoint folder: another spec, the same points."""
    from clipkit.models import create_model, save_model
    model, _, _ = create_model("clipkit-nano", seed=0)
    return str(save_model(model, tmp_path_factory.mktemp("m0") / "nano-seed0", "clipkit-nano"))


@pytest.fixture(scope="module")
def shift_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "tiny_shift.yaml"
    p.write_text("name: tiny_shift\nkind: shift\nn: 24\noptions: {shifts: [gaussian_noise], severities: [5], n_train: 24}\n")
    return str(p)


def test_cli_several_models_save_per_model_and_explain_missing_trend(shift_yaml, same_weights_model, tmp_path,
                                                                     capsys):
    from clipkit.cli import probe_main
    out = tmp_path / "out"
    assert probe_main(["--probe", shift_yaml, "--model", "clipkit-nano", "--model", same_weights_model,
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "== clipkit-nano" in text and f"== {same_weights_model}" in text
    records = sorted(out.glob("*/tiny_shift.json"))          # per-model records in numbered sub-folders
    assert [p.parent.name[:3] for p in records] == ["00-", "01-"]
    assert [json.loads(p.read_text())["model"] for p in records] == ["clipkit-nano", same_weights_model]
    # two specs with the same weights give the same two points (zero-shot, probe): fewer than 3 distinct
    # ID accuracies, so there is no trend to fit, and the CLI says so instead of failing
    assert "tiny_shift: effective robustness not computed" in text and "needs 2+ points" in text
    assert not (out / "tiny_shift.effective_robustness.csv").exists()


def test_cli_effective_robustness_table(shift_yaml, second_model, tmp_path, capsys, monkeypatch):
    """The CLI's plumbing with known accuracies: run_any replaced by constructed per-item results."""
    import clipkit.probes
    from clipkit.cli import probe_main
    from clipkit.probes.shift_results import summarise
    acc = {"clipkit-nano": {"zs": (0.5, 0.3), "lp": (0.8, 0.35)}, second_model: {"zs": (0.6, 0.45), "lp": (0.9, 0.4)}}

    def fake_run_any(spec, model, preprocess, tokenizer, model_name=""):
        a, n = acc[model_name], 20
        items = pd.DataFrame({"shift": [IN_DISTRIBUTION] * n + ["gaussian_noise"] * n, "severity": [0] * n + [5] * n,
                              "item": list(range(n)) * 2,
                              **{f"{c}_correct": np.r_[np.arange(n) < a[c][0] * n, np.arange(n) < a[c][1] * n]
                                 for c in ("zs", "lp")}})
        return summarise(items, 6, spec, model_name)

    monkeypatch.setattr(clipkit.probes, "run_any", fake_run_any)
    assert probe_main(["--probe", shift_yaml, "--model", "clipkit-nano", "--model", second_model,
                       "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if "effective robustness against the trend of" in line)
    assert header.startswith("tiny_shift:") and all(f"{m} | linear probe" in header for m in acc)
    er = pd.read_csv(tmp_path / "tiny_shift.effective_robustness.csv").set_index("model")
    assert set(er.index) == {f"{m} | {c}" for m in acc for c in ("zero-shot", "linear probe")}
    # the reference family is the two linear probes: never scored against the line fitted to them ...
    probes = [f"{m} | linear probe" for m in acc]
    assert er.loc[probes, "in_reference"].all() and er.loc[probes, "effective_robustness"].isna().all()
    # ... and each zero-shot point is scored against the line through them, computed here by hand (§3.3)
    lg = lambda p: np.log(p / (1 - p))  # noqa: E731
    (x1, y1), (x2, y2) = (acc[m]["lp"] for m in acc)
    slope = (lg(y2) - lg(y1)) / (lg(x2) - lg(x1))
    for m in acc:
        x, y = acc[m]["zs"]
        expected = y - 1 / (1 + np.exp(-(lg(y1) + slope * (lg(x) - lg(x1)))))
        assert er.loc[f"{m} | zero-shot", "effective_robustness"] == pytest.approx(expected, abs=1e-9)
    assert er.loc["clipkit-nano | zero-shot", "id_accuracy"] == pytest.approx(0.5)


def test_cli_single_model_unchanged(shift_yaml, tmp_path, capsys):
    from clipkit.cli import probe_main
    assert probe_main(["--probe", shift_yaml, "--model", "clipkit-nano", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "effective robustness" not in text and "==" not in text
    assert (tmp_path / "tiny_shift.json").exists()
