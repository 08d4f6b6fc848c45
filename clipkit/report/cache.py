"""The report's execution cache: a notebook runs again only when something it depends on changed.

A notebook's *inputs key* is a hash of everything its outputs can depend on:

    source       its code cells (markdown and outputs do not count: editing prose reruns nothing)
    parameters   the values `clipkit report` injects (MODEL, the --param values it declares)
    model        the weights of MODEL (and of any model named in a *MODEL* list parameter, such as
                 EXTRA_MODELS): a clipkit checkpoint folder or `<preset>:synthetic` -> a hash of its
                 weights file; a spec naming a weights file or folder -> their size and mtime;
                 `<preset>` / `<preset>:random` -> the preset's config (random init is seeded);
                 a zoo or hub tag -> the spec itself (a pretrained tag names fixed weights)
    code         clipkit's own code: a hash of the package's .py/.json/.yaml files (probe specs included)
    data         what else it reads: the probe spec folders of $CLIPKIT_PROBES and ./probes, the
                 top level of $CLIPKIT_DATA, and any existing path named by a string in its code or
                 parameters (size and mtime of the files, not their bytes)
    output       the kernel and the HTML options (they change what is written)

The key of the run that produced a notebook's current outputs is kept in run.json (its data part
taken when that run ended: see `after_run`); a notebook whose key matches, whose last run succeeded
and whose outputs are all still on disk is not executed.

Written here rather than taken from jupyter-cache: jupyter-cache keys a notebook by its code cells
only and keeps outputs in its own database, while a clipkit report must also key on the model's
weights, clipkit's code and the data, inject papermill parameters, and promote outputs through its
staging folders (a failure never replaces the last good report). The key is what matters here, and
it is these few functions. Nothing here imports torch.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from clipkit.core.fingerprints import files_fingerprint, folder_fingerprint, params_fingerprint
from clipkit.core.modelspec import CHECKPOINT_META, CONFIG_DIR, WEIGHTS_FILE, default_checkpoint_dir, parse

PACKAGE = Path(__file__).resolve().parents[1]        # clipkit/
CODE_SUFFIXES = (".py", ".json", ".yaml", ".yml")    # what the package's behaviour is made of
DATA_ENV, PROBES_ENV = "CLIPKIT_DATA", "CLIPKIT_PROBES"
_SKIP_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints"}
_HASH_CHUNK = 1 << 20


def code_fingerprint(package: Path = PACKAGE) -> str:
    """A hash of the names and contents of clipkit's .py/.json/.yaml files (sub-folders included)."""
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(package)):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS)
        for f in sorted(files):
            if f.endswith(CODE_SUFFIXES):
                p = Path(d) / f
                h.update(f"{p.relative_to(package)}\0".encode() + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime): a weights file is hashed once a run."""
    st = path.stat()
    return _file_hash(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_stamp(spec: str) -> str:
    """What identifies a model spec's weights without loading the model (see the module docstring).

    The spec is read by clipkit.core.modelspec, the one grammar (no torch or open_clip import: keying a
    rerun where nothing changed stays a matter of seconds)."""
    m = parse(spec)
    if m.source == "local-dir":
        return f"local-dir:{folder_fingerprint(m.path) if m.path.is_dir() else 'missing'}"
    if m.source == "hf-hub":
        return m.spec
    if m.source == "run" and (m.path / CHECKPOINT_META).exists():
        return _weights(m.path / WEIGHTS_FILE)
    if m.source == "preset" and m.tag in ("", "random"):
        return "random:" + file_hash(CONFIG_DIR / f"{m.name}.json")
    if m.source == "preset" and m.tag == "synthetic":
        return _weights(default_checkpoint_dir(m.name) / WEIGHTS_FILE)
    if m.source == "weights" and m.path.exists():
        return "file:" + files_fingerprint([m.path])
    return m.spec  # a pretrained tag (or an unknown spec: the notebook's own check reports it)


def _weights(path: Path) -> str:
    return "weights:" + (file_hash(path) if path.is_file() else "missing")


def code_cells(nb: Path) -> list[str]:
    """The source of a notebook's code cells, in order."""
    cells = json.loads(nb.read_text(encoding="utf-8")).get("cells", [])
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in cells if c.get("cell_type") == "code"]


def data_stamp(sources: list[str], parameters: dict) -> dict:
    """Stat fingerprints of the probe spec folders, $CLIPKIT_DATA's top level, and of every existing
    path named by a string literal in the code or by a parameter value (relative to the cwd)."""
    out = {}
    for env in (PROBES_ENV,):
        for folder in filter(None, os.environ.get(env, "").split(os.pathsep)):
            out[f"${env}:{folder}"] = _path_stamp(Path(folder).expanduser())
    if Path("probes").is_dir():
        out["probes"] = _path_stamp(Path("probes"))
    if root := os.environ.get(DATA_ENV):
        root = Path(root).expanduser()
        entries = sorted(root.iterdir()) if root.is_dir() else []
        out[f"${DATA_ENV}"] = f"{root}:{files_fingerprint(entries)}"
    for text in sorted(set(_strings(sources, parameters))):
        if len(text) < 256 and text not in (".", "..") and (os.sep in text or "." in text):
            p = Path(text).expanduser()
            try:
                if p.exists():
                    out[text] = _path_stamp(p)
            except OSError:  # not a usable path name (too long, bad characters): not data
                pass
    return out


def _path_stamp(p: Path) -> str:
    return folder_fingerprint(p) if p.is_dir() else files_fingerprint([p])


def _strings(sources: list[str], parameters: dict):
    """String literals in the code cells and string values (or list items) of the parameters."""
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:  # IPython magics: the notebook's own run reports real errors
            continue
        yield from (n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    for v in parameters.values():
        yield from (x for x in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(x, str))


def inputs_key(nb: Path, parameters: dict, options: dict) -> dict:
    """{'hash': ..., 'parts': {...}}: the notebook's inputs (see the module docstring). `parameters`
    are the injected ones (MODEL included, OUT_DIR excluded); `options` the kernel and HTML options."""
    sources = code_cells(nb)
    models = {}
    for k, v in parameters.items():
        if "MODEL" in k:
            for spec in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(spec, str):
                    models[spec] = model_stamp(spec)
    parts = {"source": hashlib.sha256("\0".join(sources).encode()).hexdigest()[:16],
             "parameters": params_fingerprint(**parameters), "models": models,
             "code": code_fingerprint(), "data": data_stamp(sources, parameters),
             "options": options}
    return {"hash": params_fingerprint(**parts), "parts": parts}


def after_run(key: dict, nb: Path, parameters: dict) -> dict:
    """The key to store for a run that just succeeded: its data part taken again, now. A notebook may
    write where a parameter points (an experiment's RUN_ROOT keeps its trained models); the state it
    left there is what the next run will find, so keying the data as it was before the run would make
    such a notebook rerun every time. (An edit of that data while the notebook ran is not seen.)"""
    parts = {**key["parts"], "data": data_stamp(code_cells(nb), parameters)}
    return {"hash": params_fingerprint(**parts), "parts": parts}


def changed(old: dict | None, new: dict) -> list[str]:
    """Which parts of the key differ from the last good run's (['never run'] when there is none)."""
    if not old or "parts" not in old:
        return ["never run"]
    return [k for k in new["parts"] if old["parts"].get(k) != new["parts"][k]]
