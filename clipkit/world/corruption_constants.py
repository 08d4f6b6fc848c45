"""ImageNet-C's corruption constants per severity 1..5, copied from the reference code (Hendrycks &
Dietterich 2019, github.com/hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py).

Kept apart from `clipkit.world.corruptions` (which applies them and re-exports CONSTANTS) so that the
table, the one thing copied verbatim from the reference, can be read and checked on its own.
"""
from __future__ import annotations

# Constants per severity 1..5, from make_imagenet_c.py (lengths in pixels of a 224-px image).
CONSTANTS = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],  # noise std
    "shot_noise": [60, 25, 12, 5, 3],  # photons at full intensity
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],  # fraction of values flipped
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],  # disk radius, alias sigma
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],  # sigma, delta, iters
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],  # radius, sigma
    "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],  # loc, scale, zoom, threshold, radius, sigma, keep
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],  # image weight, frost weight
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],  # amount, wibble decay
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],  # added to HSV value
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],  # factor on the deviation from the mean
    # alpha, sigma, affine jitter; the reference writes 244 * (...) ("should have been 224")
    "elastic_transform": [(244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                          (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                          (244 * 0.12, 244 * 0.01, 244 * 0.02)],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],  # resize factor
    "jpeg_compression": [25, 18, 15, 10, 7],  # JPEG quality
}
