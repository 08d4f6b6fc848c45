"""Execute one notebook with papermill into a report folder: staging, promotion only on success.

The notebook writes into `_staging_<stem>/`; only a run that finishes moves its files into the
folder (replacing that notebook's last good outputs), so a failure never destroys a good report: it
leaves `<stem>.failed.ipynb` and its partial outputs in `<stem>.failed/`. Several notebooks may run
at once (threads, one kernel process each); each kernel has its own IPC sockets and its own files.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clipkit.core.files import atomic_write_text
from clipkit.report.index import now

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # kernel tracebacks are coloured

# The kernel talks to us over local IPC sockets, not TCP on localhost: nothing else needs to reach
# it, and ipykernel then has no reason to log "Kernel is running over TCP without encryption" for
# every notebook (its own warnings and the notebooks' still reach stderr). Each kernel gets its own
# socket folder: jupyter_client numbers IPC sockets from 1 in one shared path by default, and two
# kernels started at once would then take the same sockets.
_KERNEL_CONFIG = {"KernelManager": {"transport": "ipc"}}


@dataclass
class Options:
    """How notebooks are executed (one per `clipkit report` call)."""
    kernel: str        # Jupyter kernel name ("python3": this interpreter's environment)
    timeout: int       # seconds per cell
    html: bool         # also export <stem>.html
    hide_code: bool    # HTML without input cells
    jobs: int          # notebooks run at once
    force: bool        # execute even notebooks whose inputs are unchanged
    stream: bool       # copy the kernel's stderr to ours (experiments: training progress)


@contextmanager
def kernel_threads(jobs: int):
    """With several kernels at once, each gets cores // jobs BLAS/OpenMP threads (unless the user set
    OMP_NUM_THREADS): two kernels with two threads each on two cores would fight for them."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))  # read by each kernel's torch
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


def run_notebook(nb, model_dir, params, opt: Options, old) -> dict:
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
    sockets = tempfile.mkdtemp(prefix="clipkit-kernel-")  # short: a socket path has ~100 characters
    config = {"KernelManager": {**_KERNEL_CONFIG["KernelManager"], "ip": os.path.join(sockets, "ipc")}}
    t0 = time.perf_counter()
    try:
        # request_save_on_cell_execute=True: papermill only writes the output itself on a cell
        # error; on a timeout or dead kernel the partial notebook would be lost otherwise.
        out = pm.execute_notebook(
            str(nb), str(tmp_nb), parameters={**params, "OUT_DIR": str(staging)},
            kernel_name=opt.kernel, language="python", progress_bar=False, request_save_on_cell_execute=True,
            # cwd=None: the kernel starts in ours (papermill would os.chdir, which is process-wide, per run)
            execution_timeout=opt.timeout, cwd=None, stderr_file=sys.stderr if opt.stream else None,
            config=Config(config))
        if opt.html:
            page = HTMLExporter(exclude_input=opt.hide_code).from_notebook_node(out)[0]
    except Exception as exc:  # anything: cell error, timeout, dead kernel, export failure
        entry.update(status="failed", error=describe(exc))
        if tmp_nb.exists():
            os.replace(tmp_nb, failed_nb)
            entry["failed_notebook"] = failed_nb.name
        shutil.rmtree(failed_dir, ignore_errors=True)
        if any(staging.iterdir()):  # partial tables/plots help debugging; keep them aside
            os.replace(staging, failed_dir)
    else:
        produced = promote(staging, model_dir)
        for stale in set(old.get("metrics", [])) - set(produced):  # a probe renamed or removed
            (model_dir / stale).unlink(missing_ok=True)
        entry["metrics"] = produced
        os.replace(tmp_nb, model_dir / f"{stem}.ipynb")
        if opt.html:
            atomic_write_text(model_dir / f"{stem}.html", page)
        else:  # an HTML page from an older run would contradict the new notebook
            (model_dir / f"{stem}.html").unlink(missing_ok=True)
        failed_nb.unlink(missing_ok=True)
        shutil.rmtree(failed_dir, ignore_errors=True)
    finally:
        tmp_nb.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)
    entry.update(seconds=round(time.perf_counter() - t0, 2), finished=now())
    return entry


def promote(staging: Path, model_dir: Path) -> list[str]:
    """Move everything the notebook wrote into model_dir; return the metrics file names.

    Folders (figures/) are merged file by file: other notebooks' files in them stay."""
    names = []
    for item in sorted(staging.iterdir()):
        dest = model_dir / item.name
        if item.is_dir() and not item.is_symlink():
            dest.mkdir(exist_ok=True)
            promote(item, dest)
            continue
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)  # a file replacing a folder of the same name
        os.replace(item, dest)
        names += [item.name] if item.name.endswith(".metrics.json") else []
    return names


def describe(exc: BaseException) -> str:
    """Exception type and message (~20 lines); for a cell error, the end of the kernel's traceback."""
    if hasattr(exc, "ename") and hasattr(exc, "traceback"):  # PapermillExecutionError
        tb = _ANSI.sub("", "\n".join(exc.traceback)).splitlines()
        return "\n".join([f"{type(exc).__name__}: {exc.ename}: {exc.evalue}"] + tb[-19:])
    lines = _ANSI.sub("", f"{type(exc).__name__}: {exc}").splitlines()
    return "\n".join(lines[:20])
