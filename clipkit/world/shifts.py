"""Distribution shifts of a probe set: rendering styles of synthetic scenes and ImageNet-C corruptions.

Every shift is a pure function of (scene, shift, severity, seed) and never changes what the scene's
caption states (shape, colour name, count, relation, size): it changes only how the scene looks.
`SHIFTS` lists every shift with its kind and severities so that a probe can iterate over it:

    for shift in SHIFTS:
        for severity in shift.severities:
            img = shifted_image(scene, shift.name, severity, seed=item_seed)

Pass a different seed per item (e.g. the scene's seed) so that noise, textures, turns and scales
vary across items; one seed gives the same image every time.

Style shifts (kind "style"):
  outline              objects drawn as outlines only, like a sketch (one severity)
  textured_background  grey noise, stripes or checkerboard behind the objects; contrast grows
  palette_shift        every object colour rotated in hue by 12 deg x severity; the colour *names*
                       (and so the captions) stay. From severity 3 (36 deg) a colour can sit on a
                       neighbour's hue (red looks orange): that is the point. It asks whether the
                       model tied the word to our palette or to the appearance. White has no hue
                       and stays white.
  rotation_scale       each object rotated by 6..12 deg x severity and its radius scaled by
                       1 -+ (0.04..0.08) x severity, growth capped so that objects stay inside
                       the margin and apart. Rotation alone is nearly in-distribution (synth
                       draws angles uniformly, though one per count scene, so independent turns
                       do break its alignment; diamonds are always upright): the bite is mostly
                       the scale. "single" scenes are only rotated: their caption states the size.
  grayscale            saturation x (1 - 0.2 sev); severity 5 is fully grey. It removes the colour
                       evidence rather than disguising it: items whose answer hinges on colour
                       (binding, colour-swap negatives) become undecidable. Report it apart.
  heldout_texture,     the style families of clipkit.world.styles that training never draws
  heldout_sketch       (HELD_OUT_FAMILIES): a style of the family drawn from the seed (one severity)
"""
from __future__ import annotations

import colorsys
import math
import zlib
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage

from clipkit.world import styles, synth
from clipkit.world.corruptions import CORRUPTIONS, SEVERITIES, corrupt

IN_DISTRIBUTION = "in_distribution"  # the shift name of the unshifted set in tables


@dataclass(frozen=True)
class Shift:
    """One entry of the registry."""
    name: str
    kind: str  # "corruption" (ImageNet-C, any image) or "style" (needs the scene)
    severities: tuple[int, ...]  # valid severities, mildest first
    note: str = ""  # caveat for whoever reads the results


STYLES = {
    "outline": Shift("outline", "style", (1,), "objects drawn as outlines (sketch)"),
    "textured_background": Shift("textured_background", "style", SEVERITIES,
                                 "grey noise / stripes / checker background"),
    "palette_shift": Shift("palette_shift", "style", SEVERITIES,
                           "hue rotated 12 deg x severity; colour names unchanged"),
    "rotation_scale": Shift("rotation_scale", "style", SEVERITIES, "object size shift, rotation"),
    "grayscale": Shift("grayscale", "style", SEVERITIES,
                       "removes colour evidence: colour-dependent items become undecidable"),
    **{f"heldout_{f}": Shift(f"heldout_{f}", "style", (1,), f"style family {f!r}, never in training")
       for f in styles.HELD_OUT_FAMILIES},
}
SHIFTS: tuple[Shift, ...] = tuple(Shift(n, "corruption", SEVERITIES, "ImageNet-C") for n in CORRUPTIONS) + \
    tuple(STYLES.values())
_BY_NAME = {s.name: s for s in SHIFTS}

HUE_STEP = 12.0  # degrees of hue rotation per palette_shift severity
SCALE_STEP = 0.08  # rotation_scale: radius factor 1 -+ [SCALE_STEP / 2, SCALE_STEP] x severity
ROTATION_STEP = 12.0  # rotation_scale: extra rotation of -+[ROTATION_STEP / 2, ROTATION_STEP] x sev deg
TEXTURE_STEP = 20  # textured_background: texture amplitude in grey levels per severity
GAP = 1.15  # the gap synth._place keeps between objects (centre distance > GAP * (r1 + r2))


def get_shift(name: str) -> Shift:
    """The registry entry for `name`; ValueError listing the valid names if there is none."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown shift {name!r}; choose one of {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def _check(name: str, severity: int) -> Shift:
    shift = get_shift(name)
    if severity not in shift.severities:
        raise ValueError(f"shift {name!r} takes severity in {shift.severities}, got {severity!r}")
    return shift


def _rng(name: str, seed: int) -> np.random.Generator:
    # independent of severity: the severities of one seed share their draws (see corruptions.py)
    return np.random.default_rng([zlib.crc32(name.encode()), int(seed)])


# --- scene-level styles ---------------------------------------------------------------------------
def _room(scene: synth.Scene, i: int) -> float:
    """The largest factor object i's radius can grow by, in place, and stay inside the margin and
    GAP away from every other object even if those grow by as much (hence the shared cap)."""
    o, m = scene.objects[i], synth.MARGIN
    room = min(o.x - m, 1 - m - o.x, o.y - m, 1 - m - o.y) / o.r
    for j, p in enumerate(scene.objects):
        if j != i:
            room = min(room, math.hypot(o.x - p.x, o.y - p.y) / (GAP * (o.r + p.r)))
    return room


def style_shift(scene: synth.Scene, name: str, severity: int = 1, seed: int = 0) -> synth.Scene:
    """The scene with its objects restyled ("outline", "rotation_scale"): same facts, same caption.

    The other styles act at render time (palette, background, colour); use `render_shifted`.
    """
    _check(name, severity)
    if name == "outline":
        return replace(scene, objects=tuple(replace(o, style="outline") for o in scene.objects))
    if name == "rotation_scale":
        rng = _rng(name, seed)
        spread, rot = SCALE_STEP * severity, ROTATION_STEP * severity
        objs = []
        for i, o in enumerate(scene.objects):
            # magnitudes from the upper half of the range, so that every object moves at every severity
            (sf, st), (uf, ut) = rng.choice([-1, 1], 2), rng.uniform(0.5, 1, 2)
            f, turn = 1 + sf * uf * spread, st * ut * rot
            # never grow past the room; an object already without room (<1) is never grown
            f = 1.0 if scene.kind == "single" else min(f, max(_room(scene, i), 1.0))
            objs.append(replace(o, r=o.r * f, angle=(o.angle + turn) % 360))
        return replace(scene, objects=tuple(objs))
    raise ValueError(f"{name!r} is not a scene-level style; render it with render_shifted")


# --- render-level styles --------------------------------------------------------------------------
def shifted_palette(severity: int, sign: int = 1) -> dict[str, tuple[int, int, int]]:
    """synth.COLOURS with every hue rotated by sign * HUE_STEP * severity degrees (names kept)."""
    out = {}
    for name, rgb in synth.COLOURS.items():
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        r, g, b = colorsys.hsv_to_rgb((h + sign * HUE_STEP * severity / 360) % 1.0, s, v)
        out[name] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def background_texture(px: int, severity: int, seed: int = 0, base=synth.BACKGROUND,
                       pattern: str | None = None) -> Image.Image:
    """A px x px grey texture over the `base` colour: "noise" (smooth blobs), "stripes" or
    "checker" (pattern drawn from `seed` when None), brightening `base` by up to TEXTURE_STEP *
    severity grey levels. Achromatic, so it never adds a nameable colour to the scene."""
    rng = _rng("textured_background", seed)
    kind = pattern or str(rng.choice(["noise", "stripes", "checker"]))
    yy, xx = np.mgrid[0:px, 0:px] / px  # canvas coordinates in [0, 1)
    if kind == "noise":
        p = ndimage.gaussian_filter(rng.standard_normal((px, px)), px / 40, mode="wrap")
        p = (p - p.min()) / max(np.ptp(p), 1e-9)
    elif kind == "stripes":
        period, theta, phase = rng.uniform(0.06, 0.14), rng.uniform(0, np.pi), rng.uniform(0, 1)
        p = (((xx * np.cos(theta) + yy * np.sin(theta)) / period + phase) % 1.0 < 0.5).astype(float)
    elif kind == "checker":
        side, (ox, oy) = rng.uniform(0.08, 0.16), rng.uniform(0, 1, 2)
        p = ((np.floor(xx / side + ox) + np.floor(yy / side + oy)) % 2).astype(float)
    else:
        raise ValueError(f"pattern must be 'noise', 'stripes' or 'checker', got {pattern!r}")
    rgb = np.asarray(base, dtype=float) + TEXTURE_STEP * severity * p[..., None]
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8), mode="RGB")


def render_shifted(scene: synth.Scene, name: str, severity: int = 1, seed: int = 0, size: int = 72,
                   supersample: int = 2) -> Image.Image:
    """Render `scene` under style shift `name` at `severity` (see the module docstring)."""
    shift = _check(name, severity)
    if shift.kind != "style":
        raise ValueError(f"{name!r} is a {shift.kind}, not a style; use shifted_image")
    if name in ("outline", "rotation_scale"):
        return synth.render(style_shift(scene, name, severity, seed), size, supersample)
    if name == "palette_shift":
        return synth.render(scene, size, supersample, palette=shifted_palette(severity))
    if name == "textured_background":
        canvas = background_texture(size * supersample, severity, seed, base=scene.background)
        return synth.render(scene, size, supersample, canvas=canvas)
    if name.startswith("heldout_"):
        return synth.render(scene, size, supersample, style=styles.draw_style(name[len("heldout_"):], seed))
    if name == "grayscale":
        return ImageEnhance.Color(synth.render(scene, size, supersample)).enhance(1 - 0.2 * severity)
    raise AssertionError(f"style {name!r} is registered but not implemented")


def shifted_image(scene: synth.Scene, name: str, severity: int = 1, seed: int = 0,
                  size: int = 72) -> Image.Image:
    """`scene` rendered under any registered shift (or IN_DISTRIBUTION: the plain render)."""
    if name == IN_DISTRIBUTION:
        return synth.render(scene, size)
    shift = _check(name, severity)
    if shift.kind == "corruption":
        return corrupt(synth.render(scene, size), name, severity, seed)
    return render_shifted(scene, name, severity, seed, size)
