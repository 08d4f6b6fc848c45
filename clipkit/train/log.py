"""Where a training run reports: a JSONL log, TensorBoard scalars, a progress bar, stderr lines.

Only the main process (rank 0) makes a RunLog; the others get `RunLog(None)`, which ignores
every call. Records are flat dicts of numbers keyed by name; each goes to out/log.jsonl as one
line and to TensorBoard as one scalar per key under train/ (or eval/ for evaluation records).

A run that starts at step `initial` (a resume, or 0 for a fresh start in the same folder) first
drops the records after that step, which the interrupted run wrote after its last checkpoint and
the resumed run writes again: log.jsonl and TensorBoard (its purge_step) hold each step once.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from clipkit.core.files import atomic_write_text


class RunLog:
    def __init__(self, out: Path | None, tensorboard: bool = True, progress: bool = True,
                 total: int = 0, initial: int = 0, unit_per_step: int = 1):
        self.active = out is not None
        self.file = self.writer = self.bar = None
        if not self.active:
            return
        path = Path(out) / "log.jsonl"
        drop_after(path, initial)
        self.file = open(path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # TensorBoard hides the events at steps >= purge_step of the earlier files of this folder
            self.writer = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=initial + 1)
        if progress:
            from tqdm import tqdm
            # counted in samples, so the bar's rate is samples/s; updated per step with no device sync
            # redrawn every second on a terminal; into a log file (make report > log) every 30 s,
            # so a CI log holds a few dozen lines, not thousands of carriage-return updates
            self.bar = tqdm(total=total * unit_per_step, initial=initial * unit_per_step, unit="sample",
                            unit_scale=True, dynamic_ncols=True, file=sys.stderr, smoothing=0.1,
                            mininterval=1 if sys.stderr.isatty() else 30)
        self.unit = unit_per_step

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps * self.unit)

    def record(self, rec: dict, prefix: str = "train") -> None:
        """Write one record (must contain "step") to the JSONL log and TensorBoard."""
        if not self.active:
            return
        rec = {"time": round(time.time(), 3), **rec} if prefix == "train" else {"kind": prefix, **rec}
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in rec.items():
                if k not in ("step", "time", "kind") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{k}", v, rec["step"])
        if prefix == "train" and self.bar is not None:
            self.bar.set_postfix(loss=f"{float('nan') if rec['loss'] is None else rec['loss']:.4f}", refresh=False)

    def say(self, msg: str) -> None:
        """A line on stderr that does not break the progress bar."""
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(f"[clipkit] {msg}", file=sys.stderr)
        else:
            print(f"[clipkit] {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar, TensorBoard and the log file; later calls are ignored."""
        for h in (self.bar, self.writer, self.file):
            if h is not None:
                h.close()
        self.bar = self.writer = self.file = None
        self.active = False


def drop_after(path: Path, step: int) -> int:
    """Rewrite the JSONL log `path` (atomically) without its records after `step`, and without a line
    cut by a crash; returns how many lines were dropped (0 and no rewrite when none is)."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    if len(keep) < len(lines):
        atomic_write_text(path, "".join(f"{line}\n" for line in keep))
    return len(lines) - len(keep)
