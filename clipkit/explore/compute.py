"""The computations behind the explorer widgets (clipkit.explore.widgets), free of ipywidgets: caption
probabilities, nearest images, item filters, the scene composer, safe decoding of uploads, HTML
bars, map overlays, and a loaded model that caches caption features and caption maps.

Scoring stays interactive on a CPU: an image is encoded once when it changes and each distinct
caption once per model (`LoadedModel` keeps an LRU of caption features), so typing a line
re-encodes only that line. A caption's map (clipkit.evaluate.maps, method "auto": the patch-token
map on a ViT, Grad-CAM on a ResNet) is computed once per (image, caption) and kept likewise.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from clipkit.world import synth
from clipkit.world.seeds import scene_seed
from clipkit import viz
from clipkit.evaluate import encode_images, encode_texts
from clipkit.evaluate.maps import available_methods, caption_maps
from clipkit.models import load_model

# CLIP's logit scale (1 / temperature) is learned but clipped at 100 (Radford et al. 2021, sec. 2.5), where the
# trained models end; CLIP's zero-shot example uses softmax(100 * cos). Probabilities here use the same fixed 100.
CLIP_SCALE = 100.0
MAX_UPLOAD_BYTES = 20 << 20  # refuse larger uploads before decoding them
TEXT_CACHE = 2048           # caption features kept per model
MAP_CACHE = 256             # (image, caption) maps kept per model
ENGINE_COLUMNS = {"item", "item_id", "cluster", "answer", "pred", "n_tied", "best", "correct", "credit", "chance",
                  "margin", "true_caption", "chosen_caption",
                  "caption_only_credit"}  # ProbeResult.table columns that are not factors (the engine's RESERVED)
ANY = "(any)"


# --- pure computations --------------------------------------------------------------------------
def caption_probabilities(image_feature, text_features, scale: float = CLIP_SCALE):
    """(probabilities (K,), cosines (K,)) of K captions for one image: softmax(scale * cos), as CLIP zero-shot.

    image_feature: (d,) and text_features: (K, d), both L2-normalised.
    """
    img = torch.as_tensor(image_feature, dtype=torch.float64).reshape(-1)
    txt = torch.as_tensor(text_features, dtype=torch.float64).reshape(-1, img.numel())
    cos = txt @ img                                                    # (K,)
    return torch.softmax(scale * cos, dim=0).numpy(), cos.numpy()


def top_k(query_feature, features, k: int):
    """(indices, cosines) of the k rows of `features` (N, d) closest to `query_feature` (d,), best first."""
    scores = torch.as_tensor(features, dtype=torch.float64) @ torch.as_tensor(query_feature, dtype=torch.float64)
    order = torch.argsort(-scores, stable=True)[:max(0, int(k))]    # ties: the lower index first
    return order.numpy(), scores[order].numpy()


def parse_captions(text: str) -> list[str]:
    """One caption per non-empty line, whitespace-trimmed, duplicates dropped (first kept)."""
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def filter_items(table: pd.DataFrame, factor: str = ANY, level=ANY, only_failures: bool = True) -> pd.DataFrame:
    """The rows of a ProbeResult table at `factor == level` (ANY: all), optionally only the wrong ones."""
    rows = table[~table["correct"]] if only_failures else table
    if factor != ANY and level != ANY:
        rows = rows[rows[factor].astype(str) == str(level)]
    return rows


def compose_scene(kind: str = "count", shape: str = "circle", colour: str = "red", n: int = 3,
                  relation: str = "left of", seed: int = 0, size_mode: str = "random") -> synth.Scene:
    """The composer's scene: n objects of one shape/colour, or two objects with a relation, placed by `seed`.

    size_mode (count scenes) is synth's: "random", "fixed", or "constant_area" (the same total object
    area whatever n, so that area cannot stand in for count). For a relation scene the shape and colour
    name the first object (A in "A left of B"); B comes from the seed.
    """
    if kind == "count":
        return synth.make_count_scene(seed, n=n, shape=shape, colour=colour, size_mode=size_mode)
    if kind != "relation":
        raise ValueError(f"the composer makes 'count' or 'relation' scenes, got {kind!r}")
    scene = synth.make_relation_scene(seed, relation=relation)
    a, b = scene.objects
    a = replace(a, shape=shape, colour=colour)
    if (b.shape, b.colour) == (shape, colour):  # keep the two nameable: change B's colour
        b = replace(b, colour=next(c for c in synth.BASIC_COLOURS if c != colour))
    return synth.Scene("relation", (a, b), {"relation": relation, "a": (a.colour, a.shape), "b": (b.colour, b.shape)})


def scene_captions(scene: synth.Scene, k: int = 5) -> list[str]:
    """The true caption first, then up to k-1 hard negatives (for counts: the nearest other counts)."""
    negatives = synth.hard_negatives(scene)
    if scene.kind == "count":
        n = scene.facts["n"]
        negatives = sorted(negatives, key=lambda c: abs(synth.NUMBER_WORDS.index(c.split()[0]) - n))
    return [synth.caption(scene)] + negatives[:k - 1]


def decode_image(data: bytes, name: str = "upload") -> Image.Image:
    """An RGB PIL image from uploaded bytes; ValueError with a readable message for anything else."""
    data = bytes(data)
    if not data:
        raise ValueError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{name}: {len(data) / 2**20:.1f} MiB is over the {MAX_UPLOAD_BYTES >> 20} MiB limit")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()                       # structure check before any pixels are decoded
        im = Image.open(io.BytesIO(data))
        im.load()
        return ImageOps.exif_transpose(im).convert("RGB")
    except UnidentifiedImageError:
        why = "not an image file (no known image format)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, corrupt, huge
        why = f"a damaged or unsupported image ({type(e).__name__}: {e})"
    raise ValueError(f"{name}: {why}. Upload a PNG, JPEG, GIF, BMP or WebP file.")


def probability_html(captions, probs, cosines, true_caption: str | None = None, scale: float = CLIP_SCALE) -> str:
    """Horizontal bars of P(caption | image), numbers as text; the model's choice in bold, the true one ticked."""
    best = int(np.argmax(probs))
    rows = []
    for i, (c, p, s) in enumerate(zip(captions, probs, cosines)):
        mark = " &#10003; true" if c == true_caption else ""
        weight = "bold" if i == best else "normal"
        rows.append(
            f'<tr class="clipkit-prob-row" style="font-weight:{weight}">'
            f'<td style="padding-right:8px;max-width:320px">{html.escape(c)}{mark}</td>'
            f'<td style="width:220px"><div style="background:#4C72B0;height:14px;width:{100 * p:.1f}%"></div></td>'
            f'<td class="clipkit-prob" style="padding-left:8px;font-family:monospace">{p:.3f}</td>'
            f'<td style="padding-left:8px;font-family:monospace;color:#666">cos {s:+.3f}</td></tr>')
    head = f"P(caption | image) = softmax({scale:g} &middot; cos) over {len(captions)} captions"
    return f'<div><div style="color:#666">{head}</div><table>{"".join(rows)}</table></div>'


def png_bytes(img: Image.Image, side: int | None = None) -> bytes:
    """PNG bytes of `img`, scaled so its longer side is `side` (nearest-neighbour when enlarging: crisp pixels)."""
    if side and max(img.size) != side:
        f = side / max(img.size)
        size = (max(1, round(img.width * f)), max(1, round(img.height * f)))
        img = img.resize(size, Image.NEAREST if f > 1 else Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def centre_square(img: Image.Image) -> Image.Image:
    """The central square of `img`: what the model's resize + centre crop sees, so a map drawn on it lines up."""
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    return img.crop((left, top, left + s, top + s))


def overlay_png(img: Image.Image, map_=None, opacity: float = 0.5, side: int | None = None) -> bytes:
    """PNG bytes of `img` (its central square, when a map is given) with `map_` blended in at `opacity`
    (clipkit.viz.overlay_rgb); without a map, the image as `png_bytes` gives it."""
    if map_ is None:
        return png_bytes(img, side)
    square = centre_square(img.convert("RGB"))
    if side and max(square.size) < side:            # enlarge first: the patches stay crisp squares
        square = square.resize((side, side), Image.NEAREST)
    return png_bytes(Image.fromarray(viz.overlay_rgb(square, map_, opacity)), side)

def _img_tag(img: Image.Image, side: int) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png_bytes(img, side)).decode()}">'


def _error(msg: str) -> str:
    return f'<span style="color:#b00020">{html.escape(msg)}</span>'


# --- models and galleries -----------------------------------------------------------------------
@dataclass(eq=False)
class LoadedModel:
    """A loaded model plus a cache of caption features (the widgets re-encode only new captions)."""
    spec: str
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    _text: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _maps: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def parts(self) -> tuple:
        """(model, preprocess, tokenizer), as `load_model` returns them (e.g. for `run_probe(spec, *parts)`)."""
        return self.model, self.preprocess, self.tokenizer

    def image_features(self, images) -> torch.Tensor:
        """(N, d) L2-normalised features of PIL images."""
        return encode_images(self.model, self.preprocess, images)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """(K, d) L2-normalised caption features; captions seen before come from the cache."""
        new = [t for t in dict.fromkeys(texts) if t not in self._text]
        if new:
            self._text.update(zip(new, encode_texts(self.model, self.tokenizer, new)))
        out = torch.stack([self._text[t] for t in texts])
        for t in texts:
            self._text.move_to_end(t)                   # least recently used first
        while len(self._text) > TEXT_CACHE:
            self._text.popitem(last=False)
        return out

    def caption_map(self, image: Image.Image, caption: str, method: str = "auto") -> tuple[np.ndarray | None, str]:
        """(map (rows, cols), "") of `caption` on `image`, or (None, the one-line reason) where the
        model has no such map (no patch tokens and no vision tower it knows); cached per (image, caption)."""
        why = available_methods(self.model)
        if method == "auto":
            method = "patch" if not why["patch"] else "gradcam"
        if why.get(method):
            return None, why[method]
        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.size, caption, method)
        if key not in self._maps:
            self._maps[key] = caption_maps(self.model, self.preprocess, self.tokenizer, [image], caption,
                                           method=method)[0]
            while len(self._maps) > MAP_CACHE:
                self._maps.popitem(last=False)
        self._maps.move_to_end(key)
        return self._maps[key], ""


def as_loaded(model, spec: str = "") -> LoadedModel:
    """A LoadedModel from a LoadedModel, a (model, preprocess, tokenizer) tuple, or a spec string (loaded)."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return LoadedModel(model, *load_model(model))
    return LoadedModel(spec or type(model[0]).__name__, *model)


@dataclass
class Gallery:
    """Images to pick from and search over, with their captions (and scenes, when synthetic)."""
    images: list
    captions: list[str]
    scenes: list = field(default_factory=list)

    def __len__(self):
        return len(self.images)


def synthetic_gallery(n: int = 24, seed: int = 0, size: int = 72, kinds=("count", "relation", "binding")) -> Gallery:
    """n synthetic scenes cycling through `kinds`, rendered at `size` px (the probes' resolution)."""
    # the gallery's own seed namespace (clipkit.world.seeds): never a training, probe or held-out scene
    scenes = [synth.make_scene(kinds[i % len(kinds)], seed=scene_seed("gallery", seed, i)) for i in range(n)]
    return Gallery([synth.render(s, size=size) for s in scenes], [synth.caption(s) for s in scenes], scenes)
