"""Image-caption datasets for retrieval evaluation (CSV, webdataset shards, synthetic) and `evaluate_retrieval`.

Each image has one or more captions: items are `(image, [caption, ...])`, image None when the file
cannot be read (counted and skipped by feature extraction, its captions dropped with it).

    CaptionsCSV          a CSV with `filepath` and `title` columns; rows sharing a filepath are one
                         image with several captions (COCO/Flickr style: five rows per image)
    CaptionsWebDataset   tar shards of <key>.jpg|png|webp + <key>.txt (one caption per line)
    SyntheticCaptions    held-out synthetic scenes with their canonical caption (and variants)

Recall@k itself is `clipkit.evaluate.retrieval.retrieval_metrics` (image->text averaged over images,
text->image over captions, as CLIP_benchmark does).
"""
from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from clipkit.world import synth
from clipkit.core.fingerprints import files_fingerprint, params_fingerprint
from clipkit.data.classification import _SYNTH_SOURCE
from clipkit.data.images import safe_open_image
from clipkit.evaluate.features import READ_ERRORS, encode_texts, extract_image_features
from clipkit.evaluate.retrieval import retrieval_metrics

log = logging.getLogger("clipkit.evaluate")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class CaptionsCSV(Dataset):
    """Images with their captions from a CSV (separator detected); relative paths are taken from
    `image_root`, else from the CSV's folder."""

    def __init__(self, path, transform: Callable | None = None, image_root=None, img_key: str = "filepath",
                 caption_key: str = "title", sep: str | None = None, name: str | None = None):
        import pandas as pd
        self.path = Path(path).expanduser()
        table = pd.read_csv(self.path, sep=sep, engine="python", dtype=str, keep_default_na=False)
        missing = {img_key, caption_key} - set(table.columns)
        if missing:
            raise ValueError(f"{self.path}: no column(s) {sorted(missing)}; columns are {list(table.columns)}")
        root = Path(image_root).expanduser() if image_root else self.path.parent
        groups: dict[str, list[str]] = {}
        for fp, cap in zip(table[img_key], table[caption_key]):
            groups.setdefault(fp, []).append(cap)      # first-appearance order of images
        self.files = [Path(fp) if Path(fp).is_absolute() else root / fp for fp in groups]
        self.captions = list(groups.values())
        self.transform, self.name = transform, name or self.path.stem

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            image = safe_open_image(self.files[i])
        except READ_ERRORS as e:
            log.debug("skipping %s: %s", self.files[i], e)
            return None, self.captions[i]
        return (self.transform(image) if self.transform else image), self.captions[i]

    @property
    def fingerprint(self) -> str:
        return params_fingerprint(kind="csv", csv=files_fingerprint([self.path]), images=files_fingerprint(self.files))


class CaptionsWebDataset(IterableDataset):
    """Tar shards in webdataset layout, read in order: files sharing a key (the name up to its first
    dot) form a sample; the image is the first of IMAGE_EXTENSIONS present, captions the lines of .txt.
    `urls` is a list of paths or one brace pattern ('shards/{000..009}.tar')."""

    def __init__(self, urls: str | Sequence[str], transform: Callable | None = None, name: str | None = None):
        if isinstance(urls, (str, Path)):
            from braceexpand import braceexpand  # a dependency of webdataset
            urls = list(braceexpand(str(urls)))
        self.urls = [str(Path(u).expanduser()) for u in urls]
        missing = [u for u in self.urls if not Path(u).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) not found, e.g. {missing[0]}")
        self.transform, self.name = transform, name or Path(self.urls[0]).parent.name or "webdataset"

    def _samples(self):
        for url in self.urls:
            with tarfile.open(url) as tar:
                key, parts = None, {}
                for m in tar:
                    if not m.isfile():
                        continue
                    folder, base = m.name.rpartition("/")[::2]
                    k, _, ext = base.partition(".")
                    if (folder, k) != key and parts:
                        yield parts
                        parts = {}
                    key = (folder, k)
                    parts[ext.lower()] = tar.extractfile(m).read()
                if parts:
                    yield parts

    def __iter__(self):
        for parts in self._samples():
            ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
            if ext is None or "txt" not in parts:
                continue  # not an image-caption sample (e.g. a stray .json)
            captions = [c.strip() for c in parts["txt"].decode("utf-8", "replace").splitlines() if c.strip()]
            try:
                image = safe_open_image(parts[ext])
            except READ_ERRORS:
                yield None, captions
                continue
            yield (self.transform(image) if self.transform else image), captions

    @property
    def fingerprint(self) -> str:
        return params_fingerprint(kind="webdataset", shards=files_fingerprint(self.urls))


class SyntheticCaptions(Dataset):
    """n held-out synthetic corpus scenes (seed 999 is never trained on) with their canonical caption,
    formatted by each of `templates` ("{c}" alone = the caption itself) for several captions per image."""

    def __init__(self, n: int = 500, seed: int = 999, transform: Callable | None = None, image_size: int = 72,
                 templates: Sequence[str] = ("{c}",), name: str | None = None):
        self.n, self.seed, self.transform, self.image_size = n, seed, transform, image_size
        self.templates = list(templates)
        self.name = name or "synthetic_captions"
        self.scenes = [synth.corpus_item(i, seed=seed) for i in range(n)]
        self.captions = [[t.format(c=synth.caption(s)) for t in self.templates] for s in self.scenes]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = synth.render(self.scenes[i], size=self.image_size)
        return (self.transform(image) if self.transform else image), self.captions[i]

    @property
    def fingerprint(self) -> str:
        return params_fingerprint(kind="synthetic_captions", n=self.n, seed=self.seed, templates=self.templates,
                                  image_size=self.image_size, synth=_SYNTH_SOURCE)


def image_captions_collate(batch):
    """(images (B, 3, H, W), [[captions of image 0], ...]): CLIP_benchmark's retrieval batch layout."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def evaluate_retrieval(model, tokenizer, dataset, ks=(1, 5, 10), batch_size: int = 256, num_workers: int = 0,
                       cache=True, progress: bool = True) -> dict:
    """image->text and text->image recall@k of `model` on an image-caption dataset.

    Keys as CLIP_benchmark writes them: image_retrieval_recall@k (text -> image, averaged over
    captions) and text_retrieval_recall@k (image -> text, averaged over images).
    """
    feats = extract_image_features(model, dataset, batch_size=batch_size, num_workers=num_workers,
                                   cache=cache, progress=progress)
    captions = feats.labels                                        # one list per kept image
    flat = [c for caps in captions for c in caps]
    if not flat:
        raise ValueError(f"{getattr(dataset, 'name', dataset)} has no captions")
    text_to_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    text = encode_texts(model, tokenizer, flat)                    # (T, d)
    return retrieval_metrics(feats.features.numpy(), text.numpy(), text_to_image, ks)
