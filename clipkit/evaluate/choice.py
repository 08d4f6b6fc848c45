"""K-way caption choice: the scorer behind counting, spatial and compositional probes.

Each item is one image and K candidate captions, exactly one of them true. The model "chooses"
the caption with the highest cosine similarity (CountBench, What'sUp, ARO and SugarCrepe all score
this way). These are pure functions on feature arrays so they can be tested on hand-made inputs.
"""
from __future__ import annotations

import numpy as np
import torch


def choice_scores(image_features: torch.Tensor, caption_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (N, K) of image i (N, d) with each of its own K captions (N, K, d)."""
    if image_features.ndim != 2 or caption_features.ndim != 3:
        raise ValueError(f"expected image (N, d) and captions (N, K, d), got {tuple(image_features.shape)} "
                         f"and {tuple(caption_features.shape)}")
    return torch.einsum("nd,nkd->nk", image_features, caption_features)


def choose(scores, answers) -> dict:
    """Per-item results of a K-way choice: predicted index, correctness, credit, margin, chance level.

    scores: (N, K) similarities; answers: (N,) index of the true caption. `correct` means the true
    caption is the unique best. `credit` is the expected accuracy of picking uniformly among the
    tied best captions (1/t if the true one is among t tied maxima): a model that scores every
    caption equally earns exactly chance, never more. Accuracy is the mean credit.
    """
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(answers, dtype=int)
    n, k = s.shape
    if a.shape != (n,) or (a < 0).any() or (a >= k).any():
        raise ValueError(f"answers must be {n} indices in [0, {k}), got shape {a.shape}")
    true = s[np.arange(n), a]
    others = np.where(np.arange(k)[None, :] == a[:, None], -np.inf, s)
    best_other = others.max(1)
    pred = s.argmax(1)
    correct = true > best_other
    n_best = (s == s.max(1, keepdims=True)).sum(1)
    credit = np.where(true == s.max(1), 1.0 / n_best, 0.0)
    return {"pred": pred, "correct": correct, "credit": credit, "margin": true - best_other,
            "chance": np.full(n, 1.0 / k)}


def winoground_scores(s: np.ndarray) -> dict:
    """Text, image and group scores of 2x2 items (Thrush et al. 2022).

    s: (N, 2, 2) with s[n, i, j] = similarity of image i and caption j; caption i belongs to image i.
    text: each image prefers its own caption; image: each caption prefers its own image; group: both.
    """
    s = np.asarray(s, dtype=np.float64)
    text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    return {"text": text, "image": image, "group": text & image}
