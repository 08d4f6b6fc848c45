"""Cross-cutting analyses behind the analysis notebooks: zero-shot vs linear probe, robustness points, embedding atlas, prompt sensitivity.

Each analysis is a runner that touches the model (features, classifiers) and returns a tidy table,
plus pure functions on those tables or on feature arrays (win counts, modality gap, trend fitting,
spread of template accuracies) that are tested on hand-made inputs. Every accuracy carries its
chance level, n and an exact 95% CI (Clopper-Pearson, clipkit.core.stats.accuracy_summary), as in the probes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from clipkit.core import stats
from clipkit.analysis.robustness import (CLASSIFIERS, ER, IN_DISTRIBUTION, REFERENCE_CLASSIFIER, RESIDUAL,
                                         bootstrap_family, family_arrays, fit_trend, logit)

SYNTHETIC = [f"synthetic:{f}" for f in ("shape", "polygon", "colour", "shade", "size", "count")]  # FAMILIES
_ACC = ("accuracy", "ci_low", "ci_high", "n", "chance")


# --- datasets ---------------------------------------------------------------------------------
def load_split_pair(name: str, n_train: int, n_test: int, seed: int = 0, root: str | None = None,
                    transform=None):
    """(train, test) datasets of one name: 'synthetic:<family>' draws n_train / n_test balanced images
    (disjoint seed namespaces per split); a real dataset ('cifar10', 'imagefolder', ...) is read from `root`
    through load_classification, whose train and test splits never share an image (the dataset's own
    split where it has one, else clipkit's seeded stratified split); n_train / n_test apply to synthetic sets only."""
    from clipkit.data.classification import SyntheticClassification, load_classification
    if name.startswith("synthetic"):
        family = name.partition(":")[2] or "shape"
        return (SyntheticClassification(family, n_train, seed, "train", transform),
                SyntheticClassification(family, n_test, seed, "test", transform))
    return (load_classification(name, root, split="train", transform=transform),
            load_classification(name, root, split="test", transform=transform))


def _features(model, dataset, cache=True):
    from clipkit.evaluate import extract_image_features
    f = extract_image_features(model, dataset, cache=cache, progress=False)
    return f.features, f.targets.numpy()                                      # (N, d) tensor, (N,) ints


def _zs_pred(model, tokenizer, X, classes, templates) -> np.ndarray:
    from clipkit.evaluate import zero_shot_classifier
    classifier = zero_shot_classifier(model, tokenizer, classes, templates)  # (d, C)
    return (X @ classifier).argmax(1).numpy()


# --- zero-shot vs linear probe (paper §3.1.5 Fig. 5 and Figs. 6-7) -----------------------------
def zeroshot_vs_linear(model, preprocess, tokenizer, datasets: Sequence[str], n_train: int, n_test: int,
                       seed: int = 0, root: str | None = None, ks: Sequence[int] = (), cache=True):
    """Per dataset: zero-shot (the dataset's own templates, else the 80) and an appendix-A.3 linear
    probe on the same image features (encode_image output, L2-normalised), scored on the same test items.

    Returns (table, kshot): table has one row per dataset with zs_* and lp_* accuracy/CI/n/chance and
    diff = zs - lp accuracy; kshot has one row per (dataset, k, seed) from `kshot_probes` (empty
    without ks; a k larger than a class's training samples is skipped).
    """
    from clipkit.evaluate import get_templates, kshot_probes
    from clipkit.evaluate.linear_probe import fit_linear_probe, predict
    rows, curves = [], []
    for name in datasets:
        train, test = load_split_pair(name, n_train, n_test, seed, root, preprocess)
        Xtr, ytr = _features(model, train, cache)
        Xte, yte = _features(model, test, cache)
        chance = 1.0 / len(test.classes)
        zs = _zs_pred(model, tokenizer, Xte, test.classes, get_templates(None, test)) == yte
        probe, lam = fit_linear_probe(Xtr.numpy(), ytr, seed=seed)
        lp = predict(probe, Xte.numpy()) == yte
        z, p = stats.accuracy_summary(zs, chance, seed), stats.accuracy_summary(lp, chance, seed)
        rows.append({"dataset": name, "n_classes": len(test.classes), "n_train": len(ytr),
                     **{f"zs_{k}": z[k] for k in _ACC}, **{f"lp_{k}": p[k] for k in _ACC[:3]},
                     "lp_lambda": lam, "diff": z["accuracy"] - p["accuracy"]})
        usable = [k for k in ks if k <= np.bincount(ytr).min() - 1]  # keep >= 1 sample per class for validation
        if usable:
            curves.append(kshot_probes(Xtr.numpy(), ytr, Xte.numpy(), yte, ks=usable, seeds=(seed,))
                          .assign(dataset=name, zs_accuracy=z["accuracy"], chance=chance))
    return pd.DataFrame(rows), (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame())


def win_summary(table: pd.DataFrame, col: str = "diff") -> dict:
    """'Zero-shot wins on N of M': wins (diff > 0), losses (< 0), ties, and the mean difference."""
    d = np.asarray(table[col], dtype=np.float64)
    return {"zs_wins": int((d > 0).sum()), "zs_losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
            "n_datasets": int(d.size), "mean_diff": float(d.mean()) if d.size else float("nan")}


def mean_accuracy_summary(table: pd.DataFrame, prefix: str = "zs_") -> dict:
    """Headline over datasets: the mean accuracy with a 95% CI of that mean, mean chance, total n.

    The datasets' test items are independent, so the mean's standard error is sqrt(sum se_i^2) / M.
    Each se_i is the binomial one at the Agresti-Coull adjusted proportion (k + 2) / (n + 4), not read
    off the dataset's CI: an exact interval is asymmetric near 0 and 1 (and its width there is not
    2 x 1.96 se), and the adjustment keeps an all-right or all-wrong dataset from counting as certain.
    The mean of M accuracies is not a proportion of one set of items, so the interval is the normal one.
    """
    acc = table[f"{prefix}accuracy"].to_numpy(dtype=float)
    n = table[f"{prefix}n"].to_numpy(dtype=float)
    adj = (acc * n + 2) / (n + 4)                                    # Agresti-Coull: 2 successes, 2 failures added
    se = np.sqrt(adj * (1 - adj) / (n + 4))
    mean, half = float(acc.mean()), 1.96 * float(np.sqrt((se ** 2).sum())) / len(acc)
    return {"accuracy": mean, "ci_low": max(0.0, mean - half), "ci_high": min(1.0, mean + half),
            "chance": float(table[f"{prefix}chance"].mean()), "n": int(table[f"{prefix}n"].sum())}


# --- effective robustness (paper §3.3) ---------------------------------------------------------
def run_shift_models(models: Sequence[str], spec, device: str = "cpu") -> list:
    """`run_shift` of one shift spec for each model spec, loading one model at a time."""
    from clipkit.models import load_model
    from clipkit.probes.shift import run_shift
    out = []
    for name in dict.fromkeys(models):
        model, preprocess, tokenizer = load_model(name, device=device)
        out.append(run_shift(spec, model, preprocess, tokenizer, model_name=name))
        del model
    return out


def robustness_points(results) -> pd.DataFrame:
    """One point per (model, classifier) of several ShiftResults: ID accuracy (with CI, n, chance),
    OOD accuracy (severities averaged within a shift, then shifts averaged) and the drop."""
    rows = []
    for r in results:
        t = r.table
        for clf, g in t.groupby("classifier", sort=False):
            idr = g[g["shift"] == IN_DISTRIBUTION].iloc[0]
            ood = g[g["shift"] != IN_DISTRIBUTION].groupby("shift")["accuracy"].mean()
            rows.append({"model": r.model, "classifier": clf, "point": f"{r.model} | {clf}",
                         **{f"id_{k}": idr[k] for k in _ACC}, "ood_accuracy": float(ood.mean()),
                         "n_shifts": int(ood.size), "drop": float(idr["accuracy"] - ood.mean())})
    return pd.DataFrame(rows)


def trend_or_reason(points: pd.DataFrame, min_points: int = 3, reference=None) -> tuple[dict | None, str]:
    """The logit-space trend of OOD vs ID accuracy, or None and why none is fitted.

    With `reference` (point names), the line is fitted to those points alone (2+ distinct ID accuracies)
    and every other point's effective robustness (accuracy units) is returned under "er" (point -> ER),
    as CLIP §3.3 scores zero-shot CLIP against the line of ImageNet-trained models. Without one, the
    line is fitted to all the points, which then need `min_points` (3+) distinct ID accuracies (two fix
    a line exactly and leave no residual), and their in-sample distances are returned under "residual",
    never "er". "label" names the number for tables and figure titles; "reference" the points fitted."""
    fitted = points if reference is None else points[points["point"].isin(list(reference))]
    need = min_points if reference is None else 2
    distinct = fitted["id_accuracy"].nunique()
    if distinct < need:
        whose = "point(s)" if reference is None else "reference point(s)"
        return None, (f"no trend drawn: {len(fitted)} {whose} with {distinct} distinct ID accuracies; a trend "
                      f"needs {need}+ (two points fix a line exactly and leave no residual). Add models "
                      f"to EXTRA_MODELS; meanwhile read the ID->OOD drop of each classifier.")
    slope, intercept = fit_trend(fitted["id_accuracy"], fitted["ood_accuracy"])
    pred = 1 / (1 + np.exp(-(slope * logit(points["id_accuracy"].to_numpy()) + intercept)))
    dist = dict(zip(points["point"], points["ood_accuracy"].to_numpy() - pred))
    if reference is None:
        return ({"slope": slope, "intercept": intercept, "residual": dist, "reference": list(points["point"]),
                 "label": "residual from the trend of these models (in-sample: not effective robustness)"},
                f"no independent reference: trend fitted over all {len(points)} points; each point's distance "
                f"from it is a residual from the trend of these models, not effective robustness")
    ref = list(fitted["point"])
    er = {p: d for p, d in dist.items() if p not in ref}
    return ({"slope": slope, "intercept": intercept, "er": er, "reference": ref,
             "label": f"effective robustness against the trend of {len(ref)} reference points"},
            f"reference trend fitted over {len(ref)} points ({', '.join(ref)}); {len(er)} other point(s) scored")


def reference_robustness(results, reference=REFERENCE_CLASSIFIER, min_points: int = 3, n_boot: int = stats.N_BOOT,
                         seed: int = 0) -> tuple[pd.DataFrame, dict | None, str]:
    """(points, trend, why) for the robustness notebook: robustness_points of `results`, the trend
    (trend_or_reason) and each point's distance from it with a scene-bootstrap CI.

    `reference`: a classifier name (default "linear probe": every model's ID-trained probe, the
    synthetic world's reference family; clipkit.analysis.robustness explains the choice) or point
    names. When the reference has fewer than 2 distinct ID accuracies there is no independent line:
    with `min_points`+ points the trend of all of them is used and the distances are labelled
    residuals. Added columns: in_reference and `effective_robustness` (NaN on the reference) or
    `residual_from_trend`, each with <column>_ci_low / _ci_high: the scenes (every shifted copy with
    its scene) resampled for all points at once and the line refitted per replicate
    (robustness.bootstrap_family on the shift-averaged OOD score, the figure's y axis)."""
    points = robustness_points(results)
    ref = (list(points.loc[points["classifier"] == reference, "point"]) if reference in CLASSIFIERS
           else list(reference or []))
    trend, why = trend_or_reason(points, reference=ref) if ref else (None, "")
    if trend is None:   # no independent line: the trend of these models, its distances labelled residuals
        trend, own_why = trend_or_reason(points, min_points)
        k = points.loc[points["point"].isin(ref), "id_accuracy"].nunique()
        why = f"no reference line: {len(ref)} reference point(s), {k} distinct ID accuracies (a line needs 2+); {own_why}"
        if trend is None:
            return points, None, why
    if "er" in trend and reference in CLASSIFIERS:
        trend["label"] = f"effective robustness against the trend of the {len(ref)} {reference} points (CLIP §3.3)"
    column = ER if "er" in trend else RESIDUAL
    points = points.assign(in_reference=points["point"].isin(trend["reference"]),
                           **{column: points["point"].map(trend.get("er", trend.get("residual")))})
    names, id_c, ood_c, w, paired = family_arrays(results, list(zip(CLASSIFIERS, ("zs_correct", "lp_correct"))))
    lo = hi = np.full(len(points), np.nan)
    if paired:   # one condition: the per-scene OOD score averaged as the points' ood_accuracy is
        boot = bootstrap_family(id_c, (ood_c * w[None, :, None]).sum(1, keepdims=True), [1.0],
                                np.isin(names, trend["reference"]), n_boot=n_boot, seed=seed)
        at = {p: i for i, p in enumerate(names)}
        idx = [at[p] for p in points["point"]]
        lo, hi = boot["ci_low"][idx], boot["ci_high"][idx]
    points[f"{column}_ci_low"], points[f"{column}_ci_high"] = lo, hi
    points.loc[points[column].isna(), [f"{column}_ci_low", f"{column}_ci_high"]] = np.nan
    return points, trend, why


# --- embedding atlas ---------------------------------------------------------------------------
def probe_embeddings(result, model, preprocess, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(image features (N, d), true-caption features (N, d)) of a ProbeResult's items, L2-normalised."""
    from clipkit.evaluate import encode_images, encode_texts
    img = encode_images(model, preprocess, [it.image for it in result.items])
    txt = encode_texts(model, tokenizer, [it.captions[it.answer] for it in result.items])
    return img.numpy(), txt.numpy()


def modality_gap(image_features, text_features) -> dict:
    """The modality gap (Liang et al. 2022): distance between the image and text centroids of
    L2-normalised embeddings, their cosine, and the mean cosine of paired image/text rows."""
    a, b = np.asarray(image_features, np.float64), np.asarray(text_features, np.float64)
    ca, cb = a.mean(0), b.mean(0)
    cos = float(ca @ cb / (np.linalg.norm(ca) * np.linalg.norm(cb) + 1e-12))
    paired = float((a * b).sum(1).mean()) if a.shape == b.shape else float("nan")
    return {"gap": float(np.linalg.norm(ca - cb)), "centroid_cosine": cos, "paired_cosine": paired}


def atlas_frame(image_features, text_features, factors: pd.DataFrame, correct, n_neighbors: int = 10,
                seed: int = 0) -> pd.DataFrame:
    """A joint 2-d UMAP (cosine metric, fixed random_state) of images and captions: one row per point
    with x, y, modality ('image'/'text'), item, the item's factors and whether the probe got it right."""
    import umap
    X = np.concatenate([image_features, text_features])                     # (2N, d)
    k = max(2, min(n_neighbors, len(X) - 1))                                  # UMAP needs k < n points
    xy = umap.UMAP(n_neighbors=k, random_state=seed, metric="cosine", init="random", n_jobs=1).fit_transform(X)
    n = len(image_features)
    base = factors.reset_index(drop=True).assign(item=np.arange(n), correct=np.asarray(correct, bool))
    return pd.concat([base.assign(modality="image", x=xy[:n, 0], y=xy[:n, 1]),
                      base.assign(modality="text", x=xy[n:, 0], y=xy[n:, 1])], ignore_index=True)


# --- prompt sensitivity (paper §3.1.4) ---------------------------------------------------------
def template_sets(family_templates: Sequence[str]) -> dict[str, list[str]]:
    """The ensembles compared: the family's own, the 7 (forward-selected) and the 80 ImageNet templates."""
    from clipkit.evaluate.zeroshot import IMAGENET_TEMPLATES, SIMPLE_TEMPLATES
    return {"family": list(family_templates), "ensemble-7": list(SIMPLE_TEMPLATES),
            "ensemble-80": list(IMAGENET_TEMPLATES)}


def prompt_sensitivity(model, tokenizer, features, targets, classes: Sequence[str], sets: dict[str, list[str]],
                       singles: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Zero-shot accuracy (CI, n, chance) of each single template and of each ensemble in `sets`.

    singles default to every distinct template of the sets (the family's, the 7 and the 80, plus the
    bare class name). One row per template: template, kind ('single'/'ensemble'), set, accuracy...;
    sorted by accuracy, best first."""
    from clipkit.evaluate import encode_texts
    y = np.asarray(targets)
    chance = 1.0 / len(classes)
    if singles is None:
        singles = list(dict.fromkeys(["{c}", *[t for ts in sets.values() for t in ts]]))
    # every (template, class) prompt encoded once, in one batch: 85 templates x C classes
    templates = list(dict.fromkeys([*singles, *[t for ts in sets.values() for t in ts]]))
    emb = encode_texts(model, tokenizer, [t.format(c=c) for t in templates for c in classes])
    emb = emb.reshape(len(templates), len(classes), -1)                       # (T, C, d), rows L2-normalised
    row = {t: i for i, t in enumerate(templates)}

    def correct(ts):  # the §3.1.4 ensemble: mean of normalised prompt embeddings, renormalised
        w = emb[[row[t] for t in ts]].mean(0)                                 # (C, d)
        w = w / w.norm(dim=-1, keepdim=True)
        return (features.float() @ w.T).argmax(1).numpy() == y

    rows = []
    for name, ts in sets.items():
        rows.append({"template": f"{name} ({len(ts)})", "kind": "ensemble", "set": name,
                     **stats.accuracy_summary(correct(ts), chance, seed)})
    for t in singles:
        member = [n for n, ts in sets.items() if t in ts]
        rows.append({"template": t, "kind": "single", "set": ",".join(member) or "bare",
                     **stats.accuracy_summary(correct([t]), chance, seed)})
    return pd.DataFrame(rows).sort_values("accuracy", ascending=False, kind="stable").reset_index(drop=True)


def spread_summary(table: pd.DataFrame) -> dict:
    """How much accuracy moves across single templates: best, worst, range, std, median; each ensemble's
    accuracy and its gain over the median single template."""
    s = table[table["kind"] == "single"]["accuracy"].to_numpy(np.float64)
    out = {"n_templates": int(s.size), "single_best": float(s.max()), "single_worst": float(s.min()),
           "single_range": float(s.max() - s.min()), "single_std": float(s.std()),
           "single_median": float(np.median(s))}
    for _, r in table[table["kind"] == "ensemble"].iterrows():
        out[f"{r['set']}_accuracy"] = float(r["accuracy"])
        out[f"{r['set']}_gain_over_median"] = float(r["accuracy"] - np.median(s))
    return out
