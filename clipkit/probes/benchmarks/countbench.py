"""CountBench (Paiss et al., ICCV 2023, "Teaching CLIP to Count to Ten"): 540 web images of two to ten objects, read as published.

Files: the hub's conversion (`nielsr/countbench`: parquet with columns image_url, text, number and image as
{bytes, path}), read when pyarrow is installed; or the authors' release, a list of {image_url, text, number}
(`.json`, `.jsonl` or `.csv` in root) with the images downloaded beside it. The authors publish URLs only, so
the layout of downloaded images is ours: `<image_root>/<row index>.<jpg|jpeg|png|webp>` (0-based, in file
order) or the URL's own file name there. Web images die: every row without an image is counted and reported
(`missing_images` in the summary), and max_bad_fraction defaults to 0.5 here for that reason.

Scorer (the paper's CountBench evaluation; the authors' evaluation code is not public, so this follows
REFERENCE.md and the paper): the caption's number word (or numeral) for `number` is swapped for each of
"two" ... "ten" (capitalisation kept), a 9-way choice whose answer is the true caption; the prediction is
numpy's argmax (the first of tied maxima). Reported: accuracy (chance 1/9), accuracy per count, and the mean
absolute error of the predicted count. A caption without its number word or numeral cannot be swapped: such
rows are skipped and counted (`unswappable` in the summary).

Published OpenAI ViT-B/32 figure for parity (the paper, CountBench results): accuracy 31.7%.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from clipkit.probes.benchmarks.common import (
    BenchItem,
    BenchmarkDataError,
    BenchmarkOptions,
    ImageRef,
    Metric,
    image_bytes,
    limited,
    log,
    read_json,
    read_parquet,
    register_benchmark,
    require_keys,
    require_root,
    run_benchmark,
)

BENCHMARK = "countbench"
NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")   # the paper's 2..10
KEYS = ("image_url", "text", "number")
WHERE = ("https://huggingface.co/datasets/nielsr/countbench (parquet with images), or the authors' URL list "
         "linked from the paper (Paiss et al. 2023)")
COUNT = 540   # published rows
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
METRICS = [Metric("accuracy", "correct", 1 / len(NUMBER_WORDS))]
FACTORS = ["subset", "number"]


@dataclass
class Options(BenchmarkOptions):
    """CountBench options. root: the folder holding the hub's parquet file(s) (searched below root) or the URL list
    (.json / .jsonl / .csv). image_root: the downloaded images for a URL list; default `<root>/images`."""
    max_bad_fraction: float = 0.5   # dead web links are common; every missing image is still counted and reported


def swap_number(text: str, number: int) -> list[str] | None:
    """The nine captions with the number word (or numeral) of `number` replaced by two..ten; None if absent."""
    word = NUMBER_WORDS[number - 2]
    m = re.search(rf"\b{word}\b", text, flags=re.IGNORECASE) or re.search(rf"(?<!\d){number}(?!\d)", text)
    if m is None:
        return None
    found = m.group(0)
    out = []
    for w in NUMBER_WORDS:
        rep = w.upper() if found.isupper() and len(found) > 1 else w.capitalize() if found[:1].isupper() else w
        out.append(text[:m.start()] + rep + text[m.end():])
    return out


def _rows(root: Path) -> list[tuple[Path, list[dict]]]:
    """(file, rows) of the parquet files below root, else of the URL list in root."""
    parquets = sorted(root.rglob("*.parquet"))
    if parquets:
        return [(p, read_parquet(p).to_dict("records")) for p in parquets]
    for ext in (".json", ".jsonl", ".csv"):
        files = sorted(root.glob(f"*{ext}"))
        if not files:
            continue
        path = files[0]
        if ext == ".json":
            data = read_json(path)
        elif ext == ".jsonl":
            data = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            with open(path, newline="", encoding="utf-8") as f:
                data = list(csv.DictReader(f))
        if not isinstance(data, list):
            raise BenchmarkDataError(f"{path}: expected a list of {{{', '.join(KEYS)}}}, got a {type(data).__name__}")
        return [(path, data)]
    raise BenchmarkDataError(f"{BENCHMARK}: {root} holds no *.parquet and no .json/.jsonl/.csv URL list "
                             f"(published at {WHERE})")


def _downloaded(images: Path, index: int, url: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        if (images / f"{index}{ext}").exists():
            return images / f"{index}{ext}"
    name = Path(urlparse(str(url)).path).name
    return images / name if name and (images / name).exists() else None


def read(o: Options) -> list[BenchItem]:
    """Every swappable row, in file order (see `read_counted`)."""
    return read_counted(o)[0]


def read_counted(o: Options) -> tuple[list[BenchItem], int]:
    """(items, unswappable rows). A row without its image becomes an item whose image is unreadable, so the
    engine skips and counts it; `image_found` in its factors says so."""
    root = require_root(BENCHMARK, o.root, ["*.parquet (hub)", "or a .json/.jsonl/.csv URL list + images/"], WHERE)
    images = Path(o.image_root).expanduser() if o.image_root else root / "images"
    items, unswappable = [], 0
    for path, rows in _rows(root):
        for i, rec in enumerate(rows):
            require_keys(path, i, rec, KEYS)
            try:
                number = int(rec["number"])
            except (TypeError, ValueError):
                number = -1
            if not 2 <= number <= 10:
                raise BenchmarkDataError(f"{path}: item {i}: number must be an integer in 2..10, got {rec['number']!r}")
            captions = swap_number(str(rec["text"]), number)
            if captions is None:
                unswappable += 1
                continue
            if "image" in rec:   # the hub's parquet: the image travels in the row
                data = image_bytes(rec["image"])
                ref, found = ImageRef.from_bytes(data), bool(data)
            else:
                file = _downloaded(images, i, rec["image_url"])
                ref, found = ImageRef(str(file or images / f"{i}.jpg")), file is not None
            items.append(BenchItem(path.stem, str(i), [ref], captions, number - 2, cluster=str(rec["image_url"]),
                                   factors={"number": number, "image_url": str(rec["image_url"]),
                                            "image_found": found}))
    if unswappable:
        log.warning("%s: %d captions hold no number word for their count and were skipped", BENCHMARK, unswappable)
    return limited(items, o.limit), unswappable


def score(items: list[BenchItem], scores: list[np.ndarray], seed: int = 0) -> tuple[list[dict], dict]:
    """Per item the argmax count, hit when it is the true count, and its absolute error."""
    rows = []
    for it, s in zip(items, scores):
        pred = int(np.argmax(s[0]))
        rows.append({"subset": it.subset, "id": it.id, "cluster": it.cluster,
                     **it.factors,
                     "correct": pred == it.answer, "pred_number": pred + 2, "abs_error": abs(pred - it.answer),
                     "margin": float(s[0, it.answer] - np.delete(s[0], it.answer).max()),
                     "true_caption": it.captions[it.answer], "chosen_caption": it.captions[pred]})
    return rows, {}


def _uniform_mae(number: int) -> float:
    """Expected |guess - number| for a guess uniform over 2..10: the MAE of a model that cannot count."""
    return float(np.mean([abs(k - number) for k in range(2, 11)]))


def run(options: Options, model, preprocess, tokenizer, model_name: str = "", name: str = BENCHMARK, seed: int = 0,
        cache=True, progress: bool = False):
    """Read and score CountBench on a loaded model; returns a BenchmarkResult with MAE and the missing images."""
    items, unswappable = read_counted(options)
    res = run_benchmark(BENCHMARK, items, score, METRICS, FACTORS, options, model, preprocess, tokenizer, model_name,
                        name, seed, cache, progress)
    t = res.table
    res.summary.update({"mae": float(t["abs_error"].mean()),
                        "mae_chance": float(np.mean([_uniform_mae(n) for n in t["number"]])),
                        "missing_images": sum(not it.factors["image_found"] for it in items),
                        "unswappable": unswappable})
    return res


register_benchmark(BENCHMARK, Options, run)   # the probe kind (n: null reads every item, the published counts)
