"""The explorer widgets without a browser: the pure scoring functions on hand-made inputs, each widget
driven by setting values as a user would, an oracle model that counts, and explore.ipynb through papermill."""
import io
import re
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import ndimage

from clipkit.explore import compute, widgets
from clipkit.world import synth
from clipkit.probes import load_spec, run_probe
from clipkit.explore.widgets import (ANY, CaptionScorer, FailureBrowser, LoadedModel, ModelPicker,
                                             TextSearch, caption_probabilities, compose_scene, decode_image,
                                             filter_items, parse_captions, scene_captions, top_k)

REPO = Path(__file__).resolve().parents[1]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def nano_loaded(nano):
    """A fresh LoadedModel (empty caption cache) around the session's clipkit-nano."""
    return LoadedModel("clipkit-nano", *nano)


# --- an oracle that counts: the true count caption must win ------------------------------------
class CountingOracle(torch.nn.Module):
    """Image -> one-hot of its number of objects (connected components); caption -> one-hot of its number word.

    Exact on the composer's circles, so the true caption of a composed count scene has cosine 1
    and every other count 0: what a perfect counter would give.
    """

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))   # the feature code reads the device from a parameter

    def encode_image(self, x):                              # x: (B, 3, H, W) raw RGB values
        background = torch.tensor(synth.BACKGROUND, dtype=x.dtype)[:, None, None]
        out = torch.zeros(len(x), len(synth.NUMBER_WORDS))
        for i, im in enumerate(x):
            mask = ((im - background).abs().sum(0) > 150).numpy()   # object cores, not anti-aliased rims
            out[i, ndimage.label(mask, structure=np.ones((3, 3)))[1]] = 1
        return out

    def encode_text(self, tokens):                          # tokens: (B,) number word index, -1 for none
        out = torch.zeros(len(tokens), len(synth.NUMBER_WORDS))
        for i, t in enumerate(tokens.tolist()):
            if t >= 0:
                out[i, t] = 1
        return out


def oracle() -> LoadedModel:
    def preprocess(im):
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)

    def tokenizer(texts):
        return torch.tensor([next((synth.NUMBER_WORDS.index(w) for w in t.split() if w in synth.NUMBER_WORDS), -1)
                             for t in texts])
    return LoadedModel("oracle", CountingOracle(), preprocess, tokenizer)


# --- pure functions -----------------------------------------------------------------------------
def test_caption_probabilities_are_clip_softmax_of_100_cos():
    img = torch.tensor([1.0, 0.0])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])             # cos 1, 0.6, 0
    p, cos = caption_probabilities(img, txt)
    np.testing.assert_allclose(cos, [1.0, 0.6, 0.0])
    expected = np.exp(100 * cos - 100) / np.exp(100 * cos - 100).sum()   # computed by hand, stably
    np.testing.assert_allclose(p, expected)
    assert p.sum() == pytest.approx(1.0) and p.argmax() == 0
    p1, _ = caption_probabilities(img, txt, scale=1.0)                   # a lower scale: flatter
    assert p1.sum() == pytest.approx(1.0) and p1[0] < p[0] and p1[2] > p[2]
    p_same, _ = caption_probabilities(img, torch.tensor([[0.0, 1.0]] * 4))
    np.testing.assert_allclose(p_same, 0.25)                             # equal scores: uniform


def test_top_k_ranks_by_cosine():
    feats = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    idx, cos = top_k(torch.tensor([1.0, 0.0]), feats, 3)
    assert idx.tolist() == [1, 2, 0] and cos.tolist() == pytest.approx([1.0, 0.8, 0.0])
    assert top_k(torch.tensor([1.0, 0.0]), feats, 99)[0].tolist() == [1, 2, 0, 3]   # k clipped to N


def test_parse_captions():
    assert parse_captions("  two red circles \n\n three red circles\ntwo red circles\n  \n") == \
        ["two red circles", "three red circles"]
    assert parse_captions("") == [] and parse_captions("\n \n") == []


def test_filter_items():
    t = pd.DataFrame({"item": [0, 1, 2, 3], "count": [1, 2, 2, 3], "correct": [True, False, True, False]})
    assert filter_items(t)["item"].tolist() == [1, 3]
    assert filter_items(t, "count", "2")["item"].tolist() == [1]                 # levels compare as text
    assert filter_items(t, "count", "2", only_failures=False)["item"].tolist() == [1, 2]
    assert filter_items(t, "count", ANY, only_failures=False)["item"].tolist() == [0, 1, 2, 3]


def test_compose_scene_and_its_captions():
    s = compose_scene("count", "star", "blue", n=4, seed=7)
    assert len(s.objects) == 4 and synth.caption(s) == "four blue stars"
    assert scene_captions(s, 5) == ["four blue stars", "three blue stars", "five blue stars", "two blue stars",
                                    "six blue stars"]                         # nearest counts first
    for seed in range(40):   # A is what the controls say; B always stays nameable apart from A
        r = compose_scene("relation", "circle", "red", relation="above", seed=seed)
        a, b = r.objects
        assert (a.shape, a.colour) == ("circle", "red") and (b.shape, b.colour) != ("circle", "red")
        assert a.y < b.y and synth.caption(r).startswith("a red circle above a ")
    same_area = [compose_scene("count", n=n, size_mode="constant_area") for n in (2, 6)]
    assert [len(c.objects) for c in same_area] == [2, 6]
    assert synth.object_area(same_area[0]) == pytest.approx(synth.object_area(same_area[1]), rel=0.1)
    with pytest.raises(ValueError, match="count' or 'relation"):
        compose_scene("binding")


def test_decode_image_reads_images_and_explains_the_rest():
    ok = decode_image(png(Image.new("RGBA", (40, 30), "red")), "red.png")
    assert ok.size == (40, 30) and ok.mode == "RGB"
    data = png(Image.new("RGB", (64, 64), "blue"))
    for bad, message in [(b"", "empty"), (b"%PDF-1.4 not an image", "not an image file"),
                         (data[:len(data) // 2], "damaged")]:
        with pytest.raises(ValueError, match=message) as e:
            decode_image(bad, "f.bin")
        assert str(e.value).startswith("f.bin: ")


def test_caption_feature_cache_is_bounded_and_exact(nano_loaded, monkeypatch):
    monkeypatch.setattr(compute, "TEXT_CACHE", 2)   # LoadedModel lives in clipkit.explore.compute
    texts = ["one red circle", "two red circles", "three red circles"]
    feats = nano_loaded.text_features(texts)
    assert feats.shape == (3, 32) and list(nano_loaded._text) == texts[1:]   # least recently used dropped
    torch.testing.assert_close(feats, compute.encode_texts(nano_loaded.model, nano_loaded.tokenizer, texts))
    torch.testing.assert_close(nano_loaded.text_features(texts[::-1]), feats.flip(0))


# --- widgets, driven programmatically -------------------------------------------------------------
def test_oracle_true_count_caption_ranks_first_and_follows_the_slider():
    s = CaptionScorer(oracle(), gallery=widgets.synthetic_gallery(3))
    assert s.true_caption == "three red circles"
    top = s.scores.sort_values("probability").iloc[-1]
    assert top["caption"] == "three red circles" and top["true"] and top["probability"] > 0.99
    s.count.value = 5
    top = s.scores.sort_values("probability").iloc[-1]
    assert top["caption"] == "five red circles" and top["true"] and top["probability"] > 0.99


def test_caption_scorer_updates_on_typing_and_controls(nano_loaded, monkeypatch):
    calls = {"image": 0, "text": []}
    model = nano_loaded.model
    enc_img, enc_txt = model.encode_image, model.encode_text
    monkeypatch.setattr(model, "encode_image", lambda x: calls.__setitem__("image", calls["image"] + 1) or enc_img(x))
    monkeypatch.setattr(model, "encode_text", lambda t: calls["text"].append(len(t)) or enc_txt(t))

    s = CaptionScorer(nano_loaded, gallery=widgets.synthetic_gallery(4))
    html0, n_img = s.probs.value, calls["image"]
    assert "P(caption | image)" in html0 and "three red circles &#10003; true" in html0
    assert re.search(r"\d\.\d{3}", html0) and s.scores["probability"].sum() == pytest.approx(1.0)
    assert s.captions.continuous_update   # live while typing

    calls["text"].clear()
    s.captions.value += "\na <b>blue</b> star"                                  # typing a line
    assert s.probs.value != html0 and "a &lt;b&gt;blue&lt;/b&gt; star" in s.probs.value   # escaped
    assert calls["image"] == n_img and calls["text"] == [1]   # image cached; only the new caption encoded
    assert len(s.scores) == 6

    html1 = s.probs.value
    s.count.value = 4                                                           # a control
    assert s.probs.value != html1 and s.true_caption == "four red circles"
    assert s.scores.set_index("caption").loc["four red circles", "true"]
    s.kind.value = "relation"
    assert s.count.disabled and s.sizes.disabled and not s.relation.disabled and s.true_caption.startswith("a red circle to the left of")
    s.suggest_captions()
    assert parse_captions(s.captions.value)[0] == s.true_caption and len(s.scores) == 5

    s.pick(2)                                                                   # the gallery
    assert s.tabs.selected_index == 1 and s.true_caption == s.gallery.captions[2]
    s.tabs.selected_index = 0                                                   # back to the composer's scene
    assert s.true_caption.startswith("a red circle to the left of")


def test_upload_non_image_gives_a_message_and_keeps_the_image(nano_loaded):
    s = CaptionScorer(nano_loaded, gallery=widgets.synthetic_gallery(2))
    before = s.probs.value
    s.upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 5, "content": memoryview(b"hello"),
                       "last_modified": datetime.now(timezone.utc)},)         # as ipywidgets delivers it
    assert "notes.txt: not an image file" in s.upload_status.value and "color:#b00020" in s.upload_status.value
    assert s.probs.value == before and s.true_caption == "three red circles"
    assert s.upload_bytes(png(Image.new("RGB", (50, 40), "green")), "green.png")
    assert "green.png: 50&times;40" in s.upload_status.value and s.tabs.selected_index == 2
    assert s.true_caption is None and s.suggest.disabled and s.probs.value != before


def test_model_picker_shows_errors_in_the_widget_and_keeps_the_model(nano_loaded):
    picker = ModelPicker(nano_loaded)
    s = CaptionScorer(picker, gallery=widgets.synthetic_gallery(2))
    assert picker.widget not in s.widget.children   # a shared picker is shown once, by whoever made it
    seen = []
    picker.on_change(seen.append)
    assert not picker.load("no-such-arch:weights")
    assert "ModelSpecError" in picker.status.value and picker.loaded is nano_loaded and not seen
    assert not picker.load("clipkit-tiny:synthetic")   # not cached in the test's CLIPKIT_HOME
    assert "ModelNotAvailable" in picker.status.value and "clipkit train" in picker.status.value
    assert picker.load("clipkit-nano")
    assert seen == [picker.loaded] and picker.loaded is not nano_loaded and "loaded" in picker.status.value
    assert "P(caption | image)" in s.probs.value and s._feature is not None   # rescored under the new model
    empty = ModelPicker("no-such-arch")
    assert empty.loaded is None and "ModelSpecError" in empty.status.value
    assert "load a model" in CaptionScorer(empty, gallery=widgets.synthetic_gallery(1)).probs.value
    with pytest.raises(RuntimeError, match="no model loaded: ModelSpecError"):
        empty.require()


def test_text_search_ranks_the_gallery():
    gallery = widgets.synthetic_gallery(9)   # count, relation, binding scenes in turn
    t = TextSearch(oracle(), gallery, query="two of anything", k=3)
    assert len(t.hits) == 3 and t.results.value.count("<img") == 3
    assert all(len(gallery.scenes[i].objects) == 2 for i, _ in t.hits)   # relation/binding scenes: 2 objects
    assert [c for _, c in t.hits] == pytest.approx([1.0, 1.0, 1.0])
    t.k.value = 5
    assert len(t.hits) == 5 and t.results.value.count("<img") == 5
    t.query.value = ""
    assert t.hits == [] and "type a description" in t.results.value


def test_failure_browser_filters_and_steps(nano_loaded):
    result = run_probe(load_spec("counting", n=18), *nano_loaded.parts, model_name="clipkit-nano")
    fb = FailureBrowser(result, model=nano_loaded)
    wrong = result.table[~result.table["correct"]]
    assert list(fb.factor.options) == [ANY, "count", "size_mode", "shape", "colour"]
    assert len(fb.rows) == len(wrong) and f"{len(wrong)} wrong of 18" in fb.summary.value
    first = wrong.iloc[0]
    for caption in (first["true_caption"], first["chosen_caption"]):
        assert f"<b>{caption}</b>" in fb.details.value
    assert "P(caption | image)" in fb.scores.value and fb.view.value[:4] == b"\x89PNG"
    fb.factor.value = "count"
    assert list(fb.level.options) == [ANY, "1", "2", "3", "4", "5", "6"]
    fb.level.value = "2"
    fb.only_failures.value = False
    assert fb.rows["count"].tolist() == [2, 2, 2] and "of 3 in this filter" in fb.summary.value
    fb._step(+1)
    assert fb.index.value == 1 and f"#{fb.rows.iloc[1]['item']} " in fb.details.value
    fb._step(+5)
    assert fb.index.value == 2   # clamped at the last item


# --- maps over the image -------------------------------------------------------------------------
def _pixels(png_data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png_data)).convert("RGB")).astype(int)


def test_overlay_rgb_blends_a_nearest_upsampled_map():
    from clipkit import viz
    img = np.full((8, 8, 3), 100, dtype=np.uint8)
    m = np.zeros((2, 2))
    m[0, 1] = 1.0                                            # the top-right patch peaks
    np.testing.assert_array_equal(viz.overlay_rgb(img, m, 0.0), img)
    full = viz.overlay_rgb(img, m, 1.0)
    top = np.round(np.array(viz.plt.get_cmap("jet")(1.0)[:3]) * 255)
    low = np.round(np.array(viz.plt.get_cmap("jet")(0.0)[:3]) * 255)
    assert (full[:4, 4:] == top).all() and (full[:4, :4] == low).all() and (full[4:] == low).all()
    half = viz.overlay_rgb(img, m, 0.5)
    np.testing.assert_allclose(half[0, 7], (100 + top) / 2, atol=0.51)
    with pytest.raises(ValueError, match="opacity must be in"):
        viz.overlay_rgb(img, m, 1.5)


def test_caption_scorer_map_follows_the_slider_and_the_caption(nano_loaded):
    from clipkit import viz
    from clipkit.evaluate.maps import caption_maps
    s = CaptionScorer(nano_loaded, gallery=widgets.synthetic_gallery(2))
    model, preprocess, tokenizer = nano_loaded.parts
    assert s.overlay.caption.value == s.true_caption == "three red circles"
    direct = caption_maps(model, preprocess, tokenizer, [s.image], s.true_caption, method="patch")[0]
    np.testing.assert_allclose(s.overlay.map, direct, atol=1e-6)          # the patch map of the true caption
    side = s.image_side
    enlarged = s.image.convert("RGB").resize((side, side), Image.NEAREST)
    s.overlay.opacity.value = 0.0
    np.testing.assert_array_equal(_pixels(s.view.value), np.asarray(enlarged))   # the image alone
    s.overlay.opacity.value = 1.0
    opaque = _pixels(s.view.value)
    np.testing.assert_array_equal(opaque, viz.overlay_rgb(enlarged, direct, 1.0))
    s.overlay.opacity.value = 0.5
    half = _pixels(s.view.value)
    assert (np.abs(half - (np.asarray(enlarged) + opaque) / 2) <= 1).all() and (half != opaque).any()
    other = parse_captions(s.captions.value)[1]
    s.overlay.caption.value = other                                       # another caption's map
    np.testing.assert_allclose(s.overlay.map, caption_maps(model, preprocess, tokenizer, [s.image], other,
                                                          method="patch")[0], atol=1e-6)
    assert (_pixels(s.view.value) != half).any()
    s.captions.value += "\na blue star"                                   # typing keeps the chosen map
    assert s.overlay.caption.value == other and "a blue star" in s.overlay.caption.options
    s.count.value = 5                                                     # a new image: the true caption's map
    assert s.overlay.caption.value == "five red circles"
    assert "peaks" in s.overlay.note.value


def test_models_without_a_map_say_why_and_still_show_the_image():
    s = CaptionScorer(oracle(), gallery=widgets.synthetic_gallery(2))
    assert s.overlay.map is None and "maps are not available" in s.overlay.note.value
    s.overlay.opacity.value = 0.9                                         # the slider changes nothing to draw
    np.testing.assert_array_equal(_pixels(s.view.value),
                                  np.asarray(s.image.convert("RGB").resize((216, 216), Image.NEAREST)))


def test_failure_browser_maps_each_items_true_caption(nano_loaded):
    result = run_probe(load_spec("counting", n=18), *nano_loaded.parts, model_name="clipkit-nano")
    fb = FailureBrowser(result, model=nano_loaded)
    item = result.items[int(fb.rows.iloc[0]["item"])]
    assert fb.overlay.caption.value == item.captions[item.answer] and list(fb.overlay.caption.options) == item.captions
    first, before = fb.overlay.map.copy(), fb.view.value
    fb.overlay.opacity.value = 0.0
    assert fb.view.value != before
    fb._step(+1)
    nxt = result.items[int(fb.rows.iloc[1]["item"])]
    assert fb.overlay.caption.value == nxt.captions[nxt.answer] and not np.allclose(fb.overlay.map, first)
    assert FailureBrowser(result).overlay.map is None        # no model given: the image only


# --- the notebook -------------------------------------------------------------------------------
def test_explore_notebook_is_committed_clean():
    nb = nbformat.read(REPO / "notebooks" / "explore.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []) and "params import check" in code[1].source
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert not any(re.search(r"^\s*(def|class) ", c.source, re.M) for c in code)   # logic lives in clipkit
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow  # starts a Jupyter kernel
def test_explore_notebook_runs_headless(tmp_path):
    import papermill as pm
    out = tmp_path / "explore.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "explore.ipynb"), str(out), kernel_name="python3",
                        parameters={"MODEL": "clipkit-nano", "GALLERY_SIZE": 6, "PROBE_N": 12},
                        cwd=str(tmp_path), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    views = [o for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 4   # picker, scorer, search, failure browsers
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells for o in c.get("outputs", []))
    assert re.search(r"'counting': \(0\.\d+, 0\.167\)", text) and "'spatial'" in text, text
    assert "three red circles" in text and "probability" in text, text   # scorer.scores at the end
