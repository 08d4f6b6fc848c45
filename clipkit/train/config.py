"""The training configuration: one typed dataclass, named presets, CLI flags and YAML files.

Precedence: dataclass defaults < --preset < --config FILE.yaml < explicit --flags. Every field has
a help string that becomes its `clipkit train --help` text; the whole config is saved with every
run (out/config.json), every checkpoint (state.pt) and the final model (clipkit.json). With
--resume, the run's own out/config.json comes first, so `clipkit train --out RUN --resume auto`
alone continues RUN; flags on top may change only RESUMABLE_CHANGES.

Nothing here imports torch: `clipkit train --help` and every usage error answer in well under a second.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

# the losses of train/losses.py LOSSES (tests/test_config.py checks that the two agree), named here so
# that validating a config does not import torch
LOSS_NAMES = ("clip", "negclip", "siglip")


def loss_names() -> tuple[str, ...]:
    """LOSS_NAMES, or once train/losses.py is imported its LOSSES, which code may extend at run time."""
    losses = sys.modules.get("clipkit.train.losses")
    return tuple(losses.LOSSES) if losses is not None else LOSS_NAMES

# config fields that may change between a run and its resumption without changing the training
RESUMABLE_CHANGES = {"resume", "out", "workers", "device", "progress", "tensorboard", "log_every",
                     "save_every", "keep_checkpoints", "eval_every", "eval_n", "steps", "nonfinite"}


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # --- what to train ---
    model: str = _f("clipkit-tiny", "architecture: a clipkit preset (clipkit-nano/tiny/small) or an open_clip "
                    "name (ViT-B-32, RN50, ...)")
    loss: str = _f("clip", "clip (InfoNCE) | negclip (InfoNCE + hard-negative captions) | siglip (sigmoid "
                   "loss with a learned bias)")
    hard_negatives: int = _f(0, "hard-negative captions per image for --loss negclip: the synthetic grammar "
                             "swaps the count/relation/binding; real captions are perturbed by rules")
    # --- data ---
    data: str = _f("synthetic", "synthetic (generated scenes) | csv (a CSV/TSV of image paths and captions) | "
                   "wds (webdataset tar shards) | noise (random inputs, for speed tests)")
    minimal_pairs: float = _f(0.0, "synthetic data: the fraction of corpus positions given as a scene and its "
                              "twin in one batch (clipkit.world.pairs: the same scene but for the count, the "
                              "relation, the colour binding or the size its caption states); 0: random scenes "
                              "only, as the paper's batches")
    data_path: str = _f("", "the CSV file (csv), or the shard spec '/data/{00000..00999}.tar' (wds)")
    csv_img_key: str = _f("filepath", "CSV column holding image paths (relative paths: from the CSV's folder)")
    csv_caption_key: str = _f("title", "CSV column holding captions")
    csv_separator: str = _f("", "CSV separator; '' detects tab, comma, semicolon or pipe from the header")
    wds_resample: bool = _f(True, "draw webdataset shards with replacement (else split shards over ranks "
                            "and workers, one pass per epoch)")
    max_bad_fraction: float = _f(0.25, "stop with an error when more than this fraction of the images read "
                                 "was unreadable (corrupt, truncated, empty, not an image, too large): a "
                                 "wrong folder or a broken copy, not a few dirty files")
    augment: str = _f("crop", "crop (the paper's only augmentation: a random square crop of the resized image) | "
                      "none (resize + centre crop, as at evaluation) | heavy (SimCLR-style random resized crop, "
                      "horizontal flip, colour jitter: for the augmentation experiment; flips and jitter can "
                      "falsify left/right and colour words in captions)")
    workers: int = _f(1, "DataLoader worker processes per rank (decode + crop); 0 loads in the main process")
    # --- optimisation: CLIP paper §2.5 and appendix F ---
    steps: int = _f(2000, "optimiser steps (the cosine schedule spans them)")
    batch_size: int = _f(256, "per-rank micro-batch; the contrastive batch is batch_size x accum_steps x ranks")
    accum_steps: int = _f(1, "micro-batches per optimiser step. Features of all of them form one "
                          "contrastive batch (cached, then recomputed with gradients: ~1.33x the compute)")
    lr: float = _f(1e-3, "peak learning rate (paper: 5e-4 for ViT-B/32 at batch 32,768)")
    weight_decay: float = _f(0.2, "AdamW decoupled weight decay on weight matrices; none on gains, biases, "
                             "the temperature (paper: 0.2)")
    beta1: float = _f(0.9, "AdamW beta1 (paper: 0.9)")
    beta2: float | None = _f(None, "AdamW beta2; none = paper's choice: 0.98 for ViTs, 0.999 for ResNets")
    eps: float | None = _f(None, "AdamW epsilon; none = paper's choice: 1e-6 for ViTs, 1e-8 for ResNets")
    warmup: int = _f(100, "linear warm-up steps before the cosine decay to zero")
    grad_clip_norm: float = _f(0.0, "clip the global gradient norm to this (0: no clipping, as the paper)")
    # --- speed ---
    precision: str = _f("fp32", "fp32 | bf16 (autocast) | fp16 (autocast + dynamic loss scaling); on CUDA, "
                        "fp32 matmuls use TF32")
    compile: bool = _f(False, "torch.compile the model (slower start, faster steps on GPU)")
    grad_checkpointing: bool = _f(False, "recompute activations in the backward pass (less memory, ~30%% "
                                  "more compute)")
    channels_last: bool = _f(True, "channels_last memory format for convolutional image towers on CUDA "
                             "(ignored for ViTs)")
    device: str = _f("auto", "auto (cuda:LOCAL_RANK if available, else cpu) | cpu | cuda | cuda:N")
    # --- guards ---
    nonfinite: str = _f("skip", "on a non-finite loss (agreed across ranks): skip (drop the update) | stop "
                        "(raise, naming the step and the batch's sample ids)")
    # --- output and logging ---
    out: str = _f("runs/clipkit-tiny", "output folder: config.json, log.jsonl, tensorboard/, checkpoints/, "
                  "and the final model.safetensors + clipkit.json")
    seed: int = _f(0, "seed of the model init, the data order and the crops")
    log_every: int = _f(50, "steps between log records (the only host-device syncs)")
    save_every: int = _f(500, "steps between resumable checkpoints (0: at the end only)")
    keep_checkpoints: int = _f(0, "keep only the newest N checkpoints (0: keep all)")
    resume: str = _f("", "'' (start fresh) | auto (newest loadable checkpoint in --out) | a checkpoint folder")
    tensorboard: bool = _f(True, "write TensorBoard scalars to out/tensorboard")
    progress: bool = _f(True, "show a progress bar (samples/s) on stderr")
    eval_every: int = _f(0, "steps between evaluations on held-out synthetic scenes: retrieval + counting "
                         "and spatial probes (0: never)")
    eval_n: int = _f(200, "held-out scenes / probe items per evaluation")

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        checks = [
            (self.loss in loss_names(), f"loss must be one of {sorted(loss_names())}, got {self.loss!r}"
                                        f"{_did_you_mean(self.loss, loss_names())}"),
            (0.0 <= self.minimal_pairs <= 1.0, f"minimal_pairs is a fraction in [0, 1], got {self.minimal_pairs}"),
            (not (self.minimal_pairs and self.data != "synthetic"),
             "minimal_pairs needs --data synthetic (only the generated world can draw a scene's twin)"),
            (self.hard_negatives >= 0, f"hard_negatives must be >= 0, got {self.hard_negatives}"),
            (not (self.hard_negatives and self.loss != "negclip"),
             "hard_negatives > 0 needs --loss negclip (the other losses would ignore them)"),
            (self.data in ("synthetic", "csv", "wds", "noise"),
             f"data must be synthetic, csv, wds or noise, got {self.data!r}"),
            (bool(self.data_path) or self.data not in ("csv", "wds"), f"--data {self.data} needs --data-path"),
            (self.augment in ("crop", "none", "heavy"),
             f"augment must be crop, none or heavy, got {self.augment!r}"),
            (0 <= self.max_bad_fraction <= 1, f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (a contrastive batch needs negatives), "
                                   f"got {self.batch_size}"),
            (self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.beta1 < 1 and (self.beta2 is None or 0 <= self.beta2 < 1), "betas must be in [0, 1)"),
            (self.eps is None or self.eps > 0, f"eps must be > 0, got {self.eps}"),
            (self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}"),
            (self.grad_clip_norm >= 0, f"grad_clip_norm must be >= 0, got {self.grad_clip_norm}"),
            (self.precision in ("fp32", "bf16", "fp16"),
             f"precision must be fp32, bf16 or fp16, got {self.precision!r}"),
            (self.nonfinite in ("skip", "stop"), f"nonfinite must be skip or stop, got {self.nonfinite!r}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.save_every >= 0, f"save_every must be >= 0, got {self.save_every}"),
            (self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}"),
            (self.eval_every >= 0 and self.eval_n >= 1, "eval_every must be >= 0 and eval_n >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_argv(cls, argv=None) -> "TrainConfig":
        """The config of `clipkit train ARGV`; a usage error exits with one line (status 2)."""
        parser = build_parser()
        ns = parser.parse_args(argv)
        d = dict(PRESETS[ns.preset]) if ns.preset else {}
        if ns.config:
            path = Path(ns.config)
            if not path.exists():
                parser.error(f"--config {path}: no such file")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                parser.error(f"--config {path}: expected a mapping of field: value")
            d.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
        d.update({k: v for k, v in vars(ns).items() if k not in ("preset", "config") and v is not None})
        try:
            saved = run_config(d.get("out", cls.out), d) if d.get("resume") else None
            cfg = cls.from_dict({**saved, **d} if saved else d)
            if saved:
                check_resume(saved, cfg, d.get("out", cls.out))
            return cfg
        except (ValueError, TypeError) as e:
            parser.error(str(e))


def run_config(out: str, given: dict | None = None) -> dict | None:
    """The saved config (out/config.json) of the run being resumed, or None for a folder without one
    (a fresh --resume auto run starts from scratch). Its resume/out fields are left to the caller."""
    path = Path(out).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume: cannot read {path} ({e}); fix or delete it, or pass every flag "
                         f"of the run again") from None
    if not isinstance(saved, dict):
        raise ValueError(f"--resume: {path} is not a mapping of field: value")
    return {k: v for k, v in saved.items() if k not in ("resume", "out")}


def resume_conflicts(saved: dict, cfg: "TrainConfig") -> list[tuple[str, object, object]]:
    """(field, old, new) for every field that differs between a run's saved config and `cfg` and may
    not change on resume (RESUMABLE_CHANGES may); values are compared after type coercion."""
    old = TrainConfig.from_dict({**cfg.to_dict(), **{k: v for k, v in saved.items() if hasattr(cfg, k)}})
    return [(f.name, getattr(old, f.name), getattr(cfg, f.name)) for f in fields(cfg)
            if f.name not in RESUMABLE_CHANGES and getattr(old, f.name) != getattr(cfg, f.name)]


def check_resume(saved: dict, cfg: "TrainConfig", source) -> None:
    """ValueError in one line naming each field, its old and its new value, if `cfg` changes a
    field of the run it resumes that RESUMABLE_CHANGES does not allow to change."""
    bad = resume_conflicts(saved, cfg)
    if bad:
        diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in bad)
        raise ValueError(f"--resume: the run in {source} was trained with other settings ({diff}); on resume "
                         f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change. Drop those flags to "
                         f"continue the run, or give a new --out to start another.")


PRESETS = {
    # the embedded default: clipkit-tiny (a CLIP ResNet, 48 px) on synthetic scenes, minutes on 2 CPU cores.
    # 1300 x 128 = 166k pairs of the varied world (clipkit.world.styles); half the even-odd corpus
    # positions are minimal pairs (clipkit.world.pairs), which is what teaches relations. Issue 14's
    # trials (README, "What the default model learns"): the ViT of the same size learns neither relations
    # nor binding from the varied world at this budget, with or without pairs or NegCLIP negatives;
    # 1300 steps rather than 1000: at 1000 whether relations are learned depends on the data order
    "tiny": {"model": "clipkit-tiny", "steps": 1300, "batch_size": 128, "lr": 2e-3, "warmup": 130,
             "minimal_pairs": 0.5},
    # seconds on a CPU: for tests and smoke runs
    "nano": {"model": "clipkit-nano", "steps": 20, "batch_size": 16, "lr": 1e-3, "warmup": 5,
             "save_every": 10, "log_every": 5, "workers": 0, "tensorboard": False},
    # a larger synthetic model for one GPU
    "small-gpu": {"model": "clipkit-small", "steps": 20000, "batch_size": 1024, "lr": 1e-3,
                  "warmup": 500, "precision": "bf16", "workers": 8},
    # the paper's ViT-B/32 recipe per GPU on webdataset shards (set --data-path; lr for batch 32k)
    "vit-b-32": {"model": "ViT-B-32", "data": "wds", "batch_size": 256, "lr": 5e-4, "warmup": 2000,
                 "steps": 100_000, "precision": "bf16", "workers": 8, "save_every": 2000,
                 "keep_checkpoints": 3, "log_every": 100},
}


# --- CLI ------------------------------------------------------------------------------------
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (the full usage of 50 flags buries the error),
    with did-you-mean for a misspelled flag; `clipkit probe` and `clipkit eval` use it too."""

    def error(self, message: str):
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m and m.group(1).startswith("--"):
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            message += _did_you_mean(m.group(1).split("=")[0], flags)
        if message.startswith(("unrecognized arguments", "argument ", "the following arguments")):
            message += f" (`{self.prog} --help` lists every flag)"   # an argparse error, not a value's
        self.exit(2, f"{self.prog}: error: {message}\n")


def _base_type(f) -> tuple[type, bool]:
    """(type, optional) of a field, from its annotation string ('float | None' -> (float, True))."""
    parts = [p.strip() for p in str(f.type).split("|")]
    return _TYPES[next(p for p in parts if p != "None")], "None" in parts


def _coerce(f, v):
    """A value of the field's type: YAML reads 1e-3 as a string, the CLI gives strings."""
    typ, optional = _base_type(f)
    if v is None or (optional and isinstance(v, str) and v.lower() in ("none", "auto", "")):
        if optional:
            return None
        raise ValueError(f"TrainConfig: {f.name} cannot be empty")
    if typ is bool:
        if isinstance(v, str) and v.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return v.lower() in ("true", "yes", "1", "on")
        if not isinstance(v, (bool, int)):
            raise ValueError(f"TrainConfig: {f.name} must be true or false, got {v!r}")
        return bool(v)
    try:
        out = typ(v)
    except (TypeError, ValueError):
        raise ValueError(f"TrainConfig: {f.name} must be {typ.__name__}, got {v!r}") from None
    if typ is int and isinstance(v, float) and v != out:
        raise ValueError(f"TrainConfig: {f.name} must be an integer, got {v!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    """`clipkit train` flags: --preset, --config, and one flag per TrainConfig field with its help."""
    p = Parser(
        prog="clipkit train", description="Train a CLIP model contrastively (CLIP paper §2.3-2.5). "
        "Precedence: defaults < --preset < --config < flags. One GPU: clipkit train ...; "
        "several: torchrun --nproc_per_node N -m clipkit.train ...")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named preset: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    p.add_argument("--config", default=None, help="a YAML file of field: value (keys as below, - or _)")
    for f in fields(TrainConfig):
        typ, optional = _base_type(f)
        flag = f"--{f.name.replace('_', '-')}"
        help_ = f"{f.metadata['help']} (default: {f.default})"
        if typ is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            p.add_argument(flag, dest=f.name, type=str if optional else typ, default=None, help=help_,
                           metavar=typ.__name__.upper())
    return p
