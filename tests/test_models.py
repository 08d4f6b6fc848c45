"""Model specs: presets, local weights files (bit-identical round trip), clipkit checkpoints, clear errors."""
import time

import pytest
import torch

from clipkit import models
from clipkit.models import ModelNotAvailable, ModelSpecError, load_model, save_model, slugify


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_preset_random_init_is_deterministic(nano):
    m, preprocess, tok = nano
    m2, _, _ = load_model("clipkit-nano:random")
    assert _same(m, m2)
    assert tok(["three red circles"]).shape == (1, 16)
    assert not m.training


def test_local_weights_file_round_trips_bit_identically(tmp_path, nano):
    from safetensors.torch import save_file
    m, _, _ = models.create_model("clipkit-nano", seed=123)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):   # safetensors, and an open_clip_train-style DDP torch file
        loaded, _, _ = load_model(f"clipkit-nano:{tmp_path / f}")
        assert _same(loaded, m)
        assert not _same(loaded, nano[0])


def test_clipkit_checkpoint_folder_round_trips(tmp_path):
    m, _, _ = models.create_model("clipkit-nano", seed=7)
    save_model(m, tmp_path / "ck", arch="clipkit-nano")
    loaded, _, _ = load_model(str(tmp_path / "ck"))
    assert _same(loaded, m)
    assert models.fingerprint(loaded) == models.fingerprint(m)
    assert models.fingerprint(loaded) != models.fingerprint(models.create_model("clipkit-nano", seed=8)[0])


def test_weights_of_another_architecture_are_refused_clearly(tmp_path):
    m, _, _ = models.create_model("clipkit-nano")
    torch.save(m.state_dict(), tmp_path / "nano.pt")
    with pytest.raises(ModelSpecError, match="does not fit the architecture.*other shapes"):
        load_model(f"clipkit-tiny:{tmp_path / 'nano.pt'}")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelSpecError, match="empty"):
        load_model(f"clipkit-nano:{tmp_path / 'empty.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelSpecError, match="could not read weights"):
        load_model(f"clipkit-nano:{tmp_path / 'junk.pt'}")


def test_unknown_specs_name_the_problem():
    with pytest.raises(ModelSpecError, match="did you mean"):
        load_model("ViT-B-33:openai")
    with pytest.raises(ModelSpecError, match="unknown pretrained tag"):
        load_model("ViT-B-32:not-a-tag")
    with pytest.raises(ModelSpecError, match="without weights"):
        load_model("ViT-B-32")
    with pytest.raises(FileNotFoundError):
        load_model("clipkit-nano:/no/such/weights.safetensors")


def test_missing_pretrained_weights_fail_fast_offline():
    t0 = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="ViT-B-32:openai.*not on this machine"):
        load_model("ViT-B-32:openai")
    with pytest.raises(ModelNotAvailable, match="hf-hub:.*not on this machine"):
        load_model("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert time.monotonic() - t0 < 5


def test_missing_default_model_says_how_to_train_it():
    with pytest.raises(ModelNotAvailable, match="clipkit train"):
        load_model("clipkit-tiny:synthetic")


def test_slugs_are_filesystem_safe():
    assert slugify("ViT-B-32:openai") == "ViT-B-32_openai"
    assert "/" not in slugify("hf-hub:org/name") and slugify("a" * 300) != slugify("a" * 299)


def _open_clip_folder(folder, arch="clipkit-nano", seed=3):
    """Write an open_clip-style folder (open_clip_config.json + weights), as hub repos hold them."""
    import json
    import open_clip
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    cfg = open_clip.get_model_config(arch)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    m, _, _ = models.create_model(arch, seed=seed)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, folder / "open_clip_model.safetensors")
    return m


def test_local_dir_spec_loads_an_open_clip_folder(tmp_path):
    m = _open_clip_folder(tmp_path / "oc")
    loaded, _, tok = load_model(f"local-dir:{tmp_path / 'oc'}")
    assert _same(loaded, m)
    with pytest.raises(ModelSpecError, match="no open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}")


def test_hf_hub_spec_loads_from_the_local_hub_cache_offline(tmp_path, monkeypatch):
    # lay out a Hugging Face cache entry by hand: models--org--name/{refs/main, snapshots/<rev>/...}
    repo = tmp_path / "hub" / "models--clipkit--nano-test"
    rev = "0" * 40
    m = _open_clip_folder(repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    loaded, _, _ = load_model("hf-hub:clipkit/nano-test")
    assert _same(loaded, m)


@pytest.mark.slow
def test_real_architecture_with_a_local_weights_file(tmp_path):
    # ViT-B-32 is what most users bring: random weights saved and loaded back through the spec
    from safetensors.torch import save_file
    m, _, _ = models.create_model("ViT-B-32", seed=1)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "b32.safetensors")
    loaded, preprocess, tok = load_model(f"ViT-B-32:{tmp_path / 'b32.safetensors'}")
    assert _same(loaded, m) and tok(["a dog"]).shape == (1, 77)


# --- the grammar's torch-free home (clipkit.core.modelspec) ----------------------------------------------------
@pytest.mark.parametrize("spec, source, name, tag", [
    ("clipkit-tiny", "preset", "clipkit-tiny", ""),
    (" clipkit-tiny:synthetic ", "preset", "clipkit-tiny", "synthetic"),
    ("clipkit-nano:synthetc", "preset", "clipkit-nano", "synthetc"),    # parsed; check() refuses the tag
    ("ViT-B-32:openai", "pretrained", "ViT-B-32", "openai"),
    ("ViT-B-32:/no/such/w.pt", "weights", "ViT-B-32", ""),
    ("clipkit-nano:w.safetensors", "weights", "clipkit-nano", ""),
    ("hf-hub:org/name", "hf-hub", "org/name", ""),
    ("local-dir:/some/dir", "local-dir", "", ""),
])
def test_modelspec_parses_each_line_of_the_grammar(spec, source, name, tag):
    from clipkit.core import modelspec
    m = modelspec.parse(spec)
    assert (m.spec, m.source, m.name, m.tag) == (spec.strip(), source, name, tag)


def test_modelspec_knows_open_clips_architectures_without_importing_it(tmp_path):
    from clipkit.core import modelspec
    import open_clip
    # the bundled config files + our presets are exactly what open_clip lists once clipkit.models registered them
    assert sorted({*modelspec._bundled_architectures(), *modelspec.PRESETS}) == sorted(open_clip.list_models())
    run = tmp_path / "run"
    save_model(models.create_model("clipkit-nano")[0], run, "clipkit-nano")
    m = modelspec.check(str(run))
    assert (m.source, m.path) == ("run", run)
    assert models.check_spec is modelspec.check_spec and models.ModelSpecError is modelspec.ModelSpecError


def test_a_checkpoint_saved_as_the_old_vit_clipkit_tiny_loads_as_clipkit_tiny_vit(tmp_path):
    """clipkit-tiny was a ViT before the default became a ResNet: such a run folder still loads, as what it is."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    from clipkit.models import create_model, load_model, save_model
    vit = create_model("clipkit-tiny-vit")[0]
    save_model(vit, tmp_path / "old", arch="clipkit-tiny")            # what the old release wrote
    model, _, _ = load_model(str(tmp_path / "old"))
    assert isinstance(model.visual, VisionTransformer)
    assert torch.equal(model.visual.class_embedding, vit.visual.class_embedding)
    save_model(create_model("clipkit-tiny")[0], tmp_path / "new", arch="clipkit-tiny")
    assert isinstance(load_model(str(tmp_path / "new"))[0].visual, ModifiedResNet)


def test_an_uncached_synthetic_model_says_how_to_train_it(tmp_path, monkeypatch):
    from clipkit.core import modelspec
    monkeypatch.setenv("CLIPKIT_HOME", str(tmp_path))
    with pytest.raises(modelspec.ModelNotAvailable, match=r"`clipkit train --preset tiny --out .*` \(or `make model`\)"):
        modelspec.check("clipkit-tiny:synthetic")
    with pytest.raises(modelspec.ModelNotAvailable, match=r"`clipkit train --preset tiny --model clipkit-tiny-vit --out "):
        modelspec.check("clipkit-tiny-vit:synthetic")
