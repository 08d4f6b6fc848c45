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
import torch.nn.functional as F
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the gradient of its own rows, summed
    over every rank's loss. That sum is the subtlety: each rank's loss uses every rank's rows, so
    this rank's rows get gradient from all of them (a reduce-scatter of the gathered gradient)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)                                   # (ws*b, ...)

    @staticmethod
    def backward(ctx, grad):
        ws, rank = dist.get_world_size(), dist.get_rank()
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = grad.new_empty((grad.shape[0] // ws, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad)
            return out
        grad = grad.clone()              # gloo has no reduce-scatter: all-reduce, keep my rows
        dist.all_reduce(grad)
        return grad.chunk(ws)[rank]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (b, ...) from every rank into (ws*b, ...), keeping gradients (identity on 1 rank)."""
    _, ws = world()
    return x if ws == 1 else _GatherWithGrad.apply(x)


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
    """NegCLIP (Yuksekgonul et al. 2023, ARO §5): hard-negative captions join the text side of the logits.

    neg_text_features: (b, h, d), h false captions per image (swapped relation, count, binding...);
    neg_valid: (b, h) bool, False for padding slots (a real caption may have fewer than h).
    As in NegCLIP's code, the negatives of the whole (global) batch are appended as extra columns
    of the image->text logits, so every image must also rank its caption above every hard negative
    in the batch; they have no image of their own, so the text->image direction is plain CLIP.
    """

    def forward(self, image_features, text_features, logit_scale, neg_text_features=None, neg_valid=None, **_):
        if neg_text_features is None:
            return super().forward(image_features, text_features, logit_scale)
        rank, ws = world()
        b, h, d = neg_text_features.shape
        all_img, all_txt = gather_with_grad(image_features), gather_with_grad(text_features)
        all_neg = gather_with_grad(neg_text_features.reshape(b * h, d))              # (ws*b*h, d)
        scale = logit_scale.exp()
        logits_i = scale * image_features @ torch.cat([all_txt, all_neg]).T         # (b, ws*b + ws*b*h)
        if neg_valid is not None:  # padding slots take no part: exp(-inf) = 0 in the softmax
            valid = gather_with_grad(neg_valid.reshape(b * h).to(logits_i.dtype)) > 0
            pad = torch.cat([torch.ones(all_txt.shape[0], dtype=torch.bool, device=valid.device), valid])
            logits_i = logits_i.masked_fill(~pad, float("-inf"))
        labels = torch.arange(b, device=image_features.device) + rank * b
        loss_i = F.cross_entropy(logits_i, labels)
        loss_t = F.cross_entropy(scale * text_features @ all_img.T, labels)
        return {"contrastive_loss": (loss_i + loss_t) / 2}


class SigLipLoss(nn.Module):
    """Sigmoid loss (Zhai et al. 2023): every pair is an independent binary problem with a learned bias.

    Each rank scores its b images against the texts of every rank (gathered with gradient) and
    divides by b: the mean of the ranks' losses, and so DDP's mean of their gradients, is then the
    paper's single-device loss, normalised by the global batch size.
    (The paper's init: t' = log 10 and bias -10; see the training loop's model set-up.)
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
