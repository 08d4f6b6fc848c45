"""Prompt templates: the paper's 80 ImageNet templates, the 7 found by forward selection, and each
classification dataset's own (CLIP paper §3.1.4). Data, not code: the zero-shot head reads them."""
from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

# open_clip ships templates as lambdas; turn them into "{c}" strings (they are plain f-strings of c)
IMAGENET_TEMPLATES = [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]        # the paper's 80 (§3.1.4)
SIMPLE_TEMPLATES = [t("{c}") for t in SIMPLE_IMAGENET_TEMPLATES]          # the 7 found by forward selection

# Per-dataset templates of the CLIP paper's evaluation suite (OpenAI's CLIP repo, data/prompts.md,
# as packaged by CLIP_benchmark 1.6.2 in en_zeroshot_classification_templates.json).
_SMALL_OBJECTS = ["a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
                  "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
                  "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.",
                  "a photo of the {c}.", "a blurry photo of the {c}.", "a black and white photo of the {c}.",
                  "a low contrast photo of the {c}.", "a high contrast photo of the {c}.",
                  "a bad photo of the {c}.", "a good photo of the {c}.", "a photo of the small {c}.",
                  "a photo of the big {c}."]
DATASET_TEMPLATES: dict[str, list[str]] = {
    "imagenet1k": IMAGENET_TEMPLATES,
    "cifar10": _SMALL_OBJECTS,
    "cifar100": _SMALL_OBJECTS,
    "stl10": ["a photo of a {c}.", "a photo of the {c}."],
    "mnist": ['a photo of the number: "{c}".'],
    "svhn": ["a photo of the number {c} written on a sign", "an outdoor house number {c}",
             "the number {c} in the center of the image", "an outdoor number {c} writte on a sign",
             "an outdoor number {c}", "a centered image of the number {c}"],
    "flowers": ["a photo of a {c}, a type of flower."],
    "pets": ["a photo of a {c}, a type of pet."],
    "cars": ["a photo of a {c}.", "a photo of the {c}.", "a photo of my {c}.", "i love my {c}!",
             "a photo of my dirty {c}.", "a photo of my clean {c}.", "a photo of my new {c}.",
             "a photo of my old {c}."],
    "fgvc_aircraft": ["a photo of a {c}, a type of aircraft.", "a photo of the {c}, a type of aircraft."],
    "food101": ["a photo of {c}, a type of food."],
    "dtd": ["a photo of a {c} texture.", "a photo of a {c} pattern.", "a photo of a {c} thing.",
            "a photo of a {c} object.", "a photo of the {c} texture.", "a photo of the {c} pattern.",
            "a photo of the {c} thing.", "a photo of the {c} object."],
    "eurosat": ["a centered satellite photo of {c}.", "a centered satellite photo of a {c}.",
                "a centered satellite photo of the {c}."],
    "gtsrb": ['a zoomed in photo of a "{c}" traffic sign.', 'a centered photo of a "{c}" traffic sign.',
              'a close up photo of a "{c}" traffic sign.'],
    "renderedsst2": ["a {c} review of a movie."],
    "pcam": ["a histopathology slide showing {c}", "histopathology image of {c}"],
    "fer2013": ["a photo of a {c} looking face.", "a photo of a face showing the emotion: {c}.",
                "a photo of a face looking {c}.", "a face that looks {c}.", "they look {c}.",
                "look at how {c} they are."],
}
NAMED_TEMPLATES = {"openai": IMAGENET_TEMPLATES, "imagenet80": IMAGENET_TEMPLATES,
                   "simple": SIMPLE_TEMPLATES, "imagenet7": SIMPLE_TEMPLATES, "bare": ["{c}"],
                   "photo": ["a photo of a {c}."]}
