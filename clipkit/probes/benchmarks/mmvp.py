"""MMVP-VLM (Tong et al., CVPR 2024, "Eyes Wide Shut?"): 9 visual patterns x 15 image pairs, one statement per image, read as published.

Files (tsb0601/MMVP, `scripts/evaluate_vlm.py` `benchmark_model`): `<root>/Questions.csv` (a header, then rows of
question id, question type, statement; consecutive rows form a pair) and the images
`<root>/MLLM_VLM Images/<type of the pair's first row>/<question id>.jpg`.

Scorer (`benchmark_model`): each statement is prompted as "a photo of " + statement and softmaxed over the pair's
two images; statement k picks image 1 when its probability for image 1 is above 0.5 (equivalently, image 1's
similarity is strictly higher: a tie picks image 2). Ground truth: image 1 for an odd question id, image 2 for an
even one. A pair counts when both statements pick their own image. The pattern of a pair is the authors'
`categories[num_pairs // 15]` (by position in the file; past the ninth block of 15, the CSV's type column), and
per-pattern accuracy is the pattern's hits over its pairs. Chance: 1/4 (two independent 2-way picks).

Published figures: the MMVP paper reports every CLIP model it tests near or below chance on most patterns; its
per-model numbers could not be checked while writing this module (REFERENCE.md gives none) and are not restated.
"""
from __future__ import annotations

import csv
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
    require_root,
    standard_benchmark,
)

BENCHMARK = "mmvp"
CSV_FILE = "Questions.csv"
IMAGE_DIR = "MLLM_VLM Images"
PROMPT = "a photo of "          # evaluate_vlm.py: text = 'a photo of ' + statement
PAIRS_PER_PATTERN = 15          # evaluate_vlm.py: categories[num_pairs // 15]
CATEGORIES = ('Orientation and Direction', 'Presence of Specific Features', 'State and Condition',
              'Quantity and Count', 'Positional and Relational Context', 'Color and Appearance',
              'Structural Characteristics', 'Texts', 'Viewpoint and Perspective')   # evaluate_vlm.py, in order
WHERE = "https://huggingface.co/datasets/MMVP/MMVP_VLM (Questions.csv and 'MLLM_VLM Images/')"
METRICS = [Metric("pair_accuracy", "correct", 1 / 4)]
FACTORS = ["subset", "pattern", "type"]


@dataclass
class Options(BenchmarkOptions):
    """MMVP options. root: the folder holding Questions.csv. image_root: the pattern folders of images; default
    `<root>/MLLM_VLM Images` (evaluate_vlm.py's image_dir)."""


def read(o: Options) -> list[BenchItem]:
    """One item per pair of consecutive rows, in file order (an odd last row is dropped, as the authors' loop does)."""
    root = require_root(BENCHMARK, o.root, [CSV_FILE, f"{IMAGE_DIR}/<pattern>/<id>.jpg"], WHERE)
    images = Path(o.image_root).expanduser() if o.image_root else root / IMAGE_DIR
    path = root / CSV_FILE
    if not path.exists():
        raise BenchmarkDataError(f"{BENCHMARK}: {root} lacks {CSV_FILE} (published at {WHERE})")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]          # skip the header, as the authors do
    items = []
    for k in range(len(rows) // 2):
        first, second = rows[2 * k], rows[2 * k + 1]
        for line, row in ((2 * k + 2, first), (2 * k + 3, second)):
            if len(row) != 3 or not row[0].strip().isdigit():
                raise BenchmarkDataError(f"{path}: line {line} is {row!r}; each row must be question id, question "
                                         f"type, statement")
        (q1, type1, s1), (q2, _, s2) = first, second
        q1, q2 = int(q1), int(q2)
        refs = [ImageRef(str(images / type1 / f"{q}.jpg")) for q in (q1, q2)]   # both in the first row's folder
        pattern = CATEGORIES[k // PAIRS_PER_PATTERN] if k // PAIRS_PER_PATTERN < len(CATEGORIES) else type1
        gt = (0 if q1 % 2 == 1 else 1, 0 if q2 % 2 == 1 else 1)
        items.append(BenchItem(path.stem, f"{q1},{q2}", refs, [PROMPT + s1, PROMPT + s2], gt, cluster=f"{q1},{q2}",
                               factors={"pattern": pattern, "type": type1}))
    return limited(items, o.limit)


def score(items: list[BenchItem], scores: list[np.ndarray], seed: int = 0) -> tuple[list[dict], dict]:
    """Per pair: statement k picks image 1 iff s[image 1, k] > s[image 2, k]; the pair counts when both pick right.
    `published`: the mean over patterns of the per-pattern pair accuracy."""
    rows = []
    for it, s in zip(items, scores):
        pred = tuple(0 if s[0, k] > s[1, k] else 1 for k in (0, 1))
        rows.append({"subset": it.subset, "id": it.id, "cluster": it.cluster, **it.factors,
                     "correct": pred == tuple(it.answer), "statement_1_ok": pred[0] == it.answer[0],
                     "statement_2_ok": pred[1] == it.answer[1], "statement_1": it.captions[0],
                     "statement_2": it.captions[1]})
    published = {"pattern_average": macro_summary([r["correct"] for r in rows], [r["pattern"] for r in rows], 1 / 4,
                                                  seed)}
    return rows, published


# read -> score -> summary, registered as the probe kind (n: null reads every item, the published counts)
run = standard_benchmark(BENCHMARK, Options, read, score, METRICS, FACTORS)
