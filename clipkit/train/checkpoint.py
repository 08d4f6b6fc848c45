"""Resumable training checkpoints: safetensors weights + a weights_only state file.

Every file is written atomically (clipkit.core.files). Training state
is read back with `torch.load(weights_only=True)`: no pickled code is ever executed.

A checkpoint is a folder out/checkpoints/step_XXXXXXX/ with model.safetensors (the weights) and
state.pt (optimizer, scheduler, grad scaler, every RNG of every rank, data position, step, config,
versions). The weights are written first and the state last, so a folder whose state.pt loads
is complete; `find_resume` picks the newest such folder and skips a broken one with a warning.
"""
from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from clipkit.core.files import _atomic, atomic_write_json, save_safetensors_atomic  # noqa: F401


def save_state_atomic(state: dict, path: Path) -> Path:
    """Save a training-state dict (tensors, numbers, strings, lists, dicts) with torch.save, atomically."""
    return _atomic(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """Read a training-state file with weights_only=True; a clear error for a truncated or foreign file."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"could not read training state {path}: {type(e).__name__}: {e}. The file is "
                           f"truncated, or was not written by clipkit.") from e


# --- training checkpoints ---------------------------------------------------------------------
def rng_state() -> dict:
    """Every RNG a training step may touch, as tensors and plain values (weights_only-loadable)."""
    _, py, pos = random.getstate()
    np_state = np.random.get_state()
    st = {"python": list(py), "python_pos": pos, "numpy": np_state[1].tolist(), "numpy_pos": int(np_state[2]),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    """Restore what `rng_state` saved."""
    random.setstate((3, tuple(st["python"]), st["python_pos"]))
    np.random.set_state(("MT19937", np.array(st["numpy"], dtype=np.uint32), st["numpy_pos"], 0, 0.0))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step_{step:07d}"


def save_checkpoint(folder: Path, weights: dict[str, torch.Tensor], state: dict) -> Path:
    """Write weights then state (each atomically): the folder is complete once state.pt exists."""
    save_safetensors_atomic(weights, Path(folder) / "model.safetensors")
    return save_state_atomic(state, Path(folder) / "state.pt")


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, state) of a checkpoint folder; RuntimeError naming the file if either is unreadable."""
    from safetensors.torch import load_file
    state = load_state(Path(folder) / "state.pt")
    try:
        weights = load_file(str(Path(folder) / "model.safetensors"))
    except Exception as e:
        raise RuntimeError(f"could not read weights {Path(folder) / 'model.safetensors'}: "
                           f"{type(e).__name__}: {e}") from e
    return weights, state


def find_resume(out: Path) -> Path | None:
    """The newest checkpoint folder under out/checkpoints whose weights and state both load.

    A folder that does not load (truncated by a full disk, half-copied from another machine) is
    skipped with a warning on stderr, and the next older one is tried.
    """
    for d in sorted((Path(out) / "checkpoints").glob("step_*"), reverse=True):
        try:
            load_checkpoint(d)
            return d
        except Exception as e:  # noqa: BLE001
            print(f"[clipkit] warning: skipping unreadable checkpoint {d}: {e}", file=sys.stderr)
    return None


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoint folders (keep <= 0 keeps all)."""
    if keep > 0:
        for d in sorted((Path(out) / "checkpoints").glob("step_*"))[:-keep]:
            shutil.rmtree(d, ignore_errors=True)
