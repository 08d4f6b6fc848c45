"""Light helpers with no heavy imports: clipkit's cache folder and file-system-safe model slugs."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def clipkit_home() -> Path:
    """Where clipkit caches trained default models and features ($CLIPKIT_HOME, else ~/.cache/clipkit)."""
    return Path(os.environ.get("CLIPKIT_HOME", Path.home() / ".cache" / "clipkit")).expanduser()


def slugify(spec: str) -> str:
    """A file-system-safe folder name for a model spec: 'ViT-B-32:openai' -> 'ViT-B-32_openai'."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.replace(str(Path.home()), "~")).strip("_.")
    if len(slug) > 80:  # long paths: keep the tail readable, make it unique with a hash
        slug = slug[-60:].lstrip("_") + "_" + hashlib.sha1(spec.encode()).hexdigest()[:8]
    return slug or "model"
