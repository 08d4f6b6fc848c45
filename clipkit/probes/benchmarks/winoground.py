"""Winoground (Thrush et al., CVPR 2022): 400 examples of two images and two captions with the same words, read as published.

Files (facebook/winoground on the Hugging Face hub): `data/examples.jsonl` with one line per example of {id,
caption_0, caption_1, image_0, image_1, tag, secondary_tag, num_main_preds, collapsed_tag} and the images
`data/images/<image_k>.png`; or the hub's parquet conversion (the same columns, image_k as {bytes, path}),
read when pyarrow is installed.

Scorer (the paper's text / image / group score definitions; the authors' evaluation code is not in a public
repository this module could read, so the definitions follow the paper and REFERENCE.md): with s(c, i) the similarity of caption c and
image i, text score = s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1) (each image prefers its own caption);
image score = s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0) (each caption prefers its own image); group =
both. Strict inequalities: a tie fails. Chance: 1/4, 1/4 and 1/6 (of the 24 orderings of the four scores, 4
satisfy both). Reported overall and by tag (`tag`, `secondary_tag`, `collapsed_tag`, `num_main_preds`).

Published figures (REFERENCE.md): every CLIP model the authors tested is near chance (25 / 25 / 16.7); the
paper's per-model numbers could not be checked while writing this module and are not restated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipkit.probes.benchmarks.common import (
    BenchItem,
    BenchmarkDataError,
    BenchmarkOptions,
    ImageRef,
    Metric,
    image_bytes,
    limited,
    read_parquet,
    require_keys,
    require_root,
    standard_benchmark,
)

BENCHMARK = "winoground"
SUBSETS = ("examples",)
KEYS = ("id", "caption_0", "caption_1", "image_0", "image_1", "tag", "secondary_tag", "num_main_preds",
        "collapsed_tag")
WHERE = "https://huggingface.co/datasets/facebook/winoground (data/examples.jsonl and data/images/, or its parquet)"
COUNT = 400   # published number of examples
METRICS = [Metric("group_score", "group", 1 / 6), Metric("text_score", "text", 1 / 4),
           Metric("image_score", "image", 1 / 4)]
FACTORS = ["subset", "tag", "secondary_tag", "collapsed_tag", "num_main_preds"]


@dataclass
class Options(BenchmarkOptions):
    """Winoground options. root: the folder holding examples.jsonl (the hub repository's data/), or parquet
    files below it. image_root: the PNG images for examples.jsonl; default `<root>/images`."""


def read(o: Options) -> list[BenchItem]:
    """The examples of examples.jsonl (preferred) or of the parquet files below root, in file order."""
    root = require_root(BENCHMARK, o.root, ["examples.jsonl + images/*.png", "or the hub's *.parquet"], WHERE)
    o.subset_list(SUBSETS)   # validates a subsets option; there is one subset
    jsonl = root / "examples.jsonl"
    if jsonl.exists():
        return limited(_read_jsonl(jsonl, Path(o.image_root).expanduser() if o.image_root else root / "images"),
                       o.limit)
    parquets = sorted(root.rglob("*.parquet"))
    if not parquets:
        raise BenchmarkDataError(f"{BENCHMARK}: {root} holds neither examples.jsonl nor *.parquet "
                                 f"(published at {WHERE})")
    items = []
    for path in parquets:
        df = read_parquet(path)
        for i, rec in enumerate(df.to_dict("records")):
            require_keys(path, rec.get("id", i), rec, KEYS)
            refs = [ImageRef.from_bytes(image_bytes(rec[f"image_{k}"])) for k in (0, 1)]
            items.append(_item(rec, refs))
    return limited(items, o.limit)


def _read_jsonl(path: Path, images: Path) -> list[BenchItem]:
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{path}:{lineno}: not JSON ({e})") from e
        require_keys(path, rec.get("id", f"line {lineno}") if isinstance(rec, dict) else lineno, rec, KEYS)
        items.append(_item(rec, [ImageRef(str(images / f"{rec[f'image_{k}']}.png")) for k in (0, 1)]))
    return items


def _item(rec: dict, refs: list[ImageRef]) -> BenchItem:
    factors = {k: rec[k] for k in ("tag", "secondary_tag", "collapsed_tag", "num_main_preds")}
    # each example is its own cluster: its two images and captions appear in no other example
    return BenchItem("examples", str(rec["id"]), refs, [rec["caption_0"], rec["caption_1"]], None,
                     cluster=str(rec["id"]), factors=factors)


def score(items: list[BenchItem], scores: list[np.ndarray], seed: int = 0) -> tuple[list[dict], dict]:
    """Per example text, image and group score; s[i, c] is image i against caption c (caption k describes image k)."""
    rows = []
    for it, s in zip(items, scores):
        text = bool(s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0])
        image = bool(s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1])
        rows.append({"subset": it.subset, "id": it.id, "cluster": it.cluster, **it.factors, "text": text,
                     "image": image, "group": text and image, "c0_i0": float(s[0, 0]), "c1_i0": float(s[0, 1]),
                     "c0_i1": float(s[1, 0]), "c1_i1": float(s[1, 1]), "caption_0": it.captions[0],
                     "caption_1": it.captions[1]})
    return rows, {}


# read -> score -> summary, registered as the probe kind (n: null reads every item, the published counts)
run = standard_benchmark(BENCHMARK, Options, read, score, METRICS, FACTORS)
