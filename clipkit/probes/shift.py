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
as such. Across several models' results, `clipkit.analysis.robustness.effective_robustness_of(results)` fits
the logit-space trend to the linear-probe points (the reference family: 2+ distinct ID accuracies) and
scores the zero-shot points against it, with a scene-bootstrap CI; never a point against its own line.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from clipkit.probes.protocol import ProbeSpec, SpecError, load_spec, register
from clipkit.probes.shift_results import CLASSIFIERS, ShiftResult, summarise  # noqa: F401  (this kind's results)
from clipkit.world.seeds import scene_seed  # item i's shift noise: its own seed namespace


@dataclass
class ShiftOptions:
    """Options of a shift spec (the common `n` is the number of ID test scenes, default 200)."""
    family: str = "shape"            # a synthetic family of clipkit.data.classification.FAMILIES
    shifts: list | None = None       # shift names of clipkit.world.shifts.SHIFTS; None: all of them
    severities: list = field(default_factory=lambda: [1, 3, 5])  # a shift is run at those it has
    n_train: int = 400               # ID training images for the linear probe
    templates: str | list | None = None  # None: the family's own
    image_size: int = 72             # render size in pixels (the model's preprocess resizes)

    def __post_init__(self):
        from clipkit.world.shifts import SHIFTS   # scipy (world.corruptions): here, not at import
        from clipkit.data.families import FAMILIES
        if self.family not in FAMILIES:
            raise SpecError(f"option 'family': unknown family {self.family!r}; known synthetic families: "
                            f"{sorted(FAMILIES)}")
        for key in ("n_train", "image_size"):
            if getattr(self, key) < 1:
                raise SpecError(f"option {key!r} must be >= 1, got {getattr(self, key)}")
        known = [s.name for s in SHIFTS]
        bad = [s for s in self.shifts or [] if s not in known]
        if bad:
            raise SpecError(f"option 'shifts': unknown shift(s) {bad}; known: {known}")
        sev = self.severities
        if not sev or any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 5 for s in sev):
            raise SpecError(f"option 'severities' must be a non-empty list of integers in 1..5, got {sev!r}")


def conditions(spec: ProbeSpec) -> list[tuple[str, int]]:
    """(shift, severity) pairs to run, ID first (severity 0); a shift runs only at severities it has."""
    from clipkit.world.shifts import IN_DISTRIBUTION, SHIFTS, get_shift
    names = spec.options.shifts if spec.options.shifts is not None else [s.name for s in SHIFTS]
    return [(IN_DISTRIBUTION, 0)] + [(n, sev) for n in names for sev in spec.options.severities
                                      if sev in get_shift(n).severities]


def run_shift(spec, model, preprocess, tokenizer, model_name: str = "", cache=True,
              batch_size: int = 256) -> ShiftResult:
    """Run a shift spec (name, path, dict or ProbeSpec) on a loaded model; see the module docstring."""
    from clipkit.world.shifts import shifted_image   # scipy (world.corruptions): not at import
    from clipkit.evaluate import (SyntheticClassification, encode_images, extract_image_features, get_templates,
                                  zero_shot_classifier)
    from clipkit.evaluate.linear_probe import fit_linear_probe, predict
    spec = spec if isinstance(spec, ProbeSpec) else load_spec(spec)
    o = spec.options
    test = SyntheticClassification(o.family, spec.n, spec.seed, "test", image_size=o.image_size)
    train = SyntheticClassification(o.family, o.n_train, spec.seed, "train", preprocess, o.image_size)
    templates = get_templates(o.templates) if o.templates is not None else test.templates
    classifier = zero_shot_classifier(model, tokenizer, test.classes, templates)          # (d, C)
    tr = extract_image_features(model, train, batch_size=batch_size, cache=cache, progress=False)
    probe, lam = fit_linear_probe(tr.features.numpy(), tr.targets.numpy(), seed=spec.seed)
    scenes = [test.scene(i) for i in range(spec.n)]
    targets = np.arange(spec.n) % len(test.classes)                                     # the dataset's labelling
    parts = []
    for shift, sev in conditions(spec):
        images = [shifted_image(s, shift, max(sev, 1), seed=scene_seed("shift-noise", spec.seed, i), size=o.image_size)
                  for i, s in enumerate(scenes)]
        X = encode_images(model, preprocess, images, batch_size=batch_size)                # (n_test, d)
        zs_pred = (X @ classifier).argmax(1).numpy()
        lp_pred = predict(probe, X.numpy())
        parts.append(pd.DataFrame({"shift": shift, "severity": sev, "item": np.arange(spec.n),
                                   "target": targets, "zs_pred": zs_pred, "zs_correct": zs_pred == targets,
                                   "lp_pred": lp_pred, "lp_correct": lp_pred == targets}))
    result = summarise(pd.concat(parts, ignore_index=True), len(test.classes), spec, model_name)
    result.summary.update(lp_lambda=lam, read=spec.n, skipped=0)   # rendered scenes: none unreadable
    return result


register("shift", ShiftOptions, run_shift, n_default=200)
