"""`evaluate_retrieval`: image->text and text->image recall@k of a model on an image-caption dataset.

The datasets live in clipkit.data beside the training ones: CaptionsCSV and SyntheticCaptions in
clipkit.data.captions, CaptionsWebDataset in clipkit.data.wds; each item is `(image, [caption, ...])`.
Recall@k itself is `clipkit.evaluate.retrieval.retrieval_metrics` (image->text averaged over images,
text->image over captions, as CLIP_benchmark does).
"""
from __future__ import annotations

import numpy as np

from clipkit.evaluate.features import encode_texts, extract_image_features
from clipkit.evaluate.retrieval import retrieval_metrics


def evaluate_retrieval(model, tokenizer, dataset, ks=(1, 5, 10), batch_size: int = 256, num_workers: int = 0,
                       cache=True, progress: bool = True) -> dict:
    """image->text and text->image recall@k of `model` on an image-caption dataset.

    Keys as CLIP_benchmark writes them: image_retrieval_recall@k (text -> image, averaged over
    captions) and text_retrieval_recall@k (image -> text, averaged over images).
    """
    feats = extract_image_features(model, dataset, batch_size=batch_size, num_workers=num_workers,
                                   cache=cache, progress=progress)
    captions = feats.labels                                        # one list per kept image
    flat = [c for caps in captions for c in caps]
    if not flat:
        raise ValueError(f"{getattr(dataset, 'name', dataset)} has no captions")
    text_to_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    text = encode_texts(model, tokenizer, flat)                    # (T, d)
    return retrieval_metrics(feats.features.numpy(), text.numpy(), text_to_image, ks)
