"""Scene seeds: training, held-out retrieval, probe and classification scenes come from disjoint namespaces.

Renders a training slice (seeds -1, 0, 999 and indices past 10M), the held-out retrieval set, a
probe set of every synthetic family and every classification split, and finds no image in two of
them. In-memory, no model, no network."""
import numpy as np
import pytest

from clipkit.analysis.pointing import pointing_items
from clipkit.data.classification import FAMILIES, SyntheticClassification
from clipkit.evaluate.synthetic import HELD_OUT_PURPOSE, HELD_OUT_SEED
from clipkit.probes import load_spec
from clipkit.probes.protocol import KINDS
from clipkit.world import synth
from clipkit.world.seeds import scene_seed

SIZE = 72                                  # every set is rendered at the probes' default size
TRAIN_SEEDS = (-1, 0, 999)                 # the three that collided with arithmetic seeds
BIG = 10_000_001                           # an index past the old 10M corpus stride


def pixels(images) -> dict[bytes, int]:
    """{rendered bytes: position} of a list of PIL images."""
    return {np.asarray(im.convert("RGB")).tobytes(): i for i, im in enumerate(images)}


def training_slice(n=150) -> dict[str, list]:
    out = {f"train seed {s}": [synth.render(synth.corpus_item(i, seed=s), size=SIZE) for i in range(n)]
           for s in TRAIN_SEEDS}
    out["train index 10M+"] = [synth.render(synth.corpus_item(BIG + i, seed=0), size=SIZE) for i in range(n)]
    return out


def probe_sets(n=60) -> dict[str, list]:
    out = {}
    for name in ("counting", "counting_area_control", "spatial", "spatial_swap", "binding"):
        spec = load_spec(name, n=n, seed=0)
        out[f"probe {name}"] = [it.image for it in KINDS[spec.kind].items(spec)]
    for kind in ("count", "relation", "binding"):                     # the pointing game's scenes
        out[f"pointing {kind}"] = [it["image"] for it in pointing_items(kind, 20, seed=0, size=SIZE)]
    out["heldout retrieval"] = [synth.render(synth.corpus_item(i, seed=HELD_OUT_SEED, purpose=HELD_OUT_PURPOSE),
                                             size=SIZE) for i in range(n)]
    # fine-grained and shift probes read classification splits: every family and split
    for family in FAMILIES:
        for split in ("train", "val", "test"):
            ds = SyntheticClassification(family, 30, seed=0, split=split, image_size=SIZE)
            out[f"classification {family}/{split}"] = [ds[i][0] for i in range(len(ds))]
    return out


def group(name: str) -> str:
    """Sets that may share scenes by design form one group: the probes reuse each other's scenes (the
    pointing game asks about the probes' own scenes, spatial_swap about spatial's); nothing else may."""
    return "probes" if name.startswith(("probe ", "pointing ")) else name


def test_no_scene_is_in_two_sets():
    sets = {**training_slice(), **probe_sets()}
    seen: dict[bytes, str] = {}
    clashes = []
    for name, images in sets.items():
        for b in pixels(images):
            if b in seen and group(seen[b]) != group(name):
                clashes.append((seen[b], name))
            seen.setdefault(b, name)
    assert not clashes, f"identical images in {sorted(set(clashes))[:5]}"
    # the detector is not blind: a scene drawn with the same seed twice is found
    again = synth.render(synth.corpus_item(7, seed=0), size=SIZE)
    assert np.asarray(again).tobytes() in pixels(sets["train seed 0"])


def test_probe_scenes_are_not_training_scenes_by_their_facts():
    """Scene objects, not only pixels: no pointing-game (probe-namespace) scene equals a training scene."""
    probe = {it["scene"] for kind in ("count", "relation", "binding") for it in pointing_items(kind, 60, size=16)}
    train = {synth.corpus_item(i, seed=s) for s in TRAIN_SEEDS for i in range(300)}
    assert len(probe) == 180 and not probe & train
    assert synth.corpus_item(5, seed=0) in train                # the comparison sees equal scenes


def test_namespaces_are_distinct_for_every_seed_and_large_index():
    purposes = ["train", HELD_OUT_PURPOSE, "probe:counting", "probe:spatial", "probe:binding", "shift-noise",
                *[f"classification:{f}:{s}" for f in FAMILIES for s in ("train", "val", "test")]]
    indices = [*range(200), BIG, 2 * BIG, 10 ** 12]
    seeds = [scene_seed(p, s, i) for p in purposes for s in (-1, 0, 1, 999) for i in indices]
    assert len(set(seeds)) == len(seeds)                        # no two (purpose, seed, index) share a seed
    assert all(0 <= s < 2 ** 63 for s in seeds)                 # 63 bits: numpy seeds it, nothing wraps
    # the old arithmetic's collisions are gone: (seed 0, index 10M+1) vs (seed 1, index 1); seed -1 vs probe seed 0
    assert scene_seed("train", 0, BIG) != scene_seed("train", 1, 1)
    assert synth.corpus_item(3, seed=-1) != synth.corpus_item(3, seed=0)
    assert scene_seed("train", 0, 0) == 6936160418376401011     # pinned: the same on every platform and run
    assert scene_seed("train", np.int64(2), np.int64(3)) == scene_seed("train", 2, 3)


@pytest.mark.parametrize("args, match", [(("nope", 0, 0), "unknown seed purpose"),
                                         (("probe:", 0, 0), "unknown seed purpose"),
                                         (("train", 0, -1), "index must be >= 0"),
                                         (("train", 1.5, 0), "seed must be an integer"),
                                         (("train", 0, True), "index must be an integer")])
def test_bad_seed_arguments(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        scene_seed(*args)


def test_retrieval_caption_set_is_the_held_out_namespace_not_a_training_run():
    """SyntheticCaptions (clipkit.evaluate's retrieval on synthetic pairs) draws the held-out scenes
    that clipkit eval scores, and a training run with --seed 999 does not reproduce them."""
    from clipkit.data.captions import SyntheticCaptions
    from clipkit.world import synth
    ds = SyntheticCaptions(n=20, seed=999)
    held_out = [synth.corpus_item(i, seed=999, purpose="heldout-retrieval") for i in range(20)]
    trained = [synth.corpus_item(i, seed=999) for i in range(20)]
    assert ds.scenes == held_out and not set(ds.scenes) & set(trained)
