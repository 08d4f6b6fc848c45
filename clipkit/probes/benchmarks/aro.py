"""ARO (Yuksekgonul et al., ICLR 2023): VG-Relation, VG-Attribution and COCO/Flickr30k-Order, read as published.

Files (mertyg/vision-language-models-are-bows, `dataset_zoo/aro_datasets.py`):
* `visual_genome_relation.json`, `visual_genome_attribution.json`: lists of {image_path, bbox_x, bbox_y, bbox_w,
  bbox_h, true_caption, false_caption, relation_name | attributes}; images in `<root>/images/` (`VG_Relation`,
  `VG_Attribution.__init__`), each cropped to its box (`__getitem__`: `image.crop((x, y, x + w, y + h))`).
* COCO-Order / Flickr30k-Order: built at load time (`COCO_Order`, `Flickr30k_Order.__init__`) from the Karpathy
  test split (`coco_karpathy_test.json`, `flickr30k_test.json`: lists of {image, caption: [...]}) -- every
  caption becomes a 5-way item: the caption and its four perturbations (`dataset_zoo/perturbations.py`:
  shuffle_nouns_and_adj, shuffle_allbut_nouns_and_adj, shuffle_within_trigrams, shuffle_trigrams), each
  passed through `pre_caption(., max_words=30)` (`dataset_zoo/retrieval.py`).

Scorers (`evaluate_scores`): VG items list [false, true] and count a hit when argmax == 1 (a tie goes to
index 0: a miss); per relation / attribute pair accuracy; the headline is the macro average over relations
with the `symmetric` list of the authors' notebook ("Replicate ARO! VG-Relation, VG-Attribution.ipynb")
excluded, and over attribute pairs with at least 25 items (`if attr_mask.sum() < 25: continue`). Order: the
original caption first, hit when argmax == 0 (a tie goes to the original), precision@1 over items.

The perturbations need a part-of-speech tagger: the authors use spaCy `en_core_web_sm` (tags NN/NNS/NNP/NNPS,
JJ/JJR/JJS) and NLTK's `word_tokenize`. Here the tagger is spaCy when installed (or any callable passed in);
NLTK's tokenizer when installed, else a regex tokenizer (words and punctuation apart), which can differ on
contractions. The shuffles are seeded (`order_seed`), but the authors' draws came from the global RNG of their
run, so individual perturbed captions cannot be reproduced, only their distribution.

Published OpenAI ViT-B/32 figures for parity (ARO paper, main results): VG-Relation 0.59, VG-Attribution 0.62
(NegCLIP 0.81 / 0.71). The Order precision@1 figures are in the paper; they are not restated here
because they could not be checked against the paper while writing this module.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
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
    macro_summary,
    read_json,
    register_benchmark,
    require_keys,
    require_root,
    run_benchmark,
)

BENCHMARK = "aro"
VG_FILES = {"visual_genome_relation": "relation_name", "visual_genome_attribution": "attributes"}
ORDER_FILES = {"coco_order": "coco_karpathy_test.json", "flickr30k_order": "flickr30k_test.json"}
SUBSETS = (*VG_FILES, *ORDER_FILES)
ALIASES = {"VG_Relation": "visual_genome_relation", "VG_Attribution": "visual_genome_attribution",
           "COCO_Order": "coco_order", "Flickr30k_Order": "flickr30k_order"}   # main_aro.py's dataset names
VG_KEYS = ("image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption", "false_caption")
WHERE = ("https://github.com/mertyg/vision-language-models-are-bows (README: the VG-R / VG-A JSON files and "
         "vgr_vga_images.zip; Karpathy splits from storage.googleapis.com/sfr-vision-language-research/datasets)")
MIN_ATTRIBUTE_ITEMS = 25   # VG_Attribution.evaluate_scores: attribute pairs with fewer items are left out
MAX_WORDS = 30             # COCO_Order / Flickr30k_Order: pre_caption(caption, max_words=30)
# The relations the authors' notebook drops before the VG-R macro average (verbatim list, same order).
SYMMETRIC = (
    'adjusting', 'attached to', 'between', 'bigger than', 'biting', 'boarding', 'brushing', 'chewing', 'cleaning',
    'climbing', 'close to', 'coming from', 'coming out of', 'contain', 'crossing', 'dragging', 'draped over',
    'drinking', 'drinking from', 'driving', 'driving down', 'driving on', 'eating from', 'eating in', 'enclosing',
    'exiting', 'facing', 'filled with', 'floating in', 'floating on', 'flying', 'flying above', 'flying in',
    'flying over', 'flying through', 'full of', 'going down', 'going into', 'going through', 'grazing in',
    'growing in', 'growing on', 'guiding', 'hanging from', 'hanging in', 'hanging off', 'hanging over',
    'higher than', 'holding onto', 'hugging', 'in between', 'jumping off', 'jumping on', 'jumping over', 'kept in',
    'larger than', 'leading', 'leaning over', 'leaving', 'licking', 'longer than', 'looking in', 'looking into',
    'looking out', 'looking over', 'looking through', 'lying next to', 'lying on top of', 'making', 'mixed with',
    'mounted on', 'moving', 'on the back of', 'on the edge of', 'on the front of', 'on the other side of',
    'opening', 'painted on', 'parked at', 'parked beside', 'parked by', 'parked in', 'parked in front of',
    'parked near', 'parked next to', 'perched on', 'petting', 'piled on', 'playing', 'playing in', 'playing on',
    'playing with', 'pouring', 'reaching for', 'reading', 'reflected on', 'riding on', 'running in', 'running on',
    'running through', 'seen through', 'sitting behind', 'sitting beside', 'sitting by', 'sitting in front of',
    'sitting near', 'sitting next to', 'sitting under', 'skiing down', 'skiing on', 'sleeping in', 'sleeping on',
    'smiling at', 'sniffing', 'splashing', 'sprinkled on', 'stacked on', 'standing against', 'standing around',
    'standing behind', 'standing beside', 'standing in front of', 'standing near', 'standing next to',
    'staring at', 'stuck in', 'surrounding', 'swimming in', 'swinging', 'talking to', 'topped with', 'touching',
    'traveling down', 'traveling on', 'tying', 'typing on', 'underneath', 'wading in', 'waiting for',
    'walking across', 'walking by', 'walking down', 'walking next to', 'walking through', 'working in',
    'working on', 'worn on', 'wrapped around', 'wrapped in', 'by', 'of', 'near', 'next to', 'with', 'beside',
    'on the side of', 'around')
NOUN_TAGS, ADJ_TAGS = ("NN", "NNS", "NNP", "NNPS"), ("JJ", "JJR", "JJS")
METRICS = [Metric("accuracy", "correct", "chance")]
FACTORS = ["subset", "relation", "attributes"]


@dataclass
class Options(BenchmarkOptions):
    """ARO options. root: the folder of the VG JSON files (and of the Karpathy split files for the Order tasks).
    image_root: the VG images; default `<root>/images` (VG_Relation.__init__)."""
    coco_image_root: str | None = None     # COCO images for COCO-Order; default root (COCO_Order joins root + ann["image"])
    flickr_image_root: str | None = None   # Flickr30k images for Flickr30k-Order; default root (Flickr30k_Order)
    order_seed: int = 1                    # seed of the Order shuffles (main_aro.py's --seed default is 1)


def read(o: Options, tagger: Callable | None = None) -> list[BenchItem]:
    """Items of the selected subsets present under root. `tagger(text) -> [(token, tag), ...]` replaces spaCy for
    the Order perturbations (tests); without either, Order subsets are an error when asked for by name and
    skipped with a warning otherwise."""
    root = require_root(BENCHMARK, o.root, [f"{s}.json" for s in VG_FILES] + list(ORDER_FILES.values()), WHERE)
    wanted = o.subset_list(SUBSETS, ALIASES)
    files = {**{s: f"{s}.json" for s in VG_FILES}, **ORDER_FILES}
    present = [s for s in (wanted or SUBSETS) if (root / files[s]).exists()]
    if (wanted and len(present) < len(wanted)) or not present:
        missing = [files[s] for s in (wanted or SUBSETS) if s not in present]
        raise BenchmarkDataError(f"{BENCHMARK}: {root} lacks {', '.join(missing)} (published at {WHERE})")
    items = []
    for subset in present:
        if subset in VG_FILES:
            items += _read_vg(root, subset, o)
            continue
        tag = tagger or _spacy_tagger(required=bool(wanted))
        if tag is None:
            continue
        img_root = getattr(o, "coco_image_root" if subset == "coco_order" else "flickr_image_root") or root
        items += _read_order(root / files[subset], subset, Path(img_root).expanduser(), tag, o)
    return items


def _read_vg(root: Path, subset: str, o: Options) -> list[BenchItem]:
    path, label = root / f"{subset}.json", VG_FILES[subset]
    data = read_json(path)
    if not isinstance(data, list):
        raise BenchmarkDataError(f"{path}: expected a list of items with {list(VG_KEYS) + [label]}, got a "
                                 f"{type(data).__name__}")
    images = Path(o.image_root).expanduser() if o.image_root else root / "images"
    items = []
    for i, rec in limited(list(enumerate(data)), o.limit):
        require_keys(path, i, rec, (*VG_KEYS, label))
        x, y, w, h = (float(rec[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        ref = ImageRef(str(images / rec["image_path"]), (x, y, x + w, y + h))
        factor = ({"relation": rec[label]} if label == "relation_name"
                  else {"attributes": f"{rec[label][0]}_{rec[label][1]}"})   # VG_Attribution's all_attributes
        # authors' caption order [false, true]; the item's id is its position in the JSON list
        items.append(BenchItem(subset, str(i), [ref], [rec["false_caption"], rec["true_caption"]], 1,
                               cluster=rec["image_path"], factors={**factor, "image_path": rec["image_path"]}))
    return items


def _read_order(path: Path, subset: str, images: Path, tagger: Callable, o: Options) -> list[BenchItem]:
    data = read_json(path)
    if not isinstance(data, list):
        raise BenchmarkDataError(f"{path}: expected the Karpathy split: a list of {{image, caption: [...]}}")
    rng = Rng(o.order_seed)
    items = []
    for i, ann in enumerate(data):
        require_keys(path, i, ann, ("image", "caption"))
        caps = ann["caption"] if isinstance(ann["caption"], list) else [ann["caption"]]
        for j, cap in enumerate(caps):
            options = [pre_caption(cap)] + [pre_caption(f(cap, tagger, rng)) for f in PERTURBATIONS]
            items.append(BenchItem(subset, f"{i}:{j}", [ImageRef(str(images / ann["image"]))], options, 0,
                                   cluster=ann["image"], factors={"image_path": ann["image"]}))
        if o.limit is not None and len(items) >= o.limit:
            return items[:o.limit]
    return items


# --- the authors' perturbations (dataset_zoo/perturbations.py) and caption cleaning (retrieval.py) -----------------
class Rng:
    """The two generators the authors' shuffles draw from (numpy's permutation, Python's random.shuffle), seeded."""

    def __init__(self, seed: int):
        self.np, self.py = np.random.default_rng(seed), random.Random(seed)


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """retrieval.py `pre_caption`: lower-case, punctuation .!"()*#:;~ to spaces, squeeze spaces, cut to max_words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def word_tokenize(text: str) -> list[str]:
    """NLTK's word_tokenize when installed (as the authors use), else words and punctuation split apart."""
    try:
        import nltk
        return nltk.word_tokenize(text)
    except (ImportError, LookupError):
        return re.findall(r"\w+|[^\w\s]", text)


def shuffle_nouns_and_adj(text: str, tagger: Callable, rng: Rng) -> str:
    """Permute the nouns among themselves and the adjectives among themselves."""
    toks, tags = zip(*tagger(text)) if text else ((), ())
    arr = np.array(toks, dtype=object)
    for group in (NOUN_TAGS, ADJ_TAGS):
        idx = [i for i, t in enumerate(tags) if t in group]
        arr[idx] = rng.np.permutation(arr[idx])
    return " ".join(arr)


def shuffle_allbut_nouns_and_adj(text: str, tagger: Callable, rng: Rng) -> str:
    """Permute every word that is neither a noun nor an adjective."""
    toks, tags = zip(*tagger(text)) if text else ((), ())
    arr = np.array(toks, dtype=object)
    idx = [i for i, t in enumerate(tags) if t not in NOUN_TAGS + ADJ_TAGS]
    arr[idx] = rng.np.permutation(arr[idx])
    return " ".join(arr)


def _trigrams(tokens: list[str]) -> list[list[str]]:
    """perturbations.py `get_trigrams`: consecutive groups of three tokens, the last one possibly shorter."""
    return [list(tokens[i:i + 3]) for i in range(0, len(tokens), 3)]


def shuffle_within_trigrams(text: str, tagger: Callable, rng: Rng) -> str:
    """Shuffle the order of the tokens inside each trigram."""
    tri = _trigrams(word_tokenize(text))
    for t in tri:
        rng.py.shuffle(t)
    return " ".join(" ".join(t) for t in tri)


def shuffle_trigrams(text: str, tagger: Callable, rng: Rng) -> str:
    """Shuffle the order of the trigrams."""
    tri = _trigrams(word_tokenize(text))
    rng.py.shuffle(tri)
    return " ".join(" ".join(t) for t in tri)


PERTURBATIONS = (shuffle_nouns_and_adj, shuffle_allbut_nouns_and_adj, shuffle_within_trigrams, shuffle_trigrams)


def _spacy_tagger(required: bool) -> Callable | None:
    try:
        import spacy
        nlp = spacy.load("en_core_web_sm")
    except (ImportError, OSError) as e:
        msg = (f"{BENCHMARK}: the Order tasks tag parts of speech with spaCy as the authors do: "
               f"pip install spacy && python -m spacy download en_core_web_sm ({type(e).__name__})")
        if required:
            raise BenchmarkDataError(msg) from e
        import logging
        logging.getLogger("clipkit.probes.benchmarks").warning("%s; skipping COCO/Flickr30k-Order", msg)
        return None
    return lambda text: [(t.text, t.tag_) for t in nlp(text)]


# --- the authors' scorer ---------------------------------------------------------------------------------------
def score(items: list[BenchItem], scores: list[np.ndarray], seed: int = 0) -> tuple[list[dict], dict]:
    """Per item the authors' argmax hit; `published`: VG-R macro accuracy over relations not in SYMMETRIC, VG-A macro
    over attribute pairs with >= 25 items (each with a stratified bootstrap CI), Order precision@1."""
    rows = []
    for it, s in zip(items, scores):
        pred = int(np.argmax(s[0]))     # numpy's argmax: the first of tied maxima, as in evaluate_scores
        rows.append({"subset": it.subset, "id": it.id, "cluster": it.cluster, **it.factors, "correct": pred == it.answer,
                     "chance": 1 / len(it.captions), "pred": pred,
                     "margin": float(s[0, it.answer] - np.delete(s[0], it.answer).max()),
                     "true_caption": it.captions[it.answer], "chosen_caption": it.captions[pred]})
    published = {}
    rel = [r for r in rows if r["subset"] == "visual_genome_relation" and r["relation"] not in SYMMETRIC]
    if rel:
        published["vg_relation_macro"] = macro_summary([r["correct"] for r in rel], [r["relation"] for r in rel],
                                                       0.5, seed)
    att = [r for r in rows if r["subset"] == "visual_genome_attribution"]
    counts = {}
    for r in att:
        counts[r["attributes"]] = counts.get(r["attributes"], 0) + 1
    att = [r for r in att if counts[r["attributes"]] >= MIN_ATTRIBUTE_ITEMS]
    if att:
        published["vg_attribution_macro"] = macro_summary([r["correct"] for r in att],
                                                          [r["attributes"] for r in att], 0.5, seed)
    for subset in ORDER_FILES:
        sel = [r for r in rows if r["subset"] == subset]
        if sel:   # precision@1 is a plain item mean; a photo's five captions are one cluster
            published[f"{subset}_precision_at_1"] = accuracy([r["correct"] for r in sel], 0.2,
                                                             [r["cluster"] for r in sel], seed)
    return rows, published


def run(options: Options, model, preprocess, tokenizer, model_name: str = "", name: str = BENCHMARK, seed: int = 0,
        cache=True, progress: bool = False, tagger: Callable | None = None):
    """Read and score ARO on a loaded model; returns a BenchmarkResult."""
    return run_benchmark(BENCHMARK, read(options, tagger), score, METRICS, FACTORS, options, model, preprocess,
                         tokenizer, model_name, name, seed, cache, progress)


register_benchmark(BENCHMARK, Options, run)   # the probe kind (n: null reads every item, the published counts)
