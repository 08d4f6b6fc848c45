"""Minimal pairs (clipkit.world.pairs) and their place in the training corpus (SynthCaptions)."""
import numpy as np
import pytest

from clipkit.data.captions import SynthCaptions
from clipkit.train.config import TrainConfig
from clipkit.world import pairs, styles, synth


def _holds(scene) -> bool:
    """Does the relation scene's geometry make its stated relation true (and no other axis)?"""
    a, b = scene.objects
    dx, dy = a.x - b.x, a.y - b.y
    return {"left of": -dx > abs(dy), "right of": dx > abs(dy),
            "above": -dy > abs(dx), "below": dy > abs(dx)}[scene.facts["relation"]]


@pytest.mark.parametrize("relation", synth.RELATIONS)
def test_relation_twin_states_another_true_relation_or_swaps_the_colours(relation):
    kinds = set()
    for seed in range(40):
        s = synth.make_relation_scene(seed, relation=relation)
        t = pairs.twin(s, seed)
        assert _holds(t), (seed, relation, t)
        (ca, sa), (cb, sb) = s.facts["a"], s.facts["b"]
        if t.facts["relation"] == relation:          # the colour swap: same layout, colours exchanged
            kinds.add("swap")
            assert ca != cb and (t.facts["a"], t.facts["b"]) == ((cb, sa), (ca, sb))
            assert [(o.x, o.y, o.shape) for o in t.objects] == [(o.x, o.y, o.shape) for o in s.objects]
            assert synth.caption(t) != synth.caption(s)
            continue
        kinds.add("relation")
        assert (t.facts["a"], t.facts["b"]) == (s.facts["a"], s.facts["b"])
        assert [(o.shape, o.colour, o.r) for o in t.objects] == [(o.shape, o.colour, o.r) for o in s.objects]
        lo, hi = synth.MARGIN - 1e-9, 1 - synth.MARGIN + 1e-9       # inside the margin (to rounding)
        assert all(lo <= o.x - o.r and o.x + o.r <= hi and lo <= o.y - o.r and o.y + o.r <= hi for o in t.objects)
    assert kinds == {"swap", "relation"}


def test_count_twin_is_one_more_or_one_fewer_of_the_same_object():
    seen = set()
    for seed in range(60):
        s = synth.make_count_scene(seed)
        t = pairs.twin(s, seed)
        assert abs(t.facts["n"] - s.facts["n"]) == 1 and 1 <= t.facts["n"] <= 6
        assert (t.facts["shape"], t.facts["colour"]) == (s.facts["shape"], s.facts["colour"])
        assert len(t.objects) == t.facts["n"]
        seen.add(t.facts["n"] - s.facts["n"])
    assert seen == {-1, 1}


def test_binding_twin_swaps_the_colours_in_place_and_single_twin_changes_the_size():
    s = synth.make_binding_scene(4)
    t = pairs.twin(s, 4)
    (ca, sa), (cb, sb) = s.facts["pairs"]
    assert t.facts["pairs"] == [(cb, sa), (ca, sb)]
    assert [(o.x, o.y) for o in t.objects] == [(o.x, o.y) for o in s.objects]
    assert synth.caption(t) in synth.hard_negatives(s)        # the twin's caption is the scene's negative
    one = synth.make_single_scene(5)
    other = pairs.twin(one, 5)
    assert other.facts["size"] != one.facts["size"] and other.objects[0].shape == one.objects[0].shape


def test_twin_is_a_pure_function_of_scene_and_seed():
    s = synth.make_count_scene(9)
    assert pairs.twin(s, 3) == pairs.twin(s, 3)
    assert np.array_equal(np.asarray(synth.render(pairs.twin(s, 3))), np.asarray(synth.render(pairs.twin(s, 3))))


def _ds(p):
    return SynthCaptions(10 ** 6, lambda texts: texts, lambda im: im, minimal_pairs=p)


def test_corpus_pairs_share_a_batch_and_a_style_and_differ_in_one_fact():
    ds = _ds(0.5)
    firsts = [i for i in range(400) if ds._twin_of(i) is not None]
    assert 0.35 < len(firsts) / 200 < 0.65                 # about half the even-odd pairs
    for i in firsts:
        assert i % 2 == 1 and ds._twin_of(i) == i - 1
        a, b = ds.scene(i - 1), ds.scene(i)
        assert a.kind == b.kind and synth.caption(a) != synth.caption(b)
        assert synth.caption(b) in synth.hard_negatives(a) or a.kind in ("count", "relation")
    assert all(_ds(0.0)._twin_of(i) is None for i in range(100))
    # the even positions are the plain corpus: pairs only replace odd positions
    plain = _ds(0.0)
    assert all(synth.caption(ds.scene(i)) == synth.caption(plain.scene(i)) for i in range(0, 100, 2))
    i = firsts[0]
    assert ds[(i, i)]["text"].endswith(synth.caption(ds.scene(i)))
    # a twin is drawn in its scene's style (the pair differs in the fact only), not in its own position's
    own = styles.corpus_style(i - 1, 0)
    assert own != styles.corpus_style(i, 0)
    drawn = np.asarray(ds[(i, i)]["image"])
    assert np.array_equal(drawn, np.asarray(synth.render(ds.scene(i), size=72, style=own)))


def test_minimal_pairs_is_checked():
    with pytest.raises(ValueError, match=r"minimal_pairs is a probability"):
        _ds(1.5)
    with pytest.raises(ValueError, match=r"minimal_pairs is a fraction"):
        TrainConfig(minimal_pairs=-0.1)
    with pytest.raises(ValueError, match=r"minimal_pairs needs --data synthetic"):
        TrainConfig(minimal_pairs=0.5, data="csv", data_path="x.csv")
