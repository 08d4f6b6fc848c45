"""Every recorded metric as tidy rows (reports/results.csv) and the dashboard's compact models x probes matrix.

Both read the index's summary.json shape: {"probes": [notebook stems], "models": [{"model", "slug", "probes":
{stem: {"status", "html", "ipynb", "failed_notebook", "metrics": {record name: flat metrics}}}}]}.

A record's flat metrics follow one convention (probes, benchmarks, analyses):

    accuracy, ci_low, ci_high, chance, n         the headline (its name in `metric` when that is a string)
    <key>, <key>_ci_low, _ci_high, _chance, _n   any other number and its interval (<p>accuracy -> <p>ci_low...)
    <metric>[<factor>=<level>]                   a breakdown (subset = the level for factor `subset`, else
                                                 "factor=level"); its interval as <metric>[...]_ci_low ...

so one row is (model, probe = the record's name, subset, metric, value, ci_low, ci_high, chance, n), with
empty cells where a number has no interval. Nothing here imports pandas or torch.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from pathlib import Path
from urllib.parse import quote

from clipkit.core.files import atomic_write_text

COLUMNS = ["model", "probe", "subset", "metric", "value", "ci_low", "ci_high", "chance", "n"]
SIBLINGS = ("ci_low", "ci_high", "chance", "n")
HEADLINE = ("accuracy", *SIBLINGS)
_BREAKDOWN = re.compile(r"^(?P<metric>[^\[\]]+)\[(?P<factor>[^=\]]+)=(?P<level>[^\]]*)\]$")
_ALIASES = {"acc": "accuracy"}   # the caption-choice engine writes acc[factor=level]
_PREFIXES = ("probe_", "analysis_", "benchmark_")   # dropped from column heads (the full name is the tooltip)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _siblings(key: str) -> list[str]:
    """The names an interval of `key` may have: `<key>_ci_low`..., and `<p>ci_low`... for `<p>accuracy`."""
    out = [f"{key}_{s}" for s in SIBLINGS]
    if key.endswith("accuracy") and key != "accuracy":
        out += [f"{key[:-len('accuracy')]}{s}" for s in SIBLINGS]
    return out


def metric_rows(metrics: dict) -> list[dict]:
    """(subset, metric, value, ci_low, ci_high, chance, n) rows of one record's flat metrics (module docstring)."""
    nums = {k: v for k, v in metrics.items() if _num(v)}
    rows, used = [], set()
    if "accuracy" in nums:
        name = metrics.get("metric") if isinstance(metrics.get("metric"), str) else "accuracy"
        rows.append({"subset": "all", "metric": name, "value": nums["accuracy"],
                     **{s: nums.get(s) for s in SIBLINGS}})
        used |= set(HEADLINE)
    for key in nums:   # claim every interval first, so that `x_ci_low` never becomes a row of its own
        if key not in used:
            for sib in _siblings(key):
                if sib in nums and sib != key:
                    used.add(sib)
    for key, value in nums.items():
        if key in used:
            continue
        found = {}
        for sib in _siblings(key):
            suffix = next(s for s in SIBLINGS if sib.endswith(s))
            if sib in nums and sib != key:
                found.setdefault(suffix, nums[sib])
        m = _BREAKDOWN.match(key)
        if m:
            metric = _ALIASES.get(m["metric"], m["metric"])
            subset = m["level"] if m["factor"] == "subset" else f"{m['factor']}={m['level']}"
        else:
            metric, subset = key, "all"
        rows.append({"subset": subset, "metric": metric, "value": value, **{s: found.get(s) for s in SIBLINGS}})
    return rows


def results_rows(summary: dict) -> list[dict]:
    """Every record of every model in `summary` (the index's summary.json) as tidy rows (COLUMNS)."""
    rows = []
    for r in summary.get("models", []):
        for stem in _stems(summary, r):
            for name, metrics in (r["probes"][stem].get("metrics") or {}).items():
                rows += [{"model": r["model"], "probe": name, **row} for row in metric_rows(metrics or {})]
    return rows


def write_results_csv(out_root="reports", summary: dict | None = None) -> Path:
    """Write `out_root/results.csv` (COLUMNS; empty cells where a number has no interval) from `summary`, or
    from `out_root/summary.json` when not given (written by build_index). Returns the path."""
    root = Path(out_root)
    if summary is None:
        path = root / "summary.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: build the index first (clipkit.report.index.build_index)")
        summary = json.loads(path.read_text())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(results_rows(summary))
    return atomic_write_text(root / "results.csv", buf.getvalue())


# --- the matrix -------------------------------------------------------------------------------------------------
def anchor(slug: str) -> str:
    """The id of a model's detail section on the index page (what a matrix row links to)."""
    return "model-" + re.sub(r"[^A-Za-z0-9_-]", "_", slug)


def _stems(summary: dict, r: dict) -> list[str]:
    order = list(summary.get("probes") or [])
    return [s for s in order if s in r["probes"]] + sorted(s for s in r["probes"] if s not in order)


def matrix_columns(summary: dict) -> list[tuple[str, str]]:
    """(notebook stem, record name) per column: the notebooks in the summary's order, each record within
    (a notebook may record several, e.g. one per benchmark); a notebook with no record yet is one column."""
    cols = {}
    for r in summary.get("models", []):
        for stem in _stems(summary, r):
            names = list(r["probes"][stem].get("metrics") or {}) or [stem]
            for name in names:
                cols.setdefault((stem, name), None)
    stems = list(dict.fromkeys([*(summary.get("probes") or []), *(s for s, _ in cols)]))
    return sorted(cols, key=lambda c: stems.index(c[0]))


def short_name(name: str, width: int = 14) -> str:
    """A column head: the record name without its probe_/analysis_/benchmark_ prefix, cut to `width`."""
    for p in _PREFIXES:
        if name.startswith(p) and len(name) > len(p):
            name = name[len(p):]
            break
    return name if len(name) <= width else name[:width - 1] + "…"


def verdict_class(m: dict) -> str:
    """above / at / below (the record's verdict, else its CI against chance), or "nochance" when it has neither."""
    v = m.get("verdict")
    if isinstance(v, str) and v.split()[0] in ("above", "at", "below"):
        return v.split()[0]
    if all(_num(m.get(k)) for k in ("ci_low", "ci_high", "chance")):
        return "above" if m["ci_low"] > m["chance"] else "below" if m["ci_high"] < m["chance"] else "at"
    return "nochance"


def _fmt(v) -> str:
    return "?" if not _num(v) else str(v) if isinstance(v, int) else f"{v:.3f}"


def _cell(stem: str, name: str, p: dict | None, slug: str) -> str:
    esc = html.escape
    if p is None:
        return '<td class=none title="not run">&middot;</td>'
    m = (p.get("metrics") or {}).get(name)
    failed = p.get("status") == "failed"
    # a failed run links to its failed notebook (the traceback), a good one to its page
    target = (p.get("failed_notebook") if failed else None) or p.get("html") or p.get("ipynb")
    href = quote(target) if target else f"#{anchor(slug)}"
    if not isinstance(m, dict) or not _num(m.get("accuracy")):
        label, cls = ("&times;", "failed") if failed else ("&ndash;", "nochance")
        tip = f"{name}: {'FAILED: ' + (p.get('error') or 'unknown error').splitlines()[0] if failed else 'no accuracy recorded'}"
        return f'<td class={cls} title="{esc(tip)}"><a href="{esc(href)}">{label}</a></td>'
    cls = verdict_class(m) + (" stale" if failed else "")
    ci = (f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]" if _num(m.get("ci_low")) and _num(m.get("ci_high"))
          else "(no CI recorded)")
    tip = (f"{name}: {_fmt(m['accuracy'])} {ci} · chance "
           f"{_fmt(m.get('chance'))} · n={_fmt(m.get('n'))}" + (f" · {m['verdict']}" if isinstance(m.get("verdict"), str)
                                                               else "") + (" · last run FAILED" if failed else ""))
    return f'<td class="{cls}" title="{esc(tip)}"><a href="{esc(href)}">{round(100 * m["accuracy"])}</a></td>'


MATRIX_CSS = """table.mx{table-layout:fixed;width:100%;border-collapse:collapse;margin-bottom:1em}
table.mx th,table.mx td{border:1px solid #fff;padding:2px 1px;text-align:center;overflow:hidden;font-size:.75em}
table.mx thead th{writing-mode:vertical-rl;transform:rotate(180deg);height:8.5em;white-space:nowrap;
text-overflow:ellipsis;vertical-align:bottom;background:#f4f4f4;font-weight:normal}
table.mx thead th.mh{writing-mode:horizontal-tb;transform:none;width:13em;text-align:left}
table.mx tbody th{text-align:left;overflow-wrap:anywhere;font-weight:normal;background:#f4f4f4}
table.mx td a{display:block;color:inherit;text-decoration:none}
table.mx td.above{background:#9ed9a6}table.mx td.at{background:#e6e6e6}table.mx td.below{background:#f2a7a7}
table.mx td.failed{background:#b00020;color:#fff}table.mx td.nochance{background:#fafafa;color:#777}
table.mx td.none{background:#fff;color:#bbb}table.mx td.stale{outline:2px solid #b00020;outline-offset:-2px}
.mxkey span{display:inline-block;padding:0 .5em;margin-right:.4em}.mxkey .above{background:#9ed9a6}
.mxkey .at{background:#e6e6e6}.mxkey .below{background:#f2a7a7}.mxkey .failed{background:#b00020;color:#fff}"""


def matrix_html(summary: dict) -> str:
    """The compact models x probes matrix as an HTML fragment (its own <style>): one row per model (linking to
    its detail section, `anchor(slug)`), one narrow column per recorded probe (rotated, abbreviated head; the
    full name on hover), each cell the headline accuracy in % coloured by its verdict against chance (green
    above, grey at, red below; red with x: failed) and linking to the probe's notebook. It fits the page
    width at any number of columns: the table's layout is fixed at 100% width and nothing in it scrolls."""
    esc = html.escape
    cols = matrix_columns(summary)
    stems_with_several = {s for s, _ in cols if sum(1 for t, _ in cols if t == s) > 1}
    head = "".join(f'<th title="{esc(name if stem == name else f"{stem}: {name}")}">'
                   f"{esc(short_name(name))}</th>" for stem, name in cols)
    body = []
    for r in summary.get("models", []):
        label = f'<a href="#{anchor(r["slug"])}">{esc(str(r["model"]))}</a>'
        cells = "".join(_cell(stem, name, r["probes"].get(stem), r["slug"]) for stem, name in cols)
        body.append(f'<tr><th title="{esc(str(r["model"]))}">{label}</th>{cells}</tr>')
    note = (f" Columns grouped by notebook ({', '.join(sorted(stems_with_several))} record several)."
            if stems_with_several else "")
    return (f"<style>{MATRIX_CSS}</style><h2>Models &times; probes</h2>"
            f'<p class="meta mxkey">Headline accuracy in %; hover for the 95% CI, chance and n; click a cell for '
            f"its notebook, a model for its details.{esc(note)} <span class=above>above chance</span>"
            f"<span class=at>at chance</span><span class=below>below chance</span>"
            f"<span class=failed>&times; failed</span></p>"
            f'<table class=mx><thead><tr><th class=mh>model</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def model_sections_html(summary: dict, cell) -> str:
    """Each model's details, the target of the matrix's row links: a section with id `anchor(slug)` and one row
    per notebook, its content `cell(stem, probe_entry)` (the index's own cell renderer: numbers, links, status).
    A vertical table per model, so it fits the page at any number of probes."""
    esc, parts = html.escape, []
    for r in summary.get("models", []):
        body = "".join(f'<tr><th>{esc(stem)}</th><td class="{"failed" if p.get("status") == "failed" else ""}">'
                       f"{cell(stem, p)}</td></tr>" for stem in _stems(summary, r) if (p := r["probes"][stem]))
        parts.append(f'<section id="{anchor(r["slug"])}"><h3>{esc(str(r["model"]))}</h3><table>{body}</table>'
                     f"</section>")
    return f"<h2>Details per model</h2>{''.join(parts)}" if parts else ""
