"""Contrastive losses, chosen by name: CLIP InfoNCE, SigLIP, and hard-negative InfoNCE (NegCLIP).

Each loss is called as `loss(**model_out)` where model_out is the dict the training step builds
(image_features, text_features, logit_scale, and optionally logit_bias / neg_text_features), and
returns a dict of named loss terms; the step sums them. Features arrive L2-normalised.

Distributed: each rank scores only its own rows of the global N x N matrix against all columns
(open_clip's `local_loss=True, gather_with_grad=True`). The gather keeps gradients, so the
backward pass sums every column's gradient back onto the rank that produced it, and DDP then
averages over ranks: exactly the gradient of the full-matrix loss, while memory stays linear in
the global batch (tests/test_distributed.py checks this against one process).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (all_gather with autograd support)
import torch.nn.functional as F
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank along dim 0, keeping the autograd graph (identity on 1 rank)."""
    _, ws = world()
    if ws == 1:
        return x
    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over the scaled cosine-similarity matrix (CLIP paper §2.3, Fig. 3).

    logits_per_image[i, j] = exp(t) * <I_i, T_j>; the true pairs are the diagonal.
    """

    def forward(self, image_features, text_features, logit_scale, **_):
        rank, ws = world()
        b = image_features.shape[0]
        all_img, all_txt = gather_with_grad(image_features), gather_with_grad(text_features)
        scale = logit_scale.exp()
        logits_per_image = scale * image_features @ all_txt.T   # (b, ws*b): my images vs all texts
        logits_per_text = scale * text_features @ all_img.T     # (b, ws*b): my texts vs all images
        labels = torch.arange(b, device=image_features.device) + rank * b
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return {"contrastive_loss": loss}


class HardNegativeClipLoss(ClipLoss):
    """NegCLIP (Yuksekgonul et al. 2023): each image's row also scores its own hard-negative captions.

    neg_text_features: (b, h, d), the h false captions of each image (swapped relation, count...).
    They join the text side of the image->text logits only (they have no image of their own).
    """

    def forward(self, image_features, text_features, logit_scale, neg_text_features=None, **_):
        if neg_text_features is None:
            return super().forward(image_features, text_features, logit_scale)
        rank, ws = world()
        b = image_features.shape[0]
        all_img, all_txt = gather_with_grad(image_features), gather_with_grad(text_features)
        scale = logit_scale.exp()
        in_batch = scale * image_features @ all_txt.T                                  # (b, ws*b)
        own_negs = scale * torch.einsum("bd,bhd->bh", image_features, neg_text_features)  # (b, h)
        labels = torch.arange(b, device=image_features.device) + rank * b
        loss_i = F.cross_entropy(torch.cat([in_batch, own_negs], dim=1), labels)
        loss_t = F.cross_entropy(scale * text_features @ all_img.T, labels)
        return {"contrastive_loss": (loss_i + loss_t) / 2}


class SigLipLoss(nn.Module):
    """Sigmoid loss (Zhai et al. 2023): every pair is an independent binary problem with a learned bias.

    Gathers all features (with gradient) and scores my rows against all columns; normalised by the
    global batch size as in the paper, so the sum over ranks equals the single-device loss.
    """

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, **_):
        if logit_bias is None:
            raise ValueError("the siglip loss needs a model with a learned logit_bias "
                             "(create it with init_logit_bias, e.g. -10 as in the SigLIP paper)")
        rank, ws = world()
        b = image_features.shape[0]
        all_txt = gather_with_grad(text_features)
        logits = logit_scale.exp() * image_features @ all_txt.T + logit_bias      # (b, ws*b)
        labels = -torch.ones_like(logits)
        labels[torch.arange(b), torch.arange(b) + rank * b] = 1.0                  # +1 on true pairs
        loss = -F.logsigmoid(labels * logits).sum() / b
        return {"contrastive_loss": loss}


LOSSES = {"clip": ClipLoss, "negclip": HardNegativeClipLoss, "siglip": SigLipLoss}


def make_loss(name: str) -> nn.Module:
    """The loss class registered under `name` (one of LOSSES)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]()
