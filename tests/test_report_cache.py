"""Tests for the report's execution cache (clipkit.report.cache): tiny notebooks in tmp_path that
count their executions by appending to a file. No model is loaded or trained; nothing is timed."""
import json

import pytest

from clipkit.report import cache
from clipkit.report import runner as report
from test_report import make_notebook

# each execution appends the notebook's name to the file named by $CLIPKIT_TEST_RUNS (an environment
# variable, not a path in the notebook: a path it names is data the key would see change), then
# records a metric
COUNT = ('import os\n'
         'with open(os.environ["CLIPKIT_TEST_RUNS"], "a") as f:\n'
         '    f.write(NAME + "\\n")\n'
         'from clipkit.report.runner import record_metrics\n'
         'record_metrics(NAME, {"accuracy": 0.5, "n": N}, OUT_DIR)')


def counting_notebook(tmp_path, name, extra="pass"):
    return make_notebook(tmp_path / f"{name}.ipynb", COUNT, extra,
                         params=f'MODEL = "x"\nOUT_DIR = "."\nN = 10\nNAME = "{name}"')


@pytest.fixture
def code(monkeypatch, tmp_path):
    """clipkit's code fingerprint, held fixed (the tree may be edited while the tests run); set
    code.value to simulate an edit of clipkit's code."""
    class Code:
        value = "code-v1"
    monkeypatch.setattr(cache, "code_fingerprint", lambda package=None: Code.value)
    monkeypatch.setenv("CLIPKIT_TEST_RUNS", str(tmp_path / "runs.txt"))
    return Code


def executed(tmp_path) -> list[str]:
    """Names of the notebooks executed since the last call (and forget them)."""
    runs = tmp_path / "runs.txt"
    names = runs.read_text().split() if runs.exists() else []
    runs.unlink(missing_ok=True)
    return sorted(names)


@pytest.mark.slow  # starts Jupyter kernels
def test_only_changed_notebooks_run(tmp_path, code):
    a, b = counting_notebook(tmp_path, "probe_a"), counting_notebook(tmp_path, "probe_b")
    out, model = tmp_path / "reports", "clipkit-nano:random"
    first = report.run_reports([model], [a, b], out_root=out, jobs=2)
    assert not first.failed and executed(tmp_path) == ["probe_a", "probe_b"]

    # nothing changed: nothing runs, the outputs and their date stay, the index says cached
    d = out / "clipkit-nano_random"
    before = json.loads((d / "run.json").read_text())["notebooks"]
    again = report.run_reports([model], [a, b], out_root=out)
    assert executed(tmp_path) == [] and len(again.cached) == 2 and not again.ok
    after = json.loads((d / "run.json").read_text())["notebooks"]
    assert {s: e["status"] for s, e in after.items()} == {"probe_a": "cached", "probe_b": "cached"}
    assert [after[s]["finished"] for s in after] == [before[s]["finished"] for s in after]
    assert "<b>cached</b>" in (out / "index.html").read_text()

    # a code cell of one notebook edited: only that one runs
    counting_notebook(tmp_path, "probe_b", extra="x = 1")
    assert report.run_reports([model], [a, b], out_root=out).ok[0]["notebook"] == str(b)
    assert executed(tmp_path) == ["probe_b"]

    # a parameter changed: the notebooks that declare it rerun
    report.run_reports([model], [a, b], out_root=out, parameters={"N": 11})
    assert executed(tmp_path) == ["probe_a", "probe_b"]
    report.run_reports([model], [a, b], out_root=out, parameters={"N": 11})
    assert executed(tmp_path) == []

    # clipkit's own code changed: everything reruns
    code.value = "code-v2"
    report.run_reports([model], [a, b], out_root=out, parameters={"N": 11})
    assert executed(tmp_path) == ["probe_a", "probe_b"]

    # --force runs everything
    assert report.main(["--model", model, "--notebook", str(a), "--notebook", str(b), "--out", str(out),
                        "--param", "N=11", "--force", "--jobs", "1"]) == 0
    assert executed(tmp_path) == ["probe_a", "probe_b"]

    # an output deleted by hand: that notebook runs again
    (d / "probe_a.metrics.json").unlink()
    report.run_reports([model], [a, b], out_root=out, parameters={"N": 11})
    assert executed(tmp_path) == ["probe_a"]


@pytest.mark.slow  # starts Jupyter kernels
def test_a_failed_notebook_is_never_cached(tmp_path, code):
    flag = tmp_path / "fail"
    nb = counting_notebook(tmp_path, "probe_flaky", extra=f"import os\nif os.path.exists({str(flag)!r}):\n"
                                                          "    raise RuntimeError('flaky')")
    out, model = tmp_path / "reports", "clipkit-nano:random"
    assert not report.run_reports([model], [nb], out_root=out).failed
    assert executed(tmp_path) == ["probe_flaky"]
    flag.write_text("")   # the inputs key does not see this file: only the last run's status stops the cache
    (tmp_path / "probe_flaky.ipynb").write_text((tmp_path / "probe_flaky.ipynb").read_text().replace("pass", "y = 2"))
    assert report.run_reports([model], [nb], out_root=out).failed
    assert executed(tmp_path) == ["probe_flaky"]
    # same inputs as the failed run: it runs again (and fails again), never served from the cache
    s = report.run_reports([model], [nb], out_root=out)
    assert executed(tmp_path) == ["probe_flaky"] and s.failed and not s.cached
    flag.unlink()
    s = report.run_reports([model], [nb], out_root=out)
    assert executed(tmp_path) == ["probe_flaky"] and s.ok
    assert report.run_reports([model], [nb], out_root=out).cached


@pytest.mark.slow  # starts Jupyter kernels
def test_a_notebook_writing_where_a_parameter_points_is_cached(tmp_path, code):
    """Like an experiment's RUN_ROOT: what the notebook wrote there is what the next run finds."""
    nb = make_notebook(tmp_path / "experiment_w.ipynb", COUNT,
                       "import pathlib\npathlib.Path(RUN_ROOT).mkdir(exist_ok=True)\n"
                       "(pathlib.Path(RUN_ROOT) / 'model.bin').write_text('trained')",
                       params=f'OUT_DIR = "."\nN = 1\nNAME = "experiment_w"\nRUN_ROOT = {str(tmp_path / "runs")!r}')
    out = tmp_path / "reports"
    assert report.run_experiments([nb], out_root=out).ok and executed(tmp_path) == ["experiment_w"]
    assert report.run_experiments([nb], out_root=out).cached and executed(tmp_path) == []
    (tmp_path / "runs" / "model.bin").unlink()   # its trained model deleted: it runs again
    assert report.run_experiments([nb], out_root=out).ok and executed(tmp_path) == ["experiment_w"]


@pytest.mark.slow  # starts Jupyter kernels
def test_concurrent_failure_keeps_the_others(tmp_path, code):
    """Two notebooks at once, one fails: the other's outputs are promoted, both are in run.json."""
    good = counting_notebook(tmp_path, "probe_good")
    bad = counting_notebook(tmp_path, "probe_bad", extra="raise ValueError('boom')")
    s = report.run_reports(["clipkit-nano:random"], [good, bad], out_root=tmp_path / "r", jobs=2, html=False)
    d = tmp_path / "r" / "clipkit-nano_random"
    assert [f["notebook"] for f in s.ok] == [str(good)] and [f["notebook"] for f in s.failed] == [str(bad)]
    assert (d / "probe_good.metrics.json").is_file() and (d / "probe_bad.failed.ipynb").is_file()
    assert not (d / "probe_bad.metrics.json").exists() and not list(d.glob("_staging_*"))
    entries = json.loads((d / "run.json").read_text())["notebooks"]
    assert {k: e["status"] for k, e in entries.items()} == {"probe_good": "ok", "probe_bad": "failed"}
    assert entries["probe_bad"]["inputs"] is None and entries["probe_good"]["inputs"]["hash"]


def test_key_parts_follow_their_inputs(tmp_path, code):
    """Each part of the key moves with what it stands for, and only with it."""
    nb = counting_notebook(tmp_path, "probe_k")
    opts = {"kernel": "python3", "html": True, "hide_code": False}
    k = cache.inputs_key(nb, {"MODEL": "clipkit-nano:random", "N": 10}, opts)
    assert cache.changed(k, cache.inputs_key(nb, {"MODEL": "clipkit-nano:random", "N": 10}, opts)) == []
    assert cache.changed(None, k) == ["never run"]
    assert cache.changed(k, cache.inputs_key(nb, {"MODEL": "clipkit-nano:random", "N": 11}, opts)) == ["parameters"]
    assert "models" in cache.changed(k, cache.inputs_key(nb, {"MODEL": "clipkit-tiny:random", "N": 10}, opts))
    assert cache.changed(k, cache.inputs_key(nb, {"MODEL": "clipkit-nano:random", "N": 10},
                                             {**opts, "hide_code": True})) == ["options"]
    # markdown is not source: editing prose reruns nothing
    book = json.loads(nb.read_text())
    book["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "Prose."})
    nb.write_text(json.dumps(book))
    assert cache.changed(k, cache.inputs_key(nb, {"MODEL": "clipkit-nano:random", "N": 10}, opts)) == []
    # a data file named by a parameter: its size / mtime are part of the key
    data = tmp_path / "items.jsonl"
    data.write_text("{}\n")
    k1 = cache.inputs_key(nb, {"MODEL": "clipkit-nano:random", "DATA": str(data)}, opts)
    data.write_text('{"a": 1}\n')
    assert cache.changed(k1, cache.inputs_key(nb, {"MODEL": "clipkit-nano:random", "DATA": str(data)}, opts)) == ["data"]


def test_model_stamp_hashes_a_checkpoints_weights(tmp_path, monkeypatch):
    """A clipkit checkpoint folder (and `<preset>:synthetic`) is keyed by its weights' bytes."""
    ckpt = tmp_path / "models" / "clipkit-nano-synthetic"
    ckpt.mkdir(parents=True)
    (ckpt / "clipkit.json").write_text('{"arch": "clipkit-nano"}')
    (ckpt / "model.safetensors").write_bytes(b"weights one")
    monkeypatch.setenv("CLIPKIT_HOME", str(tmp_path))
    one = cache.model_stamp(str(ckpt))
    assert one == cache.model_stamp("clipkit-nano:synthetic") and one.startswith("weights:")
    (ckpt / "model.safetensors").write_bytes(b"weights two")
    assert cache.model_stamp(str(ckpt)) != one
    assert cache.model_stamp("clipkit-nano:random") == cache.model_stamp("clipkit-nano")
    assert cache.model_stamp("clipkit-nano:random") != cache.model_stamp("clipkit-tiny:random")
    assert cache.model_stamp("ViT-B-32:openai") == "ViT-B-32:openai"   # a pretrained tag names fixed weights


def test_model_stamp_reads_the_one_grammar_without_torch(tmp_path, monkeypatch):
    """The cache keys a model through clipkit.core.modelspec, the grammar clipkit.models loads by: every
    preset is keyed by its config, and keying imports neither torch nor open_clip."""
    import subprocess
    import sys
    from clipkit.core import modelspec
    monkeypatch.setenv("CLIPKIT_HOME", str(tmp_path))
    for preset in modelspec.PRESETS:
        assert cache.model_stamp(preset) == "random:" + cache.file_hash(modelspec.CONFIG_DIR / f"{preset}.json")
    code = ("import sys\nfrom clipkit.report import cache\ncache.model_stamp('clipkit-tiny:synthetic')\n"
            "cache.model_stamp('ViT-B-32:openai')\nassert not {'torch', 'open_clip'} & set(sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_code_fingerprint_sees_every_code_file(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "specs").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "specs" / "s.yaml").write_text("n: 1\n")
    (pkg / "notes.txt").write_text("not code")
    fp = cache.code_fingerprint(pkg)
    (pkg / "notes.txt").write_text("still not code")
    assert cache.code_fingerprint(pkg) == fp
    (pkg / "specs" / "s.yaml").write_text("n: 2\n")
    assert cache.code_fingerprint(pkg) != fp


def test_jobs_must_be_positive(tmp_path, capsys):
    nb = counting_notebook(tmp_path, "probe_j")
    with pytest.raises(ValueError, match="jobs must be a whole number >= 1"):
        report.run_reports(["clipkit-nano"], [nb], out_root=tmp_path / "r", jobs=0)
    with pytest.raises(SystemExit):
        report.main(["--model", "clipkit-nano", "--notebook", str(nb), "--jobs", "0"])
    assert "--jobs must be at least 1" in capsys.readouterr().err
