"""Distribution shifts: ImageNet-C corruptions at any size, style shifts that keep labels, the registry.

In-memory, no network."""
import math

import numpy as np
import pytest
from PIL import Image

from clipkit.world import synth
from clipkit.world.corruptions import CONSTANTS, CORRUPTIONS, FAMILIES, SEVERITIES, corrupt
from clipkit.world.shifts import (GAP, IN_DISTRIBUTION, SHIFTS, STYLES, get_shift, render_shifted, shifted_image,
                                  shifted_palette, style_shift)

# Mean |corrupted - original| is non-decreasing over severities 1..5 for these, checked on 72
# (scene, seed, size) cases with margins >= 0.05 grey levels. Not for: glass_blur (holds, but by
# 0.006: its 2nd severity does fewer shuffle passes than its 1st), frost (image weight falls while the
# frost weight stays 0.7 at severities 3-4), fog (renormalised by max / (max + amount)), elastic
# (severities 1-2 are large smooth warps, 3-5 small local ones), jpeg and pixelate (quantisation).
MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
            "snow", "brightness", "contrast")
DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression")


@pytest.fixture(scope="module")
def images():
    scene = synth.make_scene("relation", seed=3)
    return {size: synth.render(scene, size) for size in (48, 224)}


def _mad(a, b):
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def test_fifteen_imagenet_c_corruptions():
    assert len(CORRUPTIONS) == 15 == len(set(CORRUPTIONS)) == len(CONSTANTS)
    assert set(CORRUPTIONS) == {n for names in FAMILIES.values() for n in names}
    assert all(len(rows) == 5 for rows in CONSTANTS.values())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_contract(name, images):
    state = np.random.get_state()[1].copy()
    for size, img in images.items():
        outs = [corrupt(img, name, s, seed=0) for s in SEVERITIES]
        for s, out in zip(SEVERITIES, outs):
            assert out.size == img.size and out.mode == img.mode, (size, s)
            assert _mad(out, img) > 0, f"{name} severity {s} left the {size}-px image unchanged"
        again = [corrupt(img, name, s, seed=0) for s in SEVERITIES] if size == 48 else \
            [corrupt(img, name, 3, seed=0)]
        for a, b in zip(again, outs if size == 48 else outs[2:3]):
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"{name} is not deterministic at {size} px"
        if name in MONOTONE:
            d = [_mad(o, img) for o in outs]
            assert all(np.diff(d) >= 0), f"{name} at {size} px: {np.round(d, 2)}"
    other = corrupt(images[48], name, 3, seed=1)
    assert np.array_equal(np.asarray(other), np.asarray(corrupt(images[48], name, 3, seed=0))) == \
        (name in DETERMINISTIC)
    assert np.array_equal(np.random.get_state()[1], state), "touched the global NumPy RNG"


@pytest.mark.parametrize("name", ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow", "frost",
                                  "fog", "elastic_transform"])
def test_spatial_constants_scale_with_size(name):
    # corrupting a 48-px render ~ corrupting the 224-px render and downsizing (module docstring):
    # they differ about as much as the two renders do, and less than the corruption changes the image
    # (224-px constants used as they are at 48 px would blur 4.7x too far)
    scene = synth.make_scene("count", seed=4, n=5)
    small, big = synth.render(scene, 48), synth.render(scene, 224)
    renders = _mad(small, big.resize((48, 48), Image.BILINEAR))  # ~1.6 grey levels
    a = corrupt(small, name, 3, seed=0)
    b = corrupt(big, name, 3, seed=0).resize((48, 48), Image.BILINEAR)
    assert _mad(a, b) < min(renders + 1.0, _mad(a, small))


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_corruption_keeps_mode_and_alpha(mode):
    img = synth.render(synth.make_scene("single", seed=1), 64).convert(mode)
    out = corrupt(img, "gaussian_noise", 2, seed=0)
    assert out.mode == mode and out.size == img.size
    if mode == "RGBA":
        assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(img.getchannel("A")))


def test_corruption_works_on_tiny_and_non_square_images():
    img = synth.render(synth.make_scene("count", seed=0), 72).crop((0, 0, 72, 40)).resize((20, 11))
    for name in CORRUPTIONS:
        assert corrupt(img, name, 5, seed=0).size == (20, 11)


def test_corruption_errors(images):
    with pytest.raises(ValueError, match="gaussian_noise.*jpeg_compression"):
        corrupt(images[48], "gaussian_blur", 1)
    for bad in (0, 6):
        with pytest.raises(ValueError, match="1..5"):
            corrupt(images[48], "fog", bad)


def test_registry():
    names = [s.name for s in SHIFTS]
    assert len(names) == len(set(names)) == 15 + len(STYLES)
    assert set(CORRUPTIONS) <= set(names) and {"outline", "textured_background", "palette_shift",
                                              "rotation_scale"} <= set(names)
    for s in SHIFTS:
        assert s.kind in ("corruption", "style") and s.severities and set(s.severities) <= set(SEVERITIES)
    with pytest.raises(ValueError, match="palette_shift"):
        get_shift("sepia")
    with pytest.raises(ValueError, match=r"\(1,\)"):
        shifted_image(synth.make_scene("count", 0), "outline", severity=2)


def _label(scene):
    return synth.caption(scene), synth.hard_negatives(scene), scene.kind, len(scene.objects), \
        [(o.shape, o.colour, o.x, o.y) for o in scene.objects]


@pytest.mark.parametrize("kind", synth.KINDS)
def test_style_shifts_keep_labels(kind):
    for seed in range(4):
        scene = synth.make_scene(kind, seed=seed)
        plain = np.asarray(synth.render(scene, 48))
        for shift in STYLES.values():
            for sev in shift.severities:
                img = shifted_image(scene, shift.name, sev, seed=seed, size=48)
                assert img.size == (48, 48) and img.mode == "RGB"
                invariant = (shift.name in ("palette_shift", "grayscale") and  # white has no hue
                             all(o.colour == "white" for o in scene.objects)) or \
                    (shift.name == "rotation_scale" and kind == "single" and  # only rotated
                     scene.objects[0].shape in ("circle", "diamond"))
                if not invariant:
                    assert not np.array_equal(np.asarray(img), plain), (shift.name, sev)
                if shift.name in ("outline", "rotation_scale"):
                    moved = style_shift(scene, shift.name, sev, seed=seed)
                    assert _label(moved) == _label(scene)  # same shapes, colour names, centres
                    _assert_valid_layout(moved)
                    if kind == "single":  # its caption states the size
                        assert moved.objects[0].r == scene.objects[0].r


def _assert_valid_layout(scene):
    for i, o in enumerate(scene.objects):
        assert synth.MARGIN - 1e-9 <= o.x - o.r and o.x + o.r <= 1 - synth.MARGIN + 1e-9
        assert synth.MARGIN - 1e-9 <= o.y - o.r and o.y + o.r <= 1 - synth.MARGIN + 1e-9
        for p in scene.objects[i + 1:]:
            assert math.hypot(o.x - p.x, o.y - p.y) >= GAP * (o.r + p.r) - 1e-9


def test_rotation_scale_changes_sizes_within_range():
    scene = synth.make_scene("count", seed=2, n=3, size_mode="fixed")
    for sev in SEVERITIES:
        moved = style_shift(scene, "rotation_scale", sev, seed=0)
        f = np.array([m.r / o.r for m, o in zip(moved.objects, scene.objects)])
        assert np.all(f >= 1 - 0.08 * sev - 1e-9) and np.all(f <= 1 + 0.08 * sev + 1e-9)
        assert np.all((f <= 1 - 0.04 * sev + 1e-9) | (f >= 1))  # shrinks by at least half the range
        turns = np.array([(m.angle - o.angle + 180) % 360 - 180
                          for m, o in zip(moved.objects, scene.objects)])
        assert np.all((np.abs(turns) >= 6 * sev - 1e-9) & (np.abs(turns) <= 12 * sev + 1e-9))


def test_palette_shift_rotates_hue_and_keeps_names():
    import colorsys
    hue = lambda rgb: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360
    for sev in SEVERITIES:
        pal = shifted_palette(sev)
        assert set(pal) == set(synth.COLOURS) and pal["white"] == synth.COLOURS["white"]
        for name in ("red", "green", "blue", "purple"):
            d = (hue(pal[name]) - hue(synth.COLOURS[name])) % 360
            assert abs(d - 12 * sev) < 1.5, (name, sev, d)
    scene = synth.make_count_scene(seed=0, n=2, colour="red", shape="square", size_mode="fixed")
    plain, shifted = synth.render(scene, 48), render_shifted(scene, "palette_shift", 3, size=48)
    centre = tuple(round(c * 48) for c in (scene.objects[0].x, scene.objects[0].y))
    assert plain.getpixel(centre) == synth.COLOURS["red"]
    assert shifted.getpixel(centre) == shifted_palette(3)["red"]


def test_render_additions_are_backward_compatible():
    # synth.render's optional palette / canvas: default, identity palette and flat canvas all
    # reproduce the original pixels exactly
    scene = synth.make_scene("binding", seed=7)
    ref = np.asarray(synth.render(scene))
    assert np.array_equal(np.asarray(synth.render(scene, palette=dict(synth.COLOURS))), ref)
    flat = Image.new("RGB", (144, 144), scene.background)
    assert np.array_equal(np.asarray(synth.render(scene, canvas=flat)), ref)
    assert flat.getpixel((72, 72)) == scene.background  # the caller's canvas is not drawn on


def test_shifted_image_dispatch():
    scene = synth.make_scene("count", seed=1)
    assert np.array_equal(np.asarray(shifted_image(scene, IN_DISTRIBUTION, size=48)),
                          np.asarray(synth.render(scene, 48)))
    assert np.array_equal(np.asarray(shifted_image(scene, "fog", 2, seed=5, size=48)),
                          np.asarray(corrupt(synth.render(scene, 48), "fog", 2, seed=5)))
    with pytest.raises(ValueError, match="not a style"):
        render_shifted(scene, "fog", 2)
