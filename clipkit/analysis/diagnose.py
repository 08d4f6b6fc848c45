"""Where a caption-choice failure lives: the image encoder, the text encoder, or the match between them.

Three numbers per probe, each an accuracy with its 95% CI, chance and n:

- image_side: a linear probe (appendix A.3's protocol) on the L2-normalised image embeddings of the
  probe's items, predicting the probed factor; fitted on one half of the items, scored on the other.
  Each held-out item is answered among the factor values of its own candidate captions, so the
  readout faces the probe's own K-way question and the same chance level.
- text_side: the same linear probe on the text embeddings of the candidate captions (each caption
  labelled with the factor value it states, answered among its item's candidates), fitted and
  scored on disjoint halves of the distinct captions; plus the cosine between each true caption and
  its foils. Where the foils use exactly the true caption's words (the swap and binding families:
  the factor is carried by word order alone), a bag-of-words text encoder gives cosine 1.0 and
  this probe stays at chance.
- cross_modal: the probe's own choice accuracy (its summary).

The probed factor is read from the captions with the synthetic grammar (clipkit.world.synth), so it
is the same for every spec of a family and for every model:

    counting   the number word ("three red circles" -> 3)
    spatial    the relation of the alphabetically first object to the other ("a red circle to the left
               of a blue square" -> "right of": the blue square is right of the red circle), so that
               the label says which object is where, not which was named first
    binding    the colour of the alphabetically first shape ("a red square and a blue circle" -> "blue")

Real-data probes (jsonl) have no such factor: their image and text sides say so and keep only the
cosines. `read_pattern` turns the three numbers into a sentence from their CIs alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipkit.core import stats
from clipkit.evaluate.features import encode_images, encode_texts
from clipkit.evaluate.linear_probe import fit_linear_probe, predict, split_validation
from clipkit.world import synth

HELD_OUT = 0.5          # fraction of items (or captions) scored; the rest fit the probe
IDENTICAL = 1 - 1e-6    # cosine at or above which two caption embeddings count as the same point
KEYS = ("accuracy", "ci_low", "ci_high", "chance", "n")

_NOUN = re.compile(r"\b({}) ({})\b".format("|".join(sorted(synth.COLOURS, key=len, reverse=True)),
                                           "|".join(re.escape(s) for s in sorted(synth.SHAPES, key=len, reverse=True))))
_RELATION = re.compile("|".join(sorted(synth.RELATION_PHRASES.values(), key=len, reverse=True)))
_PHRASE_TO_REL = {p: r for r, p in synth.RELATION_PHRASES.items()}


# --- decodability ---------------------------------------------------------------------------------
def decodability(X, y, seed: int = 0, held_out: float = HELD_OUT, allowed=None) -> dict:
    """Held-out accuracy of a linear probe predicting y from X, with its 95% CI, chance and n.

    The rows are split (stratified by y, seeded) into a fit part and a disjoint held-out part of
    `held_out` of each class; features are standardised with the fit part's mean and spread, the
    probe is fitted by appendix A.3's lambda sweep on the fit part alone and scored on the held-out part.

    allowed: None, or per row the values the answer is chosen among (a probe item's candidates: the
    probe's own K-way question asked of a linear readout). A held-out row is then answered by the
    allowed value the probe scores highest. chance is the held-out accuracy of the best constant
    answer: the allowed value most frequent in the fit part (without `allowed`: the majority-class
    rate, 1/k for a balanced factor and honest for an unbalanced one). Restricting to the candidates
    keeps chance honest for swaps: a bag-of-words encoder knows which two colours a caption names,
    so over all colours it would beat 1/k without knowing which shape has which.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"decodability needs X of shape (n, d) and n labels, got X {X.shape} and {len(y)} labels")
    if allowed is not None and len(allowed) != len(y):
        raise ValueError(f"allowed needs one list of values per row: {len(allowed)} lists for {len(y)} rows")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"decodability needs a factor with at least two values, got only {classes.tolist()}")
    fit, test = split_validation(codes, held_out, seed)
    if len(np.unique(codes[fit])) < 2 or len(test) == 0:
        raise ValueError(f"too few rows ({len(y)}) for a fit / held-out split of {len(classes)} classes; "
                         "give at least two rows per class")
    mu, sd = X[fit].mean(0), X[fit].std(0)
    Z = (X - mu) / np.where(sd > 1e-12, sd, 1.0)     # constant columns stay constant (0)
    clf, lam = fit_linear_probe(Z[fit], codes[fit], seed=seed)
    freq = np.bincount(codes[fit], minlength=len(classes)).astype(float)
    if allowed is None:
        correct = predict(clf, Z[test]) == codes[test]
        chance = float(np.mean(codes[test] == freq.argmax()))
    else:
        index = {c: i for i, c in enumerate(classes.tolist())}
        proba = np.full((len(test), len(classes)), -1.0)
        proba[:, clf.classes_] = clf.predict_proba(Z[test])     # a value never seen in fit scores -1
        correct, base = [], []
        for row, i in enumerate(test):
            # sorted by value, not by candidate position: ties must not fall to the true caption's
            # slot (a spec may always put the true caption first)
            ok = sorted({index[v] for v in allowed[i] if v in index})
            correct.append(ok[int(np.argmax(proba[row, ok]))] == codes[i])
            base.append(ok[int(np.argmax(freq[ok]))] == codes[i])
        correct, chance = np.asarray(correct), float(np.mean(base))
    s = stats.accuracy_summary(correct, chance, seed=seed)
    return {**{k: s[k] for k in KEYS}, "verdict": s["verdict"], "n_fit": len(fit),
            "classes": len(classes), "lambda": float(lam)}


# --- the probed factor, read from the captions ----------------------------------------------------
def _nouns(caption: str) -> list[tuple[str, str]]:
    return _NOUN.findall(caption)


def caption_factor(family: str, caption: str):
    """The factor value a caption states (see the module docstring), or None if it does not parse."""
    if family == "counting":
        words = [w for w in re.findall(r"[a-z]+", caption.lower()) if w in synth.NUMBER_WORDS[1:]]
        return synth.NUMBER_WORDS.index(words[0]) if words else None
    nouns = _nouns(caption)
    if len(nouns) != 2:
        return None
    if family == "spatial":
        m = _RELATION.search(caption)
        if not m:
            return None
        rel, (a, b) = _PHRASE_TO_REL[m.group(0)], nouns
        return rel if " ".join(a) <= " ".join(b) else synth.INVERSE[rel]
    if family == "binding":
        return min(nouns, key=lambda p: p[1])[0]
    return None


def probe_family(result) -> str:
    """The family / kind of a probe result's spec ("counting", "spatial", "binding", "jsonl", ...)."""
    spec = result.spec
    return str(getattr(spec, "kind", None) or getattr(spec, "family", None) or "")


@dataclass
class FactorLabels:
    """The probed factor of every item and of every candidate caption (None where it does not apply)."""
    family: str
    image: list | None            # the true caption's factor, per item
    captions: list[list] | None   # the factor each candidate states, per item
    order_only: bool              # every foil uses exactly its true caption's words


def factor_labels(result) -> FactorLabels:
    """Read the probed factor of a caption-choice result's items from their captions."""
    items = getattr(result, "items", None)
    if not items:
        raise ValueError("this probe result holds no items (images and captions): rerun the probe to diagnose it")
    family = probe_family(result)
    words = lambda c: sorted(c.lower().split())
    order_only = all(words(c) == words(it.captions[it.answer]) for it in items for c in it.captions)
    labels = [[caption_factor(family, c) for c in it.captions] for it in items]
    if any(v is None for row in labels for v in row):
        return FactorLabels(family, None, None, order_only)
    return FactorLabels(family, [row[it.answer] for row, it in zip(labels, items)], labels, order_only)


# --- the three numbers ----------------------------------------------------------------------------
def _unmeasured(reason: str) -> dict:
    return {"accuracy": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "chance": float("nan"),
            "n": 0, "note": reason}


def caption_cosines(caption_X: list[np.ndarray], answers) -> dict:
    """Cosines between each true caption's embedding and its foils' (rows L2-normalised here)."""
    cos, distinct = [], []
    for X, a in zip(caption_X, answers):
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        c = np.delete(X @ X[a], a)                         # (K - 1,) true vs each foil
        cos.extend(c.tolist())
        distinct.append(bool(np.all(c < IDENTICAL)))
    cos = np.asarray(cos)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "max": float(cos.max()),
            "identical": float(np.mean(cos >= IDENTICAL)), "items_distinct": float(np.mean(distinct))}


def text_side(captions: list[list[str]], caption_X: list[np.ndarray], answers, labels: list[list] | None,
              seed: int = 0, order_only: bool = False) -> dict:
    """Decodability of the factor from text embeddings of the distinct captions, plus the true-vs-foil cosines."""
    cosine = caption_cosines(caption_X, answers)
    if labels is None:
        return {**_unmeasured("the captions carry no synthetic factor to decode"), "cosine": cosine,
                "order_only": order_only}
    rows: dict[str, tuple] = {}
    for caps, X, labs in zip(captions, caption_X, labels):
        for c, x, lab in zip(caps, X, labs):   # one row per distinct string, chosen among its item's candidates
            rows.setdefault(c, (x, str(lab), [str(v) for v in labs]))
    X = np.stack([v[0] for v in rows.values()])
    y = np.array([v[1] for v in rows.values()])
    return {**decodability(X, y, seed=seed, allowed=[v[2] for v in rows.values()]), "cosine": cosine,
            "order_only": order_only}


def cross_modal(summary: dict) -> dict:
    """The probe's own choice accuracy, CI, chance and n, from its summary."""
    missing = [k for k in KEYS if k not in summary]
    if missing:
        raise ValueError(f"the probe summary lacks {missing}: pass a caption-choice probe's summary")
    return {k: summary[k] for k in KEYS}


def diagnose(result, model, preprocess, tokenizer, seed: int = 0) -> dict:
    """{"factor", "image_side", "text_side", "cross_modal", "pattern"} for a caption-choice probe result."""
    labels = factor_labels(result)
    items = result.items
    captions = [list(it.captions) for it in items]
    flat = encode_texts(model, tokenizer, [c for caps in captions for c in caps]).numpy()
    caption_X, offset = [], 0
    for caps in captions:
        caption_X.append(flat[offset:offset + len(caps)])
        offset += len(caps)
    answers = [it.answer for it in items]
    if labels.image is None:
        image = _unmeasured(f"{labels.family or 'this'} probe's captions carry no synthetic factor to decode")
    else:
        X = encode_images(model, preprocess, [it.image for it in items]).numpy()
        image = decodability(X, np.array([str(v) for v in labels.image]), seed=seed,
                             allowed=[[str(v) for v in row] for row in labels.captions])
    three = {"factor": labels.family, "image_side": image,
             "text_side": text_side(captions, caption_X, answers, labels.captions, seed, labels.order_only),
             "cross_modal": cross_modal(result.summary)}
    three["pattern"] = read_pattern(three)
    return three


def for_summary(three: dict) -> dict:
    """The summary / JSON entries of a diagnosis: image_side, text_side, cross_modal (each accuracy,
    ci_low, ci_high, chance, n; NaN as None) and the sentence as `diagnosis`."""
    def clean(v):
        return None if isinstance(v, float) and not np.isfinite(v) else v
    out = {side: {k: clean(three[side][k]) for k in KEYS} for side in ("image_side", "text_side", "cross_modal")}
    out["text_side"]["cosine_mean"] = clean(three["text_side"]["cosine"]["mean"])
    out["text_side"]["cosine_identical"] = clean(three["text_side"]["cosine"]["identical"])
    return {**out, "diagnosis": three["pattern"]}


def diagnose_result(result, model, preprocess, tokenizer, seed: int | None = None) -> dict:
    """The diagnosis of a caption-choice result, JSON-safe: {"image_side", "text_side", "cross_modal"}
    (each accuracy, ci_low, ci_high, chance, n; NaN as None) and "pattern", the sentence read from
    them. seed: the split seed (default: the probe spec's seed)."""
    seed = getattr(result.spec, "seed", 0) if seed is None else seed
    out = for_summary(diagnose(result, model, preprocess, tokenizer, seed=seed or 0))
    out["pattern"] = out.pop("diagnosis")
    return out


def is_caption_choice(result) -> bool:
    """True for a result the diagnosis applies to: items (image, candidate captions) and a choice summary."""
    items, summary = getattr(result, "items", None), getattr(result, "summary", None)
    # a shift result's items are a DataFrame of conditions, a benchmark result has none: not questions
    questions = isinstance(items, (list, tuple)) and len(items) > 0 and all(
        hasattr(items[0], k) for k in ("image", "captions", "answer"))
    return questions and isinstance(summary, dict) and all(k in summary for k in KEYS)


def add_diagnosis(result, model, preprocess, tokenizer, seed: int | None = None) -> dict | None:
    """Put the diagnosis into a caption-choice result's summary (and so into the JSON its .save
    writes, and into .metrics() as image_side_accuracy, ...): image_side, text_side, cross_modal
    and the sentence as `diagnosis`. The flat keys the report index reads (accuracy, ci_low, ...)
    are left as they are. Returns `diagnose_result`'s dict, or None for a result of another kind
    (fine-grained, shift: no candidate captions to diagnose), which is left unchanged."""
    if not is_caption_choice(result):
        return None
    three = diagnose_result(result, model, preprocess, tokenizer, seed=seed)
    result.summary.update({side: three[side] for side in ("image_side", "text_side", "cross_modal")})
    result.summary["diagnosis"] = three["pattern"]
    return three


def diagnosis_table(diagnoses: dict) -> pd.DataFrame:
    """One row per probe ({probe name: diagnose(...)}): the three accuracies, their CIs and chance, the sentence."""
    rows = []
    for name, three in diagnoses.items():
        row = {"probe": name}
        for side in ("image_side", "text_side", "cross_modal"):
            row.update({f"{side}_{k}": three[side][k] for k in KEYS})
        rows.append({**row, "cosine_mean": three["text_side"]["cosine"]["mean"], "diagnosis": three["pattern"]})
    return pd.DataFrame(rows)


# --- the pattern in words -------------------------------------------------------------------------
def _state(side: dict | None) -> str:
    """above / at / below chance by the CI, or unmeasured."""
    if not side or not np.isfinite(side.get("accuracy", np.nan)) or not side.get("n"):
        return "unmeasured"
    return "above" if side["ci_low"] > side["chance"] else "below" if side["ci_high"] < side["chance"] else "at"


def read_pattern(three: dict) -> str:
    """The verdict in words, computed from the three sides' accuracies, CIs and chance levels only."""
    sides = {"image": three.get("image_side"), "text": three.get("text_side")}
    cross = three.get("cross_modal")
    st = {k: _state(v) for k, v in sides.items()}
    cs = _state(cross)
    num = lambda s: f"{s['accuracy']:.2f}"                         
    with_chance = lambda s: f"{s['accuracy']:.2f}, chance {s['chance']:.2f}"
    yes = [f"the {k} ({num(sides[k])})" for k in sides if st[k] == "above"]
    no = [f"the {k} ({with_chance(sides[k])})" for k in sides if st[k] in ("at", "below")]
    unmeasured = [k for k in sides if st[k] == "unmeasured"]
    parts = []
    if yes:
        parts.append("decodable from " + " and ".join(yes))
    if no:
        parts.append(("but " if yes else "") + "not decodable from " + " nor ".join(no))
    head = ", ".join(parts) if parts else "neither side measured"
    if cs == "unmeasured":
        return head + "; the match was not measured"
    match = {"above": f"matched ({num(cross)})", "at": f"not matched ({with_chance(cross)})",
             "below": f"matched below chance ({with_chance(cross)})"}[cs]
    bow = " (a bag-of-words reading: the foils use the same words)" if (sides["text"] or {}).get("order_only") else ""
    if cs == "above":
        if st["image"] == st["text"] == "above":
            partial = cross["ci_high"] < min(sides[k]["ci_low"] for k in sides)
            verdict = "a partial alignment loss" if partial else "no failure on this factor"
        elif no:
            verdict = ("matched without a linearly decodable side: the factor may be read non-linearly, "
                       f"or the linear probe is underpowered at n={min(s['n'] for s in sides.values() if s)}")
        else:
            verdict = "matched; the unmeasured side cannot be judged"
    elif st["image"] == "above" and st["text"] == "above":
        verdict = "an alignment failure"
    elif st["image"] == "above" and st["text"] in ("at", "below"):
        verdict = "a text-side failure: the text encoder does not represent it" + bow
    elif st["text"] == "above" and st["image"] in ("at", "below"):
        verdict = "an image-side failure: the image encoder does not represent it"
    elif st["image"] in ("at", "below") and st["text"] in ("at", "below"):
        verdict = "neither encoder represents it"
    else:
        verdict = "undetermined: " + " and ".join(f"the {k} side" for k in unmeasured) + " not measured"
    if cs == "below":
        verdict += "; the model prefers the foil"
    same = ((sides["text"] or {}).get("cosine") or {}).get("identical", 0.0)
    if same > 0:
        verdict += f"; the text encoder maps {same:.0%} of caption-foil pairs to one point (cosine 1.0)"
    if cs == "above":
        joiner = " and " if not no else ", yet "
    else:
        joiner = " but " if yes and not no else ", and "
    return f"{head}{joiner}{match}: {verdict}"


# --- layer curves ---------------------------------------------------------------------------------
def layer_curve(feats, y, seed: int = 0, allowed=None) -> pd.DataFrame:
    """Decodability of y at every depth of a LayerFeatures (one row per layer, in depth order);
    `allowed` as in `decodability`."""
    rows = []
    for depth, name in enumerate(feats.names):
        d = decodability(feats.matrix(name), y, seed=seed, allowed=allowed)
        rows.append({"tower": feats.tower, "layer": name, "depth": depth,
                     **{k: v for k, v in d.items() if k != "verdict"}})
    return pd.DataFrame(rows)


def probe_layer_curves(result, model, preprocess, tokenizer, seed: int = 0, cache=False) -> pd.DataFrame:
    """Image- and text-tower layer curves of a probe's factor, asked as the image and text sides are:
    its items' images and its distinct captions, each answered among its item's candidate values."""
    from clipkit.evaluate.layers import image_layer_features, text_layer_features
    labels = factor_labels(result)
    if labels.image is None:
        raise ValueError(f"the {labels.family or 'given'} probe's captions carry no synthetic factor: no layer curves")
    items = result.items
    choices = [[str(v) for v in row] for row in labels.captions]
    img = image_layer_features(model, preprocess, [it.image for it in items], cache=cache)
    distinct: dict[str, tuple] = {}
    for it, labs, ch in zip(items, labels.captions, choices):
        for c, lab in zip(it.captions, labs):
            distinct.setdefault(c, (str(lab), ch))
    txt = text_layer_features(model, tokenizer, list(distinct), cache=cache)
    return pd.concat([layer_curve(img, np.array([str(v) for v in labels.image]), seed, allowed=choices),
                      layer_curve(txt, np.array([v[0] for v in distinct.values()]), seed,
                                  allowed=[v[1] for v in distinct.values()])], ignore_index=True)
