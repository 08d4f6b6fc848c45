"""Scene seeds: one keyed hash of (purpose, seed, index), so training, probe and held-out scenes never meet.

Every synthetic scene is a pure function of an integer scene seed (clipkit.world.synth). Which
seed a scene gets is decided here, and only here:

    scene_seed(purpose, seed, index) = first 8 bytes of BLAKE2b(purpose, seed, index), top bit dropped

a 63-bit integer. `purpose` names the namespace, `seed` is the user's seed (`--seed`, a spec's
`seed`; any integer, negative included) and `index` the item's position (any integer >= 0, no
upper bound). The three are hashed as one length-prefixed string under a fixed personalisation
key, so no two (purpose, seed, index) triples share an input, and different outputs are what a
63-bit hash gives: the chance that a training slice of T scenes and a probe set of P scenes share
a seed at all is about T * P / 2**63 (1e-7 for a billion training scenes against 100,000 probe
items). Before this, seeds were arithmetic (`seed * 100_000 + i` for probes, `10_000_000 * (seed + 1)
+ index` for training), which `--seed -1` collided with probe seed 0, `--seed 999` with the held-out
set, and a training index past 10M with the next corpus seed.

Purposes in use (PURPOSES; a new namespace adds its name here):
    train                           the training corpus (clipkit.world.synth.corpus_item)
    heldout-retrieval               held-out retrieval scenes (clipkit.evaluate.synthetic)
    probe:<family>                  a synthetic probe family's items (counting, spatial, binding)
    classification:<family>:<split> synthetic classification sets (clipkit.data.classification)
    shift-noise                     the noise of a shifted copy of a test scene (the shift probe)
    gallery                         the explorer's scene gallery
"""
from __future__ import annotations

import hashlib
import operator

PERSON = b"clipkit-scenes"          # BLAKE2b personalisation: these seeds differ from any other use of the hash
PURPOSES = ("train", "heldout-retrieval", "probe:", "classification:", "shift-noise", "gallery")


def scene_seed(purpose: str, seed: int, index: int) -> int:
    """The 63-bit scene seed of item `index` in namespace `purpose` under user seed `seed` (see the module)."""
    if not isinstance(purpose, str) or not purpose.startswith(PURPOSES) or purpose in ("probe:", "classification:"):
        raise ValueError(f"unknown seed purpose {purpose!r}: use one of {list(PURPOSES)} "
                         f"('probe:<family>', 'classification:<family>:<split>')")
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not hasattr(v, "__index__"):       # ints and numpy ints, not 1.0 or True
            raise TypeError(f"{name} must be an integer, got {v!r}")
    seed, index = operator.index(seed), operator.index(index)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    text = purpose.encode()
    # length-prefixed fields: ("a", 12, 3) and ("a1", 2, 3) are different inputs
    msg = b"%d:%s|%d|%d" % (len(text), text, seed, index)
    digest = hashlib.blake2b(msg, digest_size=8, person=PERSON).digest()
    return int.from_bytes(digest, "big") >> 1                   # 63 bits: fits int64 and numpy's seeding
