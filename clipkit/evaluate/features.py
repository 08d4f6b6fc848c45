"""Batched image and text feature extraction (L2-normalised, inference mode, autocast on GPU), cached on disk.

Two levels:
- `encode_images` / `encode_texts`: features of an in-memory list of PIL images or strings (probes).
- `extract_image_features`: features of a whole dataset through a DataLoader with workers, sharded
  across torchrun ranks when a process group is up, with a progress bar, and served from the
  on-disk cache (`clipkit.evaluate.cache`) on a second request.

Datasets yield `(image, label)` pairs: image a preprocessed (3, H, W) tensor, or None for a sample
that could not be read (counted as skipped, never silently dropped); label an int class or any
other object (e.g. a list of captions). A dataset that has a `fingerprint` attribute is cacheable.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, default_collate

from clipkit.evaluate.cache import as_cache, model_fingerprint, transform_fingerprint

log = logging.getLogger("clipkit.evaluate")
# Reading a sample can fail on a corrupt or truncated file; these are skipped and counted.
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# On CUDA, DataLoader workers hand over bf16 pixels: half the bytes to move, pin and copy (a ViT-B
# at 224 px otherwise moves 600 kB per image, and on a GPU that is the bottleneck). It changes no
# feature: under bf16 autocast the first layer (patch/stem convolution) casts its input to bf16 anyway.
GPU_BF16_PIXELS = True
PIN_MEMORY = True  # pinned host batches: asynchronous host-to-device copies
# On CPU, workers hand over quarter batches that the main process joins into one forward batch of
# batch_size: the first forward then waits for two quarters per worker instead of one whole batch
# per worker (half the images), and the forward batch, hence every feature, is the same. The time
# goes to the forward on CPU (see bench/README.md), so that first wait is time nothing else hides.
# Not on CUDA: there pinned batches go straight to the device; joining them would need a copy.
CPU_LOADER_CHUNKS = 4


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device):
    # bf16 autocast on GPU (features are renormalised in fp32 below); a no-op on CPU
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _precision(device: torch.device) -> str:
    return "bf16-autocast" if device.type == "cuda" else "fp32"


@torch.inference_mode()
def encode_images(model, preprocess: Callable, images: Iterable[Image.Image], batch_size: int = 256) -> torch.Tensor:
    """(N, d) float32 L2-normalised image features for an iterable of PIL images (CPU tensor)."""
    device = model_device(model)
    feats, buf = [], []

    def flush():
        x = torch.stack([preprocess(im) for im in buf]).to(device)
        with _autocast(device):
            f = model.encode_image(x)
        feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        buf.clear()

    for im in images:
        buf.append(im)
        if len(buf) == batch_size:
            flush()
    if buf:
        flush()
    if not feats:
        raise ValueError("encode_images got no images")
    return torch.cat(feats)


@torch.inference_mode()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
    """(N, d) float32 L2-normalised text features; duplicate strings are encoded once."""
    if len(texts) == 0:
        raise ValueError("encode_texts got no texts")
    device = model_device(model)
    unique = list(dict.fromkeys(texts))
    out = []
    for i in range(0, len(unique), batch_size):
        tokens = tokenizer(unique[i:i + batch_size]).to(device)
        with _autocast(device):
            f = model.encode_text(tokens)
        out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
    feats = torch.cat(out)
    index = {t: j for j, t in enumerate(unique)}
    return feats[torch.tensor([index[t] for t in texts])]


# --- whole datasets ---------------------------------------------------------------------------
@dataclass
class Features:
    """Image features of a dataset, in dataset order, without the samples that could not be read."""
    features: torch.Tensor        # (N, d) float32, L2-normalised, on CPU
    labels: torch.Tensor | list   # (N,) int64 class ids, or a list of N other labels (e.g. captions)
    index: torch.Tensor           # (N,) int64: the dataset index of each row
    skipped: int                  # samples that could not be read (corrupt files)
    from_cache: bool              # served from the on-disk cache
    seconds: float                # wall time of this request

    @property
    def targets(self) -> torch.Tensor:
        """The labels as an (N,) int64 tensor (classification datasets)."""
        if not isinstance(self.labels, torch.Tensor):
            raise TypeError("this dataset's labels are not class ids")
        return self.labels


class _Indexed(Dataset):
    """(index, image or None, label or None) for a map-style dataset; a read error becomes None."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            image, label = self.dataset[i][:2]
        except READ_ERRORS as e:
            log.debug("skipping sample %d: %s: %s", i, type(e).__name__, e)
            return i, None, None
        return i, image, label


class _IndexedIterable(IterableDataset):
    """The same for an iterable dataset (webdataset shards): the index is the position in the stream.

    With several DataLoader workers each would yield the whole stream, so iterable datasets are read
    in the main process (num_workers does not apply), whole, on every rank.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        for i, item in enumerate(self.dataset):
            yield (i, *item[:2])


def _collate(batch, dtype: torch.dtype | None = None):
    """Stack the readable samples (cast to `dtype`); count the unreadable ones.
    -> (index, images, labels, skipped)."""
    ok = [b for b in batch if b[1] is not None]
    idx = torch.tensor([b[0] for b in ok], dtype=torch.long)
    # default_collate stacks straight into shared memory inside a worker: no second copy on the way
    # to the main process (a plain torch.stack would be copied into shared memory when sent)
    images = default_collate([b[1].to(dtype) if dtype else b[1] for b in ok]) if ok else None
    labels = [b[2] for b in ok]
    if labels and all(isinstance(y, int) or (torch.is_tensor(y) and y.ndim == 0) for y in labels):
        labels = torch.tensor([int(y) for y in labels], dtype=torch.long)
    return idx, images, labels, len(batch) - len(ok)


def _dist() -> tuple[int, int]:
    """(rank, world size) of the running torchrun process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _joined(loader, chunks: int):
    """The loader's batches joined `chunks` at a time: (index, images or None, labels, skipped)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == chunks:
            yield _join(group)
            group = []
    if group:
        yield _join(group)


def _join(group):
    if len(group) == 1:
        return group[0]
    images = [g[1] for g in group if g[1] is not None]
    labels = [g[2] for g in group]
    return (torch.cat([g[0] for g in group]), torch.cat(images) if images else None,
            torch.cat(labels) if all(torch.is_tensor(y) for y in labels) else
            [v for y in labels for v in (y.tolist() if torch.is_tensor(y) else y)], sum(g[3] for g in group))


def _run(model, loader, device, progress: bool, desc: str, chunks: int = 1):
    """Forward every batch (`chunks` loader batches joined into one); returns (index, features, labels,
    skipped) of this process's share."""
    from tqdm.auto import tqdm
    idx, feats, labels, skipped = [], [], [], 0
    total = -(-len(loader) // chunks) if hasattr(loader.dataset, "__len__") else None
    with torch.inference_mode():
        for i, x, y, s in tqdm(_joined(loader, chunks), total=total, desc=desc, unit="batch", disable=not progress,
                               leave=False):
            skipped += s
            if x is None:
                continue
            x = x.to(device, non_blocking=True)
            with _autocast(device):
                f = model.encode_image(x)                              # (B, d)
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
            idx.append(i)
            labels.extend(y.tolist() if torch.is_tensor(y) else y)
    # concatenated outside inference mode: callers get ordinary tensors (usable with autograd)
    d = getattr(getattr(model, "visual", None), "output_dim", 0)
    return (torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long),
            torch.cat(feats) if feats else torch.zeros(0, d), labels, skipped)


def extract_image_features(model, dataset, batch_size: int = 256, num_workers: int = 0, cache=True,
                           progress: bool = True, name: str | None = None) -> Features:
    """L2-normalised image features of every readable sample of `dataset`, from the cache when possible.

    The cache key is (model fingerprint, `dataset.fingerprint`, fingerprint of `dataset.transform`,
    precision); datasets without a `fingerprint` are never cached. `cache` is True (the default
    cache under clipkit_home()/features), False, a folder, or a `FeatureCache`. Under torchrun each
    rank encodes every world_size-th sample and all ranks return the full, ordered result; rank 0
    writes the cache entry.
    """
    t0 = time.perf_counter()
    model = getattr(model, "module", model)  # unwrap DDP: extraction needs no gradient sync
    device = model_device(model)
    name = name or getattr(dataset, "name", type(dataset).__name__)
    rank, world = _dist()
    store = as_cache(cache) if getattr(dataset, "fingerprint", None) else None
    fp = None
    if store:
        data = {"dataset": str(dataset.fingerprint), "kind": "image", "precision": _precision(device),
                "preprocess": transform_fingerprint(getattr(dataset, "transform", None))}
        # hashing the weights takes ~1 s for a ViT-B: when no model has this data cached it is a
        # miss anyway, so hash in a thread (hashlib releases the GIL) while the images are encoded
        pool = ThreadPoolExecutor(1, thread_name_prefix="fingerprint")
        fp = pool.submit(model_fingerprint, model)
        pool.shutdown(wait=False)  # the submitted hash still runs; the thread ends with it
        if store.has_entries(store.data_hash(**data), name):
            key = store.key(model=fp.result(), **data)
            if hit := store.load(key, name):
                tensors, meta = hit
                labels = tensors["targets"] if "targets" in tensors else meta.get("labels", [])
                log.info("image features of %s (%d) served from the cache: %s", name, len(tensors["features"]),
                         store.paths(key, name)[1])
                return Features(tensors["features"], labels, tensors["index"], int(meta.get("skipped", 0)),
                                True, time.perf_counter() - t0)

    iterable = isinstance(dataset, IterableDataset)
    wrapped = _IndexedIterable(dataset) if iterable else _Indexed(dataset)
    if world > 1 and not iterable:
        wrapped = Subset(wrapped, range(rank, len(wrapped), world))   # strided shard of this rank
    cuda = device.type == "cuda"
    collate = partial(_collate, dtype=torch.bfloat16 if cuda and GPU_BF16_PIXELS else None)
    workers = 0 if iterable else num_workers
    # quarter batches from the workers on CPU (CPU_LOADER_CHUNKS), with the same look-ahead in images
    chunks = CPU_LOADER_CHUNKS if (not cuda and workers and batch_size % CPU_LOADER_CHUNKS == 0) else 1
    loader = DataLoader(wrapped, batch_size=batch_size // chunks, shuffle=False, collate_fn=collate,
                        num_workers=workers, pin_memory=cuda and PIN_MEMORY,
                        **({"prefetch_factor": 2 * chunks} if workers else {}))
    idx, feats, labels, skipped = _run(model, loader, device, progress and rank == 0,
                                       f"features {name}" + (f" (rank {rank}/{world})" if world > 1 else ""), chunks)
    if world > 1 and not iterable:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (idx, feats, labels, skipped))
        idx = torch.cat([p[0] for p in parts])
        feats = torch.cat([p[1] for p in parts])
        labels = [y for p in parts for y in p[2]]
        skipped = sum(p[3] for p in parts)
        order = torch.argsort(idx)
        idx, feats, labels = idx[order], feats[order], [labels[j] for j in order.tolist()]
    if not len(idx):
        raise ValueError(f"no readable images in {name} ({skipped} skipped)")
    if skipped:
        log.warning("%s: %d of %d samples could not be read and were skipped", name, skipped, skipped + len(idx))
    int_labels = bool(labels) and all(isinstance(y, int) for y in labels)
    labels_out = torch.tensor(labels, dtype=torch.long) if int_labels else labels
    if store and rank == 0:
        key = store.key(model=fp.result(), **data)
        tensors = {"features": feats, "index": idx, **({"targets": labels_out} if int_labels else {})}
        meta = {"name": name, "n": len(idx), "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3),
                **({} if int_labels else {"labels": labels})}
        # written by a background thread unless other ranks may read it next (see the barrier)
        path = store.save(key, tensors, meta, name, background=world == 1)
        log.info("image features of %s (%d in %.1f s) cached at %s", name, len(idx), meta["seconds"], path)
    if world > 1:
        torch.distributed.barrier()  # no rank reads the entry before rank 0 has written it
    return Features(feats, labels_out, idx, skipped, False, time.perf_counter() - t0)
