"""`clipkit probe` flags that join the layers: --diagnose (issue 13) through the CLI, on clipkit-nano."""
import json
import shutil

from clipkit.cli import probe_main


def test_diagnose_adds_the_three_numbers_to_summary_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    assert probe_main(["--probe", "counting", "--probe", "finegrained_shade", "--model", "clipkit-nano",
                       "--n", "40", "--diagnose", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "counting.json").read_text())["metrics"]
    for side in ("image_side", "text_side", "cross_modal"):
        assert set(metrics[side]) >= {"accuracy", "ci_low", "ci_high", "chance", "n"}
        assert metrics[side]["ci_low"] <= metrics[side]["accuracy"] <= metrics[side]["ci_high"]
    # the cross-modal number is the probe's own accuracy, and the pattern printed is the one saved
    assert metrics["cross_modal"]["accuracy"] == metrics["accuracy"] and metrics["cross_modal"]["n"] == 40
    assert f"diagnosis: {metrics['diagnosis']}" in text
    # a classification probe is left alone, and says so
    assert "image_side" not in json.loads((out / "finegrained_shade.json").read_text())["metrics"]
    assert "not a caption-choice probe (no diagnosis)" in text


def test_without_diagnose_the_summary_has_no_diagnosis(tmp_path):
    assert probe_main(["--probe", "counting", "--model", "clipkit-nano", "--n", "12", "--out", str(tmp_path)]) == 0
    assert "image_side" not in json.loads((tmp_path / "counting.json").read_text())["metrics"]


def test_suite_runs_the_benchmarks_present_and_lists_the_absent(tmp_path, capsys, monkeypatch):
    """`clipkit probe --suite failures --model A --model B` on published-format fixtures of two
    benchmarks under $CLIPKIT_DATA: both run for both models, the other five are listed as absent."""
    import bench_fixtures as bf
    from clipkit.probes.benchmarks import BENCHMARKS
    data = tmp_path / "data"
    bf.write_all(data)
    for b in BENCHMARKS:
        if b not in ("sugarcrepe", "winoground"):
            shutil.rmtree(data / b)
    monkeypatch.setenv("CLIPKIT_DATA", str(data))
    out = tmp_path / "out"
    assert probe_main(["--suite", "failures", "--model", "clipkit-nano", "--model", "clipkit-tiny:random",
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    absent = [line for line in text.splitlines() if line.startswith("absent:")]
    assert sorted(line.split(":")[1].strip() for line in absent) == sorted(set(BENCHMARKS) - {"sugarcrepe",
                                                                                             "winoground"})
    records = sorted(p.name for p in out.glob("*_image_caption_selection.json"))
    assert len(records) == 4 and all(r.startswith(("sugarcrepe_", "winoground_")) for r in records)
    assert f"results: {out}" in text


def test_suite_refuses_probe_and_option(capsys):
    import pytest
    with pytest.raises(SystemExit):
        probe_main(["--suite", "failures", "--probe", "counting"])
    assert "drop --probe / --option" in capsys.readouterr().err
