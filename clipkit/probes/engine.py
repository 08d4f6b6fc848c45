"""The caption-choice engine, shared by every caption-choice kind: spec -> items -> K-way choice -> table + summary.

A caption-choice kind is a function `items(spec) -> list[Item]` registered with `choice_kind`
(clipkit.probes.protocol holds the registry): each item is an image, its candidate
captions (exactly one true), and the factors it was generated with. The engine encodes images
and captions, scores the choice, and reports accuracy with its chance level, n and a bootstrap
95% CI, overall and broken down by every controlled factor. Adding a probe of an existing
kind means writing a YAML file; adding a kind means writing one options dataclass and one `items` function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from clipkit.core import stats
from clipkit.core.records import write_record
from clipkit.evaluate import choice_scores, choose, encode_images, encode_texts
from clipkit.probes.protocol import KINDS, ProbeSpec, SpecError, load_spec, register


@dataclass
class Item:
    """One probe question: an image, candidate captions, the index of the true one, and its factors."""
    image: Image.Image
    captions: list[str]
    answer: int
    factors: dict[str, Any] = field(default_factory=dict)


def choice_kind(kind: str, options_cls: type, n_default: int = 200):
    """Decorator: register `items(spec) -> list[Item]` as caption-choice kind `kind` with its options
    dataclass; the engine's `run_probe` is its runner."""
    def deco(fn):
        register(kind, options_cls, run_probe, items=fn, n_default=n_default)
        return fn
    return deco


@dataclass
class ProbeResult:
    """A probe's tidy table (one row per item, every factor a column) and its summaries."""
    spec: ProbeSpec
    model: str
    table: pd.DataFrame
    summary: dict
    breakdowns: dict[str, pd.DataFrame]
    items: list[Item] = field(default_factory=list, repr=False)  # the questions asked (images included)

    def failures(self, k: int = 12) -> tuple[list, list[str]]:
        """The first k wrong items: (images, "true: ... / chose: ..." titles), for a failure grid."""
        wrong = self.table[~self.table["correct"]].head(k)
        return ([self.items[i].image for i in wrong["item"]],
                [f"true: {t}\nchose: {c}" for t, c in zip(wrong["true_caption"], wrong["chosen_caption"])])

    def metrics(self) -> dict:
        """A flat dict: overall accuracy/CI/n/chance, plus `<factor>=<level>` accuracies."""
        flat = dict(self.summary)
        for f, df in self.breakdowns.items():
            for _, row in df.iterrows():
                flat[f"acc[{f}={row[f]}]"] = row["accuracy"]
        return flat

    def save(self, out_dir: str | Path) -> Path:
        """Write <name>.csv (the tidy table) and <name>.json (a CLIP_benchmark-style record)."""
        record = {"dataset": f"probe:{self.spec.name}", "model": self.model, "task": "image_caption_selection",
                  "metrics": self.summary, "breakdowns": {f: df.to_dict("records") for f, df in self.breakdowns.items()},
                  "spec": self.spec, "language": "en"}
        return write_record(out_dir, self.spec.name, record, self.table)


def run_probe(spec, model, preprocess, tokenizer, model_name: str = "", items: list[Item] | None = None,
              batch_size: int = 256) -> ProbeResult:
    """Run a probe spec (name, path, dict or ProbeSpec) on a loaded model; see the module docstring."""
    spec = spec if isinstance(spec, ProbeSpec) else load_spec(spec)
    if items is None and KINDS[spec.kind].items is None:
        raise SpecError(f"probe {spec.name!r} is of kind {spec.kind!r}, not a caption-choice kind: run it with run_any")
    items = items if items is not None else KINDS[spec.kind].items(spec)
    if not items:
        raise SpecError(f"probe {spec.name!r} produced no items")
    img = encode_images(model, preprocess, (it.image for it in items), batch_size=batch_size)  # (N, d)
    k = {len(it.captions) for it in items}
    flat = [c for it in items for c in it.captions]
    txt = encode_texts(model, tokenizer, flat)                                                 # (sum K, d)
    if len(k) == 1:
        scores = choice_scores(img, txt.reshape(len(items), k.pop(), -1)).numpy()             # (N, K)
        res = choose(scores, [it.answer for it in items])
    else:  # ragged candidate lists (real-data JSONL): score item by item
        res, offset = {"pred": [], "correct": [], "credit": [], "margin": [], "chance": []}, 0
        for i, it in enumerate(items):
            r = choose((txt[offset:offset + len(it.captions)] @ img[i]).numpy()[None], [it.answer])
            offset += len(it.captions)
            for key in res:
                res[key].append(r[key][0])
    table = pd.DataFrame([{"item": i, **it.factors, "answer": it.answer, "pred": int(res["pred"][i]),
                           "correct": bool(res["correct"][i]), "credit": float(res["credit"][i]),
                           "chance": float(res["chance"][i]),
                           "margin": float(res["margin"][i]), "true_caption": it.captions[it.answer],
                           "chosen_caption": it.captions[int(res["pred"][i])]}
                          for i, it in enumerate(items)])
    summary = {"probe": spec.name, "family": spec.kind, "model": model_name,   # key kept: reports read "family"
               **stats.accuracy_summary(table["credit"], table["chance"], seed=spec.seed)}
    breakdowns = {f: stats.by_factor(table, f, correct="credit") for f in spec.breakdowns if f in table}
    return ProbeResult(spec, model_name, table, summary, breakdowns, items)

