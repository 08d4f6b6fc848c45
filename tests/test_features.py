"""Feature extraction and the on-disk cache: order, normalisation, cache hits and misses, skipped samples, sharding."""
import logging

import pytest
import torch
from PIL import Image

from clipkit.evaluate.cache import FeatureCache, flush, model_fingerprint, transform_fingerprint
from clipkit.data.classification import ImageFolderClassification, SyntheticClassification
from clipkit.evaluate.features import encode_images, extract_image_features


@pytest.fixture
def shapes(nano):
    _, preprocess, _ = nano
    return SyntheticClassification("shape", n=24, transform=preprocess)


def test_features_match_encode_images_in_dataset_order(nano, shapes, tmp_path):
    model, preprocess, _ = nano
    f = extract_image_features(model, shapes, batch_size=7, cache=tmp_path, progress=False)
    raw = SyntheticClassification("shape", n=24)  # the same images, untransformed
    ref = encode_images(model, preprocess, (raw[i][0] for i in range(len(raw))), batch_size=5)
    assert f.features.shape == (24, model.visual.output_dim)
    torch.testing.assert_close(f.features, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(f.features.norm(dim=1), torch.ones(24))
    assert f.targets.tolist() == [i % 6 for i in range(24)]
    assert f.index.tolist() == list(range(24)) and f.skipped == 0 and not f.from_cache


def test_second_request_is_served_from_cache(nano, shapes, tmp_path, caplog):
    model, _, _ = nano
    first = extract_image_features(model, shapes, cache=tmp_path, progress=False)
    with caplog.at_level(logging.INFO, logger="clipkit.evaluate"):
        second = extract_image_features(model, shapes, cache=tmp_path, progress=False)
    assert second.from_cache and "served from the cache" in caplog.text
    assert torch.equal(first.features, second.features) and torch.equal(first.targets, second.targets)
    flush()
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1


def test_background_write_keeps_its_own_copy(nano, shapes, tmp_path):
    model, _, _ = nano
    first = extract_image_features(model, shapes, cache=tmp_path, progress=False)
    expected = first.features.clone()
    first.features.zero_()   # the caller's tensor, modified while (or after) the entry is written
    again = extract_image_features(model, shapes, cache=tmp_path, progress=False)
    assert again.from_cache and torch.equal(again.features, expected)


def test_cache_misses_when_model_data_or_preprocessing_change(nano, shapes, tmp_path):
    model, preprocess, _ = nano
    extract_image_features(model, shapes, cache=tmp_path, progress=False)
    other_data = SyntheticClassification("shape", n=24, seed=1, transform=preprocess)
    assert not extract_image_features(model, other_data, cache=tmp_path, progress=False).from_cache
    import torchvision.transforms as T
    other_pre = SyntheticClassification("shape", n=24, transform=T.Compose([T.Resize(40), preprocess]))
    assert transform_fingerprint(other_pre.transform) != transform_fingerprint(preprocess)
    assert not extract_image_features(model, other_pre, cache=tmp_path, progress=False).from_cache
    import copy
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.visual.proj.add_(0.01)   # an in-place edit moves the version counter: fingerprint recomputed
    assert model_fingerprint(changed) != model_fingerprint(model)
    assert not extract_image_features(changed, shapes, cache=tmp_path, progress=False).from_cache
    assert extract_image_features(model, shapes, cache=tmp_path, progress=False).from_cache


def test_fingerprint_memo_sees_in_place_updates(nano):
    import copy
    model = copy.deepcopy(nano[0])
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        next(model.parameters()).mul_(2)
    assert model_fingerprint(model) != before


def test_unreadable_cache_entry_is_recomputed(nano, shapes, tmp_path, caplog):
    model, _, _ = nano
    extract_image_features(model, shapes, cache=tmp_path, progress=False)
    flush()
    entry = next(tmp_path.rglob("*.safetensors"))
    entry.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="clipkit.evaluate"):
        again = extract_image_features(model, shapes, cache=tmp_path, progress=False)
    assert not again.from_cache and "unreadable" in caplog.text
    assert extract_image_features(model, shapes, cache=tmp_path, progress=False).from_cache


def test_no_cache_without_fingerprint_or_when_disabled(nano, shapes, tmp_path):
    model, preprocess, _ = nano
    plain = [(preprocess(Image.new("RGB", (40, 40), (i * 20, 0, 0))), i % 2) for i in range(5)]  # a list: no fingerprint
    assert extract_image_features(model, plain, cache=tmp_path, progress=False).features.shape[0] == 5
    extract_image_features(model, shapes, cache=False, progress=False)
    flush()
    assert not list(tmp_path.rglob("*.safetensors"))


def test_corrupt_images_are_skipped_and_counted(nano, tmp_path, caplog):
    model, preprocess, _ = nano
    for cls in ("red_thing", "blue_thing"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (200, 0, 0) if cls == "red_thing" else (0, 0, 200)).save(
                tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "data" / "blue_thing" / "9_broken.png").write_bytes(b"\x89PNG not really")
    ds = ImageFolderClassification(tmp_path / "data", transform=preprocess)
    assert ds.classes == ["blue thing", "red thing"] and len(ds) == 7
    with caplog.at_level(logging.WARNING, logger="clipkit.evaluate"):
        f = extract_image_features(model, ds, batch_size=4, cache=tmp_path / "cache", progress=False)
    assert f.skipped == 1 and len(f.features) == 6 and "could not be read" in caplog.text
    assert 3 not in f.index.tolist() and f.targets.tolist() == [0, 0, 0, 1, 1, 1]
    cached = extract_image_features(model, ds, cache=tmp_path / "cache", progress=False)
    assert cached.from_cache and cached.skipped == 1 and torch.equal(cached.index, f.index)


def test_cache_key_needs_model():
    with pytest.raises(ValueError, match="model"):
        FeatureCache("/tmp/x").key(dataset="d")


def _sharded_worker(rank, world, init, out):
    import torch.distributed as dist
    from clipkit.models import load_model
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, preprocess, _ = load_model("clipkit-nano")
        ds = SyntheticClassification("shape", n=13, transform=preprocess)
        f = extract_image_features(model, ds, batch_size=4, cache=out / "cache", progress=False)
        torch.save({"features": f.features, "index": f.index, "targets": f.targets}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_extraction_across_ranks_equals_single_process(nano, tmp_path):
    """Two gloo ranks each encode every other sample; both return the full, ordered features."""
    import torch.multiprocessing as mp
    mp.spawn(_sharded_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", tmp_path), nprocs=2)
    model, preprocess, _ = nano
    single = extract_image_features(model, SyntheticClassification("shape", n=13, transform=preprocess),
                                    cache=False, progress=False)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["index"].tolist() == list(range(13))
        torch.testing.assert_close(got["features"], single.features, atol=1e-6, rtol=0)
        assert torch.equal(got["targets"], single.targets)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1  # written once, by rank 0


@pytest.mark.slow  # starts DataLoader workers
def test_joined_loader_chunks_give_the_same_features(nano, tmp_path, monkeypatch):
    """On CPU with workers, quarter batches are joined into one forward batch: the same forward
    batches as one loader batch each, so the same features, order, labels and skip count, also
    with an unreadable file and a chunk with nothing readable in it."""
    import clipkit.evaluate.features as features
    model, preprocess, _ = nano
    for cls in ("red_thing", "blue_thing"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (20, 20), (40 * i, 0, 0) if cls == "red_thing" else (0, 0, 40 * i)).save(
                tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "data" / "blue_thing" / "0_broken.png").write_bytes(b"\x89PNG not really")
    ds = ImageFolderClassification(tmp_path / "data", transform=preprocess)   # 11 files, item 1 broken
    runs = {}
    for chunks in (1, 4):
        monkeypatch.setattr(features, "CPU_LOADER_CHUNKS", chunks)
        # batch 4 -> loader batches of 1 when joined: the broken file is a chunk with no image
        runs[chunks] = extract_image_features(model, ds, batch_size=4, num_workers=2, cache=False, progress=False)
    one, four = runs[1], runs[4]
    assert torch.equal(one.features, four.features) and torch.equal(one.index, four.index)
    assert torch.equal(one.targets, four.targets) and one.skipped == four.skipped == 1
    assert four.index.tolist() == [i for i in range(11) if i != 1]   # blue 0.png, 0_broken.png, 1.png, ...
