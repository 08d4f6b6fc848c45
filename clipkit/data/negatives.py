"""Hard-negative captions for real text: change one fact, keep every other word (NegCLIP / SugarCrepe).

`perturb_caption("two dogs to the left of a red car", rng, k=3)` might return
    "three dogs to the left of a red car"        (number replaced)
    "two dogs to the right of a red car"          (relation replaced by its opposite)
    "two cars to the left of a red dog"           (nouns swapped: NegCLIP's word-order negatives)
The candidates come from small closed word lists (number words and digits, spatial relations and
their opposites, colours, sizes, COCO object nouns), so a caption with none of these words gets
no negatives; the training item then marks its negative slots invalid. This is a rule-based
stand-in for the parser- and LLM-made negatives of the papers: cheap, deterministic given the
rng, and good at exactly the facts the probes ask about.
"""
from __future__ import annotations

import re

import numpy as np

NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# each phrase and its opposite; longer phrases first so "on top of" wins over "on"
RELATIONS = [("to the left of", "to the right of"), ("in front of", "behind"), ("on top of", "underneath"),
             ("left", "right"), ("above", "below"), ("over", "under"), ("inside", "outside"),
             ("top", "bottom"), ("before", "after"), ("up", "down"), ("near", "far from")]
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "brown", "pink",
           "grey", "gray", "cyan")
SIZES = [("small", "large"), ("big", "small"), ("tall", "short"), ("long", "short"), ("young", "old"),
         ("wide", "narrow"), ("thin", "thick"), ("empty", "full"), ("open", "closed")]
NOUNS = ("person", "man", "woman", "boy", "girl", "child", "people", "bicycle", "car", "motorcycle",
         "airplane", "bus", "train", "truck", "boat", "bench", "bird", "cat", "dog", "horse", "sheep",
         "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
         "suitcase", "frisbee", "ball", "kite", "skateboard", "surfboard", "bottle", "cup", "fork",
         "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "pizza", "cake", "chair",
         "couch", "sofa", "bed", "table", "toilet", "tv", "laptop", "phone", "book", "clock", "vase",
         "teddy", "tree", "house", "building", "street", "road", "plate", "box", "window", "door",
         "circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "pentagon")
PLURAL = {n: ("people" if n == "person" else "men" if n == "man" else "women" if n == "woman"
              else "children" if n == "child" else n + ("es" if n.endswith(("s", "x", "ch", "sh")) else "s"))
          for n in NOUNS}
_OPPOSITE = {a: b for a, b in RELATIONS} | {b: a for a, b in RELATIONS}
_SIZE = {a: b for a, b in SIZES} | {b: a for a, b in SIZES}
_REL_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _OPPOSITE), key=len, reverse=True)) + r")\b", re.I)
_WORD_RE = re.compile(r"[A-Za-z]+|\d+")
_NOUN_FORMS = {**{n: n for n in NOUNS}, **{p: n for n, p in PLURAL.items()}}


def _match_case(new: str, old: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def _replace(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + _match_case(new, text[start:end]) + text[end:]


def candidates(caption: str) -> list[tuple[str, str]]:
    """Every one-fact change of the caption as (kind, new caption), in a fixed order."""
    out = []
    for m in _REL_RE.finditer(caption):                              # relation -> its opposite
        out.append(("relation", _replace(caption, m.start(), m.end(), _OPPOSITE[m.group(0).lower()])))
    words = [(m.start(), m.end(), m.group(0).lower()) for m in _WORD_RE.finditer(caption)]
    for s, e, w in words:
        if w in NUMBERS or w.isdigit():                                # number -> another number
            n = NUMBERS.index(w) + 1 if w in NUMBERS else int(w)
            for m in (n - 1, n + 1, n + 2):   # stay >= 2: "one" would need a singular noun
                if 2 <= m <= 10 and n >= 2:
                    out.append(("number", _replace(caption, s, e, NUMBERS[m - 1] if w in NUMBERS else str(m))))
        elif w in _SIZE:                                               # size -> its opposite
            out.append(("attribute", _replace(caption, s, e, _SIZE[w])))
    colours = [(s, e, w) for s, e, w in words if w in COLOURS]
    if len(colours) >= 2 and colours[0][2] != colours[1][2]:          # binding: swap two colours
        (s1, e1, c1), (s2, e2, c2) = colours[:2]
        out.append(("binding", caption[:s1] + c2 + caption[e1:s2] + c1 + caption[e2:]))
    for s, e, w in colours[:2]:                                        # colour -> another colour
        other = COLOURS[(COLOURS.index(w) + 1 + len(caption)) % len(COLOURS)]
        if other != w and other not in ("grey", "gray"):
            out.append(("attribute", _replace(caption, s, e, other)))
    nouns = [(s, e, w) for s, e, w in words if w in _NOUN_FORMS]
    if len(nouns) >= 2 and _NOUN_FORMS[nouns[0][2]] != _NOUN_FORMS[nouns[1][2]]:  # swap two nouns
        (s1, e1, n1), (s2, e2, n2) = nouns[:2]
        # keep each slot's number: "two dogs ... a car" -> "two cars ... a dog"
        a = PLURAL[_NOUN_FORMS[n2]] if n1 != _NOUN_FORMS[n1] else _NOUN_FORMS[n2]
        b = PLURAL[_NOUN_FORMS[n1]] if n2 != _NOUN_FORMS[n2] else _NOUN_FORMS[n1]
        out.append(("object", caption[:s1] + a + caption[e1:s2] + b + caption[e2:]))
    seen, unique = {caption.lower()}, []
    for kind, text in out:
        if text.lower() not in seen:
            seen.add(text.lower())
            unique.append((kind, text))
    return unique


def perturb_caption(caption: str, rng: np.random.Generator, k: int = 1) -> list[str]:
    """Up to k distinct hard-negative captions for `caption`, picked at random from `candidates`."""
    cands = [text for _, text in candidates(caption)]
    if len(cands) <= k:
        return cands
    return [cands[i] for i in sorted(rng.choice(len(cands), size=k, replace=False))]
