"""Run notebooks headless with papermill into reports/ and rebuild reports/index.html.

Per model: the probe and analysis notebooks into reports/<model-slug>/. Experiments (notebooks
that train their own models, not about one given model): into reports/experiments/. Every
notebook writes into a staging folder first; only a notebook that finishes replaces the previous
good results, so a failure never destroys another notebook's (or its own last good) report.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipkit.core.files import atomic_write_json, atomic_write_text, read_json
from clipkit.core.paths import slugify
from clipkit.core.records import jsonable, package_version, versions
from clipkit.report.index import EXPERIMENTS, build_index, now

# papermill, nbconvert and clipkit.models (torch, open_clip) are imported inside functions: notebooks
# import this module for `record_metrics`, and that must cost nothing (no torch, no pandas).

DEFAULT_KERNEL = "python3"  # jupyter_client runs this kernel with sys.executable: the caller's env
RESERVED = ("MODEL", "OUT_DIR")  # set per model by run_reports, never by the user
DEFAULT_NOTEBOOKS = ("notebooks/probe_*.ipynb", "notebooks/analysis_*.ipynb")  # per model
EXPERIMENT_NOTEBOOKS = ("notebooks/experiment_*.ipynb",)  # train their own models
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # kernel tracebacks are coloured
# The kernel talks to us over local IPC sockets, not TCP on localhost: nothing else needs to reach
# it, and ipykernel then has no reason to log "Kernel is running over TCP without encryption" for
# every notebook (its own warnings and the notebooks' still reach stderr).
_KERNEL_CONFIG = {"KernelManager": {"transport": "ipc"}}


@dataclass
class ReportSummary:
    """What one `run_reports` call did. Items are dicts: model, notebook, path, error."""
    ok: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    index: Path | None = None


def record_metrics(name: str, metrics: dict, out_dir: str | Path, figures=()) -> Path:
    """Write `out_dir/<name>.metrics.json` atomically; called at the end of each notebook.

    `metrics` is a flat dict; probes use accuracy, ci_low, ci_high, chance, n (shown by the index)
    plus any other keys. numpy scalars/arrays become Python values and NaN/inf become null.
    `figures` names the key figures (saved by `clipkit.viz.show`) that the index shows.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"metrics name must be a plain file name (letters, digits, ._-), got {name!r}")
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    figures = [figures] if isinstance(figures, str) else list(figures)
    for f in figures:
        if not (Path(out_dir) / "figures" / f"{f}.png").exists():
            raise FileNotFoundError(f"key figure {f!r} was not saved: call clipkit.viz.show({f!r}, OUT_DIR) first")
    record = {"name": name, "metrics": jsonable(metrics), "figures": figures,
              "recorded": now(), "clipkit": package_version("clipkit")}
    return atomic_write_text(Path(out_dir) / f"{name}.metrics.json",
                             json.dumps(record, indent=2, allow_nan=False, default=str) + "\n")


def run_reports(models: list[str], notebooks: list[str | Path] | None = None, out_root="reports",
                parameters: dict | None = None, timeout_per_cell: int = 1800,
                kernel: str | None = None, html: bool = True, hide_code: bool = False) -> ReportSummary:
    """Execute every notebook for every model spec into `out_root/<slug>/`, then rebuild the index.

    Default notebooks: notebooks/probe_*.ipynb and notebooks/analysis_*.ipynb. A failing notebook
    leaves `<stem>.failed.ipynb` (and its partial outputs in `<stem>.failed/`) and never touches
    the last successful `<stem>.ipynb/.html/.metrics.json` or figures; the rest still run.
    Notebooks run with the current directory as cwd, so relative paths like `probes/` resolve.
    """
    if not models:
        raise ValueError("no model given: pass at least one model spec (e.g. --model clipkit-tiny)")
    nbs = _find_notebooks(notebooks, DEFAULT_NOTEBOOKS)
    declared = _check_parameters(nbs, parameters or {})
    slugs = {}  # slug -> spec; two specs in one folder would overwrite each other's reports
    for spec in dict.fromkeys(models):
        if (other := slugs.setdefault(slugify(spec), spec)) != spec:
            raise ValueError(f"model specs {other!r} and {spec!r} share the folder {slugify(spec)!r}")
        if slugify(spec) == EXPERIMENTS:
            raise ValueError(f"model spec {spec!r} would write into reports/{EXPERIMENTS}/, kept for experiments")
    summary, counter = ReportSummary(), [0, len(slugs) * len(nbs)]
    for slug, spec in slugs.items():
        _run_folder(Path(out_root) / slug, spec, nbs, declared, parameters or {}, summary, counter,
                    kernel or DEFAULT_KERNEL, timeout_per_cell, html, hide_code)
    summary.index = build_index(out_root)
    return summary


def run_experiments(notebooks: list[str | Path] | None = None, out_root="reports", parameters: dict | None = None,
                    timeout_per_cell: int = 7200, kernel: str | None = None, html: bool = True,
                    hide_code: bool = False) -> ReportSummary:
    """Execute the experiment notebooks (default notebooks/experiment_*.ipynb) into
    `out_root/experiments/`, then rebuild the index. They train their own models (kept under
    their RUN_ROOT parameter, reused when the config is unchanged), so they take no MODEL."""
    nbs = _find_notebooks(notebooks, EXPERIMENT_NOTEBOOKS)
    declared = _check_parameters(nbs, parameters or {})
    summary = ReportSummary()
    _run_folder(Path(out_root) / EXPERIMENTS, None, nbs, declared, parameters or {}, summary, [0, len(nbs)],
                kernel or DEFAULT_KERNEL, timeout_per_cell, html, hide_code)
    summary.index = build_index(out_root)
    return summary


def _run_folder(folder: Path, spec, nbs, declared, parameters, summary, counter, kernel, timeout, html, hide_code):
    """Run `nbs` into `folder` (for model `spec`, or experiments when spec is None), recording each
    notebook in folder/run.json as soon as it ends."""
    cwd = Path.cwd()
    found = versions(extra=("papermill",))   # from package metadata: torch is not imported here
    meta = {"versions": found, "git": found["git_revision"]}
    head = {"model": spec} if spec is not None else {"kind": EXPERIMENTS}
    folder.mkdir(parents=True, exist_ok=True)
    run = read_json(folder / "run.json") or {}
    same = run.get("model") == spec if spec is not None else run.get("kind") == EXPERIMENTS
    entries = run.get("notebooks", {}) if same else {}
    label = spec if spec is not None else EXPERIMENTS
    for nb in nbs:
        counter[0] += 1
        # A start line and a full result line: the kernel's own stderr may print in between.
        tag = f"[clipkit report] ({counter[0]}/{counter[1]}) {label} {nb.name} ..."
        print(tag, file=sys.stderr, flush=True)
        params = {k: v for k, v in parameters.items() if k in declared[nb]}
        given = ({"MODEL": spec} if spec is not None else {}) | params
        # experiments stream the kernel's stderr (training progress) to ours: a cell may train for minutes
        e = _run_one(nb, folder, given, kernel, timeout, html, hide_code, cwd, entries.get(nb.stem, {}),
                     stream=spec is None)
        e.update(parameters=params, git=meta["git"])
        entries[nb.stem] = e
        if e["status"] == "ok":
            print(f"{tag} ok in {e['seconds']:.1f}s", file=sys.stderr, flush=True)
            summary.ok.append({"model": label, "notebook": str(nb), "path": str(folder / f"{nb.stem}.ipynb"),
                               "error": None})
        else:  # no failed notebook only if papermill could not even start writing one
            path = str(folder / e["failed_notebook"]) if e["failed_notebook"] else None
            print(f"{tag} FAILED (see {path or e['error'].splitlines()[0]})", file=sys.stderr, flush=True)
            summary.failed.append({"model": label, "notebook": str(nb), "path": path, "error": e["error"]})
        # Rewritten after every notebook so an interrupted run still leaves an accurate record.
        atomic_write_json(folder / "run.json",
                          {**head, "slug": folder.name, "updated": now(), **meta, "notebooks": entries})


def _run_one(nb, model_dir, params, kernel, timeout, want_html, hide_code, cwd, old, stream=False) -> dict:
    """Execute one notebook; on success promote its outputs, on failure keep them aside."""
    import papermill as pm
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    stem = nb.stem
    # The notebook writes into a staging folder, not model_dir: a run that fails after calling
    # record_metrics must not overwrite the metrics of the last good run.
    staging = model_dir / f"_staging_{stem}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    # papermill writes the notebook itself (also while it runs, for a failure's partial notebook), so
    # it gets a hidden name beside the target and is renamed into place: a rename is atomic.
    tmp_nb, page = model_dir / f".{stem}.tmp.ipynb", None
    failed_nb, failed_dir = model_dir / f"{stem}.failed.ipynb", model_dir / f"{stem}.failed"
    entry = {"notebook": str(nb), "status": "ok", "seconds": None, "finished": None, "error": None,
             "failed_notebook": None, "metrics": old.get("metrics", [])}
    t0 = time.perf_counter()
    try:
        # request_save_on_cell_execute=True: papermill only writes the output itself on a cell
        # error; on a timeout or dead kernel the partial notebook would be lost otherwise.
        out = pm.execute_notebook(
            str(nb), str(tmp_nb), parameters={**params, "OUT_DIR": str(staging)},
            kernel_name=kernel, language="python", progress_bar=False, request_save_on_cell_execute=True,
            execution_timeout=timeout, cwd=str(cwd), stderr_file=sys.stderr if stream else None,
            config=Config(_KERNEL_CONFIG))
        if want_html:
            page = HTMLExporter(exclude_input=hide_code).from_notebook_node(out)[0]
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
            atomic_write_text(model_dir / f"{stem}.html", page)
        else:  # an HTML page from an older run would contradict the new notebook
            (model_dir / f"{stem}.html").unlink(missing_ok=True)
        failed_nb.unlink(missing_ok=True)
        shutil.rmtree(failed_dir, ignore_errors=True)
    finally:
        tmp_nb.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    entry.update(seconds=round(time.perf_counter() - t0, 2), finished=now())
    return entry


def _promote(staging: Path, model_dir: Path) -> list[str]:
    """Move everything the notebook wrote into model_dir; return the metrics file names.

    Folders (figures/) are merged file by file: other notebooks' files in them stay."""
    names = []
    for item in sorted(staging.iterdir()):
        dest = model_dir / item.name
        if item.is_dir() and not item.is_symlink():
            dest.mkdir(exist_ok=True)
            _promote(item, dest)
            continue
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)  # a file replacing a folder of the same name
        os.replace(item, dest)
        names += [item.name] if item.name.endswith(".metrics.json") else []
    return names


def _find_notebooks(notebooks, default: tuple[str, ...]) -> list[Path]:
    if notebooks is None:
        found = [p for pattern in default for p in sorted(Path().glob(pattern))]
        if not found:
            raise FileNotFoundError(f"no {' or '.join(default)} under {Path.cwd()}: run from the repo "
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
    """`clipkit report`: run the notebooks for each --model (and/or the experiments), print the index
    path; exit 1 if any notebook failed, 2 on a usage error."""
    ap = argparse.ArgumentParser(prog="clipkit report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="model spec (repeatable)")
    ap.add_argument("--experiments", action="store_true",
                    help="also run the experiment notebooks (notebooks/experiment_*.ipynb, or the --notebook "
                         "files when no --model is given) into <out>/experiments/")
    ap.add_argument("--notebook", action="append",
                    help="notebook to run (repeatable; default: notebooks/probe_*.ipynb and analysis_*.ipynb "
                         "per model)")
    ap.add_argument("--out", default="reports", help="output root (default: reports)")
    ap.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                    help="notebook parameter, VALUE parsed as a Python literal (repeatable)")
    ap.add_argument("--timeout", type=int, default=None,
                    help="seconds per cell (default 1800; 7200 for experiments, whose training is one cell)")
    ap.add_argument("--kernel", default=DEFAULT_KERNEL, help="Jupyter kernel (default python3)")
    ap.add_argument("--no-html", action="store_true", help="skip the HTML export")
    ap.add_argument("--hide-code", action="store_true", help="HTML without input cells")
    args = ap.parse_args(argv)
    if not args.model and not args.experiments:
        ap.error("nothing to run: give --model SPEC (repeatable) and/or --experiments")
    runs, opts = [], dict(kernel=args.kernel, html=not args.no_html, hide_code=args.hide_code)
    params = dict(args.param)
    if args.model and args.experiments:   # one --param list for two notebook sets: each takes its own
        try:
            exp_known = set().union(*map(_declared, _find_notebooks(None, EXPERIMENT_NOTEBOOKS)))
            model_known = set().union(*map(_declared, _find_notebooks(args.notebook, DEFAULT_NOTEBOOKS)))
        except (ValueError, FileNotFoundError) as e:
            print(f"clipkit report: error: {e}", file=sys.stderr)
            return 2
        model_params = {k: v for k, v in params.items() if k in model_known or k not in exp_known}
        exp_params = {k: v for k, v in params.items() if k in exp_known}
    else:
        model_params = exp_params = params
    if args.model:
        runs.append(lambda: run_reports(args.model, args.notebook, args.out, model_params,
                                        args.timeout or 1800, **opts))
    if args.experiments:
        nbs = None if args.model else args.notebook
        runs.append(lambda: run_experiments(nbs, args.out, exp_params, args.timeout or 7200, **opts))
    failed, index = [], None
    for run in runs:
        try:
            s = run()
        except (ValueError, FileNotFoundError) as e:
            print(f"clipkit report: error: {e}", file=sys.stderr)
            return 2
        failed += s.failed
        index = s.index
    for f in failed:
        print(f"[clipkit report] FAILED {f['model']} {Path(f['notebook']).name}: "
              f"{f['error'].splitlines()[0]} ({f['path']})", file=sys.stderr)
    print(index)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
