"""Zero-shot classification with prompt ensembling, as in the CLIP paper and OpenAI's ImageNet notebook.

For each class: format every template with the class name, encode, L2-normalise each embedding,
average, L2-normalise again (§3.1.4: ensembling "in embedding space", so it costs one prompt at
inference). Logits = 100 x normalised image features @ weights, a fixed 100 as in the notebook,
not the model's learned scale. Metrics are CLIP_benchmark's: top-1, top-5 (NaN with fewer than 5
classes) and mean per-class recall (balanced accuracy).

Templates are format strings with a `{c}` placeholder (CLIP_benchmark's convention); open_clip's
template lambdas are accepted too. Parity with `open_clip.build_zero_shot_classifier` and with
`clip_benchmark.metrics.zeroshot_classification` is tested in tests/test_parity.py.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from clipkit.data.templates import (DATASET_TEMPLATES, IMAGENET_TEMPLATES, NAMED_TEMPLATES,  # noqa: F401
                                   SIMPLE_TEMPLATES)
from clipkit.evaluate.features import encode_texts, extract_image_features

log = logging.getLogger("clipkit.evaluate")
LOGIT_SCALE = 100.0  # §3.1.4 / OpenAI's prompt-engineering notebook: a fixed 100, not exp(logit_scale)

Templates = Sequence[str | Callable[[str], str]] | Mapping[str, Sequence[str]]


def get_templates(templates: str | Templates | None = None, dataset=None) -> Templates:
    """Resolve a templates argument: a list (or {class: [prompts]}) as given; a name ('openai' = the
    80, 'simple' = the 7, 'bare', 'photo', or a dataset name in DATASET_TEMPLATES); None -> the
    dataset's own templates, else the 80 ImageNet ones."""
    if templates is None:
        own = getattr(dataset, "templates", None)
        return list(own) if own else IMAGENET_TEMPLATES
    if isinstance(templates, str):
        table = {**DATASET_TEMPLATES, **NAMED_TEMPLATES}
        if templates not in table:
            raise ValueError(f"unknown templates {templates!r}; names: {sorted(table)}, or pass a list of "
                             f"strings with a {{c}} placeholder")
        return table[templates]
    if isinstance(templates, Mapping):
        return templates
    bad = [t for t in templates if isinstance(t, str) and "{c}" not in t]
    if bad or len(templates) == 0:
        raise ValueError(f"templates need a {{c}} placeholder for the class name: {bad or 'none given'}")
    return list(templates)


def class_prompts(classname: str, templates: Templates) -> list[str]:
    """The prompts of one class: templates formatted with its name, or its own list (CuPL-style dict)."""
    if isinstance(templates, Mapping):
        return list(templates[classname])
    return [t(classname) if callable(t) else t.format(c=classname) for t in templates]


def zero_shot_classifier(model, tokenizer, classnames: Sequence[str], templates: Templates,
                         batch_size: int = 1024) -> torch.Tensor:
    """(d, C) zero-shot weights: per class, mean of L2-normalised prompt embeddings, re-normalised."""
    if len(classnames) == 0:
        raise ValueError("zero_shot_classifier needs at least one class name")
    prompts = [class_prompts(c, templates) for c in classnames]
    flat = [p for ps in prompts for p in ps]
    emb = encode_texts(model, tokenizer, flat, batch_size=batch_size)     # (sum T_c, d), each L2-normalised
    weights, start = [], 0
    for ps in prompts:
        w = emb[start:start + len(ps)].mean(0)                            # (d,) average in embedding space
        weights.append(w / w.norm())
        start += len(ps)
    return torch.stack(weights, dim=1)                                    # (d, C)


def zero_shot_logits(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(N, C) = 100 x (N, d) L2-normalised image features @ (d, C) classifier."""
    return LOGIT_SCALE * image_features.float() @ classifier.float()


def topk_accuracy(logits, targets, k: int) -> float:
    """Fraction of rows whose target is among the k highest logits (ties broken by class order)."""
    s, y = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float((top == y[:, None]).any(1).mean())


def mean_per_class_recall(pred, targets) -> float:
    """Mean over the classes present in `targets` of the fraction of their samples predicted right
    (scikit-learn's balanced_accuracy_score, which CLIP_benchmark reports)."""
    pred, y = np.asarray(pred), np.asarray(targets)
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def classification_metrics(logits, targets, n_classes: int | None = None) -> dict:
    """CLIP_benchmark's metrics: acc1, acc5 (NaN with fewer than 5 classes), mean_per_class_recall."""
    s = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets)
    n_classes = s.shape[1] if n_classes is None else n_classes
    return {"acc1": topk_accuracy(s, y, 1),
            "acc5": topk_accuracy(s, y, 5) if n_classes >= 5 else float("nan"),
            "mean_per_class_recall": mean_per_class_recall(s.argmax(1), y)}


def evaluate_zeroshot(model, tokenizer, dataset, templates: str | Templates | None = None,
                      classnames: Sequence[str] | None = None, batch_size: int = 256, num_workers: int = 0,
                      cache=True, progress: bool = True, return_logits: bool = False) -> dict:
    """Zero-shot metrics of `model` on a classification dataset (image features from the cache).

    classnames default to `dataset.classes`; templates to the dataset's own, else the 80 ImageNet
    ones (see `get_templates`). With return_logits the dict also holds logits and targets.
    """
    classnames = list(classnames or dataset.classes)
    templates = get_templates(templates, dataset)
    feats = extract_image_features(model, dataset, batch_size=batch_size, num_workers=num_workers,
                                   cache=cache, progress=progress)
    classifier = zero_shot_classifier(model, tokenizer, classnames, templates)
    logits = zero_shot_logits(feats.features, classifier)
    out = classification_metrics(logits.numpy(), feats.targets.numpy(), n_classes=len(classnames))
    if return_logits:
        out.update(logits=logits, targets=feats.targets)
    return out
