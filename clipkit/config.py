"""The training configuration: one typed dataclass, named presets, CLI flags and YAML files.

Precedence: dataclass defaults < --preset < --config FILE.yaml < explicit --flags. Every field has
a comment that becomes its `--help` text; the whole config is saved with every checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    model: str = field(default="clipkit-tiny", metadata={"help": "architecture: a clipkit preset or open_clip name"})
    out: str = field(default="runs/clipkit-tiny", metadata={"help": "output folder (checkpoints, logs, final weights)"})
    loss: str = field(default="clip", metadata={"help": "clip | negclip (hard negatives) | siglip"})
    hard_negatives: int = field(default=0, metadata={"help": "hard-negative captions per image (negclip loss)"})
    steps: int = field(default=2000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=256, metadata={"help": "per-device batch size (global = x world size)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (paper: 5e-4 for ViT-B at batch 32k)"})
    weight_decay: float = field(default=0.2, metadata={"help": "AdamW decoupled weight decay (paper §2.5: 0.2)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (paper: 0.9)"})
    beta2: float = field(default=0.98, metadata={"help": "AdamW beta2 (paper: 0.98 for ViTs, 0.999 for ResNets)"})
    eps: float = field(default=1e-6, metadata={"help": "AdamW epsilon (paper: 1e-6 for ViTs, 1e-8 for ResNets)"})
    warmup: int = field(default=100, metadata={"help": "linear warm-up steps before cosine decay"})
    precision: str = field(default="fp32", metadata={"help": "fp32 | bf16 (autocast)"})
    workers: int = field(default=1, metadata={"help": "DataLoader worker processes rendering/decoding data"})
    seed: int = field(default=0, metadata={"help": "seed of the model init, the data order and the crops"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    log_every: int = field(default=50, metadata={"help": "steps between log lines (the only host syncs)"})
    save_every: int = field(default=500, metadata={"help": "steps between resumable checkpoints (0: end only)"})
    resume: str = field(default="", metadata={"help": "'' | auto (newest loadable checkpoint in out) | a step folder"})


    def __post_init__(self):
        checks = [
            (self.loss in ("clip", "negclip", "siglip"), f"loss must be clip, negclip or siglip, got {self.loss!r}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (a contrastive batch needs negatives), got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup, f"warmup must be >= 0, got {self.warmup}"),
            (self.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {self.precision!r}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.hard_negatives >= 0, f"hard_negatives must be >= 0, got {self.hard_negatives}"),
            (not (self.hard_negatives and self.loss != "negclip"),
             "hard_negatives > 0 needs --loss negclip (the other losses would ignore them)"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_argv(cls, argv=None) -> "TrainConfig":
        parser = build_parser()
        ns = parser.parse_args(argv)
        d = dict(PRESETS[ns.preset]) if ns.preset else {}
        if ns.config:
            path = Path(ns.config)
            if not path.exists():
                parser.error(f"--config {path}: no such file")
            d.update(yaml.safe_load(path.read_text()) or {})
        d.update({k: v for k, v in vars(ns).items() if k not in ("preset", "config") and v is not None})
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:
            parser.error(str(e))


PRESETS = {
    # the embedded default: clipkit-tiny on synthetic scenes, a few minutes on 2 CPU cores
    "tiny": {"model": "clipkit-tiny", "steps": 2000, "batch_size": 256, "lr": 1e-3, "warmup": 100},
    # seconds on a CPU: for tests and smoke runs
    "nano": {"model": "clipkit-nano", "steps": 20, "batch_size": 16, "lr": 1e-3, "warmup": 5,
             "save_every": 10, "log_every": 5, "workers": 0},
    # a larger synthetic model for one GPU
    "small-gpu": {"model": "clipkit-small", "steps": 20000, "batch_size": 1024, "lr": 1e-3,
                  "warmup": 500, "precision": "bf16", "workers": 8},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clipkit train", description="Train a CLIP model contrastively (CLIP paper §2.3-2.5). "
        "Precedence: defaults < --preset < --config < flags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a named preset")
    p.add_argument("--config", default=None, help="a YAML file of field: value")
    for f in fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=f.type if f.type in (int, float, str)
                       else {"int": int, "float": float, "str": str}[str(f.type)], default=None,
                       help=f"{f.metadata['help']} (default: {f.default})")
    return p
