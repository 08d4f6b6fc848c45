"""Distribution-shift probe: zero-shot vs an in-distribution linear probe on shifted copies of one test set.

The in-distribution (ID) set is a synthetic classification family's test split (default `shape`:
one object, name its shape). Every shifted set is *the same scenes* rendered under a shift of
clipkit.world.shifts (ImageNet-C corruptions, rendering styles) at each severity, so item i of every set
is the same question and ID-vs-shift differences are paired. Both classifiers read the same image
features: the §3.1.4 zero-shot head, and an appendix-A.3 linear probe fitted on ID train features.

Robustness (CLIP paper §3.3, Taori et al. 2020). Effective robustness needs a trend fitted across a
*family* of models; one model's two classifiers give two points, through which any line passes
exactly, so their "ER" would be 0 by construction. A single result therefore reports the ID->OOD
drop of each classifier and the relative robustness (zero-shot OOD minus linear-probe OOD), labelled
as such. `clipkit.analysis.robustness.effective_robustness_of(results)` fits the logit-space trend once several models' results
(3+ classifier points with distinct ID accuracies) are at hand.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipkit.core import stats
from clipkit.probes.engine import SpecError, _jsonable
from clipkit.probes.finegrained import check_keys, fit_linear_probe, predict, read_with_overrides
from clipkit.world.shifts import IN_DISTRIBUTION
from clipkit.world.shifts import SHIFTS, get_shift, shifted_image

SEED_STRIDE = 100_000  # item i of a spec with seed s draws its shift noise from seed s * stride + i
CLASSIFIERS = ("zero-shot", "linear probe")


@dataclass
class ShiftSpec:
    """Which family, how many images, which shifts at which severities."""
    name: str
    family: str = "shape"            # a synthetic family of clipkit.data.classification.FAMILIES
    shifts: list | None = None       # shift names of clipkit.world.shifts.SHIFTS; None: all of them
    severities: list = field(default_factory=lambda: [1, 3, 5])  # a shift is run at those it has
    n_train: int = 400               # ID training images for the linear probe
    n_test: int = 200                # ID test scenes; each shifted set has the same n
    seed: int = 0
    templates: str | list | None = None  # None: the family's own
    image_size: int = 72
    description: str = ""


SHIFT_KEYS = {"name": str, "family": str, "shifts": (list, type(None)), "severities": list, "n_train": int,
              "n_test": int, "seed": int, "templates": (str, list, type(None)), "image_size": int,
              "description": str}


def load_shift_spec(spec, **overrides) -> ShiftSpec:
    """A validated ShiftSpec from a dict, YAML path or name in probes/; overrides (n_test=...) replace keys."""
    from clipkit.data.classification import FAMILIES
    d, source = read_with_overrides(spec, overrides)
    d = check_keys(d, SHIFT_KEYS, ("name",), source)
    if d.get("family", "shape") not in FAMILIES:
        raise SpecError(f"{source}: unknown family {d['family']!r}; known synthetic families: {sorted(FAMILIES)}")
    for key in ("n_train", "n_test", "image_size"):
        if d.get(key, 1) < 1:
            raise SpecError(f"{source}: {key!r} must be >= 1, got {d[key]}")
    known = [s.name for s in SHIFTS]
    bad = [s for s in d.get("shifts") or [] if s not in known]
    if bad:
        raise SpecError(f"{source}: unknown shift(s) {bad}; known: {known}")
    sev = d.get("severities", [1, 3, 5])
    if not sev or any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 5 for s in sev):
        raise SpecError(f"{source}: 'severities' must be a non-empty list of integers in 1..5, got {sev!r}")
    return ShiftSpec(**d)


def conditions(spec: ShiftSpec) -> list[tuple[str, int]]:
    """(shift, severity) pairs to run, ID first (severity 0); a shift runs only at severities it has."""
    names = spec.shifts if spec.shifts is not None else [s.name for s in SHIFTS]
    return [(IN_DISTRIBUTION, 0)] + [(n, sev) for n in names for sev in spec.severities
                                      if sev in get_shift(n).severities]


@dataclass
class ShiftResult:
    """Per-item correctness under every condition, the tidy accuracy table, robustness and summary."""
    spec: ShiftSpec
    model: str
    items: pd.DataFrame       # condition x item: shift, severity, item, target, zs_correct, lp_correct
    table: pd.DataFrame       # classifier, shift, kind, severity, accuracy, ci_low, ci_high, n, chance, verdict
    robustness: pd.DataFrame  # per classifier: id_accuracy, ood_accuracy, drop, n_shifts
    summary: dict = field(default_factory=dict)

    def per_shift(self) -> pd.DataFrame:
        """Mean accuracy per (classifier, shift) over its severities, with the ID accuracy and the drop."""
        ood = self.table[self.table["shift"] != IN_DISTRIBUTION]
        out = ood.groupby(["classifier", "shift"], sort=False)["accuracy"].mean().reset_index()
        id_acc = self.table[self.table["shift"] == IN_DISTRIBUTION].set_index("classifier")["accuracy"]
        return out.assign(id_accuracy=out["classifier"].map(id_acc), drop=lambda d: d["id_accuracy"] - d["accuracy"])

    def metrics(self) -> dict:
        """Flat dict: zero-shot ID accuracy/ci/chance/n (the report index's keys), lp_*, OOD means, drops,
        and `zs[shift@severity]` / `lp[shift@severity]` accuracies."""
        flat = dict(self.summary)
        for _, r in self.table.iterrows():
            if r["shift"] != IN_DISTRIBUTION:
                flat[f"{'zs' if r['classifier'] == 'zero-shot' else 'lp'}[{r['shift']}@{r['severity']}]"] = r["accuracy"]
        return flat

    def save(self, out_dir: str | Path) -> Path:
        """Write <name>.csv (the tidy table), <name>.items.csv and <name>.json (the record)."""
        from clipkit.core.files import atomic_write_json, atomic_write_text
        out, name = Path(out_dir), self.spec.name
        atomic_write_text(out / f"{name}.csv", self.table.to_csv(index=False))
        atomic_write_text(out / f"{name}.items.csv", self.items.to_csv(index=False))
        record = {"dataset": f"probe:{name}", "model": self.model, "task": "distribution_shift",
                  "metrics": _jsonable(self.summary), "table": _jsonable(self.table.to_dict("records")),
                  "robustness": _jsonable(self.robustness.to_dict("records")),
                  "spec": _jsonable(asdict(self.spec)), "language": "en"}
        return atomic_write_json(out / f"{name}.json", record)


def summarise(items: pd.DataFrame, n_classes: int, spec: ShiftSpec, model_name: str = "") -> ShiftResult:
    """Tables and summary from per-item correctness (columns shift, severity, item, zs_correct, lp_correct).

    Optional item columns, for shifts that are not clipkit.world.shifts (e.g. folder datasets, shift_folders.py):
    `n_classes` (classes scored in that condition: chance is 1/n_classes there, else 1/`n_classes`) and
    `kind`; without `lp_correct` there is no linear probe (its rows are left out, its summary keys NaN)."""
    present = [(c, col) for c, col in zip(CLASSIFIERS, ("zs_correct", "lp_correct")) if col in items]
    rows = []
    for (shift, sev), g in items.groupby(["shift", "severity"], sort=False):
        kind = ("none" if shift == IN_DISTRIBUTION else g["kind"].iloc[0] if "kind" in g
                else get_shift(shift).kind)
        chance = 1.0 / (int(g["n_classes"].iloc[0]) if "n_classes" in g else n_classes)
        for clf, col in present:
            rows.append({"classifier": clf, "shift": shift, "kind": kind, "severity": int(sev),
                         **stats.accuracy_summary(g[col].astype(bool), chance, seed=spec.seed)})
    table = pd.DataFrame(rows)
    # robustness per classifier: severities averaged within a shift, then shifts averaged (as robustness_by_model)
    ood = table[table["shift"] != IN_DISTRIBUTION]
    per_shift = ood.groupby(["classifier", "shift"])["accuracy"].mean()
    id_acc = table[table["shift"] == IN_DISTRIBUTION].set_index("classifier")["accuracy"]
    rob = pd.DataFrame([{"classifier": c, "id_accuracy": id_acc[c],
                         "ood_accuracy": per_shift[c].mean() if c in per_shift else float("nan"),
                         "n_shifts": int(per_shift[c].size) if c in per_shift else 0} for c, _ in present])
    rob["drop"] = rob["id_accuracy"] - rob["ood_accuracy"]
    zs_id = table[(table["shift"] == IN_DISTRIBUTION) & (table["classifier"] == "zero-shot")].iloc[0]
    lp_id = table[(table["shift"] == IN_DISTRIBUTION) & (table["classifier"] == "linear probe")]
    lp_id = lp_id.iloc[0] if len(lp_id) else pd.Series(float("nan"), index=["accuracy", "ci_low", "ci_high", "n"])
    r = rob.set_index("classifier").reindex(list(CLASSIFIERS))    # a missing probe: NaN row
    summary = {"probe": spec.name, "family": getattr(spec, "family", None), "model": model_name,
               **{k: zs_id[k] for k in ("accuracy", "ci_low", "ci_high", "n", "chance", "verdict")},
               **{f"lp_{k}": lp_id[k] for k in ("accuracy", "ci_low", "ci_high", "n")},
               "n_conditions": int(len(ood) // len(present)), "n_shifts": int(r.loc["zero-shot", "n_shifts"]),
               "zs_ood_accuracy": r.loc["zero-shot", "ood_accuracy"], "lp_ood_accuracy": r.loc["linear probe", "ood_accuracy"],
               "zs_drop": r.loc["zero-shot", "drop"], "lp_drop": r.loc["linear probe", "drop"],
               # relative robustness (§3.3): OOD accuracy of zero-shot over the ID-adapted probe; NOT effective robustness
               "relative_robustness_zs_vs_lp": r.loc["zero-shot", "ood_accuracy"] - r.loc["linear probe", "ood_accuracy"]}
    return ShiftResult(spec, model_name, items, table, rob, summary)


def run_shift(spec, model, preprocess, tokenizer, model_name: str = "", cache=True,
              batch_size: int = 256) -> ShiftResult:
    """Run a shift spec (name, path, dict or ShiftSpec) on a loaded model; see the module docstring."""
    from clipkit.evaluate import (SyntheticClassification, encode_images, extract_image_features, get_templates,
                                  zero_shot_classifier)
    spec = spec if isinstance(spec, ShiftSpec) else load_shift_spec(spec)
    test = SyntheticClassification(spec.family, spec.n_test, spec.seed, "test", image_size=spec.image_size)
    train = SyntheticClassification(spec.family, spec.n_train, spec.seed, "train", preprocess, spec.image_size)
    templates = get_templates(spec.templates) if spec.templates is not None else test.templates
    classifier = zero_shot_classifier(model, tokenizer, test.classes, templates)          # (d, C)
    tr = extract_image_features(model, train, batch_size=batch_size, cache=cache, progress=False)
    probe, lam = fit_linear_probe(tr.features.numpy(), tr.targets.numpy(), seed=spec.seed)
    scenes = [test.scene(i) for i in range(spec.n_test)]
    targets = np.arange(spec.n_test) % len(test.classes)                                     # the dataset's labelling
    parts = []
    for shift, sev in conditions(spec):
        images = [shifted_image(s, shift, max(sev, 1), seed=spec.seed * SEED_STRIDE + i, size=spec.image_size)
                  for i, s in enumerate(scenes)]
        X = encode_images(model, preprocess, images, batch_size=batch_size)                # (n_test, d)
        zs_pred = (X @ classifier).argmax(1).numpy()
        lp_pred = predict(probe, X.numpy())
        parts.append(pd.DataFrame({"shift": shift, "severity": sev, "item": np.arange(spec.n_test),
                                   "target": targets, "zs_pred": zs_pred, "zs_correct": zs_pred == targets,
                                   "lp_pred": lp_pred, "lp_correct": lp_pred == targets}))
    result = summarise(pd.concat(parts, ignore_index=True), len(test.classes), spec, model_name)
    result.summary["lp_lambda"] = lam
    return result
