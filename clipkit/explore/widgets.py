"""ipywidgets front ends: a live caption scorer (gallery, upload, scene composer), text->image search, failure browser.

Three widgets over one shared model picker, each a class with a `.widget` to display:

    picker = ModelPicker("clipkit-tiny:synthetic")     # spec box + Load button; errors show in the UI
    CaptionScorer(picker).widget    # one image (composed / gallery / upload) vs typed captions -> probabilities
    TextSearch(picker).widget       # typed text -> the top-k gallery images
    FailureBrowser(result).widget   # a ProbeResult's items, filtered by factor: image, true vs chosen caption

The scorer and the browser draw their image through a MapOverlay: where the model looks for a caption
(patch-token map on a ViT, Grad-CAM on a ResNet), the caption from a dropdown, opacity from a slider.

The numbers are plain functions on features in clipkit.explore.compute (`caption_probabilities`, `top_k`,
`filter_items`, ...), tested without a browser and re-exported here.
"""
from __future__ import annotations

import html

import ipywidgets as W
import pandas as pd
from PIL import Image

from clipkit.world import synth
from clipkit.explore.compute import (ANY, CLIP_SCALE, ENGINE_COLUMNS, Gallery, LoadedModel, _error,
                                             _img_tag, as_loaded, caption_probabilities, compose_scene,
                                             decode_image, filter_items, overlay_png, parse_captions, png_bytes,
                                             probability_html, scene_captions, synthetic_gallery, top_k)
from clipkit.models import DEFAULT_MODEL, PRESETS, load_model


class ModelPicker:
    """A model spec box with a Load button; the loaded model is `.loaded` (None until one loads)."""

    def __init__(self, model=DEFAULT_MODEL, device: str = "cpu"):
        self.device, self.loaded, self.error, self._callbacks = device, None, "", []
        spec = model if isinstance(model, str) else getattr(model, "spec", "")
        options = [f"{p}:random" for p in PRESETS] + ["clipkit-tiny:synthetic", "ViT-B-32:openai"]
        self.spec = W.Combobox(value=spec, options=options, ensure_option=False, description="model",
                               placeholder="spec, e.g. clipkit-tiny:synthetic", layout=W.Layout(width="420px"))
        self.button = W.Button(description="Load", button_style="primary", layout=W.Layout(width="80px"))
        self.status = W.HTML().add_class("clipkit-model-status")
        self.button.on_click(lambda _: self.load(self.spec.value))
        self.widget = W.HBox([self.spec, self.button, self.status])
        if isinstance(model, str):
            self.load(model)
        else:
            self._set(as_loaded(model))

    def load(self, spec: str) -> bool:
        """Load `spec`; on failure keep the previous model and show the error in the widget. True if loaded."""
        self.status.value = f"loading {html.escape(spec)} &hellip;"
        try:
            loaded = LoadedModel(spec, *load_model(spec, device=self.device))
        except Exception as e:  # any failure to load belongs in the UI, not in a traceback
            self.error = f"{type(e).__name__}: {e}"
            still = f" (still using {self.loaded.spec})" if self.loaded is not None else ""
            self.status.value = _error(self.error + still)
            return False
        self.error = ""
        self._set(loaded)
        return True

    def on_change(self, callback) -> None:
        """Call `callback(loaded_model)` whenever another model is loaded."""
        self._callbacks.append(callback)

    def require(self) -> LoadedModel:
        """The loaded model, or a RuntimeError saying why there is none."""
        if self.loaded is None:
            raise RuntimeError(f"no model loaded: {self.error}")
        return self.loaded

    def _set(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.spec.value = loaded.spec
        n = sum(p.numel() for p in loaded.model.parameters())
        self.status.value = (f'<span style="color:#2e7d32">{html.escape(loaded.spec)} loaded '
                             f'({n / 1e6:.2f} M parameters)</span>')
        for cb in self._callbacks:
            cb(loaded)


def _picker(model) -> ModelPicker:
    return model if isinstance(model, ModelPicker) else ModelPicker(model)


class MapOverlay:
    """An image with one caption's map over it: `caption` picks the caption, `opacity` blends the map in."""

    def __init__(self, side: int = 216, opacity: float = 0.5):
        self.side, self.loaded, self.image, self.map, self._updating = side, None, None, None, False
        self.view = W.Image(format="png", layout=W.Layout(width=f"{side}px", align_self="flex-start"))
        self.caption = W.Dropdown(options=[], description="map of", layout=W.Layout(width=f"{max(side, 320)}px"))
        self.opacity = W.FloatSlider(opacity, min=0.0, max=1.0, step=0.05, description="map opacity")
        self.note = W.HTML()
        self.caption.observe(lambda _: self._compute(), "value")
        self.opacity.observe(lambda _: self.draw(), "value")
        self.widget = W.VBox([self.view, self.caption, self.opacity, self.note])

    def set(self, image, loaded: LoadedModel | None = None, captions=(), default=None, keep: bool = True) -> None:
        """Show `image` and, with a model, the map of one of `captions` (kept if offered, else `default`)."""
        self.image, self.loaded = image, loaded
        captions = list(dict.fromkeys(captions))
        pick = [c for c in ((self.caption.value if keep else None), default) if c in captions] + captions[:1]
        self._updating = True                # new options must not compute maps for passing values
        self.caption.options, self.caption.value = captions, (pick[0] if pick else None)
        self._updating = False
        self._compute()

    def _compute(self) -> None:
        if self._updating:
            return
        self.map, why = None, ""
        if self.image is not None and self.loaded is not None and self.caption.value:
            try:
                self.map, why = self.loaded.caption_map(self.image, self.caption.value)
            except Exception as e:  # a model that cannot map this input: say so, keep the image
                why = f"map failed: {type(e).__name__}: {e}"
        self.note.value = _error(why) if why else "" if self.map is None else "red: where this caption's map peaks"
        self.draw()

    def draw(self) -> None:
        """Redraw the image with the map at the slider's opacity."""
        self.view.value = overlay_png(self.image, self.map, self.opacity.value, self.side) if self.image else b""


# --- widgets ------------------------------------------------------------------------------------
class CaptionScorer:
    """One image against candidate captions, live: P(caption | image) as bars, updated on every edit.

    The image comes from the scene composer (kind, shape, colour, count, relation, seed), a gallery
    of synthetic scenes, or an upload; the captions from a textarea, one per line. `model` is a spec,
    a (model, preprocess, tokenizer) tuple, a LoadedModel, or a shared ModelPicker. After each
    update `.scores` holds the table behind the bars (caption, probability, cosine, true).
    """
    SOURCES = ("Compose", "Gallery", "Upload")

    def __init__(self, model=DEFAULT_MODEL, gallery: Gallery | None = None, captions: list[str] | None = None,
                 scale: float = CLIP_SCALE, live: bool = True, image_side: int = 216):
        own_picker = not isinstance(model, ModelPicker)
        self.picker = _picker(model)
        self.gallery = gallery if gallery is not None else synthetic_gallery()
        self.scale, self.image_side = scale, image_side
        self.image, self.scene, self.true_caption, self.scores = None, None, None, None
        self._feature = None                 # (d,) features of self.image under the current model
        self._sources = [None, None, None]   # per tab: (image, scene, label) last shown from it

        # composer: every control re-renders the scene (continuous_update=False: on release, not per pixel)
        self.kind = W.Dropdown(options=["count", "relation"], value="count", description="scene")
        self.shape = W.Dropdown(options=list(synth.SHAPES), value="circle", description="shape")
        self.colour = W.Dropdown(options=list(synth.COLOURS), value="red", description="colour")
        self.count = W.IntSlider(3, min=1, max=10, description="count", continuous_update=False)
        self.sizes = W.Dropdown(options=["random", "fixed", "constant_area"], description="sizes")
        self.relation = W.Dropdown(options=list(synth.RELATIONS), description="relation", disabled=True)
        self.seed = W.IntSlider(0, min=0, max=999, description="layout seed", continuous_update=False)
        self.count.add_class("clipkit-count")
        controls = (self.kind, self.shape, self.colour, self.count, self.sizes, self.relation, self.seed)
        for w in controls:
            w.observe(lambda _: self._compose(), "value")

        cells = []
        for i, (img, cap) in enumerate(zip(self.gallery.images, self.gallery.captions)):
            button = W.Button(description=f"#{i}", tooltip=cap, layout=W.Layout(width="72px"))
            button.on_click(lambda _, i=i: self.pick(i))
            cells.append(W.VBox([W.Image(value=png_bytes(img, 72), format="png"), button]))
        gallery_box = W.GridBox(cells, layout=W.Layout(grid_template_columns="repeat(6, 80px)"))

        self.upload = W.FileUpload(accept="image/*", multiple=False, description="Upload image")
        self.upload_status = W.HTML("a PNG, JPEG, GIF, BMP or WebP file; until then the last image stays")
        self.upload_status.add_class("clipkit-upload-status")
        self.upload.observe(self._on_upload, "value")

        self.tabs = W.Tab([W.VBox(list(controls)), gallery_box, W.VBox([self.upload, self.upload_status])],
                          titles=self.SOURCES)
        self.tabs.observe(self._on_tab, "selected_index")
        self.overlay = MapOverlay(image_side)
        self.view, self.view_caption = self.overlay.view, W.HTML()
        self.captions = W.Textarea("\n".join(captions or []), rows=6, continuous_update=live,
                                   placeholder="candidate captions, one per line", layout=W.Layout(width="420px"))
        self.captions.add_class("clipkit-captions")
        self.captions.observe(lambda _: self.rescore(), "value")
        self.suggest = W.Button(description="Captions for this scene", layout=W.Layout(width="200px"),
                                tooltip="the true caption and hard negatives of the current synthetic scene")
        self.suggest.on_click(lambda _: self.suggest_captions())
        self.probs = W.HTML().add_class("clipkit-probs")
        self.status = W.HTML().add_class("clipkit-status")
        self.picker.on_change(lambda _: self._new_model())

        self.widget = W.VBox(([self.picker.widget] if own_picker else []) + [
            W.HBox([self.tabs, W.VBox([self.overlay.widget, self.view_caption])]),
            W.HBox([W.VBox([self.captions, self.suggest]), W.VBox([self.probs, self.status])])])
        self._compose()
        if not captions:
            self.suggest_captions()

    def pick(self, i: int) -> None:
        """Show gallery image i."""
        scene = self.gallery.scenes[i] if i < len(self.gallery.scenes) else None
        self._activate(1, (self.gallery.images[i], scene, f"gallery #{i}"))

    def upload_bytes(self, data: bytes, name: str = "upload") -> bool:
        """Decode uploaded bytes and show the image; a non-image leaves a message and the old image. True if shown."""
        try:
            img = decode_image(data, name)
        except ValueError as e:
            self.upload_status.value = _error(str(e))
            return False
        self.upload_status.value = f"{html.escape(name)}: {img.width}&times;{img.height}"
        self._activate(2, (img, None, name))
        return True

    def set_image(self, image: Image.Image, scene: synth.Scene | None = None, label: str = "") -> None:
        """Score `image` (the true caption is known when its synthetic `scene` is given)."""
        self.image, self.scene, self._feature = image, scene, None
        self.true_caption = synth.caption(scene) if scene is not None else None
        self.overlay.set(image)
        what = f"true caption: <b>{html.escape(self.true_caption)}</b>" if self.true_caption else "(no caption known)"
        self.view_caption.value = f"{html.escape(label)} &mdash; {what}"
        self.suggest.disabled = scene is None
        self.rescore()

    def suggest_captions(self, k: int = 5) -> None:
        """Fill the captions with the scene's true caption and k-1 hard negatives."""
        if self.scene is not None:
            self.captions.value = "\n".join(scene_captions(self.scene, k))

    def rescore(self) -> None:
        """Recompute the probabilities (the image is encoded once; captions come from the model's cache)."""
        captions, loaded = parse_captions(self.captions.value), self.picker.loaded
        if loaded is None or self.image is None or not captions:
            self.probs.value = "<i>load a model to score captions</i>" if loaded is None else \
                "<i>type candidate captions, one per line</i>"
            self.scores = None
            return
        try:
            if self._feature is None:
                self._feature = loaded.image_features([self.image])[0]
            p, cos = caption_probabilities(self._feature, loaded.text_features(captions), self.scale)
        except Exception as e:  # a model that cannot score this input: say so in the widget
            self.status.value = _error(f"scoring failed: {type(e).__name__}: {e}")
            self.probs.value, self.scores = "", None
            return
        self.status.value = ""
        self.overlay.set(self.image, loaded, captions, default=self.true_caption)
        self.scores = pd.DataFrame({"caption": captions, "probability": p, "cosine": cos,
                                    "true": [c == self.true_caption for c in captions]})
        self.probs.value = probability_html(captions, p, cos, self.true_caption, self.scale)

    def _compose(self) -> None:
        self.count.disabled = self.sizes.disabled = self.kind.value != "count"
        self.relation.disabled = self.kind.value != "relation"
        scene = compose_scene(self.kind.value, self.shape.value, self.colour.value, self.count.value,
                              self.relation.value, self.seed.value, self.sizes.value)
        self._activate(0, (synth.render(scene), scene, "composed scene"))

    def _activate(self, tab: int, source) -> None:
        self._sources[tab] = source
        if self.tabs.selected_index == tab:
            self.set_image(*source)
        else:
            self.tabs.selected_index = tab   # -> _on_tab shows it

    def _on_tab(self, change) -> None:
        source = self._sources[change["new"]] if change["new"] is not None else None
        if source is not None:
            self.set_image(*source)

    def _on_upload(self, change) -> None:
        if change["new"]:
            f = change["new"][0]
            self.upload_bytes(f["content"], f.get("name", "upload"))
            self.upload.value = ()   # drop the bytes; the same file can be uploaded again

    def _new_model(self) -> None:
        self._feature = None
        self.rescore()


class TextSearch:
    """Text -> image search over a gallery: type a description, see the top-k images by cosine."""

    def __init__(self, model=DEFAULT_MODEL, gallery: Gallery | None = None, query: str = "", k: int = 6):
        own_picker = not isinstance(model, ModelPicker)
        self.picker = _picker(model)
        self.gallery = gallery if gallery is not None else synthetic_gallery()
        self.hits: list[tuple[int, float]] = []   # (gallery index, cosine), best first
        self._features = None                      # (LoadedModel, (N, d) gallery features)
        self.query = W.Text(query, description="search", placeholder="e.g. three red circles",
                            continuous_update=False, layout=W.Layout(width="420px")).add_class("clipkit-search-query")
        self.k = W.IntSlider(min(k, len(self.gallery)), min=1, max=max(1, len(self.gallery)), description="top k",
                             continuous_update=False)
        self.results = W.HTML().add_class("clipkit-search")
        self.query.observe(lambda _: self.search(), "value")
        self.k.observe(lambda _: self.search(), "value")
        self.picker.on_change(lambda _: self.search())
        self.widget = W.VBox(([self.picker.widget] if own_picker else []) +
                             [W.HBox([self.query, self.k]), self.results])
        self.search()

    def search(self) -> None:
        """Rank the gallery for the current query (gallery features are computed once per model)."""
        loaded, text = self.picker.loaded, self.query.value.strip()
        if loaded is None or not text:
            self.hits = []
            self.results.value = "<i>load a model first</i>" if loaded is None else "<i>type a description</i>"
            return
        if self._features is None or self._features[0] is not loaded:
            self._features = (loaded, loaded.image_features(self.gallery.images))
        idx, cos = top_k(loaded.text_features([text])[0], self._features[1], self.k.value)
        self.hits = list(zip(idx.tolist(), cos.tolist()))
        card = "display:inline-block;width:130px;margin:4px;vertical-align:top;text-align:center;line-height:1.3"
        cards = [f'<div style="{card}">'
                 f'{_img_tag(self.gallery.images[i], 108)}<br><b>{r + 1}.</b> cos {s:+.3f}<br>'
                 f'<small>#{i} {html.escape(self.gallery.captions[i])}</small></div>'
                 for r, (i, s) in enumerate(self.hits)]
        self.results.value = "".join(cards)


class FailureBrowser:
    """Browse a ProbeResult's items: filter by a factor level (and to failures), see each image with its
    true and chosen captions, margin and factors. With `model` (the one that produced the result) it
    also shows P(caption | image) over the item's candidates."""

    def __init__(self, result, model=None, image_side: int = 216):
        self.result, self.table, self.image_side = result, result.table, image_side
        self.loaded = None if model is None else as_loaded(model)
        self.rows = self.table.iloc[:0]
        factors = [c for c in self.table.columns if c not in ENGINE_COLUMNS]
        self.factor = W.Dropdown(options=[ANY] + factors, description="factor")
        self.level = W.Dropdown(options=[ANY], description="level")
        self.only_failures = W.Checkbox(True, description="only failures")
        self.index = W.IntSlider(0, min=0, max=0, description="item", continuous_update=False)
        prev, nxt = (W.Button(description=d, layout=W.Layout(width="40px")) for d in "<>")
        prev.on_click(lambda _: self._step(-1))
        nxt.on_click(lambda _: self._step(+1))
        self.summary, self.details, self.scores = W.HTML(), W.HTML().add_class("clipkit-failure"), W.HTML()
        self.overlay = MapOverlay(image_side)
        self.view = self.overlay.view    # the image as drawn, map included
        self.factor.observe(lambda _: self._levels(), "value")
        self.level.observe(lambda _: self.refresh(), "value")
        self.only_failures.observe(lambda _: self.refresh(), "value")
        self.index.observe(lambda _: self.show(), "value")
        self.widget = W.VBox([W.HBox([self.factor, self.level, self.only_failures]), self.summary,
                              W.HBox([self.index, prev, nxt]),
                              W.HBox([self.overlay.widget, W.VBox([self.details, self.scores])])])
        self.refresh()

    def refresh(self) -> None:
        """Apply the filter and show its first item."""
        self.rows = filter_items(self.table, self.factor.value, self.level.value, self.only_failures.value)
        scope = filter_items(self.table, self.factor.value, self.level.value, only_failures=False)
        acc = scope["credit"].mean() if len(scope) else float("nan")
        self.summary.value = (f"{len(self.rows)} shown; {int((~scope['correct']).sum())} wrong of {len(scope)} "
                              f"in this filter (accuracy {acc:.3f}, chance {scope['chance'].mean():.3f})"
                              if len(scope) else "no items in this filter")
        self.index.value = 0
        self.index.max = max(0, len(self.rows) - 1)
        self.show()

    def show(self) -> None:
        """Show the item at the slider's position within the filtered rows."""
        if not len(self.rows):
            self.overlay.set(None)
            self.details.value, self.scores.value = "<i>no items match</i>", ""
            return
        self.scores.value = ""
        row = self.rows.iloc[min(self.index.value, len(self.rows) - 1)]
        item = self.result.items[int(row["item"])] if int(row["item"]) < len(self.result.items) else None
        self.overlay.set(item and item.image, self.loaded, item.captions if item else (),
                         default=item and item.captions[item.answer], keep=False)
        facts = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(row[k]))}</td></tr>"
                        for k in self.factor.options[1:])
        verdict = '<span style="color:#2e7d32">correct</span>' if row["correct"] else _error("wrong")
        self.details.value = (
            f"<table><tr><td>item</td><td>#{int(row['item'])} ({verdict})</td></tr>"
            f"<tr><td>true caption</td><td><b>{html.escape(row['true_caption'])}</b></td></tr>"
            f"<tr><td>chosen caption</td><td><b>{html.escape(row['chosen_caption'])}</b></td></tr>"
            f"<tr><td>margin</td><td>{row['margin']:+.4f} (true minus best other cosine)</td></tr>{facts}</table>")
        if self.loaded is not None and item is not None:
            p, cos = caption_probabilities(self.loaded.image_features([item.image])[0],
                                           self.loaded.text_features(item.captions))
            self.scores.value = probability_html(item.captions, p, cos, item.captions[item.answer])

    def _levels(self) -> None:
        f = self.factor.value
        levels = [] if f == ANY else list(self.table[f].unique())
        try:
            levels = sorted(levels)
        except TypeError:
            levels = sorted(levels, key=str)
        with self.level.hold_trait_notifications():
            self.level.options = [ANY] + [str(v) for v in levels]
            self.level.value = ANY
        self.refresh()

    def _step(self, d: int) -> None:
        self.index.value = min(max(self.index.value + d, 0), self.index.max)
