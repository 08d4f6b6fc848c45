"""Losses against hand computations on tiny inputs."""
import math

import torch

from clipkit.train.losses import ClipLoss, HardNegativeClipLoss, SigLipLoss


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


def test_negclip_batch_negatives_join_every_image_row_by_hand():
    img, txt = _feats(b=2, d=4)
    g = torch.Generator().manual_seed(7)
    negs = torch.nn.functional.normalize(torch.randn(2, 1, 4, generator=g), dim=-1)   # one per caption
    scale = torch.tensor(math.log(5.0))
    got = HardNegativeClipLoss()(img, txt, scale, neg_text_features=negs)["contrastive_loss"].item()
    cols = [txt[0], txt[1], negs[0, 0], negs[1, 0]]          # both captions, then both negatives
    ce_i = [-5 * float(img[i] @ txt[i]) + math.log(sum(math.exp(5 * float(img[i] @ c)) for c in cols))
            for i in range(2)]
    ce_t = [-5 * float(img[j] @ txt[j]) + math.log(sum(math.exp(5 * float(img[i] @ txt[j])) for i in range(2)))
            for j in range(2)]
    assert abs(got - (sum(ce_i) / 2 + sum(ce_t) / 2) / 2) < 1e-5


def test_negclip_padding_slots_are_ignored():
    img, txt = _feats(b=3, d=4)
    g = torch.Generator().manual_seed(3)
    negs = torch.nn.functional.normalize(torch.randn(3, 2, 4, generator=g), dim=-1)
    valid = torch.tensor([[True, False], [True, False], [True, False]])
    scale = torch.tensor(2.0)
    masked = HardNegativeClipLoss()(img, txt, scale, neg_text_features=negs, neg_valid=valid)["contrastive_loss"]
    only_first = HardNegativeClipLoss()(img, txt, scale, neg_text_features=negs[:, :1])["contrastive_loss"]
    assert torch.allclose(masked, only_first)


def test_clip_and_siglip_match_open_clip_reference():
    from open_clip.loss import ClipLoss as RefClip
    from open_clip.loss import SigLipLoss as RefSig
    img, txt = _feats(b=5, d=8)
    t, bias = torch.tensor(math.log(1 / 0.07)), torch.tensor(-3.0)
    # open_clip's losses take the scale itself (exp of the learned log-scale)
    assert torch.allclose(ClipLoss()(img, txt, t)["contrastive_loss"], RefClip()(img, txt, t.exp()))
    assert torch.allclose(SigLipLoss()(img, txt, t, logit_bias=bias)["contrastive_loss"],
                          RefSig()(img, txt, t.exp(), bias))


def test_losses_are_chosen_by_name():
    import pytest

    from clipkit.train.losses import LOSSES, make_loss
    assert set(LOSSES) == {"clip", "negclip", "siglip"}
    assert isinstance(make_loss("siglip"), SigLipLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("triplet")
