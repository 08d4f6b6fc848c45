"""Classification datasets for evaluation: synthetic families, an ImageFolder, torchvision datasets by name.

Every dataset here yields `(image, label)` (image transformed by `transform`, or None when the file
cannot be read: counted and skipped by feature extraction) and carries what evaluation needs:

    name          a short name (results file names, cache entry names, per-dataset templates)
    classes       class names, in label order, written for prompts ("annual crop land", not "AnnualCrop")
    templates     the dataset's own zero-shot templates ("a photo of a {c}."), or None
    fingerprint   a cheap hash that changes when the data do (the feature-cache key)

Synthetic families (clipkit.data.families) are small tables of class name -> scene factory (a pure function of a seed),
so a new fine-grained family is a table, not code. Torchvision datasets are never downloaded
unless asked (`download=True`); a missing dataset raises `DatasetNotFound` naming the folder.

Train and test never share an image. Which split each source uses:

    synthetic:<family>   ours: every (family, split, seed, index) has its own scene seed
    imagefolder          ours: seeded, stratified 60 / 20 / 20 (OWN_SPLIT: train / val / test)
    eurosat              ours, the same 60 / 20 / 20 of the 27,000 images: VTAB's proportions, not
                         VTAB's membership (that follows TFDS's file order, which torchvision's folders
                         do not have); CLIP_benchmark's torchvision EuroSAT has no split at all
    pets                 the official trainval / test, as CLIP_benchmark: "train" means trainval
    every other name     the official splits, as CLIP_benchmark builds them (TORCHVISION below)

"trainval" is train + val and "all" is the whole set (for zero-shot only: nothing fits on it).
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from clipkit.data.families import FAMILIES, POLYGONS, SHADES, STARS, Family  # noqa: F401  (re-exported)
from clipkit.world import seeds, synth
from clipkit.core.fingerprints import folder_fingerprint, files_fingerprint, params_fingerprint
from clipkit.data.images import safe_open_image
from clipkit.data.templates import DATASET_TEMPLATES

log = logging.getLogger("clipkit.evaluate")


class DatasetNotFound(FileNotFoundError):
    """A dataset's files are not where they were expected (and downloading was not asked for)."""


class ClassificationDataset(Dataset):
    """Base: `name`, `classes`, `templates`, `transform`, `fingerprint`; items are (image, label)."""
    name: str = "dataset"
    classes: list[str] = []
    templates: list[str] | None = None
    transform: Callable | None = None

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError


# --- our own split, for sources that have none -------------------------------------------------
# VTAB's proportions for EuroSAT (train 60%, val 20%, test 20%), used for every source without a split
OWN_SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}
OWN_SPLITS = ("train", "val", "test", "trainval", "all")


def stratified_split(labels, split: str, seed: int = 0) -> np.ndarray:
    """Sorted indices of `split` in a seeded, stratified train / val / test partition of `labels`.

    Per class: a permutation seeded by (seed, class) puts round(20%) of its items in test (at least one
    when the class has two or more), round(20%) in val (while one is left for train) and the rest in
    train, so the three never overlap and every class with two items is in both train and test; a
    class's membership does not depend on the other classes. "trainval" is train + val, "all" everything.
    """
    if split not in OWN_SPLITS:
        raise ValueError(f"split must be one of {list(OWN_SPLITS)}, got {split!r}")
    y = np.asarray(labels)
    if split == "all":
        return np.arange(y.size)
    keep = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n = members.size
        n_test = max(1, int(np.rint(OWN_SPLIT["test"] * n))) if n >= 2 else 0
        n_val = max(0, min(int(np.rint(OWN_SPLIT["val"] * n)), n - n_test - 1))
        order = members[np.random.default_rng(zlib.crc32(f"split/{seed}/{c}".encode())).permutation(n)]
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        parts["trainval"] = np.concatenate([parts["train"], parts["val"]])
        keep.append(parts[split])
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


# the world's version: the renderer and the seed namespaces (a change to either changes every image)
_SYNTH_SOURCE = hashlib.sha256((inspect.getsource(synth) + inspect.getsource(seeds)).encode()).hexdigest()[:16]


class SyntheticClassification(ClassificationDataset):
    """n balanced images of a synthetic family: sample i has label i % n_classes and its own scene seed.

    `family` is a name in FAMILIES or a `Family`. Splits draw disjoint seeds, so "train", "val" and
    "test" of the same family never share an image: the scene seed is clipkit.world.seeds.scene_seed of
    ("classification:<family>:<split>", seed, i) (tests/test_splits.py and tests/test_seeds.py check it).
    Pure function of the arguments (and synth.py).
    """

    def __init__(self, family: str | Family = "shape", n: int = 600, seed: int = 0, split: str = "test",
                 transform: Callable | None = None, image_size: int = 72, name: str | None = None):
        if isinstance(family, str):
            if family not in FAMILIES:
                raise ValueError(f"unknown synthetic family {family!r}; known: {sorted(FAMILIES)}")
            self.family_name, family = family, FAMILIES[family]
        else:
            self.family_name = name or "custom"
        if split not in ("train", "val", "test"):
            raise ValueError(f"synthetic split must be 'train', 'val' or 'test', got {split!r}")
        self.family, self.n, self.seed, self.split = family, int(n), int(seed), split
        self.transform, self.image_size = transform, image_size
        self.classes = list(family.classes)
        self.templates = list(family.templates)
        self.name = name or f"synthetic_{self.family_name}"
        self._factories = list(family.classes.values())

    def __len__(self):
        return self.n

    def scene(self, i: int) -> synth.Scene:
        if not 0 <= i < self.n:
            raise IndexError(i)
        # one seed per (family, split, seed, i) from the keyed hash of clipkit.world.seeds: splits, probes
        # and training are disjoint namespaces, whatever the seed (stable across processes and platforms)
        s = seeds.scene_seed(f"classification:{self.family_name}:{self.split}", self.seed, i)
        return self._factories[i % len(self._factories)](s)

    def __getitem__(self, i):
        image = synth.render(self.scene(i), size=self.image_size)
        return (self.transform(image) if self.transform else image), i % len(self._factories)

    @property
    def fingerprint(self) -> str:
        factories = [getattr(f, "func", f).__qualname__ + repr(getattr(f, "keywords", ""))
                     for f in self._factories]
        return params_fingerprint(kind="synthetic", family=self.family_name, classes=self.classes,
                                  factories=factories, n=self.n, seed=self.seed, split=self.split,
                                  image_size=self.image_size, synth=_SYNTH_SOURCE)


# --- folders on disk --------------------------------------------------------------------------
class ImageFolderClassification(ClassificationDataset):
    """root/<class>/<image>: class names are folder names with "_" read as spaces.

    A folder has no split of its own: split="all" (the default) is every image; "train", "val",
    "test" and "trainval" are our seeded, stratified 60 / 20 / 20 partition (stratified_split).
    A folder that already has train/ and test/ subfolders is two folders: load each as "all".
    """

    def __init__(self, root, transform: Callable | None = None, name: str | None = None,
                 templates: list[str] | None = None, split: str = "all", seed: int = 0):
        from torchvision.datasets import ImageFolder
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFound(f"image folder {self.root} does not exist (expected root/<class>/<image>)")
        folder = ImageFolder(str(self.root), loader=lambda p: p, allow_empty=True)
        self.split, self.seed = split, int(seed)
        keep = stratified_split([label for _, label in folder.samples], split, self.seed)
        self.samples = [folder.samples[i] for i in keep]
        self.folders = list(folder.classes)   # the class folder names, in label order (sorted)
        self.classes = [c.replace("_", " ") for c in folder.classes]
        self.transform, self.templates = transform, templates
        self.name = name or self.root.name

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        image = safe_open_image(path)
        return (self.transform(image) if self.transform else image), label

    @property
    def fingerprint(self) -> str:
        return params_fingerprint(kind="imagefolder", classes=self.classes,
                                  files=files_fingerprint([p for p, _ in self.samples], root=self.root))


class FolderSet(ImageFolderClassification):
    """An ImageFolder labelled by another set's classes: each image's label is the index of its class
    folder in `id_folders` (an out-of-distribution set holding a subset of the ID classes, as
    ImageNet-R holds 200 of 1000), optionally a uniform seeded subset of n kept in folder order."""

    def __init__(self, root, id_folders: list[str], transform: Callable | None = None, name: str | None = None,
                 n: int | None = None, seed: int = 0):
        super().__init__(root, transform=transform, name=name)
        self.id_folders = list(id_folders)
        self.class_ids = np.array([self.id_folders.index(f) for f in self.folders])   # the ID classes scored here
        samples = [(p, int(self.class_ids[y])) for p, y in self.samples]
        if n is not None and n < len(samples):   # uniform without replacement, kept in folder order
            keep = np.sort(np.random.default_rng(seed).choice(len(samples), n, replace=False))
            samples = [samples[i] for i in keep]
        self.samples = samples

    @property
    def fingerprint(self) -> str:
        # the labels are ID class ids: the ID folder list is part of what the cached targets mean
        return params_fingerprint(kind="folder-shift", id_folders=self.id_folders, n=len(self.samples),
                                  files=files_fingerprint([p for p, _ in self.samples], root=self.root))


DIGITS = [str(i) for i in range(10)]
# Class names where torchvision's are not prompt-ready (from CLIP's and CLIP_benchmark's lists).
EUROSAT = ["annual crop land", "forest", "brushland or shrubland", "highway or road",
           "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
           "residential buildings or homes or apartments", "river", "lake or sea"]
FER2013 = ["angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
PCAM = ["lymph node", "lymph node containing metastatic tumor tissue"]
_TRAIN_FLAG = {"train": {"train": True}, "test": {"train": False}}
_SPLIT = lambda *names: {s: {"split": s} for s in names}  # noqa: E731
OWN = None   # no official split: OWN_SPLIT over the whole set (split -> constructor kwargs is {} for all)

# name -> (torchvision class, folder under root, split -> constructor kwargs or OWN, class names or None).
# The official splits are the ones CLIP_benchmark 1.6.2's builder uses.
TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", _TRAIN_FLAG, None),
    "cifar100": ("CIFAR100", "cifar-100-python", _TRAIN_FLAG, None),
    "stl10": ("STL10", "stl10_binary", _SPLIT("train", "test"), None),
    "mnist": ("MNIST", "MNIST/raw", _TRAIN_FLAG, DIGITS),
    "svhn": ("SVHN", "", _SPLIT("train", "test"), DIGITS),
    "flowers": ("Flowers102", "flowers-102", _SPLIT("train", "val", "test"), None),
    # Pets ships trainval / test only (no separate train): "train" asks for trainval
    "pets": ("OxfordIIITPet", "oxford-iiit-pet", {**_SPLIT("trainval", "test"), "train": {"split": "trainval"}},
             None),
    "cars": ("StanfordCars", "stanford_cars", _SPLIT("train", "test"), None),
    "fgvc_aircraft": ("FGVCAircraft", "fgvc-aircraft-2013b",
                      {s: {"split": s, "annotation_level": "variant"} for s in ("train", "val", "trainval", "test")},
                      None),
    "food101": ("Food101", "food-101", _SPLIT("train", "test"), None),
    "dtd": ("DTD", "dtd", _SPLIT("train", "val", "test"), None),
    "eurosat": ("EuroSAT", "eurosat", OWN, EUROSAT),  # no official split: one set of 27,000, split by us
    "gtsrb": ("GTSRB", "gtsrb", _SPLIT("train", "test"), None),
    "renderedsst2": ("RenderedSST2", "rendered-sst2", _SPLIT("train", "val", "test"), None),
    "pcam": ("PCAM", "pcam", _SPLIT("train", "val", "test"), PCAM),
    "fer2013": ("FER2013", "fer2013", _SPLIT("train", "test"), FER2013),
}
ALIASES = {"flowers102": "flowers", "oxford_pets": "pets", "oxford-iiit-pet": "pets", "stanford_cars": "cars",
           "aircraft": "fgvc_aircraft", "fgvc-aircraft": "fgvc_aircraft", "food-101": "food101",
           "cifar-10": "cifar10", "cifar-100": "cifar100", "stl-10": "stl10"}


class TorchvisionClassification(ClassificationDataset):
    """A torchvision dataset read from a local `root`, with prompt-ready class names and templates.

    split: one of the dataset's official splits, or for a dataset without any (EuroSAT) one of
    OWN_SPLITS, our seeded (`seed`) stratified 60 / 20 / 20 partition; see the module docstring.
    """

    def __init__(self, name: str, root, split: str = "test", transform: Callable | None = None,
                 download: bool = False, seed: int = 0):
        import torchvision.datasets as tvd
        key = ALIASES.get(name.lower(), name.lower())
        if key not in TORCHVISION:
            raise ValueError(f"unknown torchvision dataset {name!r}; known: {sorted(TORCHVISION)} "
                             f"(or 'synthetic:<family>', or an image folder)")
        cls_name, folder, splits, classnames = TORCHVISION[key]
        own = splits is OWN
        if split not in (OWN_SPLITS if own else splits):
            raise ValueError(f"{key} has splits {list(OWN_SPLITS) if own else sorted(splits)}, not {split!r}"
                             + (" (our seeded 60/20/20 split: the dataset has none)" if own else ""))
        self.root, self.name, self.split, self.transform = Path(root).expanduser(), key, split, transform
        self.folder, self.seed = self.root / folder, int(seed)
        cls = getattr(tvd, cls_name)
        extra = {} if own else dict(splits[split])
        if "download" in inspect.signature(cls).parameters:   # FER2013 has no download argument
            extra["download"] = download
        try:
            self.dataset = cls(root=str(self.root), **extra)
        except RuntimeError as e:
            if "download" not in str(e).lower() and "not found" not in str(e).lower():
                raise
            raise DatasetNotFound(
                f"{key} ({cls_name}) not found: expected its files in {self.folder} (root={self.root}). "
                f"Put the extracted dataset there, or pass download=True on a machine with network. "
                f"torchvision said: {e}") from None
        if any(t is None for _, t in getattr(self.dataset, "_samples", [])[:1]):
            raise DatasetNotFound(f"{key} {split!r}: the images have no labels (only test.csv was found). "
                                  f"Put fer2013.csv or icml_face_data.csv in {self.folder}; they hold the test labels.")
        # our split indexes the whole set; an official split is used as torchvision reads it
        self.indices = stratified_split(_targets(self.dataset, key), split, self.seed) if own else None
        raw = classnames or list(getattr(self.dataset, "classes", []))
        self.classes = [c.replace("_", " ") for c in raw]  # Food-101: "apple_pie" -> "apple pie"
        self.templates = DATASET_TEMPLATES.get(key)

    def __len__(self):
        return len(self.dataset) if self.indices is None else len(self.indices)

    def __getitem__(self, i):
        if self.indices is not None:
            if not -len(self.indices) <= i < len(self.indices):
                raise IndexError(i)
            i = int(self.indices[i])
        image, label = self.dataset[i]
        image = image.convert("RGB") if isinstance(image, Image.Image) else image
        return (self.transform(image) if self.transform else image), int(label)

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):  # walks the files once (stat only)
            where = self.folder if self.folder.exists() else self.root
            own = {} if self.indices is None else {"own_split": OWN_SPLIT, "seed": self.seed}
            self._fingerprint = params_fingerprint(kind="torchvision", name=self.name, split=self.split,
                                                   n=len(self), files=folder_fingerprint(where), **own)
        return self._fingerprint


def _targets(dataset, key: str) -> list[int]:
    """The labels of a whole torchvision dataset without decoding its images (for our own split)."""
    for attr in ("targets", "_labels", "labels"):
        if getattr(dataset, attr, None) is not None:
            return [int(t) for t in getattr(dataset, attr)]
    raise ValueError(f"{key}: cannot read the labels of {type(dataset).__name__} without decoding every "
                     f"image; add its label attribute to clipkit.data.classification._targets")


def load_classification(name: str, root=None, split: str = "test", transform: Callable | None = None,
                        download: bool = False, **kwargs) -> ClassificationDataset:
    """One entry point: 'synthetic:<family>' (kwargs: n, seed, image_size), 'imagefolder' (root =
    the folder; kwargs: seed of our split), or a torchvision name ('cifar10', 'flowers', 'eurosat', ...;
    root = the data root; kwargs: seed of our split where the dataset has none). `split` is always
    honoured: train and test never share an image (see the module docstring for whose split)."""
    if name.startswith("synthetic"):
        family = name.partition(":")[2] or "shape"
        return SyntheticClassification(family, split=split, transform=transform, **kwargs)
    if name == "imagefolder":
        if root is None:
            raise ValueError("'imagefolder' needs root=<folder with one subfolder per class>")
        return ImageFolderClassification(root, transform=transform, split=split, **kwargs)
    if root is None:
        raise ValueError(f"{name!r} needs root=<folder holding the dataset> (nothing is downloaded by default)")
    return TorchvisionClassification(name, root, split=split, transform=transform, download=download, **kwargs)
