"""Parity with the reference implementations: open_clip's zero-shot classifier builder and CLIP_benchmark's
zero-shot classification and retrieval evaluations, on the same model and data (clipkit-nano, synthetic scenes).

CLIP_benchmark (test dependency, clip_benchmark==1.6.2) runs here on CPU with amp=False, so both sides
compute in fp32 and agree to float rounding.
"""
import builtins
import os

import numpy as np
import pytest
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from torch.utils.data import DataLoader

from clipkit.world import synth
from clipkit.evaluate import zeroshot as zs
from clipkit.data.classification import SyntheticClassification
from clipkit.evaluate.retrieval import recall_at_k
from clipkit.data.captions import CaptionsCSV, image_captions_collate
from clipkit.evaluate.retrieval_eval import evaluate_retrieval

try:
    import clip_benchmark.metrics.zeroshot_classification as cb_zs
    import clip_benchmark.metrics.zeroshot_retrieval as cb_ret
except ImportError:
    if os.environ.get("CI"):  # in CI the parity tests must run, never silently skip
        raise
    pytest.skip("clip_benchmark is not installed: pip install --no-deps clip_benchmark==1.6.2",
                allow_module_level=True)


@pytest.fixture(autouse=True)
def _numpy2_scalar_shim(monkeypatch):
    """clip_benchmark 1.6.2's `accuracy` calls float() on a 1-element 1-d array, which NumPy >= 2.4
    refuses. Give its module a float() that takes the element; none of its logic changes."""
    def float_(x=0.0):
        return builtins.float(x.reshape(-1)[0]) if isinstance(x, np.ndarray) and x.size == 1 else builtins.float(x)
    monkeypatch.setattr(cb_zs, "float", float_, raising=False)


@pytest.fixture(scope="module")
def shapes(nano):
    return SyntheticClassification("shape", n=60, transform=nano[1])


def test_classifier_weights_equal_open_clip_builder(nano):
    import open_clip
    model, _, tokenizer = nano
    classes = list(synth.BASIC_SHAPES) + ["pentagon", "hexagon", "octagon", "heptagon", "ring", "arrow"]
    ours = zs.zero_shot_classifier(model, tokenizer, classes, zs.IMAGENET_TEMPLATES)
    ref = open_clip.build_zero_shot_classifier(model, tokenizer, classes, OPENAI_IMAGENET_TEMPLATES,
                                               num_classes_per_batch=5, device="cpu")
    assert ours.shape == ref.shape == (model.text_projection.shape[1], len(classes))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    legacy = open_clip.zero_shot_classifier.build_zero_shot_classifier_legacy(
        model, tokenizer, classes, SIMPLE_IMAGENET_TEMPLATES, device="cpu")
    ours = zs.zero_shot_classifier(model, tokenizer, classes, zs.get_templates("simple"))
    torch.testing.assert_close(ours, legacy, atol=1e-6, rtol=0)


def test_classifier_weights_equal_clip_benchmark(nano, shapes):
    model, _, tokenizer = nano
    ref = cb_zs.zero_shot_classifier(model, tokenizer, shapes.classes, shapes.templates, "cpu", amp=False)
    ours = zs.zero_shot_classifier(model, tokenizer, shapes.classes, shapes.templates)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_zeroshot_metrics_equal_clip_benchmark_evaluate(nano, shapes, tmp_path):
    model, _, tokenizer = nano
    loader = DataLoader(shapes, batch_size=16)
    ref = cb_zs.evaluate(model, loader, tokenizer, shapes.classes, zs.IMAGENET_TEMPLATES, "cpu", amp=False)
    ours = zs.evaluate_zeroshot(model, tokenizer, shapes, templates="openai", batch_size=16, cache=tmp_path,
                                progress=False, return_logits=True)
    for k in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k
    # and the logits themselves, from CLIP_benchmark's own loop
    classifier = cb_zs.zero_shot_classifier(model, tokenizer, shapes.classes, zs.IMAGENET_TEMPLATES, "cpu", amp=False)
    logits, target = cb_zs.run_classification(model, classifier, loader, "cpu", amp=False)
    torch.testing.assert_close(ours["logits"] / 100, logits / 100, atol=1e-6, rtol=0)  # cosines to 1e-6
    assert torch.equal(ours["targets"], target)


def test_metric_functions_equal_clip_benchmark_on_random_logits():
    from sklearn.metrics import balanced_accuracy_score
    rng = np.random.default_rng(0)
    for n_classes in (3, 7, 20):
        logits = rng.normal(size=(200, n_classes)).astype(np.float32)
        y = rng.integers(0, n_classes, 200)
        ours = zs.classification_metrics(logits, y)
        acc = cb_zs.accuracy(torch.from_numpy(logits), torch.from_numpy(y), topk=(1, min(5, n_classes)))
        assert ours["acc1"] == pytest.approx(acc[0], abs=1e-12)
        if n_classes >= 5:
            assert ours["acc5"] == pytest.approx(acc[1], abs=1e-12)
        assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(y, logits.argmax(1)), abs=1e-12)


def test_recall_at_k_equals_clip_benchmark_on_random_scores():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(40, 25))
    pos = np.zeros((40, 25), bool)
    pos[np.arange(40), rng.integers(0, 25, 40)] = True
    pos[rng.integers(0, 40, 10), rng.integers(0, 25, 10)] = True  # some queries with several positives
    for k in (1, 5, 10):
        ref = cb_ret.recall_at_k(torch.from_numpy(scores), torch.from_numpy(pos), k) > 0
        assert np.array_equal(recall_at_k(scores, pos, k), ref.numpy())


def test_retrieval_recall_equals_clip_benchmark_evaluate(nano, tmp_path):
    """Several captions per image (COCO layout, CSV rows sharing a filepath), all distinct strings."""
    model, preprocess, tokenizer = nano
    rows = ["filepath,title"]
    for i in range(30):
        scene = synth.corpus_item(i, seed=999)
        synth.render(scene, size=48).save(tmp_path / f"{i}.png")
        rows += [f"{i}.png,{i} {synth.caption(scene)}", f"{i}.png,picture {i}"]
        if i % 3 == 0:
            rows.append(f"{i}.png,the scene number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    ds = CaptionsCSV(tmp_path / "pairs.csv", transform=preprocess)
    loader = DataLoader(ds, batch_size=8, collate_fn=image_captions_collate)
    ref = cb_ret.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    ours = evaluate_retrieval(model, tokenizer, ds, ks=(1, 5, 10), batch_size=8, cache=tmp_path / "c", progress=False)
    assert set(ref) == set(ours) and 0 < ours["image_retrieval_recall@5"] < 1  # not a trivial case
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k
