"""A probe's finding in words, computed from its numbers: the last cell of every probe notebook.

`finding(result, untrained=None)` returns Markdown: the verdict against chance, against the
caption-only control (caption-choice probes) and against the untrained model (when its result on
the same items is given), then what the design cannot show. Every number in the text is read from
the result, so the words cannot drift from the table above them.
"""
from __future__ import annotations

import numpy as np

from clipkit.core import stats
from clipkit.probes import controls

ALPHA = 1 - stats.LEVEL   # every test here is two-sided at 0.05, as the verdicts

# what each design cannot show, whatever the numbers (a kind's items are synthetic renders unless it reads files)
LIMITS = {
    "counting": "It cannot show counting in natural images, or beyond the counts asked. Under constant total "
                "area the mean object size is still total / n, so a model that reads object size can still "
                "infer the count; the varied-size mode weakens that cue but no fixed-total design removes it.",
    "spatial": "It cannot show relations between more than two objects, relations in depth, or in natural scenes; "
               "only mirrored pairs (both relations present) give a pair score.",
    "binding": "It cannot show binding of attributes other than colour, or with more than two objects.",
    "jsonl": "It shows only what the file's items ask; whether they are balanced and free of caption cues is the "
             "file's responsibility (the caption-only control measures the cue, not its source).",
    "shift": "It cannot show effective robustness: one model's two classifiers are two points, and a trend needs "
             "a family of models (clipkit.analysis.robustness). The shifts are synthetic.",
    "finegrained": "Its classes are synthetic and few; it cannot show fine-grained recognition of natural categories.",
}
COMMON = ("The interval covers the sampling of items only, not training randomness: another training seed "
          "could move the accuracy by more than the interval's width.")


def _acc(s: dict, prefix: str = "") -> str:
    return (f"{s[prefix + 'accuracy']:.3f} [{s[prefix + 'ci_low']:.3f}, {s[prefix + 'ci_high']:.3f}]")


def _vs_chance(s: dict, prefix: str = "") -> str:
    v = s.get(prefix + "verdict", "")
    p = s.get(prefix + "p_value")
    ptxt = f", exact binomial p = {p:.2g}" if isinstance(p, float) and np.isfinite(p) else ""
    return f"{v} ({s[prefix + 'chance']:.3f}{ptxt})"


def _choice(result, untrained) -> list[str]:
    s, lines = result.summary, []
    scenes = f" ({s['n_clusters']} scenes: items sharing one are a cluster)" if s.get("n_clusters") else ""
    lines.append(f"**{s['probe']}**: accuracy {_acc(s)} over n = {s['n']} items{scenes}: **{_vs_chance(s)}**.")
    co = s.get("caption_only")
    if co:
        words = ("**above it**: the image adds information the captions alone do not carry"
                 if s["vs_caption_only"] == controls.ABOVE_PRIOR else
                 "**not above it**: this probe measures text bias, not vision")
        lines.append(f"Caption-only control (the same model, each item scored against the mean image of the probe "
                     f"set): {co['accuracy']:.3f} [{co['ci_low']:.3f}, {co['ci_high']:.3f}], {co['verdict']}. The "
                     f"accuracy is {words} (paired difference {s['vs_caption_only_diff']:+.3f}, "
                     f"p = {s['vs_caption_only_p']:.2g}).")
    lines.append(_vs_untrained(result, untrained))
    if s.get("skipped"):
        lines.append(f"{s['skipped']} of {s['read']} items were skipped (unreadable images) and are not in n.")
    if s.get("outside_training_range"):
        lines.append(f"Levels {s['outside_training_range']} lie outside the model's training range: accuracy there "
                     f"measures extrapolation, not what training taught.")
    if s.get("pair_accuracy") is not None and s.get("pair_caption_only_accuracy") is not None:
        lines.append(f"Pair score (both members of a mirrored pair right): {_acc(s, 'pair_')}, {s['pair_verdict']} "
                     f"against the product chance {s['pair_chance']:.3f}; its caption-only control "
                     f"{_acc(s, 'pair_caption_only_')} (a caption preference can make both members right together, "
                     f"so compare with this, not only with chance).")
    if s.get("pair_scores") and "left out" in str(s["pair_scores"]):
        lines.append(f"Pair score {s['pair_scores']}.")
    return lines


def _vs_untrained(result, untrained) -> str:
    if untrained is None:
        return ("No untrained model was run here: run the notebook with the architecture's `:random` model to see "
                "what an untrained network scores on these items.")
    a, b = result.table, untrained.table
    ka, kb = a.get("item_id"), b.get("item_id")
    if ka is None or kb is None or sorted(ka) != sorted(kb):
        return f"The untrained model ({untrained.model}) was run on other items, so it is not compared item by item."
    both = a[["item_id", "credit", "cluster"]].merge(b[["item_id", "credit"]], on="item_id", suffixes=("", "_u"))
    t = stats.paired_cluster_test(both["credit"], both["credit_u"], both["cluster"].astype(str))
    word = ("above" if t["diff"] > 0 else "below") if t["p_value"] < ALPHA else "not distinguishable from"
    return (f"Untrained model ({untrained.model}): {_acc(untrained.summary)}, {untrained.summary['verdict']}; the "
            f"trained model is **{word}** it (paired difference {t['diff']:+.3f}, p = {t['p_value']:.2g}).")


def _classification(result, untrained) -> list[str]:
    s = result.summary
    name = s.get("probe", result.spec.name)
    lp_verdict = s.get("lp_verdict") or ("above chance" if s["lp_ci_low"] > s["chance"] else "below chance"
                                         if s["lp_ci_high"] < s["chance"] else "at chance")   # its exact CI's verdict
    lines = [f"**{name}**: zero-shot {_acc(s)} over n = {s['n']} test images: **{_vs_chance(s)}**; linear probe "
             f"{_acc(s, 'lp_')}, {lp_verdict}."]
    lines.append("No caption-only control applies: every image is scored against the same class prompts, so a "
                 "head that ignores the image predicts one class and, on balanced classes, scores exactly chance; "
                 "chance is the caption-only control here.")
    if "zs_drop" in s:
        def ci(k):
            lo, hi = s.get(f"{k}_ci_low"), s.get(f"{k}_ci_high")
            return f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and np.isfinite(lo) else ""
        lines.append(f"ID -> shifted drop: zero-shot {s['zs_drop']:+.3f}{ci('zs_drop')}, linear probe "
                     f"{s['lp_drop']:+.3f}{ci('lp_drop')}; relative robustness (zero-shot minus probe OOD accuracy) "
                     f"{s['relative_robustness_zs_vs_lp']:+.3f}{ci('relative_robustness')} (intervals: bootstrap over "
                     f"scenes).")
    if s.get("lp_not_converged"):
        lines.append(f"{s['lp_not_converged']} of {s['lp_n_fits']} linear-probe fits stopped at the iteration "
                     f"limit before converging.")
    if untrained is not None:
        u = untrained.summary
        lines.append(f"Untrained model ({untrained.model}): zero-shot {_acc(u)}, {u['verdict']}; linear probe "
                     f"{_acc(u, 'lp_')}.")
    else:
        lines.append(_vs_untrained(result, None))
    return lines


def finding(result, untrained=None) -> str:
    """The finding of a probe result in words (Markdown), from its numbers; see the module docstring.

    result: a caption-choice ProbeResult, a shift result or a fine-grained result; untrained: the
    same probe's result for the untrained model, on the same items (paired on item_id), or None."""
    kind = result.spec.kind
    lines = (_choice(result, untrained) if "caption_only" in result.summary
             else _classification(result, untrained))
    lines.append(f"*What this design cannot show*: {LIMITS.get(kind, '')} {COMMON}".replace("  ", " "))
    return "\n\n".join(x for x in lines if x)
