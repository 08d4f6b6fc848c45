"""Retrieval recall@k as a pure function of a similarity matrix and a correspondence matrix.

A query is a hit at k if at least one correct item is among its top k (CLIP paper §3.1, and
CLIP_benchmark's `recall_at_k`). Correspondence may mark several correct items per query: several
captions per image, or (on synthetic scenes) images whose captions are word-for-word identical.
"""
from __future__ import annotations

import numpy as np


def recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    """Per-query hits (Q,) bool: does the top-k of each row of scores (Q, M) hold a positive?

    Ties at the k-th score are broken against the query (stable argsort on -score, then positives
    last), so a constant scorer does not get credit for ties.
    """
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ in shape")
    if not positives.any(1).all():
        raise ValueError("every query needs at least one positive")
    # sort by score descending; among equal scores put negatives first (pessimistic)
    order = np.lexsort((positives, -scores), axis=1)[:, :k]
    return np.take_along_axis(positives, order, axis=1).any(1)


def retrieval_metrics(image_features, text_features, text_to_image: np.ndarray, ks=(1, 5, 10)) -> dict:
    """image->text and text->image recall@k.

    text_to_image[t] = index of the image that caption t belongs to (several captions may share one).
    Image->text is averaged over images, text->image over captions (CLIP_benchmark's convention).
    """
    sim = np.asarray(text_features, dtype=np.float64) @ np.asarray(image_features, dtype=np.float64).T
    n_txt, n_img = sim.shape
    pos = np.zeros((n_txt, n_img), dtype=bool)
    pos[np.arange(n_txt), np.asarray(text_to_image)] = True
    out = {}
    for k in ks:
        out[f"text_retrieval_recall@{k}"] = float(recall_at_k(sim.T, pos.T, k).mean())   # image -> text
        out[f"image_retrieval_recall@{k}"] = float(recall_at_k(sim, pos, k).mean())      # text -> image
    return out
