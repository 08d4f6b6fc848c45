"""Probe suite: specs in probes/*.yaml run through one engine; one module per family."""
from clipkit.probes.engine import (FAMILIES, Item, ProbeResult, ProbeSpec, SpecError, load_spec, run_probe,
                                   validate)
from clipkit.probes import binding, counting, jsonl, spatial  # noqa: E402,F401  (register the families)

__all__ = ["FAMILIES", "Item", "ProbeResult", "ProbeSpec", "SpecError", "load_spec", "run_probe", "validate"]
