"""End to end on a CPU in seconds: train a few steps, run the probe notebooks through papermill,
check the metrics they record."""
import json
from pathlib import Path

import pytest

from clipkit.train.config import TrainConfig
from clipkit.report.runner import run_reports
from clipkit.train.loop import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_then_report_notebooks(tmp_path, monkeypatch):
    cfg = TrainConfig(model="clipkit-nano", out=str(tmp_path / "run"), steps=6, batch_size=16,
                      warmup=2, log_every=3, save_every=0, workers=0)
    out = train(cfg)
    assert (out / "model.safetensors").exists() and (out / "clipkit.json").exists()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6] and all(r["loss"] > 0 for r in log)

    monkeypatch.chdir(REPO)   # notebooks resolve probes/ from the repo root
    nbs = sorted((REPO / "notebooks").glob("probe_*.ipynb"))
    summary = run_reports([str(out)], notebooks=nbs, out_root=tmp_path / "reports", parameters={"N": 12},
                          timeout_per_cell=300)
    assert not summary.failed, summary.failed
    model_dir, = [d for d in (tmp_path / "reports").iterdir() if d.is_dir()]
    # the known chance of each notebook's headline: 6 counts, 4 relations, 2 bindings, 6 polygons, 6 shapes
    chances = {"probe_counting": 1 / 6, "probe_spatial": 0.25, "probe_binding": 0.5, "probe_finegrained": 1 / 6,
               "probe_shift": 1 / 6}
    assert {nb.stem for nb in nbs} == set(chances)
    for nb in nbs:   # every probe notebook records accuracy with its CI, chance level and n
        m = json.loads((model_dir / f"{nb.stem}.metrics.json").read_text())["metrics"]
        assert m["n"] >= 12
        assert m["chance"] == pytest.approx(chances[nb.stem])
        assert 0 <= m["ci_low"] <= m["accuracy"] <= m["ci_high"] <= 1
        if nb.stem in ("probe_counting", "probe_spatial", "probe_binding"):   # caption choice: the caption prior
            assert 0 <= m["caption_only_accuracy"] <= 1 and m["caption_only_n"] == m["n"]
        html = (model_dir / f"{nb.stem}.html").read_text()
        assert len(html) > 10_000 and "What this design cannot show" in html   # the finding, in words, at the end
    # every figure shown is exported beside the HTML as PNG and SVG; key figures reach the index
    pngs = sorted(p.stem for p in (model_dir / "figures").glob("*.png"))
    assert pngs == sorted(p.stem for p in (model_dir / "figures").glob("*.svg"))
    assert {"counting_by_count", "counting_confusion", "spatial_by_relation", "binding_by_position",
            "finegrained_overall", "shift_conditions"} <= set(pngs)
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "probe_counting" in index and "probe_spatial" in index
    assert f'<img src="{model_dir.name}/figures/counting_by_count.png"' in index
