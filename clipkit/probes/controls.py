"""Controls of a caption-choice probe: item identity, the caption-only control, and the training-range flag.

* `item_id`: a short hash of the image's pixels and the candidate captions, the identity two models'
  tables are paired on (clipkit.analysis.compare), so a rerun with another seed is never compared item by item.
* `caption_only`: the same model scoring each item's captions against the *mean image embedding of the
  probe set*, i.e. without seeing the item's image. What it scores is the model's caption prior; a probe
  whose accuracy is not above it measures text bias, not vision.
* `outside_training_range`: factor levels that clipkit's synthetic training corpus never shows (counts
  above 6), flagged for models trained on that corpus.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np


ID_CHARS = 16   # hex digits of the item id: 64 bits, no collision expected below ~10^9 items
TEXT_BIAS = "not above the caption-only control: text bias, not vision"
ABOVE_PRIOR = "above the caption-only control"


def item_id(image, captions) -> str:
    """sha1 of the image's mode, size and pixels and of the candidate captions, in order (ID_CHARS hex)."""
    h = hashlib.sha1(f"{image.mode}|{image.size}|".encode())
    h.update(image.tobytes())
    h.update("\x1f".join(captions).encode())
    return h.hexdigest()[:ID_CHARS]


def caption_only(credit_co, chance, clusters=None) -> dict:
    """The caption-only control's summary: accuracy, ci_low, ci_high, chance, n (and verdict, p_value)
    of the per-item credit the model earns scoring the captions against the probe set's mean image."""
    from clipkit.core import stats   # scipy (~1 s): here, so that reading specs does not load it
    s = stats.accuracy_summary(credit_co, chance, clusters=clusters)
    return {k: s[k] for k in ("accuracy", "ci_low", "ci_high", "chance", "n", "verdict", "p_value")}


def versus_caption_only(credit, credit_co, clusters=None) -> dict:
    """Is the probe's accuracy above its caption-only control? A paired test on the same items.

    The two credits of an item come from the same captions, so the comparison is paired: the
    cluster sign-flip test of stats.paired_cluster_test (with one item per cluster and 0/1 credit,
    exactly McNemar's test), two-sided at alpha = 0.05. "above" needs p < 0.05 and a positive
    difference; anything else (no detectable difference, or below) is reported as text bias.
    Keys: vs_caption_only (words), vs_caption_only_diff, vs_caption_only_p.
    """
    from clipkit.core import stats   # scipy (~1 s): here, so that reading specs does not load it
    credit, credit_co = np.asarray(credit, float), np.asarray(credit_co, float)
    groups = np.arange(credit.size) if clusters is None else clusters
    t = stats.paired_cluster_test(credit, credit_co, groups)
    above = t["p_value"] < 1 - stats.LEVEL and t["diff"] > 0
    return {"vs_caption_only": ABOVE_PRIOR if above else TEXT_BIAS, "vs_caption_only_diff": t["diff"],
            "vs_caption_only_p": t["p_value"]}


def trained_on_synthetic_corpus(model_name: str) -> bool:
    """Was the model trained on clipkit's synthetic corpus? A `clipkit-*` preset with a tag other than
    `random` (a bare preset name is untrained too), or a clipkit run folder (it holds clipkit.json)."""
    name = str(model_name or "")
    if name.startswith("clipkit-"):
        return name.partition(":")[2] not in ("", "random")
    try:
        return (Path(name).expanduser() / "clipkit.json").is_file()
    except OSError:
        return False


def untrained_spec(model_name: str) -> str | None:
    """The untrained counterpart of a trained clipkit preset ("clipkit-tiny:synthetic" -> "clipkit-tiny:random"),
    for the notebooks' comparison with an untrained network; None when the model is untrained already or
    not a clipkit preset (an untrained ViT-B/32 costs more than the probe it would explain)."""
    name = str(model_name or "")
    preset, _, tag = name.partition(":")
    if not preset.startswith("clipkit-") or tag in ("", "random"):
        return None
    return f"{preset}:random"


def outside_training_range(table, training_range: dict | None, model_name: str, probe: str) -> dict:
    """{"outside_training_range": sorted levels} of the factors whose levels the training corpus never
    shows, for a model trained on it (else {}); prints one line to stderr naming them, once."""
    if not training_range or not trained_on_synthetic_corpus(model_name):
        return {}
    out = {}
    for factor, levels in training_range.items():
        if factor in table:
            bad = sorted({v.item() if hasattr(v, "item") else v for v in table[factor]} - set(levels))
            if bad:
                out[factor] = bad
                print(f"[clipkit] {probe}: {factor} {bad} outside the training range of {model_name} "
                      f"({min(levels)}..{max(levels)}): accuracy there measures extrapolation", file=sys.stderr)
    if not out:
        return {}
    return {"outside_training_range": next(iter(out.values())) if len(out) == 1 else out}
