"""Counting probe (CountBench protocol, Paiss et al. 2023): K-way choice among captions that differ
only in the number word. Controls: object size mode, including constant total area across counts."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from clipkit.world import synth
from clipkit.world.seeds import scene_seed  # probe items: their own seed namespace
from clipkit.probes.engine import Item, choice_kind
from clipkit.probes.protocol import ProbeSpec, SpecError

SIZE_MODES = ("random", "fixed", "constant_area")   # synth.make_count_scene's size modes


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


@choice_kind("counting", CountingOptions)
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
    """Predicted counts, the count confusion matrix (rows: true, cols: predicted) and MAE of the count."""
    counts = list(counts)
    pred_count = np.asarray(counts)[table["pred"].to_numpy()]
    conf = pd.crosstab(pd.Series(table["count"].to_numpy(), name="true"), pd.Series(pred_count, name="predicted"))
    conf = conf.reindex(index=counts, columns=counts, fill_value=0)
    return {"predicted_count": pred_count, "confusion": conf,
            "mae": float(np.abs(pred_count - table["count"].to_numpy()).mean())}
