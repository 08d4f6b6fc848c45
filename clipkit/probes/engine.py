"""The caption-choice engine, shared by every caption-choice kind: spec -> items -> K-way choice -> table + summary.

A caption-choice kind is a function `items(spec) -> list[Item]` registered with `choice_kind`
(clipkit.probes.protocol holds the registry): each item is an image, its candidate
captions (exactly one true), and the factors it was generated with. The engine encodes images
and captions, scores the choice, and reports accuracy with its chance level, n and an exact 95% CI
(Clopper-Pearson; Korn-Graubard when items share a scene, see `Item.cluster`), overall and broken down
by every controlled factor. Adding a probe of an existing kind means writing a YAML file; adding a
kind means writing one options dataclass and one `items` function.

One tie rule everywhere: an item whose true caption is among t tied best captions earns credit 1/t
(evaluate.choose); its table row says `n_tied` = t and `chosen_caption` = "tie (t captions)", and the
failure grid, confusion matrices and pair scores count it the same way, never as "chose: the true caption".

Every summary carries the caption-only control (clipkit.probes.controls): the same model scoring each
item's captions against the mean image embedding of the probe set, i.e. its caption prior.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from clipkit.core.records import write_record
from clipkit.probes import controls
from clipkit.probes.protocol import KINDS, ProbeSpec, SpecError, did_you_mean, load_spec, register


@dataclass
class Item:
    """One probe question: an image, candidate captions, the index of the true one, and its factors."""
    image: Image.Image
    captions: list[str]
    answer: int
    factors: dict[str, Any] = field(default_factory=dict)
    cluster: Any = None   # items sharing a scene or image share a cluster id (None: the item stands alone)


class ItemList(list):
    """The items of a kind that reads them from files: a list, plus how many records were read and skipped."""
    def __init__(self, items=(), read: int | None = None, skipped: int = 0):
        super().__init__(items)
        self.skipped = int(skipped)
        self.read = len(self) + self.skipped if read is None else int(read)


# table columns the engine writes; an item factor of the same name would overwrite one
RESERVED = ("item", "item_id", "cluster", "answer", "pred", "n_tied", "best", "correct", "credit", "chance",
            "margin", "true_caption", "chosen_caption", "caption_only_credit")


def choice_kind(kind: str, options_cls: type, n_default: int = 200, **extra):
    """Decorator: register `items(spec) -> list[Item]` as caption-choice kind `kind` with its options
    dataclass; the engine's `run_probe` is its runner. `extra`: Kind fields (training_range, summarise)."""
    def deco(fn):
        register(kind, options_cls, run_probe, items=fn, n_default=n_default, **extra)
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
        """The first k items not fully right (credit < 1: wrong, or the true caption tied with others):
        (images, "true: ... / chose: ..." titles, "chose: tie (t captions)" for a tie), for a failure grid."""
        wrong = self.table[self.table["credit"] < 1].head(k)
        return ([self.items[i].image for i in wrong["item"]],
                [f"true: {t}\nchose: {c}" for t, c in zip(wrong["true_caption"], wrong["chosen_caption"])])

    def metrics(self) -> dict:
        """A flat dict: overall accuracy/CI/n/chance (the verdict adds "text bias, not vision" when the
        accuracy is not above the caption-only control, and the factor levels outside the model's training
        range), `caption_only_<key>`, and `<factor>=<level>` accuracies."""
        flat = {k: v for k, v in self.summary.items() if not isinstance(v, dict)}
        for key, v in self.summary.items():
            if isinstance(v, dict):
                flat.update({f"{key}_{k}": x for k, x in v.items()})
        if flat.get("vs_caption_only") == controls.TEXT_BIAS:
            flat["verdict"] = f"{flat['verdict']}; text bias, not vision (not above caption-only)"
        if (outside := self.summary.get("outside_training_range")) is not None:   # the CLI's line prints the verdict
            flat["verdict"] = f"{flat['verdict']}; {outside} outside the training range"
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
    from clipkit.core import stats   # scipy (~1 s): here, so that reading specs does not load it
    spec = spec if isinstance(spec, ProbeSpec) else load_spec(spec)
    if items is None and KINDS[spec.kind].items is None:
        raise SpecError(f"probe {spec.name!r} is of kind {spec.kind!r}, not a caption-choice kind: run it with run_any")
    items = items if items is not None else KINDS[spec.kind].items(spec)
    if not items:
        raise SpecError(f"probe {spec.name!r} produced no items")
    clash = sorted({f for it in items for f in it.factors} & set(RESERVED))
    if clash:
        raise SpecError(f"probe {spec.name!r}: item factor(s) {clash} would overwrite the table's own column(s); "
                        f"rename them (reserved: {list(RESERVED)})")
    from clipkit.evaluate import encode_images, encode_texts   # torch: here, so that reading specs needs none
    img = encode_images(model, preprocess, (it.image for it in items), batch_size=batch_size)  # (N, d)
    flat = [c for it in items for c in it.captions]
    txt = encode_texts(model, tokenizer, flat)                                                 # (sum K, d)
    answers = [it.answer for it in items]
    res = _choose(img, txt, items, answers)
    # caption-only control: every item's captions against the probe set's mean image, i.e. unseen images
    co = _choose(img.mean(0, keepdim=True).expand_as(img), txt, items, answers)
    rows = []
    for i, it in enumerate(items):
        best, t = res["best"][i], len(res["best"][i])
        rows.append({"item": i, "item_id": controls.item_id(it.image, it.captions),
                     "cluster": i if it.cluster is None else it.cluster, **it.factors, "answer": it.answer,
                     "pred": int(res["pred"][i]), "n_tied": t, "best": "|".join(map(str, best)),
                     "correct": bool(res["correct"][i]), "credit": float(res["credit"][i]),
                     "chance": float(res["chance"][i]), "margin": float(res["margin"][i]),
                     "true_caption": it.captions[it.answer],
                     "chosen_caption": it.captions[best[0]] if t == 1 else f"tie ({t} captions)",
                     "caption_only_credit": float(co["credit"][i])})
    table = pd.DataFrame(rows)
    # clusters only when some items share one: independent items keep the exact Clopper-Pearson interval
    clustered = table["cluster"].duplicated().any()
    clusters = table["cluster"] if clustered else None
    summary = {"probe": spec.name, "family": spec.kind, "model": model_name,   # key kept: reports read "family"
               **stats.accuracy_summary(table["credit"], table["chance"], seed=spec.seed, clusters=clusters),
               "read": getattr(items, "read", len(items)), "skipped": getattr(items, "skipped", 0),
               "caption_only": controls.caption_only(table["caption_only_credit"], table["chance"], clusters),
               **controls.versus_caption_only(table["credit"], table["caption_only_credit"], clusters)}
    kind = KINDS.get(spec.kind)
    summary.update(controls.outside_training_range(table, kind and kind.training_range, model_name, spec.name))
    if kind is not None and kind.summarise is not None:
        summary.update(kind.summarise(spec, table))
    bad = [f for f in spec.breakdowns if f not in table or f in RESERVED]
    if bad:
        known = sorted({f for it in items for f in it.factors})
        raise SpecError(f"probe {spec.name!r}: breakdowns {bad} are not factors of its items"
                        f"{did_you_mean(bad[0], known)}; known factors: {known}")
    breakdowns = {f: stats.by_factor(table, f, correct="credit", clusters="cluster" if clustered else None)
                  for f in spec.breakdowns}
    if summary["vs_caption_only"] == controls.TEXT_BIAS:
        print(f"[clipkit] {spec.name}: accuracy {summary['accuracy']:.3f} is {controls.TEXT_BIAS} "
              f"(caption-only {summary['caption_only']['accuracy']:.3f})", file=sys.stderr)
    return ProbeResult(spec, model_name, table, summary, breakdowns, items)


def _choose(img, txt, items, answers) -> dict:
    """evaluate.choose over the items (batched when every item has K captions, else item by item), plus
    `best`: per item, the indices of the captions tied at the top score (one index when there is no tie)."""
    from clipkit.evaluate import choice_scores, choose
    k = {len(it.captions) for it in items}
    if len(k) == 1:
        scores = choice_scores(img, txt.reshape(len(items), k.pop(), -1)).numpy()             # (N, K)
        res = choose(scores, answers)
        res["best"] = [np.flatnonzero(row == row.max()).tolist() for row in scores]
        return res
    res, offset = {"pred": [], "correct": [], "credit": [], "margin": [], "chance": [], "best": []}, 0
    for i, it in enumerate(items):  # ragged candidate lists (real-data JSONL): score item by item
        row = (txt[offset:offset + len(it.captions)] @ img[i]).numpy()
        offset += len(it.captions)
        r = choose(row[None], [it.answer])
        for key in ("pred", "correct", "credit", "margin", "chance"):
            res[key].append(r[key][0])
        res["best"].append(np.flatnonzero(row == row.max()).tolist())
    return res
