"""Evaluation datasets: synthetic families, image folders, torchvision by name (offline), CSV and tar captions."""
import io
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipkit.world import synth
from clipkit.data.classification import (FAMILIES, DatasetNotFound, SyntheticClassification,
                                         TorchvisionClassification, load_classification)
from clipkit.evaluate.features import extract_image_features
from clipkit.data.captions import CaptionsCSV, SyntheticCaptions
from clipkit.data.wds import CaptionsWebDataset
from clipkit.evaluate.retrieval_eval import evaluate_retrieval


# --- synthetic --------------------------------------------------------------------------------
def test_synthetic_is_deterministic_balanced_and_splits_are_disjoint():
    a, b = SyntheticClassification("polygon", n=12), SyntheticClassification("polygon", n=12)
    assert a.classes == ["triangle", "square", "pentagon", "hexagon", "heptagon", "octagon"]
    assert [a[i][1] for i in range(12)] == [i % 6 for i in range(12)]
    assert np.array_equal(np.asarray(a[3][0]), np.asarray(b[3][0])) and a.fingerprint == b.fingerprint
    train = SyntheticClassification("polygon", n=12, split="train")
    assert not np.array_equal(np.asarray(a[3][0]), np.asarray(train[3][0]))
    fps = {SyntheticClassification(f, n=n, seed=s, split=sp).fingerprint
           for f in ("shape", "polygon") for n in (12, 13) for s in (0, 1) for sp in ("test", "train")}
    assert len(fps) == 16


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_class_of_each_family_shows_its_factor(family):
    ds = SyntheticClassification(family, n=2 * len(FAMILIES[family].classes))
    for i in range(len(ds)):
        scene, name = ds.scene(i), ds.classes[i % len(ds.classes)]
        obj = scene.objects[0]
        if family in ("shape", "polygon"):
            assert obj.shape == name
        elif family == "colour":
            assert obj.colour == name
        elif family == "shade":
            assert tuple(obj.colour) == tuple(FAMILIES["shade"].classes[name].keywords["colour"])
        elif family == "size":
            assert obj.r == pytest.approx(synth.SIZES[name] * 1.3)
        elif family == "count":
            word, noun = name.split()                  # "one shape", "two shapes": the noun agrees with the count
            assert len(scene.objects) == synth.NUMBER_WORDS.index(word)
            assert noun == ("shape" if word == "one" else "shapes")
        assert ds[i][0].size == (72, 72)


def test_unknown_family():
    with pytest.raises(ValueError, match="known"):
        SyntheticClassification("stars")


def test_load_classification_dispatch(tmp_path):
    assert isinstance(load_classification("synthetic:count", n=6), SyntheticClassification)
    assert load_classification("synthetic", n=6).classes == list(synth.BASIC_SHAPES)
    with pytest.raises(ValueError, match="root"):
        load_classification("cifar10")


# --- torchvision, offline ---------------------------------------------------------------------
@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("dtd", "dtd"),
                                         ("flowers102", "flowers-102")])
def test_missing_torchvision_dataset_names_the_expected_folder(tmp_path, name, folder):
    with pytest.raises(DatasetNotFound, match=str(tmp_path / folder)):
        load_classification(name, root=tmp_path)


def test_unknown_torchvision_name_and_split(tmp_path):
    with pytest.raises(ValueError, match="known"):
        TorchvisionClassification("imagenet-xl", tmp_path)
    with pytest.raises(ValueError, match="splits"):
        TorchvisionClassification("cifar10", tmp_path, split="val")


def test_eurosat_from_a_local_copy_gets_prompt_ready_class_names(tmp_path, nano):
    raw = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake"]
    for j, c in enumerate(raw):
        (tmp_path / "eurosat" / "2750" / c).mkdir(parents=True)
        Image.new("RGB", (16, 16), (20 * j, 100, 50)).save(tmp_path / "eurosat" / "2750" / c / f"{c}_1.jpg")
    ds = load_classification("eurosat", root=tmp_path, split="all", transform=nano[1])   # 1 image a class: "all"
    assert len(ds) == 10 and ds.classes[2] == "brushland or shrubland" and ds[9][1] == 9
    assert ds.templates[0] == "a centered satellite photo of {c}." and len(ds.fingerprint) == 16


def test_mnist_from_local_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 2), ("t10k", 3)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + bytes(n * 784))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + bytes(range(n)))
    ds = load_classification("mnist", root=tmp_path)
    assert len(ds) == 3 and ds.classes == [str(i) for i in range(10)] and ds[2][1] == 2
    assert ds[0][0].mode == "RGB" and ds.templates == ['a photo of the number: "{c}".']


# --- image-caption data -----------------------------------------------------------------------
def _png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_csv_groups_captions_per_image_and_skips_unreadable_images(tmp_path, nano):
    model, preprocess, tokenizer = nano
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "img" / "b.png").write_bytes(_png((0, 0, 255)))
    (tmp_path / "img" / "c.png").write_bytes(b"not an image")
    (tmp_path / "caps.tsv").write_text("filepath\ttitle\nimg/a.png\ta red square\nimg/b.png\ta blue square\n"
                                       "img/a.png\tsomething red\nimg/c.png\tbroken\n")
    ds = CaptionsCSV(tmp_path / "caps.tsv", transform=preprocess)
    assert ds.captions == [["a red square", "something red"], ["a blue square"], ["broken"]]
    f = extract_image_features(model, ds, cache=tmp_path / "cache", progress=False)
    assert f.skipped == 1 and f.labels == [["a red square", "something red"], ["a blue square"]]
    m = evaluate_retrieval(model, tokenizer, ds, ks=(1, 5), cache=tmp_path / "cache", progress=False)
    assert m["text_retrieval_recall@5"] == 1.0 and m["image_retrieval_recall@5"] == 1.0  # only 2 images
    with pytest.raises(ValueError, match="no column"):
        CaptionsCSV(tmp_path / "caps.tsv", caption_key="caption")


def test_webdataset_shards_with_several_captions_and_a_corrupt_image(tmp_path, nano):
    model, preprocess, tokenizer = nano
    files = [("000.png", _png((255, 0, 0))), ("000.txt", b"a red square\nred\n"),
             ("001.png", _png((0, 255, 0))), ("001.txt", b"a green square"),
             ("002.jpg", b"\xff\xd8 truncated"), ("002.txt", b"broken"), ("003.json", b"{}")]
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = CaptionsWebDataset(str(tmp_path / "shard-{000..000}.tar"), transform=preprocess)
    items = list(ds)
    assert [caps for _, caps in items] == [["a red square", "red"], ["a green square"], ["broken"]]
    assert items[2][0] is None
    f = extract_image_features(model, ds, cache=tmp_path / "cache", progress=False)
    assert f.skipped == 1 and len(f.features) == 2
    assert extract_image_features(model, ds, cache=tmp_path / "cache", progress=False).from_cache
    m = evaluate_retrieval(model, tokenizer, ds, ks=(1,), cache=tmp_path / "cache", progress=False)
    assert 0 <= m["image_retrieval_recall@1"] <= 1
    with pytest.raises(FileNotFoundError):
        CaptionsWebDataset([str(tmp_path / "nope.tar")])


def test_synthetic_captions_with_several_templates():
    ds = SyntheticCaptions(n=3, templates=("{c}", "a picture of {c}"))
    image, caps = ds[0]
    assert caps == [synth.caption(ds.scenes[0]), "a picture of " + synth.caption(ds.scenes[0])]
    assert image.size == (72, 72) and SyntheticCaptions(n=3).fingerprint != ds.fingerprint
