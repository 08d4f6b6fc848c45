"""The paper's training transform (random square crop, §2.5), the heavy-augmentation arm, per-sample crop seeds."""
from __future__ import annotations

import hashlib
import threading

import numpy as np
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision import transforms as T

CROP_PAD = 1.125  # resize to 1.125 x the crop size, then crop: 72 px -> 64 px for clipkit-tiny


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


