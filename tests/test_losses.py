"""Losses against hand computations on tiny inputs."""
import math

import torch

from clipkit.losses import ClipLoss, HardNegativeClipLoss, SigLipLoss


def _feats(seed=0, b=3, d=4):
    g = torch.Generator().manual_seed(seed)
    f = lambda: torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)  # noqa: E731
    return f(), f()


def test_clip_loss_equals_hand_computed_symmetric_cross_entropy():
    img, txt = _feats()
    scale = torch.tensor(math.log(1 / 0.07))
    got = ClipLoss()(img, txt, scale)["contrastive_loss"]
    sims = [[(1 / 0.07) * float(img[i] @ txt[j]) for j in range(3)] for i in range(3)]
    ce_rows = [-sims[i][i] + math.log(sum(math.exp(sims[i][j]) for j in range(3))) for i in range(3)]
    ce_cols = [-sims[j][j] + math.log(sum(math.exp(sims[i][j]) for i in range(3))) for j in range(3)]
    want = (sum(ce_rows) / 3 + sum(ce_cols) / 3) / 2
    assert abs(got.item() - want) < 1e-5


def test_clip_loss_is_low_for_matched_pairs_and_high_for_shuffled():
    img, _ = _feats()
    scale = torch.tensor(math.log(100))
    assert ClipLoss()(img, img, scale)["contrastive_loss"] < 0.01
    assert ClipLoss()(img, img.roll(1, 0), scale)["contrastive_loss"] > 1


def test_hard_negatives_raise_the_loss_and_reduce_to_clip_without_them():
    img, txt = _feats()
    scale = torch.tensor(2.0)
    base = ClipLoss()(img, txt, scale)["contrastive_loss"]
    assert torch.allclose(HardNegativeClipLoss()(img, txt, scale)["contrastive_loss"], base)
    negs = txt[:, None, :].clone()        # a "negative" identical to the positive caption
    hard = HardNegativeClipLoss()(img, txt, scale, neg_text_features=negs)["contrastive_loss"]
    assert hard > base


def test_siglip_loss_equals_hand_computation():
    img, txt = _feats(b=2, d=3)
    t, bias = torch.tensor(math.log(10.0)), torch.tensor(-5.0)
    got = SigLipLoss()(img, txt, t, logit_bias=bias)["contrastive_loss"].item()
    want = 0.0
    for i in range(2):
        for j in range(2):
            z = 10.0 * float(img[i] @ txt[j]) - 5.0
            y = 1 if i == j else -1
            want -= math.log(1 / (1 + math.exp(-y * z)))
    assert abs(got - want / 2) < 1e-5
