"""Real-data multiple choice from a JSONL file, so CountBench, What'sUp, SugarCrepe, ARO, ... run
through the same engine as the synthetic probes.

One line per item:  {"image": "relative/or/absolute.jpg", "captions": ["...", "..."], "answer": 0,
                     "any_factor": "value", ...}
Image paths are relative to the JSONL file (or to options.image_root) and must lie inside that
folder unless `allow_outside_root: true` (a JSONL from elsewhere cannot read ../../ files by accident).
Extra keys become factors in the tidy table, so `breakdowns: [relation]` works when lines carry
"relation"; a key that names one of the table's own columns (e.g. "item") is refused. Items that
share an image are one cluster for the CI. Unreadable images are skipped, one stderr line each, and
counted (`read` and `skipped` in the summary), never silently dropped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dataclasses import dataclass

from clipkit.probes.engine import RESERVED, Item, ItemList, choice_kind
from clipkit.probes.protocol import ProbeSpec, SpecError


@dataclass
class JsonlOptions:
    """Options of a JSONL spec."""
    path: str = ""                 # the JSONL file (checked when the items are read, so templates load)
    image_root: str = ""           # folder image paths are relative to; "": the JSONL file's folder
    max_bad_fraction: float = 0.05  # fail when more than this fraction of images cannot be read
    allow_outside_root: bool = False  # may image paths point outside the image root (absolute or ../)?

    def __post_init__(self):
        if not 0 <= self.max_bad_fraction <= 1:
            raise SpecError(f"option 'max_bad_fraction' must be in [0, 1], got {self.max_bad_fraction}")


@choice_kind("jsonl", JsonlOptions, n_default=200)
def items(spec: ProbeSpec) -> list[Item]:
    """Read up to spec.n items from options.path (see the module docstring for the line format), as an
    ItemList with `read` (items read) and `skipped` (unreadable images)."""
    from clipkit.data.images import safe_open_image
    o = spec.options
    path = Path(o.path).expanduser()
    if not o.path or not path.exists():
        raise SpecError(f"{spec.name}: options.path must name an existing JSONL file, got {o.path!r}")
    root = (Path(o.image_root).expanduser() if o.image_root else path.parent).resolve()
    out, bad, seen = [], 0, 0
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
        if clash := sorted(set(rec) & (set(RESERVED) - {"answer"})):
            raise SpecError(f"{path}:{lineno}: key(s) {clash} name columns of the result table; rename them "
                            f"(e.g. 'source_{clash[0]}')")
        seen += 1
        img_path = Path(rec["image"]).expanduser()
        img_path = (img_path if img_path.is_absolute() else root / img_path).resolve()
        if not o.allow_outside_root and not img_path.is_relative_to(root):
            raise SpecError(f"{path}:{lineno}: image {rec['image']!r} lies outside {root}; move it there or "
                            f"set the option allow_outside_root: true")
        try:
            image = safe_open_image(img_path)
        except (OSError, ValueError) as e:
            bad += 1   # the decoder's message names the file once; the fix follows it
            print(f"[clipkit] {spec.name}: skipped line {lineno}: {e} (allowed: --option "
                  f"max_bad_fraction={o.max_bad_fraction})", file=sys.stderr)
            continue
        factors = {k: v for k, v in rec.items() if k not in ("image", "captions", "answer")}
        out.append(Item(image, caps, ans, {"image": str(rec["image"]), **factors}, cluster=str(img_path)))
    if bad:
        print(f"[clipkit] {spec.name}: skipped {bad} of {seen} items with unreadable images", file=sys.stderr)
    if bad > o.max_bad_fraction * seen:
        raise SpecError(f"{spec.name}: {bad} of {seen} images unreadable (listed above), more than "
                        f"max_bad_fraction={o.max_bad_fraction}; fix them or raise it, e.g. --option "
                        f"max_bad_fraction={min(1.0, round(bad / seen + 0.005, 2))}")
    return ItemList(out, read=seen, skipped=bad)
