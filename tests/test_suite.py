"""The "failures" suite on fixtures of every benchmark ($CLIPKIT_DATA layout, rendered images, never real data):
present / absent / failed, the files written (CLIP_benchmark records, tidy and wide tables), the failure grid, and
the benchmark_failures notebook with and without data. In-memory and on tmp_path, no network."""
import json
import shutil
from pathlib import Path

import bench_fixtures as bf
import pandas as pd
import pytest

from clipkit.core.paths import slugify
from clipkit.probes.benchmarks import BENCHMARKS, sugarcrepe, valse
from clipkit.probes.suite import COLUMNS, absent_note, run_suite, worst_items

ROOT = Path(__file__).resolve().parents[1]


class Loader:
    """load_model stand-in: the fixture model for any spec, counting the loads (a spec "broken" fails)."""

    def __init__(self):
        self.calls = []

    def __call__(self, spec, device="cpu"):
        self.calls.append((spec, device))
        if spec == "broken":
            raise RuntimeError("no such weights: broken")
        return bf.fake_model()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Every benchmark but VALSE under one root (VALSE absent)."""
    root = tmp_path_factory.mktemp("data")
    bf.write_all(root)
    shutil.rmtree(root / "valse")
    return root


@pytest.fixture(scope="module")
def suite(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    loader = Loader()
    res = run_suite("failures", ["fake-a", "fake-b"], out, data_root=data, load_model=loader)
    return res, out, loader


def test_present_benchmarks_run_for_every_model_and_absent_ones_are_listed(suite, data):
    res, _, loader = suite
    assert res.present == [b for b in BENCHMARKS if b != "valse"]
    assert [c[0] for c in loader.calls] == ["fake-a", "fake-b"]        # each model loaded once
    assert set(res.results) == {"fake-a", "fake-b"} and res.failed == {}
    assert set(res.results["fake-a"]) == set(res.present)
    # the note is the VALSE module's own message: its files and where the authors publish them
    note = res.absent["valse"]
    assert list(res.absent) == ["valse"] and str(data / "valse") in note and valse.WHERE in note
    assert all(f"{p}.json" in note for p in valse.PIECES)
    assert note == absent_note("valse", data / "valse")
    assert any(line.startswith("absent: valse:") for line in res.pretty().splitlines())


def test_files_written_clip_benchmark_records_and_tables(suite):
    res, out, _ = suite
    for m in res.models:
        for b in res.present:
            assert (out / slugify(m) / f"{b}.json").exists() and (out / slugify(m) / f"{b}.csv").exists()
            rec = json.loads((out / f"{b}_{slugify(m)}_image_caption_selection.json").read_text())
            assert rec["task"] == "image_caption_selection" and rec["dataset"] == b and rec["model"] == m
            assert rec["metrics"]["acc"] == pytest.approx(res.results[m][b].summary["accuracy"])
    wino = json.loads((out / "winoground_fake-a_image_caption_selection.json").read_text())["metrics"]
    assert wino["text_acc"] == pytest.approx(res.results["fake-a"]["winoground"].summary["text_score"])
    assert wino["image_acc"] == pytest.approx(res.results["fake-a"]["winoground"].summary["image_score"])
    record = json.loads((out / "suite_failures.json").read_text())
    assert record["absent"] == res.absent and record["present"] == res.present
    tidy = pd.read_csv(out / "suite_failures.csv")
    assert list(tidy.columns) == COLUMNS and len(tidy) == len(res.table)
    wide = pd.read_csv(out / "suite_failures.table.csv")
    assert wide["model"].tolist() == ["fake-a", "fake-b"] and wide.shape[1] == 1 + res.table.groupby(
        ["benchmark", "subset", "metric"]).ngroups


def test_tidy_rows_match_each_results_own_numbers(suite):
    res, _, _ = suite
    t = res.table
    sc = res.results["fake-a"]["sugarcrepe"]
    rows = t[(t.model == "fake-a") & (t.benchmark == "sugarcrepe") & (t.source == "item")]
    assert dict(zip(rows.subset, rows.n)) == {"all": 21, **bf.write_sugarcrepe(Path("/tmp/unused-sc"))["counts"]}
    by = sc.breakdowns["subset"].set_index("subset")
    for r in rows[rows.subset != "all"].itertuples():
        assert (r.value, r.ci_low, r.ci_high, r.chance) == pytest.approx(
            (by.loc[r.subset, "accuracy"], by.loc[r.subset, "ci_low"], by.loc[r.subset, "ci_high"], 0.5))
    # the authors' headline metrics sit beside the item accuracy, split into subset and metric
    aro = t[(t.model == "fake-a") & (t.benchmark == "aro") & (t.source == "authors")]
    assert set(aro.metric) == {"vg_relation_macro", "vg_attribution_macro"}
    assert aro.set_index("metric").loc["vg_relation_macro", "value"] == pytest.approx(
        res.results["fake-a"]["aro"].published["vg_relation_macro"]["accuracy"])
    ws = t[(t.benchmark == "whatsup") & (t.source == "authors") & (t.subset == "controlled_images")]
    assert set(ws.metric) == {"individual", "pair", "set"}
    assert set(t[t.benchmark == "winoground"].subset) == {"all"}    # one subset: no duplicate rows
    assert t[["value", "ci_low", "ci_high", "chance", "n"]].notna().all().all()
    wide = res.wide()
    assert wide.loc["fake-b", "sugarcrepe/swap_obj:accuracy"] == pytest.approx(
        res.results["fake-b"]["sugarcrepe"].breakdowns["subset"].set_index("subset").loc["swap_obj", "accuracy"])


def test_a_failing_benchmark_is_reported_and_the_rest_still_run(data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    broken = json.loads((root / "sugarcrepe" / "swap_obj.json").read_text())
    del broken["1"]["negative_caption"]
    (root / "sugarcrepe" / "swap_obj.json").write_text(json.dumps(broken))
    res = run_suite("failures", ["fake-a", "broken"], tmp_path / "out", data_root=root, load_model=Loader())
    msg = res.failed["fake-a"]["sugarcrepe"]
    assert "swap_obj.json" in msg and "'1'" in msg and "negative_caption" in msg
    assert set(res.results["fake-a"]) == set(res.present) - {"sugarcrepe"}
    assert set(res.failed["broken"]) == set(res.present)
    assert all("model did not load" in v and "no such weights" in v for v in res.failed["broken"].values())
    assert "failed: fake-a on sugarcrepe:" in res.pretty()
    assert json.loads((tmp_path / "out" / "suite_failures.json").read_text())["failed"] == res.failed


def test_no_data_lists_every_benchmark_and_loads_no_model(tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPKIT_DATA", raising=False)
    loader = Loader()
    res = run_suite("failures", ["fake-a"], tmp_path, load_model=loader)
    assert loader.calls == [] and res.present == [] and list(res.absent) == list(BENCHMARKS)
    assert "CLIPKIT_DATA" in res.absent["sugarcrepe"] and sugarcrepe.WHERE in res.absent["sugarcrepe"]
    assert res.table.empty and (tmp_path / "suite_failures.json").exists()
    assert len(res.pretty().splitlines()) == len(BENCHMARKS)


def test_empty_data_root_means_no_data_even_with_clipkit_data_set(data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPKIT_DATA", str(data))
    res = run_suite("failures", ["fake-a"], tmp_path, data_root="", load_model=Loader())
    assert res.present == [] and "CLIPKIT_DATA" in res.status_line() and res.overview()["absent"] == len(BENCHMARKS)


def test_data_root_defaults_to_clipkit_data(tmp_path, monkeypatch):
    bf.write_mmvp(tmp_path / "data" / "mmvp")
    monkeypatch.setenv("CLIPKIT_DATA", str(tmp_path / "data"))
    res = run_suite("failures", ["fake-a"], tmp_path / "out", load_model=Loader(), n=4)
    assert res.present == ["mmvp"] and res.data_root == str(tmp_path / "data")
    assert res.results["fake-a"]["mmvp"].summary["n"] == 4     # n caps the items (pairs) read: 4 of 10


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown suite 'failure'; known suites: \\['failures'\\]"):
        run_suite("failure", ["a"], tmp_path)
    with pytest.raises(ValueError, match="at least one model"):
        run_suite("failures", [], tmp_path)
    with pytest.raises(ValueError, match="share the output folder"):
        run_suite("failures", ["a:b", "a_b"], tmp_path)


def test_worst_items_are_wrong_and_sorted_by_margin(suite):
    res, _, _ = suite
    sc = res.results["fake-a"]["sugarcrepe"]
    images, titles = worst_items(sc, k=3)
    wrong = sc.table[~sc.table["correct"]].sort_values("margin", kind="stable").head(3)
    assert len(images) == len(titles) == len(wrong) > 0
    for t, r in zip(titles, wrong.itertuples()):
        assert t.startswith(f"{r.subset} #{r.id}\n") and r.true_caption in t
    assert all(im.mode == "RGB" for im in images)
    images, titles = worst_items(res.results["fake-a"]["winoground"], k=2)   # no margin column: file order
    assert len(images) == len(titles) <= 2


# --- the notebook -------------------------------------------------------------------------------------------------
def _run_notebook(tmp_path, **params):
    import papermill as pm
    pm.execute_notebook(str(ROOT / "notebooks" / "benchmark_failures.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={"MODEL": "clipkit-nano", "OUT_DIR": str(tmp_path), **params},
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    return {p.name.removesuffix(".metrics.json"): json.loads(p.read_text())
            for p in tmp_path.glob("*.metrics.json")}


@pytest.mark.slow
def test_notebook_with_data_records_each_benchmark_and_its_figures(data, tmp_path):
    records = _run_notebook(tmp_path, DATA=str(data))
    present = [b for b in BENCHMARKS if b != "valse"]
    assert set(records) == {"benchmark_failures", *present}
    over = records["benchmark_failures"]
    assert over["metrics"]["present"] == 6 and over["metrics"]["absent_benchmarks"] == "valse"
    assert over["figures"] == ["benchmark_subsets", "benchmark_failure_grid"]
    assert (tmp_path / "figures" / "benchmark_subsets.png").exists()
    m = records["sugarcrepe"]["metrics"]
    assert m["n"] == 21 and m["chance"] == 0.5 and m["ci_low"] <= m["accuracy"] <= m["ci_high"]
    assert m["accuracy[subset=swap_obj]_n"] == 3
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    text = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                   for c in nb["cells"] for o in c.get("outputs", []))
    assert "absent valse" in text and valse.WHERE in text


@pytest.mark.slow
def test_notebook_without_data_lists_what_to_download(tmp_path):
    records = _run_notebook(tmp_path, DATA="")
    assert list(records) == ["benchmark_failures"]
    m = records["benchmark_failures"]["metrics"]
    assert m["present"] == 0 and m["absent"] == len(BENCHMARKS) and records["benchmark_failures"]["figures"] == []
    assert len(m["notes"]) == len(BENCHMARKS) and sugarcrepe.WHERE in m["notes"][0]


def test_notebook_is_committed_without_outputs_and_takes_the_documented_parameters():
    nb = json.loads((ROOT / "notebooks" / "benchmark_failures.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    params = "".join(code[0]["source"])
    assert code[0]["metadata"]["tags"] == ["parameters"] and "check(globals()" in "".join(code[1]["source"])
    for name in ("MODEL", "DATA", "N", "DEVICE", "OUT_DIR"):
        assert f"\n{name} = " in f"\n{params}"
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in c["source"])
