"""Per-layer and patch-token features of open_clip models, read by forward hooks on every residual block.

What a probe can ask of a model depends on where in it a factor is still (or already) represented.
This module returns, for a batch of images or texts, the pooled token after every transformer block,
before the projection into the joint space and after it, from one ordinary forward pass with
forward hooks (no copy of open_clip's forward to drift out of date):

    image (VisionTransformer):  block0 ... block{L-1}   the class token (or the patch mean for
                                                         pool_type "avg") of each block's output, (N, width)
                                pre_proj                 ln_post of the pooled token: the input to `proj`, (N, width)
                                post_proj                `encode_image`, unnormalised, (N, embed_dim)
                                patches (optional)       the last block's patch tokens, (N, grid*grid, width)
    image (ModifiedResNet):     stage1 ... stage4        each stage's feature map averaged over space, (N, C)
                                post_proj                `encode_image` (attention pooling includes the projection)
    text:                       block0 ... block{L-1}   the pooled token (argmax / EOT token) of each block, (N, width)
                                pre_proj                 ln_final at that token: the input to `text_projection`
                                post_proj                `encode_text`, unnormalised

Features are cached like every other feature (clipkit.evaluate.cache), keyed by the model's
fingerprint, a hash of the pixels or strings, the preprocessing and the precision, under a cache
entry name per layer set ("layers-image", "layers-image+patches", "layers-text").
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer, text_global_pool

from clipkit.evaluate.cache import as_cache, model_fingerprint, transform_fingerprint
from clipkit.evaluate.features import _autocast, _precision, model_device


class NotAvailable(ValueError):
    """The architecture lacks what was asked for (patch tokens, transformer blocks, a pooled token)."""


@dataclass
class LayerFeatures:
    """Pooled features at every depth of one tower, in depth order, on CPU in float32."""
    tower: str                                # "image" or "text"
    names: list[str]                          # depth order, e.g. ["block0", "block1", "pre_proj", "post_proj"]
    pooled: dict[str, torch.Tensor]           # name -> (N, D)
    patches: torch.Tensor | None = None       # (N, grid*grid, width): last block's patch tokens (ViT, patches=True)
    grid: tuple[int, int] | None = None       # (rows, cols) of the patch grid
    from_cache: bool = False
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.pooled[self.names[-1]])

    def matrix(self, name: str) -> np.ndarray:
        """(N, D) float64 array of one layer, for the linear probe."""
        if name not in self.pooled:
            raise KeyError(f"no layer {name!r}; layers: {self.names}")
        return self.pooled[name].double().numpy()


@contextmanager
def hooked(modules: dict[str, torch.nn.Module]):
    """Record the output of each named module during the forward passes inside the block: {name: output}."""
    store: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _in, out, n=n: store.__setitem__(n, out))
               for n, m in modules.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def vision_tower(model) -> VisionTransformer | ModifiedResNet:
    """model.visual if it is an open_clip ViT or ModifiedResNet; NotAvailable (one line) otherwise."""
    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None:
            raise NotAvailable("this ViT pools with attention (CoCa-style): its tokens reach the joint space "
                               "only through the pooler, so per-layer pooled and patch features are not defined")
        if visual.pool_type == "none":
            raise NotAvailable("this ViT has pool_type 'none': no pooled token to read per layer")
        return visual
    if isinstance(visual, ModifiedResNet):
        return visual
    raise NotAvailable(f"image tower {type(visual).__name__} is neither an open_clip VisionTransformer nor a "
                       "ModifiedResNet: per-layer features, patch tokens and maps are not available for it")


def vision_blocks(model) -> VisionTransformer:
    """model.visual if it is an open_clip ViT (with transformer blocks and patch tokens); NotAvailable otherwise."""
    visual = vision_tower(model)
    if isinstance(visual, ModifiedResNet):
        raise NotAvailable("ModifiedResNet (a CLIP ResNet) has no transformer blocks or patch tokens: per-block "
                           "features and patch-caption maps need a ViT (a ResNet gets stage features and Grad-CAM)")
    return visual


def _tokens(out: torch.Tensor, transformer) -> torch.Tensor:
    # open_clip's Transformer runs batch-first unless built otherwise; hooks see (L, N, D) then
    return out if getattr(transformer, "batch_first", True) else out.transpose(0, 1)


def _image_batch(model, visual, x: torch.Tensor, patches: bool) -> tuple[dict, torch.Tensor | None]:
    """Pooled features at every depth of one batch of pixels (N, 3, H, W); patch tokens if asked."""
    if isinstance(visual, ModifiedResNet):
        if patches:
            vision_blocks(model)   # raises: a ResNet has no patch tokens
        stages = {f"stage{i}": getattr(visual, f"layer{i}") for i in range(1, 5)}
        with hooked(stages) as store:
            post = model.encode_image(x)
        out = {n: store[n].float().mean((2, 3)) for n in stages}     # (N, C): global average pool
        return {**out, "post_proj": post.float()}, None
    blocks = visual.transformer.resblocks
    names = [f"block{i}" for i in range(len(blocks))]
    with hooked({**dict(zip(names, blocks)), "pre_proj": visual.ln_post}) as store:
        post = model.encode_image(x)                                            # (N, embed_dim)
    tok = {n: _tokens(store[n], visual.transformer) for n in names}             # (N, 1 + g*g, width)
    out = {n: visual._global_pool(t)[0].float() for n, t in tok.items()}        # (N, width)
    ln = store["pre_proj"]
    # ln_post runs on every token (then pooled), or on the pooled token (final_ln_after_pool)
    out["pre_proj"] = (visual._global_pool(ln)[0] if ln.ndim == 3 else ln).float()
    out["post_proj"] = post.float()
    return out, (tok[names[-1]][:, 1:].float() if patches else None)


def _image_names(visual) -> list[str]:
    if isinstance(visual, ModifiedResNet):
        return [f"stage{i}" for i in range(1, 5)] + ["post_proj"]
    return [f"block{i}" for i in range(len(visual.transformer.resblocks))] + ["pre_proj", "post_proj"]


def images_fingerprint(images) -> str:
    """A hash of the pixels (mode, size and bytes of every PIL image, or a tensor's values)."""
    h = hashlib.sha256()
    if torch.is_tensor(images):
        h.update(str((tuple(images.shape), str(images.dtype))).encode())
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
    else:
        for im in images:
            h.update(f"{im.mode}{im.size}".encode())
            h.update(im.tobytes())
    return h.hexdigest()[:16]


def _cached(store, name: str, model, parts: dict, compute: Callable[[], LayerFeatures], tower: str) -> LayerFeatures:
    """Serve `compute()` from the feature cache entry `name` when `store` holds it; write it otherwise."""
    t0 = time.perf_counter()
    key = store.key(model=model_fingerprint(model), **parts) if store else None
    if store and (hit := store.load(key, name)):
        tensors, meta = hit
        return LayerFeatures(tower, list(meta["names"]), {n: tensors[n] for n in meta["names"]},
                             tensors.get("patches"), tuple(meta["grid"]) if meta.get("grid") else None,
                             True, time.perf_counter() - t0)
    feats = compute()
    if store:
        tensors = {**feats.pooled, **({"patches": feats.patches} if feats.patches is not None else {})}
        store.save(key, tensors, {"names": feats.names, "grid": feats.grid, "n": len(feats),
                                  "seconds": round(feats.seconds, 3)}, name)
    return feats


def image_layer_features(model, preprocess: Callable | None, images, batch_size: int = 128, patches: bool = False,
                         cache=False) -> LayerFeatures:
    """Pooled image features after every block, before and after the projection (see the module docstring).

    images: PIL images (turned into pixels by `preprocess`) or an already preprocessed (N, 3, H, W)
    tensor (preprocess=None). patches=True also keeps the last block's patch tokens (ViTs only).
    cache: False (default), True (clipkit_home()/features), a folder or a FeatureCache.
    """
    visual = vision_tower(model)
    if patches:
        vision_blocks(model)
    if not torch.is_tensor(images):
        images = list(images)
        if preprocess is None:
            raise ValueError("PIL images need the model's preprocess; pass preprocess=... (or a pixel tensor)")
    if len(images) == 0:
        raise ValueError("image_layer_features got no images")
    device = model_device(model)

    def compute() -> LayerFeatures:
        t0 = time.perf_counter()
        parts: dict[str, list] = {}
        patch_parts = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                chunk = images[i:i + batch_size]
                x = chunk if torch.is_tensor(chunk) else torch.stack([preprocess(im) for im in chunk])
                with _autocast(device):
                    out, p = _image_batch(model, visual, x.to(device), patches)
                for n, v in out.items():
                    parts.setdefault(n, []).append(v.float().cpu())
                if p is not None:
                    patch_parts.append(p.float().cpu())
        names = _image_names(visual)
        grid = tuple(visual.grid_size) if isinstance(visual, VisionTransformer) else None
        # concatenated outside inference mode: ordinary tensors for the caller
        return LayerFeatures("image", names, {n: torch.cat(parts[n]) for n in names},
                             torch.cat(patch_parts) if patch_parts else None, grid, False, time.perf_counter() - t0)

    store = as_cache(cache)
    name = "layers-image+patches" if patches else "layers-image"
    parts = {"dataset": images_fingerprint(images), "kind": name, "precision": _precision(device),
             "preprocess": "pixels" if torch.is_tensor(images) else transform_fingerprint(preprocess)}
    return _cached(store, name, model, parts, compute, "image")


def text_tower(model) -> dict:
    """The text tower's parts: blocks, ln_final, projection, pooling. NotAvailable for non-open_clip towers."""
    tower = getattr(model, "text", None)            # CustomTextCLIP keeps a TextTransformer in .text
    if tower is not None:
        if not hasattr(tower, "transformer") or not hasattr(tower, "ln_final"):
            raise NotAvailable(f"text tower {type(tower).__name__} (e.g. a Hugging Face encoder) has no open_clip "
                               "transformer blocks: per-layer text features are not available for it")
        if getattr(tower, "cls_emb", None) is not None:
            raise NotAvailable("this text tower appends a class token (CoCa-style): per-layer pooling is not defined")
        return {"transformer": tower.transformer, "ln_final": tower.ln_final, "pool_type": tower.pool_type,
                "eos": getattr(tower, "eos_id", None), "encode": model.encode_text}
    if not hasattr(model, "transformer") or not hasattr(model, "ln_final"):
        raise NotAvailable(f"{type(model).__name__} has no open_clip text transformer: per-layer text features "
                           "are not available for it")
    return {"transformer": model.transformer, "ln_final": model.ln_final, "pool_type": model.text_pool_type,
            "eos": getattr(model, "text_eos_id", None), "encode": model.encode_text}


def text_layer_features(model, tokenizer: Callable, texts: Sequence[str], batch_size: int = 512,
                        cache=False) -> LayerFeatures:
    """Pooled text features (at the token `encode_text` pools: argmax / EOT) after every block, before and
    after the projection. Duplicate strings are kept (rows follow `texts`)."""
    texts = list(texts)
    if not texts:
        raise ValueError("text_layer_features got no texts")
    t = text_tower(model)
    blocks = t["transformer"].resblocks
    names = [f"block{i}" for i in range(len(blocks))] + ["pre_proj", "post_proj"]
    device = model_device(model)

    def pool(x, tokens):   # (B, T, width) -> (B, width) at the token encode_text pools
        return text_global_pool(x, tokens, t["pool_type"], eos_token_id=t["eos"]).float()

    def compute() -> LayerFeatures:
        t0 = time.perf_counter()
        parts: dict[str, list] = {n: [] for n in names}
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                tokens = tokenizer(texts[i:i + batch_size]).to(device)          # (B, context)
                mods = {**{f"block{j}": b for j, b in enumerate(blocks)}, "pre_proj": t["ln_final"]}
                with _autocast(device), hooked(mods) as store:
                    post = t["encode"](tokens)                                   # (B, embed_dim)
                for j in range(len(blocks)):
                    parts[f"block{j}"].append(pool(_tokens(store[f"block{j}"], t["transformer"]), tokens).cpu())
                parts["pre_proj"].append(pool(store["pre_proj"], tokens).cpu())   # ln_final runs per token
                parts["post_proj"].append(post.float().cpu())
        return LayerFeatures("text", names, {n: torch.cat(v) for n, v in parts.items()}, None, None, False,
                             time.perf_counter() - t0)

    store = as_cache(cache)
    h = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    parts = {"dataset": h, "kind": "layers-text", "precision": _precision(device),
             "preprocess": f"tokenizer:{type(tokenizer).__name__}:{getattr(tokenizer, 'context_length', '')}"}
    return _cached(store, "layers-text", model, parts, compute, "text")
