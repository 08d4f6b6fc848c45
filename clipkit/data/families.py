"""Synthetic classification families: class name -> scene factory (a pure function of a seed) and templates.

Tables, not code: a new fine-grained family is a new entry. Kept free of torch, so a probe spec that
names a family is validated without importing it (clipkit.data.classification builds the datasets)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Callable

from clipkit.world import synth


@dataclass(frozen=True)
class Family:
    """A synthetic classification task: class name -> scene factory (seed -> synth.Scene), and templates."""
    classes: dict[str, Callable[[int], synth.Scene]]
    templates: tuple[str, ...] = ("a {c}.", "a photo of a {c}.")


def _single(seed: int, shape: str | None = None, colour=None, size: str | None = None) -> synth.Scene:
    """One object (synth's "single" scene), with the shape, colour (name or RGB) or size held fixed."""
    scene = synth.make_single_scene(seed, shapes=(shape,) if shape else synth.BASIC_SHAPES)
    obj = scene.objects[0]
    if colour is not None:
        obj = dataclasses.replace(obj, colour=colour)
    if size is not None:  # same radius rule as make_single_scene; keep the object inside the margin
        r = synth.SIZES[size] * 1.3
        lo, hi = synth.MARGIN + r, 1 - synth.MARGIN - r
        obj = dataclasses.replace(obj, r=r, x=min(max(obj.x, lo), hi), y=min(max(obj.y, lo), hi))
    facts = {**scene.facts, **({"size": size} if size else {})}
    return dataclasses.replace(scene, objects=(obj,), facts=facts)


# Close shades of blue (RGB): a fine-grained colour task; "blue" and "cyan" are the training colours.
SHADES = {"navy": (20, 30, 120), "blue": synth.COLOURS["blue"], "sky blue": (110, 175, 240),
          "cyan": synth.COLOURS["cyan"], "teal": (30, 130, 140)}
POLYGONS = ("triangle", "square", "pentagon", "hexagon", "heptagon", "octagon")  # 3..8 sides
STARS = ("four-pointed star", "star", "six-pointed star", "seven-pointed star", "eight-pointed star")  # 4..8 points

FAMILIES: dict[str, Family] = {
    "shape": Family({s: partial(_single, shape=s) for s in synth.BASIC_SHAPES}),
    "polygon": Family({s: partial(_single, shape=s) for s in POLYGONS}),
    "star": Family({s: partial(_single, shape=s) for s in STARS}),
    "colour": Family({c: partial(_single, colour=c) for c in synth.BASIC_COLOURS},
                     ("a {c} shape.", "a {c} object.")),
    "shade": Family({name: partial(_single, colour=rgb) for name, rgb in SHADES.items()},
                    ("a {c} shape.", "a {c} object.")),
    "size": Family({z: partial(_single, size=z) for z in synth.SIZES}, ("a {c} shape.", "a {c} object.")),
    # the class name carries the noun so that one is singular ("one shape", "two shapes"; never "one shapes")
    "count": Family({f"{synth.NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}": partial(synth.make_count_scene, n=n)
                     for n in range(1, 7)}, ("{c}.", "a photo of {c}.")),
}
