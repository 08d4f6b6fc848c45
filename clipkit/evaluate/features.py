"""Batched image and text feature extraction (L2-normalised, inference mode, autocast on GPU)."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from PIL import Image


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device):
    # bf16 autocast on GPU (features are renormalised in fp32 below); a no-op on CPU
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.inference_mode()
def encode_images(model, preprocess: Callable, images: Iterable[Image.Image], batch_size: int = 256) -> torch.Tensor:
    """(N, d) float32 L2-normalised image features for an iterable of PIL images (CPU tensor)."""
    device = model_device(model)
    feats, buf = [], []

    def flush():
        x = torch.stack([preprocess(im) for im in buf]).to(device)
        with _autocast(device):
            f = model.encode_image(x)
        feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        buf.clear()

    for im in images:
        buf.append(im)
        if len(buf) == batch_size:
            flush()
    if buf:
        flush()
    if not feats:
        raise ValueError("encode_images got no images")
    return torch.cat(feats)


@torch.inference_mode()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
    """(N, d) float32 L2-normalised text features; duplicate strings are encoded once."""
    if len(texts) == 0:
        raise ValueError("encode_texts got no texts")
    device = model_device(model)
    unique = list(dict.fromkeys(texts))
    out = []
    for i in range(0, len(unique), batch_size):
        tokens = tokenizer(unique[i:i + batch_size]).to(device)
        with _autocast(device):
            f = model.encode_text(tokens)
        out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
    feats = torch.cat(out)
    index = {t: j for j, t in enumerate(unique)}
    return feats[torch.tensor([index[t] for t in texts])]
