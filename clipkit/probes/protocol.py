"""The probe protocol: the registry of probe kinds, the one spec reader and validator, and `run_any`.

A probe kind is registered once as (options dataclass, runner). A spec is a YAML mapping

    name: counting            # the spec's name (file names of its results)
    kind: counting            # a registered kind
    n: 300                    # items (or test images) to score
    seed: 0
    options: {counts: [1, 2, 3]}   # fields of the kind's options dataclass
    breakdowns: [count]
    description: ...

and `load_spec` turns it into a `ProbeSpec`, checking every key and type against the dataclass
fields (`ProbeSpec`'s for the top level, the kind's options class for `options:`), so the dataclasses
are the only list of keys. Spec names are looked up in the folders of $CLIPKIT_PROBES
(os.pathsep-separated), then in the specs shipped inside the package (clipkit/probes/specs/).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

SPECS_DIR = Path(__file__).resolve().parent / "specs"   # the specs shipped with the package
ENV_VAR = "CLIPKIT_PROBES"                              # user spec folders, os.pathsep-separated


class SpecError(ValueError):
    """A probe spec is malformed: unknown key, wrong type, missing file."""


def did_you_mean(word, choices) -> str:
    """The hint ` (did you mean 'x'?)` for the closest of `choices` to `word` (difflib), else "": the one
    hint every unknown name gets (spec, kind, key, option, breakdown factor)."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class ProbeSpec:
    """What to ask: the kind, how many items, the seed, the kind's options, the factors to report."""
    name: str                     # the spec's name; results are written as <name>.json / <name>.csv
    kind: str                     # a registered probe kind (KINDS), e.g. "counting", "shift"
    n: int | None = None          # items / test images; None in a file: the kind's default (folder_shift: every image)
    seed: int = 0                 # item-generation, subset and bootstrap seed
    options: Any = None           # an instance of the kind's options dataclass
    breakdowns: list = field(default_factory=list)   # factors (table columns) to report accuracy by
    description: str = ""         # one line for humans


@dataclass(frozen=True)
class Kind:
    """A registered probe kind: its options dataclass and runner `run(spec, model, preprocess, tokenizer,
    model_name=)`; caption-choice kinds also have `items(spec) -> list[Item]` (the engine scores them)."""
    name: str
    options_cls: type
    run: Callable
    items: Callable | None = None      # caption-choice kinds only
    n_default: int | None = 200        # n when a spec gives none (None: every item, where the kind allows)
    n_nullable: bool = False           # may `n: null` be written (folder_shift: every image)
    check: Callable | None = None      # check(spec, source) -> spec: checks that need the spec's file (paths)
    training_range: dict | None = None  # {factor: levels} clipkit's synthetic training corpus shows (flagged outside)
    summarise: Callable | None = None  # summarise(spec, table) -> dict: kind-specific summary keys (caption choice)


KINDS: dict[str, Kind] = {}


def register(kind: str, options_cls: type, run: Callable, **extra) -> Kind:
    """Register a probe kind once: KINDS[kind] = Kind(kind, options_cls, run, **extra)."""
    if kind in KINDS:
        raise ValueError(f"probe kind {kind!r} is registered twice")
    if not dataclasses.is_dataclass(options_cls):
        raise TypeError(f"{kind}: the options class must be a dataclass, got {options_cls!r}")
    KINDS[kind] = Kind(kind, options_cls, run, **extra)
    return KINDS[kind]


# --- typing of values against dataclass fields ------------------------------------------------------------
def _describe(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any value"
    return getattr(typing.get_origin(hint) or hint, "__name__", str(hint))


def _fits(value, hint) -> bool:
    """Does a YAML value fit a field's type hint (int, float (accepts int), str, bool, list, dict, unions)?"""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    hint = typing.get_origin(hint) or hint
    if isinstance(value, bool):            # YAML true/false are ints to Python: only bool fields take them
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))   # YAML writes 1 for 1.0
    return isinstance(hint, type) and isinstance(value, hint)


def check_fields(cls, d: dict, source: str, what: str, skip=(), of: str = "") -> None:
    """SpecError naming `source`, the key and the known keys for any key of `d` that is not a field of
    dataclass `cls`, or whose value does not fit the field's type (`what`: "key" or "option"; `of`: the
    owner named after the unknown key, e.g. " for kind 'counting'")."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in known]
    if unknown:
        raise SpecError(f"{source}: unknown {what}(s) {unknown}{of}{did_you_mean(unknown[0], known)}; known: {known}")
    for k, v in d.items():
        if k not in skip and not _fits(v, hints[k]):
            raise SpecError(f"{source}: {what} {k!r} must be {_describe(hints[k])}, got {v!r}")


def make_options(kind: str, opts: dict, source: str = "spec"):
    """The kind's options dataclass from a mapping, every key and type checked; value checks in the
    class's __post_init__ raise SpecError naming the option, prefixed here with `source`."""
    cls = KINDS[kind].options_cls
    check_fields(cls, opts, source, "option", of=f" for kind {kind!r}")
    try:
        return cls(**opts)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None


def option_defaults(kind: str) -> dict:
    """{option: default} of a kind, read off its options dataclass (the only list of its options)."""
    out = {}
    for f in dataclasses.fields(KINDS[kind].options_cls):
        has = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        out[f.name] = (f.default if f.default is not dataclasses.MISSING else f.default_factory()) if has else None
    return out


def describe_kinds() -> str:
    """One line per registered kind with its options and their defaults (the CLI's --help)."""
    return "\n".join(f"  {k}: " + ", ".join(f"{o}={v!r}" for o, v in option_defaults(k).items())
                     for k in sorted(KINDS))


# --- reading ----------------------------------------------------------------------------------------------
def spec_dirs() -> list[Path]:
    """Folders searched for spec names: those in $CLIPKIT_PROBES, in order, then the package's own."""
    user = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [*user, SPECS_DIR]


def known_specs() -> dict[str, Path]:
    """{name: path} of every spec found by name (a $CLIPKIT_PROBES folder wins over the package)."""
    out: dict[str, Path] = {}
    for d in spec_dirs():
        for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            out.setdefault(p.stem, p)
    return out


def _is_path(spec) -> bool:
    s = str(spec)
    return isinstance(spec, Path) or bool(Path(s).suffix) or "/" in s or os.sep in s


def read_spec(spec) -> tuple[dict, str]:
    """(mapping, source) from a dict, a ProbeSpec, a YAML path (anything with a suffix or a path
    separator), or a spec name searched in $CLIPKIT_PROBES's folders, then in clipkit/probes/specs/."""
    if isinstance(spec, dict):
        return dict(spec), "spec"
    if isinstance(spec, ProbeSpec):
        return dataclasses.asdict(spec), f"spec {spec.name!r}"
    if _is_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SpecError(f"probe spec file {path} not found (give a YAML path or a spec name)")
    else:
        found = known_specs()
        if spec not in found:
            raise SpecError(f"unknown probe spec {spec!r}{did_you_mean(spec, found)}; known: {sorted(found)} (searched "
                            f"{', '.join(map(str, spec_dirs()))}; add folders with ${ENV_VAR})")
        path = found[spec]
    try:
        return yaml.safe_load(path.read_text()), str(path)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e


def load_spec(spec, n: int | None = None, seed: int | None = None, options: dict | None = None) -> ProbeSpec:
    """A validated ProbeSpec from a dict, ProbeSpec, YAML path or spec name (see read_spec).

    n and seed, when not None, replace the spec's; options are merged into its options. Every key and
    type is checked against ProbeSpec's fields and the kind's options dataclass; errors name the file,
    the bad key and the known keys."""
    d, source = read_spec(spec)
    if not isinstance(d, dict):
        raise SpecError(f"{source}: a probe spec is a mapping of keys, got {type(d).__name__}")
    if "family" in d:
        raise SpecError(f"{source}: top-level 'family:' is now 'kind:' (write kind: {d['family']}); a shift "
                        f"probe's image family goes under options: (options: {{family: ...}})")
    if "kind" not in d or "name" not in d:
        raise SpecError(f"{source}: missing required key {'kind' if 'kind' not in d else 'name'!r}; "
                        f"known kinds: {sorted(KINDS)}")
    check_fields(ProbeSpec, d, source, "key", skip=("options",))
    if d["kind"] not in KINDS:
        raise SpecError(f"{source}: unknown kind {d['kind']!r}{did_you_mean(d['kind'], KINDS)}; "
                        f"known kinds: {sorted(KINDS)}")
    kind = KINDS[d["kind"]]
    opts = d.get("options") or {}
    if not isinstance(opts, dict):
        raise SpecError(f"{source}: 'options' must be a mapping of option: value, got {opts!r}")
    d["options"] = make_options(kind.name, {**opts, **(options or {})}, source)
    d.update({k: v for k, v in (("n", n), ("seed", seed)) if v is not None})
    check_fields(ProbeSpec, {k: d[k] for k in ("n", "seed") if k in d}, source, "key")
    if "n" not in d:
        d["n"] = kind.n_default
    if d["n"] is None and not kind.n_nullable:
        raise SpecError(f"{source}: 'n' must be an integer >= 1 for kind {kind.name!r}, got null")
    if d["n"] is not None and d["n"] < 1:
        raise SpecError(f"{source}: 'n' must be >= 1{' or null' if kind.n_nullable else ''}, got {d['n']}")
    out = ProbeSpec(**d)
    return kind.check(out, source) if kind.check else out


def parse_option(text: str) -> tuple[str, Any]:
    """("KEY", value) from "KEY=VALUE", the value read as YAML ("3" -> 3, "[1, 2]" -> a list, "null" ->
    None, "true" -> True); load_spec then types and checks it against the kind's options dataclass."""
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--option {text!r}: expected KEY=VALUE, e.g. --option counts=[1,2,3]")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value   # not YAML: the raw text (a template such as "a photo of {}: ...")
    return key.strip(), parsed


def run_any(spec, model, preprocess, tokenizer, model_name: str = ""):
    """Run a spec of any kind (name, path, dict or ProbeSpec) with its kind's registered runner.
    Every result has .summary, .metrics() and .save(out_dir)."""
    spec = spec if isinstance(spec, ProbeSpec) else load_spec(spec)
    if spec.kind not in KINDS:
        raise SpecError(f"unknown kind {spec.kind!r}; known kinds: {sorted(KINDS)}")
    return KINDS[spec.kind].run(spec, model, preprocess, tokenizer, model_name=model_name)
