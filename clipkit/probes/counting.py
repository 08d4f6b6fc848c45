"""Counting probe (CountBench protocol, Paiss et al. 2023): K-way choice among captions that differ
only in the number word. Controls: object size mode, including constant total area across counts."""
from __future__ import annotations

import numpy as np
import pandas as pd

from clipkit.world import synth
from clipkit.probes.engine import Item, ProbeSpec, register

SEED_STRIDE = 100_000  # probe item seeds: spec.seed * stride + i; training corpus seeds start at 1e7


@register("counting", {"counts": (list, [1, 2, 3, 4, 5, 6]), "size_modes": (list, ["random"]),
                       "image_size": (int, 72), "template": (str, "{}")})
def items(spec: ProbeSpec) -> list[Item]:
    """spec.n scenes, balanced over counts x size modes; candidates: one caption per count."""
    o = spec.options
    counts, modes = [int(c) for c in o["counts"]], list(o["size_modes"])
    if not counts or min(counts) < 1 or max(counts) > 10 or len(set(counts)) != len(counts):
        raise ValueError(f"counting: 'counts' must be distinct integers in 1..10, got {o['counts']}")
    out = []
    for i in range(spec.n):
        n, mode = counts[i % len(counts)], modes[(i // len(counts)) % len(modes)]
        scene = synth.make_count_scene(spec.seed * SEED_STRIDE + i, n=n, size_mode=mode)
        f = scene.facts
        captions = [o["template"].format(synth.count_caption(c, f["colour"], f["shape"])) for c in counts]
        out.append(Item(synth.render(scene, size=o["image_size"]), captions, counts.index(n),
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
