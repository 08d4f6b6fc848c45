"""`clipkit probe` flags that join the layers: --diagnose (issue 13) through the CLI, on clipkit-nano."""
import json

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
