"""Contrastive training of a CLIP model: one loop, read top to bottom (CLIP paper §2.3-2.5).

    clipkit train --preset tiny --out runs/tiny                       # the embedded default, CPU
    clipkit train --model ViT-B-32 --data csv --data-path train.csv --precision bf16 --workers 8
    torchrun --nproc_per_node 8 -m clipkit train --preset vit-b-32 --data-path '/data/{00000..00999}.tar'

Distributed set-up comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one
`is_main` flag gates logging and saving. Set-up: model, optimiser, resume, data. Then each step:
forward -> loss dict -> backward (over accum_steps micro-batches) -> guarded update -> clamp the
temperature -> log / checkpoint / hooks. The host reads device values only at log steps (and the
non-finite flag one step late), so it never drains the GPU's queue of work.

SIGINT (Ctrl-C) and SIGTERM (what a scheduler sends before it kills a job) stop the run between two
steps (with several ranks: at the next log step, where the ranks agree): a checkpoint of the last
step is saved and `TrainingInterrupted` names it and the command that continues the run.
"""
from __future__ import annotations

import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from clipkit.train import checkpoint as ck
from clipkit.train.config import RESUMABLE_CHANGES, TrainConfig, check_resume  # noqa: F401  (re-exported)
from clipkit.data.loaders import build_loader
from clipkit.train.losses import make_loss
from clipkit.models import create_model, save_model
from clipkit.train.log import RunLog
from clipkit.train.step import (MAX_LOGIT_SCALE, ContrastiveForward, LaggedFlag, adam_betas_eps,
                                cosine_with_warmup, forward_backward, nonfinite_flag, optimizer_step, param_groups)


class NonFiniteLoss(RuntimeError):
    """--nonfinite stop: the loss was NaN or inf; the message names the step and the batch's samples."""


class TooManyBadSamples(RuntimeError):
    """More than --max-bad-fraction of the images read were unreadable."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a checkpoint was saved. The message is one line (the step,
    the checkpoint, the command that continues); `exit_code` is the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


class StopSignals:
    """While active, SIGINT and SIGTERM only set `signum` (the loop stops at the next safe point); a
    second signal raises KeyboardInterrupt at once. Installed only in the main thread (Python's rule)."""

    def __init__(self):
        self.signum, self._old = 0, {}

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> "StopSignals":
        """Catch SIGINT and SIGTERM (in the main thread; elsewhere Python does not allow it)."""
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def setup_distributed(cfg: TrainConfig):
    """(ddp, rank, world_size, device, created_group) from torchrun's environment.

    NCCL between GPUs, gloo between CPU processes; each process drives the GPU of its LOCAL_RANK.
    """
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device.replace("auto", "cpu")
    device = torch.device(want)
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else local_rank)
        torch.cuda.set_device(device)
    created = ddp and not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    return ddp, rank, world_size, device, created


def train(cfg: TrainConfig, hooks=()) -> Path:
    """Run training as configured; returns the output folder (a loadable clipkit model folder)."""
    # --- distributed set-up, seeds ---------------------------------------------------------
    ddp, rank, world_size, device, own_group = setup_distributed(cfg)
    is_main = rank == 0
    out = Path(cfg.out)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)   # the model init below uses cfg.seed alone: the same on every rank
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # fp32 matmuls on tensor cores (as open_clip)
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    # --- model -----------------------------------------------------------------------------
    # CLIP §2.5 initialises the temperature to 0.07 (open_clip's default); SigLIP §3 uses scale 10, bias -10
    siglip = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0} if cfg.loss == "siglip" else {}
    model, _, _ = create_model(cfg.model, seed=cfg.seed, **siglip)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    from open_clip.transformer import VisionTransformer
    channels_last = cfg.channels_last and device.type == "cuda" and not isinstance(model.visual, VisionTransformer)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    size = model.visual.image_size
    image_size = size if isinstance(size, int) else size[0]

    # --- optimiser, schedule, precision (§2.5, appendix F) ---------------------------------
    betas, eps = adam_betas_eps(model, cfg.beta1, cfg.beta2, cfg.eps)
    # fused: one kernel for all parameters (CUDA and CPU), and it can skip a step on the device
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=betas, eps=eps,
                                  fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup, cfg.steps))
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    loss_fn = make_loss(cfg.loss)
    global_batch = cfg.batch_size * cfg.accum_steps * world_size   # one contrastive batch

    # --- resume: weights, optimiser, schedule, scaler, RNGs, data position -----------------
    start_step, position = 0, 0
    counters = {"bad_samples": 0, "read": 0, "skipped_steps": 0}
    resume = ck.find_resume(out) if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume is not None:
        weights, state = ck.load_checkpoint(resume)
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ck.set_rng_state(state["rng"][rank % len(state["rng"])])
        start_step, position = int(state["step"]), int(state["position"])
        counters.update(state.get("counters", {}))
        check_resume(state["config"], cfg, resume)    # only RESUMABLE_CHANGES may differ
        if is_main:
            print(f"[clipkit] resumed from {resume} at step {start_step} (sample {position})", file=sys.stderr)

    # --- wrap: one forward returning the loss's arguments; DDP; compile ---------------------
    train_model = ContrastiveForward(model)
    if ddp:
        # buffers (the causal mask) never change: no need to broadcast them every forward
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if cfg.compile:
        train_model = torch.compile(train_model)

    # --- data: this rank's micro-batches, from the resumed position --------------------------
    import open_clip
    loader = build_loader(cfg, open_clip.get_tokenizer(cfg.model), image_size, model.context_length, rank,
                          world_size, first=position, num_batches=(cfg.steps - start_step) * cfg.accum_steps,
                          pin_memory=device.type == "cuda")

    # --- logging (main process only) -------------------------------------------------------
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_json(out / "config.json", cfg.to_dict())
    log = RunLog(out if is_main else None, cfg.tensorboard, cfg.progress, total=cfg.steps, initial=start_step,
                 unit_per_step=global_batch)

    def save(step: int) -> None:
        """A resumable checkpoint: weights + the full training state (every rank's RNGs)."""
        rngs = [ck.rng_state()]
        if ddp:
            rngs = [None] * world_size
            dist.all_gather_object(rngs, ck.rng_state())
        if is_main:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else {}, "rng": rngs, "step": step,
                     "position": position + (step - start_step) * global_batch, "counters": dict(counters),
                     "config": cfg.to_dict(), "versions": versions()}
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            ck.save_checkpoint(ck.step_dir(out, step), weights, state)
            ck.prune_checkpoints(out, cfg.keep_checkpoints)

    # --- the loop ----------------------------------------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    guard = LaggedFlag(device)                      # reads each step's non-finite flag a step late
    zero = torch.zeros((), device=device)
    loss_sum, ok_steps, skipped = zero.clone(), zero.clone(), zero + counters["skipped_steps"]
    bad_new = read_new = 0                          # host-side counts since the last log record
    t_log, step_log = time.perf_counter(), start_step

    def flush(step: int, grad_norm=None, stopping: bool = False) -> bool:
        """Write the log record of the steps since the last one (the only place the host waits for the
        device); returns whether any rank was asked to stop (SIGINT/SIGTERM)."""
        nonlocal bad_new, read_new, t_log, step_log
        stats = torch.stack([loss_sum, ok_steps, torch.tensor(float(bad_new), device=device),
                             torch.tensor(float(read_new), device=device),
                             torch.tensor(float(stopping), device=device)])
        if ddp:
            dist.all_reduce(stats)
        lsum, n_ok, n_bad, n_read, n_stop = stats.tolist()
        counters["bad_samples"] += int(n_bad)
        counters["read"] += int(n_read)
        counters["skipped_steps"] = int(skipped.item())
        now = time.perf_counter()
        # loss: the mean over the steps since the last record (skipped steps left out)
        rec = {"step": step, "loss": round(lsum / n_ok, 5) if n_ok else None,
               "lr": scheduler.get_last_lr()[0],
               "temperature": round(math.exp(-model.logit_scale.item()), 5),
               "samples_per_s": round((step - step_log) * global_batch / (now - t_log), 1),
               "grad_norm": round(float(grad_norm), 4) if grad_norm is not None else None,
               **counters, "bad_fraction": round(counters["bad_samples"] / max(1, counters["read"]), 5)}
        if getattr(model, "logit_bias", None) is not None:
            rec["logit_bias"] = round(model.logit_bias.item(), 4)
        log.record(rec)
        if not log.bar:
            loss_text = "nan" if rec["loss"] is None else f"{rec['loss']:.4f}"
            log.say(f"step {step}/{cfg.steps} loss {loss_text} lr {rec['lr']:.2e} "
                    f"T {rec['temperature']:.4f} {rec['samples_per_s']:.0f} samples/s")
        check_bad_fraction(cfg, counters)
        loss_sum.zero_()
        ok_steps.zero_()
        bad_new = read_new = 0
        t_log, step_log = time.perf_counter(), step
        return n_stop > 0

    batches = iter(loader)
    model.train()
    done = start_step                               # the last step whose update is applied
    stop_all = False                                # some rank was signalled (agreed at a log step)
    signals = StopSignals().install()
    try:
        for step in range(start_step + 1, cfg.steps + 1):      # step = updates done after this one
            if stop_all or (signals.signum and not ddp):   # one process stops between any two steps
                break
            try:
                micro = [next(batches) for _ in range(cfg.accum_steps)]
            except RuntimeError:   # a terminal's Ctrl-C reaches the loader's workers too: they are gone
                if signals.signum and not ddp:
                    break
                raise
            optimizer.zero_grad(set_to_none=True)
            loss = forward_backward(train_model, loss_fn, micro, device, autocast, scaler, channels_last)
            bad = nonfinite_flag(loss, ddp)                    # agreed across ranks
            save_now = cfg.save_every and step % cfg.save_every == 0
            log_now = step % cfg.log_every == 0 or step == cfg.steps or save_now     # counters go in checkpoints
            grad_norm = optimizer_step(optimizer, params, bad, scaler, cfg.grad_clip_norm, want_norm=log_now)
            scheduler.step()
            with torch.no_grad():  # §2.5: the temperature is clipped so logits are scaled by at most 100
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            loss_sum += torch.where(bad > 0, zero, loss.float())
            ok_steps += 1 - bad
            skipped += bad
            for b in micro:                                    # CPU tensors from the loader: no sync
                n_bad = int(b["bad"].sum())
                bad_new, read_new = bad_new + n_bad, read_new + len(b["text"]) + n_bad
            fired = guard.push(step, bad, [b.get("index", b.get("key")) for b in micro])
            if fired:
                on_nonfinite(cfg, *fired, rank, log)
            log.advance()

            if log_now:
                stop_all = flush(step, grad_norm, stopping=bool(signals.signum))
            done = step
            if save_now and step < cfg.steps:
                save(step)
            for hook in hooks:
                metrics = hook(step=step, model=model, is_main=is_main)
                if metrics:
                    log.record({"step": step, **metrics}, prefix="eval")
        fired = guard.pop()
        if fired:
            on_nonfinite(cfg, *fired, rank, log)

        if done < cfg.steps:   # --- signalled: a checkpoint of the last step, and the way back ------
            if step_log < done:       # counters go in checkpoints: the record of the steps since the last
                flush(done)
            if done > start_step and not (cfg.save_every and done % cfg.save_every == 0):
                save(done)
            raise TrainingInterrupted(interrupted_message(signals.signum, done, cfg.steps, out, world_size),
                                      signals.signum or signal.SIGTERM)

        # --- the end: last checkpoint, and the final weights as a loadable model folder --------
        save(cfg.steps)
        if is_main:
            save_model(model, out, arch=cfg.model, extra={"config": cfg.to_dict(), "step": cfg.steps,
                                                          "versions": versions(), **counters})
            log.say(f"done: {cfg.steps} steps ({counters['skipped_steps']} skipped: non-finite loss); "
                    f"{counters['bad_samples']} unreadable images skipped of {counters['read']} read; "
                    f"model in {out}")
    finally:
        signals.restore()
        log.close()
    if own_group:
        dist.barrier()
        dist.destroy_process_group()
    return out


def interrupted_message(signum: int, step: int, steps: int, out: Path, world_size: int) -> str:
    """The one line printed when a signal stops a run: the step, the checkpoint, the exact command."""
    name = signal.Signals(signum).name if signum else "a signal"
    launcher = "clipkit train" if world_size == 1 else \
        f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', world_size)} -m clipkit train"
    ckpt = ck.step_dir(out, step) if step else "none (no step was done)"
    return (f"interrupted by {name} at step {step}/{steps}; checkpoint: {ckpt}; continue with: "
            f"{launcher} --out {shlex.quote(str(out))} --resume auto")


def on_nonfinite(cfg: TrainConfig, step: int, ids, rank: int, log: RunLog) -> None:
    """Apply --nonfinite to a step whose loss was NaN/inf on some rank (its update was already skipped)."""
    flat = [x for part in ids for x in (part.tolist() if torch.is_tensor(part) else list(part))]
    if cfg.nonfinite == "stop":
        raise NonFiniteLoss(
            f"step {step}: the loss is not finite (NaN or inf) on at least one rank; stopping (--nonfinite "
            f"stop). Samples of this step on rank {rank}: {flat}. The update was not applied; resume from the "
            f"last checkpoint with --resume auto, e.g. with a lower --lr or --grad-clip-norm 1.")
    log.say(f"step {step}: non-finite loss, update skipped (--nonfinite skip); samples: {flat[:16]}"
            f"{' ...' if len(flat) > 16 else ''}")


def check_bad_fraction(cfg: TrainConfig, counters: dict) -> None:
    """Stop when too many images were unreadable: the data is broken, not just a little dirty."""
    bad, read = counters["bad_samples"], counters["read"]
    if bad and bad > cfg.max_bad_fraction * read:
        raise TooManyBadSamples(
            f"{bad} of {read} images read ({bad / read:.1%}) were unreadable, more than --max-bad-fraction "
            f"{cfg.max_bad_fraction}; the first few are named above. Check the data (paths, a truncated "
            f"copy), or raise --max-bad-fraction.")


def versions() -> dict:
    import open_clip

    import clipkit
    # plain str: torch.__version__ is a TorchVersion, which a weights_only load refuses
    return {"clipkit": str(clipkit.__version__), "torch": str(torch.__version__),
            "open_clip": str(open_clip.__version__), "python": sys.version.split()[0]}
