"""Tests for clipkit.report: tiny notebooks through papermill, failures kept apart, the index. No network."""
import json
import sys

import nbformat
import numpy as np
import pytest

from clipkit.report import runner as report

RECORD = ('from clipkit.report.runner import record_metrics\n'
          'record_metrics("probe_demo", {"accuracy": ACC, "ci_low": 0.4, "ci_high": 0.6, '
          '"chance": 0.25, "n": 100}, OUT_DIR)')


def make_notebook(path, *cells, params='MODEL = "x"\nOUT_DIR = "."'):
    """A notebook with a `parameters`-tagged cell followed by `cells`, like notebooks/probe_*.ipynb."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def outputs(path) -> str:
    """Everything the cells printed or raised."""
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") + o.get("evalue", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One run_reports call over a good and a failing notebook (two kernels, shared by the tests)."""
    tmp = tmp_path_factory.mktemp("report")
    good = make_notebook(tmp / "probe_good.ipynb", "import sys\nprint('PREFIX=' + sys.prefix)",
                         RECORD.replace("ACC", "0.5"))
    bad = make_notebook(tmp / "probe_bad.ipynb", 'raise ValueError("boom")')
    summary = report.run_reports(["clipkit-tiny"], [good, bad], out_root=tmp / "reports", kernel="python3")
    return summary, tmp / "reports"


@pytest.mark.slow  # starts Jupyter kernels
def test_run_reports_good_and_failing(first_run):
    summary, out = first_run
    d = out / "clipkit-tiny"
    for name in ("probe_good.ipynb", "probe_good.html", "probe_demo.metrics.json", "probe_bad.failed.ipynb"):
        assert (d / name).is_file(), name
    assert not (d / "probe_bad.ipynb").exists()
    assert not list(d.glob("_staging_*")) and not list(d.glob(".*tmp*"))  # nothing half-done left
    # The "python3" kernel is this interpreter's environment (the venv), not some other python.
    assert f"PREFIX={sys.prefix}\n" in outputs(d / "probe_good.ipynb")
    assert json.loads((d / "probe_demo.metrics.json").read_text())["metrics"]["accuracy"] == 0.5
    assert [f["notebook"].endswith("probe_good.ipynb") for f in summary.ok] == [True]
    [failed] = summary.failed
    assert failed["model"] == "clipkit-tiny" and failed["path"] == str(d / "probe_bad.failed.ipynb")
    assert "ValueError: boom" in failed["error"]
    run = json.loads((d / "run.json").read_text())
    assert run["model"] == "clipkit-tiny" and {"torch", "open_clip_torch", "python"} <= set(run["versions"])
    assert run["notebooks"]["probe_good"]["status"] == "ok"
    assert run["notebooks"]["probe_bad"]["status"] == "failed"


@pytest.mark.slow  # starts Jupyter kernels
def test_index_shows_metrics_links_and_failures(first_run):
    summary, out = first_run
    assert summary.index == out / "index.html"
    page = summary.index.read_text()
    for text in ("clipkit-tiny", "0.500", "[0.400, 0.600]", "chance 0.250", "n=100", "FAILED", "ValueError: boom",
                 "clipkit-tiny/probe_bad.failed.ipynb", 'href="clipkit-tiny/probe_good.html"'):
        assert text in page, text
    assert "http://" not in page and "https://" not in page and "<script" not in page
    data = json.loads((out / "summary.json").read_text())
    probes = data["models"][0]["probes"]
    assert probes["probe_good"]["metrics"]["probe_demo"]["n"] == 100
    assert probes["probe_bad"]["status"] == "failed"


@pytest.mark.slow  # starts Jupyter kernels
def test_failure_keeps_last_good_outputs(tmp_path):
    """A notebook that succeeded, then fails (after recording new metrics): the good outputs stay."""
    nb = make_notebook(tmp_path / "probe_flaky.ipynb", RECORD.replace("ACC", "0.9 if FAIL else 0.5"),
                       'if FAIL:\n    raise RuntimeError("flaky failure")',
                       params='MODEL = "x"\nOUT_DIR = "."\nFAIL = False')
    out = tmp_path / "reports"
    assert not report.run_reports(["clipkit-tiny"], [nb], out_root=out, parameters={"FAIL": False}).failed
    d = out / "clipkit-tiny"
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.name.startswith(("probe_flaky", "probe_demo"))}
    assert set(before) == {"probe_flaky.ipynb", "probe_flaky.html", "probe_demo.metrics.json"}

    rc = report.main(["--model", "clipkit-tiny", "--notebook", str(nb), "--out", str(out), "--param", "FAIL=True"])
    assert rc == 1
    assert {n: (d / n).read_bytes() for n in before} == before  # untouched, metrics still 0.5
    assert "flaky failure" in outputs(d / "probe_flaky.failed.ipynb")
    assert (d / "probe_flaky.failed" / "probe_demo.metrics.json").is_file()  # the failed run's, kept aside
    entry = json.loads((d / "run.json").read_text())["notebooks"]["probe_flaky"]
    assert entry["status"] == "failed" and entry["metrics"] == ["probe_demo.metrics.json"]
    page = (out / "index.html").read_text()
    assert "0.500" in page and "0.900" not in page and "RuntimeError: flaky failure" in page


@pytest.mark.slow  # starts Jupyter kernels
def test_timeout_saves_partial_notebook(tmp_path):
    nb = make_notebook(tmp_path / "probe_slow.ipynb", "print('started')", "import time\ntime.sleep(120)")
    summary = report.run_reports(["clipkit-tiny"], [nb], out_root=tmp_path / "r", timeout_per_cell=2, html=False)
    [failed] = summary.failed
    assert "CellTimeoutError" in failed["error"]
    assert "started" in outputs(failed["path"])


def test_parse_param():
    assert report.parse_param("N=100") == ("N", 100)
    assert report.parse_param("SHIFTS=['blur', 'noise']") == ("SHIFTS", ["blur", "noise"])
    assert report.parse_param("DEVICE=cuda:0") == ("DEVICE", "cuda:0")  # not a literal: a string
    assert report.parse_param("EMPTY=") == ("EMPTY", "")
    for bad in ("N", "=3", "1N=3", "a-b=1"):
        with pytest.raises(Exception, match="KEY=VALUE"):
            report.parse_param(bad)


def test_main_rejects_bad_param(capsys):
    with pytest.raises(SystemExit) as e:
        report.main(["--model", "clipkit-tiny", "--param", "oops"])
    assert e.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_input_errors(tmp_path, monkeypatch, capsys):
    nb = make_notebook(tmp_path / "probe_a.ipynb", "pass", params='MODEL = "x"\nOUT_DIR = "."\nN = 10')
    with pytest.raises(ValueError, match="no model"):
        report.run_reports([], [nb])
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        report.run_reports(["clipkit-tiny"], [tmp_path / "missing.ipynb"])
    with pytest.raises(ValueError, match="'NN' is not set in the parameters cell.*known: N"):
        report.run_reports(["clipkit-tiny"], [nb], parameters={"NN": 1})
    with pytest.raises(ValueError, match="MODEL is set by clipkit report"):
        report.run_reports(["clipkit-tiny"], [nb], parameters={"MODEL": "other"})
    with pytest.raises(ValueError, match="kept for experiments"):
        report.run_reports(["experiments"], [nb])
    monkeypatch.chdir(tmp_path)  # no notebooks/ folder here
    with pytest.raises(FileNotFoundError, match=r"notebooks/probe_\*\.ipynb"):
        report.run_reports(["clipkit-tiny"])
    assert report.main(["--model", "clipkit-tiny", "--notebook", "nope.ipynb"]) == 2
    assert "notebook not found" in capsys.readouterr().err


def test_record_metrics_json(tmp_path):
    path = report.record_metrics("probe_x", {"accuracy": np.float32(0.25), "n": np.int64(8),
                                             "ci_low": float("nan"), "per_class": np.array([1.0, np.inf])},
                                 tmp_path / "out")
    assert path == tmp_path / "out" / "probe_x.metrics.json"
    rec = json.loads(path.read_text())
    assert rec["name"] == "probe_x"
    assert rec["metrics"] == {"accuracy": 0.25, "n": 8, "ci_low": None, "per_class": [1.0, None]}
    assert list((tmp_path / "out").iterdir()) == [path]  # no temp file left behind
    with pytest.raises(ValueError, match="plain file name"):
        report.record_metrics("../evil", {}, tmp_path)


def test_build_index_from_disk_with_missing_and_extra_keys(tmp_path):
    """Metrics without run.json, without accuracy or CI, and hostile names: shown, and escaped."""
    a, b = tmp_path / "model_a", tmp_path / "model_b"
    report.record_metrics("probe_ret", {"recall@5": 0.7, "note": "text", "flag": True}, a)
    report.record_metrics("probe_count", {"accuracy": 0.3}, a)
    report.record_metrics("probe_count", {"accuracy": None, "mean_rank": 2}, b)
    (b / "run.json").write_text(json.dumps({"model": "<script>x</script>", "notebooks": {}}))
    (tmp_path / "not_a_model").mkdir()
    page = report.build_index(tmp_path).read_text()
    assert "recall@5=0.700" in page and "note=" not in page and "flag=" not in page
    assert "0.300" in page and "[" not in page.split("0.300")[1][:5]  # no CI to show
    assert "mean_rank=2" in page
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    data = json.loads((tmp_path / "summary.json").read_text())
    assert [m["slug"] for m in data["models"]] == ["model_a", "model_b"]
    assert data["probes"] == ["probe_count", "probe_ret"]


def test_index_compares_models_on_the_same_items(tmp_path):
    import pandas as pd
    from clipkit.report.runner import build_index
    for name, correct in [("a_model", [1] * 40 + [0] * 10), ("b_model", [0] * 30 + [1] * 20)]:
        d = tmp_path / name
        d.mkdir()
        # the same 50 items (item_id: the engine's image + captions hash) for both models
        pd.DataFrame({"item": range(50), "item_id": [f"id{i}" for i in range(50)],
                      "correct": [bool(c) for c in correct], "chance": 0.5}).to_csv(d / "counting.csv", index=False)
    build_index(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    (c,) = summary["paired"]
    assert (c["baseline"], c["model"], c["n"]) == ("a_model", "b_model", 50)
    assert (c["acc_baseline"], c["acc_model"]) == (0.8, 0.4)
    assert (c["only_a"], c["only_b"]) == (30, 10) and c["p_value"] < 0.01
    assert "Paired comparisons" in (tmp_path / "index.html").read_text()


def test_key_figures_reach_the_index_and_must_exist(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from clipkit import viz
    out = tmp_path / "model_a"
    with pytest.raises(FileNotFoundError, match="key figure 'bars' was not saved"):
        report.record_metrics("probe_x", {"accuracy": 0.5}, out, figures=["bars"])
    plt.plot([0, 1], [1, 0])
    png, svg = viz.save_figure("bars", out)
    plt.close("all")
    assert png.read_bytes()[:4] == b"\x89PNG" and "<svg" in svg.read_text()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["bars.png", "bars.svg"]   # no temp files
    with pytest.raises(ValueError, match="plain file name"):
        viz.save_figure("../x", out)
    report.record_metrics("probe_x", {"accuracy": 0.5}, out, figures=["bars"])
    page = report.build_index(tmp_path).read_text()
    assert '<h2>Key figures</h2>' in page and '<img src="model_a/figures/bars.png"' in page
    assert 'href="model_a/figures/bars.svg"' in page


def test_promote_merges_figure_folders(tmp_path):
    """Two notebooks of one model each write figures/: the second must not delete the first's."""
    model_dir = tmp_path / "m"
    for stem, fig in (("a", "one"), ("b", "two")):
        staging = model_dir / f"_staging_{stem}"
        (staging / "figures").mkdir(parents=True)
        (staging / "figures" / f"{fig}.png").write_bytes(b"png")
        (staging / f"{stem}.metrics.json").write_text("{}")
        assert report._promote(staging, model_dir) == [f"{stem}.metrics.json"]
    assert sorted(p.name for p in (model_dir / "figures").iterdir()) == ["one.png", "two.png"]


def test_default_notebooks_are_probes_and_analyses(monkeypatch):
    from pathlib import Path
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    stems = [p.stem for p in report._find_notebooks(None, report.DEFAULT_NOTEBOOKS)]
    assert stems[:5] == ["probe_binding", "probe_counting", "probe_finegrained", "probe_shift", "probe_spatial"]
    # the analyses follow the probes (new analysis or experiment notebooks join their group by name)
    assert stems[5:] and all(s.startswith("analysis_") for s in stems[5:]) and stems[5:] == sorted(stems[5:])
    assert {"analysis_atlas", "analysis_prompts", "analysis_robustness", "analysis_zeroshot_vs_linear"} <= set(stems)
    exps = [p.stem for p in report._find_notebooks(None, report.EXPERIMENT_NOTEBOOKS)]
    assert {"experiment_augmentation", "experiment_batch_size", "experiment_hard_negatives"} <= set(exps)
    assert all(e.startswith("experiment_") for e in exps) and not set(exps) & set(stems)


def test_main_needs_a_model_or_experiments(capsys, monkeypatch):
    from pathlib import Path
    with pytest.raises(SystemExit) as e:
        report.main([])
    assert e.value.code == 2 and "--model SPEC" in capsys.readouterr().err
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    # a parameter no notebook declares is refused before anything runs, also with both sets
    assert report.main(["--model", "clipkit-nano", "--experiments", "--param", "NOPE=1"]) == 2
    assert "'NOPE' is not set in the parameters cell" in capsys.readouterr().err
    assert report.main(["--experiments", "--param", "MODLE=1"]) == 2
    assert "'MODLE' is not set" in capsys.readouterr().err


@pytest.mark.slow  # starts a Jupyter kernel
def test_report_logs_have_no_tcp_warning_but_real_warnings_show(tmp_path, capfd):
    """The kernel runs over IPC, so ipykernel's per-notebook "Kernel is running over TCP without
    encryption" line is gone; a notebook's own warning still reaches its output, and what the kernel
    process writes to its stderr (where ipykernel logs) still reaches ours."""
    nb = make_notebook(tmp_path / "probe_warn.ipynb",
                       'import warnings\nwarnings.warn("real warning")',
                       'import os\nos.write(2, b"kernel stderr still shows\\n")')
    summary = report.run_reports(["clipkit-tiny"], [nb], out_root=tmp_path / "r", html=False)
    assert not summary.failed, summary.failed
    log = capfd.readouterr()
    assert "without encryption" not in log.err + log.out
    assert "kernel stderr still shows" in log.err
    assert "UserWarning: real warning" in outputs(summary.ok[0]["path"])


def test_paired_test_aligns_on_item_identity_with_known_counts():
    """Hand-made tables of the same five items (item_id) listed in different orders."""
    import pandas as pd
    from clipkit.analysis.compare import ItemMismatch, paired_test
    a = pd.DataFrame({"item_id": ["p", "q", "r", "s", "t"], "correct": [True, True, True, False, True]})
    b = pd.DataFrame({"item_id": ["t", "s", "r", "q", "p"], "correct": [False, False, True, False, True]})
    t = paired_test(a, b)
    # by id: p T/T, q T/F, r T/T, s F/F, t T/F -> only a right on q and t, only b right on none
    assert (t["n"], t["only_a"], t["only_b"], t["acc_a"], t["acc_b"]) == (5, 2, 0, 0.8, 0.4)
    assert t["p_value"] == pytest.approx(0.5) and t["diff"] == pytest.approx(0.4)   # exact: 2 * 0.5**2
    with pytest.raises(ItemMismatch, match="counting"):                     # other items: refused, naming the probe
        paired_test(a, b.assign(item_id=["t", "s", "r", "q", "x"]), probe="counting")
    with pytest.raises(ValueError, match="neither 'credit' nor 'correct'"):
        paired_test(a.rename(columns={"correct": "hit"}), b)


def test_run_metadata_lists_extra_versions_and_read_json_tolerates_bad_files(tmp_path):
    from clipkit.core.files import atomic_write_text, read_json
    from clipkit.core.records import versions
    v = versions(extra=("papermill",))
    assert v["papermill"] and {"python", "clipkit", "torch", "git_revision"} <= set(v)
    assert "papermill" not in versions()
    assert read_json(tmp_path / "missing.json") is None
    assert read_json(atomic_write_text(tmp_path / "cut.json", '{"a": ')) is None
    assert read_json(atomic_write_text(tmp_path / "ok.json", '{"a": 1}')) == {"a": 1}


def test_benchmark_notebooks_join_the_default_set_only_with_clipkit_data(tmp_path, monkeypatch, capsys):
    """`make report` runs notebooks/benchmark_*.ipynb per model when $CLIPKIT_DATA is set, and says in one
    line that it skipped them when it is not (the notebooks are not executed here: _run_all is stubbed)."""
    from pathlib import Path
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    seen = []
    monkeypatch.setattr(report, "_run_all", lambda folders, nbs, *a, **k: seen.append([p.stem for p in nbs])
                        or report.ReportSummary())
    monkeypatch.setattr(report, "build_index", lambda out_root: None)
    monkeypatch.delenv("CLIPKIT_DATA", raising=False)
    report.run_reports(["clipkit-nano"], out_root=tmp_path)
    assert "benchmark_failures" not in seen[-1] and "probe_counting" in seen[-1]
    assert "benchmark_failures skipped: CLIPKIT_DATA is not set" in capsys.readouterr().err
    monkeypatch.setenv("CLIPKIT_DATA", str(tmp_path))
    report.run_reports(["clipkit-nano"], out_root=tmp_path)
    assert "benchmark_failures" in seen[-1] and "skipped" not in capsys.readouterr().err
    report.run_reports(["clipkit-nano"], notebooks=["notebooks/probe_counting.ipynb"], out_root=tmp_path)
    assert seen[-1] == ["probe_counting"]                                  # an explicit list is taken as given
