"""Spatial relations probe: left of / right of / above / below between two objects, in mirrored pairs.

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


@choice_kind("spatial", SpatialOptions)
def items(spec: ProbeSpec) -> list[Item]:
    """spec.n two-object scenes balanced over relations."""
    o = spec.options
    rels = list(o.relations)
    out = []
    for i in range(spec.n):
        # items come in mirrored pairs: item 2p+1 is item 2p with the two objects' places swapped,
        # so its relation is the inverse one (What'sUp's "pair" score needs both answered right)
        pair, mirrored = divmod(i, 2)
        rel = rels[pair % len(rels)]
        scene = synth.make_relation_scene(scene_seed("probe:spatial", spec.seed, pair), relation=rel)
        if mirrored and synth.INVERSE[rel] in rels:
            scene = mirror(scene)
        rel = scene.facts["relation"]
        a, b = scene.facts["a"], scene.facts["b"]
        if o.mode == "relation":
            captions, answer = [synth.relation_caption(a, r, b) for r in rels], rels.index(rel)
        else:
            captions, answer = [synth.relation_caption(a, rel, b), synth.relation_caption(b, rel, a)], 0
        out.append(Item(synth.render(scene, size=o.image_size), [o.template.format(c) for c in captions],
                        answer, {"relation": rel, "pair": pair, "a": " ".join(a), "b": " ".join(b)}))
    return out


def mirror(scene: synth.Scene) -> synth.Scene:
    """The same two objects with their places exchanged: A <relation> B becomes A <inverse> B."""
    a, b = scene.objects
    a2, b2 = replace(a, x=b.x, y=b.y), replace(b, x=a.x, y=a.y)
    return replace(scene, objects=(a2, b2), facts={**scene.facts, "relation": synth.INVERSE[scene.facts["relation"]]})


def pair_scores(table: pd.DataFrame) -> dict:
    """What'sUp's pair score: the fraction of mirrored pairs with both members answered right.

    Chance is the product of the members' chance levels (independent guesses), e.g. 1/16 for
    4-way items; the bootstrap CI resamples pairs. Pairs with a missing member are left out.
    """
    from clipkit.core import stats
    grouped = table.groupby("pair").filter(lambda g: len(g) == 2).groupby("pair")
    both = grouped["correct"].all()
    chance = grouped["chance"].prod()
    return {f"pair_{k}": v for k, v in stats.accuracy_summary(both, chance).items()}

def relation_confusion(table: pd.DataFrame) -> pd.DataFrame:
    """Counts of (true relation, chosen relation) for a mode="relation" result table."""
    phrase_to_rel = {p: r for r, p in synth.RELATION_PHRASES.items()}
    pattern = "(" + "|".join(sorted(phrase_to_rel, key=len, reverse=True)) + ")"
    chosen = table["chosen_caption"].str.extract(pattern)[0].map(phrase_to_rel).rename("chosen")
    rels = [r for r in synth.RELATIONS if r in set(table["relation"])]
    return pd.crosstab(table["relation"].rename("true"), chosen).reindex(index=rels, columns=rels, fill_value=0)
