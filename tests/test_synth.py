"""The scene generator: determinism, captions that state the scene, hard negatives, area control."""
import numpy as np
import pytest

from clipkit.world import synth


@pytest.mark.parametrize("kind", synth.KINDS)
def test_scene_is_pure_function_of_kind_and_seed(kind):
    a, b = synth.make_scene(kind, seed=5), synth.make_scene(kind, seed=5)
    assert a == b and synth.caption(a) == synth.caption(b)
    assert np.array_equal(np.asarray(synth.render(a)), np.asarray(synth.render(b)))
    c = synth.make_scene(kind, seed=6)
    assert a != c


def test_count_caption_matches_objects():
    for n in range(1, 11):
        for mode in ("random", "fixed", "constant_area"):
            s = synth.make_count_scene(seed=n, n=n, size_mode=mode)
            assert len(s.objects) == n
            assert {o.shape for o in s.objects} == {s.facts["shape"]}
            assert {o.colour for o in s.objects} == {s.facts["colour"]}
            assert synth.caption(s).split()[0] == synth.NUMBER_WORDS[n]


def test_objects_do_not_overlap_and_stay_inside_margin():
    for seed in range(30):
        s = synth.make_count_scene(seed=seed, n=10)
        for i, o in enumerate(s.objects):
            assert synth.MARGIN <= o.x - o.r and o.x + o.r <= 1 - synth.MARGIN + 1e-9
            for p in s.objects[i + 1:]:
                assert (o.x - p.x) ** 2 + (o.y - p.y) ** 2 > (o.r + p.r) ** 2


@pytest.mark.parametrize("relation", synth.RELATIONS)
def test_relation_geometry_matches_caption(relation):
    for seed in range(20):
        s = synth.make_relation_scene(seed=seed, relation=relation)
        a, b = s.objects
        dx, dy = b.x - a.x, b.y - a.y   # y grows downwards
        expected = {"left of": dx > abs(dy), "right of": -dx > abs(dy),
                    "above": dy > abs(dx), "below": -dy > abs(dx)}[relation]
        assert expected, (relation, a, b)
        assert synth.RELATION_PHRASES[relation] in synth.caption(s)


def test_hard_negatives_are_false_and_differ_by_one_fact():
    s = synth.make_count_scene(seed=1, n=3)
    negs = synth.hard_negatives(s)
    assert synth.caption(s) not in negs and len(negs) == 9
    r = synth.make_relation_scene(seed=2, relation="above")
    assert synth.relation_caption(r.facts["a"], "below", r.facts["b"]) in synth.hard_negatives(r)
    assert synth.relation_caption(r.facts["b"], "above", r.facts["a"]) in synth.hard_negatives(r)
    b = synth.make_binding_scene(seed=3)
    (ca, sa), (cb, sb) = b.facts["pairs"]
    assert synth.hard_negatives(b) == [f"a {cb} {sa} and a {ca} {sb}"]


def test_constant_area_control_holds_on_rendered_pixels():
    # the summed object area must not grow with the count (it would, ~n-fold, with fixed sizes)
    areas = {n: np.mean([synth.object_area(synth.make_count_scene(s, n=n, shape="circle",
                                                                   size_mode="constant_area"))
                         for s in range(3)]) for n in (1, 3, 6, 10)}
    assert max(areas.values()) / min(areas.values()) < 1.15, areas
    fixed = {n: synth.object_area(synth.make_count_scene(0, n=n, shape="circle", size_mode="fixed"))
             for n in (1, 6)}
    assert fixed[6] / fixed[1] > 4


def test_corpus_is_deterministic_and_mixed():
    import hashlib
    import subprocess
    import sys
    kinds = [synth.corpus_item(i).kind for i in range(400)]
    assert set(kinds) == set(synth.KINDS)
    # the same item in another process renders to the same pixels; neighbouring items differ
    digest = lambda i: hashlib.sha1(synth.render(synth.corpus_item(i)).tobytes()).hexdigest()  # noqa: E731
    code = ("import hashlib; from clipkit.world import synth; "
            "print(hashlib.sha1(synth.render(synth.corpus_item(17)).tobytes()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == digest(17)
    assert len({digest(i) for i in range(16, 22)}) == 6


def test_varied_constant_area_keeps_the_total_and_varies_sizes_within_a_scene():
    import math
    for n in (1, 3, 6):
        for seed in range(3):
            scene = synth.make_count_scene(seed, n=n, shape="circle", size_mode="varied_constant_area")
            radii = [o.r for o in scene.objects]
            assert len(radii) == n and sum(math.pi * r * r for r in radii) == pytest.approx(0.06, rel=0.2)
            if n >= 3:
                assert max(radii) / min(radii) > 1.1, radii        # not one size, as constant_area is
    same = synth.make_count_scene(0, n=4, shape="circle", size_mode="constant_area")
    assert len({round(o.r, 9) for o in same.objects}) == 1


def test_bad_factors_raise_clear_errors():
    with pytest.raises(ValueError, match="1 to 10"):
        synth.make_count_scene(0, n=11)
    with pytest.raises(ValueError, match="relation must be one of"):
        synth.make_relation_scene(0, relation="behind")
    with pytest.raises(ValueError, match="unknown scene kind"):
        synth.make_scene("dragons", 0)
