"""Measurements on CLIP models: features, K-way caption choice, retrieval (zero-shot and linear probe to come)."""
from clipkit.evaluate.choice import choice_scores, choose, winoground_scores
from clipkit.evaluate.features import encode_images, encode_texts
from clipkit.evaluate.retrieval import recall_at_k, retrieval_metrics

__all__ = ["choice_scores", "choose", "winoground_scores", "encode_images", "encode_texts",
           "recall_at_k", "retrieval_metrics"]
