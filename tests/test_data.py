"""Data: safe image decoding, CSV and webdataset readers (bad samples skipped and counted), the batch
sampler (rank split, resume, epochs), per-sample crop seeding, and caption perturbations. In-memory
or tmp_path files only."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipkit.data.images import BadImageError, safe_open_image
from clipkit.data.captions import CsvCaptions, SynthCaptions, read_caption_csv
from clipkit.data.loaders import GlobalBatches
from clipkit.data.transforms import train_transform
from clipkit.data.negatives import candidates, perturb_caption


def _png(size=(12, 10), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _bomb_png(w=100_000, h=100_000) -> bytes:
    """A valid-looking PNG whose header claims w x h pixels (10 G pixels) in a few dozen bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


# --- safe_open_image ------------------------------------------------------------------------
def test_safe_open_image_reads_good_images_from_paths_and_bytes(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    img = safe_open_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (12, 10)
    assert safe_open_image(_jpeg()).size == (40, 40)
    grey = io.BytesIO()
    Image.new("L", (3, 3)).save(grey, "PNG")
    assert safe_open_image(grey.getvalue()).mode == "RGB"        # converted
    assert safe_open_image(grey.getvalue(), mode=None).mode == "L"


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"just some text, not pixels\n", "not an image"),
    (_jpeg()[:300], "corrupt or truncated"),
    (_png((64, 64))[:-30], "corrupt or truncated"),
    (_bomb_png(), "decompression bomb"),
])
def test_safe_open_image_refuses_bad_files_with_the_reason(tmp_path, content, reason):
    path = tmp_path / "bad.img"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as e:
        safe_open_image(path)
    assert str(path) in str(e.value)


def test_safe_open_image_refuses_missing_files_and_honours_the_pixel_limit(tmp_path):
    with pytest.raises(BadImageError, match="cannot read"):
        safe_open_image(tmp_path / "nope.jpg")
    with pytest.raises(BadImageError, match="over the limit of 100"):
        safe_open_image(_png((20, 20)), max_pixels=100)
    assert isinstance(BadImageError("x"), ValueError)


# --- CSV ------------------------------------------------------------------------------------
def _write_csv(root, sep=",", n=6, bad=(), header=("filepath", "title")):
    lines = [sep.join(header)]
    for i in range(n):
        (root / f"img{i}.png").write_bytes(b"" if i in bad else _png(colour=(i * 40, 0, 0)))
        lines.append(sep.join([f"img{i}.png", f"caption {i}"]))
    path = root / ("data.tsv" if sep == "\t" else "data.csv")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("sep", [",", "\t", ";"])
def test_csv_separator_is_detected_and_relative_paths_resolve_from_the_csv_folder(tmp_path, sep):
    files, captions, found = read_caption_csv(_write_csv(tmp_path, sep=sep))
    assert found == sep and len(files) == 6 and captions[2] == "caption 2"
    assert files[0] == str(tmp_path.resolve() / "img0.png")


def test_csv_missing_column_names_the_columns_found(tmp_path):
    path = _write_csv(tmp_path, header=("path", "caption"))
    with pytest.raises(ValueError, match=r"no column 'filepath' or 'title'.*columns found: \['path', 'caption'\]"):
        read_caption_csv(path)
    assert len(read_caption_csv(path, img_key="path", caption_key="caption")[0]) == 6


def test_csv_dataset_skips_and_counts_unreadable_images(nano, tmp_path):
    _, _, tok = nano
    ds = CsvCaptions(_write_csv(tmp_path, bad=(2, 3)), tok, train_transform(32))
    item = ds[2]                                   # rows 2 and 3 are empty files: row 4 stands in
    assert item["bad"] == 2 and int(item["index"]) == 4 and item["image"].shape == (3, 32, 32)
    assert ds[0]["bad"] == 0
    all_bad = CsvCaptions(_write_csv(tmp_path, bad=range(6)), tok, train_transform(32))
    with pytest.raises(RuntimeError, match="consecutive rows"):
        all_bad[0]


# --- sampling and seeding -------------------------------------------------------------------
def _batches(sampler):
    return [[k for k in b] for b in sampler]


@pytest.mark.parametrize("rows", [None, 20])
def test_global_batches_split_ranks_contiguously_and_resume_exactly(rows):
    one = _batches(GlobalBatches(rows, 8, num_batches=5, seed=3))
    r0 = _batches(GlobalBatches(rows, 4, rank=0, world_size=2, num_batches=5, seed=3))
    r1 = _batches(GlobalBatches(rows, 4, rank=1, world_size=2, num_batches=5, seed=3))
    assert [a + b for a, b in zip(r0, r1)] == one          # the gathered batch is the 1-process batch
    assert _batches(GlobalBatches(rows, 8, first=16, num_batches=3, seed=3)) == one[2:]
    draws = [d for b in one for _, d in b]
    assert draws == list(range(40))                       # sample numbers: one per draw, never reused


def test_global_batches_epochs_are_permutations_dropping_the_remainder():
    s = GlobalBatches(20, 8, num_batches=4, seed=0)        # 2 whole batches per epoch (16 of 20 rows)
    rows = [r for b in s for r, _ in b]
    assert len(set(rows[:16])) == 16 and len(set(rows[16:])) == 16 and rows[:16] != rows[16:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatches(5, 4, world_size=2)


def test_crops_depend_on_the_sample_not_on_the_worker(nano):
    _, _, tok = nano
    ds = SynthCaptions(10 ** 6, tok, train_transform(32), render_size=40)
    sampler = GlobalBatches(None, 4, num_batches=3)
    a = [b["image"] for b in DataLoader(ds, batch_sampler=sampler, num_workers=0)]
    b = [b["image"] for b in DataLoader(ds, batch_sampler=sampler, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(ds[(0, 0)]["image"], ds[(0, 1)]["image"])   # another draw, another crop


def test_synthetic_hard_negatives_are_valid_false_captions(nano):
    _, _, tok = nano
    item = SynthCaptions(10, tok, train_transform(32), hard_negatives=3, render_size=40)[0]
    assert item["neg_text"].shape == (3, tok.context_length) and item["neg_valid"].all()
    assert not (item["neg_text"] == item["text"]).all(-1).any()


def test_noise_inputs_are_distinct_pairs_with_an_end_token():
    from clipkit.data.captions import NoiseCaptions
    ds = NoiseCaptions(32, 16, hard_negatives=2)
    a, b = ds[0], ds[1]
    assert a["image"].shape == (3, 32, 32) and not torch.equal(a["image"], b["image"])
    assert int(a["text"].argmax()) == 15 and a["neg_text"].shape == (2, 16)
    assert torch.equal(ds[64]["image"], a["image"])          # a pool of 64 pairs, reused


# --- webdataset -------------------------------------------------------------------------------
def test_wds_stream_skips_and_counts_bad_samples_and_splits_shards(nano, tmp_path):
    from clipkit.data.wds import WdsCaptions, write_shards
    _, _, tok = nano
    samples = [(f"k{i:03d}", _png(colour=(i, 0, 0)), "png", f"a caption {i}") for i in range(12)]
    samples[3] = ("k003", b"\x00garbage", "jpg", "broken")
    samples[7] = ("k007", b"", "png", "empty")
    urls = write_shards(samples, str(tmp_path / "shard-%02d.tar"), per_shard=3)    # 4 shards
    (tmp_path / "shard-04.tar").write_bytes(b"not a tar at all")                   # an unreadable shard
    urls.append(str(tmp_path / "shard-04.tar"))
    ds = WdsCaptions(urls, tok, train_transform(32), resample=False, shuffle_buffer=0)
    items = [it for _, it in zip(range(20), ds)]
    keys = [it["key"] for it in items]
    assert "k003" not in keys and "k007" not in keys and len(set(keys)) == 10     # 10 good samples loop
    assert sum(it["bad"] for it in items[:10]) == 3          # 2 bad samples + 1 bad shard in one pass
    # without resampling each rank reads its own shards
    r0 = {it["key"] for _, it in zip(range(10), WdsCaptions(urls, tok, train_transform(32), rank=0, world_size=2,
                                                             resample=False, shuffle_buffer=0))}
    r1 = {it["key"] for _, it in zip(range(10), WdsCaptions(urls, tok, train_transform(32), rank=1, world_size=2,
                                                             resample=False, shuffle_buffer=0))}
    assert r0 and r1 and not r0 & r1
    stream = WdsCaptions(urls, tok, train_transform(32), shuffle_buffer=5)      # resampled shards, shuffled
    resampled = [it["key"] for _, it in zip(range(30), stream)]
    assert len(resampled) == 30 and set(resampled) <= set(keys)


# --- caption perturbations --------------------------------------------------------------------
def test_perturbations_change_one_fact():
    kinds = dict((k, t) for k, t in candidates("two dogs to the left of a red car"))
    assert kinds["relation"] == "two dogs to the right of a red car"
    assert kinds["object"] == "two cars to the left of a red dog"
    assert "three dogs to the left of a red car" in [t for k, t in candidates("two dogs to the left of a red car")]
    assert ("binding", "a blue circle and a red square") in candidates("a red circle and a blue square")
    assert candidates("the sky at dusk") == []


def test_perturb_caption_is_deterministic_distinct_and_bounded():
    c = "three blue stars above a white cross"
    a, b = perturb_caption(c, np.random.default_rng(0), 3), perturb_caption(c, np.random.default_rng(0), 3)
    assert a == b and len(set(a)) == 3 and c not in a
    assert perturb_caption("nothing to swap here", np.random.default_rng(0), 2) == []
