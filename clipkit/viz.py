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


def plot_confusion(conf: pd.DataFrame, title: str = "", ax=None):
    """Heatmap of a confusion matrix with row-normalised shares (rows: truth)."""
    ax = ax or plt.subplots(figsize=(4.5, 3.8))[1]
    share = conf.div(conf.sum(1).replace(0, 1), axis=0)
    sns.heatmap(share, annot=conf.to_numpy(), fmt="d", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax)
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
