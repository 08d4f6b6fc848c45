"""A new user's first hour (issue 16): bad arguments fail in one line before torch or a model is loaded,
resume needs only --out, files follow the umask, and messages say what to type instead."""
import json
import os
import stat
import subprocess
import sys

import pytest

from clipkit import cli


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the arguments must be refused before one is loaded."""
    import clipkit.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded although the arguments are bad")
    monkeypatch.setattr(clipkit.models, "load_model", refuse)
    monkeypatch.setattr(clipkit.models, "create_model", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --- 1. validate before computing -------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expect", [
    (["probe", "--nn", "3"], "unrecognized arguments: --nn 3 (did you mean '--n'?)"),
    (["train", "--lrr", "0.1"], "unrecognized arguments: --lrr 0.1 (did you mean '--lr'?)"),
    (["train", "--loss", "clp"], "loss must be one of ['clip', 'negclip', 'siglip'], got 'clp' (did you mean 'clip'?)"),
    (["eval", "--n", "0"], "--n must be >= 1, got 0"),
    (["prbe"], "unknown command 'prbe' (did you mean 'probe'?)"),
])
def test_usage_errors_are_one_line_and_load_nothing(argv, expect, no_model, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert expect in _one_line_error(capsys)


@pytest.mark.parametrize("cmd", ["probe", "train", "eval", "report"])
def test_an_out_that_is_a_file_is_refused_first_in_one_line(tmp_path, cmd, no_model, capsys):
    bad = tmp_path / "results.txt"
    bad.write_text("not a folder")
    extra = ["--model", "clipkit-nano"] if cmd in ("probe", "eval", "report") else ["--preset", "nano"]
    assert cli.main([cmd, *extra, "--out", str(bad)]) == 1
    assert _one_line_error(capsys) == f"clipkit {cmd}: error: --out {bad}: is a file, not a folder; give a folder path"
    assert cli.main([cmd, *extra, "--out", str(bad / "sub")]) == 1
    assert f"--out {bad / 'sub'}: cannot be created, {bad} is a file" in _one_line_error(capsys)


def test_an_unwritable_out_is_refused_before_any_work(tmp_path, monkeypatch, no_model, capsys):
    import clipkit.core.files as files

    def denied(*a, dir=None, **k):   # (as root a read-only folder is still writable: make the write fail)
        if str(dir) == str(tmp_path / "ro"):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)
    real = files.tempfile.mkstemp
    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    assert cli.main(["probe", "--model", "clipkit-nano", "--out", str(tmp_path / "ro")]) == 1
    assert _one_line_error(capsys) == (f"clipkit probe: error: --out {tmp_path / 'ro'}: not writable (Permission "
                                       f"denied); choose a folder you can write to")


@pytest.mark.parametrize("argv, expect", [
    (["probe", "--model", "clipkit-tiny:synthetc"], "unknown tag 'synthetc' for the clipkit preset clipkit-tiny "
                                                     "(did you mean 'synthetic'?); known tags: ['random', 'synthetic']"),
    (["probe", "--model", "clipkit-nano", "--model", "clipkit-tiyn"], "did you mean ['clipkit-tiny'"),
    (["probe", "--probe", "countng"], "did you mean 'counting'?"),
    (["eval", "--model", "ViT-B-32:opnai"], "unknown pretrained tag 'opnai' for ViT-B-32 (did you mean 'openai'?)"),
])
def test_bad_specs_are_found_before_any_model_loads(argv, expect, no_model, capsys):
    assert cli.main(argv) == 1
    assert expect in _one_line_error(capsys)


@pytest.mark.parametrize("argv", [["probe", "--help"], ["train", "--help"], ["eval", "--help"], ["report", "--help"],
                                  ["probe", "--nn", "3"], ["train", "--out", "/dev/null/x"]])
def test_help_and_usage_errors_do_not_import_torch(argv):
    code = ("import sys\nfrom clipkit.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'open_clip', 'pandas') if m in sys.modules)\n"
            "assert not heavy, heavy\n" % argv)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


HEAVY = ("torch", "torchvision", "open_clip", "sklearn")   # what a spec or model-spec error must not import


@pytest.mark.parametrize("argv, expect", [
    (["probe", "--probe", "cuonting"], "unknown probe spec 'cuonting' (did you mean 'counting'?); known: ["),
    (["probe", "--option", "nope=1"], "counting.yaml: unknown option(s) ['nope'] for kind 'counting'; "
                                      "known: ['counts', 'size_modes', 'image_size', 'template']"),
    (["probe", "--option", "cuonts=[1,2]"], "unknown option(s) ['cuonts'] for kind 'counting' (did you mean 'counts'?)"),
    (["probe", "--model", "clipkit-tiny:synthetc"], "unknown tag 'synthetc' for the clipkit preset clipkit-tiny "
                                                     "(did you mean 'synthetic'?)"),
    (["probe", "--model", "clipkit-nano", "--model", "clipkit-tiyn"], "did you mean ['clipkit-tiny'"),
    (["eval", "--model", "nope"], "unknown model architecture 'nope' Presets: ['clipkit-nano'"),
    (["eval", "--model", "ViT-B-33:openai"], "unknown model architecture 'ViT-B-33'; did you mean ['ViT-B-32:openai'"),
    (["train", "--model", "clipkit-tiyn"], "unknown model architecture 'clipkit-tiyn'; did you mean ['clipkit-tiny'"),
])
def test_spec_and_model_spec_errors_are_one_line_before_torch(argv, expect, tmp_path):
    """`python -m clipkit ...` as a user runs it: exit 1, one line on stderr naming the problem, and
    -X importtime shows that torch, torchvision, open_clip and sklearn were never imported."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "clipkit", *argv], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env={**os.environ, "CLIPKIT_HOME": str(tmp_path / "home")})
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    err = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert r.returncode == 1, r.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith(f"clipkit {argv[0]}: error: ") and expect in err[0], err
    assert "clipkit.probes" in imported or argv[0] != "probe"      # the registry was read (it is torch-free)
    assert not sorted(set(HEAVY) & imported), sorted(set(HEAVY) & imported)


def test_the_probe_registry_imports_no_torch():
    """`import clipkit.probes`: the protocol, the spec reader and every kind's options dataclass, registered;
    reading every kind's specs imports nothing heavy either (the shift and fine-grained family checks read
    the torch-free clipkit.data.families)."""
    code = ("import sys\nimport clipkit.probes as p\nassert len(p.KINDS) == 14, sorted(p.KINDS)\n"
            "for s in ('counting', 'spatial_swap', 'binding', 'example_jsonl', 'sugarcrepe', 'aro', 'winoground',\n"
            "          'shift', 'finegrained_polygon', 'finegrained_shade'):\n"
            "    p.load_spec(s)\n"
            "heavy = sorted(m for m in %r if m in sys.modules)\nassert not heavy, heavy\n" % (HEAVY,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_cli_default_model_is_the_library_default():
    from clipkit.models import DEFAULT_MODEL
    assert cli.DEFAULT_MODEL == DEFAULT_MODEL


# --- 2. resume from the run's own config.json ---------------------------------------------------------------
def _saved_run(tmp_path, **kw):
    from clipkit.train.config import TrainConfig
    cfg = TrainConfig.from_argv(["--preset", "nano", "--out", str(tmp_path), "--lr", "0.002", *kw.get("argv", [])])
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    return cfg


def test_resume_auto_alone_takes_the_runs_config(tmp_path):
    from clipkit.train.config import TrainConfig
    saved = _saved_run(tmp_path)
    cfg = TrainConfig.from_argv(["--out", str(tmp_path), "--resume", "auto"])
    assert cfg.model == "clipkit-nano" and cfg.lr == 0.002 and cfg.batch_size == saved.batch_size
    assert cfg.resume == "auto" and cfg.out == str(tmp_path)
    longer = TrainConfig.from_argv(["--out", str(tmp_path), "--resume", "auto", "--steps", "60", "--workers", "2"])
    assert longer.steps == 60 and longer.workers == 2 and longer.lr == 0.002   # resumable fields may change


def test_resume_with_a_changed_training_field_names_field_old_and_new(tmp_path, capsys):
    from clipkit.train.config import TrainConfig
    _saved_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        TrainConfig.from_argv(["--out", str(tmp_path), "--resume", "auto", "--lr", "0.01", "--batch-size", "4"])
    assert e.value.code == 2
    err = _one_line_error(capsys)
    assert "(batch_size: 16 -> 4, lr: 0.002 -> 0.01)" in err and "give a new --out" in err


def test_resume_auto_in_a_new_folder_starts_fresh_from_the_flags(tmp_path):
    from clipkit.train.config import TrainConfig
    cfg = TrainConfig.from_argv(["--preset", "nano", "--out", str(tmp_path / "new"), "--resume", "auto"])
    assert cfg.model == "clipkit-nano" and cfg.lr == 1e-3


def test_interrupt_message_is_one_line_with_the_command(tmp_path):
    import signal

    from clipkit.train.loop import interrupted_message
    msg = interrupted_message(signal.SIGTERM, 7, 40, tmp_path / "my run", 1)
    assert msg == (f"interrupted by SIGTERM at step 7/40; checkpoint: {tmp_path / 'my run'}/checkpoints/step_0000007; "
                   f"continue with: clipkit train --out '{tmp_path / 'my run'}' --resume auto")
    assert "\n" not in msg


# --- 3. every file clipkit writes follows the umask --------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_every_kind_of_file_follows_the_umask(tmp_path, umask, mode):
    import pandas as pd
    import torch

    from clipkit.core.records import write_record
    from clipkit.evaluate.cache import FeatureCache
    from clipkit.report.index import build_index
    from clipkit.report.runner import record_metrics
    from clipkit.train.config import TrainConfig
    from clipkit.train.loop import train
    old = os.umask(umask)
    try:
        run = train(TrainConfig(model="clipkit-nano", out=str(tmp_path / "run"), steps=2, batch_size=4, warmup=1,
                                log_every=1, save_every=1, tensorboard=True, progress=False, workers=0))
        cache = FeatureCache(tmp_path / "cache")
        key = cache.key(model="m", dataset="d")
        cache.save(key, {"x": torch.zeros(2)}, name="feat")
        probe = write_record(tmp_path / "probe", "counting", {"metrics": {"accuracy": 0.5}},
                             pd.DataFrame({"item": [0], "correct": [True]}))
        record_metrics("counting", {"accuracy": 0.5}, tmp_path / "reports" / "m")
        index = build_index(tmp_path / "reports")
    finally:
        os.umask(old)
    files = {"weights": run / "model.safetensors", "clipkit.json": run / "clipkit.json",
             "config.json": run / "config.json", "log.jsonl": run / "log.jsonl",
             "checkpoint weights": run / "checkpoints" / "step_0000001" / "model.safetensors",
             "checkpoint state": run / "checkpoints" / "step_0000001" / "state.pt",
             "tensorboard": next((run / "tensorboard").glob("events.out.tfevents.*")),
             "cache tensors": cache.paths(key, "feat")[1], "cache meta": cache.paths(key, "feat")[0],
             "probe json": probe, "probe csv": probe.with_suffix(".csv"),
             "report metrics": tmp_path / "reports" / "m" / "counting.metrics.json", "report index": index}
    modes = {k: oct(stat.S_IMODE(p.stat().st_mode)) for k, p in files.items()}
    assert modes == {k: oct(mode) for k in files}


# --- 4. notebook parameters: did-you-mean, and the error is the whole (one-line) traceback -------------------
def test_notebook_parameter_typo_names_the_closest_parameter():
    from clipkit.report.params import ParameterError, check
    with pytest.raises(ParameterError) as e:
        check({"MODLE": "x", "N": 3}, {"MODEL": str, "N": int})
    msg = str(e.value)
    assert "unknown notebook parameter(s) ['MODLE'] (did you mean 'MODLE' -> 'MODEL'?)" in msg and "\n" not in msg
    assert e.value._render_traceback_() == [f"ParameterError: {msg}"]
    assert isinstance(e.value, ValueError)


@pytest.mark.slow
def test_papermill_shows_the_parameter_error_first(tmp_path):
    import nbformat
    import papermill as pm
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("MODEL = 'clipkit-nano'\nN = 3", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from clipkit.report.params import check\n"
                                          "P = check(globals(), {'MODEL': str, 'N': int})")]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(tmp_path / "nb.ipynb"), str(tmp_path / "out.ipynb"), parameters={"MODLE": "x"},
                            kernel_name="python3", language="python", progress_bar=False, cwd=str(tmp_path))
    assert e.value.ename == "ParameterError"
    assert len(e.value.traceback) == 1 and "did you mean 'MODLE' -> 'MODEL'?" in e.value.traceback[0]
