"""The pointing game on synthetic scenes: does a caption's map peak on the object the caption names?

Zhang et al. (2016, "Top-down Neural Attention by Excitation Backprop", §4.1) score a map as a hit
when its maximum falls on the named object. Here every object's pixels are known
(`synth.object_masks`), so the game is exact and its chance level honest:

- the map (any grid, e.g. 6 x 6 patches) is upsampled to the mask's pixels by nearest neighbour,
  i.e. every patch stands for the pixels it covers, no more;
- an item's credit is the fraction of the map's peak region (the pixels holding the maximum: one
  patch for a continuous map) that lies on the named object. It is the hit probability of a peak
  pixel drawn at random inside that region, so a map whose peak patch straddles the object's edge
  gets partial credit, not a coin flip;
- chance is the named object's area fraction (the credit of a peak at a uniformly random pixel;
  for maps with i.i.d. patch values on a grid that divides the image, exactly that expectation).

Scenes and captions (one object-naming caption per scene; seeds as in the probes):
    count      n objects of one kind; caption "three red circles"; target: all of them
    relation   two objects; caption "a red circle" naming one of them, alternating; target: that one
    binding    two objects of different shapes and colours; likewise
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from clipkit.core import stats
from clipkit.world import synth
from clipkit.world.seeds import scene_seed

# item i of kind k has the seed of the probes' item i (clipkit.world.seeds): the same scenes they ask about
PURPOSES = {"count": "probe:counting", "relation": "probe:spatial", "binding": "probe:binding"}
KINDS = ("count", "relation", "binding")


def upsample(map_: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a (rows, cols) map to `shape` (each cell covers its pixels)."""
    m = np.asarray(map_, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"a map is a 2-D (rows, cols) array, got shape {m.shape}")
    r = (np.arange(shape[0]) * m.shape[0]) // shape[0]
    c = (np.arange(shape[1]) * m.shape[1]) // shape[1]
    return m[np.ix_(r, c)]


def peak_credit(map_: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the map's peak region (its maximal pixels after upsampling) on the object `mask`."""
    mask = np.asarray(mask, dtype=bool)
    up = upsample(map_, mask.shape)
    if not np.isfinite(up).any():
        raise ValueError("the map holds no finite value")
    peak = up == np.nanmax(up)
    return float(mask[peak].mean())


def pointing_game(maps, masks, seed: int = 0) -> dict:
    """Pointing-game accuracy of maps (B, rows, cols) against target masks (B, H, W), with its 95% CI,
    chance (mean area fraction of the targets), n and the per-item credits."""
    maps, masks = list(maps), list(masks)
    if len(maps) != len(masks) or not maps:
        raise ValueError(f"pointing_game needs as many maps as masks (and at least one), got {len(maps)} and {len(masks)}")
    credit = np.array([peak_credit(m, k) for m, k in zip(maps, masks)])
    area = np.array([np.asarray(k, dtype=bool).mean() for k in masks])
    if (area == 0).any():
        raise ValueError("a target mask is empty: every item must name an object that is visible")
    s = stats.accuracy_summary(credit, area, seed=seed)
    return {**{k: s[k] for k in ("accuracy", "ci_low", "ci_high", "chance", "n")}, "verdict": s["verdict"],
            "credit": credit, "area": area}


def pointing_items(kind: str, n: int, seed: int = 0, size: int = 72) -> list[dict]:
    """n scenes of `kind` with an object-naming caption and the named object's mask (see the docstring).

    Each item: {"image": PIL image, "caption": str, "mask": (size, size) bool, "scene": synth.Scene}."""
    if kind not in KINDS:
        raise ValueError(f"unknown pointing-game scene kind {kind!r}; choose one of {KINDS}")
    out = []
    for i in range(n):
        s = scene_seed(PURPOSES[kind], seed, i)
        if kind == "count":
            scene = synth.make_count_scene(s, n=1 + i % 6)
            f = scene.facts
            caption, masks = synth.count_caption(f["n"], f["colour"], f["shape"]), synth.object_masks(scene, size)
            mask = masks.any(0)
        else:
            scene = synth.make_relation_scene(s) if kind == "relation" else synth.make_binding_scene(s)
            target = i % 2        # name each of the two objects in turn: no bias to one side or shape
            o = scene.objects[target]
            caption, mask = f"a {synth.noun(o.colour, o.shape)}", synth.object_masks(scene, size)[target]
        out.append({"image": synth.render(scene, size=size), "caption": caption, "mask": mask, "scene": scene})
    return out


def run_pointing(model, preprocess, tokenizer, kinds=KINDS, n: int = 60, methods=("patch", "gradcam"),
                 seed: int = 0, size: int = 72, pooled: bool = False) -> pd.DataFrame:
    """One row per (kind, method): the pointing game of `clipkit.evaluate.maps` on synthetic scenes;
    with `pooled`, also one row per method of kind "all" (every kind's items together, chance their
    mean area fraction).

    A method the architecture lacks (a ResNet's patch map) gets a row with its one-line reason in
    `note` and no accuracy. The map covers the preprocessed image, which for these square scenes is
    the whole scene (resize + centre crop of a square)."""
    from clipkit.evaluate.layers import NotAvailable
    from clipkit.evaluate.maps import caption_maps
    rows, games = [], {m: [] for m in methods}
    unavailable = dict.fromkeys(("accuracy", "ci_low", "ci_high", "chance"), np.nan)
    for kind in kinds:
        items = pointing_items(kind, n, seed, size)
        for method in methods:
            try:
                maps = caption_maps(model, preprocess, tokenizer, [it["image"] for it in items],
                                    [it["caption"] for it in items], method=method)
            except NotAvailable as e:
                rows.append({"kind": kind, "method": method, **unavailable, "n": 0, "note": str(e)})
                continue
            g = pointing_game(maps, [it["mask"] for it in items], seed=seed)
            games[method].append(g)
            rows.append({"kind": kind, "method": method, **{k: g[k] for k in
                         ("accuracy", "ci_low", "ci_high", "chance", "n", "verdict")}, "note": ""})
    for method, gs in games.items() if pooled else ():
        if not gs:
            rows.append({"kind": "all", "method": method, **unavailable, "n": 0,
                         "note": next(r["note"] for r in rows if r["method"] == method)})
            continue
        s = stats.accuracy_summary(np.concatenate([g["credit"] for g in gs]),
                                   np.concatenate([g["area"] for g in gs]), seed=seed)
        rows.append({"kind": "all", "method": method, **{k: s[k] for k in
                     ("accuracy", "ci_low", "ci_high", "chance", "n", "verdict")}, "note": ""})
    return pd.DataFrame(rows)

def failure_maps(result, model, preprocess, tokenizer, k: int = 6, method: str = "auto") -> dict:
    """Maps of a caption-choice result's worst failures (lowest margin first): for each, the map of
    its true caption and of the caption the model chose, so a grid shows where the model looked for each.

    Returns {"images", "maps", "titles"} with two entries per failure (true, then chosen), "method"
    (the map actually drawn) and "note" (why there is no map; then "maps" is empty)."""
    from clipkit.evaluate.maps import available_methods, caption_maps
    if k < 1:
        raise ValueError(f"k is the number of failures to map, at least 1, got {k}")
    table = result.table
    wrong = table[table["credit"] < 1].sort_values("margin", kind="stable").head(k)
    avail = available_methods(model)
    if method == "auto":
        method = "patch" if not avail["patch"] else "gradcam"
    out = {"images": [], "maps": [], "titles": [], "method": method, "note": avail.get(method, "")}
    if out["note"] or not len(wrong):
        out["note"] = out["note"] or "no failures to map: every item is right"
        return out
    captions = []
    for _, row in wrong.iterrows():
        item = result.items[int(row["item"])]
        chosen = item.captions[int(row["pred"])]     # a tie: the first of the tied captions
        tie = "" if row["chosen_caption"] == chosen else f" ({row['chosen_caption']})"
        for caption, title in ((item.captions[item.answer], f"true: {item.captions[item.answer]}"),
                               (chosen, f"chose: {chosen}{tie}")):
            out["images"].append(item.image)
            out["titles"].append(title)
            captions.append(caption)
    out["maps"] = list(caption_maps(model, preprocess, tokenizer, out["images"], captions, method=method))
    return out
