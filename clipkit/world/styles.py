"""Rendering style families and caption frames: everything the caption does not state, varied, some families held out.

A `Style` is one look: background, object fill and outline, anti-aliasing, zoom and placement of the
whole scene, unmentioned clutter, the resolution it is drawn at, and the caption's frame. A style is
drawn from a *family* by `draw_style(family, seed)`, and the image is `synth.render(scene, size,
style=style)`: both pure functions, so every image is still a pure function of (spec, seed).

Families (FAMILIES):
  classic   exactly synth.render's look (flat dark background, filled, anti-aliased); the probes' look
  dark      a random dark flat background
  light     a random light flat background (the look on which the first default model fell to chance)
  gradient  a linear grey gradient, dark or light, at a random angle
  noise     a grey background with pixel noise
  texture   stripes or a checkerboard (HELD OUT of training)
  sketch    light paper, outline-only objects drawn thick and aliased, pencil-line clutter (HELD OUT)
Every family but classic and sketch also varies the fill (filled / filled with an outline / outline
only), the outline's colour and width, anti-aliasing, the zoom and position of the scene, clutter and
resolution. TRAIN_FAMILIES are the ones the training corpus draws from (`corpus_style`);
HELD_OUT_FAMILIES never appear in training and are registered as shifts (clipkit.world.shifts).

What keeps every caption true: backgrounds and clutter are achromatic (grey), so they add no nameable
colour; clutter is specks and short lines far smaller than any object and placed apart from them, so it
is never a countable "circle" or "square" of a named colour; the zoom is one similarity transform of
the whole layout (relations, gaps and the margin kept), and a "single" scene, whose caption states its
size, is only moved, never scaled. Caption frames only prefix the caption, so the probed words stay.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from clipkit.world import synth
from clipkit.world.seeds import scene_seed

FAMILIES = ("classic", "dark", "light", "gradient", "noise", "texture", "sketch")
HELD_OUT_FAMILIES = ("texture", "sketch")
TRAIN_FAMILIES = tuple(f for f in FAMILIES if f not in HELD_OUT_FAMILIES)
FILLS = ("filled", "outlined", "outline")   # outlined: filled with a contrasting outline
CLUTTER = ("none", "specks", "lines")
# caption frames: "{}" is the caption itself; "there is/are" agrees with the count
FRAMES = ("{}", "a photo of {}", "an image showing {}", "there are {}")
ZOOM = (0.8, 1.25)          # whole-scene scale range (capped so the layout stays inside the margin)
MIN_CLUTTER_GAP = 0.03      # clutter keeps this far (canvas fraction) from every object's edge
MAX_SPECK = 0.015           # speck radius cap: under a third of the smallest object radius (~0.05)


@dataclass(frozen=True)
class Style:
    """One look of a scene. Colours are RGB; lengths are fractions of the canvas side."""
    family: str = "classic"
    background: str = "flat"             # flat | gradient | noise | stripes | checker
    base: tuple = synth.BACKGROUND       # background colour (gradient: one end)
    other: tuple = synth.BACKGROUND      # gradient's other end; pattern's second colour
    amount: float = 0.0                  # noise sigma in grey levels; pattern period; gradient angle (deg)
    fill: str = "filled"                 # one of FILLS
    line: tuple | None = None            # outline colour; None: the object's own colour
    line_width: float = 0.015            # outline width
    brightness: float = 1.0              # object colours x this (names kept)
    antialias: bool = True               # supersample (else aliased edges)
    zoom: float = 1.0                    # whole-layout scale; the layout's new centre is (cx, cy)
    cx: float | None = None
    cy: float | None = None
    clutter: str = "none"                # one of CLUTTER
    n_clutter: int = 0
    clutter_grey: int = 128
    resolution: float = 1.0              # drawn at resolution x size, then resized to size
    frame: int = 0                       # index into FRAMES (training captions only)
    seed: int = 0                        # noise and clutter positions

    def render(self, scene: synth.Scene, size: int = 72, supersample: int = 2,
               palette: dict | None = None) -> Image.Image:
        """This style's image of `scene` (what `synth.render(scene, size, style=self)` returns)."""
        return render_styled(scene, self, size, supersample, palette)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown style family {family!r}; choose one of {', '.join(FAMILIES)}")


def _grey(rng, lo: float, hi: float, tint: float = 8.0) -> tuple[int, int, int]:
    """A grey in [lo, hi] with a faint random tint (never a nameable colour)."""
    g = rng.uniform(lo, hi)
    return tuple(int(np.clip(round(g + t), 0, 255)) for t in rng.uniform(-tint, tint, 3))


def draw_style(family: str, seed: int) -> Style:
    """A style of `family` drawn from `seed` (a pure function of both); frame 0, the plain caption."""
    _check_family(family)
    if family == "classic":
        return Style()
    rng = np.random.default_rng([int(seed) & (2 ** 63 - 1), len(family), sum(map(ord, family))])
    light = family in ("light", "sketch") or (family != "dark" and rng.random() < 0.5)
    base = _grey(rng, 165, 215) if light else _grey(rng, 0, 60)
    kw = dict(family=family, base=base, other=base, seed=int(rng.integers(2 ** 62)))
    if family == "gradient":
        other = _grey(rng, 90, 150) if light else _grey(rng, 50, 110)
        kw.update(background="gradient", other=other, amount=float(rng.uniform(0, 360)))
    elif family == "noise":
        kw.update(background="noise", amount=float(rng.uniform(8, 25)))
    elif family == "texture":
        off = rng.uniform(25, 50) * (-1 if light else 1)
        kw.update(background=str(rng.choice(["stripes", "checker"])), amount=float(rng.uniform(0.07, 0.16)),
                  other=tuple(int(np.clip(c + off, 0, 255)) for c in base))
    if family == "sketch":
        kw.update(base=_grey(rng, 195, 215, 4), fill="outline", line_width=float(rng.uniform(0.03, 0.045)),
                  antialias=False, clutter="lines", n_clutter=int(rng.integers(3, 9)),
                  clutter_grey=int(rng.integers(70, 120)))
        kw["other"] = kw["base"]
    else:
        fill = str(rng.choice(FILLS, p=[0.5, 0.3, 0.2]))
        line = None
        if fill == "outlined":   # a dark line on light ground, else a darker shade of the object
            line = _grey(rng, 10, 60) if light and rng.random() < 0.7 else None
        clutter = str(rng.choice(CLUTTER, p=[0.5, 0.3, 0.2]))
        kw.update(fill=fill, line=line, line_width=float(rng.uniform(0.01, 0.03)),
                  antialias=bool(rng.random() < 0.7), clutter=clutter,
                  n_clutter=int(rng.integers(3, 11)) if clutter != "none" else 0,
                  clutter_grey=int(rng.integers(80, 115) if light else rng.integers(95, 150)))
    kw.update(brightness=float(rng.uniform(0.85, 1.08)), zoom=float(rng.uniform(*ZOOM)),
              cx=float(rng.random()), cy=float(rng.random()),
              resolution=float(rng.choice([0.6, 0.8, 1.0, 1.0, 1.25])))
    return Style(**kw)


def corpus_style(index: int, seed: int = 0, families=TRAIN_FAMILIES, frames: bool = True) -> Style:
    """The style of training scene `index` of corpus `seed` (as synth.corpus_item's scene): a family
    drawn uniformly from `families`, then a style of it, then (frames=True) a caption frame."""
    families = tuple(families)
    bad = [f for f in families if f not in FAMILIES]
    if not families or bad:
        raise ValueError(f"families must be a non-empty list of {FAMILIES}, got {list(families)}")
    s = scene_seed("train", seed, index)
    rng = np.random.default_rng([s, 13])       # apart from the kind's stream [s, 7] and the scene's own
    family = families[int(rng.integers(len(families)))]
    frame = int(rng.choice(len(FRAMES), p=[0.4, 0.2, 0.2, 0.2])) if frames else 0
    return replace(draw_style(family, int(rng.integers(2 ** 62))), frame=frame)


# --- caption frames and partial captions ----------------------------------------------------------
def framed(text: str, frame: int, scene: synth.Scene | None = None) -> str:
    """`text` in caption frame `frame` (FRAMES); "there are" becomes "there is" for one object."""
    if not 0 <= frame < len(FRAMES):
        raise ValueError(f"frame must be in 0..{len(FRAMES) - 1}, got {frame}")
    t = FRAMES[frame]
    if t.startswith("there are") and not (scene is not None and scene.kind == "count" and scene.facts["n"] > 1):
        t = "there is {}"
    return t.format(text)


def style_caption(scene: synth.Scene, style: Style) -> str:
    """The training caption of `scene` under `style`: synth.caption in the style's frame."""
    return framed(synth.caption(scene), style.frame, scene)


def partial_caption(scene: synth.Scene, rng: np.random.Generator) -> str:
    """A true but incomplete caption: it names only some of the objects or attributes (Gurung, Hoffmann
    & Brox 2025's sparse captions). Count: the colour dropped; relation: one object's colour dropped;
    binding: one object left out or one colour dropped; single: the size dropped."""
    f = scene.facts
    if scene.kind == "count":
        n, s = f["n"], f["shape"]
        return f"{synth.NUMBER_WORDS[n]} {s if n == 1 else synth.PLURALS[s]}"
    if scene.kind == "relation":
        a, b = f["a"], f["b"]
        phrase = synth.RELATION_PHRASES[f["relation"]]
        return f"a {a[1]} {phrase} a {synth.noun(*b)}" if rng.random() < 0.5 else f"a {synth.noun(*a)} {phrase} a {b[1]}"
    if scene.kind == "binding":
        (ca, sa), (cb, sb) = f["pairs"]
        k = int(rng.integers(3))
        return [f"a {synth.noun(ca, sa)}", f"a {synth.noun(cb, sb)}", f"a {sa} and a {synth.noun(cb, sb)}"][k]
    if scene.kind == "single":
        o = scene.objects[0]
        return f"a {synth.noun(o.colour, o.shape)}"
    raise ValueError(f"no partial caption for scene kind {scene.kind!r}")


# --- geometry and clutter -------------------------------------------------------------------------
def placed(scene: synth.Scene, style: Style) -> synth.Scene:
    """The scene's layout zoomed by style.zoom about its centre and moved to (cx, cy) of the room it has:
    one similarity transform, so relations, gaps and non-overlap hold; inside the margin; a "single"
    scene (its caption states its size) is moved but never scaled."""
    if style.cx is None or not scene.objects:
        return scene
    m, objs = synth.MARGIN, scene.objects
    x0, x1 = min(o.x - o.r for o in objs), max(o.x + o.r for o in objs)
    y0, y1 = min(o.y - o.r for o in objs), max(o.y + o.r for o in objs)
    w, h = x1 - x0, y1 - y0
    z = 1.0 if scene.kind == "single" else min(style.zoom, (1 - 2 * m) / max(w, h, 1e-9))
    # new bbox centre anywhere that keeps the zoomed box inside [m, 1 - m]
    nx = m + z * w / 2 + style.cx * max(0.0, 1 - 2 * m - z * w)
    ny = m + z * h / 2 + style.cy * max(0.0, 1 - 2 * m - z * h)
    ox, oy = (x0 + x1) / 2, (y0 + y1) / 2
    new = tuple(replace(o, x=nx + z * (o.x - ox), y=ny + z * (o.y - oy), r=z * o.r) for o in objs)
    return replace(scene, objects=new)


def clutter_items(scene: synth.Scene, style: Style) -> list[tuple]:
    """The clutter of `style` on the (placed) scene: ("speck", x, y, r) or ("line", x0, y0, x1, y1), all
    grey, each at least MIN_CLUTTER_GAP from every object's edge; fewer than n_clutter when crowded."""
    rng = np.random.default_rng([style.seed, 29])
    out = []

    def clear(x, y):
        return all(math.hypot(x - o.x, y - o.y) > o.r + MIN_CLUTTER_GAP for o in scene.objects)

    for _ in range(style.n_clutter * 20):
        if len(out) >= style.n_clutter:
            break
        x, y = rng.uniform(0.03, 0.97, 2)
        if style.clutter == "specks":
            if clear(x, y):
                out.append(("speck", float(x), float(y), float(rng.uniform(0.006, MAX_SPECK))))
        elif style.clutter == "lines":
            t, length = rng.uniform(0, math.pi), rng.uniform(0.04, 0.1)
            ends = [(x + s * length / 2 * math.cos(t), y + s * length / 2 * math.sin(t)) for s in (-1, 0, 1)]
            if all(clear(px, py) for px, py in ends):
                out.append(("line", *ends[0], *ends[2]))
    return out


# --- drawing --------------------------------------------------------------------------------------
def background(style: Style, px: int) -> Image.Image:
    """The style's px x px background (achromatic apart from the faint tint of its greys)."""
    base = np.asarray(style.base, dtype=float)
    if style.background == "flat":
        return Image.new("RGB", (px, px), tuple(style.base))
    # drawn at q <= px and upsampled: a gradient is smooth (16 px suffice); noise and patterns keep
    # half the supersampled side, which is still finer than the side the image is finally drawn at
    q = min(px, 16) if style.background == "gradient" else max(8, px // 2)
    xx = np.arange(q, dtype=np.float32)[None, :] / q      # (1, q); yy (q, 1): broadcast, not q x q
    yy = xx.T
    if style.background == "gradient":
        t = math.radians(style.amount)
        u = (xx - 0.5) * math.cos(t) + (yy - 0.5) * math.sin(t)              # (q, q)
        u = (u - u.min()) / max(float(u.max() - u.min()), 1e-9)
        rgb = base + (np.asarray(style.other, dtype=float) - base) * u[..., None]
    elif style.background == "noise":
        rng = np.random.default_rng([style.seed, 31])
        rgb = base + style.amount * rng.standard_normal((q, q, 1), dtype=np.float32)
    elif style.background in ("stripes", "checker"):
        period = style.amount
        if style.background == "stripes":
            p = ((xx + yy) / period % 1.0) < 0.5
        else:
            p = (np.floor(xx / period) + np.floor(yy / period)) % 2 == 1
        rgb = np.where(p[..., None], np.asarray(style.other, dtype=float), base)
    else:
        raise ValueError(f"unknown background {style.background!r}")
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    return img.resize((px, px), Image.BILINEAR if style.background == "gradient" else Image.NEAREST)


def render_styled(scene: synth.Scene, style: Style, size: int = 72, supersample: int = 2,
                  palette: dict | None = None) -> Image.Image:
    """`scene` drawn in `style` at size x size pixels (see the module docstring)."""
    if style.family == "classic" and style == replace(Style(), frame=style.frame):
        return synth.render(scene, size, supersample, palette=palette)      # exactly the probes' look
    scene = placed(scene, style)
    side = max(8, int(round(size * style.resolution)))      # the resolution it is drawn at
    ss = supersample if style.antialias else 1
    px = side * ss
    img = background(style, px)
    draw = ImageDraw.Draw(img)
    g = (style.clutter_grey,) * 3
    for c in clutter_items(scene, style):
        if c[0] == "speck":
            _, x, y, r = c
            draw.ellipse(((x - r) * px, (y - r) * px, (x + r) * px, (y + r) * px), fill=g)
        else:
            draw.line([c[1] * px, c[2] * px, c[3] * px, c[4] * px], fill=g, width=max(1, round(0.008 * px)))
    colours = synth.COLOURS if palette is None else {**synth.COLOURS, **palette}
    width = max(1, round(style.line_width * px))
    for o in scene.objects:
        rgb = tuple(int(min(255, round(c * style.brightness))) for c in colours[o.colour])
        if style.fill == "outline" or o.style == "outline":
            fill, line = None, style.line or rgb
        elif style.fill == "outlined":
            fill, line = rgb, style.line or tuple(int(c * 0.45) for c in rgb)
        else:
            fill, line = rgb, None
        pts = synth.outline(o, px)
        if pts is None:
            x, y, r = o.x * px, o.y * px, o.r * px
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=line, width=width if line else 1)
        else:
            draw.polygon(pts, fill=fill, outline=line, width=width if line else 1)
    if ss > 1:
        img = img.resize((side, side), Image.BOX)
    return img if side == size else img.resize((size, size), Image.BILINEAR)
