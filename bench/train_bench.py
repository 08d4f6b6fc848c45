"""clipkit's trainer against open_clip's (open_clip_train.main): samples/s on the same model, data,
batch size, precision and worker count, each trainer run as its users would run it.

    python bench/train_bench.py                  # CPU: a synthetic CSV dataset on disk, alternating runs
    python bench/train_bench.py gpu --model ViT-B-32 --batch-size 256 --precision bf16   # synthetic inputs
    python bench/train_bench.py flops --model ViT-B-32                                 # GFLOPs per sample

csv (the default): both trainers read the same JPEG files through a CSV with --workers W.
gpu: synthetic inputs (clipkit --data noise; open_clip --dataset-type synthetic).

Throughput is read from each trainer's own log: clipkit's samples_per_s per log record, open_clip's
"Batch (t)" (the mean wall time per step since its previous log line). Both time the whole step,
data wait included, from one step's end to the next. Steps up to --skip are warm-up (oneDNN/cuDNN
kernel selection, compilation, workers filling their queues) and are left out; the rest give a
median per run. The trainers alternate (ABBA) over --repeats rounds, and the median over rounds
is reported with the ratio. Medians, because this is meant to run on shared machines where
other work comes and goes. On GPUs, model FLOPs utilisation = samples/s x 3 x forward FLOPs per
sample / 989 TFLOP/s (dense bf16 on an H100/H200; training ~ 3 x forward).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16 = 989e12
# open_clip_train.main, with clipkit's model configs registered (importing clipkit.models does that)
OPEN_CLIP = ("import sys, clipkit.models; from open_clip_train.main import main; "
             "sys.exit(main(sys.argv[1:]) or 0)")
PRECISION_OPEN_CLIP = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}


def env() -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1", CLIPKIT_OFFLINE="1", HF_HUB_OFFLINE="1")
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return e


def write_dataset(root: Path, rows: int, size: int) -> Path:
    """rows synthetic scenes as JPEG files + a CSV (filepath,title) of absolute paths; reused if present."""
    from clipkit.world import synth
    root.mkdir(parents=True, exist_ok=True)
    csv = root / f"all_{rows}.csv"
    if csv.exists():
        return csv
    lines = ["filepath,title"]
    for i in range(rows):
        scene = synth.corpus_item(i, seed=123)
        path = root / f"{i:06d}.jpg"
        if not path.exists():
            synth.render(scene, size=size).save(path, quality=90)
        lines.append(f"{path},{synth.caption(scene)}")
    csv.write_text("\n".join(lines) + "\n")
    return csv


def clipkit_cmd(a, out: Path, data: list[str]) -> list[str]:
    return [sys.executable, "-m", "clipkit.train", "--model", a.model, *data, "--steps", str(a.steps),
            "--batch-size", str(a.batch_size), "--workers", str(a.workers), "--precision", a.precision,
            "--lr", "5e-4", "--beta2", "0.98", "--eps", "1e-6", "--warmup", "2", "--save-every", "0",
            "--log-every", str(a.log_every),
            "--no-tensorboard", "--no-progress", "--out", str(out)]


def open_clip_cmd(a, out: Path, data: list[str]) -> list[str]:
    return [sys.executable, "-c", OPEN_CLIP, "--model", a.model, *data, "--batch-size", str(a.batch_size),
            "--workers", str(a.workers), "--precision", PRECISION_OPEN_CLIP[a.precision], "--epochs", "1",
            # the same AdamW settings (open_clip picks ResNet betas for names without "vit" in them)
            "--lr", "5e-4", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--wd", "0.2", "--warmup", "2",
            "--log-every-n-steps", str(a.log_every),
            "--report-to", "", "--logs", str(out.parent), "--name", out.name, "--seed", "0"]


def run(cmd: list[str], log: Path, timeout: float = 1800) -> float:
    """Run a command to completion; its wall time in seconds. Output goes to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=REPO, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}), see {log}:\n  {' '.join(cmd)}\n" + log.read_text()[-3000:])
    return dt


# --- per-step throughput from each trainer's own log ----------------------------------------------
def _after(steps: list[int], skip: int) -> list[bool]:
    """Which log records cover only steps after `skip` (a record covers the steps since the last one)."""
    return [prev >= skip for prev in [0, *steps[:-1]]]


def clipkit_rates(out: Path, skip: int) -> list[float]:
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "samples_per_s" in r]
    return [r["samples_per_s"] for r, ok in zip(recs, _after([r["step"] for r in recs], skip)) if ok]


def open_clip_rates(log: Path, batch: int, skip: int) -> list[float]:
    # "Train Epoch: 0 [ 1280/1920 (67%)] Data (t): 0.004 Batch (t): 0.301, ..." -> (step 20, 0.301 s)
    lines = re.findall(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Batch \(t\): ([\d.]+)", log.read_text())
    steps = [int(done) // batch for done, _ in lines]
    return [batch / float(t) for (_, t), ok in zip(lines, _after(steps, skip)) if ok]


def bench(a) -> dict:
    out = Path(a.out)
    if a.mode == "csv":
        csv = write_dataset(out / "data", a.steps * a.batch_size, a.image_px)   # one epoch for open_clip
        data = {"clipkit": ["--data", "csv", "--data-path", str(csv)],
                "open_clip": ["--train-data", str(csv), "--dataset-type", "csv", "--csv-separator", ",",
                              "--csv-img-key", "filepath", "--csv-caption-key", "title"]}
        where = f"{csv.parent} ({a.image_px} px JPEGs)"
    else:
        data = {"clipkit": ["--data", "noise", *(["--compile"] if a.compile else [])],
                "open_clip": ["--dataset-type", "synthetic", "--train-num-samples", str(a.steps * a.batch_size)]}
        where = "synthetic inputs"
    print(f"{a.model}, batch {a.batch_size}, {a.precision}, {a.workers} workers, {a.steps} steps (first "
          f"{a.skip} left out), {a.repeats} rounds, on {where}", flush=True)
    runs = {name: [] for name in a.trainers.split(",")}
    for r in range(a.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):     # ABBA: no trainer always first
            tag = f"{a.model}_{name}{'_compiled' if a.compile and name == 'clipkit' else ''}_r{r}"
            d, log = out / "runs" / tag, out / "logs" / f"{tag}.log"
            shutil.rmtree(d, ignore_errors=True)       # a fresh run: no appended log, no "experiment exists"
            if name == "clipkit":
                wall = run(clipkit_cmd(a, d, data[name]), log)
                rates = clipkit_rates(d, a.skip)
            else:
                wall = run(open_clip_cmd(a, d, data[name]), log)
                rates = open_clip_rates(log, a.batch_size, a.skip)
            if not rates:
                sys.exit(f"no throughput records after step {a.skip} in {log}; raise --steps")
            runs[name].append(statistics.median(rates))
            print(f"  round {r}: {name:9s} {runs[name][-1]:9.1f} samples/s   (median of {len(rates)} "
                  f"records; whole run {wall:.0f} s)", flush=True)
    return summarise(a, runs, method="median of per-step log records after warm-up", flops=a.mode == "gpu")


def forward_flops(model_name: str) -> float:
    """Forward FLOPs per image-text pair (2 x multiply-adds, torch's FlopCounterMode), on CPU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from clipkit.models import create_model
    model, _, _ = create_model(model_name)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, size, size), torch.zeros(1, model.context_length, dtype=torch.long))
    return float(fc.get_total_flops())


def summarise(a, runs: dict, method: str, flops: bool = False) -> dict:
    med = {k: statistics.median(v) for k, v in runs.items()}
    res = {"model": a.model, "batch_size": a.batch_size, "precision": a.precision, "workers": a.workers,
           "compile": a.compile, "method": method, "runs": runs,
           **{f"{k}_samples_per_s": round(v, 1) for k, v in med.items()}}
    if len(med) == 2:
        res["ratio"] = round(med["clipkit"] / med["open_clip"], 3)
    f = forward_flops(a.model) if flops else 0.0
    if flops:
        res["forward_gflops_per_sample"] = round(f / 1e9, 3)
    for k, v in med.items():
        if flops:
            res[f"{k}_mfu"] = round(v * 3 * f / PEAK_BF16, 4)
        print(f"{k + (' --compile' if a.compile and k == 'clipkit' else ''):20s} {v:10.1f} samples/s"
              + (f"   MFU {res[f'{k}_mfu']:.1%}" if flops else ""))
    if "ratio" in res:
        print(f"ratio clipkit / open_clip = {res['ratio']:.3f}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    with open(Path(a.out) / "results.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("mode", nargs="?", default="csv", choices=["csv", "gpu", "flops"])
    p.add_argument("--model", default="clipkit-tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISION_OPEN_CLIP))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="steps per run (csv: 30, gpu: 60)")
    p.add_argument("--log-every", type=int, default=None, help="trainers' log interval (csv: 1, gpu: 20)")
    p.add_argument("--skip", type=int, default=None, help="warm-up steps left out (csv: 5, gpu: 20)")
    p.add_argument("--repeats", type=int, default=None, help="rounds of alternating runs (csv: 3, gpu: 1)")
    p.add_argument("--image-px", type=int, default=64, help="csv mode: side of the JPEGs written")
    p.add_argument("--compile", action="store_true", help="gpu mode: clipkit with --compile")
    p.add_argument("--trainers", default="clipkit,open_clip", help="which trainers to run")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "train"))
    a = p.parse_args(argv)
    if a.mode == "flops":
        print(f"{a.model}: {forward_flops(a.model) / 1e9:.3f} GFLOPs forward per sample")
        return 0
    defaults = {"csv": (30, 1, 5, 3), "gpu": (60, 20, 20, 1)}[a.mode]
    for k, v in zip(("steps", "log_every", "skip", "repeats"), defaults):
        if getattr(a, k) is None:
            setattr(a, k, v)
    bench(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
