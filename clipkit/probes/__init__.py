"""Probe suite: specs in probes/*.yaml run through one of three runners.

* caption-choice probes (a `family:` of counting, spatial, binding, jsonl) -> engine.run_probe
* fine-grained classification (a `dataset:` key)                           -> finegrained.run_finegrained
* distribution shift (a `shifts:` / `severities:` key)                     -> shift.run_shift
* real in- vs out-of-distribution folders (an `ood:` key)                  -> shift_folders.run_folder_shift
`run_any` picks the runner from the spec, so the CLI and reports treat every spec alike.
"""
from clipkit.probes.engine import FAMILIES, Item, ProbeResult, ProbeSpec, SpecError, load_spec, run_probe, validate
from clipkit.probes import binding, counting, jsonl, spatial  # noqa: E402,F401  (register the families)


def spec_kind(spec) -> str:
    """'folder_shift', 'shift', 'finegrained' or 'choice' for a spec given as a name, path or dict."""
    from clipkit.probes.engine import read_spec
    d, _ = read_spec(spec)
    if not isinstance(d, dict):
        raise SpecError(f"{spec}: a probe spec is a mapping of keys")
    if "ood" in d:
        return "folder_shift"
    return "shift" if ("shifts" in d or "severities" in d) else "finegrained" if "dataset" in d else "choice"


def load_any(spec, **overrides):
    """The validated spec object of whichever kind `spec` is (overrides: n, seed, ...)."""
    kind = spec_kind(spec)
    if kind == "choice":
        return load_spec(spec, **overrides)
    overrides = {("n_test" if k == "n" else k): v for k, v in overrides.items() if v is not None}
    if kind == "folder_shift":
        from clipkit.probes.shift_folders import load_folder_shift_spec
        return load_folder_shift_spec(spec, **overrides)
    if kind == "finegrained":
        from clipkit.probes.finegrained import load_finegrained_spec
        return load_finegrained_spec(spec, **overrides)
    from clipkit.probes.shift import load_shift_spec
    return load_shift_spec(spec, **overrides)


def run_any(spec, model, preprocess, tokenizer, model_name: str = ""):
    """Run any spec (see the module docstring); every result has .summary-like metrics() and .save()."""
    from clipkit.probes.finegrained import FineGrainedSpec, run_finegrained
    from clipkit.probes.shift import ShiftSpec, run_shift
    from clipkit.probes.shift_folders import FolderShiftSpec, run_folder_shift
    spec = spec if isinstance(spec, (ProbeSpec, FineGrainedSpec, ShiftSpec, FolderShiftSpec)) else load_any(spec)
    if isinstance(spec, FolderShiftSpec):
        return run_folder_shift(spec, model, preprocess, tokenizer, model_name=model_name)
    if isinstance(spec, FineGrainedSpec):
        return run_finegrained(spec, model, preprocess, tokenizer, model_name=model_name)
    if isinstance(spec, ShiftSpec):
        return run_shift(spec, model, preprocess, tokenizer, model_name=model_name)
    return run_probe(spec, model, preprocess, tokenizer, model_name=model_name)


__all__ = ["FAMILIES", "Item", "ProbeResult", "ProbeSpec", "SpecError", "load_spec", "run_probe", "validate",
           "spec_kind", "load_any", "run_any"]
