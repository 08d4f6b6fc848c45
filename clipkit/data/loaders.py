"""The training DataLoader: the global batch sampler (exact resume) and `build_loader` for every data kind."""
from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader, Sampler

from clipkit.data.captions import CsvCaptions, NoiseCaptions, SynthCaptions
from clipkit.data.transforms import CROP_PAD, train_transform
from clipkit.data.wds import WdsCaptions


# --- sampling ---------------------------------------------------------------------------------
class GlobalBatches(Sampler):
    """This rank's micro-batches of (row, sample number) keys, `num_batches` of them from `first`.

    Sample number p of the run lies in global micro-batch p // (world_size * batch_size); rank r
    takes the r-th contiguous block of it, so the batch gathered across ranks is, in order, the
    batch one process would draw. rows=None is an endless corpus (row = p, never repeated);
    otherwise epochs of whole global batches (the remainder is dropped), each a fresh
    permutation seeded by (seed, epoch) when shuffle is on. Resuming at sample number `first`
    continues exactly where the interrupted run stopped.
    """

    def __init__(self, rows: int | None, batch_size: int, rank: int = 0, world_size: int = 1,
                 first: int = 0, num_batches: int = 1, seed: int = 0, shuffle: bool = True):
        gb = batch_size * world_size
        if rows is not None and rows < gb:
            raise ValueError(f"the dataset has {rows} rows, fewer than one global batch of {gb} "
                             f"({batch_size} per rank x {world_size} ranks)")
        if first % gb:
            raise ValueError(f"start position {first} is not a multiple of the global batch {gb}")
        self.rows, self.b, self.rank, self.gb = rows, batch_size, rank, gb
        self.first, self.num_batches, self.seed, self.shuffle = first, num_batches, seed, shuffle
        self.epoch_len = None if rows is None else rows // gb * gb
        self._perm = (None, None)  # (epoch, permutation) cache

    def __len__(self):
        return self.num_batches

    def row(self, p: int) -> int:
        if self.rows is None:
            return p
        epoch, offset = divmod(p, self.epoch_len)
        if not self.shuffle:
            return offset
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 5]).permutation(self.rows))
        return int(self._perm[1][offset])

    def __iter__(self):
        for m in range(self.first // self.gb, self.first // self.gb + self.num_batches):
            start = m * self.gb + self.rank * self.b
            yield [(self.row(p), p) for p in range(start, start + self.b)]


def build_loader(cfg, tokenizer, image_size: int, context_length: int, rank: int, world_size: int,
                 first: int, num_batches: int, pin_memory: bool) -> DataLoader:
    """The training DataLoader for cfg.data, yielding `num_batches` micro-batches from sample `first`."""
    transform = train_transform(image_size, augment=cfg.augment)
    h = cfg.hard_negatives
    if cfg.data == "wds":
        ds = WdsCaptions(cfg.data_path, tokenizer, transform, seed=cfg.seed, rank=rank, world_size=world_size,
                         position=first, resample=cfg.wds_resample, hard_negatives=h)
        return DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=pin_memory,
                          prefetch_factor=4 if cfg.workers else None, drop_last=True)
    if cfg.data == "synthetic":
        ds, rows = SynthCaptions(2 ** 62, tokenizer, transform, seed=cfg.seed, hard_negatives=h,
                                 render_size=int(round(image_size * CROP_PAD)),
                                 minimal_pairs=cfg.minimal_pairs), None
    elif cfg.data == "csv":
        ds = CsvCaptions(cfg.data_path, tokenizer, transform, cfg.csv_img_key, cfg.csv_caption_key,
                         cfg.csv_separator, seed=cfg.seed, hard_negatives=h)
        rows = len(ds)
    elif cfg.data == "noise":
        ds, rows = NoiseCaptions(image_size, context_length, hard_negatives=h), None
    else:
        raise ValueError(f"unknown data kind {cfg.data!r}")
    sampler = GlobalBatches(rows, cfg.batch_size, rank, world_size, first, num_batches, seed=cfg.seed)
    return DataLoader(ds, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=pin_memory,
                      prefetch_factor=4 if cfg.workers else None)
