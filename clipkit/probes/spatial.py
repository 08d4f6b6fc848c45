"""Spatial relations probe: left of / right of / above / below between two objects, in mirrored pairs.

Items come in pairs: item 2p is a scene, item 2p+1 the same two objects with their places exchanged,
so its relation is the inverse one; the pair score (What'sUp) needs both answered right. A relation
whose inverse is not among the spec's relations cannot be mirrored: its second item is a fresh scene
(never a copy of the first), the two are not a pair, and no pair score is computed for it (the
summary's `pair_scores` says why). The members of a mirrored pair share a scene, so the accuracy's
CI treats each pair as one cluster.

mode "relation" (What'sUp-style, Kamath et al. 2023): 4-way choice among captions that differ only
in the relation word. mode "swap" (ARO-style, Yuksekgonul et al. 2023): 2-way choice between the
true caption and the one with the two objects swapped ("a red circle left of a blue square" vs
"a blue square left of a red circle").
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from clipkit.world import synth
from clipkit.world.seeds import scene_seed  # probe items: their own seed namespace
from clipkit.probes.engine import Item, choice_kind
from clipkit.probes.protocol import ProbeSpec, SpecError

MODES = ("relation", "swap")


@dataclass
class SpatialOptions:
    """Options of a spatial spec."""
    relations: list = field(default_factory=lambda: list(synth.RELATIONS))  # a subset of synth.RELATIONS
    mode: str = "relation"         # "relation": K-way choice of the relation word; "swap": 2-way, objects swapped
    image_size: int = 72           # render size in pixels (the model's preprocess resizes)
    template: str = "{}"           # caption template, e.g. "a photo of {}"

    def __post_init__(self):
        if not self.relations or any(r not in synth.RELATIONS for r in self.relations):
            raise SpecError(f"option 'relations' must be a non-empty subset of {synth.RELATIONS}, got {self.relations!r}")
        if self.mode not in MODES:
            raise SpecError(f"option 'mode' must be one of {MODES}, got {self.mode!r}")
        if self.image_size < 1:
            raise SpecError(f"option 'image_size' must be >= 1, got {self.image_size}")


def unmirrorable(relations) -> list[str]:
    """The relations whose inverse is not among `relations` (their items cannot come in mirrored pairs)."""
    return [r for r in relations if synth.INVERSE[r] not in relations]


def summarise(spec: ProbeSpec, table: pd.DataFrame) -> dict:
    """The pair score (pair_accuracy, pair_ci_low, ...) and its caption-only control (pair_caption_only_*)
    when items come in mirrored pairs, and `pair_scores`: which relations have none and why."""
    lone = unmirrorable(list(spec.options.relations))
    out = {}
    if table["mirrored"].any():
        out = pair_scores(table)
        # the pair score's caption prior: the product chance assumes independent guesses, but a text-side
        # preference (e.g. for the caption that names A first) can make both members right together
        if "caption_only_credit" in table:
            co = pair_scores(table.assign(credit=table["caption_only_credit"]))
            out.update({f"pair_caption_only_{k}": co[f"pair_{k}"] for k in ("accuracy", "ci_low", "ci_high", "verdict")})
    if lone:
        inv = [synth.INVERSE[r] for r in lone]
        out["pair_scores"] = (f"left out for {lone}: their inverses {inv} are not among the relations, so their "
                              f"items are fresh scenes, not mirrored pairs")
    else:
        out["pair_scores"] = "every item is in a mirrored pair"
    return out


@choice_kind("spatial", SpatialOptions, summarise=summarise)
def items(spec: ProbeSpec) -> list[Item]:
    """spec.n two-object scenes balanced over relations, in mirrored pairs where the inverse relation exists."""
    o = spec.options
    rels = list(o.relations)
    out = []
    for i in range(spec.n):
        pair, second = divmod(i, 2)
        rel = rels[pair % len(rels)]
        mirrored = synth.INVERSE[rel] in rels
        if second and not mirrored:   # no inverse to mirror into: a fresh scene of the same relation
            scene = synth.make_relation_scene(scene_seed("probe:spatial:fresh", spec.seed, pair),
                                              relation=rel)
        else:
            scene = synth.make_relation_scene(scene_seed("probe:spatial", spec.seed, pair), relation=rel)
            scene = mirror(scene) if second else scene
        rel = scene.facts["relation"]
        a, b = scene.facts["a"], scene.facts["b"]
        if o.mode == "relation":
            captions, answer = [synth.relation_caption(a, r, b) for r in rels], rels.index(rel)
        else:
            captions, answer = [synth.relation_caption(a, rel, b), synth.relation_caption(b, rel, a)], 0
        out.append(Item(synth.render(scene, size=o.image_size), [o.template.format(c) for c in captions],
                        answer, {"relation": rel, "pair": pair, "mirrored": mirrored, "a": " ".join(a),
                                 "b": " ".join(b)}, cluster=f"pair{pair}" if mirrored else None))
    return out


def mirror(scene: synth.Scene) -> synth.Scene:
    """The same two objects with their places exchanged: A <relation> B becomes A <inverse> B."""
    a, b = scene.objects
    a2, b2 = replace(a, x=b.x, y=b.y), replace(b, x=a.x, y=a.y)
    return replace(scene, objects=(a2, b2), facts={**scene.facts, "relation": synth.INVERSE[scene.facts["relation"]]})


def pair_scores(table: pd.DataFrame) -> dict:
    """What'sUp's pair score: the share of mirrored pairs with both members answered right.

    Tie rule (as the accuracy): a pair's credit is the product of its members' credits, the chance
    that both are right when ties are broken at random. Chance is the product of the members' chance
    levels (independent guesses), e.g. 1/16 for 4-way items. Pairs are independent of each other, so
    the interval is the exact Clopper-Pearson one over pairs. Items not in a mirrored pair
    (`mirrored` False) and pairs with a missing member are left out.
    """
    from clipkit.core import stats
    t = table[table["mirrored"]] if "mirrored" in table else table
    grouped = t.groupby("pair").filter(lambda g: len(g) == 2).groupby("pair")
    both = grouped["credit"].prod()
    chance = grouped["chance"].prod()
    return {f"pair_{k}": v for k, v in stats.accuracy_summary(both, chance).items()}


def relation_confusion(result, relations=None) -> pd.DataFrame:
    """Rows: true relation; columns: chosen relation, for a mode="relation" result (a ProbeResult, or
    its table with the spec's `relations` in order: candidate j is relations[j]).

    Tie rule (as the accuracy): an item whose best score is shared by t captions adds 1/t to each of
    their relations, so a row sums to its number of items and a tie is never counted as a right answer.
    """
    table = result.table if hasattr(result, "table") else result
    if relations is None:
        relations = list(result.spec.options.relations) if hasattr(result, "spec") else list(synth.RELATIONS)
    relations = list(relations)
    if missing := sorted(set(table["relation"]) - set(relations)):
        raise ValueError(f"the table holds relations {missing} not in relations={relations}: pass the spec's relations")
    conf = pd.DataFrame(0.0, index=pd.Index(relations, name="true"), columns=pd.Index(relations, name="chosen"))
    for rel, best in zip(table["relation"], table["best"].astype(str)):
        idx = [int(j) for j in best.split("|")]
        for j in idx:
            conf.loc[rel, relations[j]] += 1.0 / len(idx)
    return conf.loc[[r for r in relations if r in set(table["relation"])]]   # rows: relations that occur
