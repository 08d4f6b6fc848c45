"""Results shared by the shift kinds (synthetic `shift`, `folder_shift`): per-condition accuracy of
zero-shot and the linear probe, the ID->OOD drop and relative robustness (CLIP paper §3.3), and the record.

Not a kind: both kinds build a per-item table and call `summarise`; neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from clipkit.core.records import write_record
from clipkit.probes.protocol import ProbeSpec

CLASSIFIERS = ("zero-shot", "linear probe")


@dataclass
class ShiftResult:
    """Per-item correctness under every condition, the tidy accuracy table, robustness and summary."""
    spec: ProbeSpec
    model: str
    items: pd.DataFrame       # condition x item: shift, severity, item, target, zs_correct, lp_correct
    table: pd.DataFrame       # classifier, shift, kind, severity, accuracy, ci_low, ci_high, n, chance, verdict
    robustness: pd.DataFrame  # per classifier: id_accuracy, ood_accuracy, drop, n_shifts
    summary: dict = field(default_factory=dict)

    def per_shift(self) -> pd.DataFrame:
        """Mean accuracy per (classifier, shift) over its severities, with the ID accuracy and the drop."""
        from clipkit.world.shifts import IN_DISTRIBUTION   # scipy (world.corruptions): not at import
        ood = self.table[self.table["shift"] != IN_DISTRIBUTION]
        out = ood.groupby(["classifier", "shift"], sort=False)["accuracy"].mean().reset_index()
        id_acc = self.table[self.table["shift"] == IN_DISTRIBUTION].set_index("classifier")["accuracy"]
        return out.assign(id_accuracy=out["classifier"].map(id_acc), drop=lambda d: d["id_accuracy"] - d["accuracy"])

    def metrics(self) -> dict:
        """Flat dict: zero-shot ID accuracy/ci/chance/n (the report index's keys), lp_*, OOD means, drops,
        and `zs[shift@severity]` / `lp[shift@severity]` accuracies."""
        from clipkit.world.shifts import IN_DISTRIBUTION   # scipy (world.corruptions): not at import
        flat = dict(self.summary)
        for _, r in self.table.iterrows():
            if r["shift"] != IN_DISTRIBUTION:
                flat[f"{'zs' if r['classifier'] == 'zero-shot' else 'lp'}[{r['shift']}@{r['severity']}]"] = r["accuracy"]
        return flat

    def save(self, out_dir: str | Path) -> Path:
        """Write <name>.csv (the tidy table), <name>.items.csv and <name>.json (the record)."""
        name = self.spec.name
        record = {"dataset": f"probe:{name}", "model": self.model, "task": "distribution_shift",
                  "metrics": self.summary, "table": self.table.to_dict("records"),
                  "robustness": self.robustness.to_dict("records"), "spec": self.spec, "language": "en"}
        return write_record(out_dir, name, record, self.table, tables={"items": self.items})


def summarise(items: pd.DataFrame, n_classes: int, spec: ProbeSpec, model_name: str = "") -> ShiftResult:
    """Tables and summary from per-item correctness (columns shift, severity, item, zs_correct, lp_correct).

    Optional item columns, for shifts that are not clipkit.world.shifts (e.g. folder datasets, the folder_shift kind):
    `n_classes` (classes scored in that condition: chance is 1/n_classes there, else 1/`n_classes`) and
    `kind`; without `lp_correct` there is no linear probe (its rows are left out, its summary keys NaN)."""
    from clipkit.world.shifts import IN_DISTRIBUTION, get_shift   # scipy: here, not when specs are read
    from clipkit.core import stats   # scipy (~1 s): here, so that reading specs does not load it
    present = [(c, col) for c, col in zip(CLASSIFIERS, ("zs_correct", "lp_correct")) if col in items]
    rows = []
    for (shift, sev), g in items.groupby(["shift", "severity"], sort=False):
        kind = ("none" if shift == IN_DISTRIBUTION else g["kind"].iloc[0] if "kind" in g
                else get_shift(shift).kind)
        chance = 1.0 / (int(g["n_classes"].iloc[0]) if "n_classes" in g else n_classes)
        for clf, col in present:
            rows.append({"classifier": clf, "shift": shift, "kind": kind, "severity": int(sev),
                         **stats.accuracy_summary(g[col].astype(bool), chance, seed=spec.seed)})
    table = pd.DataFrame(rows)
    # robustness per classifier: severities averaged within a shift, then shifts averaged (as robustness_by_model)
    ood = table[table["shift"] != IN_DISTRIBUTION]
    per_shift = ood.groupby(["classifier", "shift"])["accuracy"].mean()
    id_acc = table[table["shift"] == IN_DISTRIBUTION].set_index("classifier")["accuracy"]
    rob = pd.DataFrame([{"classifier": c, "id_accuracy": id_acc[c],
                         "ood_accuracy": per_shift[c].mean() if c in per_shift else float("nan"),
                         "n_shifts": int(per_shift[c].size) if c in per_shift else 0} for c, _ in present])
    rob["drop"] = rob["id_accuracy"] - rob["ood_accuracy"]
    zs_id = table[(table["shift"] == IN_DISTRIBUTION) & (table["classifier"] == "zero-shot")].iloc[0]
    lp_id = table[(table["shift"] == IN_DISTRIBUTION) & (table["classifier"] == "linear probe")]
    lp_id = lp_id.iloc[0] if len(lp_id) else pd.Series(float("nan"), index=["accuracy", "ci_low", "ci_high", "n"])
    r = rob.set_index("classifier").reindex(list(CLASSIFIERS))    # a missing probe: NaN row
    summary = {"probe": spec.name, "family": getattr(spec.options, "family", None), "model": model_name,
               **{k: zs_id[k] for k in ("accuracy", "ci_low", "ci_high", "n", "chance", "verdict")},
               **{f"lp_{k}": lp_id[k] for k in ("accuracy", "ci_low", "ci_high", "n")},
               "n_conditions": int(len(ood) // len(present)), "n_shifts": int(r.loc["zero-shot", "n_shifts"]),
               "zs_ood_accuracy": r.loc["zero-shot", "ood_accuracy"], "lp_ood_accuracy": r.loc["linear probe", "ood_accuracy"],
               "zs_drop": r.loc["zero-shot", "drop"], "lp_drop": r.loc["linear probe", "drop"],
               # relative robustness (§3.3): OOD accuracy of zero-shot over the ID-adapted probe; NOT effective robustness
               "relative_robustness_zs_vs_lp": r.loc["zero-shot", "ood_accuracy"] - r.loc["linear probe", "ood_accuracy"]}
    summary.update(scene_intervals(items, present, spec.seed))
    return ShiftResult(spec, model_name, items, table, rob, summary)


def scene_intervals(items: pd.DataFrame, present, seed: int = 0) -> dict:
    """95% CIs of the OOD accuracy, the drop and the relative robustness, resampling scenes.

    When every condition holds the same scenes (the synthetic shift kind: item i of every condition
    is one scene), the OOD accuracy (severities averaged within a shift, then shifts averaged) is the
    mean over scenes of a per-scene score v_s = sum_c w_c z_sc (w_c: the condition's weight in that
    average), so the conditions of one scene stay together: the scene is the cluster, and the
    interval is a bootstrap over scenes of v_s (a mean of scores, not a proportion). The drop is the
    mean of z_s,ID - v_s, the relative robustness the mean of v_s(zero-shot) - v_s(probe).
    {} when the conditions hold different items (folder shift)."""
    from clipkit.world.shifts import IN_DISTRIBUTION   # scipy (world.corruptions): not at import
    from clipkit.core import stats   # scipy (~1 s): here, so that reading specs does not load it
    if "item" not in items:
        return {}
    sets = items.groupby(["shift", "severity"], sort=False)["item"].apply(lambda x: tuple(sorted(x)))
    ood_rows = items[items["shift"] != IN_DISTRIBUTION]
    if sets.nunique() != 1 or ood_rows.empty:
        return {}
    sev_per_shift = ood_rows.groupby("shift")["severity"].nunique()
    weight = 1.0 / (len(sev_per_shift) * ood_rows["shift"].map(sev_per_shift))        # w_c per row
    out, per_scene = {}, {}
    for clf, col in present:
        pre = "zs" if clf == CLASSIFIERS[0] else "lp"
        v = (ood_rows[col].astype(float) * weight).groupby(ood_rows["item"]).sum()       # (n scenes,)
        z_id = items[items["shift"] == IN_DISTRIBUTION].set_index("item")[col].astype(float).reindex(v.index)
        per_scene[pre] = v
        out[f"{pre}_ood_ci_low"], out[f"{pre}_ood_ci_high"] = stats.bootstrap_ci(v.to_numpy(), seed=seed)
        out[f"{pre}_drop_ci_low"], out[f"{pre}_drop_ci_high"] = stats.bootstrap_ci((z_id - v).to_numpy(), seed=seed)
    if {"zs", "lp"} <= set(per_scene):
        rr = (per_scene["zs"] - per_scene["lp"]).to_numpy()
        out["relative_robustness_ci_low"], out["relative_robustness_ci_high"] = stats.bootstrap_ci(rr, seed=seed)
    out["ood_ci_method"] = "bootstrap over scenes (each scene's conditions kept together)"
    return out
