"""Run the probe notebooks headless with papermill into reports/<model>/ and build reports/index.html."""
from __future__ import annotations

import argparse
import ast
import html
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from clipkit.paths import slugify

# papermill, nbconvert and clipkit.models (torch, open_clip) are imported inside functions: notebooks
# import this module for `record_metrics`, and that must cost nothing.

DEFAULT_KERNEL = "python3"  # jupyter_client runs this kernel with sys.executable: the caller's env
RESERVED = ("MODEL", "OUT_DIR")  # set per model by run_reports, never by the user
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # kernel tracebacks are coloured


@dataclass
class ReportSummary:
    """What one `run_reports` call did. Items are dicts: model, notebook, path, error."""
    ok: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    index: Path | None = None


def record_metrics(name: str, metrics: dict, out_dir: str | Path) -> Path:
    """Write `out_dir/<name>.metrics.json` atomically; called at the end of each notebook.

    `metrics` is a flat dict; probes use accuracy, ci_low, ci_high, chance, n (shown by the index)
    plus any other keys. numpy scalars/arrays become Python values and NaN/inf become null.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"metrics name must be a plain file name (letters, digits, ._-), got {name!r}")
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    record = {"name": name, "metrics": _jsonable(metrics),
              "recorded": _now(), "clipkit": _version("clipkit")}
    path = Path(out_dir) / f"{name}.metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(record, indent=2, allow_nan=False, default=str) + "\n")
    return path


def run_reports(models: list[str], notebooks: list[str | Path] | None = None, out_root="reports",
                parameters: dict | None = None, timeout_per_cell: int = 1800,
                kernel: str | None = None, html: bool = True, hide_code: bool = False) -> ReportSummary:
    """Execute every notebook for every model spec into `out_root/<slug>/`, then rebuild the index.

    A failing notebook leaves `<stem>.failed.ipynb` (and its partial outputs in `<stem>.failed/`)
    and never touches the last successful `<stem>.ipynb/.html/.metrics.json`; the rest still run.
    Notebooks run with the current directory as cwd, so relative paths like `probes/` resolve.
    """
    if not models:
        raise ValueError("no model given: pass at least one model spec (e.g. --model clipkit-tiny)")
    nbs = _find_notebooks(notebooks)
    declared = _check_parameters(nbs, parameters or {})

    slugs = {}  # slug -> spec; two specs in one folder would overwrite each other's reports
    for spec in dict.fromkeys(models):
        if (other := slugs.setdefault(slugify(spec), spec)) != spec:
            raise ValueError(f"model specs {other!r} and {spec!r} share the folder {slugify(spec)!r}")
    out_root, cwd = Path(out_root), Path.cwd()
    meta = {"versions": {p: _version(p) for p in ("clipkit", "torch", "open_clip_torch", "papermill")}
                        | {"python": platform.python_version()},
            "git": _git_revision(cwd)}
    summary, total, i = ReportSummary(), len(slugs) * len(nbs), 0
    for slug, spec in slugs.items():
        model_dir = out_root / slug
        model_dir.mkdir(parents=True, exist_ok=True)
        run = _read_json(model_dir / "run.json") or {}
        entries = run.get("notebooks", {}) if run.get("model") == spec else {}
        for nb in nbs:
            i += 1
            # A start line and a full result line: the kernel's own stderr may print in between.
            tag = f"[clipkit report] ({i}/{total}) {spec} {nb.name} ..."
            print(tag, file=sys.stderr, flush=True)
            params = {k: v for k, v in (parameters or {}).items() if k in declared[nb]}
            e = _run_one(spec, nb, model_dir, params, kernel or DEFAULT_KERNEL, timeout_per_cell,
                         html, hide_code, cwd, entries.get(nb.stem, {}))
            e.update(parameters=params, git=meta["git"])
            entries[nb.stem] = e
            if e["status"] == "ok":
                print(f"{tag} ok in {e['seconds']:.1f}s", file=sys.stderr, flush=True)
                summary.ok.append({"model": spec, "notebook": str(nb),
                                   "path": str(model_dir / f"{nb.stem}.ipynb"), "error": None})
            else:  # no failed notebook only if papermill could not even start writing one
                path = str(model_dir / e["failed_notebook"]) if e["failed_notebook"] else None
                print(f"{tag} FAILED (see {path or e['error'].splitlines()[0]})", file=sys.stderr, flush=True)
                summary.failed.append({"model": spec, "notebook": str(nb), "path": path, "error": e["error"]})
            # Rewritten after every notebook so an interrupted run still leaves an accurate record.
            _atomic_write(model_dir / "run.json", json.dumps(
                {"model": spec, "slug": slug, "updated": _now(), **meta, "notebooks": entries},
                indent=2, default=str) + "\n")
    summary.index = build_index(out_root)
    return summary


def _run_one(spec, nb, model_dir, params, kernel, timeout, want_html, hide_code, cwd, old) -> dict:
    """Execute one notebook; on success promote its outputs, on failure keep them aside."""
    import papermill as pm
    from nbconvert import HTMLExporter

    stem = nb.stem
    # The notebook writes into a staging folder, not model_dir: a run that fails after calling
    # record_metrics must not overwrite the metrics of the last good run.
    staging = model_dir / f"_staging_{stem}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    tmp_nb, tmp_html = model_dir / f".{stem}.tmp.ipynb", model_dir / f".{stem}.tmp.html"
    failed_nb, failed_dir = model_dir / f"{stem}.failed.ipynb", model_dir / f"{stem}.failed"
    entry = {"notebook": str(nb), "status": "ok", "seconds": None, "finished": None, "error": None,
             "failed_notebook": None, "metrics": old.get("metrics", [])}
    t0 = time.perf_counter()
    try:
        # request_save_on_cell_execute=True: papermill only writes the output itself on a cell
        # error; on a timeout or dead kernel the partial notebook would be lost otherwise.
        out = pm.execute_notebook(
            str(nb), str(tmp_nb), parameters={"MODEL": spec, "OUT_DIR": str(staging), **params},
            kernel_name=kernel, language="python", progress_bar=False, request_save_on_cell_execute=True,
            execution_timeout=timeout, cwd=str(cwd))
        if want_html:
            page = HTMLExporter(exclude_input=hide_code).from_notebook_node(out)[0]
            tmp_html.write_text(page, encoding="utf-8")
    except Exception as exc:  # anything: cell error, timeout, dead kernel, export failure
        entry.update(status="failed", error=_describe(exc))
        if tmp_nb.exists():
            os.replace(tmp_nb, failed_nb)
            entry["failed_notebook"] = failed_nb.name
        shutil.rmtree(failed_dir, ignore_errors=True)
        if any(staging.iterdir()):  # partial tables/plots help debugging; keep them aside
            os.replace(staging, failed_dir)
    else:
        produced = _promote(staging, model_dir)
        for stale in set(old.get("metrics", [])) - set(produced):  # a probe renamed or removed
            (model_dir / stale).unlink(missing_ok=True)
        entry["metrics"] = produced
        os.replace(tmp_nb, model_dir / f"{stem}.ipynb")
        if want_html:
            os.replace(tmp_html, model_dir / f"{stem}.html")
        else:  # an HTML page from an older run would contradict the new notebook
            (model_dir / f"{stem}.html").unlink(missing_ok=True)
        failed_nb.unlink(missing_ok=True)
        shutil.rmtree(failed_dir, ignore_errors=True)
    finally:
        tmp_nb.unlink(missing_ok=True)
        tmp_html.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    entry.update(seconds=round(time.perf_counter() - t0, 2), finished=_now())
    return entry


def _promote(staging: Path, model_dir: Path) -> list[str]:
    """Move everything the notebook wrote into model_dir; return the metrics file names."""
    names = []
    for item in sorted(staging.iterdir()):
        dest = model_dir / item.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)  # os.replace cannot replace a non-empty folder
        os.replace(item, dest)
        names += [item.name] if item.name.endswith(".metrics.json") else []
    return names


def build_index(out_root="reports") -> Path:
    """(Re)write `out_root/index.html` and `summary.json` from the run.json and metrics files on disk."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    rows = [_collect(d) for d in sorted(root.iterdir())
            if d.is_dir() and ((d / "run.json").exists() or any(d.glob("*.metrics.json")))]
    probes = sorted({p for r in rows for p in r["probes"]})
    from clipkit.compare import paired_comparisons  # pandas/scipy: only when building the index
    paired = paired_comparisons(root)
    _atomic_write(root / "summary.json", json.dumps(
        {"generated": _now(), "probes": probes, "models": rows, "paired": paired}, indent=2) + "\n")
    _atomic_write(root / "index.html", _render(rows, probes, paired))
    return root / "index.html"


def _collect(d: Path) -> dict:
    """One model folder as data: run metadata plus, per probe, status, links and metrics."""
    run = _read_json(d / "run.json") or {}
    records = {p.name: r for p in sorted(d.glob("*.metrics.json"))
               if isinstance(r := _read_json(p), dict) and isinstance(r.get("metrics"), dict)}
    probes, claimed = {}, set()
    for stem, e in (run.get("notebooks") or {}).items():
        names = [n for n in e.get("metrics", []) if n in records]
        claimed |= set(names)
        probes[stem] = {k: e.get(k) for k in ("status", "seconds", "finished", "error", "failed_notebook")}
        probes[stem]["metrics"] = {records[n].get("name", n): records[n]["metrics"] for n in names}
    for fname, rec in records.items():  # metrics written outside a recorded run (or run.json lost)
        if fname not in claimed:
            key = rec.get("name") or fname.removesuffix(".metrics.json")
            probes.setdefault(key, {"status": None, "seconds": None, "finished": None, "error": None,
                                    "failed_notebook": None, "metrics": {}})["metrics"][key] = rec["metrics"]
    for key, p in probes.items():  # links only to files that exist now
        for ext in ("html", "ipynb"):
            p[ext] = f"{d.name}/{key}.{ext}" if (d / f"{key}.{ext}").exists() else None
        if p["failed_notebook"]:
            p["failed_notebook"] = f"{d.name}/{p['failed_notebook']}"
    return {"model": run.get("model", d.name), "slug": d.name, "updated": run.get("updated"),
            "git": run.get("git"), "versions": run.get("versions", {}), "probes": probes}


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:.4em .6em;vertical-align:top}th{background:#f4f4f4;text-align:left}
td.failed{background:#fde8e8}.fail{color:#b00020}.acc{font-weight:bold;font-size:1.1em}
.meta{color:#777;font-size:.85em}pre{white-space:pre-wrap;font-size:.8em}"""


def _render(rows: list[dict], probes: list[str], paired: list[dict] = ()) -> str:
    """The models x probes table and the runs table as one self-contained HTML page."""
    esc = html.escape
    head = "".join(f"<th>{esc(p)}</th>" for p in probes)
    body = []
    for r in rows:
        cells = []
        for key in probes:
            p = r["probes"].get(key)
            failed = bool(p and p["status"] == "failed")
            cells.append(f'<td class="{"failed" if failed else ""}">{_cell(key, p) if p else "&mdash;"}</td>')
        slug = f"<div class=meta>{esc(r['slug'])}</div>" if r["slug"] != r["model"] else ""
        body.append(f"<tr><th>{esc(r['model'])}{slug}</th>{''.join(cells)}</tr>")
    runs = "".join(f"<tr><td>{esc(r['model'])}</td><td>{esc(str(r['updated'] or ''))}</td>"
                   f"<td>{esc(str(r['git'] or '?'))}</td>"
                   f"<td>{esc(', '.join(f'{k} {v}' for k, v in r['versions'].items()))}</td></tr>" for r in rows)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>clipkit reports</title>"
            f"<style>{_CSS}</style></head><body><h1>clipkit reports</h1>"
            f"<p class=meta>Accuracy with its 95% CI [low, high], chance level and n. "
            f"Generated {esc(_now())}.</p><table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"
            f"{_paired_table(paired)}"
            f"<h2>Runs</h2><table><tr><th>model</th><th>updated</th><th>git</th><th>versions</th></tr>"
            f"{runs}</table>"
            f"</body></html>\n")


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
        out.append(f"<div class=meta>{p['seconds']:.1f}s · {esc(str(p['finished'] or ''))}</div>")
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


def _find_notebooks(notebooks) -> list[Path]:
    if notebooks is None:
        found = sorted(Path("notebooks").glob("probe_*.ipynb"))
        if not found:
            raise FileNotFoundError(f"no notebooks/probe_*.ipynb under {Path.cwd()}: run from the repo "
                                    "root or pass --notebook PATH")
        return found
    nbs = [Path(n) for n in notebooks]
    if not nbs:
        raise ValueError("empty notebook list")
    for n in nbs:
        if not n.is_file() or n.suffix != ".ipynb":
            raise FileNotFoundError(f"notebook not found (or not an .ipynb file): {n}")
    stems = [n.stem for n in nbs]
    if dupes := sorted({s for s in stems if stems.count(s) > 1}):
        raise ValueError(f"notebooks share a name, their reports would collide: {dupes}")
    return nbs


def _check_parameters(nbs: list[Path], parameters: dict) -> dict[Path, set]:
    """Every parameter must be assigned in some notebook's `parameters` cell: catches typos."""
    declared = {nb: _declared(nb) for nb in nbs}
    known = set().union(*declared.values()) - set(RESERVED)
    for k in parameters:
        if k in RESERVED:
            raise ValueError(f"{k} is set by clipkit report for each model; it cannot be a --param")
        if k not in known:
            raise ValueError(f"parameter {k!r} is not set in the parameters cell of any notebook "
                             f"(known: {', '.join(sorted(known)) or 'none'})")
    return declared


def _declared(nb: Path) -> set[str]:
    """Names assigned in the cell tagged `parameters` (papermill's convention), read with ast."""
    for cell in json.loads(nb.read_text(encoding="utf-8")).get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            try:
                body = ast.parse(src).body
            except SyntaxError as e:
                raise ValueError(f"the parameters cell of {nb} is not valid Python: {e}") from None
            return {t.id for n in body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in getattr(n, "targets", [getattr(n, "target", None)]) if isinstance(t, ast.Name)}
    return set()


def _describe(exc: BaseException) -> str:
    """Exception type and message (~20 lines); for a cell error, the end of the kernel's traceback."""
    if hasattr(exc, "ename") and hasattr(exc, "traceback"):  # PapermillExecutionError
        tb = _ANSI.sub("", "\n".join(exc.traceback)).splitlines()
        return "\n".join([f"{type(exc).__name__}: {exc.ename}: {exc.evalue}"] + tb[-19:])
    lines = _ANSI.sub("", f"{type(exc).__name__}: {exc}").splitlines()
    return "\n".join(lines[:20])


def _jsonable(x):
    """numpy scalars/arrays -> Python values; NaN/inf -> None (JSON has no NaN)."""
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy scalar or array
        x = x.tolist()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _atomic_write(path: Path, text: str) -> None:
    # Readers (the index, a browser, a concurrent run) never see a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    try:  # from package metadata: no need to import torch just to learn its version
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision(cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def parse_param(text: str) -> tuple[str, object]:
    """'KEY=VALUE' -> (KEY, literal VALUE), e.g. 'N=100' -> ('N', 100); a non-literal stays a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a Python name, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def main(argv=None) -> int:
    """`clipkit report`: run the notebooks for each --model, print the index path; 1 if any failed."""
    ap = argparse.ArgumentParser(prog="clipkit report", description=__doc__)
    ap.add_argument("--model", action="append", required=True, help="model spec (repeatable)")
    ap.add_argument("--notebook", action="append",
                    help="notebook to run (repeatable; default: notebooks/probe_*.ipynb)")
    ap.add_argument("--out", default="reports", help="output root (default: reports)")
    ap.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                    help="notebook parameter, VALUE parsed as a Python literal (repeatable)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    ap.add_argument("--kernel", default=DEFAULT_KERNEL, help="Jupyter kernel (default python3)")
    ap.add_argument("--no-html", action="store_true", help="skip the HTML export")
    ap.add_argument("--hide-code", action="store_true", help="HTML without input cells")
    args = ap.parse_args(argv)
    try:
        s = run_reports(args.model, args.notebook, args.out, dict(args.param), args.timeout,
                        args.kernel, html=not args.no_html, hide_code=args.hide_code)
    except (ValueError, FileNotFoundError) as e:
        print(f"clipkit report: error: {e}", file=sys.stderr)
        return 2
    for f in s.failed:
        print(f"[clipkit report] FAILED {f['model']} {Path(f['notebook']).name}: "
              f"{f['error'].splitlines()[0]} ({f['path']})", file=sys.stderr)
    print(s.index)
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
