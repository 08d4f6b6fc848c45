"""Fine-grained classification probe: zero-shot vs a linear probe on the same image features, per class,
the most-confused class pairs, and whether zero-shot confusion follows the text similarity of the names.

Not a caption-choice probe (engine.py): the classes are a dataset's labels, so the spec's options name a
dataset ("synthetic:polygon", "synthetic:shade", "imagefolder" + root, or a torchvision name + root). Both
classifiers read the same L2-normalised `encode_image` features of the same test images:

- zero-shot: the prompt-ensembled classifier of §3.1.4 (clipkit.evaluate.zeroshot);
- linear probe: appendix A.3's protocol, lambda swept on a stratified 20% of the train split, then
  refit on the whole train split (clipkit.evaluate.linear_probe).

"Does confusion follow text similarity": over unordered class pairs {i, j}, the Spearman correlation
between the pair's confusion rate (items of i called j plus items of j called i, over n_i + n_j) and
the cosine similarity of the two zero-shot classifier columns. The pairs share classes, so they are
not independent: read the p-value as descriptive. The same statistic for the linear probe is the
control: its confusions owe nothing to the text encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipkit.core.records import write_record
from clipkit.probes.protocol import ProbeSpec, SpecError, load_spec, register

TOP_PAIRS = 5  # confused pairs listed in the metrics


@dataclass
class FineGrainedOptions:
    """Options of a fine-grained spec (the common `n` is the number of test images, default 300)."""
    dataset: str = ""               # "synthetic:<family>", "imagefolder", or a torchvision name
    root: str | None = None         # data folder (imagefolder / torchvision); unused for synthetic
    templates: str | list | None = None  # a name ("photo", "simple", ...), a list of "{c}" strings, or None: the dataset's own
    n_train: int = 600              # training images for the probe (synthetic: generated; real: a seeded subset)
    image_size: int = 72            # synthetic render size (the model's preprocess resizes)

    def __post_init__(self):
        for key in ("n_train", "image_size"):
            if getattr(self, key) < 1:
                raise SpecError(f"option {key!r} must be >= 1, got {getattr(self, key)}")
        if not self.dataset:
            raise SpecError("option 'dataset' is required: 'synthetic:<family>', 'imagefolder' or a torchvision name")
        if self.dataset.startswith("synthetic"):
            from clipkit.data.families import FAMILIES
            family = self.dataset.partition(":")[2] or "shape"
            if family not in FAMILIES:
                raise SpecError(f"option 'dataset': unknown synthetic family {family!r}; known: {sorted(FAMILIES)}")
        elif self.root is None:
            raise SpecError(f"option 'dataset' {self.dataset!r} needs option 'root' (the folder holding it); "
                            f"nothing is downloaded")


def confusion(targets, pred, classes) -> pd.DataFrame:
    """C x C counts, rows: true class, columns: predicted class."""
    c = len(classes)
    m = np.zeros((c, c), dtype=int)
    np.add.at(m, (np.asarray(targets), np.asarray(pred)), 1)
    return pd.DataFrame(m, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def pair_table(conf: pd.DataFrame, text_sim: np.ndarray) -> pd.DataFrame:
    """One row per unordered class pair: confusions both ways, their rate over n_i + n_j, text cosine."""
    m, classes = conf.to_numpy(), list(conf.index)
    n = m.sum(1)
    rows = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            k = int(m[i, j] + m[j, i])
            rows.append({"class_a": classes[i], "class_b": classes[j], "a_as_b": int(m[i, j]), "b_as_a": int(m[j, i]),
                         "confusions": k, "n": int(n[i] + n[j]), "rate": k / max(int(n[i] + n[j]), 1),
                         "text_cosine": float(text_sim[i, j])})
    return pd.DataFrame(rows).sort_values(["rate", "text_cosine"], ascending=False, ignore_index=True)


def spearman(x, y) -> dict:
    """Spearman rho, p-value and n; NaN when either side is constant (e.g. no confusions at all)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": float("nan"), "p_value": float("nan"), "n_pairs": int(len(x))}
    from scipy import stats as sps
    r = sps.spearmanr(x, y)
    return {"rho": float(r.statistic), "p_value": float(r.pvalue), "n_pairs": int(len(x))}


@dataclass
class FineGrainedResult:
    """Per-item table, per-class table (both classifiers), confusions, pair table and summary."""
    spec: ProbeSpec
    model: str
    classes: list
    table: pd.DataFrame        # one row per test image: target, class, zs_pred, zs_correct, lp_pred, lp_correct
    per_class: pd.DataFrame    # one row per (classifier, class): accuracy, ci_low, ci_high, n, chance
    confusion: pd.DataFrame    # zero-shot confusion (rows: true)
    lp_confusion: pd.DataFrame
    pairs: pd.DataFrame        # zero-shot confusion per unordered pair with text cosine
    summary: dict = field(default_factory=dict)

    def overall(self) -> pd.DataFrame:
        """Two rows (zero-shot, linear probe): accuracy, CI, n, chance: ready for viz.plot_breakdown."""
        keys = ("accuracy", "ci_low", "ci_high", "n", "chance")
        return pd.DataFrame([{"classifier": "zero-shot", **{k: self.summary[k] for k in keys}},
                             {"classifier": "linear probe", **{k: self.summary[f"lp_{k}"] for k in keys}}])

    def metrics(self) -> dict:
        """Flat dict: zero-shot accuracy/ci/chance/n (the report index's keys), lp_*, correlations, top pairs."""
        flat = dict(self.summary)
        for _, r in self.per_class.iterrows():
            flat[f"{'zs' if r['classifier'] == 'zero-shot' else 'lp'}_acc[{r['class']}]"] = r["accuracy"]
        for k, (_, r) in enumerate(self.pairs.head(TOP_PAIRS).iterrows()):
            flat[f"confused_pair_{k + 1}"] = f"{r['class_a']} / {r['class_b']}: {r['confusions']}/{r['n']}"
        return flat

    def save(self, out_dir: str | Path) -> Path:
        """Write <name>.csv (per item), <name>.per_class.csv, <name>.pairs.csv and <name>.json (the record)."""
        record = {"dataset": self.spec.options.dataset, "model": self.model,
                  "task": "zeroshot_classification+linear_probe", "metrics": self.summary,
                  "per_class": self.per_class.to_dict("records"), "confusion": self.confusion.to_numpy().tolist(),
                  "classes": self.classes, "spec": self.spec, "language": "en"}
        return write_record(out_dir, self.spec.name, record, self.table,
                            tables={"per_class": self.per_class, "pairs": self.pairs})


def analyse(train_X, train_y, test_X, test_y, classifier, classes, spec: ProbeSpec,
            model_name: str = "") -> FineGrainedResult:
    """The whole comparison from features: train/test image features (N, d), labels, the (d, C)
    zero-shot classifier. Pure apart from the probe's fit; tests feed hand-made features."""
    import torch   # here, not at the top: reading a fine-grained spec imports no torch (nor scipy)
    from clipkit.core import stats
    from clipkit.evaluate.linear_probe import fit_linear_probe, predict
    test_X = torch.as_tensor(np.asarray(test_X), dtype=torch.float32)
    w = torch.as_tensor(np.asarray(classifier), dtype=torch.float32)          # (d, C)
    y = np.asarray(test_y)
    zs_pred = (test_X @ w).argmax(1).numpy()                                   # (N,) the 100x scale changes no argmax
    clf, lam = fit_linear_probe(train_X, train_y, seed=spec.seed)
    lp_pred = predict(clf, test_X.numpy())
    chance = 1.0 / len(classes)
    table = pd.DataFrame({"item": np.arange(len(y)), "target": y, "class": np.asarray(classes, dtype=object)[y],
                          "zs_pred": zs_pred, "zs_correct": zs_pred == y, "lp_pred": lp_pred, "lp_correct": lp_pred == y,
                          "chance": chance})
    per_class = pd.concat([stats.by_factor(table, "class", correct=c).assign(classifier=name)
                           for name, c in (("zero-shot", "zs_correct"), ("linear probe", "lp_correct"))],
                          ignore_index=True)[["classifier", "class", "accuracy", "ci_low", "ci_high", "n", "chance",
                                              "verdict"]]
    text_sim = (w.T @ w).numpy()                                               # (C, C) cosines: columns are unit norm
    conf, lp_conf = confusion(y, zs_pred, classes), confusion(y, lp_pred, classes)
    pairs, lp_pairs = pair_table(conf, text_sim), pair_table(lp_conf, text_sim)
    zs, lp = stats.accuracy_summary(table["zs_correct"], chance, spec.seed), \
        stats.accuracy_summary(table["lp_correct"], chance, spec.seed)
    rho, lp_rho = spearman(pairs["rate"], pairs["text_cosine"]), spearman(lp_pairs["rate"], lp_pairs["text_cosine"])
    test = stats.mcnemar(table["lp_correct"], table["zs_correct"])
    summary = {"probe": spec.name, "dataset": spec.options.dataset, "model": model_name, "n_classes": len(classes), **zs,
               **{f"lp_{k}": v for k, v in lp.items()}, "lp_lambda": lam, "n_train": int(len(train_y)),
               "lp_not_converged": clf.not_converged_, "lp_n_fits": clf.n_fits_,   # L-BFGS fits stopped at max_iter
               "lp_minus_zs": test["diff"], "mcnemar_p": test["p_value"],
               "zs_mean_per_class": float(per_class.query("classifier == 'zero-shot'")["accuracy"].mean()),
               "lp_mean_per_class": float(per_class.query("classifier == 'linear probe'")["accuracy"].mean()),
               "confusion_text_spearman": rho["rho"], "confusion_text_p": rho["p_value"],
               "confusion_text_n_pairs": rho["n_pairs"],
               "lp_confusion_text_spearman": lp_rho["rho"], "lp_confusion_text_p": lp_rho["p_value"]}
    return FineGrainedResult(spec, model_name, list(classes), table, per_class, conf, lp_conf, pairs, summary)


# --- the runner ------------------------------------------------------------------------------------
def _subset(ds, n: int, seed: int):
    """A seeded random subset of at most n samples (the whole set when it is smaller)."""
    if len(ds) <= n:
        return ds
    import torch
    return torch.utils.data.Subset(ds, np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False)))


def datasets(spec: ProbeSpec, transform):
    """(train, test, classes, templates) for a spec. An image folder has no splits of its own: its test
    split is clipkit's seeded stratified one (ImageFolderClassification, seed 0: 20%), and the probe
    fits on the rest ("trainval", 80%; the probe picks its lambda inside it), so they never share an image."""
    from clipkit.data.classification import ImageFolderClassification, SyntheticClassification, load_classification
    o = spec.options
    if o.dataset.startswith("synthetic"):
        family = o.dataset.partition(":")[2] or "shape"
        make = lambda split, n: SyntheticClassification(family, n, spec.seed, split, transform, o.image_size)  # noqa: E731
        test = make("test", spec.n)
        return make("train", o.n_train), test, test.classes, test.templates
    if o.dataset == "imagefolder":
        train, test = (ImageFolderClassification(o.root, transform=transform, split=s, seed=0)
                       for s in ("trainval", "test"))
        return (_subset(train, o.n_train, spec.seed), _subset(test, spec.n, spec.seed), test.classes, test.templates)
    train = load_classification(o.dataset, o.root, split="train", transform=transform)
    test = load_classification(o.dataset, o.root, split="test", transform=transform)
    return (_subset(train, o.n_train, spec.seed), _subset(test, spec.n, spec.seed), test.classes,
            test.templates)


def run_finegrained(spec, model, preprocess, tokenizer, model_name: str = "", cache=True,
                    batch_size: int = 256) -> FineGrainedResult:
    """Run a fine-grained spec (name, path, dict or ProbeSpec) on a loaded model."""
    from clipkit.evaluate import extract_image_features, get_templates, zero_shot_classifier
    spec = spec if isinstance(spec, ProbeSpec) else load_spec(spec)
    train, test, classes, own_templates = datasets(spec, preprocess)
    t = spec.options.templates
    templates = get_templates(t) if t is not None else (own_templates or get_templates())
    feats = {k: extract_image_features(model, ds, batch_size=batch_size, cache=cache, progress=False)
             for k, ds in (("train", train), ("test", test))}
    classifier = zero_shot_classifier(model, tokenizer, classes, templates)       # (d, C)
    result = analyse(feats["train"].features.numpy(), feats["train"].targets.numpy(), feats["test"].features,
                     feats["test"].targets.numpy(), classifier, classes, spec, model_name)
    # test images read and skipped (unreadable files, left out of n); the probe's training images likewise
    result.summary.update(read=len(test), skipped=feats["test"].skipped, train_skipped=feats["train"].skipped)
    return result


register("finegrained", FineGrainedOptions, run_finegrained, n_default=300)
