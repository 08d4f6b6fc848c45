"""What one optimiser step does: the model's forward as a loss-argument dict, AdamW groups and the
schedule (CLIP paper §2.5), gradient accumulation over one contrastive batch, and a guarded update
that skips a non-finite step on the device, without waiting for it.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.distributed as dist

MAX_LOGIT_SCALE = math.log(100)  # §2.5: "clipped to prevent scaling the logits by more than 100"
PER_SAMPLE = ("image_features", "text_features", "neg_text_features", "neg_valid")  # rows = samples


class ContrastiveForward(torch.nn.Module):
    """Wraps a CLIP model so that one call returns the loss's arguments (and DDP sees one forward).

    forward(images (B,3,S,S), texts (B,L), neg_texts (B,H,L) | None, neg_valid (B,H) | None)
      -> {image_features (B,d), text_features (B,d), logit_scale, [logit_bias],
          [neg_text_features (B,H,d), neg_valid (B,H)]}, features L2-normalised.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, texts, neg_texts=None, neg_valid=None):
        m = self.model
        out = {"image_features": m.encode_image(images, normalize=True), "logit_scale": m.logit_scale}
        if neg_texts is not None:
            b, h, L = neg_texts.shape
            # one text-tower pass over true and false captions: (B + B*H, L) -> (B + B*H, d)
            feats = m.encode_text(torch.cat([texts, neg_texts.reshape(b * h, L)]), normalize=True)
            out["text_features"], out["neg_text_features"] = feats[:b], feats[b:].reshape(b, h, -1)
            out["neg_valid"] = neg_valid
        else:
            out["text_features"] = m.encode_text(texts, normalize=True)
        if getattr(m, "logit_bias", None) is not None:
            out["logit_bias"] = m.logit_bias
        return out


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices only; none on gains, biases, embeddings' scale or the
    temperature (paper appendix F / open_clip: `p.ndim < 2 or 'bn'/'ln'/'bias'/'logit_scale' in n`)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def adam_betas_eps(model: torch.nn.Module, beta1: float, beta2: float | None, eps: float | None):
    """Paper appendix F: beta2 0.98, eps 1e-6 for ViTs (stabler with large batches); 0.999, 1e-8 for ResNets."""
    from open_clip.transformer import VisionTransformer
    vit = isinstance(getattr(model, "visual", None), VisionTransformer)
    return (beta1, beta2 if beta2 is not None else (0.98 if vit else 0.999)), \
        eps if eps is not None else (1e-6 if vit else 1e-8)


def cosine_with_warmup(warmup: int, total: int):
    """Linear warm-up to the base lr over `warmup` steps, then cosine decay to 0 at `total` (§2.5)."""
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def to_device(batch: dict, device, channels_last: bool = False) -> tuple:
    """(images, texts, neg_texts, neg_valid) on the device, copied asynchronously from pinned memory."""
    images = batch["image"].to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    neg = batch.get("neg_text")
    return (images, batch["text"].to(device, non_blocking=True),
            None if neg is None else neg.to(device, non_blocking=True),
            None if neg is None else batch["neg_valid"].to(device, non_blocking=True))


def merge_cached(cached: list[dict], j: int, out: dict, keep_scale_grad: bool) -> dict:
    """Loss arguments for micro-batch j of an accumulated step: its fresh features (with graph) in
    place j among the cached features of the others (no graph).

    The temperature (and SigLIP's bias) enters every pass's loss whole, so only one pass may keep
    its gradient; otherwise it would be counted accum_steps times (open_clip's accumulation
    counts it so).
    """
    merged = {k: torch.cat([out[k] if i == j else c[k] for i, c in enumerate(cached)])
              for k in PER_SAMPLE if out.get(k) is not None}
    for k in ("logit_scale", "logit_bias"):
        if k in out:
            merged[k] = out[k] if keep_scale_grad else out[k].detach()
    return merged


def forward_backward(train_model, loss_fn, micro: list[dict], device, autocast, scaler=None,
                     channels_last: bool = False) -> torch.Tensor:
    """Accumulate the gradient of one contrastive batch made of len(micro) micro-batches.

    One micro-batch: forward, loss, backward. Several (open_clip's --accum-freq, GradCache-style):
    first the features of every micro-batch without a graph, then each micro-batch again with a
    graph, its features swapped into the cached set, and the loss of the whole set backpropagated.
    The summed gradients equal those of one big batch, with the activation memory of a small one.
    Returns the loss (a detached device tensor: reading it would make the host wait).
    """
    inputs = [to_device(b, device, channels_last) for b in micro]
    cached = None
    if len(inputs) > 1:
        with torch.no_grad(), autocast():
            cached = [train_model(*x) for x in inputs]
    no_sync = getattr(train_model, "no_sync", nullcontext)   # DDP: all-reduce on the last pass only
    for j, x in enumerate(inputs):
        last = j == len(inputs) - 1
        with (nullcontext() if last else no_sync()), autocast():
            out = train_model(*x)
            if cached is not None:
                out = merge_cached(cached, j, out, keep_scale_grad=last)
            total = sum(loss_fn(**out).values())
        (scaler.scale(total) if scaler is not None else total).backward()
    return total.detach()


def nonfinite_flag(loss: torch.Tensor, ddp: bool) -> torch.Tensor:
    """0-d float: 1.0 if the loss of any rank is NaN or inf. A device collective, not a host sync."""
    bad = (~torch.isfinite(loss)).float().reshape(())
    if ddp:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad


def optimizer_step(optimizer, params, bad: torch.Tensor, scaler=None, clip: float = 0.0,
                   want_norm: bool = False):
    """Clip, then update unless `bad`; returns the gradient norm (a device tensor) or None.

    The skip happens on the device: fused AdamW takes a `found_inf` flag (the protocol of
    torch.amp.GradScaler) and leaves weights, moments and step counts untouched when it is 1, so
    the host never waits to learn whether the loss was finite. With fp16 the grad scaler does the
    same for its own overflow check (a non-finite loss gives non-finite gradients).
    """
    norm = None
    if scaler is not None and (clip or want_norm):
        scaler.unscale_(optimizer)
    if clip:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    elif want_norm:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.found_inf = bad
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    return norm


class LaggedFlag:
    """Reads a per-step device flag one step late, so the host never stalls the device pipeline.

    push(step, flag, info) copies the flag to pinned host memory asynchronously; pop() returns the
    (step, info) pushed before, if its flag was set, after waiting only for that earlier copy.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending = None

    def push(self, step: int, flag: torch.Tensor, info) -> tuple | None:
        fired = self.pop()
        if self.cuda:
            host = torch.empty(flag.shape, dtype=flag.dtype, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending = (step, host, event, info)
        else:
            self.pending = (step, flag, None, info)
        return fired

    def pop(self) -> tuple | None:
        if self.pending is None:
            return None
        step, host, event, info = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        return (step, info) if bool(host.any()) else None
