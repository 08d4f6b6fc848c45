"""Style families and caption frames (clipkit.world.styles): pure, every family renders, held-out
families never trained on, captions stay true under every style, frames keep the probed words."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from clipkit.world import shifts, styles, synth


def _bytes(img):
    return np.asarray(img).tobytes()


def test_same_family_and_seed_give_the_same_bytes():
    scene = synth.make_scene("count", seed=5, n=4)
    for fam in styles.FAMILIES:
        a = synth.render(scene, 54, style=styles.draw_style(fam, 11))
        b = synth.render(scene, 54, style=styles.draw_style(fam, 11))
        assert _bytes(a) == _bytes(b), fam
    assert styles.corpus_style(7, seed=3) == styles.corpus_style(7, seed=3)
    assert len({styles.corpus_style(i) for i in range(50)}) > 40      # and they do vary


def test_every_family_renders_and_differs_from_the_classic_look():
    scene = synth.make_scene("relation", seed=2)
    classic = _bytes(synth.render(scene, 48))
    for fam in styles.FAMILIES:
        for seed in range(6):
            img = synth.render(scene, 48, style=styles.draw_style(fam, seed))
            assert img.size == (48, 48) and img.mode == "RGB"
            assert (_bytes(img) == classic) == (fam == "classic"), (fam, seed)


def test_no_style_and_the_classic_style_draw_what_render_always_drew():
    for kind in synth.KINDS:
        scene = synth.make_scene(kind, seed=9)
        plain = synth.render(scene, 72)
        assert _bytes(synth.render(scene, 72, style=styles.Style())) == _bytes(plain)
        assert _bytes(synth.render(scene, 72, style=styles.Style(frame=2))) == _bytes(plain)


def test_held_out_families_never_appear_in_a_training_slice():
    fams = [styles.corpus_style(i, seed=s).family for s in (0, 1) for i in range(1500)]
    assert not set(fams) & set(styles.HELD_OUT_FAMILIES)
    assert set(fams) == set(styles.TRAIN_FAMILIES)
    assert set(styles.HELD_OUT_FAMILIES) and set(styles.TRAIN_FAMILIES) | set(styles.HELD_OUT_FAMILIES) == set(styles.FAMILIES)
    # the held-out families are shifts, and only there
    for fam in styles.HELD_OUT_FAMILIES:
        s = shifts.get_shift(f"heldout_{fam}")
        assert s.kind == "style" and s.severities == (1,)
        scene = synth.make_scene("count", seed=1)
        assert _bytes(shifts.shifted_image(scene, s.name, 1, seed=4)) != _bytes(synth.render(scene, 72))


def test_a_style_subset_excluding_a_family_never_draws_it():
    fams = {styles.corpus_style(i, families=("dark", "light")).family for i in range(300)}
    assert fams == {"dark", "light"}
    with pytest.raises(ValueError, match="families must be"):
        styles.corpus_style(0, families=("dark", "paper"))
    with pytest.raises(ValueError, match="unknown style family 'paper'; choose one of"):
        styles.draw_style("paper", 0)


def _margin_ok(scene):
    m = synth.MARGIN - 1e-9
    return all(m <= o.x - o.r and o.x + o.r <= 1 - m and m <= o.y - o.r and o.y + o.r <= 1 - m for o in scene.objects)


def test_placement_keeps_the_facts_the_caption_states():
    for seed in range(60):
        st = styles.draw_style("dark", seed)
        for kind in synth.KINDS:
            scene = synth.make_scene(kind, seed=seed)
            moved = styles.placed(scene, st)
            assert len(moved.objects) == len(scene.objects) and moved.facts == scene.facts
            assert _margin_ok(moved), (kind, seed)
            for a, b in zip(scene.objects, moved.objects):
                assert (a.shape, a.colour, a.angle) == (b.shape, b.colour, b.angle)
            if kind == "single":                               # its caption states the size
                assert moved.objects[0].r == scene.objects[0].r
            if kind == "relation":
                (a, b), rel = moved.objects, scene.facts["relation"]
                dx, dy = b.x - a.x, b.y - a.y
                assert {"left of": dx > abs(dy), "right of": -dx > abs(dy), "above": dy > abs(dx),
                        "below": -dy > abs(dx)}[rel]
            objs = moved.objects                                # the gap synth keeps between objects holds
            for i in range(len(objs)):
                for j in range(i):
                    d = np.hypot(objs[i].x - objs[j].x, objs[i].y - objs[j].y)
                    assert d > 1.1 * (objs[i].r + objs[j].r)


def test_clutter_never_adds_a_countable_object():
    """Count the connected blobs of the counted colour in the rendered pixels: clutter leaves the count."""
    checked = 0
    for seed in range(40):
        scene = synth.make_count_scene(seed, size_mode="random")
        for clutter in ("specks", "lines"):
            st = replace(styles.draw_style("dark", seed), fill="filled", clutter=clutter, n_clutter=10,
                         resolution=1.0, brightness=1.0, antialias=True)
            items = styles.clutter_items(styles.placed(scene, st), st)
            assert items, "clutter was drawn"
            for c in items:
                if c[0] == "speck":
                    assert c[3] <= styles.MAX_SPECK < min(o.r for o in scene.objects) / 2
            img = np.asarray(synth.render(scene, 144, style=st)).astype(int)
            target = np.array(synth.COLOURS[scene.facts["colour"]])
            mask = np.abs(img - target).sum(-1) < 60
            labels, k = ndimage.label(mask)
            sizes = ndimage.sum(mask, labels, range(1, k + 1))
            assert int((sizes >= 6).sum()) == scene.facts["n"], (seed, clutter)
            checked += 1
    assert checked == 80


def test_clutter_is_grey_and_apart_from_the_objects():
    for seed in range(30):
        st = styles.draw_style("noise", seed)
        scene = styles.placed(synth.make_scene("binding", seed=seed), st)
        for c in styles.clutter_items(scene, st):
            pts = [(c[1], c[2])] if c[0] == "speck" else [(c[1], c[2]), (c[3], c[4])]
            for x, y in pts:
                assert all(np.hypot(x - o.x, y - o.y) > o.r + styles.MIN_CLUTTER_GAP - 1e-9 for o in scene.objects)
    greys = {styles.draw_style(f, s).clutter_grey for f in styles.FAMILIES for s in range(20)}
    assert all(isinstance(g, int) and 0 <= g <= 255 for g in greys)       # one grey level: R = G = B


def test_caption_frames_keep_the_probed_words():
    for seed in range(20):
        for kind in ("count", "relation", "binding", "single"):
            scene = synth.make_scene(kind, seed=seed)
            text = synth.caption(scene)
            for frame in range(len(styles.FRAMES)):
                out = styles.framed(text, frame, scene)
                assert out.endswith(text) and (frame == 0) == (out == text)
    one = synth.make_count_scene(0, n=1)
    three = synth.make_count_scene(0, n=3)
    k = styles.FRAMES.index("there are {}")
    assert styles.framed(synth.caption(one), k, one) == "there is one " + synth.caption(one)[4:]
    assert styles.framed(synth.caption(three), k, three).startswith("there are three ")
    frames = {styles.corpus_style(i).frame for i in range(200)}
    assert frames == set(range(len(styles.FRAMES)))
    with pytest.raises(ValueError, match="frame must be in 0..3"):
        styles.framed("x", 9)


def test_partial_captions_are_true_and_incomplete():
    rng = np.random.default_rng(0)
    for seed in range(30):
        for kind in synth.KINDS:
            scene = synth.make_scene(kind, seed=seed)
            full, part = synth.caption(scene), styles.partial_caption(scene, rng)
            assert part != full and len(part.split()) < len(full.split())
            words = set(full.split())
            assert set(part.split()) <= words | {"a"}, (full, part)     # no word the scene does not state
    with pytest.raises(ValueError, match="no partial caption"):
        styles.partial_caption(replace(synth.make_scene("count", 0), kind="blob"), rng)
