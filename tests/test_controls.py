"""The controls that make a probe's number mean something: caption-only control, one tie rule, item identity
and pairing, spatial items never duplicated, clustered intervals, training-range flags, findings in words."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipkit.analysis.compare import ItemMismatch, paired_comparisons, paired_test
from clipkit.probes import KINDS, Item, SpecError, load_spec, run_probe
from clipkit.probes import controls
from clipkit.probes.findings import finding


class _TableModel(torch.nn.Module):
    """A constructed model: image ids and caption ids embedded by the given (id -> vector) tables."""

    def __init__(self, image_vecs, text_vecs):
        super().__init__()
        self.img, self.txt = torch.tensor(image_vecs, dtype=torch.float), torch.tensor(text_vecs, dtype=torch.float)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def encode_image(self, ids):
        return self.img[ids]

    def encode_text(self, ids):
        return self.txt[ids]


def _run(items, image_vecs, text_of, name="t", model_name="m", breakdowns=()):
    """run_probe on hand-made items: image i is id i; each caption's vector is text_of(caption)."""
    caps = sorted({c for it in items for c in it.captions})
    vocab = {c: j for j, c in enumerate(caps)}
    ids = {id(it.image): i for i, it in enumerate(items)}
    model = _TableModel(image_vecs, [text_of(c) for c in caps])
    spec = {"name": name, "kind": "counting", "breakdowns": list(breakdowns)}
    return run_probe(spec, model, lambda im: torch.tensor(ids[id(im)]),
                     lambda texts: torch.tensor([vocab[t] for t in texts]), items=items, model_name=model_name)


def _images(n):
    return [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(n)]


def test_a_caption_preference_scores_above_chance_and_the_control_calls_it_text_bias():
    # blind to the image (every image is the same vector); the text side prefers "a photo of" captions,
    # which are the true ones: accuracy 1.0, far above chance 0.5, earned without looking
    items = [Item(im, [f"a photo of {i}", f"{i}"][::1 - 2 * (i % 2)], i % 2, {"k": i % 3})
             for i, im in enumerate(_images(40))]
    r = _run(items, [[1.0, 0.0]] * 40, lambda c: [1.0, 0.0] if c.startswith("a photo") else [0.0, 1.0])
    s = r.summary
    assert s["accuracy"] == 1.0 and s["verdict"] == "above chance"
    assert s["caption_only"]["accuracy"] == 1.0 and s["caption_only"]["n"] == 40
    assert {"accuracy", "ci_low", "ci_high", "chance", "n"} <= set(s["caption_only"])
    assert s["vs_caption_only"] == controls.TEXT_BIAS
    m = r.metrics()
    assert "text bias, not vision" in m["verdict"] and m["caption_only_accuracy"] == 1.0
    assert "text bias, not vision" in finding(r)


def test_a_model_that_looks_is_above_its_caption_prior():
    # image i is caption i's vector; item i's foil is item i+1's true caption, so against the mean image
    # both candidates score alike (caption-only = chance) while the images tell them apart (accuracy 1)
    n = 30
    items = [Item(im, [f"c{i}", f"c{(i + 1) % n}"], 0) for i, im in enumerate(_images(n))]
    eye = np.eye(n)
    r = _run(items, eye.tolist(), lambda c: eye[int(c[1:])].tolist())
    s = r.summary
    assert s["accuracy"] == 1.0 and s["caption_only"]["accuracy"] == pytest.approx(0.5)
    assert s["caption_only"]["verdict"] == "at chance" and s["vs_caption_only"] == controls.ABOVE_PRIOR
    assert s["vs_caption_only_p"] < 1e-3 and "**above it**" in finding(r)


def test_a_tie_never_shows_as_the_true_caption():
    # items 0 and 1: the true caption "t" ties with the foil "f" (credit 1/2 each); item 2 chooses "g"
    items = [Item(im, ["t", "f", "g"], 0) for im in _images(3)]
    r = _run(items, [[1, 0, 0], [1, 0, 0], [0, 1, 0]],
             lambda c: {"t": [1, 0, 0], "f": [1, 0, 0], "g": [0, 1, 0]}[c])
    t = r.table
    assert t["credit"].tolist() == [0.5, 0.5, 0.0] and t["n_tied"].tolist() == [2, 2, 1]
    assert t["chosen_caption"].tolist() == ["tie (2 captions)", "tie (2 captions)", "g"]
    assert not t["correct"].any() and t["best"].tolist() == ["0|1", "0|1", "2"]
    _, titles = r.failures(5)
    assert titles == ["true: t\nchose: tie (2 captions)"] * 2 + ["true: t\nchose: g"]
    assert r.summary["accuracy"] == pytest.approx(1 / 3)


def test_item_ids_follow_pixels_and_captions():
    a, b = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    assert controls.item_id(a, ["x", "y"]) == controls.item_id(a.copy(), ["x", "y"])
    assert len({controls.item_id(a, ["x", "y"]), controls.item_id(b, ["x", "y"]), controls.item_id(a, ["y", "x"])}) == 3


def test_spatial_items_are_never_copies_when_a_relation_lacks_its_inverse():
    spec = load_spec("spatial", n=24, options={"relations": ["left of", "above", "below"]})
    items = KINDS["spatial"].items(spec)
    ids = [controls.item_id(it.image, it.captions) for it in items]
    assert len(set(ids)) == len(ids)                                           # no duplicated item
    lone = [it for it in items if it.factors["relation"] == "left of"]
    assert lone and not any(it.factors["mirrored"] for it in lone) and all(it.cluster is None for it in lone)
    mirrored = [it for it in items if it.factors["mirrored"]]
    assert {it.factors["relation"] for it in mirrored} == {"above", "below"}
    summary = KINDS["spatial"].summarise(spec, pd.DataFrame([{**it.factors, "credit": 1.0, "chance": 1 / 3}
                                                              for it in items]))
    assert "left out for ['left of']" in summary["pair_scores"] and "right of" in summary["pair_scores"]
    assert summary["pair_n"] == len(mirrored) // 2


def test_mirrored_pairs_are_clusters_in_the_interval(nano):
    r = run_probe(load_spec("spatial", n=16), *nano, model_name="clipkit-nano")
    s = r.summary
    assert s["ci_method"].startswith("korn-graubard") and s["n_clusters"] == 8
    assert r.table.groupby("cluster").size().eq(2).all() and r.table["item_id"].is_unique
    assert "pair_accuracy" in s and s["pair_scores"] == "every item is in a mirrored pair"


def test_a_misspelled_breakdown_is_an_error_naming_the_factors(nano):
    with pytest.raises(SpecError, match=r"breakdowns \['colur'\].*did you mean 'colour'.*known factors: \["):
        run_probe({"name": "x", "kind": "counting", "n": 6, "breakdowns": ["colur"]}, *nano)


def test_a_factor_named_like_a_table_column_is_refused(nano):
    items = [Item(im, ["a", "b"], 0, {"credit": 3}) for im in _images(2)]
    with pytest.raises(SpecError, match=r"factor\(s\) \['credit'\] would overwrite"):
        run_probe({"name": "x", "kind": "counting"}, *nano, items=items)


def test_counts_outside_the_training_range_are_flagged(nano, capsys):
    spec = load_spec("counting", n=6, options={"counts": [1, 8, 10]})
    r = run_probe(spec, *nano, model_name="clipkit-tiny:synthetic")   # a name the corpus trained
    assert r.summary["outside_training_range"] == [8, 10]
    assert "[8, 10] outside the training range" in r.metrics()["verdict"]   # what `clipkit probe` prints
    assert "count [8, 10] outside the training range of clipkit-tiny:synthetic (1..6)" in capsys.readouterr().err
    assert "outside_training_range" not in run_probe(spec, *nano, model_name="clipkit-tiny:random").summary
    assert "outside_training_range" not in run_probe(load_spec("counting", n=6), *nano,
                                                     model_name="clipkit-tiny:synthetic").summary
    assert controls.untrained_spec("clipkit-tiny:synthetic") == "clipkit-tiny:random"
    assert controls.untrained_spec("clipkit-tiny") is None and controls.untrained_spec("ViT-B-32:openai") is None


def test_jsonl_images_outside_the_root_need_the_option(tmp_path, nano):
    (tmp_path / "data").mkdir()
    Image.new("RGB", (16, 16), "red").save(tmp_path / "outside.png")
    (tmp_path / "data" / "x.jsonl").write_text(json.dumps({"image": "../outside.png", "captions": ["a", "b"],
                                                           "answer": 0}) + "\n")
    spec = {"name": "x", "kind": "jsonl", "options": {"path": str(tmp_path / "data" / "x.jsonl")}}
    with pytest.raises(SpecError, match="x.jsonl:1: image '../outside.png' lies outside"):
        run_probe(spec, *nano)
    spec["options"]["allow_outside_root"] = True
    r = run_probe(spec, *nano)
    assert (r.summary["n"], r.summary["read"], r.summary["skipped"]) == (1, 1, 0)


def _table(ids, credit, cluster=None):
    return pd.DataFrame({"item": range(len(ids)), "item_id": ids, "credit": credit,
                         **({"cluster": cluster} if cluster is not None else {})})


def test_paired_test_pairs_on_item_identity_not_position():
    a = _table(["p", "q", "r", "s"], [1.0, 1.0, 0.0, 1.0])
    b = _table(["s", "r", "q", "p"], [0.0, 0.0, 1.0, 0.0])      # same items, other order
    t = paired_test(a, b)
    # by item: p 1/0, q 1/1, r 0/0, s 1/0 -> a alone right on p and s: exact McNemar p = 2 * 0.5**2
    assert (t["n"], t["only_a"], t["only_b"], t["acc_a"], t["acc_b"]) == (4, 2, 0, 0.75, 0.25)
    assert t["p_value"] == pytest.approx(0.5) and t["n_clusters"] == 4
    with pytest.raises(ItemMismatch, match=r"counting: the two tables hold different items \(1 only in a"):
        paired_test(a, b.assign(item_id=["s", "r", "q", "x"]), probe="counting")
    with pytest.raises(ItemMismatch, match="no 'item_id' column"):
        paired_test(a, b.drop(columns="item_id"), probe="counting")


def test_paired_test_flips_whole_clusters():
    # 10 pairs of items, a beats b on both members of 5 pairs: as 10 independent items McNemar says
    # p = 2 / 2**10; flipping the 5 pairs as units leaves p = 2 / 2**5
    ids = [f"i{k}" for k in range(20)]
    a = _table(ids, [1.0] * 10 + [0.0] * 10, cluster=[k // 2 for k in range(20)])
    b = _table(ids, [0.0] * 20)
    assert paired_test(a, b)["p_value"] == pytest.approx(2 / 2 ** 5)
    assert paired_test(a.drop(columns="cluster"), b)["p_value"] == pytest.approx(2 / 2 ** 10)


def test_report_folders_with_other_items_are_refused_naming_the_probe(tmp_path, capsys):
    for name, ids in (("a_model", ["p", "q"]), ("b_model", ["p", "q"]), ("c_model", ["x", "y"])):
        (tmp_path / name).mkdir()
        _table(ids, [1.0, 0.0]).to_csv(tmp_path / name / "counting.csv", index=False)
    refused = []
    out = paired_comparisons(tmp_path, refused=refused)
    assert [(c["model"], c["n"]) for c in out] == [("b_model", 2)]
    assert [(r["probe"], r["model"]) for r in refused] == [("counting", "c_model")]
    assert "refused: c_model vs a_model: counting: the two tables hold different items" in capsys.readouterr().err


def test_finding_compares_with_the_untrained_model_on_the_same_items():
    n = 30
    items = [Item(im, [f"c{i}", f"c{(i + 1) % n}"], 0) for i, im in enumerate(_images(n))]
    eye = np.eye(n)
    trained = _run(items, eye.tolist(), lambda c: eye[int(c[1:])].tolist(), model_name="trained")
    untrained = _run(items, [[1.0] + [0.0] * (n - 1)] * n, lambda c: eye[int(c[1:])].tolist(), model_name="untrained")
    text = finding(trained, untrained)
    assert "Untrained model (untrained)" in text and "is **above** it" in text
    assert "What this design cannot show" in text
    other = _run(items[:10], eye.tolist(), lambda c: eye[int(c[1:])].tolist(), model_name="other")
    assert "run on other items" in finding(trained, other)


def test_mean_accuracy_over_datasets_uses_binomial_errors_not_the_interval_width():
    from clipkit.analysis.crossdata import mean_accuracy_summary
    t = pd.DataFrame({"zs_accuracy": [1.0, 0.5], "zs_n": [16, 96], "zs_chance": [0.1, 0.5],
                      # intervals that would give other errors if read off as symmetric widths
                      "zs_ci_low": [0.79, 0.4], "zs_ci_high": [1.0, 0.6]})
    m = mean_accuracy_summary(t)
    a1, a2 = 18 / 20, 50 / 100                                   # Agresti-Coull: (k + 2) / (n + 4)
    half = 1.96 * np.sqrt(a1 * (1 - a1) / 20 + a2 * (1 - a2) / 100) / 2
    assert m["accuracy"] == 0.75 and m["ci_low"] == pytest.approx(0.75 - half)
    assert m["ci_high"] == pytest.approx(0.75 + half) and m["n"] == 112 and m["chance"] == pytest.approx(0.3)


def test_the_pair_score_has_its_caption_only_control(nano):
    from clipkit.probes.findings import finding as words
    r = run_probe(load_spec("spatial_swap", n=12), *nano, model_name="clipkit-nano")
    s = r.summary
    t = r.table
    co = t.groupby("pair")["caption_only_credit"].prod()
    assert s["pair_caption_only_accuracy"] == pytest.approx(co.mean()) and s["pair_n"] == 6
    assert "its caption-only control" in words(r)


def test_only_trained_clipkit_models_get_the_training_range_flag(tmp_path):
    from clipkit.probes.controls import trained_on_synthetic_corpus, untrained_spec
    assert trained_on_synthetic_corpus("clipkit-tiny:synthetic")
    assert not trained_on_synthetic_corpus("clipkit-tiny") and not trained_on_synthetic_corpus("clipkit-tiny:random")
    assert not trained_on_synthetic_corpus("ViT-B-32:openai") and not trained_on_synthetic_corpus(str(tmp_path))
    (tmp_path / "clipkit.json").write_text("{}")
    assert trained_on_synthetic_corpus(str(tmp_path))                       # a clipkit run folder
    assert untrained_spec("clipkit-tiny:synthetic") == "clipkit-tiny:random" and untrained_spec("clipkit-tiny") is None
