"""The diagnosis: decodability, the text side on bag-of-words encoders, the verdict, layer curves, pointing game."""
import json
from types import SimpleNamespace

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch

from clipkit.analysis.diagnose import (caption_factor, decodability, diagnose, diagnosis_table, factor_labels,
                                       for_summary, layer_curve, probe_layer_curves, read_pattern, text_side)
from clipkit.analysis.pointing import peak_credit, pointing_game, pointing_items, run_pointing
from clipkit.evaluate.features import encode_texts
from clipkit.evaluate.layers import LayerFeatures
from clipkit.models import create_model
from clipkit.world import synth


# --- decodability -----------------------------------------------------------------------------------
def _linear_factor(n=400, d=16, k=4, seed=0):
    """Features that hold the factor linearly: one centre per class, plus noise in every direction."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(k, d))[y] + 0.3 * rng.normal(size=(n, d))
    return X, y


def test_decodable_factor_scores_near_one():
    X, y = _linear_factor()
    r = decodability(X, y, seed=0)
    assert r["accuracy"] > 0.97 and r["ci_low"] > r["chance"]
    assert r["n"] + r["n_fit"] == 400 and r["n"] == pytest.approx(200, abs=4) and r["classes"] == 4
    assert r["chance"] == pytest.approx(0.25, abs=0.01)   # balanced: the majority rate is 1/k


def test_shuffled_factor_scores_chance_within_ci():
    X, y = _linear_factor()
    y = np.random.default_rng(1).permutation(y)
    r = decodability(X, y, seed=0)
    assert r["ci_low"] <= r["chance"] <= r["ci_high"] and r["accuracy"] < 0.4


def test_chance_is_the_majority_rate_for_an_unbalanced_factor():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8))
    y = (rng.random(300) < 0.2).astype(int)         # 80% class 0, unrelated to X
    r = decodability(X, y, seed=0)
    assert r["chance"] == pytest.approx(0.8, abs=0.06)   # not 1/k = 0.5
    assert r["ci_low"] <= r["chance"]


def test_allowed_values_make_a_k_way_question_with_its_own_chance():
    X, y = _linear_factor(n=400, k=4)
    pairs = [[v, (v + 1) % 4] if i % 2 else [(v + 3) % 4, v] for i, v in enumerate(y)]   # y and one foil
    r = decodability(X, y, allowed=pairs)
    assert r["chance"] == pytest.approx(0.5, abs=0.08) and r["accuracy"] > 0.97
    shuffled = decodability(np.random.default_rng(2).normal(size=X.shape), y, allowed=pairs)
    assert shuffled["ci_low"] <= shuffled["chance"] <= shuffled["ci_high"]
    # the true value always listed first must not help: ties are broken by value, not by position
    rng = np.random.default_rng(3)
    first = [[v, int(rng.choice([w for w in range(4) if w != v]))] for v in y]
    assert decodability(np.zeros_like(X), y, allowed=first)["chance"] == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match="one list of values per row"):
        decodability(X, y, allowed=pairs[:-1])


def test_decodability_rejects_bad_input():
    with pytest.raises(ValueError, match="at least two values"):
        decodability(np.zeros((10, 3)), np.ones(10))
    with pytest.raises(ValueError, match="shape"):
        decodability(np.zeros((10, 3)), np.arange(9) % 2)


# --- the factor read from captions -----------------------------------------------------------------
def test_caption_factor_reads_the_grammar():
    assert caption_factor("counting", "a photo of three red circles.") == 3
    assert caption_factor("counting", synth.count_caption(1, "blue", "cross")) == 1
    rel = synth.relation_caption(("red", "circle"), "left of", ("blue", "square"))
    swapped = synth.relation_caption(("blue", "square"), "left of", ("red", "circle"))
    # the blue square (alphabetically first) is right of the red circle; in the swap it is left of it
    assert caption_factor("spatial", rel) == "right of" and caption_factor("spatial", swapped) == "left of"
    assert caption_factor("binding", "a red square and a blue circle") == "blue"
    assert caption_factor("binding", "a blue four-pointed star and a red square") == "blue"
    assert caption_factor("binding", "a dog on a sofa") is None and caption_factor("jsonl", rel) is None


# --- the text side on bag-of-words and order-aware encoders ------------------------------------------
class WordEncoder(torch.nn.Module):
    """encode_text = mean of word embeddings (bag of words), or of word-bigram embeddings (order-aware)."""

    def __init__(self, vocab_size, order_aware=False, d=64):
        super().__init__()
        self.order_aware, self.v = order_aware, vocab_size + 1
        self.emb = torch.nn.Embedding(self.v * (self.v if order_aware else 1), d)

    def encode_text(self, tokens):                           # (B, T), 0 = padding
        if self.order_aware:
            ids, keep = tokens[:, :-1] * self.v + tokens[:, 1:], (tokens[:, :-1] > 0) & (tokens[:, 1:] > 0)
        else:
            ids, keep = tokens, tokens > 0
        e = self.emb(ids) * keep[..., None]
        return e.sum(1) / keep.sum(1, keepdim=True)


class WordTokenizer:
    def __init__(self):
        self.vocab = {}

    def __call__(self, texts):
        rows = [[self.vocab.setdefault(w, len(self.vocab) + 1) for w in t.split()] for t in texts]
        out = torch.zeros(len(rows), 16, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r)
        return out


def _binding_captions(n=300):
    caps, answers = [], []
    for i in range(n):
        (ca, sa), (cb, sb) = synth.make_binding_scene(i).facts["pairs"]
        caps.append([synth.binding_caption([(ca, sa), (cb, sb)]), synth.binding_caption([(cb, sa), (ca, sb)])])
        answers.append(0)
    return caps, answers


@pytest.mark.parametrize("order_aware", [False, True])
def test_text_side_finds_swaps_indistinguishable_only_for_bag_of_words(order_aware):
    caps, answers = _binding_captions()
    tokenizer = WordTokenizer()
    tokenizer([c for row in caps for c in row])          # fix the vocabulary
    model = WordEncoder(len(tokenizer.vocab), order_aware=order_aware)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.emb.weight)
    X = [encode_texts(model, tokenizer, row).numpy() for row in caps]
    labels = [[caption_factor("binding", c) for c in row] for row in caps]
    assert all(a != b for a, b in labels)                 # the swap states the other binding
    r = text_side(caps, X, answers, labels, seed=0, order_only=True)
    if order_aware:
        assert r["cosine"]["max"] < 0.99 and r["cosine"]["identical"] == 0.0
        assert r["ci_low"] > r["chance"] and r["accuracy"] > 0.6
    else:
        assert r["cosine"]["min"] == pytest.approx(1.0, abs=1e-6) and r["cosine"]["identical"] == 1.0
        assert r["chance"] == pytest.approx(0.5, abs=0.06)   # 2-way: the caption or its swap
        assert r["ci_low"] <= r["chance"] <= r["ci_high"] and abs(r["accuracy"] - 0.5) < 0.08


# --- the verdict in words ---------------------------------------------------------------------------
def _side(acc, lo, hi, chance=0.5, n=200):
    return {"accuracy": acc, "ci_low": lo, "ci_high": hi, "chance": chance, "n": n}


def test_read_pattern_alignment_failure_in_numbers():
    three = {"image_side": _side(0.97, 0.94, 0.99), "text_side": _side(0.99, 0.97, 1.0),
             "cross_modal": _side(0.52, 0.45, 0.59)}
    assert read_pattern(three) == ("decodable from the image (0.97) and the text (0.99) but not matched "
                                   "(0.52, chance 0.50): an alignment failure")
    # the numbers, not the words, decide: raise the match above chance and the verdict changes
    three["cross_modal"] = _side(0.95, 0.92, 0.98)
    assert read_pattern(three).endswith("and matched (0.95): no failure on this factor")
    three["cross_modal"] = _side(0.70, 0.64, 0.76)
    assert read_pattern(three).endswith("a partial alignment loss")


def test_read_pattern_covers_every_combination():
    levels = {"above": _side(0.9, 0.85, 0.95), "at": _side(0.52, 0.45, 0.59), "below": _side(0.3, 0.25, 0.36),
              "unmeasured": {**_side(float("nan"), float("nan"), float("nan")), "n": 0}}
    seen = set()
    for a in levels.values():
        for b in levels.values():
            for m in levels.values():
                text = read_pattern({"image_side": a, "text_side": {**b, "order_only": True}, "cross_modal": m})
                assert isinstance(text, str) and text and "nan" not in text
                seen.add(text.split(": ", 1)[-1])
    assert len(seen) >= 8
    img_fail = read_pattern({"image_side": levels["at"], "text_side": levels["above"], "cross_modal": levels["at"]})
    assert img_fail.endswith("an image-side failure: the image encoder does not represent it")
    bow = read_pattern({"image_side": levels["above"], "text_side": {**levels["at"], "order_only": True},
                        "cross_modal": levels["at"]})
    assert "text-side failure" in bow and "bag-of-words" in bow
    same = read_pattern({"image_side": levels["above"], "text_side": {**levels["at"], "cosine": {"identical": 0.25}},
                         "cross_modal": levels["at"]})
    assert same.endswith("maps 25% of caption-foil pairs to one point (cosine 1.0)")
    below = read_pattern({"image_side": levels["above"], "text_side": levels["above"], "cross_modal": levels["below"]})
    assert "the model prefers the foil" in below


# --- the three numbers of a probe result, layer curves ----------------------------------------------
@pytest.fixture(scope="module")
def nano():
    model, _, preprocess = create_model("clipkit-nano")
    return model.eval(), preprocess, open_clip.get_tokenizer("clipkit-nano")


def _binding_result(n=40):
    items = []
    for i in range(n):
        scene = synth.make_binding_scene(i)
        (ca, sa), (cb, sb) = scene.facts["pairs"]
        caps = [synth.binding_caption([(ca, sa), (cb, sb)]), synth.binding_caption([(cb, sa), (ca, sb)])]
        items.append(SimpleNamespace(image=synth.render(scene), captions=caps[::-1] if i % 2 else caps,
                                     answer=i % 2, factors={}))
    summary = {"accuracy": 0.5, "ci_low": 0.35, "ci_high": 0.65, "chance": 0.5, "n": n}
    return SimpleNamespace(spec=SimpleNamespace(kind="binding", name="binding"), items=items, summary=summary)


def test_diagnose_a_binding_result(nano):
    model, preprocess, tokenizer = nano
    result = _binding_result()
    labels = factor_labels(result)
    assert labels.order_only and len(labels.image) == 40
    three = diagnose(result, model, preprocess, tokenizer)
    for side in ("image_side", "text_side", "cross_modal"):
        assert set(three[side]) >= {"accuracy", "ci_low", "ci_high", "chance", "n"}
        assert three[side]["n"] > 0
    assert three["cross_modal"]["accuracy"] == 0.5 and three["factor"] == "binding"
    assert three["text_side"]["cosine"]["max"] < 1.0        # a transformer sees word order
    assert three["pattern"] == read_pattern(three)
    flat = for_summary(three)
    assert set(flat) == {"image_side", "text_side", "cross_modal", "diagnosis"}
    assert {"accuracy", "ci_low", "ci_high", "chance", "n"} <= set(flat["image_side"])
    json.dumps(flat, allow_nan=False)                            # JSON-safe as it is
    table = diagnosis_table({"binding": three})
    assert table.loc[0, "cross_modal_accuracy"] == 0.5 and table.loc[0, "diagnosis"] == three["pattern"]


def test_diagnose_without_a_factor_says_so(nano):
    model, preprocess, tokenizer = nano
    result = _binding_result(6)
    result.spec.kind = "jsonl"
    three = diagnose(result, model, preprocess, tokenizer)
    assert three["image_side"]["n"] == 0 and "no synthetic factor" in three["image_side"]["note"]
    assert "cosine" in three["text_side"] and "not decodable" not in three["pattern"]
    flat = for_summary(three)
    assert flat["image_side"]["accuracy"] is None and flat["image_side"]["n"] == 0
    json.dumps(flat, allow_nan=False)
    with pytest.raises(ValueError, match="no items"):
        factor_labels(SimpleNamespace(spec=result.spec, items=[]))


def test_layer_curve_finds_the_layer_that_encodes_the_factor():
    X, y = _linear_factor(n=300)
    noise = np.random.default_rng(5).normal(size=X.shape)
    feats = LayerFeatures("image", ["block0", "block1", "post_proj"],
                          {"block0": torch.tensor(noise), "block1": torch.tensor(X), "post_proj": torch.tensor(X)})
    curve = layer_curve(feats, y)
    assert list(curve["layer"]) == ["block0", "block1", "post_proj"]
    b0, b1 = curve.iloc[0], curve.iloc[1]
    assert b0["ci_low"] <= b0["chance"] and b1["accuracy"] > 0.9


def test_probe_layer_curves_on_nano(nano):
    model, preprocess, tokenizer = nano
    curves = probe_layer_curves(_binding_result(), model, preprocess, tokenizer)
    assert list(curves["tower"]) == ["image"] * 3 + ["text"] * 3
    assert list(curves["layer"]) == ["block0", "pre_proj", "post_proj"] * 2
    assert curves["accuracy"].between(0, 1).all() and (curves["n"] > 0).all()


# --- the pointing game ------------------------------------------------------------------------------
def test_pointing_game_scores_one_on_maps_that_peak_on_the_object():
    for kind in ("count", "relation", "binding"):
        items = pointing_items(kind, 12, size=72)
        masks = [it["mask"] for it in items]
        r = pointing_game([m.astype(float) for m in masks], masks)
        assert r["accuracy"] == 1.0 and 0 < r["chance"] < 0.5
        # a map that peaks on the other object scores 0
        if kind != "count":
            others = [synth.object_masks(it["scene"], 72)[1 - i % 2] for i, it in enumerate(items)]
            assert pointing_game([o.astype(float) for o in others], masks)["accuracy"] == 0.0


def test_pointing_game_random_maps_score_the_area_fraction():
    items = pointing_items("binding", 200, seed=1) + pointing_items("count", 200, seed=1)
    masks = [it["mask"] for it in items]
    rng = np.random.default_rng(0)
    r = pointing_game(rng.random((len(items), 6, 6)), masks)
    assert r["ci_low"] <= r["chance"] <= r["ci_high"]
    assert abs(r["accuracy"] - r["chance"]) < 0.05


def test_peak_credit_is_the_object_share_of_the_peak_patch():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True                          # one of the four pixels of the top-left patch
    assert peak_credit(np.array([[1.0, 0], [0, 0]]), mask) == 0.25
    assert peak_credit(np.array([[0.0, 1], [0, 0]]), mask) == 0.0
    assert peak_credit(np.ones((2, 2)), mask) == 1 / 16     # a flat map: the whole image ties
    with pytest.raises(ValueError, match="as many maps as masks"):
        pointing_game([np.ones((2, 2))], [])


def test_run_pointing_on_nano(nano):
    model, preprocess, tokenizer = nano
    df = run_pointing(model, preprocess, tokenizer, n=6)
    assert len(df) == 6 and set(df["method"]) == {"patch", "gradcam"}
    assert df["accuracy"].between(0, 1).all() and (df["chance"] > 0).all()


# --- the diagnosis in a probe's summary and saved JSON (clipkit probe --diagnose) --------------------
def test_add_diagnosis_puts_the_three_numbers_into_the_saved_json(nano, tmp_path):
    from clipkit.analysis.diagnose import add_diagnosis, diagnose_result
    from clipkit.probes import load_spec, run_probe
    model, preprocess, tokenizer = nano
    result = run_probe(load_spec("counting", n=36, seed=3), model, preprocess, tokenizer, model_name="clipkit-nano")
    before = {k: result.summary[k] for k in ("accuracy", "ci_low", "ci_high", "chance", "n")}
    three = add_diagnosis(result, model, preprocess, tokenizer)
    saved = json.loads(result.save(tmp_path).read_text())["metrics"]
    for side in ("image_side", "text_side", "cross_modal"):
        assert set(saved[side]) >= {"accuracy", "ci_low", "ci_high", "chance", "n"}, side
        assert saved[side]["n"] > 0 and saved[side]["ci_low"] <= saved[side]["accuracy"] <= saved[side]["ci_high"]
    assert saved["cross_modal"] == before and {k: saved[k] for k in before} == before   # flat keys untouched
    assert saved["image_side"]["chance"] == pytest.approx(1 / 6, abs=0.1)             # six counts, K-way
    assert saved["diagnosis"] == three["pattern"] == read_pattern(three)              # computed from the numbers
    assert f"({saved['cross_modal']['accuracy']:.2f}" in saved["diagnosis"]
    assert three == diagnose_result(result, model, preprocess, tokenizer, seed=3)      # the spec's seed by default
    flat = result.metrics()
    assert flat["image_side_accuracy"] == saved["image_side"]["accuracy"] and flat["accuracy"] == before["accuracy"]


def test_add_diagnosis_leaves_other_kinds_alone():
    from clipkit.analysis.diagnose import add_diagnosis, is_caption_choice
    shift = SimpleNamespace(summary={"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "chance": 0.1, "n": 10})
    assert not is_caption_choice(shift) and add_diagnosis(shift, None, None, None) is None
    assert set(shift.summary) == {"accuracy", "ci_low", "ci_high", "chance", "n"}
    shift.items = pd.DataFrame({"shift": ["fog"], "item": [0]})       # a ShiftResult's condition table
    assert not is_caption_choice(shift) and add_diagnosis(shift, None, None, None) is None
    assert is_caption_choice(_binding_result(4))


def test_failure_maps_are_the_worst_failures_true_and_chosen_caption_maps(nano):
    from clipkit.analysis.pointing import failure_maps
    from clipkit.evaluate.maps import caption_maps
    from clipkit.probes import load_spec, run_probe
    model, preprocess, tokenizer = nano
    result = run_probe(load_spec("counting", n=24), model, preprocess, tokenizer, model_name="clipkit-nano")
    wrong = result.table[result.table["credit"] < 1].sort_values("margin")
    fm = failure_maps(result, model, preprocess, tokenizer, k=3)
    assert fm["method"] == "patch" and fm["note"] == "" and len(fm["maps"]) == len(fm["titles"]) == 6
    worst = result.items[int(wrong.iloc[0]["item"])]
    assert fm["titles"][0] == f"true: {worst.captions[worst.answer]}" and fm["titles"][1].startswith("chose: ")
    chosen = worst.captions[int(wrong.iloc[0]["pred"])]
    np.testing.assert_allclose(fm["maps"][1], caption_maps(model, preprocess, tokenizer, [worst.image], chosen)[0],
                               atol=1e-6)
    assert fm["images"][0] is worst.image and fm["images"][1] is worst.image
    with pytest.raises(ValueError, match="at least 1"):
        failure_maps(result, model, preprocess, tokenizer, k=0)


def test_run_pointing_pooled_rows_pool_every_kinds_items(nano):
    model, preprocess, tokenizer = nano
    df = run_pointing(model, preprocess, tokenizer, kinds=("count", "binding"), n=4, methods=("patch",), pooled=True)
    assert list(df["kind"]) == ["count", "binding", "all"]
    per_kind, pooled = df.iloc[:2], df.iloc[2]
    assert pooled["n"] == 8
    assert pooled["accuracy"] == pytest.approx((per_kind["accuracy"] * per_kind["n"]).sum() / 8)
    assert pooled["chance"] == pytest.approx((per_kind["chance"] * per_kind["n"]).sum() / 8)
