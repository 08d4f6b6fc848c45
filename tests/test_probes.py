"""The probe engine on real (tiny, random) models and constructed items; spec validation errors."""
import pytest
import torch
from PIL import Image

from clipkit.probes import KINDS, Item, SpecError, load_spec, run_probe
from clipkit.probes.counting import count_report
from clipkit.probes.spatial import relation_confusion


def test_counting_items_are_balanced_and_captions_differ_only_in_the_number():
    spec = load_spec("counting", n=12)
    items = KINDS["counting"].items(spec)
    assert [it.factors["count"] for it in items] == [1, 2, 3, 4, 5, 6] * 2
    for it in items:
        words = [c.split() for c in it.captions]
        assert len({tuple(w[1:2]) for w in words}) == 1          # same colour word everywhere
        assert len({w[0] for w in words}) == len(words)            # number words all differ
        assert it.captions[it.answer].split()[0] == ["one", "two", "three", "four", "five", "six"][
            it.factors["count"] - 1]


def test_run_probe_table_summary_and_breakdowns(nano):
    model, preprocess, tok = nano
    r = run_probe(load_spec("spatial", n=16), model, preprocess, tok, model_name="clipkit-nano")
    assert len(r.table) == 16 and set(r.table["relation"]) == {"left of", "right of", "above", "below"}
    assert r.summary["n"] == 16 and r.summary["chance"] == pytest.approx(0.25)
    assert r.summary["ci_low"] <= r.summary["accuracy"] <= r.summary["ci_high"]
    assert set(r.breakdowns["relation"]["n"]) == {4}
    assert relation_confusion(r).to_numpy().sum() == pytest.approx(16)
    imgs, titles = r.failures(3)
    assert len(imgs) == len(titles) == min(3, int((r.table["credit"] < 1).sum()))


class _OneHotModel(torch.nn.Module):
    """A constructed model: images and captions arrive as ids and are embedded as one-hot vectors."""

    def __init__(self, dim):
        super().__init__()
        self.dim, self.anchor = dim, torch.nn.Parameter(torch.zeros(1))

    def encode_image(self, ids):
        return torch.nn.functional.one_hot(ids, self.dim).float()

    def encode_text(self, ids):
        return torch.nn.functional.one_hot(ids, self.dim).float()


@pytest.mark.parametrize("probe", ["counting", "counting_area_control", "spatial", "spatial_swap", "binding"])
def test_oracle_scores_100_and_a_factor_blind_model_scores_chance(probe):
    spec = load_spec(probe, n=120)
    items = KINDS[spec.kind].items(spec)
    vocab = {c: i for i, c in enumerate(sorted({c for it in items for c in it.captions}))}
    truth = {id(it.image): vocab[it.captions[it.answer]] for it in items}
    model = _OneHotModel(len(vocab))
    oracle = run_probe(spec, model, lambda im: torch.tensor(truth[id(im)]),
                       lambda texts: torch.tensor([vocab[t] for t in texts]), items=items)
    assert oracle.summary["accuracy"] == 1.0 and oracle.summary["verdict"] == "above chance"
    # blind to the factor: every candidate caption of an item maps to the same text feature, and
    # the image to that feature too -> all candidates tie -> expected accuracy is exactly chance
    blind_vocab = {c: vocab[it.captions[0]] for it in items for c in it.captions}
    blind = run_probe(spec, model, lambda im: torch.tensor(truth[id(im)]),
                      lambda texts: torch.tensor([blind_vocab[t] for t in texts]), items=items)
    s = blind.summary
    assert s["accuracy"] == pytest.approx(s["chance"]) and s["verdict"] == "at chance"
    assert s["caption_only"]["accuracy"] == pytest.approx(s["chance"])
    # blind to the image but with a caption preference (longer captions score higher): whatever it
    # scores, it scores from the captions alone, so it equals its caption-only control: text bias
    longest = max(len(c) for c in vocab)
    pref = torch.nn.Module()
    pref.anchor = torch.nn.Parameter(torch.zeros(1))
    text_vecs = torch.cat([0.1 * torch.eye(len(vocab)), torch.tensor([[len(c) / longest] for c in vocab])], 1)
    pref.encode_image = lambda ids: torch.nn.functional.one_hot(torch.full_like(ids, len(vocab)), len(vocab) + 1).float()
    pref.encode_text = lambda ids: text_vecs[ids]
    p = run_probe(spec, pref, lambda im: torch.tensor(0), lambda texts: torch.tensor([vocab[t] for t in texts]),
                  items=items).summary
    assert p["accuracy"] == pytest.approx(p["caption_only"]["accuracy"])
    assert p["vs_caption_only"] == "not above the caption-only control: text bias, not vision"


def test_ragged_candidate_lists_are_scored(nano):
    model, preprocess, tok = nano
    img = Image.new("RGB", (32, 32), "red")
    items = [Item(img, ["a", "b"], 0, {"k": 2}), Item(img, ["a", "b", "c"], 2, {"k": 3})]
    r = run_probe({"name": "ragged", "kind": "counting", "breakdowns": ["k"]}, model, preprocess, tok,
                  items=items)
    assert r.table["chance"].tolist() == [0.5, pytest.approx(1 / 3)]


def test_count_report_confusion_and_mae(nano):
    model, preprocess, tok = nano
    spec = load_spec("counting", n=12)
    r = run_probe(spec, model, preprocess, tok)
    rep = count_report(r.table, spec.options.counts)
    assert rep["confusion"].to_numpy().sum() == pytest.approx(12) and rep["confusion"].shape == (6, 6)


def test_count_report_on_a_known_confusion_with_a_tie():
    import numpy as np
    import pandas as pd
    # counts [1, 2, 3]: item 0 true 1 chose 1; item 1 true 2 chose 3; item 2 true 3 chose 1;
    # item 3 true 2 tied between 2 and 3 (candidates 1|2): half a right answer, half a "3"
    t = pd.DataFrame({"count": [1, 2, 3, 2], "best": ["0", "2", "0", "1|2"]})
    rep = count_report(t, [1, 2, 3])
    assert rep["mae"] == pytest.approx((0 + 1 + 2 + 0.5) / 4)
    assert rep["confusion"].to_numpy().tolist() == [[1, 0, 0], [0, 0.5, 1.5], [1, 0, 0]]
    assert rep["n_tied"] == 1 and np.isnan(rep["predicted_count"][3]) and rep["predicted_count"][1] == 3


def test_results_are_saved_as_csv_and_json(tmp_path, nano):
    import json
    model, preprocess, tok = nano
    r = run_probe(load_spec("spatial_swap", n=8), model, preprocess, tok, model_name="m")
    r.save(tmp_path)
    rec = json.loads((tmp_path / "spatial_swap.json").read_text())
    assert rec["task"] == "image_caption_selection" and rec["metrics"]["n"] == 8
    assert rec["metrics"]["chance"] == 0.5
    assert (tmp_path / "spatial_swap.csv").read_text().count("\n") == 9


@pytest.mark.parametrize("bad, match", [
    ({"name": "x", "kind": "counting", "colour": "red"}, "unknown key"),
    ({"name": "x"}, "missing required key 'kind'"),
    ({"name": "x", "kind": "counting", "n": "ten"}, "'n' must be int"),
    ({"name": "x", "kind": "juggling"}, "unknown kind"),
    ({"name": "x", "kind": "counting", "options": {"countz": [1]}}, "unknown option"),
    ({"name": "x", "kind": "counting", "options": {"counts": 3}}, "option 'counts' must be list"),
    ({"name": "x", "kind": "counting", "options": {"counts": [1, 1]}}, "'counts' must be distinct"),
    ({"name": "x", "kind": "spatial", "options": {"mode": "twist"}}, "'mode' must be one of"),
])
def test_spec_errors_name_the_problem(bad, match):
    with pytest.raises(SpecError, match=match):
        load_spec(bad)


def test_missing_spec_file_lists_the_known_ones(tmp_path):
    with pytest.raises(SpecError, match="unknown probe spec.*counting"):
        load_spec("no_such_probe")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_binding_captions_use_the_same_words_with_colours_swapped():
    items = KINDS["binding"].items(load_spec("binding", n=6))
    assert [it.answer for it in items] == [0, 1] * 3
    for it in items:
        a, b = it.captions
        assert sorted(a.split()) == sorted(b.split()) and a != b


def test_jsonl_items_run_through_the_engine_and_bad_images_are_counted(tmp_path, nano, capsys):
    import json
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "img" / "a.png")
    Image.new("RGB", (40, 40), "blue").save(tmp_path / "img" / "b.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG not really")
    lines = [{"image": "img/a.png", "captions": ["a red square", "a blue square"], "answer": 0, "colour": "red"},
             {"image": "img/b.png", "captions": ["a red square", "a blue square", "a cat"], "answer": 1,
              "colour": "blue"},
             {"image": "img/broken.png", "captions": ["x", "y"], "answer": 0, "colour": "none"}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    spec = {"name": "mine", "kind": "jsonl", "breakdowns": ["colour"],
            "options": {"path": str(tmp_path / "items.jsonl"), "max_bad_fraction": 0.5}}
    model, preprocess, tok = nano
    r = run_probe(spec, model, preprocess, tok)
    assert r.summary["n"] == 2 and r.table["chance"].tolist() == [0.5, pytest.approx(1 / 3)]
    assert set(r.breakdowns["colour"]["colour"]) == {"red", "blue"}
    err = capsys.readouterr().err
    assert "skipped 1 of 3" in err and (r.summary["read"], r.summary["skipped"]) == (3, 1)
    # one line for the bad image, naming it once and the option that allows it
    (line,) = [x for x in err.splitlines() if "broken.png" in x]
    assert line.count("broken.png") == 1 and "line 3" in line and "--option max_bad_fraction=0.5" in line
    with pytest.raises(SpecError, match=r"1 of 3 images unreadable \(listed above\).*--option max_bad_fraction=0.34"):
        run_probe({**spec, "options": {"path": str(tmp_path / "items.jsonl")}}, model, preprocess, tok)


@pytest.mark.parametrize("line, match", [
    ('{"image": "a.png", "captions": ["x", "y"]}', "missing key"),
    ('{"image": "a.png", "captions": ["x"], "answer": 0}', "at least 2"),
    ('{"image": "a.png", "captions": ["x", "y"], "answer": 2}', "index into captions"),
    ("not json", "not JSON"),
    ('{"image": "a.png", "captions": ["x", "y"], "answer": 0, "item": 7}', r"key\(s\) \['item'\] name columns"),
    ('{"image": "../a.png", "captions": ["x", "y"], "answer": 0}', "outside .*allow_outside_root: true"),
    ('{"image": "/etc/hostname", "captions": ["x", "y"], "answer": 0}', "outside .*allow_outside_root: true"),
])
def test_jsonl_format_errors_name_the_line(tmp_path, line, match):
    (tmp_path / "x.jsonl").write_text(line + "\n")
    spec = load_spec({"name": "x", "kind": "jsonl", "options": {"path": str(tmp_path / "x.jsonl")}})
    with pytest.raises(SpecError, match=match):
        KINDS["jsonl"].items(spec)
    with pytest.raises(SpecError, match="existing JSONL"):
        KINDS["jsonl"].items(load_spec({"name": "x", "kind": "jsonl", "options": {"path": "/nope.jsonl"}}))


def test_every_shipped_spec_validates():
    from clipkit.probes.protocol import SPECS_DIR
    specs = sorted(SPECS_DIR.glob("*.yaml"))
    assert len(specs) >= 5
    for path in specs:
        if path.stem == "example_folder_shift":   # a template whose /data folders do not exist here
            with pytest.raises(SpecError, match="/data/"):
                load_spec(path)
            continue
        assert load_spec(path).name == path.stem


def test_spatial_items_come_in_mirrored_pairs_and_pair_scores_need_both():
    import pandas as pd
    from clipkit.world import synth
    from clipkit.probes.spatial import pair_scores
    items = KINDS["spatial"].items(load_spec("spatial", n=8))
    for first, second in zip(items[::2], items[1::2]):
        assert first.factors["pair"] == second.factors["pair"]
        assert synth.INVERSE[first.factors["relation"]] == second.factors["relation"]
        assert (first.factors["a"], first.factors["b"]) == (second.factors["a"], second.factors["b"])
    t = pd.DataFrame({"pair": [0, 0, 1, 1, 2, 2], "credit": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
                      "chance": [0.25] * 6, "mirrored": True})
    s = pair_scores(t)
    assert s["pair_accuracy"] == pytest.approx(1 / 3) and s["pair_n"] == 3 and s["pair_chance"] == 1 / 16
    # the tie rule: a member tied between 2 captions halves its pair's credit
    s = pair_scores(t.assign(credit=[1.0, 0.5, 0.0, 0.0, 0.0, 0.0]))
    assert s["pair_accuracy"] == pytest.approx(0.5 / 3)
