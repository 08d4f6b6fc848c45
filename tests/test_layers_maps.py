"""Per-layer features by hooks, patch-caption maps and object masks, checked against direct computations."""
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipkit.evaluate.cache import FeatureCache
from clipkit.evaluate.features import encode_texts
from clipkit.evaluate.layers import NotAvailable, image_layer_features, text_layer_features
from clipkit.evaluate.maps import available_methods, caption_maps, gradcam, patch_similarity, resnet_cam_stage
from clipkit.models import create_model
from clipkit.world import synth


@pytest.fixture(scope="module")
def nano():
    model, _, preprocess = create_model("clipkit-nano")
    return model.eval(), preprocess, open_clip.get_tokenizer("clipkit-nano")


@pytest.fixture(scope="module")
def tiny():
    model, _, preprocess = create_model("clipkit-tiny-vit")   # random weights: shapes and parity only
    return model.eval(), preprocess, open_clip.get_tokenizer("clipkit-tiny-vit")


def _scenes(n, kind="binding", size=72):
    return [synth.make_scene(kind, i) for i in range(n)]


def _manual_tokens(visual, pixels):
    """The ViT forward written out: embeddings, then every block; (B, 1 + g*g, width) after the last."""
    x = visual._embeds(pixels)
    for blk in visual.transformer.resblocks:
        x = blk(x)
    return x


@pytest.mark.parametrize("which", ["nano", "tiny"])
def test_image_layers_shapes_and_last_is_projection_input(which, request):
    model, preprocess, _ = request.getfixturevalue(which)
    images = [synth.render(s) for s in _scenes(5)]
    f = image_layer_features(model, preprocess, images, batch_size=2, patches=True)
    depth = len(model.visual.transformer.resblocks)
    assert f.names == [f"block{i}" for i in range(depth)] + ["pre_proj", "post_proj"]
    width, grid = model.visual.transformer.width, model.visual.grid_size
    for name in f.names[:-1]:
        assert f.pooled[name].shape == (5, width)
    assert f.pooled["post_proj"].shape == (5, model.visual.output_dim)
    assert f.patches.shape == (5, grid[0] * grid[1], width) and f.grid == tuple(grid)
    pixels = torch.stack([preprocess(im) for im in images])
    with torch.no_grad():
        direct = model.encode_image(pixels)
        tokens = _manual_tokens(model.visual, pixels)
    # the last pooled feature is exactly what encode_image projects
    torch.testing.assert_close(f.pooled["pre_proj"] @ model.visual.proj, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.pooled["post_proj"], direct)
    torch.testing.assert_close(f.pooled[f"block{depth - 1}"], tokens[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.patches, tokens[:, 1:], atol=1e-5, rtol=1e-5)
    # blocks differ from each other (the hooks are not all reading one tensor)
    if depth > 1:
        assert not torch.allclose(f.pooled["block0"], f.pooled[f"block{depth - 1}"])


def test_text_layers_last_is_projection_input(tiny):
    model, _, tokenizer = tiny
    texts = ["a red circle and a blue square", "two green stars", "a red circle and a blue square"]
    f = text_layer_features(model, tokenizer, texts, batch_size=2)
    assert f.names == ["block0", "block1", "block2", "pre_proj", "post_proj"]
    assert all(f.pooled[n].shape == (3, 96) for n in f.names)
    with torch.no_grad():
        direct = model.encode_text(tokenizer(texts))
    torch.testing.assert_close(f.pooled["pre_proj"] @ model.text_projection, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.pooled["post_proj"], direct)
    torch.testing.assert_close(f.pooled["block2"][0], f.pooled["block2"][2])   # same string, same row
    assert not torch.allclose(f.pooled["block2"][0], f.pooled["block2"][1])


def test_layer_features_are_cached_per_layer_set(nano, tmp_path):
    model, preprocess, tokenizer = nano
    images = [synth.render(s) for s in _scenes(4)]
    cache = FeatureCache(tmp_path)
    first = image_layer_features(model, preprocess, images, cache=cache)
    second = image_layer_features(model, preprocess, images, cache=cache)
    with_patches = image_layer_features(model, preprocess, images, patches=True, cache=cache)
    assert not first.from_cache and second.from_cache and not with_patches.from_cache
    assert second.names == first.names
    for n in first.names:
        torch.testing.assert_close(second.pooled[n], first.pooled[n])
    names = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir())
    assert names == ["layers-image", "layers-image_patches"]   # slugified "layers-image+patches"
    other = image_layer_features(model, preprocess, images[:3], cache=cache)   # other pixels: a miss
    assert not other.from_cache
    t1 = text_layer_features(model, tokenizer, ["a red circle"], cache=cache)
    t2 = text_layer_features(model, tokenizer, ["a red circle"], cache=cache)
    assert not t1.from_cache and t2.from_cache


def test_patch_map_matches_direct_computation(tiny):
    model, preprocess, tokenizer = tiny
    visual = model.visual
    # a constructed input: dark pixels with one bright square in the top-left patch block
    pixels = torch.full((2, 3, 48, 48), -1.0)
    pixels[0, :, 0:16, 0:16] = 1.5
    pixels[1, 0, 24:40, 8:24] = 2.0
    text = encode_texts(model, tokenizer, ["a red circle"])[0]
    got = patch_similarity(model, pixels, text)
    with torch.no_grad():
        tokens = _manual_tokens(visual, pixels)[:, 1:]                          # (2, 36, 96)
        ln = visual.ln_post
        mu, var = tokens.mean(-1, keepdim=True), tokens.var(-1, unbiased=False, keepdim=True)
        z = (tokens - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias      # LayerNorm by hand
        z = z @ visual.proj                                                      # (2, 36, 96)
        cos = (z / z.norm(dim=-1, keepdim=True)) @ (text / text.norm())
    assert got.shape == (2, 6, 6)
    np.testing.assert_allclose(got, cos.reshape(2, 6, 6).numpy(), atol=1e-5)
    assert not np.allclose(got[0], got[1])
    # the PIL path gives the same map as the pixel path
    image = synth.render(_scenes(1)[0])
    via_pil = caption_maps(model, preprocess, tokenizer, [image], "a red circle")
    np.testing.assert_allclose(via_pil, patch_similarity(model, preprocess(image)[None], text), atol=1e-6)
    np.testing.assert_allclose(caption_maps(model, preprocess, tokenizer, [image], "a red circle", method="auto"),
                               via_pil)   # a ViT's automatic choice is the patch map


def test_gradcam_matches_manual_gradient(tiny):
    model, preprocess, tokenizer = tiny
    visual = model.visual
    pixels = torch.stack([preprocess(synth.render(s)) for s in _scenes(2)])
    text = F.normalize(encode_texts(model, tokenizer, ["a red circle", "a blue square"]), dim=-1)
    got = gradcam(model, pixels, text)
    # by hand: the last block split at its first LayerNorm, the gradient taken there
    x = visual._embeds(pixels)
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)
    last = visual.transformer.resblocks[-1]
    A = last.ln_1(x).detach().requires_grad_(True)
    h = x + last.attn(A, A, A, need_weights=False)[0]
    h = h + last.mlp(last.ln_2(h))
    img = F.normalize(visual.ln_post(h[:, 0]) @ visual.proj, dim=-1)
    (G,) = torch.autograd.grad((img * text).sum(), [A])
    w = G[:, 1:].mean(1, keepdim=True)
    want = torch.relu((A[:, 1:] * w).sum(-1)).reshape(2, 6, 6).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.max() > 0 and all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    d = tmp_path_factory.mktemp("rncfg")
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                                           "patch_size": None},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / "rn-test-nano.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    model, _, preprocess = create_model("rn-test-nano")
    yield model.eval(), preprocess, open_clip.get_tokenizer("rn-test-nano")
    open_clip.factory._MODEL_CONFIGS.pop("rn-test-nano", None)   # leave open_clip's registry as found


def test_resnet_gets_stages_and_gradcam_but_no_patch_map(resnet):
    model, preprocess, tokenizer = resnet
    images = [synth.render(s) for s in _scenes(3)]
    f = image_layer_features(model, preprocess, images)
    assert f.names == ["stage1", "stage2", "stage3", "stage4", "post_proj"]
    assert f.pooled["post_proj"].shape == (3, 32)
    with torch.no_grad():
        torch.testing.assert_close(f.pooled["post_proj"], model.encode_image(torch.stack([preprocess(i) for i in images])))
    with pytest.raises(NotAvailable, match="ModifiedResNet.*no transformer blocks or patch tokens"):
        image_layer_features(model, preprocess, images, patches=True)
    with pytest.raises(NotAvailable, match="patch"):
        caption_maps(model, preprocess, tokenizer, images, "a red circle", method="patch")
    cam = caption_maps(model, preprocess, tokenizer, images, "a red circle", method="gradcam")
    # 64 px: layer4's map is 2 x 2, under MIN_CAM_SIDE, so Grad-CAM reads layer3 (4 x 4)
    assert resnet_cam_stage(model.visual)[0] == "layer3"
    assert cam.shape == (3, 4, 4) and (cam >= 0).all() and cam.max() > 0
    np.testing.assert_allclose(caption_maps(model, preprocess, tokenizer, images, "a red circle", method="auto"), cam)
    avail = available_methods(model)
    assert avail["gradcam"] == "" and "ModifiedResNet" in avail["patch"] and "\n" not in avail["patch"]



def test_resnet_pointing_and_failure_maps_fall_back_to_gradcam(resnet):
    from types import SimpleNamespace

    import pandas as pd

    from clipkit.analysis.pointing import failure_maps, run_pointing
    model, preprocess, tokenizer = resnet
    df = run_pointing(model, preprocess, tokenizer, kinds=("count",), n=3, pooled=True)
    patch = df[df["method"] == "patch"]
    assert list(patch["kind"]) == ["count", "all"] and patch["accuracy"].isna().all()
    assert (patch["note"] == available_methods(model)["patch"]).all()          # the one-line reason, pooled too
    assert df[df["method"] == "gradcam"]["accuracy"].notna().all()
    scenes = _scenes(2)
    items = [SimpleNamespace(image=synth.render(s), captions=["a red circle", "a blue square"], answer=0) for s in scenes]
    table = pd.DataFrame({"item": [0, 1], "credit": [0.0, 1.0], "margin": [-0.1, 0.2], "pred": [1, 0],
                          "chosen_caption": ["a blue square", "a red circle"]})
    fm = failure_maps(SimpleNamespace(items=items, table=table), model, preprocess, tokenizer)
    assert fm["method"] == "gradcam" and len(fm["maps"]) == 2 and fm["titles"] == ["true: a red circle",
                                                                                  "chose: a blue square"]
    np.testing.assert_allclose(fm["maps"][1], caption_maps(model, preprocess, tokenizer, [items[0].image],
                                                           "a blue square", method="gradcam")[0], atol=1e-6)
    assert failure_maps(SimpleNamespace(items=items, table=table), model, preprocess, tokenizer,
                        method="patch")["note"] == available_methods(model)["patch"]

def test_unknown_tower_and_bad_inputs_say_what_is_wrong(nano):
    model, preprocess, tokenizer = nano

    class NoVisual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Linear(2, 2)

    with pytest.raises(NotAvailable, match="Linear is neither"):
        image_layer_features(NoVisual(), None, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="preprocess"):
        image_layer_features(model, None, [synth.render(_scenes(1)[0])])
    with pytest.raises(ValueError, match="one caption, or one per image"):
        caption_maps(model, preprocess, tokenizer, [synth.render(s) for s in _scenes(3)], ["a", "b"])
    with pytest.raises(ValueError, match="unknown map method"):
        caption_maps(model, preprocess, tokenizer, [synth.render(_scenes(1)[0])], "a", method="saliency")


def test_object_masks_agree_with_render():
    for kind in ("count", "relation", "binding"):
        for seed in range(8):
            scene = synth.make_scene(kind, seed)
            masks = synth.object_masks(scene, size=72)
            img = np.asarray(synth.render(scene, size=72), dtype=float)
            bg = np.array(scene.background, dtype=float)
            assert masks.shape == (len(scene.objects), 72, 72)
            assert (masks.sum(0) <= 1).all() and masks.sum((1, 2)).min() > 20
            for i, o in enumerate(scene.objects):
                colour = np.array(synth.COLOURS[o.colour], dtype=float)
                # a masked pixel is at least half object: nearer the object's colour than the background
                nearer = np.linalg.norm(img - colour, axis=-1) <= np.linalg.norm(img - bg, axis=-1) + 1.0
                others = masks.any(0) & ~masks[i]
                assert ((nearer != masks[i]) & ~others).sum() == 0, (kind, seed, i)
    # the mask moves with the object
    scene = synth.make_scene("binding", 0)
    moved = synth.Scene(scene.kind, (synth.Obj("circle", "red", 0.3, 0.3, 0.1),), scene.facts)
    m = synth.object_masks(moved, size=50)[0]
    ys, xs = np.nonzero(m)
    assert abs(xs.mean() - 0.3 * 50 + 0.5) < 1 and abs(ys.mean() - 0.3 * 50 + 0.5) < 1


def test_resnet_cam_stage_is_layer4_at_clip_sizes_and_the_deepest_3x3_on_small_inputs():
    from open_clip.modified_resnet import ModifiedResNet
    names = {s: resnet_cam_stage(ModifiedResNet([1, 1, 1, 1], 32, 2, image_size=s, width=8))[0]
             for s in (224, 96, 64, 48, 32)}
    assert names == {224: "layer4", 96: "layer4", 64: "layer3", 48: "layer3", 32: "layer2"}
