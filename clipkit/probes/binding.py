"""Attribute binding probe (ARO VG-Attribution / SugarCrepe swap-att style): "a red circle and a blue
square" vs "a blue circle and a red square" — the same words, the colours bound to the other shapes.
A bag-of-words model cannot beat chance (50%) here."""
from __future__ import annotations

from clipkit.world import synth
from clipkit.probes.engine import Item, ProbeSpec, register

SEED_STRIDE = 100_000


@register("binding", {"image_size": (int, 72), "template": (str, "{}")})
def items(spec: ProbeSpec) -> list[Item]:
    """spec.n two-object scenes (different shapes, different colours); 2-way choice, true first or second."""
    o, out = spec.options, []
    for i in range(spec.n):
        scene = synth.make_binding_scene(spec.seed * SEED_STRIDE + i)
        (ca, sa), (cb, sb) = scene.facts["pairs"]
        true, swapped = synth.binding_caption([(ca, sa), (cb, sb)]), synth.binding_caption([(cb, sa), (ca, sb)])
        answer = i % 2   # alternate the true caption's position so position bias cannot score
        captions = [swapped, true] if answer else [true, swapped]
        out.append(Item(synth.render(scene, size=o["image_size"]), [o["template"].format(c) for c in captions],
                        answer, {"shapes": f"{sa}+{sb}", "true_position": answer}))
    return out
