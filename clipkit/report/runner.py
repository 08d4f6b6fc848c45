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
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from clipkit.core.files import atomic_write_json, atomic_write_text, read_json
from clipkit.core.paths import slugify
from clipkit.core.records import jsonable, package_version, versions
from clipkit.report.cache import after_run, changed, inputs_key
from clipkit.report.execute import Options, kernel_threads, promote as _promote, run_notebook  # noqa: F401 (_promote: tests)
from clipkit.report.index import EXPERIMENTS, build_index, now

# papermill, nbconvert and clipkit.models (torch, open_clip) are imported inside functions: notebooks
# import this module for `record_metrics`, and that must cost nothing (no torch, no pandas).

DEFAULT_KERNEL = "python3"  # jupyter_client runs this kernel with sys.executable: the caller's env
RESERVED = ("MODEL", "OUT_DIR")  # set per model by run_reports, never by the user
DEFAULT_NOTEBOOKS = ("notebooks/probe_*.ipynb", "notebooks/analysis_*.ipynb")  # per model
DATA_NOTEBOOKS = ("notebooks/benchmark_*.ipynb",)  # per model too, only when $CLIPKIT_DATA names the benchmarks
EXPERIMENT_NOTEBOOKS = ("notebooks/experiment_*.ipynb",)  # train their own models
DEFAULT_JOBS = min(2, os.cpu_count() or 1)  # notebooks at once: each kernel keeps about one core busy


@dataclass
class ReportSummary:
    """What one `run_reports` call did. Items are dicts: model, notebook, path, error. `cached`:
    notebooks not executed because nothing they depend on changed (their last good outputs stand)."""
    ok: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    cached: list = field(default_factory=list)
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
                kernel: str | None = None, html: bool = True, hide_code: bool = False,
                jobs: int | None = None, force: bool = False) -> ReportSummary:
    """Execute every notebook for every model spec into `out_root/<slug>/`, then rebuild the index.

    Default notebooks: notebooks/probe_*.ipynb and notebooks/analysis_*.ipynb. A failing notebook
    leaves `<stem>.failed.ipynb` (and its partial outputs in `<stem>.failed/`) and never touches
    the last successful `<stem>.ipynb/.html/.metrics.json` or figures; the rest still run.
    Notebooks run with the current directory as cwd, so relative paths like `probes/` resolve.
    A notebook whose inputs (`clipkit.report.cache`) are those of its last good run is not executed
    unless `force`; up to `jobs` notebooks (default min(2, cores)) run at once.
    """
    if not models:
        raise ValueError("no model given: pass at least one model spec (e.g. --model clipkit-tiny)")
    data = bool(os.environ.get("CLIPKIT_DATA"))
    nbs = _find_notebooks(notebooks, DEFAULT_NOTEBOOKS + (DATA_NOTEBOOKS if data else ()))
    if notebooks is None and not data:
        print("[clipkit report] benchmark_failures skipped: CLIPKIT_DATA is not set (a folder with one "
              "sub-folder per published benchmark; see `clipkit probe --suite failures`)", file=sys.stderr)
    declared = _check_parameters(nbs, parameters or {})
    slugs = {}  # slug -> spec; two specs in one folder would overwrite each other's reports
    for spec in dict.fromkeys(models):
        if (other := slugs.setdefault(slugify(spec), spec)) != spec:
            raise ValueError(f"model specs {other!r} and {spec!r} share the folder {slugify(spec)!r}")
        if slugify(spec) == EXPERIMENTS:
            raise ValueError(f"model spec {spec!r} would write into reports/{EXPERIMENTS}/, kept for experiments")
    folders = [_Folder(Path(out_root) / slug, spec) for slug, spec in slugs.items()]
    summary = _run_all(folders, nbs, declared, parameters or {}, Options(
        kernel or DEFAULT_KERNEL, timeout_per_cell, html, hide_code, _jobs(jobs), force, stream=False))
    summary.index = build_index(out_root)
    return summary


def run_experiments(notebooks: list[str | Path] | None = None, out_root="reports", parameters: dict | None = None,
                    timeout_per_cell: int = 7200, kernel: str | None = None, html: bool = True,
                    hide_code: bool = False, jobs: int | None = None, force: bool = False) -> ReportSummary:
    """Execute the experiment notebooks (default notebooks/experiment_*.ipynb) into
    `out_root/experiments/`, then rebuild the index. They train their own models (kept under
    their RUN_ROOT parameter, reused when the config is unchanged), so they take no MODEL.
    The execution cache, `jobs` and `force` work as in `run_reports`."""
    nbs = _find_notebooks(notebooks, EXPERIMENT_NOTEBOOKS)
    declared = _check_parameters(nbs, parameters or {})
    # experiments stream the kernel's stderr (training progress) to ours: a cell may train for minutes
    summary = _run_all([_Folder(Path(out_root) / EXPERIMENTS, None)], nbs, declared, parameters or {}, Options(
        kernel or DEFAULT_KERNEL, timeout_per_cell, html, hide_code, _jobs(jobs), force, stream=True))
    summary.index = build_index(out_root)
    return summary


def _jobs(jobs: int | None) -> int:
    if jobs is None:
        return DEFAULT_JOBS
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1 (notebooks run at once), got {jobs!r}")
    return jobs


@dataclass
class _Folder:
    """One output folder (a model's, or experiments when spec is None) and its run.json record."""
    path: Path
    spec: str | None
    entries: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec if self.spec is not None else EXPERIMENTS

    def load(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        run = read_json(self.path / "run.json") or {}
        same = run.get("model") == self.spec if self.spec is not None else run.get("kind") == EXPERIMENTS
        self.entries = run.get("notebooks", {}) if same else {}


def _run_all(folders: list[_Folder], nbs, declared, parameters, opt: Options) -> ReportSummary:
    """Run every (folder, notebook) task, up to opt.jobs at once, each folder's run.json rewritten
    as soon as any of its notebooks ends (under a lock: one writer at a time)."""
    found = versions(extra=("papermill",))   # from package metadata: torch is not imported here
    meta = {"versions": found, "git": found["git_revision"]}
    for f in folders:
        f.load()
    tasks = [(f, nb) for f in folders for nb in nbs]
    lock, started, results = threading.Lock(), [0], [None] * len(tasks)

    def one(i: int) -> None:
        folder, nb = tasks[i]
        with lock:
            started[0] += 1
            # A start line and a full result line: the kernel's own stderr may print in between.
            tag = f"[clipkit report] ({started[0]}/{len(tasks)}) {folder.label} {nb.name}"
            old = dict(folder.entries.get(nb.stem, {}))
        params = {k: v for k, v in parameters.items() if k in declared[nb]}
        given = ({"MODEL": folder.spec} if folder.spec is not None else {}) | params
        try:
            key = inputs_key(nb, given, {"kernel": opt.kernel, "html": opt.html, "hide_code": opt.hide_code})
        except Exception as exc:  # an unreadable input: run the notebook, which will say what is wrong
            key = None
            print(f"{tag}: cannot key its inputs ({type(exc).__name__}: {exc}); running it", file=sys.stderr)
        why = ["--force"] if opt.force else changed(old.get("inputs"), key) if key else ["inputs unknown"]
        if not why and old.get("status") in ("ok", "cached") and _outputs_exist(folder.path, nb.stem, old, opt.html):
            e = {**old, "status": "cached"}   # seconds and finished stay those of the run that produced them
            print(f"{tag} cached (inputs unchanged since {old.get('finished')})", file=sys.stderr, flush=True)
        else:
            print(f"{tag} ... ({', '.join(why) or 'last run failed or its outputs are missing'})",
                  file=sys.stderr, flush=True)
            e = run_notebook(nb, folder.path, given, opt, old)
            ok = e["status"] == "ok" and key is not None
            e.update(inputs=after_run(key, nb, given) if ok else None)   # a failed run is never reused
            if e["status"] == "ok":
                print(f"{tag} ok in {e['seconds']:.1f}s", file=sys.stderr, flush=True)
            else:
                where = folder.path / e["failed_notebook"] if e["failed_notebook"] else e["error"].splitlines()[0]
                print(f"{tag} FAILED (see {where})", file=sys.stderr, flush=True)
        e.update(parameters=params, git=e.get("git") if e["status"] == "cached" else meta["git"])
        with lock:
            folder.entries[nb.stem] = e
            # Rewritten after every notebook so an interrupted run still leaves an accurate record.
            head = {"model": folder.spec} if folder.spec is not None else {"kind": EXPERIMENTS}
            atomic_write_json(folder.path / "run.json", {**head, "slug": folder.path.name, "updated": now(),
                                                         **meta, "notebooks": folder.entries})
        results[i] = e

    with kernel_threads(opt.jobs):
        if opt.jobs == 1:
            for i in range(len(tasks)):
                one(i)
        else:
            pool = ThreadPoolExecutor(opt.jobs, thread_name_prefix="notebook")
            try:
                for fut in [pool.submit(one, i) for i in range(len(tasks))]:
                    fut.result()
            finally:  # on Ctrl-C (or an error) start no further notebook; the running ones end
                pool.shutdown(wait=True, cancel_futures=True)
    summary = ReportSummary()
    for (folder, nb), e in zip(tasks, results):  # in task order, whatever order they finished in
        item = {"model": folder.label, "notebook": str(nb), "path": str(folder.path / f"{nb.stem}.ipynb"),
                "error": None}
        if e["status"] == "failed":  # no failed notebook only if papermill could not even start writing one
            item.update(path=str(folder.path / e["failed_notebook"]) if e["failed_notebook"] else None,
                        error=e["error"])
        {"ok": summary.ok, "cached": summary.cached, "failed": summary.failed}[e["status"]].append(item)
    return summary


def _outputs_exist(folder: Path, stem: str, entry: dict, html: bool) -> bool:
    """The last good run's notebook, metrics files (and page, when HTML is wanted) are all still there."""
    names = [f"{stem}.ipynb", *entry.get("metrics", []), *([f"{stem}.html"] if html else [])]
    return all((folder / n).is_file() for n in names)


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
    ap.add_argument("--force", action="store_true",
                    help="execute every notebook, even those whose inputs are unchanged since their last good run")
    ap.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                    help=f"notebooks run at once (default min(2, cores) = {DEFAULT_JOBS})")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    if not args.model and not args.experiments:
        ap.error("nothing to run: give --model SPEC (repeatable) and/or --experiments")
    runs, opts = [], dict(kernel=args.kernel, html=not args.no_html, hide_code=args.hide_code, jobs=args.jobs,
                          force=args.force)
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
    failed, index, counts = [], None, [0, 0]
    for run in runs:
        try:
            s = run()
        except (ValueError, FileNotFoundError) as e:
            print(f"clipkit report: error: {e}", file=sys.stderr)
            return 2
        failed += s.failed
        counts = [counts[0] + len(s.ok), counts[1] + len(s.cached)]
        index = s.index
    print(f"[clipkit report] {counts[0]} executed, {counts[1]} cached (inputs unchanged; --force runs them), "
          f"{len(failed)} failed", file=sys.stderr)
    for f in failed:
        print(f"[clipkit report] FAILED {f['model']} {Path(f['notebook']).name}: "
              f"{f['error'].splitlines()[0]} ({f['path']})", file=sys.stderr)
    print(index)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
