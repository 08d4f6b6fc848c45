"""Contrastive training of a CLIP model: one loop, read top to bottom (CLIP paper §2.3-2.5).

    python -m clipkit.train --preset tiny --out runs/tiny            # CPU, minutes
    torchrun --nproc_per_node 8 -m clipkit.train --preset small ...  # one node, 8 GPUs (DDP)

Distributed set-up comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one
`is_main` flag gates logging and saving. The loop: set-up, data, model, optimiser, then for each
step: forward -> loss dict -> backward -> step -> clamp the temperature -> log / checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from clipkit import checkpoint as ck
from clipkit.config import TrainConfig
from clipkit.data import IndexRange, SynthCaptions, train_transform
from clipkit.losses import make_loss
from clipkit.models import create_model, save_model

MAX_LOGIT_SCALE = math.log(100)  # §2.5: "clipped to prevent scaling the logits by more than 100"


def param_groups(model: torch.nn.Module, weight_decay: float):
    """AdamW groups: decay on weight matrices only; none on gains, biases, embeddings' scale or the
    temperature (paper appendix F / open_clip: `p.ndim < 2 or 'bn'/'ln'/'bias'/'logit_scale' in n`)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cosine_with_warmup(warmup: int, total: int):
    """Linear warm-up to the base lr over `warmup` steps, then cosine decay to 0 at `total` (§2.5)."""
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def rng_state() -> dict:
    """Every RNG a step touches, as tensors and plain values (loadable with weights_only=True)."""
    st = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
          "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2]),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate((3, tuple(st["python"]), st["python_pos"]))
    np.random.set_state(("MT19937", np.array(st["numpy"], dtype=np.uint32), st["numpy_pos"], 0, 0.0))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def find_resume(out: Path) -> Path | None:
    """The newest checkpoint folder under out/checkpoints whose state file loads; skips broken ones."""
    for d in sorted((out / "checkpoints").glob("step_*"), reverse=True):
        try:
            ck.load_state(d / "state.pt")
            return d
        except Exception as e:  # truncated by a crash mid-copy, or deleted weights
            print(f"[clipkit] skipping unreadable checkpoint {d}: {e}", file=sys.stderr)
    return None


class ContrastiveForward(torch.nn.Module):
    """Wraps a CLIP model so one call returns the loss's arguments (and DDP sees one forward).

    forward(images (B,3,S,S), texts (B,L), neg_texts (B,H,L) | None) -> dict of loss arguments.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, texts, neg_texts=None):
        m = self.model
        out = {"image_features": m.encode_image(images, normalize=True), "logit_scale": m.logit_scale}
        if neg_texts is not None:
            b, h, L = neg_texts.shape
            feats = m.encode_text(torch.cat([texts, neg_texts.reshape(b * h, L)]), normalize=True)
            out["text_features"], out["neg_text_features"] = feats[:b], feats[b:].reshape(b, h, -1)
        else:
            out["text_features"] = m.encode_text(texts, normalize=True)       # (B, d)
        if getattr(m, "logit_bias", None) is not None:
            out["logit_bias"] = m.logit_bias
        return out


def to_device(batch: dict, device) -> tuple:
    """(images, texts, neg_texts | None) on the device, copied asynchronously from pinned memory."""
    neg = batch.get("neg_text")
    return (batch["image"].to(device, non_blocking=True), batch["text"].to(device, non_blocking=True),
            None if neg is None else neg.to(device, non_blocking=True))


def train(cfg: TrainConfig, hooks=()) -> Path:
    """Run training as configured; returns the output folder (a loadable clipkit checkpoint)."""
    # --- distributed set-up from torchrun's environment ------------------------------------
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    is_main = rank == 0
    device = torch.device(cfg.device if cfg.device != "auto" else
                          (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)   # per-rank crops; the model is built from cfg.seed below

    # --- model, data, optimiser ------------------------------------------------------------
    model, _, _ = create_model(cfg.model, seed=cfg.seed,
                               **({"init_logit_bias": -10.0} if cfg.loss == "siglip" else {}))
    model.to(device)
    import open_clip
    tokenizer = open_clip.get_tokenizer(cfg.model)
    image_size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) \
        else model.visual.image_size
    total_samples = cfg.steps * cfg.batch_size * world_size
    dataset = SynthCaptions(total_samples, tokenizer, train_transform(image_size), seed=cfg.seed,
                            hard_negatives=cfg.hard_negatives,
                            render_size=int(round(image_size * 1.125)))
    loss_fn = make_loss(cfg.loss)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **({"fused": True} if fused else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup, cfg.steps))
    start_step = 0

    # --- resume: weights, optimiser, schedule, RNGs, data position ------------------------
    resume = find_resume(out) if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume is not None:
        from clipkit.models import load_weights
        load_weights(model, resume / "model.safetensors")
        state = ck.load_state(resume / "state.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
        start_step = int(state["step"])
        if is_main:
            print(f"[clipkit] resumed from {resume} at step {start_step}", file=sys.stderr)
    train_model = ContrastiveForward(model)
    if ddp:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[local_rank] if device.type == "cuda" else None)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.workers,
                        sampler=IndexRange(start_step * cfg.batch_size * world_size,
                                           total_samples - start_step * cfg.batch_size * world_size,
                                           rank, world_size),
                        pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    # --- logging ---------------------------------------------------------------------------
    log = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_json(out / "config.json", cfg.to_dict())
        log = open(out / "log.jsonl", "a")
    t0, seen = time.perf_counter(), 0

    # --- the loop --------------------------------------------------------------------------
    model.train()
    step = start_step
    for batch in loader:
        with autocast:
            model_out = train_model(*to_device(batch, device))
            losses = loss_fn(**model_out)
            total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():  # §2.5: the temperature is clipped so logits are scaled by at most 100
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        step += 1
        seen += batch["image"].shape[0] * world_size

        if is_main and (step % cfg.log_every == 0 or step == cfg.steps):
            rate = seen / (time.perf_counter() - t0)
            rec = {"step": step, "loss": round(total.item(), 5), "lr": scheduler.get_last_lr()[0],
                   "temperature": round(1 / model.logit_scale.exp().item(), 5),
                   "samples_per_s": round(rate, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(f"[clipkit] step {step}/{cfg.steps} loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                  f"T {rec['temperature']:.4f} {rate:.0f} samples/s", file=sys.stderr, flush=True)
        for hook in hooks:
            hook(step=step, model=model, is_main=is_main)
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            _save_checkpoint(out, model, optimizer, scheduler, step, cfg, is_main, world_size)

    # --- final weights: a loadable clipkit checkpoint folder --------------------------------
    if is_main:
        _save_checkpoint(out, model, optimizer, scheduler, step, cfg, is_main, world_size)
        save_model(model, out, arch=cfg.model, extra={"config": cfg.to_dict(), "step": step,
                                                      "versions": versions()})
        log.close()
    if ddp:
        dist.barrier()
    return out


def _save_checkpoint(out, model, optimizer, scheduler, step, cfg, is_main, world_size):
    """Weights (safetensors) + full training state (weights_only-loadable), each written atomically."""
    rngs = [rng_state()]
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, rng_state())
        rngs = gathered
    if not is_main:
        return
    d = out / "checkpoints" / f"step_{step:07d}"
    ck.save_safetensors_atomic({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                               d / "model.safetensors")
    ck.save_state_atomic({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "rng": rngs if world_size > 1 else rngs[0], "step": step,
                          "config": cfg.to_dict(), "versions": versions()}, d / "state.pt")


def versions() -> dict:
    import open_clip
    import clipkit
    return {"clipkit": clipkit.__version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "python": sys.version.split()[0]}


def main(argv=None) -> int:
    cfg = TrainConfig.from_argv(argv)
    out = train(cfg)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
