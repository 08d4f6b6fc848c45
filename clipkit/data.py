"""Datasets and transforms: synthetic captioned scenes, the paper's training transform, collation.

The synthetic training set is indexed by a global sample number: sample i is always the same
scene, so the data position of a run is just "how many samples were consumed" and resuming is
exact. Real-data formats (CSV, webdataset) join this module as the training loop grows.
"""
from __future__ import annotations

import numpy as np
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import Dataset
from torchvision import transforms as T

from clipkit import synth

CROP_PAD = 1.125  # resize to 1.125 x the crop size, then crop: 72 px -> 64 px for clipkit-tiny


def train_transform(image_size: int, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD):
    """CLIP paper §2.5: "A random square crop from resized images is the only data augmentation."

    Resize the shorter side to CROP_PAD x image_size, take a random image_size square. No flips
    (a flip would turn "left of" into "right of"), no colour jitter (colour is a caption fact).
    """
    return T.Compose([
        T.Resize(int(round(image_size * CROP_PAD)), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class SynthCaptions(Dataset):
    """Image-caption pairs from the synthetic corpus: sample i is `synth.corpus_item(start + i, seed)`.

    Returns dicts: image (3, S, S) float, text (L,) token ids, index; with hard_negatives=h > 0 also
    neg_text (h, L): false captions that differ from the true one by one fact (NegCLIP-style).
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

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        scene = self.scene(i)
        item = {"image": self.transform(synth.render(scene, size=self.render_size)),
                "text": self.tokenizer([synth.caption(scene)])[0],
                "index": torch.tensor(self.start + i)}
        if self.h:
            negs = synth.hard_negatives(scene)
            rng = np.random.default_rng([self.seed, self.start + i, 11])
            pick = rng.choice(len(negs), size=self.h, replace=len(negs) < self.h)
            item["neg_text"] = self.tokenizer([negs[j] for j in pick])
        return item


class IndexRange(torch.utils.data.Sampler):
    """Indices [first, first + count) in order, optionally every world_size-th from rank.

    Each synthetic sample is already a fresh random scene, so order needs no shuffling; a
    distributed run splits the global batch by striding, and resuming starts at `first`.
    """

    def __init__(self, first: int, count: int, rank: int = 0, world_size: int = 1):
        self.first, self.count, self.rank, self.ws = first, count, rank, world_size

    def __iter__(self):
        return iter(range(self.first + self.rank, self.first + self.count, self.ws))

    def __len__(self):
        return len(range(self.first + self.rank, self.first + self.count, self.ws))
