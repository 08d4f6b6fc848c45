"""The published failure benchmarks, read from their files as published and scored as their authors score them.

One module per benchmark over the shared engine in `common`:

    common.py      items, distinct-image/caption encoding, score matrices, bad-image accounting, the result
    sugarcrepe.py  SugarCrepe (7 subsets, 2-way)                 aro.py         ARO: VG-R, VG-A, COCO/Flickr-Order
    whatsup.py     What'sUp (controlled A/B, COCO/VG-QA)         winoground.py  Winoground (text/image/group)
    valse.py       VALSE (11 pieces, pairwise)                   countbench.py  CountBench (9-way number swap)
    mmvp.py        MMVP-VLM (9 patterns, image pairs)

Each module has an `Options` dataclass, `read(options) -> items`, the authors' scorer `score(items, scores)`
and `run(options, model, preprocess, tokenizer, model_name="")`.
"""
BENCHMARKS = ("sugarcrepe", "aro", "whatsup", "winoground", "valse", "countbench", "mmvp")
# importing the package registers the seven probe kinds (clipkit.probes imports it in its list of kinds)
from clipkit.probes.benchmarks import (  # noqa: F401
    aro,
    countbench,
    mmvp,
    sugarcrepe,
    valse,
    whatsup,
    winoground,
)
