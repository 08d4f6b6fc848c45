"""SugarCrepe (Hsieh et al., NeurIPS 2023): seven 2-way subsets of COCO val2017 images, read from the files as published.

Files (RAIVNLab/sugar-crepe, `data/`): add_att, add_obj, replace_att, replace_obj, replace_rel, swap_att,
swap_obj `.json`, each a dict keyed "0", "1", ... of {filename, caption, negative_caption}; images are COCO
val2017 file names. Published item counts: add_att 692, add_obj 2062, replace_att 788, replace_obj 1652,
replace_rel 1406, swap_att 666, swap_obj 245 (7511 in all).

Scorer: main_eval.py `text_retrieval` / `evaluate` -- an item is a hit when the positive caption's cosine
similarity is strictly above the negative's (`pos_score > neg_score`: a tie is a miss); accuracy per subset
(`correct_cnt / count`), and here also the micro average over every item (the summary's headline).

Published OpenAI ViT-B/32 figures for parity (the SugarCrepe paper, main results table): replace-obj 90.92,
replace-att 80.08, replace-rel 69.20, swap-obj 61.38, swap-att 63.96, add-obj 77.20, add-att 68.79.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipkit.probes.benchmarks.common import (
    BenchItem,
    BenchmarkDataError,
    BenchmarkOptions,
    ImageRef,
    Metric,
    limited,
    read_json,
    require_keys,
    require_root,
    standard_benchmark,
)

BENCHMARK = "sugarcrepe"
SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
COUNTS = {"add_att": 692, "add_obj": 2062, "replace_att": 788, "replace_obj": 1652, "replace_rel": 1406,
          "swap_att": 666, "swap_obj": 245}   # published item counts (SugarCrepe paper / data files)
KEYS = ("filename", "caption", "negative_caption")
WHERE = ("https://github.com/RAIVNLab/sugar-crepe/tree/main/data (images: COCO val2017, "
         "http://images.cocodataset.org/zips/val2017.zip)")
PUBLISHED_B32 = {"replace_obj": 90.92, "replace_att": 80.08, "replace_rel": 69.20, "swap_obj": 61.38,
                 "swap_att": 63.96, "add_obj": 77.20, "add_att": 68.79}
METRICS = [Metric("accuracy", "correct", 0.5)]   # 2-way choice: chance 1/2
FACTORS = ["subset"]


@dataclass
class Options(BenchmarkOptions):
    """SugarCrepe options. root: the folder of the seven JSON files (the repository's data/).
    image_root: the COCO val2017 images; main_eval.py takes them as --coco_image_root with no default, so the
    default here is `<root>/val2017` (where COCO's val2017.zip unpacks)."""


def image_root(o: Options, root: Path) -> Path:
    """Where the images are: the option, else <root>/val2017."""
    return Path(o.image_root).expanduser() if o.image_root else root / "val2017"


def read(o: Options) -> list[BenchItem]:
    """Every item of the selected subsets present under root, in file order (the dict's key order)."""
    root = require_root(BENCHMARK, o.root, [f"{s}.json" for s in SUBSETS], WHERE)
    images = image_root(o, root)
    wanted = o.subset_list(SUBSETS)
    present = [s for s in (wanted or SUBSETS) if (root / f"{s}.json").exists()]
    if wanted and len(present) < len(wanted):
        missing = [f"{s}.json" for s in wanted if s not in present]
        raise _missing(root, missing)
    if not present:
        raise _missing(root, [f"{s}.json" for s in SUBSETS])
    items = []
    for subset in present:
        path = root / f"{subset}.json"
        data = read_json(path)
        if not isinstance(data, dict):
            raise _shape(path, data)
        for key, rec in limited(list(data.items()), o.limit):
            require_keys(path, key, rec, KEYS)
            ref = ImageRef(str(images / rec["filename"]))
            # the cluster is the COCO image: several captions (and subsets) ask about the same photo
            items.append(BenchItem(subset, str(key), [ref], [rec["caption"], rec["negative_caption"]], 0,
                                   cluster=rec["filename"], factors={"filename": rec["filename"]}))
    return items


def _missing(root: Path, files: list[str]) -> BenchmarkDataError:
    return BenchmarkDataError(f"{BENCHMARK}: {root} lacks {', '.join(files)} (published at {WHERE})")


def _shape(path: Path, data) -> BenchmarkDataError:
    return BenchmarkDataError(f"{path}: expected a dict keyed by item id of {{{', '.join(KEYS)}}}, "
                              f"got a {type(data).__name__}")


def score(items: list[BenchItem], scores: list[np.ndarray], seed: int = 0) -> tuple[list[dict], dict]:
    """Per item: positive strictly above negative (main_eval.py `text_retrieval`); the authors' per-subset
    accuracies are the subset breakdown, the micro average the headline."""
    rows = []
    for it, s in zip(items, scores):
        pos, neg = float(s[0, 0]), float(s[0, 1])
        rows.append({"subset": it.subset, "id": it.id, "cluster": it.cluster, **it.factors, "correct": pos > neg,
                     "margin": pos - neg, "true_caption": it.captions[0], "chosen_caption": it.captions[int(neg >= pos)]})
    return rows, {}


# read -> score -> summary, registered as the probe kind (n: null reads every item, the published counts)
run = standard_benchmark(BENCHMARK, Options, read, score, METRICS, FACTORS)
