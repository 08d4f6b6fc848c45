"""Minimal pairs: a scene's twin, which differs from it in exactly the fact its caption states.

A twin is what a contrastive batch needs to make a fact matter. In a batch of random scenes almost
every wrong caption differs from the right one in its objects, so a model can match objects and
ignore the count, the relation and which colour goes with which shape (the bag-of-words shortcut
Yuksekgonul et al. 2023 find in CLIP). When a scene and its twin sit in one batch, each image's
nearest wrong caption is its twin's, which differs by the one fact: InfoNCE (unchanged) then rewards
the image encoder for seeing the fact and the text encoder for reading it. Unlike NegCLIP's
hard-negative captions, both sides get a real (image, caption) pair, so the image->text and the
text->image directions both learn it.

  count     the same shape and colour, one more or one fewer object (1..max_count), placed anew
  relation  half the time the same two objects in another of the four relations (the layout rotated
            or mirrored); otherwise, when their colours differ, the same layout with the two colours
            swapped ("a blue circle left of a red square"), so relation scenes teach binding too
  binding   the same shapes in the same places, the colours swapped between them
  single    the same object in the same place, another named size

`twin(scene, seed)` is a pure function of both, like every scene.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from clipkit.world import synth

# unit vector from B to A when "A <relation> B" (y points down)
_DIRECTION = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}


def twin(scene: synth.Scene, seed: int, max_count: int = 6) -> synth.Scene:
    """The minimal-pair twin of `scene` (see the module docstring), drawn from `seed`."""
    rng = np.random.default_rng([int(seed) & (2 ** 63 - 1), 29])
    f = scene.facts
    if scene.kind == "count":
        n = f["n"]
        steps = [m for m in (n - 1, n + 1) if 1 <= m <= max(max_count, n)]
        m = int(rng.choice(steps))
        return synth.make_count_scene(int(rng.integers(2 ** 62)), n=m, shape=f["shape"], colour=f["colour"],
                                      size_mode=f.get("size_mode", "random"), max_count=max(max_count, m))
    if scene.kind == "relation":
        other = str(rng.choice([r for r in synth.RELATIONS if r != f["relation"]]))
        a, b = scene.objects
        if a.colour != b.colour and rng.random() < 0.5:
            a, b = replace(a, colour=b.colour), replace(b, colour=a.colour)
            return replace(scene, objects=(a, b), facts={**f, "a": (a.colour, a.shape), "b": (b.colour, b.shape)})
        return _relation_twin(scene, other)
    if scene.kind == "binding":
        a, b = scene.objects
        objs = (replace(a, colour=b.colour), replace(b, colour=a.colour))
        return replace(scene, objects=objs, facts={"pairs": [(o.colour, o.shape) for o in objs]})
    if scene.kind == "single":
        size = str(rng.choice([s for s in synth.SIZES if s != f["size"]]))
        o = replace(scene.objects[0], r=synth.SIZES[size] * 1.3)
        return replace(scene, objects=(synth.clip_to_margin(o),), facts={"size": size})
    raise ValueError(f"no twin for scene kind {scene.kind!r}")


def _relation_twin(scene: synth.Scene, relation: str) -> synth.Scene:
    """`scene`'s two objects laid out so that "A <relation> B" holds: A's offset from the pair's midpoint
    rotated from the old relation's direction onto the new one (a mirror for the inverse)."""
    a, b = scene.objects
    mx, my = (a.x + b.x) / 2, (a.y + b.y) / 2
    dx, dy = a.x - mx, a.y - my
    old, new = _DIRECTION[scene.facts["relation"]], _DIRECTION[relation]
    t = math.atan2(new[1], new[0]) - math.atan2(old[1], old[0])
    c, s = round(math.cos(t)), round(math.sin(t))          # quarter turns: exact
    ndx, ndy = c * dx - s * dy, s * dx + c * dy
    a2 = synth.clip_to_margin(replace(a, x=mx + ndx, y=my + ndy))
    b2 = synth.clip_to_margin(replace(b, x=mx - ndx, y=my - ndy))
    return replace(scene, objects=(a2, b2), facts={**scene.facts, "relation": relation})
