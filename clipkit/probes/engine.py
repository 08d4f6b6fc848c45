"""The probe engine: a spec (YAML in probes/) -> items -> K-way caption choice -> tidy table + summary.

A probe family is a function `items(spec) -> list[Item]`: each item is an image, its candidate
captions (exactly one true), and the factors it was generated with. The engine encodes images
and captions, scores the choice, and reports accuracy with its chance level, n and a bootstrap
95% CI, overall and broken down by every controlled factor. Adding a probe of an existing
family means writing a YAML file; adding a family means writing one `items` function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from clipkit.core import stats
from clipkit.evaluate import choice_scores, choose, encode_images, encode_texts

PROBES_DIR = Path(__file__).resolve().parents[2] / "probes"  # the repo's probes/ (specs)
FAMILIES: dict[str, Callable] = {}   # family name -> items(spec) function; filled by the family modules
OPTIONS: dict[str, dict] = {}        # family name -> {option: (type, default)} it accepts


class SpecError(ValueError):
    """A probe spec is malformed: unknown key, wrong type, missing file."""


@dataclass
class Item:
    """One probe question: an image, candidate captions, the index of the true one, and its factors."""
    image: Image.Image
    captions: list[str]
    answer: int
    factors: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeSpec:
    """What to ask: the family, how many items, the seed, family options, the factors to report."""
    name: str
    family: str
    n: int = 200
    seed: int = 0
    options: dict = field(default_factory=dict)
    breakdowns: list = field(default_factory=list)
    description: str = ""


BASE_KEYS = {"name": str, "family": str, "n": int, "seed": int, "options": dict, "breakdowns": list,
             "description": str}


def register(family: str, options: dict[str, tuple[type, Any]]):
    """Decorator: register `items(spec)` for a family, with the options (type, default) it accepts."""
    def deco(fn):
        FAMILIES[family], OPTIONS[family] = fn, options
        return fn
    return deco


def validate(d: dict, source: str = "spec") -> ProbeSpec:
    """A ProbeSpec from a dict, with errors that name the key, the expected type and the choices."""
    _load_families()
    if not isinstance(d, dict):
        raise SpecError(f"{source}: a probe spec is a mapping of keys, got {type(d).__name__}")
    unknown = sorted(set(d) - set(BASE_KEYS))
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(BASE_KEYS)}")
    for key in ("name", "family"):
        if key not in d:
            raise SpecError(f"{source}: missing required key {key!r}")
    for key, typ in BASE_KEYS.items():
        if key in d and not (isinstance(d[key], typ) and not (typ is int and isinstance(d[key], bool))):
            raise SpecError(f"{source}: {key!r} must be {typ.__name__}, got {d[key]!r}")
    if d["family"] not in FAMILIES:
        raise SpecError(f"{source}: unknown family {d['family']!r}; known: {sorted(FAMILIES)}")
    if d.get("n", 1) < 1:
        raise SpecError(f"{source}: 'n' must be >= 1, got {d['n']}")
    opts, allowed = dict(d.get("options", {})), OPTIONS[d["family"]]
    bad = sorted(set(opts) - set(allowed))
    if bad:
        raise SpecError(f"{source}: unknown option(s) {bad} for family {d['family']!r}; allowed: {sorted(allowed)}")
    for k, (typ, default) in allowed.items():
        opts.setdefault(k, default)
        ok_types = (int, float) if typ is float else typ   # YAML writes 1 for 1.0
        if opts[k] is not None and (not isinstance(opts[k], ok_types) or isinstance(opts[k], bool) is not (typ is bool)):
            raise SpecError(f"{source}: option {k!r} must be {getattr(typ, '__name__', typ)}, got {opts[k]!r}")
    return ProbeSpec(**{**d, "options": opts})


def read_spec(spec, source_default: str = "spec") -> tuple[dict, str]:
    """(mapping, source) from a dict, a YAML path, or a name in probes/ ('counting' -> probes/counting.yaml)."""
    if isinstance(spec, dict):
        return dict(spec), source_default
    path = Path(spec)
    if not path.suffix:
        path = PROBES_DIR / f"{spec}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROBES_DIR.glob("*.yaml"))
        raise SpecError(f"probe spec {spec!r} not found at {path}; specs in {PROBES_DIR}: {known}")
    try:
        return yaml.safe_load(path.read_text()), str(path)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e


def load_spec(spec: str | Path | dict, **overrides) -> ProbeSpec:
    """A validated spec from a dict, a YAML path, or a name in probes/ ('counting' -> probes/counting.yaml).

    Keyword overrides replace top-level keys (n=..., seed=...); options=... is merged.
    """
    d, source = read_spec(spec)
    if not isinstance(d, dict):
        raise SpecError(f"{source}: a probe spec is a mapping of keys, got {type(d).__name__}")
    opts = overrides.pop("options", None)
    d.update({k: v for k, v in overrides.items() if v is not None})
    if opts:
        d["options"] = {**d.get("options", {}), **opts}
    return validate(d, source)


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
        from clipkit.core.files import atomic_write_json, atomic_write_text
        out = Path(out_dir)
        atomic_write_text(out / f"{self.spec.name}.csv", self.table.to_csv(index=False))
        record = {"dataset": f"probe:{self.spec.name}", "model": self.model, "task": "image_caption_selection",
                  "metrics": _jsonable(self.summary),
                  "breakdowns": {f: _jsonable(df.to_dict("records")) for f, df in self.breakdowns.items()},
                  "spec": _jsonable(self.spec.__dict__), "language": "en"}
        return atomic_write_json(out / f"{self.spec.name}.json", record)


def run_probe(spec, model, preprocess, tokenizer, model_name: str = "", items: list[Item] | None = None,
              batch_size: int = 256) -> ProbeResult:
    """Run a probe spec (name, path, dict or ProbeSpec) on a loaded model; see the module docstring."""
    spec = spec if isinstance(spec, ProbeSpec) else load_spec(spec)
    items = items if items is not None else FAMILIES[spec.family](spec)
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
    summary = {"probe": spec.name, "family": spec.family, "model": model_name,
               **stats.accuracy_summary(table["credit"], table["chance"], seed=spec.seed)}
    breakdowns = {f: stats.by_factor(table, f, correct="credit") for f in spec.breakdowns if f in table}
    return ProbeResult(spec, model_name, table, summary, breakdowns, items)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _load_families():
    # importing the family modules registers them (kept lazy to avoid an import cycle)
    from clipkit.probes import binding, counting, jsonl, spatial  # noqa: F401
