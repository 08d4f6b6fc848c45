"""A full SugarCrepe pass: clipkit's `sugarcrepe` probe vs CLIP_benchmark's `image_caption_selection` on the same files.

    python bench/benchmarks_bench.py                          # clipkit-tiny (random weights), CPU, 420 items
    python bench/benchmarks_bench.py --per-subset 200 --images 1400 --rounds 5
    python bench/benchmarks_bench.py --images 0               # every item its own image (no sharing)
    python bench/benchmarks_bench.py --threads 1              # one torch thread (steadier on a shared machine)

Data: SugarCrepe's published layout written to --data (default /tmp/clipkit_bench_sugarcrepe): the seven
`<subset>.json` files, dicts keyed "0", "1", ... of {filename, caption, negative_caption}, over `val2017/`
JPEGs of 640x480 (COCO's size) drawn with PIL -- never real data. Items share images as SugarCrepe's do (its
7,511 items ask about COCO val2017's 5,000 photos): --images distinct images for all items (0: one per item).

clipkit side: `clipkit.probes.benchmarks.sugarcrepe.run` -- read the files, decode and encode each distinct
image once (`extract_image_features`), encode each distinct caption once, score, and summarise with CIs.
"cold": an empty feature cache; "cached": the cache a previous cold run left.
CLIP_benchmark side (1.6.2, as its `cli.py` runs the task): per subset `datasets.sugar_crepe.SugarCrepe`
(root = val2017, ann_file = the subset file, transform = the model's preprocess) in a DataLoader with
`image_captions_collate_fn`, then `metrics.image_caption_selection.evaluate(model, loader, tokenizer, "cpu",
amp=False)`: amp=False so both sides compute in fp32 on the CPU (its default amp=True would autocast to bf16).
It has no feature cache: every run is its own cold run (the OS page cache is warm for both after round 1).

Both get the same model object, batch size and DataLoader workers. Each round runs the three in turn, the
order reversed every other round; the medians over rounds are reported (the machine may be shared). The
per-subset accuracies of the two are checked to agree (CLIP_benchmark counts a tie as right, SugarCrepe's
main_eval.py as wrong; with float scores ties do not happen). Results are appended to
bench/out/benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
WORDS = ("red", "blue", "green", "small", "large", "wooden", "dog", "cat", "table", "cup", "man", "bus", "tree",
         "sitting on", "next to", "holding", "under", "behind", "a", "the", "two", "white", "black", "bowl")


def write_sugarcrepe(root: Path, per_subset: int, images: int, seed: int = 0) -> dict:
    """The seven subset files with `per_subset` items each over `images` distinct 640x480 JPEGs (0: one per item)."""
    rng = np.random.default_rng(seed)
    n_items = per_subset * len(SUBSETS)
    n_images = images or n_items
    names = [f"{i:012d}.jpg" for i in range(1, n_images + 1)]
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        path = root / "val2017" / name
        if path.exists():
            continue
        img = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = int(rng.integers(0, 560)), int(rng.integers(0, 400))
            d.rectangle([x, y, x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))],
                        fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(path, quality=90)
    k = 0
    for s in SUBSETS:
        data = {}
        for j in range(per_subset):
            words = rng.choice(WORDS, size=9)
            cap = " ".join(words)
            neg = " ".join(np.concatenate([words[:3], words[3:6][::-1], words[6:]]))
            data[str(j)] = {"filename": names[(k * 7919) % n_images] if images else names[k], "caption": cap,
                            "negative_caption": neg if neg != cap else cap + " again"}
            k += 1
        (root / f"{s}.json").write_text(json.dumps(data))
    return {"items": n_items, "images": n_images}


def run_clipkit(root: Path, model, preprocess, tokenizer, cache, batch_size: int, workers: int) -> tuple[float, dict]:
    from clipkit.probes.benchmarks import sugarcrepe
    t0 = time.perf_counter()
    res = sugarcrepe.run(sugarcrepe.Options(root=str(root), batch_size=batch_size, num_workers=workers), model,
                         preprocess, tokenizer, model_name="bench", cache=str(cache))
    dt = time.perf_counter() - t0
    by = res.breakdowns["subset"]
    assert res.summary["features_from_cache"] == (Path(cache) / ".warm").exists(), "cache state not as planned"
    return dt, dict(zip(by["subset"], by["accuracy"]))


def run_clip_benchmark(root: Path, model, preprocess, tokenizer, batch_size: int, workers: int) -> tuple[float, dict]:
    import torch
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.datasets.sugar_crepe import SugarCrepe
    from clip_benchmark.metrics import image_caption_selection
    t0 = time.perf_counter()
    acc = {}
    for s in SUBSETS:   # its cli.py runs one dataset "sugar_crepe/<subset>" at a time
        ds = SugarCrepe(root=str(root / "val2017"), ann_file=str(root / f"{s}.json"), transform=preprocess)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                             collate_fn=image_captions_collate_fn)
        acc[s] = image_caption_selection.evaluate(model, loader, tokenizer, "cpu", amp=False)["text_acc"]
    return time.perf_counter() - t0, acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="clipkit-tiny:random")
    ap.add_argument("--data", default="/tmp/clipkit_bench_sugarcrepe")
    ap.add_argument("--per-subset", type=int, default=60, help="items per subset (7 subsets)")
    ap.add_argument("--images", type=int, default=250, help="distinct images shared by all items (0: one per item)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: torch's)")
    ap.add_argument("--out", default="bench/out/benchmarks/results.jsonl")
    a = ap.parse_args(argv)
    import torch
    if a.threads:   # on a shared machine one thread per side spins less waiting for a busy core
        torch.set_num_threads(a.threads)
    from tqdm import tqdm  # noqa: F401  (imported before timing: CLIP_benchmark's loop imports it)

    from clipkit.models import load_model
    root = Path(a.data) / f"p{a.per_subset}_i{a.images}"
    facts = write_sugarcrepe(root, a.per_subset, a.images)
    model, preprocess, tokenizer = load_model(a.model)
    warm = Path(tempfile.mkdtemp(prefix="clipkit_bench_cache_"))
    times = {"clipkit_cold": [], "clipkit_cached": [], "clip_benchmark": []}
    accs = {}
    for r in range(a.rounds):
        order = ["clip_benchmark", "clipkit_cold", "clipkit_cached"]
        for side in order if r % 2 == 0 else order[::-1]:
            if side == "clip_benchmark":
                dt, accs[side] = run_clip_benchmark(root, model, preprocess, tokenizer, a.batch_size, a.workers)
            elif side == "clipkit_cold":
                dt, accs[side] = run_clipkit(root, model, preprocess, tokenizer, tempfile.mkdtemp(prefix="cold_"),
                                             a.batch_size, a.workers)
            else:
                if not (warm / ".warm").exists():   # the cached side's cache is filled once, untimed
                    run_clipkit(root, model, preprocess, tokenizer, warm, a.batch_size, a.workers)
                    (warm / ".warm").touch()
                dt, accs[side] = run_clipkit(root, model, preprocess, tokenizer, warm, a.batch_size, a.workers)
            times[side].append(dt)
            print(f"round {r + 1}: {side:15s} {dt:6.2f} s  {facts['items'] / dt:8.1f} items/s", flush=True)
    gap = max(abs(accs["clipkit_cold"][s] - accs["clip_benchmark"][s]) for s in SUBSETS)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "model": a.model, **facts,
              "batch_size": a.batch_size, "workers": a.workers, "rounds": a.rounds,
              **{f"{k}_items_per_s": facts["items"] / v for k, v in med.items()},
              "cold_ratio": med["clip_benchmark"] / med["clipkit_cold"],
              "cached_ratio": med["clip_benchmark"] / med["clipkit_cached"], "max_subset_accuracy_gap": gap,
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_average": os.getloadavg(), "python": platform.python_version(),
                          "torch": torch.__version__}}
    print(f"{facts['items']} items over {facts['images']} images, medians of {a.rounds} rounds: clipkit cold "
          f"{result['clipkit_cold_items_per_s']:.1f}, cached {result['clipkit_cached_items_per_s']:.1f}, "
          f"CLIP_benchmark {result['clip_benchmark_items_per_s']:.1f} items/s (clipkit/CLIP_benchmark: cold "
          f"{result['cold_ratio']:.2f}x, cached {result['cached_ratio']:.2f}x); per-subset accuracy gap {gap:.4f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
