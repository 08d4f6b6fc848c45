"""The 15 ImageNet-C common corruptions at 5 severities, reimplemented for images of any size.

Definitions and constants follow the ImageNet-C reference code (Hendrycks & Dietterich 2019,
github.com/hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py); each constant row (in
clipkit.world.corruption_constants) is copied from it, indexed by severity 1..5. Why not wrap
`imagecorruptions` (PyPI 1.1.2, the packaged port)? In our environment it does not import (it needs
`pkg_resources`, gone from setuptools >= 81), and where it does, fog fails (`np.float_`, removed in
NumPy 2) and glass blur fails (`multichannel=`, removed from scikit-image); it draws from the global
NumPy RNG, refuses images under 32 px, keeps 224-px constants at every size, and pulls in OpenCV and scikit-image.

Sizes. ImageNet-C's constants are in pixels of a 224-px image. The aim is that a severity covers
the same fraction of the picture at any size: corrupting a 48-px render approximates corrupting the
224-px render of the same scene and downsizing the result. With s = min(H, W) / 224:
  * blur lengths (defocus disk radius and softening, motion-blur radius and sigma) are times s;
  * texture layers (snow, frost, fog) and elastic_transform's displacement field and affine jitter
    are generated on a 224-px reference canvas exactly as the reference does, then resized (the
    displacements rescaled) to the image;
  * glass blur, which shuffles whole pixels (1..4 at 224 px, so 0 or an oversized 1 if scaled),
    runs on the 224-px canvas for smaller images and is resized back;
  * per-pixel and relative constants are kept: noise amplitudes, brightness, contrast, zoom factors,
    pixelate's resize factor and JPEG quality. Pixelate stays relative to the current size: made
    "scale-equivalent" it would do nothing to an image smaller than 224 * 0.6 px.
Departures from the reference: frost uses a procedural texture instead of the six frost photographs
(see `frost_texture`); elastic_transform resamples once (affine and elastic composed) instead of
twice, and smooths its severity-1 field (sigma 171 px) by FFT, untruncated; the defocus disk is
anti-aliased by area coverage, so that sub-pixel radii at small sizes still blur; motion blur is a
sub-pixel reimplementation of ImageMagick's (no Wand / ImageMagick dependency).

Randomness comes only from `seed` (never the global RNG), and a corruption's random state does not
depend on severity: severities 1..5 of one seed start from the same draws (the same noise field, fog,
motion angle, ...), so severity is the only thing that changes between them.
"""
from __future__ import annotations

import io
import math
import zlib

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from clipkit.world.corruption_constants import CONSTANTS  # the per-severity table; also importable from here

REF = 224  # the side ImageNet-C's pixel constants were chosen for

FAMILIES = {  # the grouping of the ImageNet-C paper (Figure 1)
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTIONS = tuple(name for names in FAMILIES.values() for name in names)
SEVERITIES = (1, 2, 3, 4, 5)


# --- helpers ------------------------------------------------------------------------------------
def _resize(layer: np.ndarray, shape: tuple[int, int], box=None) -> np.ndarray:
    """Bilinear resize of a float (H, W) array to `shape` (anti-aliased when shrinking), optionally
    of the sub-pixel region `box` = (left, top, right, bottom)."""
    if layer.shape == tuple(shape) and box is None:
        return layer
    img = Image.fromarray(np.ascontiguousarray(layer, dtype=np.float32), mode="F")
    return np.array(img.resize((shape[1], shape[0]), Image.BILINEAR, box=box), dtype=np.float32)


def _per_channel(f, x: np.ndarray) -> np.ndarray:
    return np.stack([f(x[..., c]) for c in range(x.shape[-1])], axis=-1)


def _ref_shape(h: int, w: int) -> tuple[int, int]:
    """The shape of the 224-px reference canvas with the image's aspect ratio (short side 224)."""
    k = REF / min(h, w)
    return max(1, round(h * k)), max(1, round(w * k))


def _zoom_centre(layer: np.ndarray, factor: float) -> np.ndarray:
    """ImageNet-C's clipped_zoom: magnify the central 1/factor of a (H, W) layer back to (H, W)."""
    h, w = layer.shape
    dh, dw = h / (2 * factor), w / (2 * factor)
    return _resize(layer, (h, w), box=(w / 2 - dw, h / 2 - dh, w / 2 + dw, h / 2 + dh))


def _correlate(x: np.ndarray, kernel: np.ndarray, pad_mode: str) -> np.ndarray:
    """out(p) = sum_q kernel[q] x(p + q - centre) over (H, W[, C]), by FFT; the border is padded
    with np.pad's `pad_mode` ("edge" = cv2 BORDER_REPLICATE, "reflect" = BORDER_REFLECT_101)."""
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    pad = ((ry, ry), (rx, rx)) + ((0, 0),) * (x.ndim - 2)
    k = kernel[::-1, ::-1].reshape(kernel.shape + (1,) * (x.ndim - 2))  # convolution flips
    return signal.fftconvolve(np.pad(x, pad, mode=pad_mode), k, mode="valid", axes=(0, 1)).astype(x.dtype)


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage (used by ImageNet-C through Wand): a one-sided Gaussian-weighted
    sum of copies shifted along `angle` (degrees), kernel width 2 ceil(radius) + 1, edges replicated.
    Shifts are sub-pixel (each tap splatted bilinearly into a 2-D kernel), so short blurs on small
    images stay smooth."""
    width = 2 * math.ceil(radius) + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * max(sigma, 1e-6) ** 2))
    k = k[k > 1e-4 * k[0]]  # the tail of a sharp kernel adds nothing
    k /= k.sum()
    # tap i reads the input at p + i (sin, cos)
    t = np.arange(k.size)
    oy, ox = t * math.sin(math.radians(angle)), t * math.cos(math.radians(angle))
    r = math.ceil(max(np.abs(oy).max(), np.abs(ox).max())) + 1
    kernel = np.zeros((2 * r + 1, 2 * r + 1))
    y0, x0 = np.floor(oy).astype(int), np.floor(ox).astype(int)
    fy, fx = oy - y0, ox - x0
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (r + y0 + dy, r + x0 + dx), k * wgt)
    return _correlate(x, kernel, "edge")


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] of side `mapsize` (a power of two), as in ImageNet-C's
    fog (itself after github.com/FLHerne/mapgen), drawing from `rng` instead of the global RNG."""
    assert mapsize & (mapsize - 1) == 0, "mapsize must be a power of two"
    m = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[0:mapsize:step, 0:mapsize:step]  # squares: centre = mean of 4 corners + noise
        acc = corners + np.roll(corners, -1, axis=0)
        acc += np.roll(acc, -1, axis=1)
        m[half:mapsize:step, half:mapsize:step] = wibbled_mean(acc)
        dr = m[half:mapsize:step, half:mapsize:step]  # diamonds: mean of 4 neighbours + noise
        ul = m[0:mapsize:step, 0:mapsize:step]
        m[0:mapsize:step, half:mapsize:step] = wibbled_mean(dr + np.roll(dr, 1, 0) + ul + np.roll(ul, -1, 1))
        m[half:mapsize:step, 0:mapsize:step] = wibbled_mean(dr + np.roll(dr, 1, 1) + ul + np.roll(ul, -1, 0))
        step //= 2
        wibble /= wibbledecay
    m -= m.min()
    return m / m.max()


def _segments(shape: tuple[int, int], x0, y0, x1, y1, tone) -> np.ndarray:
    """Line segments (equal-length arrays of end points and tones) rasterised into a zero (H, W)
    canvas, 1 px wide, overlaps keeping the brighter (a vectorised ImageDraw.line)."""
    h, w = shape
    k = np.ceil(np.hypot(x1 - x0, y1 - y0) * 2).astype(int) + 2  # samples per segment, 0.5 px apart
    seg = np.repeat(np.arange(k.size), k)
    t = (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)) / np.repeat(k - 1, k)
    px = np.round(x0[seg] + t * (x1 - x0)[seg]).astype(int)
    py = np.round(y0[seg] + t * (y1 - y0)[seg]).astype(int)
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    out = np.zeros(h * w)
    np.maximum.at(out, py[inside] * w + px[inside], tone[seg][inside])
    return out.reshape(h, w)


def frost_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A procedural stand-in for ImageNet-C's six frost photographs, (H, W, 3) in [0, 1].

    Dense fern-like ice crystals (stems with side branches at +-55 deg, drawn 2x supersampled,
    brighter where a plasma "glaze" is thick) over that glaze plus fine grain, tinted blue-grey.
    Mean and contrast are set to those of the photographs shipped with imagecorruptions (averaged
    over the six: mean RGB ~ (0.52, 0.61, 0.65), std ~ 0.12); the photos are not redistributed here.
    """
    h, w = shape
    glaze = plasma_fractal(1 << (max(h, w, 2) - 1).bit_length(), 2.0, rng)[:h, :w]
    ss = 2  # supersampling of the crystal strokes
    n = max(1, int(0.008 * h * w))  # ~400 crystals on a 224 x 224 canvas
    x, y = rng.uniform(0, w, n) * ss, rng.uniform(0, h, n) * ss  # stems: (n,) in canvas pixels
    a, length = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.03, 0.12, n) * REF * ss
    tone = rng.uniform(0.35, 1.0, n)
    ex, ey = x + length * np.cos(a), y + length * np.sin(a)
    t = np.linspace(0.15, 0.9, 7)[:, None, None]  # 7 pairs of side branches, shorter towards the tip
    b = a + np.radians([-55, 55])[None, :, None]  # (1, 2, n)
    bx, by, bl = x + t * (ex - x), y + t * (ey - y), 0.45 * (1 - t) * length  # (7, 1, n)
    bx, by, bl, b, bt = (np.broadcast_to(v, (7, 2, n)).ravel() for v in (bx, by, bl, b, 0.75 * tone))
    crystals = _segments((h * ss, w * ss), np.r_[x, bx], np.r_[y, by], np.r_[ex, bx + bl * np.cos(b)],
                         np.r_[ey, by + bl * np.sin(b)], np.r_[tone, bt])
    crystals = crystals.reshape(h, ss, w, ss).mean(axis=(1, 3))  # box-downsample the supersampling
    grain = ndimage.gaussian_filter(rng.standard_normal((h, w)), 0.7)
    grey = 0.25 * glaze + 0.45 * crystals * (0.5 + glaze) + 0.08 * grain
    grey = np.clip(0.65 + (grey - grey.mean()) * (0.12 / max(grey.std(), 1e-6)), 0, 1)  # photo stats
    return (grey[..., None] * np.array([0.80, 0.93, 1.0])).astype(np.float32)  # blue-grey tint


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """The reference's gaussian(a, sigma, mode="reflect", truncate=3) of a (H, W) array. For a
    kernel wider than the array (elastic's sigma of 171 px) the same filter by FFT, untruncated: the
    mirrored (2H, 2W) extension is periodic, so reflect filtering is a circular convolution."""
    h, w = a.shape
    if 3 * sigma < min(h, w):
        return ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=3)
    e = np.block([[a, a[:, ::-1]], [a[::-1], a[::-1, ::-1]]])
    f = ndimage.fourier_gaussian(np.fft.rfft2(e), sigma, n=e.shape[1])
    return np.fft.irfft2(f, s=e.shape)[:h, :w]


def _disk(radius: float, alias_sigma: float) -> np.ndarray:
    """ImageNet-C's defocus kernel: a flat disk, softened by a small Gaussian, summing to 1.
    Pixel weights are the disk's area coverage (8 x 8 subsamples per pixel), so the kernel changes
    smoothly with radius even below one pixel."""
    half = math.ceil(radius + 3 * alias_sigma) + 1
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    grid = np.arange(-half, half + 1)
    yy = (grid[:, None, None, None] + sub[None, None, :, None]) ** 2
    xx = (grid[None, :, None, None] + sub[None, None, None, :]) ** 2
    k = ((yy + xx) <= radius ** 2).mean(axis=(2, 3))
    if k.sum() == 0:  # radius far below a pixel: the identity
        k[half, half] = 1.0
    if alias_sigma > 0:
        k = ndimage.gaussian_filter(k, alias_sigma, mode="constant")
    return k / k.sum()


# --- the corruptions: f(x (H, W, 3) float32 in [0, 1], c = the severity's constants, rng, s) -------
def gaussian_noise(x, c, rng, s):
    return x + c * rng.standard_normal(x.shape, dtype=np.float32)


def shot_noise(x, c, rng, s):
    # Poisson photon counts with c photons at full intensity; fewer photons = noisier
    return rng.poisson(x * c) / c


def impulse_noise(x, c, rng, s):
    # skimage's random_noise(mode="s&p", amount=c): each value flips with probability c, to 0 or 1
    flip, salt = rng.random(x.shape) < c, rng.random(x.shape) < 0.5
    return np.where(flip, salt.astype(x.dtype), x)


def defocus_blur(x, c, rng, s):
    radius, alias = c
    return _correlate(x, _disk(radius * s, alias * s), "reflect")  # cv2.filter2D's default border


def glass_blur(x, c, rng, s):
    sigma, delta, iterations = c
    h, w, _ = x.shape
    if s < 1:  # shuffle on the 224 canvas (see the module docstring)
        rh, rw = _ref_shape(h, w)
        return _resize_rgb(glass_blur(_resize_rgb(x, (rh, rw)), c, rng, 1.0), (h, w))
    sigma, delta = sigma * s, round(delta * s)
    y = np.round(ndimage.gaussian_filter(x, (sigma, sigma, 0), mode="nearest") * 255) / 255
    # Locally shuffle pixels: the reference swaps pixel (r, q) with (r + dy, q + dx) in a raster
    # scan from the bottom-right, one swap at a time. Sequential swaps compose into a permutation,
    # so run them on a list of pixel indices (fast) and gather the pixels once.
    rows, cols = np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1)
    if rows.size and cols.size:
        src = (rows[:, None] * w + cols[None, :]).ravel()
        perm = list(range(h * w))
        for _ in range(iterations):
            d = rng.integers(-delta, delta, size=(src.size, 2))  # (dx, dy), the reference's randint
            dst = src + d[:, 1] * w + d[:, 0]
            for a, b in zip(src.tolist(), dst.tolist()):
                perm[a], perm[b] = perm[b], perm[a]
        y = y.reshape(h * w, -1)[perm].reshape(h, w, -1)
    return ndimage.gaussian_filter(y, (sigma, sigma, 0), mode="nearest")


def motion_blur(x, c, rng, s):
    radius, sigma = c
    return _motion_blur(x, radius * s, sigma * s, float(rng.uniform(-45, 45)))


def zoom_blur(x, c, rng, s):
    # average of the image and its centre magnified by each factor (zoom factors are relative)
    start, stop, step = c
    factors = np.arange(start, stop, step)
    out = x.copy()
    for z in factors:
        out += _per_channel(lambda ch: _zoom_centre(ch, z), x)
    return out / (len(factors) + 1)


def snow(x, c, rng, s):
    loc, scale, zoom, thresh, radius, sigma, keep = c
    h, w, _ = x.shape
    layer = rng.normal(loc, scale, size=_ref_shape(h, w)).astype(np.float32)  # on the 224 canvas
    layer = _zoom_centre(layer, zoom)
    layer[layer < thresh] = 0
    layer = _motion_blur(np.clip(layer, 0, 1), radius, sigma, float(rng.uniform(-135, -45)))
    layer = _resize(np.round(layer * 255) / 255, (h, w))[..., None]  # the reference's 8-bit PNG trip
    grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]  # cv2 RGB2GRAY
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)  # the scene whitens under snow
    return x + layer + np.rot90(layer, k=2)


def frost(x, c, rng, s):
    keep, amount = c
    return keep * x + amount * _resize_rgb(frost_texture(_ref_shape(*x.shape[:2]), rng), x.shape[:2])


def fog(x, c, rng, s):
    amount, decay = c
    h, w, _ = x.shape
    rh, rw = _ref_shape(h, w)
    layer = plasma_fractal(max(256, 1 << (max(rh, rw) - 1).bit_length()), decay, rng)[:rh, :rw]
    max_val = x.max()
    x = x + amount * _resize(layer, (h, w))[..., None]
    return x * max_val / (max_val + amount)


def brightness(x, c, rng, s):
    # V += c in HSV with H, S fixed is a rescaling of RGB by V'/V (grey V' where V = 0, as skimage)
    v = x.max(axis=-1, keepdims=True)
    v_new = np.minimum(v + c, 1)
    return np.where(v > 0, x * (v_new / np.maximum(v, 1e-12)), v_new)


def contrast(x, c, rng, s):
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def elastic_transform(x, c, rng, s):
    alpha, sigma, jitter = c  # in pixels of the 224 canvas
    h, w, _ = x.shape
    rh, rw = _ref_shape(h, w)
    # random affine on the reference canvas: three points around the centre, each moved by <= jitter
    centre, half = np.array([rw // 2, rh // 2], dtype=np.float64), min(rh, rw) // 3
    pts1 = np.array([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    pts2 = pts1 + rng.uniform(-jitter, jitter, size=pts1.shape)
    fwd = np.linalg.solve(np.c_[pts1, np.ones(3)], pts2).T  # (2, 3): [x', y'] = fwd @ [x, y, 1]
    inv = np.linalg.inv(np.r_[fwd, [[0, 0, 1]]])[:2]
    # smooth random displacement fields, in reference pixels
    dx, dy = (_smooth(rng.uniform(-1, 1, (rh, rw)), sigma) * alpha for _ in range(2))
    # each output pixel, in reference coordinates (pixel centres); displaced, then un-affined
    k = rh / h
    qy, qx = np.meshgrid((np.arange(h) + 0.5) * k - 0.5, (np.arange(w) + 0.5) * k - 0.5, indexing="ij")
    ddx = ndimage.map_coordinates(dx, [qy, qx], order=1, mode="nearest")
    ddy = ndimage.map_coordinates(dy, [qy, qx], order=1, mode="nearest")
    px, py = qx + ddx, qy + ddy
    sx = inv[0, 0] * px + inv[0, 1] * py + inv[0, 2]
    sy = inv[1, 0] * px + inv[1, 1] * py + inv[1, 2]
    coords = [(sy + 0.5) / k - 0.5, (sx + 0.5) / k - 0.5]  # back to image pixels
    return _per_channel(lambda ch: ndimage.map_coordinates(ch, coords, order=1, mode="reflect"), x)


def pixelate(x, c, rng, s):
    h, w, _ = x.shape
    img = _to_pil(x)
    small = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return _from_pil(small.resize((w, h), Image.BOX))


def jpeg_compression(x, c, rng, s):
    buf = io.BytesIO()
    _to_pil(x).save(buf, "JPEG", quality=c)
    return _from_pil(Image.open(buf))


_FUNCS = {name: globals()[name] for name in CORRUPTIONS}


def _to_pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8), mode="RGB")


def _from_pil(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255


def _resize_rgb(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return x if x.shape[:2] == tuple(shape) else _per_channel(lambda ch: _resize(ch, shape), x)


def corrupt(img: Image.Image, name: str, severity: int, seed: int = 0) -> Image.Image:
    """`img` under ImageNet-C corruption `name` at `severity` (1..5): same size and mode.

    Deterministic given (name, seed); severities of one seed share their random draws.
    """
    if name not in _FUNCS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    mode = img.mode
    x = _from_pil(img)  # (H, W, 3) float32 in [0, 1]
    rng = np.random.default_rng([zlib.crc32(name.encode()), int(seed)])
    s = min(x.shape[:2]) / REF
    out = _FUNCS[name](x, CONSTANTS[name][severity - 1], rng, s)
    res = _to_pil(np.asarray(out, dtype=np.float32))
    if mode == "RGBA":  # corrupt the colours, keep the alpha
        res.putalpha(img.getchannel("A"))
        return res
    return res if mode == "RGB" else res.convert(mode)
