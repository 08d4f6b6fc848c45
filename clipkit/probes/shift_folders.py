"""Distribution shift on real data: an in-distribution image folder against out-of-distribution folders.

The synthetic shift probe (shift.py) renders the same scenes under each shift; here the sets are
data on disk, laid out as ImageFolders (root/<class folder>/<image>), e.g. ImageNet val as the ID
test set and ImageNet-V2 / -R / -Sketch as OOD sets. Items are therefore *not* paired across sets.
Both classifiers of the CLIP paper's §3.3 comparison read the same L2-normalised image features:

- zero-shot: the §3.1.4 prompt-ensembled classifier over the ID class names;
- linear probe: appendix A.3's protocol fitted on `id_train` features (no `id_train`: no probe).

Class subsets. An OOD folder may hold a subset of the ID classes (ImageNet-R and -A cover 200 of
ImageNet's 1000). As in Hendrycks et al. 2021 and the CLIP paper, each set is scored among *its own*
classes: both classifiers' logits are restricted to the classes present in that folder before the
argmax, and its chance level is 1 / (classes in that folder). A class folder counts as present even
when empty. Results are shift_results.ShiftResult tables (shift = the OOD set's name, kind "dataset",
severity 0), so clipkit.analysis.robustness.effective_robustness_of scores models as for synthetic shifts: against
the trend of their linear probes (needs `id_train`), a reference passed in, or, with reference=None, as residuals
from the trend of these models (named so); the sets are not copies of one another, so no scene-bootstrap CI.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from clipkit.probes.protocol import ProbeSpec, SpecError, load_spec, register
from clipkit.probes.shift_results import ShiftResult, summarise

OOD_KIND = "dataset"  # the `kind` of every OOD row in the table (synthetic shifts: corruption / style)


@dataclass
class FolderShiftOptions:
    """Options of a folder_shift spec (the common `n` caps each test set, ID and OOD; null: every image)."""
    id_test: str = ""                         # ImageFolder of the ID test set; its class folders are the ID classes
    ood: dict = field(default_factory=dict)   # {set name: ImageFolder}; class folders a subset of the ID ones
    id_train: str | None = None               # ImageFolder for the linear probe (same classes); None: zero-shot only
    classnames: str | dict | None = None      # {folder: "class name"} inline or a JSON/YAML file; None: folder names
    templates: str | list | None = None       # a clipkit.evaluate.zeroshot.get_templates name or list; None: the 80
    n_train: int | None = None                # seeded subset cap of id_train (None: every image)

    def __post_init__(self):
        from clipkit.world.shifts import IN_DISTRIBUTION   # scipy (world.corruptions): not at import
        if not self.id_test:
            raise SpecError("option 'id_test' is required: the ImageFolder of the in-distribution test set")
        if self.n_train is not None and self.n_train < 1:
            raise SpecError(f"option 'n_train' must be >= 1 or null, got {self.n_train}")
        if not self.ood or not all(isinstance(k, str) and isinstance(v, str) for k, v in self.ood.items()):
            raise SpecError(f"option 'ood' must be a non-empty mapping {{set name: folder}}, got {self.ood!r}")
        if IN_DISTRIBUTION in self.ood:
            raise SpecError(f"option 'ood': {IN_DISTRIBUTION!r} is the ID set's name; rename that OOD set")


def class_folders(root) -> list[str]:
    """Class folder names of an ImageFolder, in torchvision's label order (sorted)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def _folder(path, base: Path, what: str, source: str) -> Path:
    """`path` resolved against the spec file's folder; SpecError naming it when it is not a folder."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_dir():
        raise SpecError(f"{source}: {what} folder {p} does not exist (expected <folder>/<class>/<image>)")
    return p


def _read_classnames(value, base: Path, source: str) -> dict:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise SpecError(f"{source}: classnames file {p} does not exist")
    try:
        m = yaml.safe_load(p.read_text())   # YAML reads JSON too
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: classnames file {p} is not valid JSON/YAML: {e}") from e
    if not isinstance(m, dict):
        raise SpecError(f"{source}: classnames file {p} must map folder names to class names")
    return {str(k): str(v) for k, v in m.items()}


def check_folders(spec: ProbeSpec, source: str) -> ProbeSpec:
    """The spec with its folders checked and stored absolute, before any model loads: each exists, OOD
    and train class folders are ID classes, the class-name map covers every ID folder. Relative paths
    are read from the spec file's folder (a dict spec: the working directory)."""
    d = dict(spec.options.__dict__)
    d["ood"] = dict(d["ood"])
    base = Path(source).resolve().parent if Path(source).is_file() else Path.cwd()
    d["id_test"] = str(_folder(d["id_test"], base, "id_test", source))
    id_classes = class_folders(d["id_test"])
    if not id_classes:
        raise SpecError(f"{source}: id_test folder {d['id_test']} has no class folders")
    folders = {f"ood {name!r}": (name, path) for name, path in d["ood"].items()}
    if d.get("id_train") is not None:
        folders["id_train"] = (None, d["id_train"])
    for what, (name, path) in folders.items():
        p = _folder(path, base, what, source)
        unknown = sorted(set(class_folders(p)) - set(id_classes))
        missing = sorted(set(id_classes) - set(class_folders(p)))
        if unknown:
            raise SpecError(f"{source}: {what} folder {p} has class folder(s) that are not ID classes "
                            f"(not in {d['id_test']}): {unknown}")
        if name is None and missing:   # the probe must be able to predict every ID class
            raise SpecError(f"{source}: id_train folder {p} lacks ID class folder(s) {missing}")
        if name is None:
            d["id_train"] = str(p)
        else:
            d["ood"][name] = str(p)
    if d.get("classnames") is not None:
        names = _read_classnames(d["classnames"], base, source)
        missing = [c for c in id_classes if c not in names]
        if missing:
            raise SpecError(f"{source}: classnames has no name for ID class folder(s) {missing}")
        d["classnames"] = {c: names[c] for c in id_classes}   # stored resolved: the record says what was asked
    if d.get("templates") is not None:
        from clipkit.evaluate.zeroshot import get_templates
        try:
            get_templates(d["templates"])
        except ValueError as e:
            raise SpecError(f"{source}: {e}") from None
    return replace(spec, options=FolderShiftOptions(**d))


def _restricted_argmax(scores: np.ndarray, columns: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """ID class ids of the best-scoring allowed class per row; `columns[j]` is the class of score column j."""
    keep = np.isin(columns, allowed)
    return columns[keep][scores[:, keep].argmax(1)]


def run_folder_shift(spec, model, preprocess, tokenizer, model_name: str = "", cache=True,
                     batch_size: int = 256) -> ShiftResult:
    """Run a folder shift spec (name, path, dict or ProbeSpec) on a loaded model; see the module docstring."""
    from clipkit.world.shifts import IN_DISTRIBUTION   # scipy (world.corruptions): not at import
    from threadpoolctl import threadpool_limits
    from clipkit.evaluate import extract_image_features, get_templates, zero_shot_classifier
    from clipkit.evaluate.linear_probe import fit_linear_probe
    from clipkit.data.classification import FolderSet   # a torch Dataset: not at import
    spec = spec if isinstance(spec, ProbeSpec) else load_spec(spec)
    o = spec.options
    id_folders = class_folders(o.id_test)
    names = o.classnames or {c: c.replace("_", " ") for c in id_folders}
    classifier = zero_shot_classifier(model, tokenizer, [names[c] for c in id_folders],
                                      get_templates(o.templates)).cpu()                # (d, C)
    probe = lam = None
    if o.id_train is not None:
        train = FolderSet(o.id_train, id_folders, preprocess, f"{spec.name}-train", o.n_train, spec.seed)
        tr = extract_image_features(model, train, batch_size=batch_size, cache=cache, progress=False)
        probe, lam = fit_linear_probe(tr.features.numpy(), tr.targets.numpy(), seed=spec.seed)
    parts, skipped, read = [], 0, 0
    for shift, root in [(IN_DISTRIBUTION, o.id_test), *o.ood.items()]:
        ds = FolderSet(root, id_folders, preprocess, f"{spec.name}-{shift}", spec.n, spec.seed)
        f = extract_image_features(model, ds, batch_size=batch_size, cache=cache, progress=False)
        skipped, read = skipped + f.skipped, read + len(ds)
        X, y = f.features, f.targets.numpy()                                                # (n, d), (n,)
        zs_pred = _restricted_argmax((X @ classifier).numpy(), np.arange(len(id_folders)), ds.class_ids)
        cols = {"shift": shift, "severity": 0, "kind": OOD_KIND, "n_classes": len(ds.class_ids),
                "item": f.index.numpy(), "path": [ds.samples[i][0] for i in f.index.tolist()], "target": y,
                "zs_pred": zs_pred, "zs_correct": zs_pred == y}
        if probe is not None:
            with threadpool_limits(1, user_api="blas"):
                proba = probe.predict_proba(X.numpy().astype(np.float64))                  # (n, classes seen)
            lp_pred = _restricted_argmax(proba, probe.classes_, ds.class_ids)
            cols.update(lp_pred=lp_pred, lp_correct=lp_pred == y)
        parts.append(pd.DataFrame(cols))
    result = summarise(pd.concat(parts, ignore_index=True), len(id_folders), spec, model_name)
    result.summary.update(family="imagefolder", n_ood_sets=len(o.ood), lp_lambda=lam, read=read, skipped=skipped,
                          skipped_images=skipped)   # test images over every set; unreadable ones are left out of n
    return result


register("folder_shift", FolderShiftOptions, run_folder_shift, n_default=None, n_nullable=True, check=check_folders)
