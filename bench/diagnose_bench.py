"""Speed of the diagnosis measurements: per-layer features of 1,000 probe items, and caption maps.

    .venv/bin/python bench/diagnose_bench.py                       # clipkit-tiny (random weights) on CPU
    .venv/bin/python bench/diagnose_bench.py --n 200 --repeats 5 --model clipkit-nano

Items: --n counting scenes as the counting probe makes them (72 px, six candidate captions each).
Timed, each as the median of --repeats runs (the first run included: the cache is off):
  image layers   `image_layer_features` of the n images (every block, pre/post projection, patch tokens)
  text layers    `text_layer_features` of the n x 6 candidate captions
  curve          `layer_curve` of the count over every image layer (the linear probe per layer)
  map (1 image)  `caption_maps` of one image and its caption, patch similarity and Grad-CAM
  map (batch)    the same for a batch of --batch images, per image
Targets (the issue): image layers < 30 s for 1,000 items on this CPU; one map < 1 s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def timed(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="clipkit-tiny", help="a preset, built with random weights")
    p.add_argument("--n", type=int, default=1000, help="probe items")
    p.add_argument("--batch", type=int, default=64, help="images in the batched map timing")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    import numpy as np
    import open_clip
    import torch
    from clipkit.analysis.diagnose import layer_curve
    from clipkit.evaluate.layers import image_layer_features, text_layer_features
    from clipkit.evaluate.maps import caption_maps
    from clipkit.models import create_model
    from clipkit.world import synth

    model, _, preprocess = create_model(a.model)
    model.eval()
    tokenizer = open_clip.get_tokenizer(a.model)
    t = time.perf_counter()
    scenes = [synth.make_count_scene(i, n=1 + i % 6) for i in range(a.n)]
    images = [synth.render(s, size=72) for s in scenes]
    captions = [synth.count_caption(c, s.facts["colour"], s.facts["shape"]) for s in scenes for c in range(1, 7)]
    counts = np.array([s.facts["n"] for s in scenes])
    make_s = time.perf_counter() - t

    out = {"model": a.model, "n": a.n, "threads": torch.get_num_threads(), "make_items_s": make_s}
    out["image_layers_s"], img = timed(lambda: image_layer_features(model, preprocess, images, patches=True), a.repeats)
    out["text_layers_s"], _ = timed(lambda: text_layer_features(model, tokenizer, captions), a.repeats)
    out["curve_s"], curve = timed(lambda: layer_curve(img, counts), 1)
    for method in ("patch", "gradcam"):
        one, _ = timed(lambda m=method: caption_maps(model, preprocess, tokenizer, images[:1], captions[0], method=m),
                       a.repeats)
        batch, _ = timed(lambda m=method: caption_maps(model, preprocess, tokenizer, images[:a.batch],
                                                       captions[:6 * a.batch:6], method=m), a.repeats)
        out[f"map_{method}_one_s"], out[f"map_{method}_per_image_in_batch_s"] = one, batch / a.batch
    print(f"{a.model}, {a.n} items, {out['threads']} threads (making the items: {make_s:.1f} s)")
    print(f"  image layers ({len(img.names)} layers + patches {tuple(img.patches.shape)}): "
          f"{out['image_layers_s']:.2f} s   (target < 30 s for 1,000)")
    print(f"  text layers ({len(captions)} captions): {out['text_layers_s']:.2f} s")
    print(f"  count layer curve over {len(img.names)} layers: {out['curve_s']:.2f} s  "
          f"(accuracy {', '.join(f'{v:.2f}' for v in curve['accuracy'])})")
    for method in ("patch", "gradcam"):
        print(f"  {method} map: one image {out[f'map_{method}_one_s'] * 1e3:.1f} ms, batch of {a.batch}: "
              f"{out[f'map_{method}_per_image_in_batch_s'] * 1e3:.2f} ms per image   (target < 1 s)")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return out


if __name__ == "__main__":
    main()
