"""Measurements on CLIP models: features (cached, per layer too), zero-shot, linear probe, retrieval, K-way caption choice, maps."""
from clipkit.evaluate.choice import choice_scores, choose, winoground_scores
from clipkit.evaluate.features import encode_images, encode_texts
from clipkit.evaluate.retrieval import recall_at_k, retrieval_metrics
from clipkit.evaluate.cache import FeatureCache
from clipkit.evaluate.features import Features, extract_image_features
from clipkit.evaluate.zeroshot import (classification_metrics, evaluate_zeroshot, get_templates,
                                       zero_shot_classifier, zero_shot_logits)
# linear_probe() itself is not exported: it would shadow its module, clipkit.evaluate.linear_probe
from clipkit.evaluate.linear_probe import evaluate_linear_probe, kshot_probes
from clipkit.data.classification import (DatasetNotFound, ImageFolderClassification, SyntheticClassification,
                                         TorchvisionClassification, load_classification)
from clipkit.data.captions import CaptionsCSV, SyntheticCaptions   # retrieval datasets: in data/, beside training's
from clipkit.data.wds import CaptionsWebDataset
from clipkit.evaluate.retrieval_eval import evaluate_retrieval
from clipkit.core.records import merge_results, result_record, write_result
from clipkit.evaluate.layers import LayerFeatures, NotAvailable, image_layer_features, text_layer_features
from clipkit.evaluate.maps import available_methods, caption_maps

__all__ = ["choice_scores", "choose", "winoground_scores", "encode_images", "encode_texts",
           "recall_at_k", "retrieval_metrics"]
__all__ += ["FeatureCache", "Features", "extract_image_features", "classification_metrics", "evaluate_zeroshot",
            "get_templates", "zero_shot_classifier", "zero_shot_logits", "evaluate_linear_probe", "kshot_probes",
            "DatasetNotFound", "ImageFolderClassification", "SyntheticClassification",
            "TorchvisionClassification", "load_classification", "CaptionsCSV", "CaptionsWebDataset",
            "SyntheticCaptions", "evaluate_retrieval", "merge_results", "result_record", "write_result"]
__all__ += ["LayerFeatures", "NotAvailable", "image_layer_features", "text_layer_features", "available_methods",
            "caption_maps"]   # per-layer and patch-token features, maps: for any open_clip ViT (or ResNet)
