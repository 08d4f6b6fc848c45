"""Attribute binding probe (ARO VG-Attribution / SugarCrepe swap-att style): "a red circle and a blue
square" vs "a blue circle and a red square" — the same words, the colours bound to the other shapes.
A bag-of-words model cannot beat chance (50%) here."""
from __future__ import annotations

from dataclasses import dataclass

from clipkit.world import synth
from clipkit.world.seeds import scene_seed  # probe items: their own seed namespace
from clipkit.probes.engine import Item, choice_kind
from clipkit.probes.protocol import ProbeSpec, SpecError


@dataclass
class BindingOptions:
    """Options of a binding spec."""
    image_size: int = 72           # render size in pixels (the model's preprocess resizes)
    template: str = "{}"           # caption template, e.g. "a photo of {}"

    def __post_init__(self):
        if self.image_size < 1:
            raise SpecError(f"option 'image_size' must be >= 1, got {self.image_size}")


@choice_kind("binding", BindingOptions)
def items(spec: ProbeSpec) -> list[Item]:
    """spec.n two-object scenes (different shapes, different colours); 2-way choice, true first or second."""
    o, out = spec.options, []
    for i in range(spec.n):
        scene = synth.make_binding_scene(scene_seed("probe:binding", spec.seed, i))
        (ca, sa), (cb, sb) = scene.facts["pairs"]
        true, swapped = synth.binding_caption([(ca, sa), (cb, sb)]), synth.binding_caption([(cb, sa), (ca, sb)])
        answer = i % 2   # alternate the true caption's position so position bias cannot score
        captions = [swapped, true] if answer else [true, swapped]
        out.append(Item(synth.render(scene, size=o.image_size), [o.template.format(c) for c in captions],
                        answer, {"shapes": f"{sa}+{sb}", "true_position": answer}))
    return out
