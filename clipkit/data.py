"""Image-caption data for training: safe image decoding, the paper's transform, datasets, the batch sampler.

Datasets (all return dicts: image (3, S, S), text (L,) token ids, index, bad; with hard negatives
also neg_text (h, L) and neg_valid (h,)):
  SynthCaptions   the synthetic scene corpus (the embedded default); sample i is always scene i
  CsvCaptions     a CSV/TSV file with an image-path column and a caption column (open_clip's format)
  NoiseCaptions   random pixels and tokens, to measure the training step without data costs
  WdsCaptions     webdataset tar shards (.jpg/.png + .txt), in clipkit.data_wds

Exact resume: a map-style dataset is read through `GlobalBatches`, which maps "sample number p of
the run" to a row (a fresh permutation per epoch) and seeds that sample's random crop from
(seed, p). The data a step sees is then a pure function of (seed, step), whatever the number of
workers, ranks, or restarts. `bad` counts unreadable images skipped to produce the item.
"""
from __future__ import annotations

import csv
import hashlib
import io
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from clipkit import synth

CROP_PAD = 1.125  # resize to 1.125 x the crop size, then crop: 72 px -> 64 px for clipkit-tiny
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb limit (~ 9459 x 9459): larger is refused
MAX_CONSECUTIVE_BAD = 16  # a CSV item tries this many rows before deciding the data is broken


# --- images -----------------------------------------------------------------------------------
class BadImageError(ValueError):
    """A file that is not a usable image: missing, empty, truncated, corrupt, not an image, or a bomb."""


def safe_open_image(src, max_pixels: int = MAX_IMAGE_PIXELS, mode: str | None = "RGB") -> Image.Image:
    """Decode an image fully, refusing anything that is not a sound image of reasonable size.

    src: a path, bytes, or a binary file object. Raises BadImageError naming the source and the
    reason for: a missing or zero-byte file, a file that is not an image, a truncated or corrupt
    one (decoded here, so it fails now and not later inside a transform), and a decompression
    bomb (more than `max_pixels` pixels: refused from the header, before anything is decoded).
    Returns a loaded PIL image converted to `mode` (None keeps the file's mode).
    """
    name = str(src) if isinstance(src, (str, Path)) else getattr(src, "name", "<bytes>")
    if isinstance(src, (str, Path)):
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise BadImageError(f"{name}: cannot read ({type(e).__name__}: {e.strerror or e})") from e
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        data = src.read()
    if not data:
        raise BadImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse at our limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImageError(f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of "
                                    f"{max_pixels:,}: refused as a possible decompression bomb")
            if w == 0 or h == 0:
                raise BadImageError(f"{name}: image has no pixels ({w}x{h})")
            img.load()
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(f"{name}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise BadImageError(f"{name}: not an image (no known image format, {len(data)} bytes)") from e
    except Exception as e:  # noqa: BLE001  (PIL raises OSError, SyntaxError, ValueError, EOFError...)
        raise BadImageError(f"{name}: corrupt or truncated image ({type(e).__name__}: {e})") from e
    return img.convert(mode) if mode and img.mode != mode else img


class RandomSquareCrop(torch.nn.Module):
    """A random size x size crop (torchvision's RandomCrop without padding), whose position comes from
    the per-sample seed set by `seeded` when there is one, else from torch's RNG."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w < self.size or h < self.size:
            raise ValueError(f"image {w}x{h} is smaller than the {self.size} px crop")
        seed = getattr(_CROP_SEED, "value", None)
        if seed is None:
            top, left = (int(torch.randint(0, n + 1, ())) for n in (h - self.size, w - self.size))
        else:   # the seed is a uniform 63-bit hash: its low and high bits give independent offsets
            top, left = seed % (h - self.size + 1), (seed >> 32) % (w - self.size + 1)
        return img.crop((left, top, left + self.size, top + self.size))


def train_transform(image_size: int, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, augment: str = "crop"):
    """The training transform. augment="crop" is the paper's (the default):

    CLIP paper §2.5: "A random square crop from resized images is the only data augmentation."
    Resize the shorter side to CROP_PAD x image_size, take a random image_size square. No flips
    (a flip would turn "left of" into "right of"), no colour jitter (colour is a caption fact).

    "none" resizes and centre-crops as evaluation does; "heavy" is a SimCLR-style stack (random
    resized crop, flip, colour jitter), for the augmentation experiment only.
    """
    if augment == "crop":
        aug = [T.Resize(int(round(image_size * CROP_PAD)), interpolation=T.InterpolationMode.BICUBIC),
               RandomSquareCrop(image_size)]
    elif augment == "none":
        aug = [T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size)]
    elif augment == "heavy":
        aug = [HeavyAugment(image_size)]
    else:
        raise ValueError(f"augment must be crop, none or heavy, got {augment!r}")
    return T.Compose([*aug, T.ToTensor(), T.Normalize(mean, std)])


class HeavyAugment(torch.nn.Module):
    """SimCLR-style augmentation (Chen et al. 2020): random resized crop (scale 0.35-1, aspect 3/4-4/3),
    horizontal flip (p=0.5), colour jitter (brightness/contrast/saturation 0.4, hue 0.1; p=0.8).

    Not what CLIP does; it exists to test the paper's choice. Its parameters come from the per-sample
    seed set by `seeded` (else a fresh one), so runs with it stay exactly resumable.
    """

    def __init__(self, size: int, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip: float = 0.5,
                 jitter: float = 0.8):
        super().__init__()
        self.size, self.scale, self.ratio, self.flip, self.jitter = size, scale, ratio, flip, jitter

    def forward(self, img: Image.Image) -> Image.Image:
        from torchvision.transforms import functional as F
        seed = getattr(_CROP_SEED, "value", None)
        rng = np.random.default_rng(seed if seed is not None else int(torch.randint(0, 2 ** 62, ())))
        w, h = img.size
        for _ in range(10):   # torchvision's RandomResizedCrop sampling, with its centre-crop fallback
            area = w * h * rng.uniform(*self.scale)
            aspect = float(np.exp(rng.uniform(*np.log(self.ratio))))
            cw, ch = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                break
        else:
            cw = ch = min(w, h)
            top, left = (h - ch) // 2, (w - cw) // 2
        img = F.resized_crop(img, top, left, ch, cw, [self.size, self.size],
                             interpolation=T.InterpolationMode.BICUBIC)
        if rng.random() < self.flip:
            img = F.hflip(img)
        if rng.random() < self.jitter:
            b, c, s = rng.uniform(0.6, 1.4, size=3)
            for op in rng.permutation(4):
                img = (F.adjust_brightness(img, b) if op == 0 else F.adjust_contrast(img, c) if op == 1
                       else F.adjust_saturation(img, s) if op == 2 else F.adjust_hue(img, rng.uniform(-0.1, 0.1)))
        return img


def sample_seed(*parts) -> int:
    """A 63-bit seed that is a pure function of `parts` (stable across processes and platforms)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


_CROP_SEED = threading.local()


def seeded(transform, img, seed: int) -> torch.Tensor:
    """Apply `transform` with its RandomSquareCrop placed by `seed` (see `sample_seed`).

    The crop of a sample then depends on (seed, sample number), not on which worker process drew
    it or how many samples that worker drew before: the key to exact resume with workers > 0. (A
    seed lookup costs nothing; re-seeding torch's generator per sample cost more than the crop.)
    """
    _CROP_SEED.value = seed
    try:
        return transform(img)
    finally:
        _CROP_SEED.value = None


def _key(key) -> tuple[int, int]:
    """(row, draw): the sampler passes (row, sample number); a bare int means both."""
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), int(key))


def negatives_item(tokenizer, negs: list[str], h: int) -> dict:
    """neg_text (h, L) token ids and neg_valid (h,) for up to h hard-negative captions (padded)."""
    valid = torch.zeros(h, dtype=torch.bool)
    valid[:len(negs[:h])] = True
    return {"neg_text": tokenizer((negs[:h] + [""] * h)[:h]), "neg_valid": valid}


# --- datasets ---------------------------------------------------------------------------------
class SynthCaptions(Dataset):
    """Image-caption pairs from the synthetic corpus: item i is `synth.corpus_item(start + i, seed)`.

    With hard_negatives=h > 0 also neg_text (h, L): false captions that differ from the true one by
    one fact (the count, the relation, or the colour-shape binding), NegCLIP-style.
    """

    def __init__(self, n: int, tokenizer, transform, seed: int = 0, start: int = 0, mix: dict | None = None,
                 hard_negatives: int = 0, render_size: int | None = None):
        self.n, self.tokenizer, self.transform = n, tokenizer, transform
        self.seed, self.start, self.mix, self.h = seed, start, mix, hard_negatives
        self.render_size = render_size or 72

    def __len__(self):
        return self.n

    def scene(self, i: int) -> synth.Scene:
        return synth.corpus_item(self.start + i, seed=self.seed, mix=self.mix)

    def __getitem__(self, key):
        i, draw = _key(key)
        if not 0 <= i < self.n:
            raise IndexError(i)
        scene = self.scene(i)
        img = synth.render(scene, size=self.render_size)
        item = {"image": seeded(self.transform, img, sample_seed(self.seed, "crop", self.start + draw)),
                "text": self.tokenizer([synth.caption(scene)])[0],
                "index": torch.tensor(self.start + i), "bad": 0}
        if self.h:
            negs = synth.hard_negatives(scene)
            rng = np.random.default_rng([self.seed, self.start + i, 11])
            pick = rng.choice(len(negs), size=self.h, replace=len(negs) < self.h)
            item.update(negatives_item(self.tokenizer, [negs[j] for j in pick], self.h))
        return item


def read_caption_csv(path, img_key: str = "filepath", caption_key: str = "title",
                     sep: str = "") -> tuple[np.ndarray, np.ndarray, str]:
    """(image paths, captions, separator) from a CSV/TSV file with a header row.

    sep "" detects the separator from the header (tab, comma, semicolon or pipe). Relative image
    paths are taken relative to the CSV file's folder. A missing column is an error that names
    the columns that were found.
    """
    import pandas as pd
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV dataset {path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        header = f.readline()
    if not header.strip():
        raise ValueError(f"CSV dataset {path}: empty file (a header row with {img_key!r} and "
                         f"{caption_key!r} is needed)")
    if not sep:
        try:
            sep = csv.Sniffer().sniff(header, delimiters="\t,;|").delimiter
        except csv.Error:
            sep = ","   # a one-column header: let the column check below say what is missing
    df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    missing = [k for k in (img_key, caption_key) if k not in df.columns]
    if missing:
        raise ValueError(f"CSV dataset {path}: no column {' or '.join(map(repr, missing))} (separator "
                         f"{sep!r}); columns found: {list(df.columns)}. Name the image-path and caption "
                         f"columns with --csv-img-key / --csv-caption-key.")
    if len(df) == 0:
        raise ValueError(f"CSV dataset {path}: header only, no rows")
    root = path.resolve().parent
    files = [p if Path(p).is_absolute() else str(root / p) for p in df[img_key]]
    # fixed-width numpy strings, not lists of Python objects: worker processes forked from the main
    # one then share these pages instead of copying them as reference counts change
    return np.asarray(files, dtype=str), np.asarray(df[caption_key].tolist(), dtype=str), sep


class CsvCaptions(Dataset):
    """Image-caption pairs listed in a CSV file (see `read_caption_csv`).

    An unreadable image (see `safe_open_image`) is skipped and the next row taken instead, so every
    batch stays full (a distributed gather needs equal batches on every rank); the item's `bad`
    field counts the skips and the training loop adds them up and enforces `max_bad_fraction`.
    With hard_negatives=h, each caption gets up to h perturbed captions (clipkit.data_negatives).
    """

    def __init__(self, path, tokenizer, transform, img_key="filepath", caption_key="title", sep="",
                 seed: int = 0, hard_negatives: int = 0):
        self.files, self.captions, self.sep = read_caption_csv(path, img_key, caption_key, sep)
        self.path, self.tokenizer, self.transform = path, tokenizer, transform
        self.seed, self.h = seed, hard_negatives
        self.reported = 0  # bad files named on stderr so far by this process (the first few only)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, key):
        row, draw = _key(key)
        bad, errors = 0, []
        for attempt in range(MAX_CONSECUTIVE_BAD):
            i = (row + attempt) % len(self.files)
            try:
                img = safe_open_image(self.files[i])
                break
            except BadImageError as e:
                bad += 1
                errors.append(str(e))
                if self.reported < 5:
                    self.reported += 1
                    print(f"[clipkit] skipping unreadable image: {e}", file=sys.stderr, flush=True)
        else:
            raise RuntimeError(
                f"CSV dataset {self.path}: {MAX_CONSECUTIVE_BAD} consecutive rows from {row} have no "
                f"readable image (last: {errors[-1]}). Relative paths are resolved against the CSV's "
                f"folder; is the image folder there?")
        caption = str(self.captions[i])
        item = {"image": seeded(self.transform, img, sample_seed(self.seed, "crop", draw)),
                "text": self.tokenizer([caption])[0], "index": torch.tensor(i), "bad": bad}
        if self.h:
            from clipkit.data_negatives import perturb_caption
            rng = np.random.default_rng(sample_seed(self.seed, "negatives", i))
            item.update(negatives_item(self.tokenizer, perturb_caption(caption, rng, self.h), self.h))
        return item


class NoiseCaptions(Dataset):
    """Random pixels and tokens: the training step with no data costs. Item i is pair i % 64 of a
    fixed pool, so the loss still has distinct pairs to tell apart."""

    def __init__(self, image_size: int, context_length: int, hard_negatives: int = 0, vocab: int = 49408,
                 pool: int = 64):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(pool, 3, image_size, image_size, generator=g)
        self.texts = torch.randint(1, vocab - 2, (pool, context_length), generator=g)
        self.texts[:, -1] = vocab - 1   # the end-of-text token: open_clip pools the text at the argmax id
        self.h = hard_negatives

    def __len__(self):
        return 2 ** 62

    def __getitem__(self, key):
        i = _key(key)[0]
        j = i % len(self.images)
        item = {"image": self.images[j], "text": self.texts[j], "index": torch.tensor(i), "bad": 0}
        if self.h:
            item.update(neg_text=self.texts[(j + 1 + torch.arange(self.h)) % len(self.texts)],
                        neg_valid=torch.ones(self.h, dtype=torch.bool))
        return item


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
        from clipkit.data_wds import WdsCaptions
        ds = WdsCaptions(cfg.data_path, tokenizer, transform, seed=cfg.seed, rank=rank, world_size=world_size,
                         position=first, resample=cfg.wds_resample, hard_negatives=h)
        return DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=pin_memory,
                          prefetch_factor=4 if cfg.workers else None, drop_last=True)
    if cfg.data == "synthetic":
        ds, rows = SynthCaptions(2 ** 62, tokenizer, transform, seed=cfg.seed, hard_negatives=h,
                                 render_size=int(round(image_size * CROP_PAD))), None
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
