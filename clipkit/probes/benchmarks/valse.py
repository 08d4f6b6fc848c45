"""VALSE (Parcalabescu et al., ACL 2022): 11 pieces of caption-vs-foil pairs over six linguistic phenomena, read as published.

Files (Heidelberg-NLP/VALSE, `data/`): existence, plurals, counting-hard, counting-small-quant,
counting-adversarial, relations, action-replacement, actant-swap, coreference-standard, coreference-hard,
foil-it `.json`, each a dict keyed by item id of {dataset, image_file, caption, foil, mturk: {caption, foil,
other}, ...}. The repository's own scripts (`config.py`, `lxmert_valse_eval.py` DATA) also name some files
`counting_hard.json`, `counting_adversarial.json`, `relation.json` and `actions/actant-swap.json`; those
spellings are accepted too. The images come from the six source datasets named in `dataset`.

Filter and scorer (`unimodal_valse_eval.py` / `lxmert_valse_eval.py`, main loop): only valid items,
`foil['mturk']['caption'] >= 2` (README: "at least two out of three annotators identified the caption, but not
the foil"); pairwise accuracy acc_r = the caption scored strictly above the foil, per piece. Where `caption` is
a list, its first element is the caption (`lxmert_valse_eval.py` reads `foil["caption"][0]`). The summary's
`average_pairwise` is the mean over the pieces present (the paper's "Avg." column).

Default image folders, relative to root, follow `config.py`'s DATA (its paths are relative to the repository,
whose data/ is root here): visual7w/images (existence, counting), plurals/test_images, relations/test_images,
actions/images_512, coref/release_too_many_is_this_in_color/images, coref/release_v18/test_images; foil-it uses
COCO val2014, which config.py gives as an absolute path of the authors' machine (/scratch/COCO/val2014/), so its
default here (`<root>/coco/val2014`) is ours, not theirs.

Published OpenAI ViT-B/32 figure for parity (VALSE paper, main results table): average pairwise accuracy ~64.
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
    limited,
    macro_summary,
    read_json,
    require_keys,
    require_root,
    standard_benchmark,
)

BENCHMARK = "valse"
# piece -> (phenomenon, file names as published and as config.py spells them, default image folder under root)
PIECES = {
    "existence": ("existence", ("existence.json",), "visual7w/images"),
    "plurals": ("plurality", ("plurals.json",), "plurals/test_images"),
    "counting-hard": ("counting", ("counting-hard.json", "counting_hard.json"), "visual7w/images"),
    "counting-small-quant": ("counting", ("counting-small-quant.json",), "visual7w/images"),
    "counting-adversarial": ("counting", ("counting-adversarial.json", "counting_adversarial.json"),
                             "visual7w/images"),
    "relations": ("relations", ("relations.json", "relation.json"), "relations/test_images"),
    "action-replacement": ("actions", ("action-replacement.json",), "actions/images_512"),
    "actant-swap": ("actions", ("actant-swap.json", "actions/actant-swap.json"), "actions/images_512"),
    "coreference-standard": ("coreference", ("coreference-standard.json",),
                             "coref/release_too_many_is_this_in_color/images"),
    "coreference-hard": ("coreference", ("coreference-hard.json",), "coref/release_v18/test_images"),
    "foil-it": ("noun phrases", ("foil-it.json",), "coco/val2014"),
}
SUBSETS = tuple(PIECES)
KEYS = ("dataset", "image_file", "caption", "foil", "mturk")
MIN_VOTES = 2   # README / eval scripts: valid when at least 2 of the 3 annotators chose the caption
WHERE = ("https://github.com/Heidelberg-NLP/VALSE/tree/main/data (images: from each item's source dataset, "
         "see the README)")
METRICS = [Metric("accuracy", "correct", 0.5)]   # pairwise: caption vs foil, chance 1/2
FACTORS = ["subset", "phenomenon", "dataset"]


@dataclass
class Options(BenchmarkOptions):
    """VALSE options. root: the repository's data/ folder of the 11 piece files. image_root: one folder holding
    every image_file, or a mapping from the items' `dataset` field to folders (a dict, a JSON object string, or
    "name=folder,name=folder"); default: config.py's folder per piece, relative to root (see the module)."""
    image_root: str | dict | None = None   # see the class docstring
    valid_only: bool = True                # keep only the valid set, mturk.caption >= 2 (the authors always do)


def image_folders(o: Options) -> str | dict | None:
    """The image_root option as None, one folder, or a {dataset: folder} mapping."""
    v = o.image_root
    if isinstance(v, str) and v.strip().startswith("{"):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{BENCHMARK}: image_root {v!r} is not a JSON object ({e})") from e
    elif isinstance(v, str) and "=" in v:
        pairs = [p.split("=", 1) for p in v.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise BenchmarkDataError(f"{BENCHMARK}: image_root {v!r}: write a mapping as name=folder,name=folder")
        v = {k.strip(): f.strip() for k, f in pairs}
    return v


def _find(root: Path, piece: str) -> Path | None:
    return next((root / f for f in PIECES[piece][1] if (root / f).exists()), None)


def read(o: Options) -> list[BenchItem]:
    """The valid items of the selected pieces present under root, in file order (the dict's key order)."""
    root = require_root(BENCHMARK, o.root, [f"{p}.json" for p in PIECES], WHERE)
    wanted = o.subset_list(SUBSETS)
    present = [p for p in (wanted or SUBSETS) if _find(root, p)]
    if (wanted and len(present) < len(wanted)) or not present:
        missing = [f"{p}.json" for p in (wanted or SUBSETS) if p not in present]
        raise BenchmarkDataError(f"{BENCHMARK}: {root} lacks {', '.join(missing)} (published at {WHERE})")
    folders = image_folders(o)
    items = []
    for piece in present:
        path = _find(root, piece)
        data = read_json(path)
        if not isinstance(data, dict):
            raise BenchmarkDataError(f"{path}: expected a dict keyed by item id of {{{', '.join(KEYS)}}}, got a "
                                     f"{type(data).__name__}")
        kept = []
        for key, rec in data.items():
            require_keys(path, key, rec, KEYS)
            if not isinstance(rec["mturk"], dict) or "caption" not in rec["mturk"]:
                raise BenchmarkDataError(f"{path}: item {key!r}: mturk must be {{caption, foil, other}} vote counts")
            if o.valid_only and not rec["mturk"]["caption"] >= MIN_VOTES:
                continue
            kept.append((key, rec))
        for key, rec in limited(kept, o.limit):
            folder = _folder(folders, rec["dataset"], root / PIECES[piece][2], path, key)
            caption = rec["caption"][0] if isinstance(rec["caption"], list) else rec["caption"]
            items.append(BenchItem(piece, str(key), [ImageRef(str(folder / rec["image_file"]))], [caption, rec["foil"]],
                                   0, cluster=f"{rec['dataset']}/{rec['image_file']}",
                                   factors={"phenomenon": PIECES[piece][0], "dataset": rec["dataset"],
                                            "image_file": rec["image_file"], "mturk_caption": rec["mturk"]["caption"]}))
    return items


def _folder(folders, dataset: str, default: Path, path: Path, key) -> Path:
    if folders is None:
        return default
    if isinstance(folders, dict):
        if dataset not in folders:
            raise BenchmarkDataError(f"{path}: item {key!r} comes from dataset {dataset!r}, which the image_root "
                                     f"mapping lacks (it names {sorted(folders)}); add {dataset}=FOLDER")
        return Path(folders[dataset]).expanduser()
    return Path(folders).expanduser()


def score(items: list[BenchItem], scores: list[np.ndarray], seed: int = 0) -> tuple[list[dict], dict]:
    """Per item: caption strictly above foil (acc_r); `published`: the mean of the per-piece accuracies and the
    mean over the pieces of each phenomenon, each with a stratified bootstrap CI."""
    rows = []
    for it, s in zip(items, scores):
        cap, foil = float(s[0, 0]), float(s[0, 1])
        rows.append({"subset": it.subset, "id": it.id, "cluster": it.cluster, **it.factors, "correct": cap > foil,
                     "margin": cap - foil, "true_caption": it.captions[0], "chosen_caption": it.captions[int(foil >= cap)]})
    published = {"average_pairwise": macro_summary([r["correct"] for r in rows], [r["subset"] for r in rows], 0.5, seed)}
    for ph in dict.fromkeys(r["phenomenon"] for r in rows):
        sel = [r for r in rows if r["phenomenon"] == ph]
        published[f"phenomenon={ph}"] = macro_summary([r["correct"] for r in sel], [r["subset"] for r in sel], 0.5, seed)
    return rows, published


# read -> score -> summary, registered as the probe kind (n: null reads every item, the published counts)
run = standard_benchmark(BENCHMARK, Options, read, score, METRICS, FACTORS)
