"""Is a finished run folder the current recipe of a preset? `python -m clipkit.train.recipe DIR [PRESET]`.

Exit 0 when DIR's config.json holds every field of the preset (default tiny) at the preset's value, 1
otherwise (printing the first field that differs). `make model` asks this of the cached default model,
so that a model trained to an older recipe (e.g. before the default became a ResNet) is moved aside
and retrained instead of being reported as today's default.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from clipkit.train.config import PRESETS


def differs(run_dir, preset: str = "tiny") -> str:
    """'' when the run's config.json matches `preset` on every field it sets, else what differs."""
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"{path} is not readable ({e})"
    for key, want in PRESETS[preset].items():
        if saved.get(key) != want:
            return f"{key} is {saved.get(key)!r}, the {preset} preset has {want!r}"
    return ""


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2 or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        return 2
    why = differs(*args)
    if why:
        print(f"[clipkit] {args[0]}: {why}", file=sys.stderr)
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
