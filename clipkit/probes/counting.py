"""Counting probe (CountBench protocol, Paiss et al. 2023): K-way choice among captions that differ
only in the number word.

Controls (size modes of synth.make_count_scene), each reported as its own breakdown level:
"random" and "fixed" object sizes; "constant_area": the summed object area is the same for every
count, so total area cannot stand in for the count; "varied_constant_area": the same fixed total,
shared unequally within a scene, so no single object's size gives the count away either.
Counts the synthetic training corpus never shows (above 6) are flagged for clipkit-trained models.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import inspect

import numpy as np
import pandas as pd

from clipkit.world import synth
from clipkit.world.seeds import scene_seed  # probe items: their own seed namespace
from clipkit.probes.engine import Item, choice_kind
from clipkit.probes.protocol import ProbeSpec, SpecError

SIZE_MODES = ("random", "fixed", "constant_area", "varied_constant_area")   # synth.make_count_scene's size modes
# the counts clipkit's training corpus shows: make_count_scene's default max_count (corpus_item passes none)
CORPUS_COUNTS = tuple(range(1, inspect.signature(synth.make_count_scene).parameters["max_count"].default + 1))


@dataclass
class CountingOptions:
    """Options of a counting spec."""
    counts: list = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])  # the candidate counts (K = len); distinct, 1..10
    size_modes: list = field(default_factory=lambda: ["random"])       # synth.make_count_scene size modes, cycled
    image_size: int = 72           # render size in pixels (the model's preprocess resizes)
    template: str = "{}"           # caption template, e.g. "a photo of {}"

    def __post_init__(self):
        c = self.counts
        if (not c or not all(isinstance(x, int) and not isinstance(x, bool) for x in c) or min(c) < 1
                or max(c) > 10 or len(set(c)) != len(c)):
            raise SpecError(f"option 'counts' must be distinct integers in 1..10, got {c!r}")
        if not self.size_modes or any(m not in SIZE_MODES for m in self.size_modes):
            raise SpecError(f"option 'size_modes' must be a non-empty list of {SIZE_MODES}, got {self.size_modes!r}")
        if self.image_size < 1:
            raise SpecError(f"option 'image_size' must be >= 1, got {self.image_size}")


@choice_kind("counting", CountingOptions, training_range={"count": CORPUS_COUNTS})
def items(spec: ProbeSpec) -> list[Item]:
    """spec.n scenes, balanced over counts x size modes; candidates: one caption per count."""
    o = spec.options
    counts, modes = [int(c) for c in o.counts], list(o.size_modes)
    out = []
    for i in range(spec.n):
        n, mode = counts[i % len(counts)], modes[(i // len(counts)) % len(modes)]
        scene = synth.make_count_scene(scene_seed("probe:counting", spec.seed, i), n=n, size_mode=mode)
        f = scene.facts
        captions = [o.template.format(synth.count_caption(c, f["colour"], f["shape"])) for c in counts]
        out.append(Item(synth.render(scene, size=o.image_size), captions, counts.index(n),
                        {"count": n, "size_mode": mode, "shape": f["shape"], "colour": f["colour"]}))
    return out


def count_report(table: pd.DataFrame, counts) -> dict:
    """The count confusion matrix (rows: true, cols: chosen), the MAE of the count, and each item's
    chosen count, under the accuracy's tie rule.

    An item whose best score is shared by t captions adds 1/t to each tied count's cell and has, as
    its error, the mean absolute error over those t counts (the expected error of a random pick among
    them); its `predicted_count` is NaN, never the true count. counts: the spec's counts, in candidate order.
    """
    counts = np.asarray(list(counts))
    best = [np.asarray([int(j) for j in b.split("|")]) for b in table["best"].astype(str)]
    true = table["count"].to_numpy()
    conf = pd.DataFrame(0.0, index=pd.Index(counts, name="true"), columns=pd.Index(counts, name="predicted"))
    err = np.empty(len(best))
    for i, (t, b) in enumerate(zip(true, best)):
        conf.loc[t, counts[b]] += 1.0 / len(b)
        err[i] = np.abs(counts[b] - t).mean()
    pred = np.array([float(counts[b[0]]) if len(b) == 1 else np.nan for b in best])
    return {"predicted_count": pred, "confusion": conf, "mae": float(err.mean()) if len(err) else float("nan"),
            "n_tied": int(sum(len(b) > 1 for b in best))}
