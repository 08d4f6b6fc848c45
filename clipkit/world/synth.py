"""A small procedural world of captioned scenes: shapes on a canvas, a caption grammar, hard negatives.

Every scene is a pure function of (kind, seed, factors): `make_scene("count", seed=3, n=4)` always
returns the same objects, and `render(scene)` always the same pixels. The same generator yields the
training corpus of the embedded default model and the controlled probe sets, so a probe can ask the
model about exactly the factors it was (or was not) trained to see.

Coordinates are normalised to [0, 1] with y pointing down (image convention). Objects are kept
inside an inner box of `MARGIN` on every side so that the paper's random square crop (see
`clipkit.data.transforms.train_transform`) never cuts an object off and so never changes a count.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

from clipkit.world.seeds import scene_seed

# --- vocabulary -------------------------------------------------------------------------------
COLOURS = {  # name -> RGB; hues far apart so that "colour" is an easy factor at 64 px
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
# name -> (kind, parameter): regular polygons by side count, stars by point count, circle, cross
SHAPES = {
    "circle": ("circle", 0),
    "square": ("polygon", 4),
    "triangle": ("polygon", 3),
    "pentagon": ("polygon", 5),
    "hexagon": ("polygon", 6),
    "heptagon": ("polygon", 7),
    "octagon": ("polygon", 8),
    "diamond": ("diamond", 0),
    "star": ("star", 5),
    "four-pointed star": ("star", 4),   # stars by number of points: a fine-grained family
    "six-pointed star": ("star", 6),
    "seven-pointed star": ("star", 7),
    "eight-pointed star": ("star", 8),
    "cross": ("cross", 0),
}
PLURALS = {name: name + "s" for name in SHAPES}
PLURALS["cross"] = "crosses"
BASIC_SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")  # the training shapes
BASIC_COLOURS = tuple(COLOURS)
SIZES = {"small": 0.07, "medium": 0.10, "large": 0.14}  # object radius as a fraction of canvas
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {  # relation -> caption phrase
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MARGIN = 0.08  # keep objects inside [MARGIN, 1 - MARGIN]; > the crop's 1 - 64/72 = 0.11 / 2 per side
BACKGROUND = (30, 30, 34)
KINDS = ("count", "relation", "binding", "single")


@dataclass(frozen=True)
class Obj:
    """One object: what it is and where. x, y are the centre; r is the circumradius (all in [0, 1])."""
    shape: str
    colour: str
    x: float
    y: float
    r: float
    angle: float = 0.0  # rotation in degrees
    style: str = "filled"  # "filled" or "outline"


@dataclass(frozen=True)
class Scene:
    """A scene: its objects plus the facts its caption states (kind-specific, e.g. count, relation)."""
    kind: str
    objects: tuple[Obj, ...]
    facts: dict = field(default_factory=dict, hash=False, compare=False)
    background: tuple[int, int, int] = BACKGROUND


def scene_rng(kind: str, seed: int) -> np.random.Generator:
    """A generator that depends only on (kind, seed): stable across runs, processes and platforms."""
    return np.random.default_rng([zlib.crc32(kind.encode()), int(seed)])


# --- placement --------------------------------------------------------------------------------
def _place(rng, radii, tries=100, restarts=20):
    """Centres for non-overlapping objects of the given radii, inside the margin.

    Greedy rejection sampling, restarted from scratch when an object finds no room; after
    `restarts` failures the radii shrink by 10% and it tries again (still a pure function of rng).
    Returns (centres, radii) since the radii may have shrunk.
    """
    radii = [float(r) for r in radii]
    while True:
        for _ in range(restarts):
            out = []
            for r in radii:
                lo, hi = MARGIN + r, 1 - MARGIN - r
                for _ in range(tries):
                    x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
                    # 1.15: a visible gap between objects, so counting is about objects, not blobs
                    if all((x - px) ** 2 + (y - py) ** 2 > (1.15 * (r + pr)) ** 2 for px, py, pr in out):
                        out.append((x, y, r))
                        break
                else:
                    break
            if len(out) == len(radii):
                return [(x, y) for x, y, _ in out], radii
        radii = [0.9 * r for r in radii]


# --- scene kinds ------------------------------------------------------------------------------
def make_count_scene(seed: int, n: int | None = None, shape: str | None = None, colour: str | None = None,
                     size_mode: str = "random", max_count: int = 6, shapes=BASIC_SHAPES,
                     colours=BASIC_COLOURS, total_area: float = 0.06) -> Scene:
    """n objects of one shape and one colour.

    size_mode: "random" (each object small..large), "fixed" (all medium-small), "constant_area"
    (radius chosen so that the summed object area is `total_area` of the canvas whatever n is, so
    that "more pixels" cannot stand in for "more objects"), or "varied_constant_area" (the same
    summed area, shared unequally: object areas in proportion to draws from U(1, 4), so the objects
    of one scene differ in size up to 2x in radius and no single object's size gives the count away
    as it does under constant_area; the mean object size is still total_area / n, which no design
    that fixes the total can avoid).
    """
    rng = scene_rng("count", seed)
    n = int(rng.integers(1, max_count + 1)) if n is None else int(n)
    if not 1 <= n <= 10:
        raise ValueError(f"count scenes hold 1 to 10 objects, got n={n}")
    shape = shape or str(rng.choice(shapes))
    colour = colour or str(rng.choice(colours))
    if size_mode == "random":
        # big objects only when few: ten large objects do not fit on the canvas
        rmax = min(SIZES["large"], 0.24 / math.sqrt(n))
        radii = list(rng.uniform(0.055, max(rmax, 0.056), size=n))
    elif size_mode == "fixed":
        radii = [0.075] * n
    elif size_mode == "constant_area":
        # pi r^2 n = total_area  ->  r = sqrt(total_area / (pi n)); this is the circle-equivalent radius
        radii = [math.sqrt(total_area / (math.pi * n))] * n
    elif size_mode == "varied_constant_area":
        share = rng.uniform(1.0, 4.0, size=n)                   # relative areas: radii differ up to 2x
        radii = list(np.sqrt(total_area * share / share.sum() / math.pi))   # sum of pi r^2 = total_area
    else:
        raise ValueError(f"size_mode must be 'random', 'fixed', 'constant_area' or 'varied_constant_area', "
                         f"got {size_mode!r}")
    centres, radii = _place(rng, radii)
    angle = float(rng.uniform(0, 360)) if shape != "circle" else 0.0
    objs = tuple(Obj(shape, colour, x, y, r, angle) for (x, y), r in zip(centres, radii))
    return Scene("count", objs, {"n": n, "shape": shape, "colour": colour, "size_mode": size_mode})


def make_relation_scene(seed: int, relation: str | None = None, shapes=BASIC_SHAPES,
                        colours=BASIC_COLOURS) -> Scene:
    """Two distinct objects A, B with `A <relation> B` true and the other three relations false.

    A is placed in one half of the canvas and B in the other, with the cross-axis offset kept
    smaller than the main-axis gap, so that "left of" is never also read as "above".
    """
    rng = scene_rng("relation", seed)
    relation = relation or str(rng.choice(RELATIONS))
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    # two objects that differ in shape or colour (or both), so each is nameable
    if len(set(shapes)) * len(set(colours)) < 2:
        raise ValueError("a relation scene needs two nameable objects: give at least two shapes or colours")
    while True:
        (sa, sb), (ca, cb) = rng.choice(shapes, 2), rng.choice(colours, 2)
        if (sa, ca) != (sb, cb):
            break
    r = float(rng.uniform(0.09, 0.13))
    main = float(rng.uniform(0.18, 0.32))       # half the gap along the relation's axis
    cross = float(rng.uniform(-0.06, 0.06))     # small offset on the other axis
    cx, cy = rng.uniform(0.45, 0.55, size=2)
    # A's offset from the centre; B is the mirror image
    dx, dy = {"left of": (-main, cross), "right of": (main, cross),
              "above": (cross, -main), "below": (cross, main)}[relation]
    a = Obj(str(sa), str(ca), float(cx + dx), float(cy + dy), r, float(rng.uniform(0, 360)))
    b = Obj(str(sb), str(cb), float(cx - dx), float(cy - dy), r, float(rng.uniform(0, 360)))
    a, b = (clip_to_margin(o) for o in (a, b))
    return Scene("relation", (a, b), {"relation": relation, "a": (a.colour, a.shape),
                                      "b": (b.colour, b.shape)})


def make_binding_scene(seed: int, shapes=BASIC_SHAPES, colours=BASIC_COLOURS) -> Scene:
    """Two objects of different shapes and different colours ("a red circle and a blue square")."""
    rng = scene_rng("binding", seed)
    sa, sb = rng.choice(shapes, 2, replace=False)
    ca, cb = rng.choice(colours, 2, replace=False)
    radii = list(rng.uniform(0.09, 0.13, size=2))
    ((xa, ya), (xb, yb)), radii = _place(rng, radii)
    objs = (Obj(str(sa), str(ca), xa, ya, radii[0], float(rng.uniform(0, 360))),
            Obj(str(sb), str(cb), xb, yb, radii[1], float(rng.uniform(0, 360))))
    return Scene("binding", objs, {"pairs": [(o.colour, o.shape) for o in objs]})


def make_single_scene(seed: int, shapes=BASIC_SHAPES, colours=BASIC_COLOURS) -> Scene:
    """One object with a named size: "a large red circle"."""
    rng = scene_rng("single", seed)
    size = str(rng.choice(tuple(SIZES)))
    r = SIZES[size] * 1.3
    ((x, y),), _ = _place(rng, [r])
    obj = Obj(str(rng.choice(shapes)), str(rng.choice(colours)), x, y, r, float(rng.uniform(0, 360)))
    return Scene("single", (obj,), {"size": size})


MAKERS = {"count": make_count_scene, "relation": make_relation_scene,
          "binding": make_binding_scene, "single": make_single_scene}


def make_scene(kind: str, seed: int, **factors) -> Scene:
    """Dispatch to the scene maker for `kind` (one of KINDS)."""
    if kind not in MAKERS:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {KINDS}")
    return MAKERS[kind](seed, **factors)


def clip_to_margin(o: Obj) -> Obj:
    """The object moved (not resized) just far enough to lie inside the margin."""
    lo, hi = MARGIN + o.r, 1 - MARGIN - o.r
    return replace(o, x=min(max(o.x, lo), hi), y=min(max(o.y, lo), hi))


# --- caption grammar --------------------------------------------------------------------------
def noun(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def count_caption(n: int, colour: str, shape: str) -> str:
    return f"{NUMBER_WORDS[n]} {colour} {shape if n == 1 else PLURALS[shape]}"


def relation_caption(a: tuple[str, str], relation: str, b: tuple[str, str]) -> str:
    return f"a {noun(*a)} {RELATION_PHRASES[relation]} a {noun(*b)}"


def binding_caption(pairs) -> str:
    return " and ".join(f"a {noun(c, s)}" for c, s in pairs)


def caption(scene: Scene) -> str:
    """The canonical caption: states exactly the scene's facts, nothing more."""
    f = scene.facts
    if scene.kind == "count":
        return count_caption(f["n"], f["colour"], f["shape"])
    if scene.kind == "relation":
        return relation_caption(f["a"], f["relation"], f["b"])
    if scene.kind == "binding":
        return binding_caption(f["pairs"])
    if scene.kind == "single":
        o = scene.objects[0]
        return f"a {f['size']} {o.colour} {o.shape}"
    raise ValueError(f"no caption grammar for scene kind {scene.kind!r}")


def hard_negatives(scene: Scene) -> list[str]:
    """Captions that are false for this scene but share all its words but one fact (NegCLIP-style):
    another count; the swapped or another relation; the colours swapped between the two shapes."""
    f = scene.facts
    if scene.kind == "count":
        return [count_caption(m, f["colour"], f["shape"]) for m in range(1, 11) if m != f["n"]]
    if scene.kind == "relation":
        return [relation_caption(f["a"], r, f["b"]) for r in RELATIONS if r != f["relation"]] + \
               [relation_caption(f["b"], f["relation"], f["a"])]
    if scene.kind == "binding":
        (ca, sa), (cb, sb) = f["pairs"]
        return [binding_caption([(cb, sa), (ca, sb)])]
    if scene.kind == "single":
        o = scene.objects[0]
        return [f"a {s} {o.colour} {o.shape}" for s in SIZES if s != f["size"]]
    return []


# --- rendering --------------------------------------------------------------------------------
def _polygon(x, y, r, n, angle, star=False):
    pts = []
    k = 2 * n if star else n
    for i in range(k):
        rr = r * (0.45 if star and i % 2 else 1.0)
        t = math.radians(angle) + 2 * math.pi * i / k - math.pi / 2
        pts.append((x + rr * math.cos(t), y + rr * math.sin(t)))
    return pts


def outline(obj: Obj, px: float) -> list[tuple[float, float]] | None:
    """The polygon (in pixels) of an object on a canvas of side px; None for a circle."""
    kind, k = SHAPES[obj.shape]
    x, y, r = obj.x * px, obj.y * px, obj.r * px
    if kind == "circle":
        return None
    if kind == "polygon":
        # squares sit on an edge at angle 0 (a rotated square is still a square, not a diamond)
        return _polygon(x, y, r, k, obj.angle + (45 if k == 4 else 0))
    if kind == "star":
        return _polygon(x, y, r, k, obj.angle, star=True)
    if kind == "diamond":  # a rhombus, taller than wide, never rotated far from upright
        return [(x, y - r), (x + 0.6 * r, y), (x, y + r), (x - 0.6 * r, y)]
    if kind == "cross":
        w = 0.33 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
               (-r, -w), (-w, -w)]
        c, s = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
        return [(x + c * a - s * b, y + s * a + c * b) for a, b in pts]
    raise ValueError(f"unknown shape kind {kind!r}")


def render(scene: Scene, size: int = 72, supersample: int = 2, *, palette: dict | None = None,
           canvas: Image.Image | None = None, style=None) -> Image.Image:
    """Draw a scene as an RGB image of size x size pixels (anti-aliased by supersampling).

    palette: colour name -> RGB overrides (e.g. a hue-shifted palette); the names, and so the
        captions, stay the same. None draws COLOURS.
    canvas: an image drawn behind the objects instead of the flat `scene.background` (a texture);
        resized to the supersampled canvas if its size differs. None keeps the flat background.
    style: a clipkit.world.styles.Style (background, fill, clutter, zoom...) that draws the scene instead.
    All default to None, which draws exactly what this function always drew.
    """
    if style is not None:
        return style.render(scene, size, supersample, palette=palette)
    px = size * supersample
    if canvas is None:
        img = Image.new("RGB", (px, px), scene.background)
    else:
        img = canvas.convert("RGB")  # always a copy: the caller's canvas is never drawn on
        if img.size != (px, px):
            img = img.resize((px, px), Image.BILINEAR)
    colours = COLOURS if palette is None else {**COLOURS, **palette}
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        rgb = colours[o.colour] if o.colour in colours else tuple(o.colour)
        fill, line = (rgb, None) if o.style == "filled" else (None, rgb)
        width = max(1, int(0.015 * px))
        pts = outline(o, px)
        if pts is None:
            x, y, r = o.x * px, o.y * px, o.r * px
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=line, width=width)
        else:
            draw.polygon(pts, fill=fill, outline=line, width=width if line else 1)
    return img.resize((size, size), Image.BOX) if supersample > 1 else img


def object_area(scene: Scene, size: int = 216) -> float:
    """Fraction of the canvas covered by objects, measured on the rendered pixels."""
    img = np.asarray(render(scene, size=size, supersample=1)).astype(int)
    return float((np.abs(img - np.array(scene.background)).sum(-1) > 30).mean())


# --- corpus -----------------------------------------------------------------------------------
DEFAULT_MIX = {"count": 0.4, "relation": 0.4, "binding": 0.1, "single": 0.1}


def corpus_item(index: int, seed: int = 0, mix: dict | None = None, purpose: str = "train") -> Scene:
    """Scene number `index` of the corpus `seed` in namespace `purpose`: the kind is drawn from `mix`.

    "train" is the training corpus; "heldout-retrieval" the same mix of scenes from a namespace no
    training run draws from (clipkit.world.seeds: no seed or index of one can reach the other)."""
    mix = mix or DEFAULT_MIX
    kinds, p = list(mix), np.array(list(mix.values()), dtype=float)
    # a keyed hash, not arithmetic: training never meets a probe or held-out scene, whatever seed or index
    s = scene_seed(purpose, seed, index)
    rng = np.random.default_rng([s, 7])         # the kind's own stream, apart from the scene's scene_rng
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    return make_scene(kind, seed=s)


def object_masks(scene: Scene, size: int = 72, supersample: int = 2, threshold: float = 0.5) -> np.ndarray:
    """(n_objects, size, size) bool: the pixels of `render(scene, size, supersample)` that show each object.

    Each object is drawn by `render` itself, alone, in white on black (so its outline, anti-aliasing
    and downsampling are exactly render's); a pixel belongs to it when the object covers at least
    `threshold` of it. Objects drawn later hide earlier ones, as in render.
    """
    if not scene.objects:
        return np.zeros((0, size, size), dtype=bool)
    cover = []
    for o in scene.objects:
        alone = replace(scene, objects=(o,), background=(0, 0, 0))
        img = render(alone, size=size, supersample=supersample, palette={o.colour: (255, 255, 255)})
        cover.append(np.asarray(img, dtype=np.float32)[..., 0] / 255.0)      # (size, size) coverage
    masks = np.stack(cover) >= threshold
    hidden = np.zeros((size, size), dtype=bool)
    for i in range(len(masks) - 1, -1, -1):   # later objects are drawn on top
        masks[i] &= ~hidden
        hidden |= masks[i]
    return masks
