"""Probe suite: one protocol (protocol.py) over registered kinds; specs ship in clipkit/probes/specs/.

Every kind registers once as (options dataclass, runner) when its module is imported below:

* caption choice, scored by the shared engine (engine.run_probe): counting, spatial, binding, jsonl
* finegrained: zero-shot vs a linear probe per class of a classification dataset
* shift: zero-shot vs an ID linear probe on shifted copies of synthetic scenes
* folder_shift: the same on real in- vs out-of-distribution image folders

`load_spec` reads and validates any spec (name, path, dict); `run_any` runs it with its kind's runner.
"""
from clipkit.probes.protocol import (KINDS, ProbeSpec, SpecError, known_specs, load_spec, parse_option, read_spec,
                                     register, run_any)
from clipkit.probes.engine import Item, ProbeResult, choice_kind, run_probe
# the kinds: importing a module registers it (one explicit list; no kind imports another)
from clipkit.probes import benchmarks, binding, counting, finegrained, jsonl, shift, shift_folders, spatial  # noqa: E402,F401

__all__ = ["KINDS", "Item", "ProbeResult", "ProbeSpec", "SpecError", "choice_kind", "known_specs", "load_spec",
           "parse_option", "read_spec", "register", "run_any", "run_probe"]
