"""Zero-shot classification: metrics on hand-made logits, prompt ensembling by hand, templates, result records."""
import json
import math

import numpy as np
import pytest
import torch

from clipkit.evaluate import zeroshot as zs
from clipkit.data.classification import SyntheticClassification
from clipkit.core.records import merge_results, result_path, result_record, split_spec, write_result


def test_topk_accuracy_and_per_class_recall_by_hand():
    logits = np.array([[3, 2, 1, 0, -1, -2],    # target 0: top-1
                       [0, 3, 2, 1, -1, -2],    # target 2: top-2
                       [5, 4, 3, 2, 1, 0],      # target 5: last -> not in top-5
                       [0, 1, 2, 3, 4, 5]])     # target 0: last
    y = np.array([0, 2, 5, 0])
    m = zs.classification_metrics(logits, y)
    assert m["acc1"] == 0.25 and m["acc5"] == 0.5
    # classes present: 0 (1 of 2 right), 2 (0 of 1), 5 (0 of 1) -> (0.5 + 0 + 0) / 3
    assert m["mean_per_class_recall"] == pytest.approx(0.5 / 3)


def test_acc5_is_nan_with_fewer_than_five_classes():
    m = zs.classification_metrics(np.eye(4), np.arange(4))
    assert m["acc1"] == 1.0 and math.isnan(m["acc5"]) and m["mean_per_class_recall"] == 1.0


def test_classifier_is_the_normalised_mean_of_normalised_prompt_embeddings(nano):
    model, _, tokenizer = nano
    classes, templates = ["circle", "square", "star"], ["a {c}.", "a photo of a {c}.", "{c}"]
    w = zs.zero_shot_classifier(model, tokenizer, classes, templates)
    assert w.shape == (model.text_projection.shape[1], 3)
    with torch.no_grad():
        for j, c in enumerate(classes):
            e = model.encode_text(tokenizer([t.format(c=c) for t in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            ref = e.mean(0) / e.mean(0).norm()
            torch.testing.assert_close(w[:, j], ref, atol=1e-6, rtol=0)


def test_logits_use_a_fixed_scale_of_100():
    img = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    w = torch.nn.functional.normalize(torch.randn(8, 3), dim=0)
    torch.testing.assert_close(zs.zero_shot_logits(img, w), 100 * img @ w)


def test_templates_sets_and_validation():
    assert len(zs.get_templates("openai")) == 80 and len(zs.get_templates("simple")) == 7
    assert zs.get_templates("openai")[0] == "a bad photo of a {c}."
    assert set(zs.get_templates("simple")) <= set(zs.get_templates("openai"))
    assert zs.get_templates("cifar10")[0] == "a photo of a {c}." and len(zs.get_templates("cifar10")) == 18
    assert zs.get_templates(None) == zs.IMAGENET_TEMPLATES
    count = SyntheticClassification("count")
    assert zs.get_templates(None, count) == ["{c}.", "a photo of {c}."]
    # singular for one: the prompts read "one shape." and "a photo of two shapes.", never "one shapes"
    assert count.classes[:2] == ["one shape", "two shapes"]
    prompts = [t.format(c=c) for c in count.classes for t in zs.get_templates(None, count)]
    assert "one shape." in prompts and "a photo of two shapes." in prompts and not any("one shapes" in p for p in prompts)
    with pytest.raises(ValueError, match="placeholder"):
        zs.get_templates(["a photo of a dog"])
    with pytest.raises(ValueError, match="unknown templates"):
        zs.get_templates("imagenet-81")
    assert zs.class_prompts("cat", {"cat": ["a cat, small", "a feline"]}) == ["a cat, small", "a feline"]
    assert zs.class_prompts("cat", [lambda c: f"itap of a {c}."]) == ["itap of a cat."]


def test_evaluate_zeroshot_end_to_end(nano, tmp_path):
    model, preprocess, tokenizer = nano
    ds = SyntheticClassification("shape", n=18, transform=preprocess)
    m = zs.evaluate_zeroshot(model, tokenizer, ds, cache=tmp_path, progress=False, return_logits=True)
    assert set(m) >= {"acc1", "acc5", "mean_per_class_recall"} and m["logits"].shape == (18, 6)
    # against an independent implementation (scikit-learn), not classification_metrics itself
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score
    logits, y = np.asarray(m["logits"]), np.asarray(m["targets"])
    assert m["acc1"] == pytest.approx(accuracy_score(y, logits.argmax(1)))
    assert m["acc5"] == pytest.approx(top_k_accuracy_score(y, logits, k=5, labels=np.arange(6)))
    assert m["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(y, logits.argmax(1)))
    few = zs.evaluate_zeroshot(model, tokenizer, SyntheticClassification("size", n=9, transform=preprocess),
                               templates=["a {c} thing."], cache=tmp_path, progress=False)
    assert math.isnan(few["acc5"])  # 3 classes


def test_result_records_files_and_merge(tmp_path):
    assert split_spec("ViT-B-32:openai") == ("ViT-B-32", "openai")
    assert split_spec("clipkit-tiny") == ("clipkit-tiny", "random")
    assert split_spec("hf-hub:org/name") == ("hf-hub:org/name", "")
    r1 = result_record("cifar10", "ViT-B-32:openai", "zeroshot_classification",
                       {"acc1": 0.9, "acc5": float("nan"), "mean_per_class_recall": 0.8}, config={"templates": "openai"})
    r2 = result_record("synthetic_captions", "clipkit-tiny:synthetic", "zeroshot_retrieval",
                       {"image_retrieval_recall@5": 0.5, "text_retrieval_recall@5": 0.6})
    assert {"dataset", "model", "pretrained", "task", "metrics", "language", "config", "versions"} <= set(r1)
    assert r1["versions"]["torch"] and r1["config"]["model_spec"] == "ViT-B-32:openai"
    p1, p2 = write_result(r1, tmp_path), write_result(r2, tmp_path)
    assert p1.name == "cifar10_ViT-B-32_openai_zeroshot_classification.json"
    assert p2 == result_path(tmp_path, "synthetic_captions", "clipkit-tiny:synthetic", "zeroshot_retrieval")
    assert json.loads(p1.read_text())["metrics"]["acc5"] is None   # NaN is written as null (strict JSON)
    table = merge_results(tmp_path)
    assert len(table) == 2 and list(table.columns[:5]) == ["dataset", "model", "pretrained", "task", "language"]
    row = table.set_index("dataset").loc["cifar10"]
    assert row["acc1"] == 0.9 and math.isnan(row["acc5"]) and math.isnan(row["text_retrieval_recall@5"])
    with pytest.raises(ValueError, match="unknown task"):
        result_record("x", "m", "zero-shot", {})
