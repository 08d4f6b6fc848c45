"""Train and test never share an image, for every kind of classification source (offline: torchvision faked)."""

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from clipkit.data.classification import (FAMILIES, OWN, OWN_SPLITS, TORCHVISION, DatasetNotFound,
                                         ImageFolderClassification, SyntheticClassification,
                                         TorchvisionClassification, load_classification, stratified_split)
from clipkit.world.seeds import scene_seed

POOL, N_CLASSES = 50, 5
# a fake dataset's official membership: which of the POOL images each official split holds
OFFICIAL = {"train": range(25), "val": range(25, 35), "trainval": range(35), "test": range(35, 50)}


class _Fake:
    """A torchvision dataset stand-in: image i is a 4x4 picture whose red value is i (its identity)."""
    classes = [f"class_{c}" for c in range(N_CLASSES)]

    def __init__(self, root, split=None, train=None, download=False, **kwargs):
        self.kwargs = {"split": split, "train": train, **kwargs}
        if split is None and train is None:          # a dataset without official splits: everything
            self.ids = list(range(POOL))
        else:
            self.ids = list(OFFICIAL[split if train is None else ("train" if train else "test")])
        self.targets = [i % N_CLASSES for i in self.ids]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return Image.new("RGB", (4, 4), (self.ids[i], 0, 0)), self.targets[i]


class _FakeFER(_Fake):
    """FER2013's constructor has no `download` argument."""

    def __init__(self, root, split="train"):
        super().__init__(root, split=split)


def _ids(ds) -> set[int]:
    return {ds[i][0].getpixel((0, 0))[0] for i in range(len(ds))}


@pytest.fixture
def faked(monkeypatch):
    for name, (cls_name, *_rest) in TORCHVISION.items():
        monkeypatch.setattr(tvd, cls_name, _FakeFER if name == "fer2013" else _Fake)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_every_torchvision_source_has_disjoint_train_and_test(tmp_path, faked, name):
    train = TorchvisionClassification(name, tmp_path, split="train")
    test = TorchvisionClassification(name, tmp_path, split="test")
    tr, te = _ids(train), _ids(test)
    assert tr and te and not tr & te, name
    if TORCHVISION[name][2] is OWN or "val" in TORCHVISION[name][2]:
        va = _ids(TorchvisionClassification(name, tmp_path, split="val"))
        assert va and not va & tr and not va & te
    assert train.fingerprint != test.fingerprint


def test_pets_train_is_the_official_trainval(tmp_path, faked):
    ds = load_classification("pets", root=tmp_path, split="train")
    assert ds.dataset.kwargs["split"] == "trainval" and _ids(ds) == set(OFFICIAL["trainval"])


def test_eurosat_gets_a_seeded_stratified_split_of_the_whole_set(tmp_path, faked):
    parts = {s: TorchvisionClassification("eurosat", tmp_path, split=s) for s in OWN_SPLITS}
    ids = {s: _ids(ds) for s, ds in parts.items()}
    assert ids["train"] | ids["val"] | ids["test"] == ids["all"] == set(range(POOL))
    assert ids["trainval"] == ids["train"] | ids["val"]
    assert [len(ids[s]) for s in ("train", "val", "test")] == [30, 10, 10]     # 60 / 20 / 20
    labels = [parts["test"][i][1] for i in range(len(parts["test"]))]
    assert np.bincount(labels).tolist() == [2] * N_CLASSES                     # stratified
    assert _ids(TorchvisionClassification("eurosat", tmp_path, split="test", seed=0)) == ids["test"]
    assert _ids(load_classification("eurosat", tmp_path, split="test", seed=1)) != ids["test"]
    assert parts["test"].classes[2] == "brushland or shrubland"
    with pytest.raises(ValueError, match="60/20/20"):
        TorchvisionClassification("eurosat", tmp_path, split="validation")


def test_fer2013_test_without_labels_is_refused(tmp_path, monkeypatch):
    class Unlabelled(_FakeFER):
        def __init__(self, root, split="train"):
            super().__init__(root, split)
            self._samples = [(None, None if split == "test" else 0)]
    monkeypatch.setattr(tvd, "FER2013", Unlabelled)
    assert len(TorchvisionClassification("fer2013", tmp_path, split="train")) == len(OFFICIAL["train"])
    with pytest.raises(DatasetNotFound, match="fer2013.csv"):
        TorchvisionClassification("fer2013", tmp_path, split="test")


def test_image_folder_split_is_disjoint_stratified_and_seeded(tmp_path):
    for c in range(4):
        (tmp_path / f"class_{c}").mkdir()
        for j in range(c + 2):                                   # 2..5 images: small classes too
            Image.new("RGB", (8, 8), (c, j, 0)).save(tmp_path / f"class_{c}" / f"{j}.png")
    files = {s: {p for p, _ in ImageFolderClassification(tmp_path, split=s).samples} for s in OWN_SPLITS}
    assert not files["train"] & files["test"] and not files["val"] & (files["train"] | files["test"])
    assert files["train"] | files["val"] | files["test"] == files["all"] and len(files["all"]) == 14
    test = ImageFolderClassification(tmp_path, split="test")
    train = ImageFolderClassification(tmp_path, split="train")
    assert {y for _, y in test.samples} == {y for _, y in train.samples} == {0, 1, 2, 3}
    assert {p for p, _ in load_classification("imagefolder", tmp_path, split="train").samples} == files["train"]
    assert {p for p, _ in load_classification("imagefolder", tmp_path, split="test").samples} == files["test"]
    assert test.fingerprint != train.fingerprint
    with pytest.raises(ValueError, match="split must be one of"):
        ImageFolderClassification(tmp_path, split="tset")


def test_stratified_split_counts():
    y = np.repeat([0, 1, 2], [1, 2, 10])
    test, val, train = (stratified_split(y, s, seed=0) for s in ("test", "val", "train"))
    assert np.bincount(y[test], minlength=3).tolist() == [0, 1, 2]      # a lone image stays in train
    assert np.bincount(y[val], minlength=3).tolist() == [0, 0, 2]
    assert np.bincount(y[train], minlength=3).tolist() == [1, 1, 6]
    assert np.array_equal(stratified_split(y, "test", seed=0), test)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_synthetic_splits_share_no_scene_seed_or_image(family):
    # the scene seed is world.seeds.scene_seed("classification:<family>:<split>", seed, i): check every
    # seed up to 10,000 images per split
    for seed in (0, 1):
        seeds = {s: {scene_seed(f"classification:{family}:{s}", seed, i) for i in range(10_000)}
                 for s in ("train", "val", "test")}
        assert not seeds["train"] & seeds["test"] and not seeds["val"] & (seeds["train"] | seeds["test"])
    n = 2 * len(FAMILIES[family].classes)
    train, test = SyntheticClassification(family, n, split="train"), SyntheticClassification(family, n, split="test")
    factories = list(FAMILIES[family].classes.values())                   # the seed formula the class uses
    assert test.scene(3) == factories[3 % len(factories)](scene_seed(f"classification:{family}:test", 0, 3))
    assert not {train.scene(i) for i in range(n)} & {test.scene(i) for i in range(n)}
    pixels = lambda ds: {np.asarray(ds[i][0]).tobytes() for i in range(n)}  # noqa: E731
    assert not pixels(train) & pixels(test)
    with pytest.raises(ValueError, match="synthetic split"):
        SyntheticClassification(family, n, split="all")
