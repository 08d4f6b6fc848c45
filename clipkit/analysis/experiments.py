"""Training experiments on the synthetic world: train arms that differ in one setting, probe each, compare.

The experiment notebooks (notebooks/experiment_*.ipynb) call this module. An experiment is a base
training config plus arms, each arm a few TrainConfig fields that differ from the base. Every arm
is trained with `clipkit.train.loop.train` (the same loop as `clipkit train`) for each seed, then the
same held-out probe items and retrieval scenes are put to every model, so arms can be compared
item by item (paired on item identity: clipkit.analysis.compare.paired_test, a cluster sign-flip test
that is exact McNemar when items are independent) as well as by their exact CIs.

Trained arms are cached in `run_root/<arm>-seed<k>/`: a rerun with the same config reuses the
model, and an interrupted arm resumes from its last checkpoint. Probe items use the held-out
seed, never a training seed.

What the CIs cover: item sampling (exact Clopper-Pearson over probe items; Korn-Graubard over scenes
where items share one: mirrored spatial pairs, the shift conditions of one scene), not training randomness. Only
several seeds per arm (`seeds=`) show how much a conclusion depends on the initialisation and the
data order; the summary then holds one row per (arm, seed) and `seed_spread` the spread.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipkit.analysis.compare import paired_test
from clipkit.core import stats
from clipkit.core.files import atomic_write_json, read_json
from clipkit.train.config import TrainConfig
from clipkit.evaluate.synthetic import HELD_OUT_SEED

PROBES = ("counting", "spatial", "spatial_swap", "binding")
RETRIEVAL = "retrieval"   # the probe name used for held-out caption->image recall@1
# Fields that do not change what is trained. Not clipkit.train.loop.RESUMABLE_CHANGES: a run may resume
# with more `steps`, but an arm trained for other steps is another arm.
_IGNORED = {"out", "resume", "workers", "progress", "tensorboard", "log_every", "save_every",
            "keep_checkpoints", "device", "eval_every", "eval_n"}


@dataclass(frozen=True)
class Arm:
    """One condition: a name and the TrainConfig fields in which it differs from the base."""
    name: str
    overrides: dict

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"arm name must be letters, digits, - or _ (it names a folder), got {self.name!r}")


def hard_negative_arms(hard_negatives: int = 3) -> list[Arm]:
    """(a) CLIP's InfoNCE alone vs NegCLIP (Yuksekgonul et al. 2023): InfoNCE plus, per image,
    `hard_negatives` false captions that change one fact (count, relation or colour binding)."""
    return [Arm("no-negatives", {"loss": "clip", "hard_negatives": 0}),
            Arm("hard-negatives", {"loss": "negclip", "hard_negatives": hard_negatives})]


def batch_size_arms(batch_sizes=(32, 128, 512), samples: int = 76_800, warmup_fraction: float = 0.1) -> list[Arm]:
    """(b) The same number of training pairs seen at each contrastive batch size: steps = samples /
    batch (so a smaller batch takes more, noisier steps against fewer negatives), warm-up a fixed
    fraction of the steps, the learning rate unchanged (the base config's)."""
    arms = []
    for b in batch_sizes:
        if b < 2 or samples < b:
            raise ValueError(f"batch size {b}: must be >= 2 and <= samples ({samples})")
        steps = samples // b
        arms.append(Arm(f"batch-{b}", {"batch_size": b, "steps": steps, "warmup": max(1, int(steps * warmup_fraction))}))
    return arms


def augmentation_arms(kinds=("none", "crop", "heavy")) -> list[Arm]:
    """(c) No augmentation, the paper's random square crop, and a SimCLR-style heavy stack
    (clipkit.data.transforms.train_transform documents each)."""
    return [Arm(f"aug-{k}", {"augment": k}) for k in kinds]


def augmentation_examples(augments, arch: str = "clipkit-tiny", k: int = 6, seed: int = HELD_OUT_SEED) -> dict:
    """{augment: k PIL images}: one held-out scene through each arm's training transform, k draws,
    at the architecture's input size and the loader's render size (what training really sees)."""
    import open_clip
    from PIL import Image
    from clipkit import models   # noqa: F401  (models registers the clipkit presets)
    from clipkit.world import synth
    from clipkit.data.transforms import CROP_PAD, sample_seed, seeded, train_transform
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown architecture {arch!r}")
    size = cfg["vision_cfg"]["image_size"]
    size = size if isinstance(size, int) else size[0]
    img = synth.render(synth.corpus_item(0, seed=seed), size=int(round(size * CROP_PAD)))
    mean, std = np.array(open_clip.OPENAI_DATASET_MEAN), np.array(open_clip.OPENAI_DATASET_STD)
    out = {}
    for a in augments:
        t = train_transform(size, augment=a)
        arrays = [seeded(t, img, sample_seed(seed, "example", j)).permute(1, 2, 0).numpy() * std + mean for j in range(k)]
        out[a] = [Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)) for x in arrays]
    return out


def arm_config(arm: Arm, base: dict, seed: int, run_root) -> TrainConfig:
    """The arm's full TrainConfig; errors name the arm (e.g. an unknown field in its overrides)."""
    d = {"save_every": 0, "tensorboard": False, "progress": False, **base, **arm.overrides,
         "seed": seed, "out": str(Path(run_root) / f"{arm.name}-seed{seed}"), "resume": "auto"}
    try:
        return TrainConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"experiment arm {arm.name!r}: {e}") from None


def _same_run(saved: dict, cfg: TrainConfig) -> bool:
    want = {k: v for k, v in cfg.to_dict().items() if k not in _IGNORED}
    return {k: v for k, v in saved.items() if k in want} == want


def train_arms(arms: list[Arm], base: dict, seeds=(0,), run_root="runs/experiments", reuse: bool = True,
               log=None) -> pd.DataFrame:
    """Train every (arm, seed); returns one row each: arm, seed, out, steps, batch_size, samples,
    train_seconds (of the run that produced the model), final_loss, reused."""
    from clipkit.train.loop import train
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    if not seeds:
        raise ValueError("seeds is empty: give at least one training seed")
    cfgs = [(a, s, arm_config(a, base, s, run_root)) for a in arms for s in seeds]  # validate all first
    rows = []
    for i, (arm, seed, cfg) in enumerate(cfgs, 1):
        out = Path(cfg.out)
        record = read_json(out / "experiment.json")
        reused = bool(reuse and record and (out / "clipkit.json").exists() and _same_run(record["config"], cfg))
        if not reused:
            if out.exists() and not (reuse and _resumable(out, cfg)):
                import shutil
                shutil.rmtree(out)   # a different config (or reuse=False): never mix two runs' checkpoints
            log(f"[experiment] ({i}/{len(cfgs)}) training {arm.name} seed {seed}: {cfg.steps} steps x "
                f"{cfg.batch_size} = {cfg.steps * cfg.batch_size * cfg.accum_steps:,} pairs ...")
            t0 = time.perf_counter()
            train(cfg)
            record = {"config": cfg.to_dict(), "train_seconds": round(time.perf_counter() - t0, 1)}
            atomic_write_json(out / "experiment.json", record)
            log(f"[experiment] ({i}/{len(cfgs)}) {arm.name} seed {seed} trained in {record['train_seconds']:.0f}s")
        else:
            log(f"[experiment] ({i}/{len(cfgs)}) {arm.name} seed {seed}: reusing {out}")
        curve = loss_curve(out)
        rows.append({"arm": arm.name, "seed": seed, "out": str(out), "steps": cfg.steps,
                     "batch_size": cfg.batch_size * cfg.accum_steps, "samples": cfg.steps * cfg.batch_size * cfg.accum_steps,
                     "train_seconds": record["train_seconds"],
                     "final_loss": float(curve["loss"].iloc[-1]) if len(curve) else float("nan"), "reused": reused})
    return pd.DataFrame(rows)


def _resumable(out: Path, cfg: TrainConfig) -> bool:
    """An interrupted run of the same config: its config.json matches, so `resume auto` may continue it."""
    saved = read_json(out / "config.json")
    return bool(saved) and _same_run(saved, cfg)


def loss_curve(run_dir) -> pd.DataFrame:
    """step, loss, temperature, samples_per_s from a run's log.jsonl (training records only)."""
    path = Path(run_dir) / "log.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue   # a line cut by an interruption
            if "loss" in r and "step" in r:
                rows.append({k: r.get(k) for k in ("step", "loss", "temperature", "samples_per_s")})
    return pd.DataFrame(rows, columns=["step", "loss", "temperature", "samples_per_s"])


def loss_curves(trained: pd.DataFrame) -> pd.DataFrame:
    """Every arm's (and seed's) loss curve in one tidy frame: arm, seed, batch_size + loss_curve's columns."""
    parts = [loss_curve(r.out).assign(arm=r.arm, seed=r.seed, batch_size=r.batch_size) for r in trained.itertuples()]
    parts = [p for p in parts if len(p)]
    cols = ["arm", "seed", "batch_size", "step", "loss", "temperature", "samples_per_s"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def probe_arms(trained: pd.DataFrame, probes=PROBES, n: int = 300, retrieval_n: int = 500,
               seed: int = HELD_OUT_SEED, device: str = "cpu", shift: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Put the same held-out probe items (and retrieval scenes) to every trained model.

    Returns (summary, items). summary: one row per (arm, seed, probe) with accuracy, ci_low,
    ci_high, chance, n, verdict. items: arm, seed, probe, item, item_id, cluster, correct, credit —
    for paired tests (paired_tests pairs on item_id and flips whole clusters).
    Retrieval is caption->image recall@1 over `retrieval_n` held-out scenes (identical captions
    count as hits; chance accounts for them); its CI is the exact one over captions.
    `shift` (options of probes/shift.yaml, plus `n` for its test scenes, e.g. {"n": 150, "severities": [3]})
    adds the zero-shot shape classification in distribution ("shift-id") and pooled over every shifted
    condition ("shift-ood"); items are (condition, scene) pairs, clustered by scene: the conditions
    of one scene are not independent questions.
    """
    from clipkit.models import load_model
    from clipkit.probes import load_spec, run_probe
    specs = [load_spec(p, n=n, seed=seed) for p in probes]
    summary, items = [], []
    for row in trained.itertuples():
        model, preprocess, tokenizer = load_model(row.out, device=device)
        for spec in specs:
            r = run_probe(spec, model, preprocess, tokenizer, model_name=row.arm)
            s = r.summary
            summary.append({"arm": row.arm, "seed": row.seed, "probe": spec.name,
                            **{k: s[k] for k in ("accuracy", "ci_low", "ci_high", "chance", "n", "verdict")}})
            items.append(pd.DataFrame({"arm": row.arm, "seed": row.seed, "probe": spec.name,
                                       **{k: r.table[k] for k in ("item", "item_id", "cluster", "credit")},
                                       "correct": r.table["correct"].astype(bool)}))
        if shift is not None:
            for name, hits, keys, chance, scene in shift_hits(model, preprocess, tokenizer, shift, seed):
                clusters = scene if len(set(scene)) < len(scene) else None   # shift-ood: a scene per condition
                summary.append({"arm": row.arm, "seed": row.seed, "probe": name,
                                **_short(stats.accuracy_summary(hits, chance, clusters=clusters))})
                items.append(pd.DataFrame({"arm": row.arm, "seed": row.seed, "probe": name, "item": keys,
                                           "item_id": keys, "cluster": scene, "correct": hits,
                                           "credit": hits.astype(float)}))
        if retrieval_n:
            hits, chance = retrieval_hits(model, preprocess, tokenizer, n=retrieval_n, seed=seed)
            summary.append({"arm": row.arm, "seed": row.seed, "probe": RETRIEVAL,
                            **_short(stats.accuracy_summary(hits, chance))})
            items.append(pd.DataFrame({"arm": row.arm, "seed": row.seed, "probe": RETRIEVAL,
                                       "item": np.arange(len(hits)),
                                       "item_id": [f"caption{i}" for i in range(len(hits))],
                                       "cluster": np.arange(len(hits)), "correct": hits.astype(bool),
                                       "credit": hits.astype(float)}))
    return pd.DataFrame(summary), pd.concat(items, ignore_index=True)


def _short(s: dict) -> dict:
    """The summary columns every probe row has (accuracy, CI, chance, n, verdict)."""
    return {k: s[k] for k in ("accuracy", "ci_low", "ci_high", "chance", "n", "verdict")}


def retrieval_hits(model, preprocess, tokenizer, n: int, seed: int = HELD_OUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Per caption: did caption->image recall@1 hit (an image with the same caption counts; ties go
    against the model, as in `clipkit eval`), and the chance of that hit for a random pick."""
    from clipkit.evaluate.retrieval import recall_at_k
    from clipkit.evaluate.synthetic import held_out_similarity
    sim, captions = held_out_similarity(model, preprocess, tokenizer, n, seed)
    same = captions[:, None] == captions[None, :]
    return recall_at_k(sim, same, 1), same.sum(1) / n


def shift_hits(model, preprocess, tokenizer, overrides: dict, seed: int = HELD_OUT_SEED):
    """[(name, correct, item keys, chance, scene)] for zero-shot shape classification in distribution
    and pooled over the shifted conditions of probes/shift.yaml. `overrides`: the spec's options,
    plus `n` (test scenes) and `seed` (default: `seed`). `scene` is each item's scene (its cluster):
    in "shift-ood" one scene appears once per condition."""
    from clipkit.probes import load_spec
    from clipkit.probes.shift import run_shift
    from clipkit.analysis.robustness import IN_DISTRIBUTION
    opts = dict(overrides)
    n = opts.pop("n", None)
    spec_seed = opts.pop("seed", seed)
    r = run_shift(load_spec("shift", n=n, seed=spec_seed, options=opts), model, preprocess, tokenizer, cache=False)
    it, chance = r.items, float(r.summary["chance"])
    out = []
    for name, rows in (("shift-id", it[it["shift"] == IN_DISTRIBUTION]), ("shift-ood", it[it["shift"] != IN_DISTRIBUTION])):
        keys = rows["shift"] + "@" + rows["severity"].astype(str) + ":" + rows["item"].astype(str)
        out.append((name, rows["zs_correct"].to_numpy(bool), keys.to_numpy(), np.full(len(rows), chance),
                    ("scene" + rows["item"].astype(str)).to_numpy()))
    return out


def paired_tests(items: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each arm against `baseline` on the same items, per probe and seed: accuracies, discordant
    counts and the two-sided p-value of compare.paired_test (paired on item_id; whole clusters flipped
    where items share a scene, e.g. shift-ood's conditions; exact McNemar where they do not)."""
    if baseline not in set(items["arm"]):
        raise ValueError(f"baseline arm {baseline!r} not among the arms {sorted(set(items['arm']))}")
    rows = []
    for (probe, seed), g in items.groupby(["probe", "seed"], sort=False):
        base = g[g["arm"] == baseline]
        for arm, h in g[g["arm"] != baseline].groupby("arm", sort=False):
            t = paired_test(h, base, probe=probe)   # on item_id: refused if the arms saw other items
            rows.append({"probe": probe, "seed": seed, "arm": arm, "baseline": baseline, "n": t["n"],
                         "acc_arm": t["acc_a"], "acc_baseline": t["acc_b"],
                         "diff": t["diff"], "arm_only_right": t["only_a"], "baseline_only_right": t["only_b"],
                         "p_value": t["p_value"], "n_clusters": t["n_clusters"]})
    return pd.DataFrame(rows)


def seed_spread(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, probe): mean accuracy over seeds, its min and max, and the number of seeds."""
    g = summary.groupby(["arm", "probe"], sort=False)["accuracy"]
    return g.agg(mean="mean", min="min", max="max", seeds="count").reset_index()


def headline(summary: pd.DataFrame, paired: pd.DataFrame | None = None) -> dict:
    """A flat dict for record_metrics: `<arm>/<probe>` accuracy, CI, chance, n (first seed), and
    `<arm>-vs-<baseline>/<probe>` difference and p-value."""
    out = {}
    first = summary[summary["seed"] == summary["seed"].min()]
    for r in first.itertuples():
        for k in ("accuracy", "ci_low", "ci_high", "chance", "n"):
            out[f"{r.arm}/{r.probe}/{k}"] = getattr(r, k)
    if paired is not None and len(paired):
        for r in paired[paired["seed"] == paired["seed"].min()].itertuples():
            out[f"{r.arm}-vs-{r.baseline}/{r.probe}/diff"] = r.diff
            out[f"{r.arm}-vs-{r.baseline}/{r.probe}/p_value"] = r.p_value
    return out


def findings(summary: pd.DataFrame, paired: pd.DataFrame, baseline: str, alpha: float = 0.05) -> str:
    """The result in words, computed from the tables (first seed): per probe, each arm's accuracy,
    CI and verdict against chance, then each arm's paired difference from the baseline with its
    paired p (McNemar, or the cluster sign-flip test where items share a scene). A difference is
    called one only when p < alpha / (number of tests) (Bonferroni)."""
    s = summary[summary["seed"] == summary["seed"].min()]
    p = paired[paired["seed"] == paired["seed"].min()] if len(paired) else paired
    tests = max(1, len(p))
    lines = []
    for probe, g in s.groupby("probe", sort=False):
        arms = "; ".join(f"{r.arm} {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] ({r.verdict})"
                         for r in g.itertuples())
        lines.append(f"- **{probe}** (chance {g['chance'].iloc[0]:.3f}, n={int(g['n'].iloc[0])}): {arms}.")
        for r in (p[p["probe"] == probe].itertuples() if len(p) else ()):
            sig = r.p_value < alpha / tests
            word = ("higher" if r.diff > 0 else "lower") if sig else "no detectable difference"
            lines.append(f"  - {r.arm} vs {baseline}: {r.diff:+.3f} ({r.arm_only_right} vs {r.baseline_only_right} "
                         f"discordant items, {_test_name(r)} p = {r.p_value:.2g}): **{word}** at alpha {alpha} / {tests} tests.")
    return "\n".join(lines)


def _test_name(row) -> str:
    """The paired test's name: McNemar when every item is its own cluster (the sign-flip test is
    McNemar's then), else the cluster sign-flip test."""
    return "McNemar" if getattr(row, "n_clusters", row.n) == row.n else "cluster sign-flip"
