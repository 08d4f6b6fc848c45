"""Experiments on the training world itself: style diversity and caption density arms, probes under held-out styles.

An arm here differs from the others in the *world* it is trained on, not in a TrainConfig knob: its
corpus (the same scenes for every arm: synth.corpus_item(i, seed), only their style families and
caption completeness differ) is rendered once to PNG files with a captions CSV (`write_corpus`) and
trained through the ordinary `--data csv` path, so `clipkit.analysis.experiments.train_arms` trains,
caches and reuses it like any other arm. Every arm sees the same number of rows and samples.

Probes under a style (`probe_styles`): the held-out counting, spatial, spatial_swap and binding items
(the same scenes as the probes of those names, from their seed namespaces) drawn in a style family,
one style per item from its own seed; the "classic" family is the probes' own look, pixel for pixel.
Items are keyed by (probe, scene index), so one scene's renderings in two families pair up, and the
same item of two arms too (experiments.paired_tests).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from clipkit.analysis import experiments as ex
from clipkit.analysis.robustness import ER, fit_trend, predicted_ood
from clipkit.core import stats
from clipkit.core.fingerprints import params_fingerprint
from clipkit.evaluate.synthetic import HELD_OUT_SEED
from clipkit.world import styles, synth
from clipkit.world.seeds import scene_seed

STYLE_PROBES = ("counting", "spatial", "spatial_swap", "binding")
ID_FAMILY = "classic"        # the probes' look: the in-distribution point of every style comparison
TOLERANCE = 0.10             # issue 14: a held-out family within 10 points of in-distribution counts as in it


# --- probe items in a style -----------------------------------------------------------------------
def probe_scenes(probe: str, n: int, seed: int = HELD_OUT_SEED) -> list[tuple]:
    """[(scene, captions, answer, cluster)] of the held-out probe `probe`, as its probe kind builds them
    (probes/counting.py, spatial.py, binding.py at their shipped options): same seeds, same captions."""
    from clipkit.probes.spatial import mirror
    out = []
    if probe == "counting":
        counts = [1, 2, 3, 4, 5, 6]
        for i in range(n):
            c = counts[i % 6]
            s = synth.make_count_scene(scene_seed("probe:counting", seed, i), n=c, size_mode="random")
            f = s.facts
            out.append((s, [synth.count_caption(k, f["colour"], f["shape"]) for k in counts], c - 1, i))
    elif probe in ("spatial", "spatial_swap"):
        rels = list(synth.RELATIONS)
        for i in range(n):
            pair, second = divmod(i, 2)
            s = synth.make_relation_scene(scene_seed("probe:spatial", seed, pair), relation=rels[pair % 4])
            s = mirror(s) if second else s
            rel, a, b = s.facts["relation"], s.facts["a"], s.facts["b"]
            if probe == "spatial":
                caps, answer = [synth.relation_caption(a, r, b) for r in rels], rels.index(rel)
            else:
                caps, answer = [synth.relation_caption(a, rel, b), synth.relation_caption(b, rel, a)], 0
            out.append((s, caps, answer, f"pair{pair}"))
    elif probe == "binding":
        for i in range(n):
            s = synth.make_binding_scene(scene_seed("probe:binding", seed, i))
            (ca, sa), (cb, sb) = s.facts["pairs"]
            true, swapped = synth.binding_caption([(ca, sa), (cb, sb)]), synth.binding_caption([(cb, sa), (ca, sb)])
            answer = i % 2
            out.append((s, [swapped, true] if answer else [true, swapped], answer, i))
    else:
        raise ValueError(f"unknown style probe {probe!r}; choose one of {STYLE_PROBES}")
    return out


def family_style(family: str, i: int, seed: int = HELD_OUT_SEED) -> styles.Style:
    """The style item i of a probe is drawn in under `family` (its own seed; classic: the probes' look)."""
    return styles.draw_style(family, scene_seed("shift-noise", seed, i))


def style_hits(model, preprocess, tokenizer, probes=STYLE_PROBES, families=(ID_FAMILY,), n: int = 300,
               seed: int = HELD_OUT_SEED, size: int = 72) -> pd.DataFrame:
    """One row per (probe, family, item): credit (tie rule of evaluate.choose), chance, item_id, cluster."""
    from clipkit.evaluate import choice_scores, choose, encode_images, encode_texts
    bad = [f for f in families if f not in styles.FAMILIES]
    if bad:
        raise ValueError(f"unknown style families {bad}; choose from {styles.FAMILIES}")
    rows = []
    for probe in probes:
        scenes = probe_scenes(probe, n, seed)
        k = len(scenes[0][1])
        txt = encode_texts(model, tokenizer, [c for _, caps, _, _ in scenes for c in caps])      # (n K, d)
        for fam in families:
            images = (synth.render(s, size, style=family_style(fam, i, seed)) for i, (s, *_) in enumerate(scenes))
            img = encode_images(model, preprocess, images)                                      # (n, d)
            res = choose(choice_scores(img, txt.reshape(len(scenes), k, -1)).numpy(), [a for _, _, a, _ in scenes])
            rows.append(pd.DataFrame({"probe": probe, "family": fam, "item": np.arange(len(scenes)),
                                      "item_id": [f"{probe}:{i}" for i in range(len(scenes))],
                                      "cluster": [f"{probe}:{c}" for *_, c in scenes], "credit": res["credit"],
                                      "correct": res["correct"], "chance": res["chance"]}))
    return pd.concat(rows, ignore_index=True)


def probe_styles(trained: pd.DataFrame, probes=STYLE_PROBES, families=(ID_FAMILY,) + styles.HELD_OUT_FAMILIES,
                 n: int = 300, seed: int = HELD_OUT_SEED, device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, items) in clipkit.analysis.experiments' layout for every trained arm; the probe column
    is "<probe>@<family>". CIs: Clopper-Pearson, Korn-Graubard where spatial items share a mirrored pair."""
    from clipkit.models import load_model
    summary, items = [], []
    for row in trained.itertuples():
        model, preprocess, tokenizer = load_model(row.out, device=device)
        hits = style_hits(model, preprocess, tokenizer, probes, families, n, seed)
        for (probe, fam), g in hits.groupby(["probe", "family"], sort=False):
            clusters = g["cluster"] if g["cluster"].duplicated().any() else None
            s = stats.accuracy_summary(g["credit"], g["chance"], clusters=clusters)
            summary.append({"arm": row.arm, "seed": row.seed, "probe": f"{probe}@{fam}",
                            **{k: s[k] for k in ("accuracy", "ci_low", "ci_high", "chance", "n", "verdict")}})
            items.append(g.assign(arm=row.arm, seed=row.seed, probe=f"{probe}@{fam}", correct=g["correct"].astype(bool))
                         [["arm", "seed", "probe", "item", "item_id", "cluster", "correct", "credit"]])
    return pd.DataFrame(summary), pd.concat(items, ignore_index=True)


def style_gaps(summary: pd.DataFrame, id_family: str = ID_FAMILY, tolerance: float = TOLERANCE) -> pd.DataFrame:
    """Per (arm, seed, probe, family): ID accuracy, the family's accuracy, the gap (ID - family),
    whether it is within `tolerance` (issue 14's criterion for "in distribution"), and whether the ID
    accuracy is above chance at all (its CI's lower end over chance): a gap between two chance-level
    accuracies is small but says nothing, so `diversity_conclusion` does not count it."""
    s = summary.assign(base=summary["probe"].str.split("@").str[0], family=summary["probe"].str.split("@").str[1])
    ids = s[s["family"] == id_family].set_index(["arm", "seed", "base"])
    out = s[s["family"] != id_family].copy()
    keys = list(zip(out["arm"], out["seed"], out["base"]))
    out["id_accuracy"] = [ids["accuracy"].get(k, np.nan) for k in keys]
    out["id_above_chance"] = [bool(ids["ci_low"].get(k, np.nan) > ids["chance"].get(k, np.nan)) for k in keys]
    out["gap"] = out["id_accuracy"] - out["accuracy"]
    out["within_tolerance"] = out["gap"] <= tolerance
    return out[["arm", "seed", "base", "family", "id_accuracy", "id_above_chance", "accuracy", "ci_low", "ci_high",
                "gap", "within_tolerance"]].rename(columns={"base": "probe"})


def effective_robustness(gaps: pd.DataFrame, reference) -> pd.DataFrame:
    """Per (probe, family): the logit-linear trend (clipkit.analysis.robustness) fitted to the
    `reference` arms (the single-style family: one look, several budgets or seeds) and every other
    arm's effective robustness: its held-out-family accuracy minus the trend's prediction at its ID
    accuracy. A trend needs two reference points with different ID accuracies; else ER is NaN and
    `note` says why."""
    reference = [reference] if isinstance(reference, str) else list(reference)
    rows = []
    for (probe, fam), g in gaps.groupby(["probe", "family"], sort=False):
        ref = g[g["arm"].isin(reference)]
        try:
            slope, icpt = fit_trend(ref["id_accuracy"], ref["accuracy"])
            note = f"trend of {len(ref)} single-style models"
        except ValueError as e:
            slope = icpt = np.nan
            note = str(e)
        for r in g[~g["arm"].isin(reference)].itertuples():
            pred = predicted_ood(r.id_accuracy, slope, icpt) if np.isfinite(slope) else np.nan
            rows.append({"probe": probe, "family": fam, "arm": r.arm, "seed": r.seed, "id_accuracy": r.id_accuracy,
                         "accuracy": r.accuracy, "predicted": pred, ER: r.accuracy - pred, "note": note})
    return pd.DataFrame(rows)


# --- corpora and arms -----------------------------------------------------------------------------
def corpus_caption(index: int, seed: int, scene: synth.Scene, style: styles.Style, partial: float) -> str:
    """Training caption of corpus row `index`: complete, or (with probability `partial`) naming only
    some of the objects or attributes (styles.partial_caption); in the row's caption frame."""
    rng = np.random.default_rng([scene_seed("train", seed, index), 17])
    text = styles.partial_caption(scene, rng) if rng.random() < partial else synth.caption(scene)
    return styles.framed(text, style.frame, scene)


def write_corpus(root, rows: int, seed: int = 0, families=styles.TRAIN_FAMILIES, partial: float = 0.0,
                 frames: bool = True, size: int = 54) -> Path:
    """Render corpus rows 0..rows-1 (scene i = synth.corpus_item(i, seed)) in `families` with `partial`
    captions to root/<fingerprint>/ (images/*.png + captions.csv); reused when already complete.
    Returns the CSV's path, for an arm's {"data": "csv", "data_path": ...}."""
    families = tuple(families)
    if rows < 1 or not 0 <= partial <= 1:
        raise ValueError(f"rows must be >= 1 and partial in [0, 1], got rows={rows}, partial={partial}")
    styles.corpus_style(0, seed, families)            # validates the families with its own message
    params = dict(rows=rows, seed=seed, families=families, partial=partial, frames=frames, size=size,
                  styles=params_fingerprint(src=Path(styles.__file__).read_text(), synth=Path(synth.__file__).read_text()))
    folder = Path(root) / params_fingerprint(**params)
    path, done = folder / "captions.csv", folder / "corpus.json"
    if done.exists() and path.exists():
        return path
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / "captions.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for i in range(rows):
            scene, style = synth.corpus_item(i, seed), styles.corpus_style(i, seed, families, frames)
            name = f"images/{i:07d}.png"
            synth.render(scene, size, style=style).save(folder / name)
            w.writerow([name, corpus_caption(i, seed, scene, style, partial)])
    (folder / "captions.tmp").replace(path)
    done.write_text(json.dumps(params, indent=1, default=str))
    return path


def render_size(arch: str) -> int:
    """The side a corpus is rendered at for `arch`: its input size x the training crop's pad (72 -> 64)."""
    import open_clip
    import clipkit.models  # noqa: F401  (registers the clipkit architectures)
    from clipkit.data.transforms import CROP_PAD
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown architecture {arch!r}")
    return int(round(cfg["vision_cfg"]["image_size"] * CROP_PAD))


def diversity_arms(root, rows: int, drop: str = "light", single: str = ID_FAMILY, seed: int = 0,
                   size: int = 54) -> list[ex.Arm]:
    """One style (`single`) vs the varied world (styles.TRAIN_FAMILIES) vs the varied world minus `drop`;
    plus "one-style-half", the single style with half the rows and steps (set by the notebook), which
    only helps fit the single-style trend of `effective_robustness`."""
    if drop not in styles.TRAIN_FAMILIES or drop == single:
        raise ValueError(f"drop must be a training family other than {single!r}: one of "
                         f"{[f for f in styles.TRAIN_FAMILIES if f != single]}, got {drop!r}")
    minus = tuple(f for f in styles.TRAIN_FAMILIES if f != drop)
    worlds = [("one-style", (single,)), ("varied", styles.TRAIN_FAMILIES), (f"minus-{drop}", minus)]
    return [ex.Arm(name, {"data": "csv", "data_path": str(write_corpus(root, rows, seed, fams, size=size))})
            for name, fams in worlds]


def density_arms(root, rows: int, partials=(0.0, 0.5, 1.0), seed: int = 0, size: int = 54) -> list[ex.Arm]:
    """Complete captions vs captions of which a share `p` names only some objects or attributes;
    every arm on the varied world's images (the same files' scenes and styles), only captions differ."""
    names = {0.0: "complete"}
    return [ex.Arm(names.get(float(p), f"partial-{round(100 * p)}"),
                   {"data": "csv", "data_path": str(write_corpus(root, rows, seed, partial=float(p), size=size))})
            for p in partials]


def style_examples(families=styles.FAMILIES, k: int = 6, seed: int = 0, size: int = 72) -> dict:
    """{family: k training-corpus scenes drawn in it}, for a figure (viz.plot_augmentations)."""
    return {f: [synth.render(synth.corpus_item(i, seed), size, style=styles.draw_style(f, i)) for i in range(k)]
            for f in families}


def diversity_conclusion(gaps: pd.DataFrame, paired: pd.DataFrame, varied: str = "varied",
                         single: str = "one-style", alpha: float = 0.05, tolerance: float = TOLERANCE) -> str:
    """The answer in words, from the numbers (first seed): per probe and unseen family, is the varied
    arm within `tolerance` of its own ID accuracy (the unseen style effectively in distribution), and
    is it better than the single-style arm on that family (paired test, Bonferroni over the tests)?"""
    g = gaps[gaps["seed"] == gaps["seed"].min()]
    p = paired[(paired["seed"] == paired["seed"].min()) & (paired["arm"] == varied) & (paired["baseline"] == single)]
    tests = max(1, len(p))
    lines, inside, total, untestable = [], 0, 0, 0
    for r in g[g["arm"] == varied].itertuples():
        if r.family not in styles.HELD_OUT_FAMILIES:     # e.g. light: a training family of the varied arm
            lines.append(f"- **{r.probe} on {r.family}** (seen in {varied}'s training, so not counted): "
                         f"{r.accuracy:.3f} vs its ID {r.id_accuracy:.3f} (gap {r.gap:+.3f}).")
            continue
        if not getattr(r, "id_above_chance", True):
            untestable += 1
            lines.append(f"- **{r.probe} on {r.family}**: not testable: {varied}'s in-distribution accuracy "
                         f"{r.id_accuracy:.3f} is not above chance, so a small gap means nothing.")
            continue
        total += 1
        inside += bool(r.within_tolerance)
        t = p[p["probe"] == f"{r.probe}@{r.family}"]
        vs = ""
        if len(t):
            t = t.iloc[0]
            sig = t["p_value"] < alpha / tests
            vs = (f"; vs {single} {t['diff']:+.3f} (p = {t['p_value']:.2g}: "
                  f"{('better' if t['diff'] > 0 else 'worse') if sig else 'no detectable difference'})")
        lines.append(f"- **{r.probe} on {r.family}**: {varied} {r.accuracy:.3f} vs its ID {r.id_accuracy:.3f} "
                     f"(gap {r.gap:+.3f}: {'within' if r.within_tolerance else 'outside'} {tolerance:.2f}){vs}.")
    verdict = ("not testable" if not total else "yes" if inside == total else "partly" if inside else "no")
    head = (f"**Does variety make the unseen style in-distribution? {verdict}**: the varied arm is within "
            f"{tolerance:.2f} of its in-distribution accuracy on {inside} of {total} (probe, unseen family) pairs"
            + (f"; {untestable} more are not testable (in-distribution accuracy at chance)." if untestable else "."))
    return "\n".join([head] + lines)


def corpus_rows(steps: int, batch_size: int, rows: int = 0, cap: int = 12_800) -> int:
    """Rows of an arm's corpus: `rows`, or when 0 every sample a new scene up to `cap` (beyond it the
    corpus repeats, each repeat with a new random crop: rendering 100k PNGs per arm is not worth it)."""
    if rows < 0 or steps < 1 or batch_size < 1:
        raise ValueError(f"need rows >= 0, steps >= 1, batch_size >= 1; got {rows}, {steps}, {batch_size}")
    return rows or max(batch_size, min(steps * batch_size, cap))


def density_conclusion(paired: pd.DataFrame, complete: str = "complete",
                       probes=("binding", "spatial_swap"), alpha: float = 0.05) -> str:
    """The answer in words (first seed): on the binding and object-swap probes, does each arm with partial
    captions fall below the complete-caption arm (paired test, Bonferroni over these tests)?"""
    p = paired[(paired["seed"] == paired["seed"].min()) & paired["probe"].isin(probes)]
    tests, lines = max(1, len(p)), []
    for r in p.itertuples():
        sig = r.p_value < alpha / tests
        word = ("higher" if r.diff > 0 else "lower") if sig else "no detectable difference"
        lines.append(f"- **{r.probe}**: {r.arm} {r.acc_arm:.3f} vs {complete} {r.acc_baseline:.3f} "
                     f"({r.diff:+.3f}, p = {r.p_value:.2g}): **{word}**.")
    worse = sum(1 for r in p.itertuples() if r.p_value < alpha / tests and r.diff < 0)
    head = (f"**Do sparse captions cost binding?** {worse} of {len(p)} (arm, probe) comparisons are "
            f"detectably below complete captions at alpha {alpha} / {tests} tests.")
    return "\n".join([head] + lines)
