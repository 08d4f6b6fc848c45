"""The shared engine of the published benchmarks: items -> distinct images and captions encoded once -> per-item
image x caption score matrices -> the authors' scorer -> a tidy table, a summary with chance, n and CI, a record.

Each benchmark module (sugarcrepe, aro, whatsup, winoground, valse, countbench, mmvp) reads its files exactly as
published into `BenchItem`s and scores the matrices with a pure function that follows its authors' code. This
module owns what they share:

* `ImageRef` / `BenchItem`: an item's images (a file, or encoded bytes from a parquet file, with an optional crop
  box), its captions in the authors' order, and its cluster (the image or pair that items share: intervals
  resample clusters, not items, where the statistics module supports it).
* `score_items`: every distinct (image, crop) is decoded once through `safe_open_image` and encoded through
  `extract_image_features` (on-disk cache, sharded across torchrun ranks); every distinct caption is encoded
  once. Unreadable or missing images are skipped and counted; past `max_bad_fraction` the run stops naming the
  first bad file (and `on_bad="raise"` stops at the first).
* `BenchmarkResult`: summary / table / metrics() / save(), with the breakdown by subset in the JSON record.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipkit.core.records import result_record, write_record
from clipkit.data.images import BadImageError, safe_open_image
from clipkit.probes.benchmarks.files import (  # noqa: F401  (re-exported to the benchmark modules)
    DATA_ENV,
    BenchmarkDataError,
    image_bytes,
    limited,
    read_json,
    read_parquet,
    require_keys,
    require_root,
)

log = logging.getLogger("clipkit.probes.benchmarks")
TASK = "image_caption_selection"  # CLIP_benchmark's task name for caption choice (REFERENCE.md, record format)


@dataclass
class BenchmarkOptions:
    """Options every benchmark takes; each module's `Options` adds its own (subsets, extra roots)."""
    root: str | None = None               # folder holding the annotation files exactly as the authors publish them
    image_root: str | None = None         # the images; None: where the authors' own code expects them (see module)
    subsets: str | list | None = None     # subset names (file stems), a list or comma-separated; None: every one present
    limit: int | None = None              # read at most this many items per subset (smoke runs); None: all
    max_bad_fraction: float = 0.05        # stop when more than this share of distinct images cannot be read
    on_bad: str = "skip"                  # "skip": skip and count unreadable images; "raise": stop at the first
    batch_size: int = 256                 # images per forward pass
    num_workers: int = 0                  # DataLoader workers decoding images

    def __post_init__(self):
        if self.on_bad not in ("skip", "raise"):
            raise BenchmarkDataError(f"on_bad must be 'skip' or 'raise', got {self.on_bad!r}")
        if not 0 <= float(self.max_bad_fraction) <= 1:
            raise BenchmarkDataError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction!r}")
        if self.limit is not None and self.limit < 1:
            raise BenchmarkDataError(f"limit must be >= 1 (or unset for all items), got {self.limit!r}")

    def subset_list(self, published: tuple[str, ...], aliases: dict[str, str] | None = None) -> list[str] | None:
        """The requested subsets in published order (None: not restricted); unknown names are an error."""
        if not self.subsets:
            return None
        aliases = aliases or {}
        names = self.subsets if isinstance(self.subsets, list) else str(self.subsets).split(",")
        want = [aliases.get(str(s).strip(), str(s).strip()) for s in names if str(s).strip()]
        bad = [s for s in want if s not in published]
        if bad:
            raise BenchmarkDataError(f"unknown subset(s) {bad}; published subsets: {list(published)}")
        return [s for s in published if s in want]


@dataclass(frozen=True)
class ImageRef:
    """One image to encode: a file path or encoded bytes, optionally cropped to box = (x0, y0, x1, y1)."""
    path: str | None = None
    box: tuple[float, float, float, float] | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)
    digest: str | None = None             # sha1 of `data` (identity of an in-memory image)

    @staticmethod
    def from_bytes(data: bytes, box=None) -> ImageRef:
        """An in-memory image (e.g. a parquet cell), identified by the hash of its bytes."""
        return ImageRef(None, box, bytes(data), hashlib.sha1(bytes(data)).hexdigest())

    @property
    def key(self) -> str:
        """Identity used to encode each distinct (image, crop) once and to cluster items."""
        base = self.path if self.path is not None else f"bytes:{self.digest}"
        return base if self.box is None else f"{base}@{','.join(f'{v:g}' for v in self.box)}"

    @property
    def source(self) -> str:
        """The file (or bytes hash) this image comes from, for messages and clusters."""
        return self.path if self.path is not None else f"<bytes sha1 {self.digest}>"

    def open(self):
        """The decoded RGB image (cropped to the box); raises BadImageError naming the file and reason."""
        img = safe_open_image(self.path if self.path is not None else self.data)
        # PIL's crop pads with black outside the image, as the ARO authors' Image.crop call does
        return img.crop(tuple(self.box)) if self.box is not None else img


@dataclass
class BenchItem:
    """One question: its subset (annotation file stem), the benchmark's own id, images, captions in the
    authors' order, the answer structure (an index, or None where the layout itself is the answer, as in
    Winoground's 2x2), the cluster it shares with other items, and the factors reported per item."""
    subset: str
    id: str
    images: list[ImageRef]
    captions: list[str]
    answer: Any = 0
    cluster: str = ""
    factors: dict = field(default_factory=dict)


class _RefDataset:
    """Distinct image references as a cacheable dataset of (preprocessed image, index) for extract_image_features.

    A map-style dataset (__len__ and __getitem__: all a DataLoader asks of one), not a subclass of torch's
    Dataset, so that reading a benchmark spec imports no torch."""

    def __init__(self, refs: list[ImageRef], transform: Callable, name: str):
        self.refs, self.transform, self.name = refs, transform, name
        h = hashlib.sha256()
        for r in refs:  # ordered: the cache entry's rows follow this order
            try:
                st = os.stat(r.path) if r.path is not None else None
                stamp = f"{st.st_size}:{st.st_mtime_ns}" if st else "bytes"
            except OSError:
                stamp = "missing"
            h.update(f"{r.key}\0{stamp}\n".encode())
        self.fingerprint = f"{name}-{h.hexdigest()[:20]}"

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        return self.transform(self.refs[i].open()), i   # BadImageError (a ValueError) -> skipped, counted


@dataclass
class Scored:
    """Items that could be scored, their score matrices, and the accounting of what could not."""
    items: list[BenchItem]
    scores: list[np.ndarray]         # per item (n_images, n_captions) cosine similarities
    blind: list[np.ndarray]          # the same with every image replaced by the mean image (caption-only control)
    bad_images: int                  # distinct images that could not be read
    n_images: int                    # distinct images asked for
    skipped_items: int               # items dropped because one of their images could not be read
    first_bad: str | None            # the first unreadable image and why
    from_cache: bool = False         # image features served from the on-disk cache


def score_items(items: list[BenchItem], model, preprocess, tokenizer, name: str, max_bad_fraction: float = 0.05,
                on_bad: str = "skip", cache=True, batch_size: int = 256, num_workers: int = 0,
                progress: bool = False) -> Scored:
    """Encode each distinct image and caption once and return every readable item's score matrix."""
    if not items:
        raise BenchmarkDataError(f"{name}: no items to score")
    refs, where = [], {}
    for it in items:
        for r in it.images:
            if r.key not in where:
                where[r.key] = len(refs)
                refs.append(r)
    if on_bad == "raise":  # decode up front so the first bad file stops the run before any encoding
        for r in refs:
            try:
                r.open()
            except BadImageError as e:
                raise BenchmarkDataError(f"{name}: unreadable image (on_bad='raise'): {e}") from e
    from clipkit.evaluate.features import encode_texts, extract_image_features   # torch: only once scoring
    feats = extract_image_features(model, _RefDataset(refs, preprocess, name), batch_size=batch_size,
                                   num_workers=num_workers, cache=cache, progress=progress, name=name)
    row = {int(i): j for j, i in enumerate(feats.index.tolist())}
    bad = [i for i in range(len(refs)) if i not in row]
    first_bad = None
    if bad:
        try:
            refs[bad[0]].open()
            first_bad = f"{refs[bad[0]].source}: could not be read"
        except BadImageError as e:
            first_bad = str(e)
        log.warning("%s: %d of %d images could not be read and were skipped; first: %s", name, len(bad),
                    len(refs), first_bad)
        if len(bad) > max_bad_fraction * len(refs):
            raise BenchmarkDataError(f"{name}: {len(bad)} of {len(refs)} images could not be read (more than "
                                     f"max_bad_fraction={max_bad_fraction}); first: {first_bad}")
    img = feats.features.numpy()                                                   # (N_img, d)
    mean_img = img.mean(0)
    mean_img = mean_img / max(np.linalg.norm(mean_img), 1e-12)
    captions = list(dict.fromkeys(c for it in items for c in it.captions))
    txt = encode_texts(model, tokenizer, captions).numpy()                          # (N_txt, d)
    cap = {c: j for j, c in enumerate(captions)}
    kept, scores, blind = [], [], []
    for it in items:
        rows = [row.get(where[r.key]) for r in it.images]
        if any(r is None for r in rows):
            continue
        t = txt[[cap[c] for c in it.captions]]                                      # (K, d)
        kept.append(it)
        scores.append(img[rows] @ t.T)                                              # (n_images, K)
        blind.append(np.tile(mean_img @ t.T, (len(rows), 1)))
    if not kept:
        raise BenchmarkDataError(f"{name}: no item could be scored (every item has an unreadable image); "
                                 f"first: {first_bad}")
    return Scored(kept, scores, blind, len(bad), len(refs), len(items) - len(kept), first_bad, feats.from_cache)


# --- statistics ------------------------------------------------------------------------------------------------
def accuracy(correct, chance, clusters=None, seed: int = 0) -> dict:
    """stats.accuracy_summary, cluster-aware when the statistics module takes `clusters=` (it is being added;
    until then the interval is the item-level one, and `ci_clusters` says which was used)."""
    from clipkit.core import stats   # scipy (~1 s): here, so that reading specs does not load it
    if clusters is not None and "clusters" in inspect.signature(stats.accuracy_summary).parameters:
        return {**stats.accuracy_summary(correct, chance, seed=seed, clusters=list(clusters)), "ci_clusters": True}
    return {**stats.accuracy_summary(correct, chance, seed=seed), "ci_clusters": False}


def macro_summary(correct, groups, chance: float, seed: int = 0, n_boot: int | None = None) -> dict:
    """Macro accuracy (the mean of per-group accuracies, as ARO and VALSE report) with a stratified bootstrap
    95% CI (items resampled within each group, so every group keeps its size) and the verdict against chance.
    A percentile bootstrap collapses when every item is right (REFERENCE.md, statistics), so with one group
    this is `accuracy` (exact interval) instead; `ci_method` says which."""
    from clipkit.core import stats   # scipy (~1 s): here, so that reading specs does not load it
    n_boot = stats.N_BOOT if n_boot is None else n_boot
    c = np.asarray(correct, dtype=np.float64)
    g = np.asarray(groups)
    levels = list(dict.fromkeys(g.tolist()))
    if len(levels) <= 1:
        return {**accuracy(c, chance, seed=seed), "n_groups": len(levels), "ci_method": "exact"}
    parts = [c[g == lv] for lv in levels]
    value = float(np.mean([p.mean() for p in parts]))
    rng = np.random.default_rng(seed)
    boots = np.mean([p[rng.integers(0, p.size, size=(n_boot, p.size))].mean(1) for p in parts], axis=0)
    lo, hi = float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))
    verdict = "above chance" if lo > chance else "below chance" if hi < chance else "at chance"
    return {"accuracy": value, "ci_low": lo, "ci_high": hi, "n": int(c.size), "n_groups": len(levels),
            "chance": float(chance), "verdict": verdict, "ci_method": "stratified bootstrap"}


@dataclass
class Metric:
    """A per-item score the benchmark reports: its name, the boolean table column, and its chance level."""
    name: str
    column: str
    chance: float | str          # a number, or the name of a table column holding each item's chance


def summarise(table: pd.DataFrame, metrics: list[Metric], factors: list[str], seed: int = 0
              ) -> tuple[dict, dict[str, pd.DataFrame]]:
    """(summary, breakdowns): the first metric is the headline (accuracy, ci_low, ci_high, chance, n, verdict);
    the others get `<name>`, `<name>_ci_low`, ...; each factor gets a table of every metric per level."""
    def one(df: pd.DataFrame, m: Metric, s: int) -> dict:
        ch = df[m.chance] if isinstance(m.chance, str) else m.chance
        return accuracy(df[m.column].astype(float), ch, clusters=df["cluster"], seed=s)

    summary = {}
    for k, m in enumerate(metrics):
        s = one(table, m, seed)
        if k == 0:
            summary.update({"metric": m.name, **s})
        else:
            summary.update({m.name: s["accuracy"], f"{m.name}_ci_low": s["ci_low"], f"{m.name}_ci_high": s["ci_high"],
                            f"{m.name}_chance": s["chance"], f"{m.name}_verdict": s["verdict"]})
    breakdowns = {}
    for f in factors:
        if f not in table:
            continue
        rows = [{f: level, "metric": m.name, **one(g, m, seed + i)}
                for i, (level, g) in enumerate(table.groupby(f, sort=False)) for m in metrics]
        breakdowns[f] = pd.DataFrame(rows)
    return summary, breakdowns


# --- results ---------------------------------------------------------------------------------------------------
@dataclass
class BenchmarkResult:
    """A benchmark run: the tidy per-item table (`subset`, `id`, `cluster`, scores), the flat summary, the
    breakdowns (always by `subset`), the authors' own aggregate metrics, and the accounting of skipped images."""
    name: str
    benchmark: str
    model: str
    table: pd.DataFrame
    summary: dict
    breakdowns: dict[str, pd.DataFrame]
    published: dict[str, dict]                 # the authors' headline numbers (macro, pair, set...) with CIs
    options: dict
    skipped: dict

    def metrics(self) -> dict:
        """A flat dict: the summary, the authors' metrics as `<name>` (+ `_ci_low`/`_ci_high`), and per-level
        values as `<metric>[<factor>=<level>]`."""
        flat = {k: v for k, v in self.summary.items() if not isinstance(v, (dict, list))}
        for key, s in self.published.items():
            flat.update({key: s["accuracy"], f"{key}_ci_low": s["ci_low"], f"{key}_ci_high": s["ci_high"],
                         f"{key}_chance": s["chance"], f"{key}_n": s["n"]})
        for f, df in self.breakdowns.items():
            for _, r in df.iterrows():
                flat[f"{r['metric']}[{f}={r[f]}]"] = r["accuracy"]
        return flat

    def save(self, out_dir) -> Path:
        """Write `<name>.json` (a CLIP_benchmark-style record with the breakdowns) and `<name>.csv` (the table)."""
        record = result_record(self.name, self.model or "unknown", TASK, self.metrics(),
                               config={"benchmark": self.benchmark, "options": self.options})
        record.update({"summary": self.summary, "published": self.published, "skipped": self.skipped,
                       "breakdowns": {f: df.to_dict("records") for f, df in self.breakdowns.items()}})
        return write_record(out_dir, self.name, record, self.table)


def build_result(name: str, benchmark: str, model_name: str, scored: Scored, rows: list[dict], metrics: list[Metric],
                 factors: list[str], options, published: dict[str, dict] | None = None, seed: int = 0,
                 blind_correct=None) -> BenchmarkResult:
    """Assemble a result from the scorer's per-item rows (each with subset, id, cluster and metric columns)."""
    table = pd.DataFrame(rows)
    summary, breakdowns = summarise(table, metrics, ["subset", *[f for f in factors if f != "subset"]], seed)
    if blind_correct is not None:  # the caption-only control of the headline metric (REFERENCE.md, statistics)
        summary["blind_accuracy"] = float(np.mean(blind_correct))
    summary.update({"benchmark": benchmark, "probe": name, "model": model_name, "skipped_images": scored.bad_images,
                    "skipped_items": scored.skipped_items, "features_from_cache": scored.from_cache})
    skipped = {"images": scored.bad_images, "of_images": scored.n_images, "items": scored.skipped_items,
               "first": scored.first_bad}
    opts = asdict(options) if hasattr(options, "__dataclass_fields__") else dict(options)
    return BenchmarkResult(name, benchmark, model_name, table, summary, breakdowns, published or {}, opts, skipped)


def run_benchmark(benchmark: str, items: list[BenchItem], score_fn: Callable, metrics: list[Metric],
                  factors: list[str], options: BenchmarkOptions, model, preprocess, tokenizer, model_name: str = "",
                  name: str | None = None, seed: int = 0, cache=True, progress: bool = False) -> BenchmarkResult:
    """Score `items` and apply the benchmark's scorer `score_fn(items, scores, seed) -> (rows, published)`, once
    on the real score matrices and once on the caption-only ones (the blind control of the headline metric)."""
    name = name or benchmark
    scored = score_items(items, model, preprocess, tokenizer, name, float(options.max_bad_fraction),
                         options.on_bad, cache, options.batch_size, options.num_workers, progress)
    rows, published = score_fn(scored.items, scored.scores, seed=seed)
    blind_rows, _ = score_fn(scored.items, scored.blind, seed=seed)
    blind = [bool(r[metrics[0].column]) for r in blind_rows]
    return build_result(name, benchmark, model_name, scored, rows, metrics, factors, options, published, seed, blind)


def run_spec(run_fn: Callable, spec, model, preprocess, tokenizer, model_name: str = "") -> BenchmarkResult:
    """A benchmark kind's runner for the probe protocol: the spec's options, name and seed; the spec's n, when
    set, caps the items read per subset (smoke runs; None reads every item)."""
    import dataclasses
    o = spec.options
    if spec.n is not None:
        o = dataclasses.replace(o, limit=min(o.limit or spec.n, spec.n))
    return run_fn(o, model, preprocess, tokenizer, model_name=model_name, name=spec.name, seed=spec.seed)


def register_benchmark(benchmark: str, options_cls: type, run_fn: Callable) -> Callable:
    """Register `run_fn(options, model, preprocess, tokenizer, model_name, name, seed, cache, progress)` as the
    probe kind `benchmark` (clipkit.probes.protocol): the spec's options, name and seed; n: null reads every
    item (the published counts), a number caps the items read per subset. Returns run_fn."""
    from clipkit.probes.protocol import register

    def run_kind(spec, model, preprocess, tokenizer, model_name: str = ""):
        return run_spec(run_fn, spec, model, preprocess, tokenizer, model_name)
    run_kind.__doc__ = f"The runner of probe kind {benchmark!r}: `run` with the spec's options, name and seed."
    register(benchmark, options_cls, run_kind, n_default=None, n_nullable=True)
    return run_fn


def standard_benchmark(benchmark: str, options_cls: type, read_fn: Callable, score_fn: Callable,
                       metrics: list[Metric], factors: list[str]) -> Callable:
    """The `run` of a benchmark that is read -> scored -> summarised with nothing added (run_benchmark),
    registered as a probe kind (register_benchmark); returns it."""
    def run(options, model, preprocess, tokenizer, model_name: str = "", name: str = benchmark, seed: int = 0,
            cache=True, progress: bool = False) -> BenchmarkResult:
        return run_benchmark(benchmark, read_fn(options), score_fn, metrics, factors, options, model, preprocess,
                             tokenizer, model_name, name, seed, cache, progress)
    run.__doc__ = f"Read and score {benchmark} on a loaded model; returns a BenchmarkResult."
    return register_benchmark(benchmark, options_cls, run)
