"""Webdataset tar shards (.jpg/.png/.webp + .txt per sample key): an endless training stream, and the
finite in-order reader that retrieval evaluation uses (`CaptionsWebDataset`, at the end).

    --data wds --data-path '/data/shards/{00000..00999}.tar'

Each (rank, DataLoader worker) pair reads its own stream, so the global batch never repeats a
stream. With `resample` (the default, as open_clip's --dataset-resampled) each stream draws shards
at random with replacement; without it the shard list is split across ranks and then workers
(rank-major), and each stream loops over its own shards in a fresh order every epoch, so it needs
at least world_size x workers shards. Streams are endless either way: no rank can run dry while
another still waits for it in a collective. The training loop takes exactly `steps` batches.

Resume: the streams are re-seeded from (seed, rank, worker, samples already consumed), so a
resumed run reads fresh data rather than replaying its first shards; unlike the map-style
datasets it is not a replay of the uninterrupted run.

Unreadable shards (missing, truncated tar) and unreadable samples (corrupt image, no caption) are
skipped and counted in the next item's `bad` field, like `CsvCaptions`.
"""
from __future__ import annotations

import io
import random
import sys
import tarfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from clipkit.core.fingerprints import files_fingerprint, params_fingerprint
from clipkit.data.images import BadImageError, safe_open_image
from clipkit.data.captions import negatives_item
from clipkit.data.transforms import sample_seed, seeded

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHUFFLE_BUFFER = 1000  # samples mixed across shards (open_clip: _SHARD_SHUFFLE_SIZE 2000 / 5000)


def expand_urls(spec: str) -> list[str]:
    """Brace-expand a shard spec ('a/{000..009}.tar'); '::' joins several specs."""
    import braceexpand
    return [u for part in str(spec).split("::") for u in braceexpand.braceexpand(part)]


class WdsCaptions(IterableDataset):
    """Endless image-caption stream from tar shards; items as the map-style datasets in clipkit.data."""

    def __init__(self, urls, tokenizer, transform, seed: int = 0, rank: int = 0, world_size: int = 1,
                 position: int = 0, resample: bool = True, hard_negatives: int = 0,
                 shuffle_buffer: int = SHUFFLE_BUFFER):
        self.urls = expand_urls(urls) if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError(f"no shards in {urls!r}")
        self.tokenizer, self.transform, self.seed, self.h = tokenizer, transform, seed, hard_negatives
        self.rank, self.world_size, self.position, self.resample = rank, world_size, position, resample
        self.shuffle_buffer = shuffle_buffer
        self.bad = 0          # unreadable samples/shards since the last yielded item (per worker)
        self.reported = 0

    def _on_error(self, exn: Exception) -> bool:
        """webdataset's handler: count, name the first few on stderr, and carry on."""
        self.bad += 1
        if self.reported < 5:
            self.reported += 1
            print(f"[clipkit] skipping unreadable shard data: {type(exn).__name__}: {exn}", file=sys.stderr)
        return True

    def _shards(self, rng: random.Random, worker: int, workers: int):
        """Endless {"url": ...} dicts for this (rank, worker) stream."""
        if self.resample:
            while True:
                yield {"url": rng.choice(self.urls)}
        streams = self.world_size * workers
        mine = self.urls[self.rank * workers + worker::streams]
        if not mine:
            raise ValueError(f"{len(self.urls)} shards cannot feed {self.world_size} ranks x {workers} "
                             f"workers without resampling; add shards, lower --workers, or use "
                             f"--wds-resample")
        while True:
            order = list(mine)
            rng.shuffle(order)
            yield from ({"url": u} for u in order)

    def _decode(self, sample: dict, crop_seed: int) -> dict:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None or "txt" not in sample:
            raise BadImageError(f"{sample.get('__url__')}:{sample.get('__key__')}: sample has no "
                                f"{'image' if ext is None else '.txt caption'} (files: {sorted(sample)})")
        f = io.BytesIO(sample[ext])
        f.name = f"{sample.get('__url__')}:{sample.get('__key__')}.{ext}"   # named in any error message
        img = safe_open_image(f)
        caption = sample["txt"].decode("utf-8", errors="replace").strip()
        item = {"image": seeded(self.transform, img, crop_seed),
                "text": self.tokenizer([caption])[0], "key": str(sample.get("__key__")), "bad": self.bad}
        if self.h:
            from clipkit.data.negatives import perturb_caption
            rng = np.random.default_rng(crop_seed)
            item.update(negatives_item(self.tokenizer, perturb_caption(caption, rng, self.h), self.h))
        return item

    def __iter__(self):
        import webdataset as wds
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(sample_seed(self.seed, self.rank, worker, self.position))
        samples = wds.tarfile_samples(self._shards(rng, worker, workers), handler=self._on_error)
        buffer, n = [], 0
        for sample in samples:
            # a shuffle buffer: shards are read sequentially, so mix samples across the last few
            if self.shuffle_buffer:
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                    continue
                j = rng.randrange(len(buffer))
                sample, buffer[j] = buffer[j], sample
            try:
                item = self._decode(sample, sample_seed(self.seed, self.rank, worker, self.position, n))
            except BadImageError as e:
                self._on_error(e)
                continue
            n += 1
            self.bad = 0
            yield item


def write_shards(samples, pattern: str, per_shard: int = 100) -> list[str]:
    """Write (key, image bytes, ext, caption) tuples as tar shards `pattern % i`; returns the paths.

    A small writer for tests and examples (webdataset's ShardWriter does the same at scale).
    """
    paths, tar = [], None
    for n, (key, data, ext, caption) in enumerate(samples):
        if n % per_shard == 0:
            if tar:
                tar.close()
            paths.append(pattern % len(paths))
            tar = tarfile.open(paths[-1], "w")
        for name, payload in ((f"{key}.{ext}", data), (f"{key}.txt", caption.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    if tar:
        tar.close()
    return paths


class CaptionsWebDataset(IterableDataset):
    """Tar shards in webdataset layout for evaluation, every sample once and in order: files sharing a
    key (the name up to its first dot) form a sample; the image is the first of IMAGE_EXTS present,
    captions the lines of .txt. Items `(image, [caption, ...])`, image None when it cannot be decoded.
    `urls` is a list of paths or one brace pattern ('shards/{000..009}.tar').

    Its own reader, not webdataset's (WdsCaptions): evaluation needs one ordered pass with no
    resampling, shuffling or worker split, and several captions per image."""

    def __init__(self, urls: str | Sequence[str], transform: Callable | None = None, name: str | None = None):
        if isinstance(urls, (str, Path)):
            urls = expand_urls(str(urls))
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
            ext = next((e for e in IMAGE_EXTS if e in parts), None)
            if ext is None or "txt" not in parts:
                continue  # not an image-caption sample (e.g. a stray .json)
            captions = [c.strip() for c in parts["txt"].decode("utf-8", "replace").splitlines() if c.strip()]
            try:
                image = safe_open_image(parts[ext])
            except BadImageError:   # counted and skipped by feature extraction
                yield None, captions
                continue
            yield (self.transform(image) if self.transform else image), captions

    @property
    def fingerprint(self) -> str:
        return params_fingerprint(kind="webdataset", shards=files_fingerprint(self.urls))
