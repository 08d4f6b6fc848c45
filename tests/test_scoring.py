"""Pure scorers on hand-made inputs with known answers: K-way choice, Winoground, recall@k, bootstrap."""
import numpy as np
import pytest
import torch

from clipkit.core import stats
from clipkit.evaluate import choice_scores, choose, recall_at_k, winoground_scores


def test_choice_picks_the_most_similar_caption_and_counts_ties_as_wrong():
    scores = np.array([[0.9, 0.1, 0.2], [0.1, 0.5, 0.7], [0.3, 0.3, 0.3]])
    r = choose(scores, [0, 1, 2])
    assert r["correct"].tolist() == [True, False, False]
    assert np.allclose(r["credit"], [1, 0, 1 / 3])   # a three-way tie earns chance, not a win
    assert r["pred"].tolist()[:2] == [0, 2]
    assert np.allclose(r["chance"], 1 / 3)
    assert np.allclose(r["margin"][:2], [0.7, -0.2])


def test_choice_scores_from_features():
    img = torch.eye(3)                       # image i points along axis i
    caps = torch.eye(3)[None].repeat(3, 1, 1)  # every image gets the same 3 captions (axes 0, 1, 2)
    s = choice_scores(img, caps)
    assert torch.equal(s, torch.eye(3))
    assert choose(s.numpy(), [0, 1, 2])["correct"].all()
    with pytest.raises(ValueError):
        choice_scores(img, torch.eye(3))


def test_choose_validates_answers():
    with pytest.raises(ValueError, match="indices"):
        choose(np.zeros((2, 3)), [0, 3])


def test_winoground_scores():
    good = np.array([[[0.9, 0.1], [0.2, 0.8]]])
    text_only = np.array([[[0.5, 0.4], [0.9, 0.95]]])  # each image prefers its caption; captions don't
    w = winoground_scores(np.concatenate([good, text_only]))
    assert w["text"].tolist() == [True, True]
    assert w["image"].tolist() == [True, False]
    assert w["group"].tolist() == [True, False]


def test_recall_at_k_with_several_positives_and_pessimistic_ties():
    scores = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    pos = np.array([[0, 1, 0], [1, 0, 1], [0, 0, 1]], dtype=bool)
    assert recall_at_k(scores, pos, 1).tolist() == [False, True, False]
    assert recall_at_k(scores, pos, 2).tolist() == [True, True, False]
    assert recall_at_k(scores, pos, 3).tolist() == [True, True, True]


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, big = rng.random(50) < 0.7, rng.random(5000) < 0.7
    lo, hi = stats.bootstrap_ci(small)
    assert lo < small.mean() < hi
    blo, bhi = stats.bootstrap_ci(big)
    assert (bhi - blo) < (hi - lo) / 5 and blo < 0.7 < bhi
    s = stats.accuracy_summary([1, 1, 1, 1] * 25, [0.25] * 100)
    assert s["verdict"] == "above chance" and s["n"] == 100 and s["chance"] == 0.25


def test_mcnemar_detects_a_real_difference_only():
    a = np.array([1] * 80 + [0] * 20, bool)
    assert stats.mcnemar(a, a)["p_value"] == 1.0
    b = np.array([1] * 40 + [0] * 60, bool)
    assert stats.mcnemar(a, b)["p_value"] < 1e-6
