"""Feature extraction throughput: clipkit vs CLIP_benchmark's evaluation loop, same model, data, batch and workers.

    python bench/features_bench.py                                  # clipkit-tiny on CPU, 2,000 images
    python bench/features_bench.py --model ViT-B-32 --n 20000 --workers 8 --batch-size 256   # GPU
    python bench/features_bench.py --linear-probe --n 50000       # the linear probe on 50k x 512 features

Data: a synthetic classification set (`SyntheticClassification`, the model's own preprocessing).
CLIP_benchmark side: `clip_benchmark.metrics.zeroshot_classification.run_classification` (its image
loop: DataLoader -> encode_image -> normalise -> logits), amp as CLIP_benchmark runs it on that device
(fp16 autocast on CUDA; fp32 on CPU, where we pass amp=False so both sides compute in fp32).
clipkit side: `extract_image_features` cold (empty cache; the entry is then written by a background
thread, whose remaining time is waited for and reported apart), then the same request again (served
from the cache). The model's fingerprint (the cache key's hash of
all weights) is taken once per process and memoised; it is timed apart, before both sides.
A model spec without weights ('ViT-B-32') is built randomly initialised: throughput does not care.
--chunks sets how many loader batches clipkit joins into one forward batch on CPU
(`clipkit.evaluate.features.CPU_LOADER_CHUNKS`; 1 is the loader before that change); --chunks 1,4
alternates CLIP_benchmark and clipkit with each setting within every repeat (rotating the order).
Besides the ratio of medians, the median of the per-repeat ratios is printed: each repeat's two
runs are seconds apart, so on a shared machine that pairing removes most of the load's drift.
--breakdown times the parts of a cold extraction apart instead (where the time goes): one sample
(render + transform) in the main process, the DataLoader alone (plain dataset and clipkit's wrapped
one), the wait for the first batch, the forward alone, and the whole call.
--linear-probe times `clipkit.evaluate.linear_probe.linear_probe` (the appendix A.3 sweep plus the
final fit) on L2-normalised Gaussian class features of --n x --dim, --classes classes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader


def load(spec: str, device: str):
    from clipkit.models import ModelSpecError, create_model, load_model
    try:
        return load_model(spec, device=device)
    except ModelSpecError:
        import open_clip
        name = spec.partition(":")[0]
        model, _, preprocess = create_model(name)
        return model.to(device).eval(), preprocess, open_clip.get_tokenizer(name)


def linear_probe_bench(n: int, dim: int, classes: int, separation: float) -> dict:
    """Time the full linear probe on synthetic features: n training and n/5 test samples."""
    import numpy as np
    from clipkit.evaluate.linear_probe import linear_probe
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(classes, dim)) * separation

    def draw(m):  # Gaussian classes, L2-normalised like CLIP features
        y = rng.integers(0, classes, m)
        x = mu[y] + rng.normal(size=(m, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y

    (xtr, ytr), (xte, yte) = draw(n), draw(n // 5)
    t = time.perf_counter()
    r = linear_probe(xtr, ytr, xte, yte)
    out = {"n": n, "dim": dim, "classes": classes, "separation": separation, "seconds": time.perf_counter() - t,
           **{k: r[k] for k in ("n_fits", "lambda", "val_acc1", "lp_acc1", "not_converged")}}
    print(f"linear probe {n} x {dim}, {classes} classes: {out['seconds']:.1f} s, {r['n_fits']} fits, "
          f"lambda={r['lambda']:.3g}, val acc {r['val_acc1']:.3f}, test acc {r['lp_acc1']:.3f}, "
          f"not converged {r['not_converged']}, {torch.get_num_threads()} torch threads")
    return out


def breakdown(model, ds, args) -> dict:
    """Where a cold extraction's time goes: each part timed alone, medians over --repeats."""
    from clipkit.evaluate.cache import flush, model_fingerprint
    from clipkit.evaluate.features import _collate, _Indexed, extract_image_features

    model_fingerprint(model)
    bs, dev = args.batch_size, args.device
    x = torch.stack([ds[i][0] for i in range(min(bs, args.n))]).to(dev)

    def timed(f):
        t = time.perf_counter()
        f()
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def loader_pass(wrapped, collate=None, first_only=False):
        for _ in DataLoader(wrapped, batch_size=bs, num_workers=args.workers, collate_fn=collate):
            if first_only:
                break

    def forward():
        with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            for _ in range(-(-args.n // bs)):
                model.encode_image(x)

    def whole():
        with tempfile.TemporaryDirectory() as cache:
            extract_image_features(model, ds, batch_size=bs, num_workers=args.workers, cache=cache, progress=False)
            flush()

    forward()  # warm-up
    parts = {"one sample, main process (ms)": lambda: [ds[i] for i in range(200)],
             "loader alone, plain dataset (s)": lambda: loader_pass(ds),
             "loader alone, clipkit's wrapped dataset (s)": lambda: loader_pass(_Indexed(ds), _collate),
             "first batch from a new loader (s)": lambda: loader_pass(_Indexed(ds), _collate, True),
             "forward alone, all batches (s)": forward,
             "extract_image_features cold (s)": whole}
    times = {k: [] for k in parts}
    for _ in range(args.repeats):
        for k, f in parts.items():
            times[k].append(timed(f))
    out = {k: statistics.median(v) * (1000 / 200 if k.endswith("(ms)") else 1) for k, v in times.items()}
    # one more whole call under cProfile: the main process's time split into forward, waiting for
    # the workers' batches, and everything else (cache lookup and write, joining, normalising)
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.runcall(whole)
    stats = pstats.Stats(prof).stats   # (file, line, name) -> (calls, prim calls, tottime, cumtime, callers)
    cum = lambda name: max((v[3] for k, v in stats.items() if k[2] == name), default=0.0)  # noqa: E731
    total = cum("extract_image_features")
    out |= {"profiled call (s)": total, "  of which forward, encode_image (s)": cum("encode_image"),
            "  of which waiting for batches, loader __next__ (s)": cum("__next__"),
            "  of which the rest (s)": total - cum("encode_image") - cum("__next__")}
    print(f"{args.model} on {dev}, {args.n} images, batch {bs}, {args.workers} workers, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}")
    for k, v in out.items():
        print(f"  {k:45s} {v:8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="clipkit-tiny")
    ap.add_argument("--n", type=int, default=2000, help="images")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--family", default="shape", help="synthetic family (clipkit.data.classification.FAMILIES)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side, in alternating order")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--linear-probe", action="store_true", help="time the linear probe instead (--n samples)")
    ap.add_argument("--chunks", default=None,
                    help="loader batches per forward batch on CPU; a list (1,4) alternates them (A/B)")
    ap.add_argument("--breakdown", action="store_true", help="time the parts of a cold extraction instead")
    ap.add_argument("--dim", type=int, default=512, help="--linear-probe: feature dimension")
    ap.add_argument("--classes", type=int, default=100, help="--linear-probe: classes")
    ap.add_argument("--separation", type=float, default=0.12, help="--linear-probe: class-mean scale (lower: harder)")
    args = ap.parse_args(argv)
    if args.linear_probe:
        out = linear_probe_bench(args.n, args.dim, args.classes, args.separation)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
        return out

    import clip_benchmark.metrics.zeroshot_classification as cb
    from clipkit.data.classification import SyntheticClassification
    from clipkit.evaluate.cache import flush, model_fingerprint
    from clipkit.evaluate.features import extract_image_features
    from clipkit.evaluate.zeroshot import zero_shot_classifier

    cb.tqdm = lambda it, **_: it  # no progress bar on either side (clipkit: progress=False)
    import clipkit.evaluate.features as features
    chunk_settings = [int(c) for c in args.chunks.split(",")] if args.chunks else [features.CPU_LOADER_CHUNKS]
    model, preprocess, tokenizer = load(args.model, args.device)
    ds = SyntheticClassification(args.family, n=args.n, transform=preprocess)
    if args.breakdown:
        return breakdown(model, ds, args)
    classifier = zero_shot_classifier(model, tokenizer, ds.classes, ds.templates).to(args.device)
    with torch.inference_mode():  # warm-up outside the timers (CUDA context, kernels, allocator)
        x = torch.stack([ds[i][0] for i in range(min(args.batch_size, args.n))]).to(args.device)
        for dtype in (torch.float16, torch.bfloat16):   # CLIP_benchmark's and clipkit's autocast
            with torch.autocast(args.device, dtype=dtype, enabled=args.device == "cuda"):
                model.encode_image(x)
    t = time.perf_counter()
    model_fingerprint(model)  # once per model and process (memoised); timed here, reported apart
    t_fp = time.perf_counter() - t
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def run_cb():
        loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, shuffle=False)
        sync()
        t = time.perf_counter()
        logits, _ = cb.run_classification(model, classifier, loader, args.device, amp=args.device == "cuda")
        sync()
        return time.perf_counter() - t, logits

    def run_clipkit(cache):
        return extract_image_features(model, ds, batch_size=args.batch_size, num_workers=args.workers,
                                      cache=cache, progress=False)

    # alternate the order over repeats (the first run of a pair pays for a cold page cache, turbo...)
    t_cbs, warms, flushes = [], [], []
    colds = {c: [] for c in chunk_settings}
    sides = ["cb", *chunk_settings]
    for r in range(args.repeats):
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:   # rotate the order every repeat
            if side == "cb":
                t_cb, logits = run_cb()
                t_cbs.append(t_cb)
                continue
            features.CPU_LOADER_CHUNKS = side
            with tempfile.TemporaryDirectory() as cache:
                cold = run_clipkit(cache)
                t = time.perf_counter()
                flush()  # the entry is written by a background thread; wait for it, timed apart
                flushes.append(time.perf_counter() - t)
                warm = run_clipkit(cache)
            colds[side].append(cold.seconds)
            warms.append(warm.seconds)
    assert warm.from_cache and not cold.from_cache and len(cold.features) == len(logits) == args.n
    per_setting = {c: {"clipkit_cold_img_s": args.n / statistics.median(v), "clipkit_cold_s": v,
                       "ratio_cold": statistics.median(t_cbs) / statistics.median(v),
                       "ratio_paired": statistics.median(a / b for a, b in zip(t_cbs, v))}
                   for c, v in colds.items()}
    main_setting = chunk_settings[-1]
    t_cb, t_cold, t_warm = statistics.median(t_cbs), statistics.median(colds[main_setting]), statistics.median(warms)
    agree = float((100 * cold.features.to(classifier) @ classifier).argmax(1).eq(logits.argmax(1).to(args.device))
                  .float().mean())
    out = {"model": args.model, "device": args.device, "n": args.n, "batch_size": args.batch_size,
           "workers": args.workers, "repeats": args.repeats, "clip_benchmark_img_s": args.n / t_cb,
           "clipkit_cold_img_s": args.n / t_cold, "ratio_cold": t_cb / t_cold, "clipkit_cached_s": t_warm,
           "ratio_paired": per_setting[main_setting]["ratio_paired"], "chunks": main_setting,
           "per_chunks": per_setting, "clip_benchmark_s": t_cbs, "clipkit_cold_s": colds[main_setting],
           "top1_agreement": agree,
           "fingerprint_s": t_fp, "cache_write_wait_s": statistics.median(flushes),
           "torch_threads": torch.get_num_threads()}
    print(f"{args.model} on {args.device}, {args.n} images, batch {args.batch_size}, {args.workers} workers, "
          f"median of {args.repeats}")
    print(f"  CLIP_benchmark run_classification : {out['clip_benchmark_img_s']:8.1f} images/s ({t_cb:.2f} s)")
    for c, p in per_setting.items():
        print(f"  clipkit extract (cold), chunks {c}  : {p['clipkit_cold_img_s']:8.1f} images/s "
              f"({statistics.median(p['clipkit_cold_s']):.2f} s)")
        print(f"  ratio clipkit / CLIP_benchmark    : {p['ratio_cold']:8.2f} (of medians), "
              f"{p['ratio_paired']:.2f} (median of per-repeat ratios)")
    print(f"  clipkit extract (cached)          : {t_warm * 1000:8.1f} ms")
    print(f"  model fingerprint (once a process): {t_fp:8.2f} s")
    print(f"  cache write left after return     : {out['cache_write_wait_s']:8.2f} s (background thread)")
    print(f"  same top-1 predictions            : {agree:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
