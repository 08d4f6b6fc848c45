"""reports/index.html and reports/summary.json, rebuilt from what is on disk under reports/.

Model folders (reports/<model-slug>/, each with run.json and *.metrics.json) give the models x
probes table, the key figures and the runs table; reports/experiments/ (training experiments,
not tied to one model) gets its own section. Nothing here imports torch: notebooks import
`clipkit.report` for `record_metrics`. Files are written through clipkit.core.files (atomic writes).
"""
from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from clipkit.core.files import atomic_write_text, read_json
from clipkit.report.results_table import matrix_html, model_sections_html, write_results_csv

EXPERIMENTS = "experiments"   # the folder of reports/ that holds the experiment notebooks' reports


def build_index(out_root="reports") -> Path:
    """(Re)write `out_root/index.html` and `summary.json` from the run.json and metrics files on disk."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    folders = [d for d in sorted(root.iterdir())
               if d.is_dir() and ((d / "run.json").exists() or any(d.glob("*.metrics.json")))]
    rows = [_collect(d) for d in folders if d.name != EXPERIMENTS]
    experiments = _collect(root / EXPERIMENTS) if root / EXPERIMENTS in folders else None
    # columns: the probe notebooks, then the analyses, then anything else (alphabetical within each)
    probes = sorted({p for r in rows for p in r["probes"]},
                    key=lambda p: (0 if p.startswith("probe_") else 1 if p.startswith("analysis_") else 2, p))
    from clipkit.analysis.compare import paired_comparisons  # pandas/scipy: only when building the index
    paired = paired_comparisons(root, exclude=(EXPERIMENTS,))
    atomic_write_text(root / "summary.json", json.dumps(
        {"generated": now(), "probes": probes, "models": rows, "paired": paired, "experiments": experiments},
        indent=2) + "\n")
    write_results_csv(root, {"probes": probes, "models": rows})   # every record as tidy rows, for pandas users
    atomic_write_text(root / "index.html", _render(rows, probes, paired, experiments))
    return root / "index.html"


def _collect(d: Path) -> dict:
    """One model folder as data: run metadata plus, per probe, status, links and metrics."""
    run = read_json(d / "run.json") or {}
    records = {p.name: r for p in sorted(d.glob("*.metrics.json"))
               if isinstance(r := read_json(p), dict) and isinstance(r.get("metrics"), dict)}
    probes, claimed = {}, set()
    for stem, e in (run.get("notebooks") or {}).items():
        names = [n for n in e.get("metrics", []) if n in records]
        claimed |= set(names)
        probes[stem] = {k: e.get(k) for k in ("status", "seconds", "finished", "error", "failed_notebook")}
        probes[stem]["metrics"] = {records[n].get("name", n): records[n]["metrics"] for n in names}
        probes[stem]["figures"] = [f for n in names for f in records[n].get("figures") or []]
    for fname, rec in records.items():  # metrics written outside a recorded run (or run.json lost)
        if fname not in claimed:
            key = rec.get("name") or fname.removesuffix(".metrics.json")
            probes.setdefault(key, {"status": None, "seconds": None, "finished": None, "error": None,
                                    "failed_notebook": None, "metrics": {}, "figures": []})
            probes[key]["metrics"][key] = rec["metrics"]
            probes[key]["figures"] += rec.get("figures") or []
    for key, p in probes.items():  # links only to files that exist now
        for ext in ("html", "ipynb"):
            p[ext] = f"{d.name}/{key}.{ext}" if (d / f"{key}.{ext}").exists() else None
        if p["failed_notebook"]:
            p["failed_notebook"] = f"{d.name}/{p['failed_notebook']}"
        p["figures"] = [{"name": f, **{ext: f"{d.name}/figures/{f}.{ext}" for ext in ("png", "svg")}}
                        for f in dict.fromkeys(p["figures"]) if (d / "figures" / f"{f}.png").exists()]
    return {"model": run.get("model", d.name), "slug": d.name, "updated": run.get("updated"),
            "git": run.get("git"), "versions": run.get("versions", {}), "probes": probes}


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:.4em .6em;vertical-align:top}th{background:#f4f4f4;text-align:left}
td.failed{background:#fde8e8}.fail{color:#b00020}.acc{font-weight:bold;font-size:1.1em}
.meta{color:#777;font-size:.85em}pre{white-space:pre-wrap;font-size:.8em}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figure img{max-width:420px;max-height:320px}
figcaption{font-size:.8em;color:#555}"""


def _render(rows: list[dict], probes: list[str], paired: list[dict] = (), experiments: dict | None = None) -> str:
    """The compact models x probes matrix (each model's details a click away), paired comparisons, key
    figures, experiments and the runs table as one HTML page (figures are linked files beside it: PNG shown, SVG one click away)."""
    esc = html.escape
    summary = {"probes": probes, "models": rows}
    runs = "".join(f"<tr><td>{esc(r['model'])}</td><td>{esc(str(r['updated'] or ''))}</td>"
                   f"<td>{esc(str(r['git'] or '?'))}</td>"
                   f"<td>{esc(', '.join(f'{k} {v}' for k, v in r['versions'].items()))}</td></tr>"
                   for r in [*rows, *([experiments] if experiments else [])])
    return (f"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>clipkit reports</title>"
            f"<style>{_CSS}</style></head><body><h1>clipkit reports</h1>"
            f"<p class=meta>Accuracy with its 95% CI [low, high], chance level and n. Under each cell: the "
            f"notebook's run time and date; <b>cached</b>: not executed this time, its inputs unchanged since "
            f"that run (<code>clipkit report --force</code> executes it). "
            f"Generated {esc(now())}.</p>{matrix_html(summary)}{model_sections_html(summary, _cell)}"
            f"{_paired_table(paired)}{_figures(rows)}{_experiments(experiments)}"
            f"<h2>Runs</h2><table><tr><th>model / experiments</th><th>updated</th><th>git</th><th>versions</th></tr>"
            f"{runs}</table>"
            f"</body></html>\n")


def _figure(f: dict, caption: str) -> str:
    esc = html.escape
    return (f'<figure><a href="{esc(quote(f["svg"]))}"><img src="{esc(quote(f["png"]))}" alt="{esc(caption)}" '
            f'loading=lazy></a><figcaption>{esc(caption)} · <a href="{esc(quote(f["png"]))}">png</a> · '
            f'<a href="{esc(quote(f["svg"]))}">svg</a></figcaption></figure>')


def _figures(rows) -> str:
    """Each model's key figures (those its notebooks passed to record_metrics)."""
    parts = []
    for r in rows:
        figs = [_figure(f, f"{key}: {f['name']}") for key, p in r["probes"].items() for f in p.get("figures", [])]
        if figs:
            parts.append(f"<details open><summary><b>{html.escape(r['model'])}</b> ({len(figs)} figures)</summary>"
                         f"{''.join(figs)}</details>")
    return f"<h2>Key figures</h2>{''.join(parts)}" if parts else ""


def _experiments(e: dict | None) -> str:
    """Experiment notebooks: status, time, links and key figures, one row each."""
    if not e or not e["probes"]:
        return ""
    esc, body = html.escape, []
    for key, p in e["probes"].items():
        figs = "".join(_figure(f, f["name"]) for f in p.get("figures", []))
        body.append(f'<tr><th>{esc(key)}</th><td class="{"failed" if p["status"] == "failed" else ""}">'
                    f"{_cell(key, {**p, 'metrics': {}})}</td><td>{figs}</td></tr>")
    return ("<h2>Experiments</h2><p class=meta>Notebooks that train their own models to test a claim; each "
            "states its question, result with CIs, and limits. Open the notebook for the numbers.</p>"
            f"<table><tr><th>experiment</th><th>run</th><th>key figures</th></tr>{''.join(body)}</table>")


def _paired_table(paired) -> str:
    """Models compared on the same items: accuracies, n, discordant pairs, exact McNemar p."""
    if not paired:
        return ""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(c['probe'])}</td><td>{esc(c['model'])} vs {esc(c['baseline'])}</td><td>{c['n']}</td>"
        f"<td>{_fmt(c['acc_model'])} vs {_fmt(c['acc_baseline'])}</td><td>{c['only_b']} / {c['only_a']}</td>"
        f"<td>{c['p_value']:.2g}</td></tr>" for c in paired)
    return ("<h2>Paired comparisons</h2><p class=meta>Same items, exact McNemar test: discordant = items only "
            "the model got right / only the baseline got right.</p><table><tr><th>probe table</th><th>models</th>"
            f"<th>n</th><th>accuracy</th><th>discordant</th><th>p</th></tr>{rows}</table>")


def _cell(key: str, p: dict) -> str:
    esc, out = html.escape, []
    for name, m in p["metrics"].items():
        label = "" if len(p["metrics"]) == 1 else f"<b>{esc(name)}</b> "
        out.append(f"<div>{label}{_fmt_metrics(m)}</div>")
    if links := [f'<a href="{esc(quote(p[k]))}">{k}</a>' for k in ("html", "ipynb") if p.get(k)]:
        out.append(f"<div>{' · '.join(links)}</div>")
    if p["status"] == "failed":
        err, nb = p["error"] or "unknown error", p["failed_notebook"]
        where = f' &mdash; <a href="{esc(quote(nb))}">{esc(nb)}</a>' if nb else ""
        out.append(f'<div class=fail><b>FAILED</b>{where}<details><summary>{esc(err.splitlines()[0])}'
                   f"</summary><pre>{esc(err)}</pre></details></div>")
    if p["seconds"] is not None:
        # a cached notebook was not executed: its outputs, time and date are those of the run that made them
        cached = "<b>cached</b> · " if p["status"] == "cached" else ""
        out.append(f"<div class=meta>{cached}{p['seconds']:.1f}s · {esc(str(p['finished'] or ''))}</div>")
    return "".join(out)


def _fmt_metrics(m: dict) -> str:
    """accuracy [ci_low, ci_high] · chance · n when present; otherwise the first few numbers."""
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if num(m.get("accuracy")):
        s = f"<span class=acc>{_fmt(m['accuracy'])}</span>"
        if num(m.get("ci_low")) and num(m.get("ci_high")):
            s += f" [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"
        s += f" · chance {_fmt(m['chance'])}" if num(m.get("chance")) else ""
        s += f" · n={_fmt(m['n'])}" if num(m.get("n")) else ""
        return s + (f" · {html.escape(m['verdict'])}" if isinstance(m.get("verdict"), str) else "")
    shown = [f"{html.escape(str(k))}={_fmt(v)}" for k, v in m.items() if num(v)][:4]
    return " · ".join(shown) or "no numeric metrics"


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:.3f}"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


