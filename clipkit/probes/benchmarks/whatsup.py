"""What'sUp (Kamath et al., EMNLP 2023): spatial relations, controlled photographs and COCO / VG spatial QA, read as published.

Files (amitakamath/whatsup_vlms, `dataset_zoo/aro_datasets.py`):
* `controlled_images_dataset.json` (subset A: on / under / left / right) and `controlled_clevr_dataset.json`
  (subset B: in-front / behind / left / right): lists of {image_path, caption_options}, the first option
  correct; image files `<obj1>_<prep>_<obj2>.jpeg` in `<root>/controlled_images/` and `<root>/controlled_clevr/`
  (`Controlled_Images.__init__`). The JSON's image_path carries the authors' own prefix (they open it relative
  to their working directory); here only its file name is used, looked up in those folders.
* `coco_qa_one_obj.json`, `coco_qa_two_obj.json`, `vg_qa_one_obj.json`, `vg_qa_two_obj.json`: lists of
  [image_id, correct, wrong]; images `<root>/val2017/<image_id zero-padded to 12>.jpg` (`COCO_QA.__getitem__`)
  and `<root>/vg_images/<image_id>.jpg` (`VG_QA.__getitem__`).

Scorer (`Controlled_Images.evaluate_scores`, `COCO_QA` / `VG_QA.evaluate_scores`): individual accuracy is
argmax over the options == 0 (a tie goes to the first option, the correct one, as numpy's argmax does). For the
controlled sets, images are grouped by (file name's first '_' field, last field minus its 5-character ".jpeg"),
the preposition is the second field; a pair (left & right; on & under, or in-front & behind) counts when both
of its images are right, over len(dataset) / 2 pairs; a set counts when all four are right, over len / 4.

Published figures (REFERENCE.md): every one of the 18 models the authors tested, OpenAI ViT-B/32 among them,
is near chance (25% on the 4-way controlled sets, 50% on the 2-way QA sets); the paper's per-model numbers
could not be checked while writing this module and are not restated.
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
    accuracy,
    limited,
    read_json,
    require_keys,
    require_root,
    standard_benchmark,
)

BENCHMARK = "whatsup"
CONTROLLED = {"controlled_images": "controlled_images_dataset.json", "controlled_clevr": "controlled_clevr_dataset.json"}
QA = {"coco_qa_one_obj": "coco_qa_one_obj.json", "coco_qa_two_obj": "coco_qa_two_obj.json",
      "vg_qa_one_obj": "vg_qa_one_obj.json", "vg_qa_two_obj": "vg_qa_two_obj.json"}
FILES = {**CONTROLLED, **QA}
SUBSETS = tuple(FILES)
ALIASES = {"A": "controlled_images", "B": "controlled_clevr", "controlled_images_dataset": "controlled_images",
           "controlled_clevr_dataset": "controlled_clevr"}
WHERE = "https://github.com/amitakamath/whatsup_vlms (README: the annotation JSON files and image archives)"
# the two pairs of opposite prepositions each controlled subset asks about (evaluate_scores' eval_dict)
PAIRS = {"controlled_images": (("left", "right"), ("on", "under")),
         "controlled_clevr": (("left", "right"), ("in-front", "behind"))}
METRICS = [Metric("accuracy", "correct", "chance")]
FACTORS = ["subset", "preposition"]


@dataclass
class Options(BenchmarkOptions):
    """What'sUp options. root: the folder of the annotation JSON files (the authors' data root). image_root: the
    folder holding controlled_images/, controlled_clevr/, val2017/ and vg_images/; default root."""


def read(o: Options) -> list[BenchItem]:
    """Items of the selected subsets present under root, in file order."""
    root = require_root(BENCHMARK, o.root, list(FILES.values()), WHERE)
    images = Path(o.image_root).expanduser() if o.image_root else root
    wanted = o.subset_list(SUBSETS, ALIASES)
    present = [s for s in (wanted or SUBSETS) if (root / FILES[s]).exists()]
    if (wanted and len(present) < len(wanted)) or not present:
        missing = [FILES[s] for s in (wanted or SUBSETS) if s not in present]
        raise BenchmarkDataError(f"{BENCHMARK}: {root} lacks {', '.join(missing)} (published at {WHERE})")
    items = []
    for subset in present:
        path = root / FILES[subset]
        data = read_json(path)
        if not isinstance(data, list):
            raise BenchmarkDataError(f"{path}: expected a list of items, got a {type(data).__name__}")
        reader = _controlled if subset in CONTROLLED else _qa
        items += [reader(path, subset, i, rec, images) for i, rec in limited(list(enumerate(data)), o.limit)]
    return items


def _controlled(path: Path, subset: str, i: int, rec, images: Path) -> BenchItem:
    require_keys(path, i, rec, ("image_path", "caption_options"))
    name = str(rec["image_path"]).split("/")[-1]
    parts = name.split("_")
    key = f"{parts[0]}|{parts[-1][:-5]}"          # evaluate_scores: (split('_')[0], split('_')[-1][:-5])
    folder = "controlled_images" if subset == "controlled_images" else "controlled_clevr"
    # Controlled_Images.__init__'s all_prepositions: by substring of the path, in this order
    p = rec["image_path"]
    prep = ("left_of" if "left_of" in p else "right_of" if "right_of" in p else
            ("on" if "_on_" in p else "under") if subset == "controlled_images" else
            ("in-front_of" if "_in-front_of_" in p else "behind"))
    return BenchItem(subset, name, [ImageRef(str(images / folder / name))], list(rec["caption_options"]), 0,
                     cluster=key, factors={"preposition": prep, "pair_key": key, "slot": parts[1]})


def _qa(path: Path, subset: str, i: int, rec, images: Path) -> BenchItem:
    if not (isinstance(rec, list) and len(rec) == 3):
        raise BenchmarkDataError(f"{path}: item {i} is {rec!r}; each item must be [image_id, correct, wrong]")
    image_id, correct, wrong = rec
    file = (images / "val2017" / f"{str(image_id).zfill(12)}.jpg" if subset.startswith("coco")
            else images / "vg_images" / f"{image_id}.jpg")
    return BenchItem(subset, str(i), [ImageRef(str(file))], [correct, wrong], 0, cluster=str(image_id),
                     factors={"preposition": _qa_preposition(subset, correct), "image_id": str(image_id)})


def _qa_preposition(subset: str, caption: str) -> str:
    """COCO_QA / VG_QA.__init__'s all_prepositions."""
    if subset.endswith("one_obj"):
        return caption.split()[-1]
    if "left of" in caption:
        return "left"
    if "right of" in caption:
        return "right"
    if subset.startswith("coco"):
        return "above" if "above" in caption else "below"
    return "front" if "front of" in caption else "behind" if "behind" in caption else "top"


def score(items: list[BenchItem], scores: list[np.ndarray], seed: int = 0) -> tuple[list[dict], dict]:
    """Individual accuracy per item (argmax == 0); `published`: individual accuracy per subset and, for the
    controlled subsets, pair and set accuracy exactly as evaluate_scores counts them."""
    rows = []
    for it, s in zip(items, scores):
        pred = int(np.argmax(s[0]))
        rows.append({"subset": it.subset, "id": it.id, "cluster": it.cluster, **it.factors, "correct": pred == 0,
                     "chance": 1 / len(it.captions), "pred": pred, "margin": float(s[0, 0] - s[0, 1:].max()),
                     "true_caption": it.captions[0], "chosen_caption": it.captions[pred]})
    published = {}
    for subset in dict.fromkeys(r["subset"] for r in rows):
        sub = [r for r in rows if r["subset"] == subset]
        published[f"{subset}_individual"] = accuracy([r["correct"] for r in sub], sub[0]["chance"],
                                                     [r["cluster"] for r in sub], seed)
        if subset in PAIRS:
            published.update(_pair_set(subset, sub, seed))
    return rows, published


def _pair_set(subset: str, rows: list[dict], seed: int) -> dict:
    """Pair and set accuracy: evaluate_scores' eval_dict (every preposition of a key starts at 0, i.e. a missing
    image counts as wrong) and its denominators len(dataset) / 2 and len(dataset) / 4."""
    slots = [p for pair in PAIRS[subset] for p in pair]
    table = {}
    for r in rows:
        table.setdefault(r["pair_key"], dict.fromkeys(slots, False))[r["slot"]] = bool(r["correct"])
    pair_hits = [table[k][a] and table[k][b] for k in table for a, b in PAIRS[subset]]
    pair_keys = [k for k in table for _ in PAIRS[subset]]     # a key's two pairs show the same two objects
    set_hits = [sum(v.values()) == 4 for v in table.values()]
    n = len(rows)
    pair = accuracy(pair_hits, 1 / 16, pair_keys, seed)       # chance: (1/4)^2 for two 4-way picks
    sets = accuracy(set_hits, 1 / 256, None, seed)            # (1/4)^4; one set per key
    pair["accuracy"], sets["accuracy"] = sum(pair_hits) / (n / 2), sum(set_hits) / (n / 4)   # the authors' ratios
    return {f"{subset}_pair": pair, f"{subset}_set": sets}


# read -> score -> summary, registered as the probe kind (n: null reads every item, the published counts)
run = standard_benchmark(BENCHMARK, Options, read, score, METRICS, FACTORS)
