"""Plots for probe results: accuracy by factor with CIs and chance, confusion matrices, example grids."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def plot_breakdown(breakdown: pd.DataFrame, factor: str, title: str = "", ax=None):
    """Bar chart of accuracy per level of `factor`, 95% CI whiskers, chance as a dashed line, n on bars."""
    ax = ax or plt.subplots(figsize=(max(4, 0.7 * len(breakdown) + 2), 3.2))[1]
    x = np.arange(len(breakdown))
    acc = breakdown["accuracy"].to_numpy()
    err = np.vstack([acc - breakdown["ci_low"].to_numpy(), breakdown["ci_high"].to_numpy() - acc])
    colours = ["#4C72B0" if lo > ch else "#C44E52" if hi < ch else "#999999"
               for lo, hi, ch in zip(breakdown["ci_low"], breakdown["ci_high"], breakdown["chance"])]
    ax.bar(x, acc, yerr=err, color=colours, capsize=3)
    for xi, (a, n) in enumerate(zip(acc, breakdown["n"])):
        ax.text(xi, 0.02, f"n={n}", ha="center", va="bottom", fontsize=7, color="white")
    for xi, ch in enumerate(breakdown["chance"]):
        ax.hlines(ch, xi - 0.45, xi + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(x, [str(v) for v in breakdown[factor]], rotation=30 if len(x) > 6 else 0)
    ax.set_ylim(0, 1)
    ax.set_xlabel(factor)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(title or f"accuracy by {factor} (dashed: chance; blue: above, grey: at, red: below)",
                 fontsize=9)
    return ax


def plot_summary(summaries: list[dict], ax=None):
    """One bar per probe (or model): overall accuracy, CI and chance."""
    df = pd.DataFrame(summaries)
    label = df["probe"] + ("\n" + df["model"] if df["model"].nunique() > 1 else "")
    return plot_breakdown(df.assign(label=label), "label", title="overall accuracy (dashed: chance)", ax=ax)


def plot_benchmark_subsets(table: pd.DataFrame, model: str | None = None, ncols: int = 2):
    """One panel per benchmark of a suite's tidy table (clipkit.probes.suite: benchmark, subset, metric, value,
    ci_low, ci_high, chance, n) for one model (default: the first): a bar per subset and metric, the overall
    `all` first and the authors' own metrics after, with CIs, chance dashed and verdict colours (plot_breakdown)."""
    if table.empty:
        print("(no benchmark results to plot)")
        return None
    t = table[table["model"] == (model or table["model"].iloc[0])]
    benches = list(dict.fromkeys(t["benchmark"]))
    nrows, ncols = int(np.ceil(len(benches) / ncols)), min(ncols, len(benches))
    widest = max(t.groupby("benchmark").size())
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * max(4.5, 0.45 * widest + 1.5), 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(benches):]:
        ax.axis("off")
    for ax, b in zip(axes.flat, benches):
        g = t[t["benchmark"] == b].rename(columns={"value": "accuracy"})
        label = g["subset"].where(g["metric"] == g["metric"].iloc[0], g["subset"] + " " + g["metric"])
        plot_breakdown(g.assign(label=label.str.replace("_", " ")), "label", title=b, ax=ax)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelsize=7)
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    fig.tight_layout()
    return fig


def plot_confusion(conf: pd.DataFrame, title: str = "", ax=None):
    """Heatmap of a confusion matrix with row-normalised shares (rows: truth)."""
    ax = ax or plt.subplots(figsize=(4.5, 3.8))[1]
    share = conf.div(conf.sum(1).replace(0, 1), axis=0)
    # fmt "g": tied items add 1/t to each tied cell (the accuracy's tie rule), so counts may be fractional
    sns.heatmap(share, annot=conf.to_numpy(), fmt="g", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax)
    ax.set_title(title or "confusion (counts; colour = row share)", fontsize=9)
    return ax


def show_items(images, titles, ncols: int = 6, size: float = 1.8):
    """A grid of images with (wrapped) titles, e.g. failure cases with true and chosen captions."""
    n = len(images)
    if n == 0:
        print("(no items to show)")
        return None
    rows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(rows, ncols, figsize=(ncols * size, rows * (size + 0.6)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, t in zip(axes.flat, images, titles):
        ax.imshow(im)
        ax.set_title(t, fontsize=6, wrap=True)
    fig.tight_layout()
    return fig


# --- analysis plots (clipkit.analysis tables) --------------------------------------------------
def plot_zs_vs_lp(table: pd.DataFrame, ax=None):
    """Figure 5 view: zero-shot minus linear-probe accuracy per dataset, sorted; green where zero-shot wins, red where it loses, grey ties.
    Whiskers span the difference of the two CI bounds (a conservative, unpaired band)."""
    t = table.sort_values("diff", ascending=True).reset_index(drop=True)
    ax = ax or plt.subplots(figsize=(6, 0.45 * len(t) + 1.2))[1]
    y = np.arange(len(t))
    lo = t["zs_ci_low"] - t["lp_ci_high"]
    hi = t["zs_ci_high"] - t["lp_ci_low"]
    ax.barh(y, 100 * t["diff"], xerr=100 * np.vstack([t["diff"] - lo, hi - t["diff"]]), capsize=3,
            color=["#55A868" if d > 0 else "#C44E52" if d < 0 else "#999999" for d in t["diff"]])
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(y, [f"{d} (n={n}, chance {c:.0%})" for d, n, c in zip(t["dataset"], t["zs_n"], t["zs_chance"])],
                  fontsize=8)
    wins = int((t["diff"] > 0).sum())
    ax.set_xlabel("zero-shot minus linear probe (accuracy points)")
    ax.set_title(f"zero-shot wins on {wins} of {len(t)} datasets", fontsize=9)
    return ax


def plot_kshot(kshot: pd.DataFrame, ax=None):
    """k-shot linear-probe accuracy vs k (log axis) per dataset, with its zero-shot accuracy dashed
    and chance dotted, in the same colour."""
    ax = ax or plt.subplots(figsize=(5.5, 3.5))[1]
    for (name, g), colour in zip(kshot.groupby("dataset", sort=False), sns.color_palette(n_colors=10) * 10):
        m = g.groupby("k")["lp_acc1"].mean()
        ax.plot(m.index, m.to_numpy(), "o-", color=colour, label=name)
        ax.axhline(g["zs_accuracy"].iloc[0], color=colour, linestyle="--", linewidth=1)
        ax.axhline(g["chance"].iloc[0], color=colour, linestyle=":", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1)
    ax.set_xlabel("labelled examples per class (k)")
    ax.set_ylabel("test accuracy")
    ax.set_title("k-shot linear probe (solid) vs zero-shot (dashed); chance dotted", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def plot_logit_robustness(points: pd.DataFrame, trend: dict | None = None, ax=None):
    """OOD vs ID accuracy on logit axes (ticks in %), y = x dashed, and the fitted trend when given."""
    from clipkit.core.stats import logit
    ax = ax or plt.subplots(figsize=(5, 4.5))[1]
    x, y = logit(points["id_accuracy"].to_numpy()), logit(points["ood_accuracy"].to_numpy())
    for (xi, yi, label, clf) in zip(np.atleast_1d(x), np.atleast_1d(y), points["point"], points["classifier"]):
        ax.scatter(xi, yi, marker="o" if clf == "zero-shot" else "s", s=40)
        ax.annotate(label, (xi, yi), fontsize=7, xytext=(4, 4), textcoords="offset points")
    lo, hi = min(np.min(x), np.min(y)) - 0.5, max(np.max(x), np.max(y)) + 0.5
    grid = np.linspace(lo, hi, 50)
    ax.plot(grid, grid, "k--", linewidth=1, label="y = x (no drop)")
    if trend is not None:
        ax.plot(grid, trend["slope"] * grid + trend["intercept"], color="#C44E52",
                label=f"trend: slope {trend['slope']:.2f}, intercept {trend['intercept']:.2f}")
    ticks = [p for p in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
             if lo <= logit(p) <= hi]
    ax.set_xticks([logit(p) for p in ticks], [f"{p:.0%}" for p in ticks])
    ax.set_yticks([logit(p) for p in ticks], [f"{p:.0%}" for p in ticks])
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("in-distribution accuracy (logit scale)")
    ax.set_ylabel("out-of-distribution accuracy (logit scale)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("effective robustness: points above the trend are more robust", fontsize=9)
    return ax


def plot_atlas(frame: pd.DataFrame, factor: str, ax=None):
    """UMAP atlas: colour = factor level, marker = modality (o image, ^ caption); wrong items ringed red."""
    ax = ax or plt.subplots(figsize=(6, 5))[1]
    levels = sorted(frame[factor].astype(str).unique())
    palette = dict(zip(levels, sns.color_palette("tab10", n_colors=max(len(levels), 3))))
    for modality, marker in (("image", "o"), ("text", "^")):
        g = frame[frame["modality"] == modality]
        ax.scatter(g["x"], g["y"], c=[palette[str(v)] for v in g[factor]], marker=marker, s=22, alpha=0.8)
        bad = g[~g["correct"]]
        ax.scatter(bad["x"], bad["y"], marker=marker, s=70, facecolors="none", edgecolors="red", linewidths=0.8)
    for lvl in levels:
        ax.scatter([], [], color=palette[lvl], label=f"{factor}={lvl}")
    ax.scatter([], [], marker="o", color="grey", label="image")
    ax.scatter([], [], marker="^", color="grey", label="caption")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="red", label="probe wrong")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("UMAP of image and caption embeddings", fontsize=9)
    return ax


def plot_templates(table: pd.DataFrame, top: int = 40, ax=None):
    """Single-template zero-shot accuracies (sorted, CI whiskers; the `top` best and the worst shown),
    each ensemble as a horizontal line, chance dashed."""
    singles = table[table["kind"] == "single"].sort_values("accuracy", ascending=False)
    if len(singles) > top:  # keep the best and the worst: the spread is the point
        singles = pd.concat([singles.head(top // 2), singles.tail(top - top // 2)])
    ax = ax or plt.subplots(figsize=(max(6, 0.22 * len(singles) + 2), 4.2))[1]
    x = np.arange(len(singles))
    acc = singles["accuracy"].to_numpy()
    ax.bar(x, acc, yerr=np.vstack([acc - singles["ci_low"], singles["ci_high"] - acc]), color="#8DA0CB",
           capsize=1.5)
    for (_, r), colour in zip(table[table["kind"] == "ensemble"].iterrows(), ("#C44E52", "#55A868", "#4C72B0", "#8172B2")):
        ax.axhline(r["accuracy"], color=colour, linewidth=1.5, label=f"{r['template']}: {r['accuracy']:.1%}")
    ax.axhline(table["chance"].iloc[0], color="black", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(x, [t.replace("{c}", "…") for t in singles["template"]], rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"zero-shot accuracy (95% CI, n={int(table['n'].iloc[0])})")
    ax.set_title("one bar per single template, sorted; lines: ensembles", fontsize=9)
    ax.legend(fontsize=7)
    return ax


# --- experiment plots (clipkit.analysis.experiments tables) ---------------------------------------------
def plot_arms(summary: pd.DataFrame, ax=None):
    """Grouped bars: one group per probe, one bar per arm (first seed), 95% CI whiskers, each
    probe's chance level as a dashed segment across its group."""
    s = summary[summary["seed"] == summary["seed"].min()]
    probes, arms = list(dict.fromkeys(s["probe"])), list(dict.fromkeys(s["arm"]))
    ax = ax or plt.subplots(figsize=(1.6 * len(probes) * max(1, len(arms) / 2) + 2, 3.6))[1]
    width = 0.8 / len(arms)
    for j, (arm, colour) in enumerate(zip(arms, sns.color_palette("deep", n_colors=max(len(arms), 3)))):
        g = s[s["arm"] == arm].set_index("probe").reindex(probes)
        x = np.arange(len(probes)) - 0.4 + width * (j + 0.5)
        acc = g["accuracy"].to_numpy()
        ax.bar(x, acc, width, yerr=np.vstack([acc - g["ci_low"], g["ci_high"] - acc]), capsize=2,
               color=colour, label=arm)
    for i, p in enumerate(probes):
        ax.hlines(s[s["probe"] == p]["chance"].iloc[0], i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                  linewidth=1)
    ax.set_xticks(np.arange(len(probes)), probes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("held-out probes per arm (dashed: chance)", fontsize=9)
    return ax


def plot_loss_curves(curves: pd.DataFrame, x: str = "samples", ax=None):
    """Training loss per arm (and seed) against pairs seen (x="samples") or optimiser steps.

    `curves`: one row per logged step with arm, seed, step, loss, batch_size
    (clipkit.analysis.experiments.loss_curves)."""
    ax = ax or plt.subplots(figsize=(5.5, 3.4))[1]
    several_seeds = curves["seed"].nunique() > 1 if len(curves) else False
    for (arm, seed), c in curves.groupby(["arm", "seed"], sort=False):
        xs = c["step"] * c["batch_size"] if x == "samples" else c["step"]
        ax.plot(xs, c["loss"], label=f"{arm}" + (f" (seed {seed})" if several_seeds else ""))
    ax.set_xlabel("training pairs seen" if x == "samples" else "optimiser step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss (each arm's own objective: not comparable across losses or batch sizes)",
                 fontsize=8)
    ax.legend(fontsize=7)
    return ax


def plot_augmentations(examples: dict, size: float = 1.3):
    """A grid: one row per augmentation (clipkit.analysis.experiments.augmentation_examples), one column per draw."""
    rows, cols = len(examples), max(len(v) for v in examples.values())
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size + 0.3), squeeze=False)
    for r, (name, images) in enumerate(examples.items()):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


# --- figure export -------------------------------------------------------------------------------
def save_figure(name: str, out_dir, fig=None) -> list:
    """Write the figure (default: the current one) as `out_dir/figures/<name>.png` (150 dpi) and
    `.svg`, each atomically. Returns the two paths."""
    import re
    from pathlib import Path
    from clipkit.core.files import atomic_write_with
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"figure name must be a plain file name (letters, digits, ._-), got {name!r}")
    fig = fig if fig is not None else plt.gcf()
    folder = Path(out_dir) / "figures"
    # format= given: the temporary file's .tmp suffix must not choose it
    return [atomic_write_with(folder / f"{name}.{ext}",
                              lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight"))
            for ext in ("png", "svg")]


def show(name: str, out_dir, fig=None) -> None:
    """Save the figure (see `save_figure`), then display it inline: what the notebooks call instead
    of plt.show(), so every report figure also exists as PNG and SVG beside the HTML. Without an
    open figure (e.g. an empty failure grid) nothing is written."""
    if fig is None and not plt.get_fignums():
        return
    save_figure(name, out_dir, fig)
    plt.show()


# --- where the model looks (clipkit.evaluate.maps, clipkit.analysis.diagnose / pointing) ----------
def overlay_rgb(image, map_, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """(H, W, 3) uint8: the image blended with a (rows, cols) map, upsampled by nearest neighbour
    (each patch covers its pixels, as the pointing game reads it) and min-max scaled to the colormap.
    alpha 0 gives the image unchanged, 1 the map alone; a flat map shows as the colormap's low end."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {alpha}")
    img = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    m = np.asarray(map_, dtype=np.float64)
    if m.ndim != 2 or img.ndim != 3:
        raise ValueError(f"overlay needs an (H, W, 3) image and a (rows, cols) map, got {img.shape} and {m.shape}")
    rows = (np.arange(img.shape[0]) * m.shape[0]) // img.shape[0]
    cols = (np.arange(img.shape[1]) * m.shape[1]) // img.shape[1]
    up = m[np.ix_(rows, cols)]
    span = np.nanmax(up) - np.nanmin(up)
    up = (up - np.nanmin(up)) / span if span > 0 else np.zeros_like(up)
    colour = plt.get_cmap(cmap)(up)[..., :3] * 255                       # (H, W, 3)
    return np.clip((1 - alpha) * img + alpha * colour, 0, 255).round().astype(np.uint8)


def show_maps(images, maps, titles, alpha: float = 0.5, ncols: int = 4, size: float = 2.0):
    """A grid of images with their maps overlaid (see `overlay_rgb`), e.g. each failure's true and
    chosen caption side by side; the colour bar is per image (min to max of its own map)."""
    if len(images) != len(maps) or len(images) != len(titles):
        raise ValueError(f"show_maps needs as many maps and titles as images: {len(images)}, {len(maps)}, {len(titles)}")
    return show_items([overlay_rgb(im, m, alpha) for im, m in zip(images, maps)], titles, ncols=ncols, size=size)


def plot_layer_curves(curves: pd.DataFrame, ax=None):
    """Held-out decodability per layer (clipkit.analysis.diagnose.probe_layer_curves): one line per
    tower with its 95% CI band, chance dashed in the same colour. Towers of different depths are
    drawn from their first block (left) to after the projection (right), each layer named on the curve."""
    ax = ax or plt.subplots(figsize=(6, 3.4))[1]
    towers = [g.sort_values("depth") for _, g in curves.groupby("tower", sort=False)]
    same = len({tuple(g["layer"]) for g in towers}) == 1          # e.g. ViT towers of one depth: name the ticks
    for g, colour in zip(towers, ("#4C72B0", "#DD8452", "#55A868")):
        x = np.linspace(0, 1, len(g)) if len(g) > 1 else np.zeros(1)
        ax.plot(x, g["accuracy"], "o-", color=colour, label=f"{g['tower'].iloc[0]} tower")
        ax.fill_between(x, g["ci_low"], g["ci_high"], color=colour, alpha=0.2)
        ax.plot(x, g["chance"], "--", color=colour, linewidth=1)
        for xi, name in zip(x, g["layer"]) if not same else ():
            ax.annotate(name, (xi, 0.02), fontsize=6, rotation=90, color=colour, ha="center", va="bottom")
    if same and towers:
        ax.set_xticks(np.linspace(0, 1, len(towers[0])) if len(towers[0]) > 1 else [0], towers[0]["layer"],
                      rotation=30, fontsize=7)
    else:
        ax.set_xticks([0, 1], ["first block", "after projection"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out decodability (95% CI)")
    ax.set_title("the factor, layer by layer (dashed: chance)", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def plot_diagnosis(table: pd.DataFrame, ax=None):
    """Grouped bars per probe (clipkit.analysis.diagnose.diagnosis_table): image side, text side and
    cross-modal accuracy with 95% CIs, each with its own chance as a dashed segment; unmeasured sides empty."""
    sides = ("image_side", "text_side", "cross_modal")
    ax = ax or plt.subplots(figsize=(1.9 * len(table) + 2, 3.4))[1]
    width = 0.8 / len(sides)
    for j, (side, colour) in enumerate(zip(sides, ("#4C72B0", "#DD8452", "#55A868"))):
        x = np.arange(len(table)) - 0.4 + width * (j + 0.5)
        acc = table[f"{side}_accuracy"].astype(float).to_numpy()
        err = np.vstack([acc - table[f"{side}_ci_low"].astype(float), table[f"{side}_ci_high"].astype(float) - acc])
        ax.bar(x, np.nan_to_num(acc), width, yerr=np.nan_to_num(err), capsize=2, color=colour,
               label=side.replace("_", " "))
        ax.hlines(table[f"{side}_chance"].astype(float), x - width / 2, x + width / 2, colors="black",
                  linestyles="dashed", linewidth=1)
    ax.set_xticks(np.arange(len(table)), table["probe"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("where the failure lives: image side, text side, the match (dashed: chance)", fontsize=9)
    return ax


def plot_pointing(table: pd.DataFrame, ax=None):
    """Pointing-game accuracy per (scene kind, map method) with CIs, against its area-fraction chance
    (clipkit.analysis.pointing.run_pointing); methods the model lacks are left out."""
    t = table.dropna(subset=["accuracy"])
    return plot_breakdown(t.assign(scene=t["kind"] + "\n" + t["method"]), "scene", ax=ax,
                          title="pointing game: the map's peak on the named object (dashed: area chance)")
