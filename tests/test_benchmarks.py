"""The published benchmarks on fixtures in their exact formats: each metric against a direct re-implementation of
its authors' scorer (computed from features taken straight from the model, outside the engine), exact item counts,
the `subset` and `id` columns, and every bad-input case. In-memory and on tmp_path, no network."""
import csv
import json
import re
from pathlib import Path

import bench_fixtures as bf
import numpy as np
import pytest
from PIL import Image

from clipkit.probes.benchmarks import (
    aro,
    countbench,
    mmvp,
    sugarcrepe,
    valse,
    whatsup,
    winoground,
)
from clipkit.probes.benchmarks.common import BenchmarkDataError


@pytest.fixture(scope="module")
def fake():
    return bf.fake_model()


def ref_sim(fake, images, texts):
    """s[i, j] = cosine of image i and text j, computed directly (PIL open + convert as the authors do)."""
    model, pre, _ = fake
    pil = [Image.open(im).convert("RGB") if isinstance(im, (str, Path)) else im for im in images]
    img, txt = bf.features(model, pre, pil, texts)
    return img @ txt.T


def run(mod, fake, folder, **opts):
    model, pre, tok = fake
    extra = {"tagger": bf.toy_tagger} if mod is aro else {}
    return mod.run(mod.Options(root=str(folder), **opts), model, pre, tok, model_name="fake", cache=False, **extra)


def subset_acc(res, metric="accuracy"):
    df = res.breakdowns["subset"]
    return dict(zip(df.loc[df.metric == metric, "subset"], df.loc[df.metric == metric, "accuracy"]))


# --- SugarCrepe ---------------------------------------------------------------------------------------------------
def test_sugarcrepe_per_subset_and_micro_match_main_eval(tmp_path, fake):
    facts = bf.write_sugarcrepe(tmp_path)
    res = run(sugarcrepe, fake, tmp_path)
    # main_eval.py evaluate(): per subset, correct_cnt / count with pos_score > neg_score
    expected, hits = {}, []
    for subset in facts["counts"]:
        data = json.loads((tmp_path / f"{subset}.json").read_text())
        correct = []
        for d in data.values():
            s = ref_sim(fake, [tmp_path / "val2017" / d["filename"]], [d["caption"], d["negative_caption"]])
            correct.append(1 if s[0, 0] > s[0, 1] else 0)
        expected[subset] = sum(correct) / len(data)
        hits += correct
    assert 0 < sum(hits) < len(hits)            # the fixture has both hits and misses: the comparison can fail
    assert subset_acc(res) == pytest.approx(expected)
    assert res.summary["accuracy"] == pytest.approx(np.mean(hits))
    assert res.table.groupby("subset").size().to_dict() == facts["counts"]
    assert res.table.loc[res.table.subset == "swap_obj", "id"].tolist() == ["0", "1", "2"]


def test_sugarcrepe_record_and_csv(tmp_path, fake):
    bf.write_sugarcrepe(tmp_path / "d")
    res = run(sugarcrepe, fake, tmp_path / "d", subsets="swap_obj,add_att")
    res.save(tmp_path / "out")
    rec = json.loads((tmp_path / "out" / "sugarcrepe.json").read_text())
    with open(tmp_path / "out" / "sugarcrepe.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["subset"] for r in rows} == {"swap_obj", "add_att"} and rows[0]["id"] == "0"
    assert rec["task"] == "image_caption_selection" and rec["metrics"]["n"] == 6
    assert {b["subset"] for b in rec["breakdowns"]["subset"]} == {"swap_obj", "add_att"}
    assert rec["metrics"]["chance"] == 0.5 and "ci_low" in rec["metrics"]


# --- ARO ----------------------------------------------------------------------------------------------------------
def test_aro_macro_accuracy_with_the_authors_exclusions(tmp_path, fake):
    facts = bf.write_aro(tmp_path)
    res = run(aro, fake, tmp_path)

    def correct_mask(path, crop=True):
        data = json.loads(path.read_text())
        scores = []
        for d in data:   # VG_Relation.__getitem__: crop to the box; caption_options [false, true]
            im = Image.open(tmp_path / "images" / d["image_path"]).convert("RGB")
            im = im.crop((d["bbox_x"], d["bbox_y"], d["bbox_x"] + d["bbox_w"], d["bbox_y"] + d["bbox_h"]))
            scores.append(ref_sim(fake, [im], [d["false_caption"], d["true_caption"]]))
        preds = np.argmax(np.squeeze(np.stack(scores), axis=1), axis=-1)
        return data, preds == 1

    # VG_Relation.evaluate_scores + the notebook's `df = df[~df.Relation.isin(symmetric)]`
    data, mask = correct_mask(tmp_path / "visual_genome_relation.json")
    rels = np.array([d["relation_name"] for d in data])
    records = [(r, mask[rels == r].mean()) for r in np.unique(rels)]
    kept = [acc for r, acc in records if r not in aro.SYMMETRIC]
    assert len(kept) < len(records)                       # the fixture has symmetric relations to drop
    assert res.published["vg_relation_macro"]["accuracy"] == pytest.approx(np.mean(kept))
    # VG_Attribution.evaluate_scores: attribute pairs with fewer than 25 items are skipped
    data, mask = correct_mask(tmp_path / "visual_genome_attribution.json")
    attrs = np.array([f"{d['attributes'][0]}_{d['attributes'][1]}" for d in data])
    kept = [mask[attrs == a].mean() for a in np.unique(attrs) if (attrs == a).sum() >= 25]
    assert res.published["vg_attribution_macro"]["accuracy"] == pytest.approx(np.mean(kept))
    assert res.published["vg_attribution_macro"]["n"] == 25
    assert res.table.groupby("subset").size().to_dict() == facts["counts"]


def test_aro_order_items_and_precision(tmp_path, fake):
    bf.write_aro(tmp_path)
    o = aro.Options(root=str(tmp_path), subsets="COCO_Order")
    items = aro.read(o, tagger=bf.toy_tagger)
    assert len(items) == 4 and all(len(it.captions) == 5 for it in items)
    for it in items:   # each perturbation is a reordering of the same words as the cleaned caption
        words = sorted(re.findall(r"\w+", it.captions[0]))
        assert all(sorted(re.findall(r"\w+", c)) == words for c in it.captions[1:])
    assert [it.captions for it in aro.read(o, tagger=bf.toy_tagger)] == [it.captions for it in items]   # seeded
    res = run(aro, fake, tmp_path, subsets="COCO_Order")
    # COCO_Order.evaluate_scores: argmax over the five options == 0
    hits = [np.argmax(ref_sim(fake, [tmp_path / it.images[0].path], it.captions)[0]) == 0 for it in items]
    assert res.published["coco_order_precision_at_1"]["accuracy"] == pytest.approx(np.mean(hits))
    assert res.published["coco_order_precision_at_1"]["chance"] == 0.2


def test_aro_perturbations_follow_the_authors():
    text = "a small red cup on a wooden table"     # toy tags: nouns at 3, 7; adjectives at 1, 2, 6
    words = text.split()
    outs = [aro.shuffle_nouns_and_adj(text, bf.toy_tagger, aro.Rng(seed)).split() for seed in range(8)]
    for out in outs:   # nouns trade places with nouns, adjectives with adjectives, the rest stays
        assert {out[3], out[7]} == {"cup", "table"} and {out[1], out[2], out[6]} == {"small", "red", "wooden"}
        assert [out[i] for i in (0, 4, 5)] == ["a", "on", "a"]
    assert any(out != words for out in outs)
    out = aro.shuffle_allbut_nouns_and_adj(text, bf.toy_tagger, aro.Rng(1)).split()
    assert [out[i] for i in (1, 2, 3, 6, 7)] == [words[i] for i in (1, 2, 3, 6, 7)]
    tri = aro.shuffle_within_trigrams(text, None, aro.Rng(2)).split()
    assert sorted(tri[:3]) == sorted(words[:3]) and sorted(tri[3:6]) == sorted(words[3:6])
    assert aro.pre_caption("A Dog (running)!  on the beach.") == "a dog running on the beach"
    assert len(aro.pre_caption(" ".join(["w"] * 40)).split()) == 30
    assert aro._trigrams(list("abcdefg")) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


def test_aro_order_without_spacy_names_the_install(tmp_path, monkeypatch):
    bf.write_aro(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "spacy", None)
    with pytest.raises(BenchmarkDataError, match="pip install spacy"):
        aro.read(aro.Options(root=str(tmp_path), subsets="coco_order"))
    # unrequested, the Order tasks are skipped (and said so in the log), the VG tasks still run
    assert {it.subset for it in aro.read(aro.Options(root=str(tmp_path)))} == set(aro.VG_FILES)


# --- What'sUp -----------------------------------------------------------------------------------------------------
def authors_controlled(dataset, preds, subset):
    """Controlled_Images.evaluate_scores, transcribed (pair and set accuracy in percent)."""
    key = lambda d: (d['image_path'].split('/')[-1].split('_')[0], d['image_path'].split('/')[-1].split('_')[-1][:-5])
    vert = ('on', 'under') if subset == 'A' else ('in-front', 'behind')
    eval_dict = {key(d): {'left': 0, 'right': 0, vert[0]: 0, vert[1]: 0} for d in dataset}
    correct_mask = preds == 0
    for d, correct in zip(dataset, correct_mask):
        eval_dict[key(d)][d['image_path'].split('/')[-1].split('_')[1]] = correct
    pair_correct = set_correct = 0
    for cd in eval_dict.values():
        pair_correct += bool(cd['left'] and cd['right']) + bool(cd[vert[0]] and cd[vert[1]])
        set_correct += sum(cd.values()) == 4
    return correct_mask.mean(), pair_correct * 100 / (len(dataset) / 2), set_correct * 100 / (len(dataset) / 4)


def test_whatsup_individual_pair_and_set_match_evaluate_scores(tmp_path, fake):
    facts = bf.write_whatsup(tmp_path)
    res = run(whatsup, fake, tmp_path)
    for subset, file, folder, letter in (("controlled_images", "controlled_images_dataset.json", "controlled_images", "A"),
                                         ("controlled_clevr", "controlled_clevr_dataset.json", "controlled_clevr", "B")):
        dataset = json.loads((tmp_path / file).read_text())
        preds = np.array([np.argmax(ref_sim(fake, [tmp_path / folder / d["image_path"].split("/")[-1]],
                                            d["caption_options"])[0]) for d in dataset])
        ind, pair, sets = authors_controlled(dataset, preds, letter)
        assert res.published[f"{subset}_individual"]["accuracy"] == pytest.approx(ind)
        assert res.published[f"{subset}_pair"]["accuracy"] * 100 == pytest.approx(pair)
        assert res.published[f"{subset}_set"]["accuracy"] * 100 == pytest.approx(sets)
    # COCO_QA: [image_id, correct, wrong], images val2017/<12-digit id>.jpg, hit when argmax == 0
    rows = json.loads((tmp_path / "coco_qa_two_obj.json").read_text())
    hits = [np.argmax(ref_sim(fake, [tmp_path / "val2017" / f"{str(r[0]).zfill(12)}.jpg"], r[1:])[0]) == 0 for r in rows]
    assert subset_acc(res)["coco_qa_two_obj"] == pytest.approx(np.mean(hits))
    assert res.table.groupby("subset").size().to_dict() == facts["counts"]
    assert "mug_left_of_plate.jpeg" in set(res.table["id"])


def test_whatsup_pair_and_set_on_hand_made_scores():
    # one object pair, all four right -> pair 1, set 1; flip 'under' -> one pair of two, no set
    items = [whatsup._controlled(Path("x.json"), "controlled_images", i, {"image_path": f"data/controlled_images/"
                                 f"mug_{p}_plate.jpeg", "caption_options": ["t", "a", "b", "c"]}, Path("/img"))
             for i, p in enumerate(("left_of", "right_of", "on", "under"))]
    good = [np.array([[1.0, 0, 0, 0]])] * 4
    _, pub = whatsup.score(items, good)
    assert (pub["controlled_images_pair"]["accuracy"], pub["controlled_images_set"]["accuracy"]) == (1.0, 1.0)
    _, pub = whatsup.score(items, good[:3] + [np.array([[0.0, 1, 0, 0]])])
    assert (pub["controlled_images_pair"]["accuracy"], pub["controlled_images_set"]["accuracy"]) == (0.5, 0.0)
    assert pub["controlled_images_pair"]["chance"] == pytest.approx(1 / 16)


# --- Winoground ---------------------------------------------------------------------------------------------------
def test_winoground_text_image_group_by_tag(tmp_path, fake):
    facts = bf.write_winoground(tmp_path)
    res = run(winoground, fake, tmp_path)
    text, image, tags = [], [], []
    for line in (tmp_path / "examples.jsonl").read_text().splitlines():
        ex = json.loads(line)
        s = ref_sim(fake, [tmp_path / "images" / f"{ex['image_0']}.png", tmp_path / "images" / f"{ex['image_1']}.png"],
                    [ex["caption_0"], ex["caption_1"]])   # s[i, c]
        c0_i0, c1_i0, c0_i1, c1_i1 = s[0, 0], s[0, 1], s[1, 0], s[1, 1]
        text.append(c0_i0 > c1_i0 and c1_i1 > c0_i1)
        image.append(c0_i0 > c0_i1 and c1_i1 > c1_i0)
        tags.append(ex["collapsed_tag"])
    group = np.array(text) & np.array(image)
    s = res.summary
    assert (s["text_score"], s["image_score"], s["accuracy"]) == pytest.approx((np.mean(text), np.mean(image),
                                                                              group.mean()))
    assert (s["text_score_chance"], s["image_score_chance"], s["chance"]) == pytest.approx((0.25, 0.25, 1 / 6))
    by = res.breakdowns["collapsed_tag"]
    rel = by[(by.collapsed_tag == "Relation") & (by.metric == "text_score")]["accuracy"].item()
    assert rel == pytest.approx(np.mean([t for t, g in zip(text, tags) if g == "Relation"]))
    assert len(res.table) == facts["counts"]["examples"] and res.table["id"].tolist() == [str(i) for i in range(6)]


def test_winoground_parquet_needs_pyarrow(tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed")
    except ImportError:
        pass
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(BenchmarkDataError, match="pip install pyarrow"):
        winoground.read(winoground.Options(root=str(tmp_path)))


# --- VALSE --------------------------------------------------------------------------------------------------------
def test_valse_filters_mturk_and_scores_pairwise(tmp_path, fake):
    facts = bf.write_valse(tmp_path)
    res = run(valse, fake, tmp_path, image_root=str(tmp_path / "images"))
    per_piece = {}
    for piece in bf.VALSE_PIECES:   # unimodal_valse_eval.py's loop, the model score in place of perplexity
        count = detected = 0
        for foil in json.loads((tmp_path / f"{piece}.json").read_text()).values():
            if foil["mturk"]["caption"] >= 2:   # MTURK filtering!
                caption = foil["caption"][0] if isinstance(foil["caption"], list) else foil["caption"]
                s = ref_sim(fake, [tmp_path / "images" / foil["image_file"]], [caption, foil["foil"]])
                detected += s[0, 0] > s[0, 1]
                count += 1
        per_piece[piece] = detected / count
    assert subset_acc(res) == pytest.approx(per_piece)
    assert res.published["average_pairwise"]["accuracy"] == pytest.approx(np.mean(list(per_piece.values())))
    counting = [per_piece[p] for p in ("counting-hard", "counting-small-quant", "counting-adversarial")]
    assert res.published["phenomenon=counting"]["accuracy"] == pytest.approx(np.mean(counting))
    assert res.table.groupby("subset").size().to_dict() == facts["counts"]
    assert set(res.table["id"]) == {k for v in facts["valid"].values() for k in v}
    assert 0 < res.table["correct"].sum() < len(res.table)


def test_valse_image_root_mapping_by_dataset(tmp_path, fake):
    bf.write_valse(tmp_path)
    mapping = ",".join(f"{d}={tmp_path / 'images'}" for d in set(bf.VALSE_DATASETS.values()) | {"visual7w"})
    items = valse.read(valse.Options(root=str(tmp_path), image_root=mapping))
    assert len(items) == 22 and all(Path(it.images[0].path).parent == tmp_path / "images" for it in items)
    with pytest.raises(BenchmarkDataError, match="plurals_0.*dataset .coco2017., which the image_root mapping lacks.*add coco2017=FOLDER"):
        valse.read(valse.Options(root=str(tmp_path), image_root=f"visual7w={tmp_path}"))


# --- CountBench ---------------------------------------------------------------------------------------------------
def test_countbench_number_swapping_accuracy_and_mae(tmp_path, fake):
    facts = bf.write_countbench(tmp_path)
    res = run(countbench, fake, tmp_path)
    words = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    hits, errors, per_count = [], [], {}
    for i, row in enumerate(json.loads((tmp_path / "CountBench.json").read_text())):
        path = tmp_path / "images" / f"{i}.jpg"
        text, n = row["text"], row["number"]
        true = words[n - 2]
        if re.search(rf"\b{true}\b", text, re.IGNORECASE):
            found = re.search(rf"\b{true}\b", text, re.IGNORECASE).group(0)
        elif str(n) in text:
            found = str(n)
        else:
            continue                                   # no number word: cannot be swapped
        if not path.exists():
            continue
        style = (lambda w: w.upper()) if found.isupper() and len(found) > 1 else (
            (lambda w: w.capitalize()) if found[0].isupper() else (lambda w: w))
        captions = [text.replace(found, style(w), 1) for w in words]
        pred = int(np.argmax(ref_sim(fake, [path], captions)[0]))
        hits.append(pred == n - 2)
        errors.append(abs(pred + 2 - n))
        per_count.setdefault(n, []).append(pred == n - 2)
    assert res.summary["n"] == len(hits) == facts["rows"] - len(facts["missing"]) - len(facts["unswappable"])
    assert res.summary["accuracy"] == pytest.approx(np.mean(hits))
    assert res.summary["mae"] == pytest.approx(np.mean(errors))
    assert res.summary["chance"] == pytest.approx(1 / 9)
    by = res.breakdowns["number"]
    assert dict(zip(by["number"], by["accuracy"])) == pytest.approx({k: np.mean(v) for k, v in per_count.items()})
    assert (res.summary["missing_images"], res.summary["unswappable"]) == (2, 1)
    assert res.summary["skipped_images"] == 2


def test_countbench_swap_keeps_case_and_handles_numerals():
    assert countbench.swap_number("Two dogs", 2)[1] == "Three dogs"
    assert countbench.swap_number("FIVE fingers", 5)[0] == "TWO fingers"
    assert countbench.swap_number("a plate of 3 cookies", 3)[8] == "a plate of ten cookies"
    assert countbench.swap_number("a dozen roses", 10) is None


# --- MMVP ---------------------------------------------------------------------------------------------------------
def test_mmvp_pairs_match_evaluate_vlm(tmp_path, fake):
    facts = bf.write_mmvp(tmp_path)
    res = run(mmvp, fake, tmp_path)
    image_dir = tmp_path / "MLLM_VLM Images"
    categories = list(mmvp.CATEGORIES)
    pair_accuracies, num_pairs, ok1 = {c: 0 for c in categories}, 0, []
    with open(tmp_path / "Questions.csv") as f:   # evaluate_vlm.py benchmark_model, transcribed
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            qid1, qtype1, statement1 = row
            row = next(reader, None)
            if not row:
                break
            qid2, _qtype2, statement2 = row
            qid1, qid2 = int(qid1), int(qid2)
            s = ref_sim(fake, [image_dir / qtype1 / f"{qid1}.jpg", image_dir / qtype1 / f"{qid2}.jpg"],
                        ["a photo of " + statement1, "a photo of " + statement2]) * 100   # logit scale
            probs1 = np.exp(s[:, 0]) / np.exp(s[:, 0]).sum()      # logits_per_text1.softmax over the two images
            probs2 = np.exp(s[:, 1]) / np.exp(s[:, 1]).sum()
            pred1 = "img1" if probs1[0] > 0.5 else "img2"
            pred2 = "img1" if probs2[0] > 0.5 else "img2"
            gt1 = "img1" if qid1 % 2 == 1 else "img2"
            gt2 = "img1" if qid2 % 2 == 1 else "img2"
            ok1.append(pred1 == gt1)
            if pred1 == gt1 and pred2 == gt2:
                pair_accuracies[categories[num_pairs // 15]] += 1
            num_pairs += 1
    assert res.summary["n"] == num_pairs == facts["pairs"]
    assert res.summary["accuracy"] == pytest.approx(sum(pair_accuracies.values()) / num_pairs)
    assert res.table["statement_1_ok"].tolist() == ok1 and 0 < sum(ok1) < len(ok1)
    assert set(res.table["pattern"]) == {categories[0]} and res.summary["chance"] == 0.25
    assert res.table["id"].iloc[0] == "1,2"


# --- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mod", [sugarcrepe, aro, whatsup, winoground, valse, countbench, mmvp])
def test_missing_root_names_benchmark_files_and_source(mod, tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPKIT_DATA", raising=False)
    with pytest.raises(BenchmarkDataError) as e:
        mod.read(mod.Options(root=None))
    msg = str(e.value)
    assert msg.startswith(mod.BENCHMARK) and "published at" in msg and "http" in msg
    with pytest.raises(BenchmarkDataError, match="not a folder"):
        mod.read(mod.Options(root=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match=mod.BENCHMARK):
        mod.read(mod.Options(root=str(tmp_path / "empty")))


def test_missing_root_lists_the_files(monkeypatch):
    monkeypatch.delenv("CLIPKIT_DATA", raising=False)
    with pytest.raises(BenchmarkDataError, match="add_att.json, add_obj.json.*swap_obj.json.*RAIVNLab/sugar-crepe"):
        sugarcrepe.read(sugarcrepe.Options())


@pytest.mark.parametrize("mod,file,key", [(sugarcrepe, "swap_att.json", "negative_caption"),
                                          (aro, "visual_genome_relation.json", "bbox_w"),
                                          (whatsup, "controlled_clevr_dataset.json", "caption_options"),
                                          (valse, "relations.json", "mturk")])
def test_item_lacking_a_key_names_file_item_and_keys(mod, file, key, tmp_path):
    bf.WRITERS[mod.BENCHMARK](tmp_path)
    data = json.loads((tmp_path / file).read_text())
    first = next(iter(data)) if isinstance(data, dict) else 0
    del data[first][key]
    (tmp_path / file).write_text(json.dumps(data))
    with pytest.raises(BenchmarkDataError) as e:
        mod.read(mod.Options(root=str(tmp_path)))
    msg = str(e.value)
    assert file in msg and repr(first) in msg and key in msg and "each item needs" in msg


def test_winoground_line_lacking_a_key(tmp_path):
    bf.write_winoground(tmp_path)
    lines = (tmp_path / "examples.jsonl").read_text().splitlines()
    ex = json.loads(lines[2])
    del ex["collapsed_tag"]
    (tmp_path / "examples.jsonl").write_text("\n".join(lines[:2] + [json.dumps(ex)] + lines[3:]))
    with pytest.raises(BenchmarkDataError, match=r"examples.jsonl: item 2 lacks key\(s\) \['collapsed_tag'\]"):
        winoground.read(winoground.Options(root=str(tmp_path)))


def test_bad_images_skipped_counted_and_limited(tmp_path, fake):
    facts = bf.write_sugarcrepe(tmp_path, bad=True)   # one corrupt, one missing, of 8 images
    res = run(sugarcrepe, fake, tmp_path, max_bad_fraction=0.5)
    uses = sum(d["filename"] in facts["bad"] for s in facts["counts"]
               for d in json.loads((tmp_path / f"{s}.json").read_text()).values())
    assert 0 < uses < 21
    assert res.summary["skipped_images"] == 2 and res.skipped["of_images"] == 8
    assert res.summary["skipped_items"] == uses and res.summary["n"] == 21 - uses
    assert "not an image" in res.skipped["first"] or "corrupt" in res.skipped["first"]
    with pytest.raises(BenchmarkDataError, match=r"2 of 8 images could not be read .*max_bad_fraction=0.05.*"
                                                 r"000000000001.jpg"):
        run(sugarcrepe, fake, tmp_path)
    with pytest.raises(BenchmarkDataError, match="on_bad='raise'.*000000000001.jpg"):
        run(sugarcrepe, fake, tmp_path, on_bad="raise", max_bad_fraction=1.0)


def test_bad_options_are_refused(tmp_path):
    bf.write_sugarcrepe(tmp_path)
    with pytest.raises(BenchmarkDataError, match="unknown subset.*swap_color.*published subsets"):
        sugarcrepe.read(sugarcrepe.Options(root=str(tmp_path), subsets="swap_color"))
    with pytest.raises(BenchmarkDataError, match="on_bad must be"):
        sugarcrepe.Options(on_bad="ignore")
    with pytest.raises(BenchmarkDataError, match="max_bad_fraction"):
        sugarcrepe.Options(max_bad_fraction=2)


# --- through the whole engine with a real (random) CLIP -----------------------------------------------------------
def test_nano_end_to_end_and_cache(tmp_path, nano):
    bf.write_sugarcrepe(tmp_path / "d")
    model, pre, tok = nano
    o = sugarcrepe.Options(root=str(tmp_path / "d"))
    first = sugarcrepe.run(o, model, pre, tok, model_name="clipkit-nano")
    second = sugarcrepe.run(o, model, pre, tok, model_name="clipkit-nano")
    assert first.summary["n"] == 21 and not first.summary["features_from_cache"]
    assert second.summary["features_from_cache"]
    assert second.table["margin"].tolist() == pytest.approx(first.table["margin"].tolist(), abs=1e-6)
    for key in ("accuracy", "ci_low", "ci_high", "chance", "n", "verdict", "blind_accuracy"):
        assert key in first.summary
    assert first.save(tmp_path / "out").exists()


# --- through the probe protocol and the CLI -----------------------------------------------------------------------
def test_every_benchmark_is_a_registered_kind_with_a_shipped_spec():
    from clipkit.probes import KINDS, load_spec
    for name in ("sugarcrepe", "aro", "whatsup", "winoground", "valse", "countbench", "mmvp"):
        spec = load_spec(name)
        assert spec.kind == name and name in KINDS and spec.n is None
        assert spec.options.root is None and spec.options.image_root is None


def test_spec_root_from_clipkit_data_and_n_caps_each_subset(tmp_path, fake, monkeypatch):
    from clipkit.probes import load_spec, run_any
    bf.write_all(tmp_path)
    monkeypatch.setenv("CLIPKIT_DATA", str(tmp_path))
    model, pre, tok = fake
    res = run_any(load_spec("sugarcrepe", n=2), model, pre, tok, model_name="fake")
    assert res.table.groupby("subset").size().to_dict() == {s: 2 for s in bf.write_sugarcrepe(tmp_path / "x")["counts"]}
    res = run_any(load_spec("valse", options={"image_root": str(tmp_path / "valse" / "images")}), model, pre, tok)
    assert res.summary["n"] == 22 and res.name == "valse"
    monkeypatch.setenv("CLIPKIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(BenchmarkDataError, match="mmvp: root .*nowhere/mmvp' is not a folder"):
        run_any(load_spec("mmvp"), model, pre, tok)


def test_spec_option_types_are_checked():
    from clipkit.probes import SpecError, load_spec
    with pytest.raises(SpecError, match="option 'max_bad_fraction' must be float"):
        load_spec("sugarcrepe", options={"max_bad_fraction": "lots"})
    with pytest.raises(SpecError, match=r"unknown option\(s\) \['rooot'\] for kind 'aro' \(did you mean 'root'\?\)"):
        load_spec("aro", options={"rooot": "/x"})
    with pytest.raises(SpecError, match="on_bad must be 'skip' or 'raise'"):
        load_spec("winoground", options={"on_bad": "ignore"})


def test_cli_probe_with_root_and_image_root_options(tmp_path, capsys):
    from clipkit.cli import main
    bf.write_sugarcrepe(tmp_path / "ann")
    (tmp_path / "ann" / "val2017").rename(tmp_path / "coco")
    rc = main(["probe", "--probe", "sugarcrepe", "--model", "clipkit-nano", "--option", f"root={tmp_path / 'ann'}",
               "--option", f"image_root={tmp_path / 'coco'}", "--out", str(tmp_path / "out")])
    assert rc == 0 and "sugarcrepe" in capsys.readouterr().out
    with open(tmp_path / "out" / "sugarcrepe.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 21 and {"subset", "id"} <= set(rows[0])


# --- the hub's parquet layouts (the parquet reader stubbed: the rows are what pyarrow would hand back) ---------------
def test_winoground_parquet_rows_score_like_the_jsonl(tmp_path, fake, monkeypatch):
    import pandas as pd
    bf.write_winoground(tmp_path / "jsonl")
    rows = []
    for line in (tmp_path / "jsonl" / "examples.jsonl").read_text().splitlines():
        ex = json.loads(line)
        for k in (0, 1):
            name = ex[f"image_{k}"]
            ex[f"image_{k}"] = {"bytes": (tmp_path / "jsonl" / "images" / f"{name}.png").read_bytes(), "path": None}
        rows.append(ex)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    (tmp_path / "hub" / "data" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(winoground, "read_parquet", lambda path: pd.DataFrame(rows))
    from_jsonl, from_hub = run(winoground, fake, tmp_path / "jsonl"), run(winoground, fake, tmp_path / "hub")
    for key in ("accuracy", "text_score", "image_score", "n"):
        assert from_hub.summary[key] == from_jsonl.summary[key]
    assert from_hub.table["id"].tolist() == from_jsonl.table["id"].tolist()


def test_countbench_parquet_rows_count_empty_images_as_missing(tmp_path, fake, monkeypatch):
    import pandas as pd
    bf.write_countbench(tmp_path / "urls")
    rows = json.loads((tmp_path / "urls" / "CountBench.json").read_text())
    for i, r in enumerate(rows):
        path = tmp_path / "urls" / "images" / f"{i}.jpg"
        r["image"] = {"bytes": path.read_bytes(), "path": None} if path.exists() else None
    (tmp_path / "hub" / "data").mkdir(parents=True)
    (tmp_path / "hub" / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(countbench, "read_parquet", lambda path: pd.DataFrame(rows))
    from_urls, from_hub = run(countbench, fake, tmp_path / "urls"), run(countbench, fake, tmp_path / "hub")
    assert from_hub.summary["missing_images"] == from_urls.summary["missing_images"] == 2
    assert from_hub.summary["accuracy"] == from_urls.summary["accuracy"] and from_hub.summary["n"] == 15
    assert set(from_hub.table["subset"]) == {"train-00000-of-00001"}


# --- scale: the image features of a benchmark are cached and sharded across ranks ---------------------------------
class CountingCLIP(bf.FakeCLIP):
    """FakeCLIP that counts the images its image tower is asked to encode."""
    encoded = 0

    def encode_image(self, x):
        CountingCLIP.encoded += x.shape[0]
        return super().encode_image(x)


def _counting_run(folder, cache):
    CountingCLIP.encoded = 0
    model = CountingCLIP().eval()
    res = sugarcrepe.run(sugarcrepe.Options(root=str(folder), batch_size=3), model, bf.Preprocess(), bf.tokenize,
                         model_name="counting", cache=str(cache))
    return res, CountingCLIP.encoded


def test_second_run_is_served_from_the_cache_without_a_forward_pass(tmp_path):
    bf.write_sugarcrepe(tmp_path / "d")
    first, n_first = _counting_run(tmp_path / "d", tmp_path / "cache")
    second, n_second = _counting_run(tmp_path / "d", tmp_path / "cache")
    assert n_first == 8 and n_second == 0     # 8 distinct COCO images encoded once, then never again
    assert second.summary["features_from_cache"] and not first.summary["features_from_cache"]
    assert second.table["margin"].tolist() == pytest.approx(first.table["margin"].tolist(), abs=1e-6)


def _shard_worker(rank: int, port: int, folder: str, out: str) -> None:
    import os

    import torch
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    res, encoded = _counting_run(Path(folder), Path(out) / "cache")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"encoded": encoded, "margin": res.table["margin"].tolist(),
                                                            "accuracy": res.summary["accuracy"]}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_shard_the_benchmark_images_and_agree_with_one_process(tmp_path):
    """torchrun's layout on CPU (gloo, 2 forked processes): each rank encodes half of the distinct images, both
    return every item's scores, equal to one process's; rank 0's cache entry then serves a single process."""
    import socket

    import torch.multiprocessing as mp
    bf.write_sugarcrepe(tmp_path / "d")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_shard_worker, args=(port, str(tmp_path / "d"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["encoded"] for r in ranks] == [4, 4]          # 8 distinct images, strided across the two ranks
    single, encoded = _counting_run(tmp_path / "d", tmp_path / "single-cache")
    assert encoded == 8
    for r in ranks:
        assert r["margin"] == pytest.approx(single.table["margin"].tolist(), abs=1e-6)
        assert r["accuracy"] == single.summary["accuracy"]
    cached, encoded = _counting_run(tmp_path / "d", tmp_path / "cache")   # the entry the two ranks wrote
    assert encoded == 0 and cached.summary["features_from_cache"]
