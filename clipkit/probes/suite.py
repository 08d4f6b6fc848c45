"""Probe suites: every published benchmark found under $CLIPKIT_DATA, run for several models, in one table.

A suite is a named tuple of benchmark kinds (SUITES; "failures" = all seven). `run_suite` resolves each
benchmark's files at `<data_root>/<benchmark>/` (data_root: the argument, else $CLIPKIT_DATA), runs the
ones present for every model, and for each absent one keeps a one-line note of what to download and the
layout expected -- the benchmark module's own message (its `read` raising on the missing root), never a
second copy. A benchmark that fails for one model is kept as a failure line; the rest still run.

Written to `out_dir`:

    <model-slug>/<benchmark>.json, .csv                      each probe's own record and per-item table
    <benchmark>_<model-slug>_image_caption_selection.json    CLIP_benchmark-compatible record (acc, ...)
    suite_<name>.json                                        present / absent / failed, models, data root
    suite_<name>.csv                                         tidy: model, benchmark, subset, metric, value,
                                                             ci_low, ci_high, chance, n, verdict, source
    suite_<name>.table.csv                                   models x subsets (the values; CIs in the tidy CSV)

`source` is "item" for the item-level accuracy (overall and per subset) and "authors" for the authors' own
headline metrics (ARO macro accuracies, What'sUp pair / set, VALSE average pairwise, MMVP pattern average).
"""
from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from clipkit.core.paths import slugify
from clipkit.core.records import result_record, write_record, write_result
from clipkit.probes.benchmarks import BENCHMARKS
from clipkit.probes.benchmarks.common import TASK, BenchmarkResult
from clipkit.probes.benchmarks.files import DATA_ENV, BenchmarkDataError
from clipkit.probes.protocol import KINDS, load_spec, run_any

log = logging.getLogger("clipkit.probes.suite")
SUITES = {"failures": BENCHMARKS}   # suite name -> the benchmark kinds it runs, in table order
COLUMNS = ["model", "benchmark", "subset", "metric", "value", "ci_low", "ci_high", "chance", "n", "verdict", "source"]
# CLIP_benchmark's image_caption_selection metric names (its metrics/image_caption_selection.py `evaluate`):
# acc is the headline; Winoground's text / image scores are its text_acc / image_acc
CLIP_BENCHMARK_KEYS = {"text_score": "text_acc", "image_score": "image_acc"}


def _default_loader(spec: str, device: str = "cpu"):
    from clipkit.models import load_model
    return load_model(spec, device=device)


@dataclass
class SuiteResult:
    """What a suite run found and produced: results[model][benchmark], the absent benchmarks' notes, the
    failures (model -> benchmark -> one line), the tidy table and the files written."""
    name: str
    models: list[str]
    data_root: str | None
    results: dict[str, dict[str, BenchmarkResult]] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS))
    paths: list[Path] = field(default_factory=list)

    @property
    def present(self) -> list[str]:
        """The benchmarks whose folder was found, in suite order."""
        return [b for b in SUITES[self.name] if b not in self.absent]

    def wide(self) -> pd.DataFrame:
        """Models x subsets: one row per model, one column per `benchmark/subset:metric` (values only)."""
        if self.table.empty:
            return pd.DataFrame(index=pd.Index(self.models, name="model"))
        t = self.table.assign(column=self.table["benchmark"] + "/" + self.table["subset"] + ":" + self.table["metric"])
        order = list(dict.fromkeys(t["column"]))
        return t.pivot_table(index="model", columns="column", values="value", sort=False).reindex(
            index=[m for m in self.models if m in set(t["model"])], columns=order)

    def status_line(self) -> str:
        """One line: which benchmarks ran and which are absent (what to download: `notes`)."""
        where = self.data_root or f"nowhere (${DATA_ENV} is not set)"
        line = f"suite {self.name} under {where}: present {', '.join(self.present) or 'none'}"
        if self.absent:
            line += f"; absent {', '.join(self.absent)} (each needs <data>/<benchmark>/ as its authors publish it)"
        return line

    def overview(self) -> dict:
        """A flat record of the run for record_metrics: counts, the benchmark lists and the notes."""
        return {"present": len(self.present), "absent": len(self.absent),
                "failed": sum(len(v) for v in self.failed.values()), "present_benchmarks": ",".join(self.present),
                "absent_benchmarks": ",".join(self.absent), "data_root": self.data_root, "status": self.status_line(),
                "notes": self.notes()}

    def notes(self) -> list[str]:
        """One line per absent benchmark (what to download, the layout) and per failure."""
        out = [f"absent: {msg}" for msg in self.absent.values()]
        out += [f"failed: {m} on {b}: {msg}" for m, fails in self.failed.items() for b, msg in fails.items()]
        return out

    def paper_table(self) -> pd.DataFrame:
        """The paper-style table: one row per (benchmark, subset, metric) with its source, chance and n (in %
        and items, from the first model), then one column per model holding `value [ci_low, ci_high]` in %."""
        keys = ["benchmark", "subset", "metric"]
        if self.table.empty:
            return pd.DataFrame(columns=[*keys, "source", "chance", "n", *self.models]).set_index(keys)
        t = self.table.assign(cell=[f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for v, lo, hi in
                                    zip(self.table["value"], self.table["ci_low"], self.table["ci_high"])])
        first = t.drop_duplicates(keys).set_index(keys)[["source", "chance", "n"]]
        cells = t.pivot_table(index=keys, columns="model", values="cell", aggfunc="first", sort=False)
        out = first.join(cells).assign(chance=lambda d: (100 * d["chance"]).round(1))
        return out[["source", "chance", "n", *[m for m in self.models if m in out]]].fillna("-")

    def pretty(self) -> str:
        """The paper-style table as text, then one line per absent benchmark and per failure."""
        table = "" if self.table.empty else self.paper_table().to_string()
        return "\n".join([table, *self.notes()] if table else self.notes()) or f"suite {self.name}: nothing ran"


def benchmark_rows(model: str, res: BenchmarkResult) -> list[dict]:
    """The tidy rows of one result: each metric overall (subset "all") and per subset (source "item"), then
    the authors' aggregate metrics (source "authors"; a key `<subset>_<metric>` is split into the two)."""
    def row(subset, metric, s, source):
        return {"model": model, "benchmark": res.benchmark, "subset": str(subset), "metric": metric,
                "value": s["accuracy"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "chance": s["chance"],
                "n": s["n"], "verdict": s.get("verdict"), "source": source}
    summ, rows = res.summary, []
    by_subset = res.breakdowns.get("subset", pd.DataFrame(columns=["subset", "metric"]))
    for m in dict.fromkeys(by_subset["metric"].tolist() or [summ["metric"]]):
        s = summ if m == summ["metric"] else {"accuracy": summ[m], "ci_low": summ[f"{m}_ci_low"],
                                               "ci_high": summ[f"{m}_ci_high"], "chance": summ[f"{m}_chance"],
                                               "n": summ["n"], "verdict": summ.get(f"{m}_verdict")}
        rows.append(row("all", m, s, "item"))
    if by_subset["subset"].nunique() > 1:   # one subset (Winoground's examples) is the "all" row again
        rows += [row(r["subset"], r["metric"], r, "item") for r in by_subset.to_dict("records")]
    subsets = sorted(set(by_subset["subset"].astype(str)), key=len, reverse=True)   # longest prefix first
    for key, s in res.published.items():
        sub = next((x for x in subsets if key.startswith(f"{x}_")), None)
        rows.append(row(sub or "all", key[len(sub) + 1:] if sub else key, s, "authors"))
    return rows


def benchmark_metrics(res: BenchmarkResult) -> dict:
    """A flat dict for record_metrics: the result's metrics() plus, per subset, each metric's CI, chance and n
    as `<metric>[subset=<s>]_ci_low` (..._ci_high, _chance, _n) beside its value `<metric>[subset=<s>]`."""
    flat = res.metrics()
    for r in res.breakdowns.get("subset", pd.DataFrame()).to_dict("records"):
        key = f"{r['metric']}[subset={r['subset']}]"
        flat.update({key: r["accuracy"], **{f"{key}_{k}": r[k] for k in ("ci_low", "ci_high", "chance", "n")}})
    return flat


def absent_note(benchmark: str, root) -> str:
    """The benchmark module's own message for a missing root (files expected, where they are published)."""
    mod = importlib.import_module(f"clipkit.probes.benchmarks.{benchmark}")
    try:
        mod.read(KINDS[benchmark].options_cls(root=None if root is None else str(root)))
    except BenchmarkDataError as e:
        return str(e)
    return f"{benchmark}: {root} is readable after all"   # a folder appeared meanwhile


def run_suite(name: str, models: list[str], out_dir, data_root=None, device: str = "cpu",
              load_model: Callable = _default_loader, n: int | None = None, progress: bool = False) -> SuiteResult:
    """Run suite `name` for every model spec on each benchmark present under `data_root` (None: $CLIPKIT_DATA;
    "": none, every benchmark absent) and write the files listed in the module docstring into `out_dir`. `n` caps the items read
    per subset (None: every item). `load_model(spec, device=)` returns (model, preprocess, tokenizer)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {sorted(SUITES)}")
    models = list(dict.fromkeys(models or []))
    if not models:
        raise ValueError("run_suite needs at least one model spec (e.g. --model clipkit-tiny)")
    slugs = {}
    for m in models:
        if (other := slugs.setdefault(slugify(m), m)) != m:
            raise ValueError(f"model specs {other!r} and {m!r} share the output folder {slugify(m)!r}")
    data_root = os.environ.get(DATA_ENV) if data_root is None else data_root   # "": no data at all
    root = Path(data_root).expanduser() if data_root else None
    out = Path(out_dir)
    res = SuiteResult(name, models, str(root) if root else None)
    for b in SUITES[name]:
        if root is None or not (root / b).is_dir():
            res.absent[b] = absent_note(b, root / b if root else None)
    rows = []
    for m in models if res.present else []:
        try:
            model, preprocess, tokenizer = load_model(m, device=device)
        except Exception as e:  # noqa: BLE001  one model that cannot load must not cost the others their results
            res.failed[m] = {b: f"model did not load: {_line(e)}" for b in res.present}
            continue
        for b in res.present:
            try:
                spec = load_spec(b, n=n, options={"root": str(root / b)})
                r = run_any(spec, model, preprocess, tokenizer, model_name=m)
            except Exception as e:  # noqa: BLE001  a failing benchmark is reported, never the end of the suite
                log.warning("suite %s: %s failed for %s: %s", name, b, m, _line(e))
                res.failed.setdefault(m, {})[b] = _line(e)
                continue
            res.results.setdefault(m, {})[b] = r
            rows += benchmark_rows(m, r)
            res.paths.append(r.save(out / slugify(m)))
            res.paths.append(write_result(result_record(b, m, TASK, clip_benchmark_metrics(r), config={
                "benchmark": b, "options": r.options}), out))
    res.table = pd.DataFrame(rows, columns=COLUMNS)
    record = {"suite": name, "models": models, "data_root": res.data_root, "present": res.present,
              "absent": res.absent, "failed": res.failed}
    res.paths.append(write_record(out, f"suite_{name}", record, res.table, tables={"table": res.wide().reset_index()}))
    return res


def clip_benchmark_metrics(res: BenchmarkResult) -> dict:
    """The result's flat metrics plus CLIP_benchmark's names for them: `acc` (the headline) and, for
    Winoground, `text_acc` / `image_acc`."""
    flat = benchmark_metrics(res)
    flat["acc"] = res.summary["accuracy"]
    flat.update({new: res.summary[old] for old, new in CLIP_BENCHMARK_KEYS.items() if old in res.summary})
    return flat


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def worst_items(res: BenchmarkResult, k: int = 12) -> tuple[list, list[str]]:
    """(images, titles) of up to `k` wrong items, most confidently wrong first (lowest margin where the table
    has one), re-read from the benchmark's files with the run's options: the failure grid."""
    mod = importlib.import_module(f"clipkit.probes.benchmarks.{res.benchmark}")
    col = mod.METRICS[0].column
    t = res.table[~res.table[col].astype(bool)]
    t = t.sort_values("margin", kind="stable") if "margin" in t else t
    t = t.head(k)
    if t.empty:
        return [], []
    opts = KINDS[res.benchmark].options_cls(**res.options)
    items = {(it.subset, it.id): it for it in mod.read(opts)}
    images, titles = [], []
    for r in t.to_dict("records"):
        it = items.get((r["subset"], str(r["id"])))
        if it is None:
            continue
        try:
            images.append(it.images[0].open())
        except ValueError:   # unreadable since the run: leave it out of the grid
            continue
        good = r.get("true_caption", it.captions[0])
        bad = r.get("chosen_caption", it.captions[1] if len(it.captions) > 1 else "")
        titles.append(f"{r['subset']} #{r['id']}\n+ {good}\n- {bad}")
    return images, titles
