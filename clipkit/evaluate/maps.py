"""Where the model looks: per-patch maps of an image against a caption (patch-token similarity, Grad-CAM).

Two maps, both batched over images, both returned as (B, rows, cols) arrays on the patch grid
(a ResNet's final feature-map grid for Grad-CAM):

- `patch_similarity` (MaskCLIP-style, Zhou et al. 2022, "Extract Free Dense Labels from CLIP",
  §3): every patch token of the last block is sent through the head the class token goes through
  (ln_post, then `proj`), which puts it in the joint space, and its cosine with the caption's text
  embedding is that patch's value. MaskCLIP proper also replaces the last block's attention output
  by its value path; this is the plain-token form, which needs no change to the forward pass. ViTs
  only: a ResNet has no patch tokens (NotAvailable says so in one line).
- `gradcam` (Selvaraju et al. 2017, "Grad-CAM", eqs. 1-2): the gradient of the image-caption cosine
  with respect to a feature map A, averaged over positions to one weight per channel, weights the
  channels of A; a ReLU keeps what raises the score. Chosen over Chefer et al.'s (2021) attention
  relevance because it needs one forward hook and one backward pass, runs unchanged on a ResNet
  (A = the last stage, layer4, or the deepest stage with a map of at least 3 x 3 on a small input:
  `resnet_cam_stage`), and does not need attention probabilities, which open_clip's fused
  attention does not return (need_weights=False). On a ViT, A is the output of the last block's
  first LayerNorm (its attention's input): the last block's own *output* patch tokens never reach
  the class token, so their gradient is zero; pytorch-grad-cam picks the same layer for ViTs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet

from clipkit.evaluate.features import encode_texts, model_device
from clipkit.evaluate.layers import NotAvailable, _tokens, hooked, vision_blocks, vision_tower

METHODS = ("patch", "gradcam", "auto")   # auto: the patch map where there are patch tokens, else Grad-CAM


def _text_rows(text_features: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, d) L2-normalised text features: one row per image (a single (d,) row is repeated)."""
    t = text_features.float()
    t = t[None] if t.ndim == 1 else t
    if t.shape[0] == 1:
        t = t.expand(batch, -1)
    if t.shape[0] != batch:
        raise ValueError(f"{batch} images but {t.shape[0]} text features: pass one caption, or one per image")
    return F.normalize(t, dim=-1)


def patch_similarity(model, pixels: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """(B, rows, cols) cosine of every last-block patch token, taken through ln_post and `proj`, with the
    caption's embedding. pixels: (B, 3, H, W) preprocessed; text_features: (d,), (1, d) or (B, d)."""
    visual = vision_blocks(model)
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (B, 3, H, W), got shape {tuple(pixels.shape)}")
    device = model_device(model)
    last = visual.transformer.resblocks[-1]
    with torch.inference_mode(), hooked({"last": last}) as store:
        model.encode_image(pixels.to(device))
        tokens = _tokens(store["last"], visual.transformer)[:, 1:].float()     # (B, g*g, width)
        z = visual.ln_post(tokens)                                              # per token, as for the class token
        if visual.proj is not None:
            z = z @ visual.proj                                                 # (B, g*g, embed_dim)
        t = _text_rows(text_features.to(device), len(pixels))                   # (B, embed_dim)
        sim = torch.einsum("bpd,bd->bp", F.normalize(z.float(), dim=-1), t)    # (B, g*g)
    rows, cols = visual.grid_size
    return sim.reshape(len(pixels), rows, cols).cpu().numpy()


MIN_CAM_SIDE = 3   # a Grad-CAM map coarser than 3 x 3 cannot say which of two objects was used


def resnet_cam_stage(visual: ModifiedResNet) -> tuple[str, torch.nn.Module]:
    """(name, module) of the ResNet stage Grad-CAM reads: the last stage (layer4, Selvaraju et al.'s last
    convolutional layer) when its map is at least MIN_CAM_SIDE on a side, else the deepest earlier stage
    that is. Stage k's map is image_size / 2^(k+1): layer4 is 7 x 7 at 224 px (unchanged for CLIP's
    RN50), but 1 x 1 at clipkit-tiny's 48 px, where layer3 (3 x 3) is read instead."""
    side = int(visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0])
    k = next((k for k in (4, 3, 2) if side // 2 ** (k + 1) >= MIN_CAM_SIDE), 1)
    return f"layer{k}", getattr(visual, f"layer{k}")


def gradcam(model, pixels: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """(B, rows, cols) Grad-CAM of the image-caption cosine (see the module docstring for the layer).

    ViT: rows x cols is the patch grid; ResNet: the feature map of `resnet_cam_stage` (layer4, input / 32,
    unless that is under 3 x 3)."""
    visual = vision_tower(model)
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (B, 3, H, W), got shape {tuple(pixels.shape)}")
    device = model_device(model)
    resnet = isinstance(visual, ModifiedResNet)
    target = resnet_cam_stage(visual)[1] if resnet else visual.transformer.resblocks[-1].ln_1
    x = pixels.to(device).float().requires_grad_(True)   # the graph exists even when the weights are frozen
    with torch.enable_grad(), torch.autocast(device.type, enabled=False), hooked({"A": target}) as store:
        img = F.normalize(model.encode_image(x).float(), dim=-1)              # (B, d)
        t = _text_rows(text_features.to(device), len(x))
        # the items do not interact (per-token norms, eval mode), so the gradient of the summed
        # cosines gives every item its own; autograd.grad leaves the weights' .grad untouched
        (G,) = torch.autograd.grad((img * t).sum(), [store["A"]])
    A, G = store["A"].detach().float(), G.float()
    if resnet:                                                  # (B, C, h, w)
        cam = F.relu((A * G.mean((2, 3), keepdim=True)).sum(1))                 # (B, h, w)
        return cam.cpu().numpy()
    A, G = _tokens(A, visual.transformer)[:, 1:], _tokens(G, visual.transformer)[:, 1:]   # (B, g*g, width)
    cam = F.relu((A * G.mean(1, keepdim=True)).sum(-1))                         # (B, g*g)
    rows, cols = visual.grid_size
    return cam.reshape(len(x), rows, cols).cpu().numpy()


def caption_maps(model, preprocess: Callable, tokenizer: Callable, images: Sequence, captions,
                 method: str = "patch", batch_size: int = 64) -> np.ndarray:
    """(B, rows, cols) maps of PIL images (or a preprocessed (B, 3, H, W) tensor) against one caption
    (a str) or one caption per image. method: "patch" (patch-token similarity), "gradcam", or "auto"
    (the patch map on a ViT, Grad-CAM on a ResNet, which has no patch tokens)."""
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; choose one of {METHODS}")
    if method == "auto":
        method = "patch" if not available_methods(model)["patch"] else "gradcam"
    pixels = images if torch.is_tensor(images) else torch.stack([preprocess(im) for im in images])
    n = len(pixels)
    if n == 0:
        raise ValueError("caption_maps got no images")
    caps = [captions] if isinstance(captions, str) else list(captions)
    if len(caps) not in (1, n):
        raise ValueError(f"{n} images but {len(caps)} captions: pass one caption, or one per image")
    text = encode_texts(model, tokenizer, caps)                                 # (1 or B, d)
    fn = patch_similarity if method == "patch" else gradcam
    out = []
    for i in range(0, n, batch_size):
        t = text if len(caps) == 1 else text[i:i + batch_size]
        out.append(fn(model, pixels[i:i + batch_size], t))
    return np.concatenate(out)


def available_methods(model) -> dict[str, str]:
    """{method: "" if available, else the one-line reason}, e.g. a ResNet has Grad-CAM but no patch map."""
    out = {}
    for method, check in (("patch", vision_blocks), ("gradcam", vision_tower)):
        try:
            check(model)
            out[method] = ""
        except NotAvailable as e:
            out[method] = str(e)
    return out
