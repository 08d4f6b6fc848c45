"""Image-caption datasets for training and for retrieval evaluation: the synthetic corpus, CSV/TSV files, noise.

Training datasets (all return dicts: image (3, S, S), text (L,) token ids, index, bad; with hard
negatives also neg_text (h, L) and neg_valid (h,)):
  SynthCaptions   the synthetic scene corpus (the embedded default); sample i is always scene i
  CsvCaptions     a CSV/TSV file with an image-path column and a caption column (open_clip's format)
  NoiseCaptions   random pixels and tokens, to measure the training step without data costs
  WdsCaptions     webdataset tar shards (.jpg/.png + .txt), in clipkit.data.wds

Evaluation datasets (items `(image, [caption, ...])`, image None when the file cannot be read: feature
extraction counts and skips it, its captions dropped with it; `fingerprint` keys the feature cache):
  CaptionsCSV         the same CSV files (one parser, `read_caption_csv`); rows sharing a filepath are
                      one image with several captions (COCO/Flickr style: five rows per image)
  SyntheticCaptions   held-out synthetic scenes with their canonical caption (and variants)
  CaptionsWebDataset  tar shards read once, in order, in clipkit.data.wds

Exact resume: a map-style dataset is read through `GlobalBatches`, which maps "sample number p of
the run" to a row (a fresh permutation per epoch) and seeds that sample's random crop from
(seed, p). The data a step sees is then a pure function of (seed, step), whatever the number of
workers, ranks, or restarts. `bad` counts unreadable images skipped to produce the item.
"""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from clipkit.core.fingerprints import files_fingerprint, params_fingerprint
from clipkit.data.images import BadImageError, safe_open_image
from clipkit.data.transforms import sample_seed, seeded
from clipkit.world import pairs, styles, synth
from clipkit.world.seeds import scene_seed

MAX_CONSECUTIVE_BAD = 16  # a CSV item tries this many rows before deciding the data is broken
log = logging.getLogger("clipkit.evaluate")   # evaluation datasets log skipped images where they always did


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
    """Image-caption pairs from the synthetic corpus: item i is `synth.corpus_item(start + i, seed)`,
    drawn in `styles.corpus_style(start + i, seed, families)` and captioned in that style's frame.
    families=None draws the classic look with plain captions (the corpus before style families).

    With hard_negatives=h > 0 also neg_text (h, L): false captions that differ from the true one by
    one fact (the count, the relation, or the colour-shape binding), NegCLIP-style.

    minimal_pairs=p: each even-odd pair of corpus positions (2k, 2k + 1) is, with probability p (a
    keyed hash of seed and k, so still a pure function of the position), a scene and its twin
    (clipkit.world.pairs: the same scene but for the one fact its caption states, drawn in the same
    style). Batches start at even positions, so a pair always shares a batch. p=0 is the plain corpus.
    """

    def __init__(self, n: int, tokenizer, transform, seed: int = 0, start: int = 0, mix: dict | None = None,
                 hard_negatives: int = 0, render_size: int | None = None, families=styles.TRAIN_FAMILIES,
                 minimal_pairs: float = 0.0):
        if not 0.0 <= minimal_pairs <= 1.0:
            raise ValueError(f"minimal_pairs is a probability in [0, 1], got {minimal_pairs}")
        self.n, self.tokenizer, self.transform, self.families = n, tokenizer, transform, families
        self.seed, self.start, self.mix, self.h = seed, start, mix, hard_negatives
        self.render_size, self.pairs = render_size or 72, float(minimal_pairs)

    def __len__(self):
        return self.n

    def _twin_of(self, i: int) -> int | None:
        """The corpus position whose twin position `i` holds, or None when `i` holds a scene of its own."""
        p = self.start + i
        if not self.pairs or p % 2 == 0:
            return None
        u = np.random.default_rng([scene_seed("train:pairs", self.seed, p // 2), 31]).random()
        return p - 1 if u < self.pairs else None

    def _scene_at(self, i: int) -> tuple[synth.Scene, int]:
        """(scene of item i, the corpus position whose style draws it: a twin's is its scene's)."""
        first = self._twin_of(i)
        if first is None:
            return synth.corpus_item(self.start + i, seed=self.seed, mix=self.mix), self.start + i
        return pairs.twin(synth.corpus_item(first, seed=self.seed, mix=self.mix),
                          seed=scene_seed("train:twin", self.seed, first)), first

    def scene(self, i: int) -> synth.Scene:
        return self._scene_at(i)[0]

    def __getitem__(self, key):
        i, draw = _key(key)
        if not 0 <= i < self.n:
            raise IndexError(i)
        scene, position = self._scene_at(i)
        style = styles.corpus_style(position, self.seed, self.families) if self.families else None
        img = synth.render(scene, size=self.render_size, style=style)
        frame = style.frame if style else 0      # a negative keeps the true caption's frame: one fact differs
        item = {"image": seeded(self.transform, img, sample_seed(self.seed, "crop", self.start + draw)),
                "text": self.tokenizer([styles.framed(synth.caption(scene), frame, scene)])[0],
                "index": torch.tensor(self.start + i), "bad": 0}
        if self.h:
            negs = synth.hard_negatives(scene)
            rng = np.random.default_rng([self.seed, self.start + i, 11])
            pick = rng.choice(len(negs), size=self.h, replace=len(negs) < self.h)
            item.update(negatives_item(self.tokenizer, [styles.framed(negs[j], frame, scene) for j in pick], self.h))
        return item


def read_caption_csv(path, img_key: str = "filepath", caption_key: str = "title",
                     sep: str = "", image_root=None) -> tuple[np.ndarray, np.ndarray, str]:
    """(image paths, captions, separator) from a CSV/TSV file with a header row, one row per pair.

    sep "" detects the separator from the header (tab, comma, semicolon or pipe). Relative image
    paths are taken relative to `image_root`, else to the CSV file's folder. A missing column is an
    error that names the columns that were found.
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
                         f"columns (img_key= / caption_key=; clipkit train: --csv-img-key / --csv-caption-key).")
    if len(df) == 0:
        raise ValueError(f"CSV dataset {path}: header only, no rows")
    root = Path(image_root).expanduser() if image_root else path.resolve().parent
    files = [p if Path(p).is_absolute() else str(root / p) for p in df[img_key]]
    # fixed-width numpy strings, not lists of Python objects: worker processes forked from the main
    # one then share these pages instead of copying them as reference counts change
    return np.asarray(files, dtype=str), np.asarray(df[caption_key].tolist(), dtype=str), sep


class CsvCaptions(Dataset):
    """Image-caption pairs listed in a CSV file (see `read_caption_csv`).

    An unreadable image (see `safe_open_image`) is skipped and the next row taken instead, so every
    batch stays full (a distributed gather needs equal batches on every rank); the item's `bad`
    field counts the skips and the training loop adds them up and enforces `max_bad_fraction`.
    With hard_negatives=h, each caption gets up to h perturbed captions (clipkit.data.negatives).
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
            from clipkit.data.negatives import perturb_caption
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


# --- evaluation datasets: (image, [captions]) per image -----------------------------------------
class CaptionsCSV(Dataset):
    """Images with their captions from a CSV (see `read_caption_csv`; separator detected); relative
    paths are taken from `image_root`, else from the CSV's folder."""

    def __init__(self, path, transform: Callable | None = None, image_root=None, img_key: str = "filepath",
                 caption_key: str = "title", sep: str | None = None, name: str | None = None):
        self.path = Path(path).expanduser()
        # the CSV's folder as given (not resolved): the file names enter the cache fingerprint
        files, captions, _ = read_caption_csv(self.path, img_key, caption_key, sep or "",
                                              image_root=image_root or self.path.parent)
        groups: dict[str, list[str]] = {}
        for fp, cap in zip(files.tolist(), captions.tolist()):
            groups.setdefault(fp, []).append(cap)      # first-appearance order of images
        self.files = [Path(fp) for fp in groups]
        self.captions = list(groups.values())
        self.transform, self.name = transform, name or self.path.stem

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            image = safe_open_image(self.files[i])
        except BadImageError as e:
            log.debug("skipping %s: %s", self.files[i], e)
            return None, self.captions[i]
        return (self.transform(image) if self.transform else image), self.captions[i]

    @property
    def fingerprint(self) -> str:
        return params_fingerprint(kind="csv", csv=files_fingerprint([self.path]), images=files_fingerprint(self.files))


class SyntheticCaptions(Dataset):
    """n held-out synthetic corpus scenes (the held-out retrieval namespace) with their canonical caption,
    formatted by each of `templates` ("{c}" alone = the caption itself) for several captions per image."""

    def __init__(self, n: int = 500, seed: int = 999, transform: Callable | None = None, image_size: int = 72,
                 templates: Sequence[str] = ("{c}",), name: str | None = None):
        self.n, self.seed, self.transform, self.image_size = n, seed, transform, image_size
        self.templates = list(templates)
        self.name = name or "synthetic_captions"
        # the held-out namespace (clipkit.world.seeds): no training run's seed or index reaches these scenes
        self.scenes = [synth.corpus_item(i, seed=seed, purpose="heldout-retrieval") for i in range(n)]
        self.captions = [[t.format(c=synth.caption(s)) for t in self.templates] for s in self.scenes]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = synth.render(self.scenes[i], size=self.image_size)
        return (self.transform(image) if self.transform else image), self.captions[i]

    @property
    def fingerprint(self) -> str:
        from clipkit.data.classification import _SYNTH_SOURCE   # the synthetic world's source hash
        return params_fingerprint(kind="synthetic_captions", n=self.n, seed=self.seed, templates=self.templates,
                                  image_size=self.image_size, synth=_SYNTH_SOURCE)


def image_captions_collate(batch):
    """(images (B, 3, H, W), [[captions of image 0], ...]): CLIP_benchmark's retrieval batch layout."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
