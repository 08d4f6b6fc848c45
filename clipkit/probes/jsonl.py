"""Real-data multiple choice from a JSONL file, so CountBench, What'sUp, SugarCrepe, ARO, ... run
through the same engine as the synthetic probes.

One line per item:  {"image": "relative/or/absolute.jpg", "captions": ["...", "..."], "answer": 0,
                     "any_factor": "value", ...}
Image paths are relative to the JSONL file (or to options.image_root). Extra keys become factors
in the tidy table, so `breakdowns: [relation]` works when lines carry "relation". Unreadable
images are skipped and counted (`skipped` in the summary's log), never silently dropped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dataclasses import dataclass

from clipkit.probes.engine import Item, choice_kind
from clipkit.probes.protocol import ProbeSpec, SpecError


@dataclass
class JsonlOptions:
    """Options of a JSONL spec."""
    path: str = ""                 # the JSONL file (checked when the items are read, so templates load)
    image_root: str = ""           # folder image paths are relative to; "": the JSONL file's folder
    max_bad_fraction: float = 0.05  # fail when more than this fraction of images cannot be read

    def __post_init__(self):
        if not 0 <= self.max_bad_fraction <= 1:
            raise SpecError(f"option 'max_bad_fraction' must be in [0, 1], got {self.max_bad_fraction}")


@choice_kind("jsonl", JsonlOptions, n_default=200)
def items(spec: ProbeSpec) -> list[Item]:
    """Read up to spec.n items from options.path (see the module docstring for the line format)."""
    from clipkit.data.images import safe_open_image
    o = spec.options
    path = Path(o.path).expanduser()
    if not o.path or not path.exists():
        raise SpecError(f"{spec.name}: options.path must name an existing JSONL file, got {o.path!r}")
    root = Path(o.image_root).expanduser() if o.image_root else path.parent
    out, bad, seen = [], [], 0
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if len(out) >= spec.n:
            break
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}:{lineno}: not JSON ({e})") from e
        missing = {"image", "captions", "answer"} - set(rec)
        if missing:
            raise SpecError(f"{path}:{lineno}: missing key(s) {sorted(missing)}; each line needs image, "
                            f"captions, answer")
        caps, ans = rec["captions"], rec["answer"]
        if not (isinstance(caps, list) and len(caps) >= 2 and all(isinstance(c, str) for c in caps)):
            raise SpecError(f"{path}:{lineno}: 'captions' must be a list of at least 2 strings")
        if not (isinstance(ans, int) and 0 <= ans < len(caps)):
            raise SpecError(f"{path}:{lineno}: 'answer' must be an index into captions, got {ans!r}")
        seen += 1
        img_path = Path(rec["image"]).expanduser()
        img_path = img_path if img_path.is_absolute() else root / img_path
        try:
            image = safe_open_image(img_path)
        except (OSError, ValueError) as e:
            bad.append(f"{img_path}: {e}")
            continue
        factors = {k: v for k, v in rec.items() if k not in ("image", "captions", "answer")}
        out.append(Item(image, caps, ans, {"image": str(rec["image"]), **factors}))
    if bad:
        print(f"[clipkit] {spec.name}: skipped {len(bad)} of {seen} items with unreadable images, "
              f"e.g. {bad[0]}", file=sys.stderr)
        if len(bad) > o.max_bad_fraction * seen:
            raise SpecError(f"{spec.name}: {len(bad)} of {seen} images unreadable (more than "
                            f"max_bad_fraction={o.max_bad_fraction}); first: {bad[0]}")
    return out
