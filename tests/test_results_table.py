"""reports/results.csv and the compact models x probes matrix on a synthetic summary.json (12 models x every
benchmark + the probe and analysis notebooks): the tidy rows, the HTML structure, and (where Chromium exists)
no sideways scrolling at 1280 px. No network."""
import csv
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from clipkit.probes.benchmarks import BENCHMARKS
from clipkit.report.results_table import (
    COLUMNS,
    anchor,
    matrix_columns,
    matrix_html,
    metric_rows,
    model_sections_html,
    results_rows,
    short_name,
    verdict_class,
    write_results_csv,
)

NOTEBOOKS = ["probe_binding", "probe_counting", "probe_finegrained", "probe_shift", "probe_spatial", "analysis_atlas",
             "analysis_prompts", "analysis_robustness", "analysis_zeroshot_vs_linear", "probe_counting_area",
             "probe_spatial_swap", "probe_jsonl_example", "analysis_layers"]
MODELS = [f"clipkit-tiny:seed{i}" for i in range(10)] + ["hf-hub:laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
                                                        "/a/very/long/path/to/some/checkpoint/folder/run-2026-11-30"]


def _probe(acc, lo, hi, chance=0.5, n=200, extra=None):
    return {"accuracy": acc, "ci_low": lo, "ci_high": hi, "chance": chance, "n": n, **(extra or {})}


def synthetic_summary() -> dict:
    """The index's summary.json shape: 12 models, 13 notebooks, and benchmark_failures with one record per
    benchmark (20 columns); model 3 failed probe_shift, model 4 never ran probe_spatial."""
    models = []
    for i, m in enumerate(MODELS):
        slug, probes = m.strip("/").replace("/", "_").replace(":", "_"), {}
        for j, stem in enumerate(NOTEBOOKS):
            if i == 4 and stem == "probe_spatial":
                continue
            acc = (0.3 + 0.05 * ((i + j) % 12))
            probes[stem] = {"status": "ok", "seconds": 1.0, "finished": None, "error": None, "failed_notebook": None,
                            "html": f"{slug}/{stem}.html", "ipynb": None, "figures": [],
                            "metrics": {stem: _probe(acc, acc - 0.04, acc + 0.04, extra={"acc[count=3]": acc})}}
        probes["probe_shift"].update(status="failed", error="RuntimeError: boom\ntraceback", metrics={},
                                     failed_notebook="x/probe_shift.failed.ipynb") if i == 3 else None
        probes["benchmark_failures"] = {
            "status": "ok", "seconds": 9.0, "finished": None, "error": None, "failed_notebook": None, "html": None,
            "ipynb": f"{slug}/benchmark_failures.ipynb", "figures": [],
            "metrics": {b: _probe(0.5 + 0.02 * k, 0.45 + 0.02 * k, 0.56 + 0.02 * k, n=7511,
                                  extra={"accuracy[subset=swap_obj]": 0.61, "accuracy[subset=swap_obj]_ci_low": 0.55,
                                         "accuracy[subset=swap_obj]_ci_high": 0.67,
                                         "accuracy[subset=swap_obj]_chance": 0.5, "accuracy[subset=swap_obj]_n": 245})
                        for k, b in enumerate(BENCHMARKS)}}
        models.append({"model": m, "slug": slug, "updated": None, "git": None,
                       "versions": {}, "probes": probes})
    return {"generated": "now", "probes": [*NOTEBOOKS, "benchmark_failures"], "models": models, "paired": [],
            "experiments": None}


# --- tidy rows ----------------------------------------------------------------------------------------------------
def test_metric_rows_follow_the_flat_convention():
    rows = metric_rows({"metric": "group_score", "accuracy": 0.2, "ci_low": 0.1, "ci_high": 0.3, "chance": 1 / 6,
                        "n": 400, "verdict": "at chance", "text_score": 0.3, "text_score_ci_low": 0.25,
                        "text_score_ci_high": 0.35, "text_score_chance": 0.25, "acc[count=3]": 0.4,
                        "accuracy[subset=swap_obj]": 0.6, "accuracy[subset=swap_obj]_ci_low": 0.5,
                        "accuracy[subset=swap_obj]_n": 245, "caption_only_accuracy": 0.5,
                        "caption_only_ci_low": 0.45, "mae": 1.5, "mae_chance": 2.7, "features_from_cache": True,
                        "nan_metric": float("nan")})
    got = {(r["subset"], r["metric"]): r for r in rows}
    assert set(got) == {("all", "group_score"), ("all", "text_score"), ("count=3", "accuracy"),
                        ("swap_obj", "accuracy"), ("all", "caption_only_accuracy"), ("all", "mae")}
    assert got[("all", "group_score")] == {"subset": "all", "metric": "group_score", "value": 0.2, "ci_low": 0.1,
                                           "ci_high": 0.3, "chance": 1 / 6, "n": 400}
    assert got[("all", "text_score")]["ci_low"] == 0.25 and got[("all", "text_score")]["n"] is None
    assert got[("swap_obj", "accuracy")]["ci_low"] == 0.5 and got[("swap_obj", "accuracy")]["n"] == 245
    assert got[("all", "caption_only_accuracy")]["ci_low"] == 0.45
    assert got[("all", "mae")]["chance"] == 2.7 and got[("count=3", "accuracy")]["ci_low"] is None


def test_results_csv_has_every_record(tmp_path):
    summary = synthetic_summary()
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    path = write_results_csv(tmp_path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert path == tmp_path / "results.csv" and list(rows[0]) == COLUMNS
    assert len(rows) == len(results_rows(summary))
    # per model: 12 or 13 notebooks x 2 rows (headline + count=3) and 7 benchmarks x 2 rows (headline + swap_obj)
    per_model = {m: sum(r["model"] == m for r in rows) for m in MODELS}
    assert per_model[MODELS[0]] == 13 * 2 + 7 * 2 and per_model[MODELS[3]] == 12 * 2 + 7 * 2
    assert per_model[MODELS[4]] == 12 * 2 + 7 * 2
    sc = [r for r in rows if r["model"] == MODELS[1] and r["probe"] == "sugarcrepe" and r["subset"] == "swap_obj"]
    assert len(sc) == 1 and (sc[0]["value"], sc[0]["ci_low"], sc[0]["n"]) == ("0.61", "0.55", "245")
    with pytest.raises(FileNotFoundError, match="build the index first"):
        write_results_csv(tmp_path / "empty")


# --- the matrix ---------------------------------------------------------------------------------------------------
class _Table(HTMLParser):
    """Collects the matrix: header cells, and per body row its th and tds (class, title, link)."""

    def __init__(self):
        super().__init__()
        self.tables, self.head, self.rows, self._in, self._cell = 0, [], [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("class") == "mx":
            self.tables += 1
        elif tag in ("thead", "tbody"):
            self._in = tag
        elif tag == "tr" and self._in == "tbody":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell = {"tag": tag, "class": a.get("class"), "title": a.get("title"), "href": None, "text": ""}
            (self.head if self._in == "thead" else self.rows[-1]).append(self._cell)
        elif tag == "a" and self._cell is not None:
            self._cell["href"] = a.get("href")

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def test_matrix_structure_colours_and_links():
    summary = synthetic_summary()
    page = _Table()
    page.feed(matrix_html(summary))
    cols = matrix_columns(summary)
    assert page.tables == 1 and len(cols) == 20 and len(page.head) == 21 and len(page.rows) == 12
    assert cols[-7:] == [("benchmark_failures", b) for b in BENCHMARKS]
    assert [h["text"] for h in page.head[1:3]] == [short_name(NOTEBOOKS[0]), short_name(NOTEBOOKS[1])]
    assert short_name("analysis_zeroshot_vs_linear") == "zeroshot_vs_l…"   # abbreviated; full name on hover
    assert page.head[4]["title"] == "probe_shift"
    for i, (row, r) in enumerate(zip(page.rows, summary["models"])):
        assert row[0]["tag"] == "th" and row[0]["href"] == f"#{anchor(r['slug'])}" and len(row) == 21
        for cell, (stem, name) in zip(row[1:], cols):
            p = r["probes"].get(stem)
            if p is None:
                assert cell["class"] == "none"
            elif p["status"] == "failed":
                assert cell["class"] == "failed" and "FAILED: RuntimeError: boom" in cell["title"]
                assert cell["href"] == "x/probe_shift.failed.ipynb"
            else:
                m = p["metrics"][name]
                assert cell["class"] == verdict_class(m) and cell["text"] == str(round(100 * m["accuracy"]))
                assert cell["href"] == (p["html"] or p["ipynb"])
                assert f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]" in cell["title"] and f"n={m['n']}" in cell["title"]
    classes = {c["class"] for row in page.rows for c in row[1:]}
    assert {"above", "at", "below", "failed", "none"} <= classes


def test_verdict_class():
    assert verdict_class({"verdict": "above chance"}) == "above"
    assert verdict_class({"verdict": "below chance; text bias"}) == "below"
    assert verdict_class({"ci_low": 0.4, "ci_high": 0.6, "chance": 0.5}) == "at"
    assert verdict_class({"ci_low": 0.51, "ci_high": 0.6, "chance": 0.5}) == "above"
    assert verdict_class({"accuracy": 0.5}) == "nochance"


def _chromium():
    exe = os.environ.get("CLIPKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.skip("Chromium not found (/usr/bin/chromium; .ci/install_browser.sh installs it)")
    pytest.importorskip("playwright.sync_api")
    return exe


def test_matrix_fits_1280px_without_sideways_scrolling(tmp_path):
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    from clipkit.report.index import _CSS  # the index page's own style, so the check sees its margins and fonts
    page_html = (f"<!DOCTYPE html><html><head><meta charset=utf-8><style>{_CSS}</style></head><body>"
                 f"<h1>clipkit reports</h1>{matrix_html(synthetic_summary())}</body></html>")
    (tmp_path / "index.html").write_text(page_html)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((tmp_path / "index.html").as_uri())
        widths = page.evaluate("""() => { const t = document.querySelector('table.mx');
            return {doc: document.documentElement.scrollWidth, view: window.innerWidth,
                    table: t.scrollWidth, box: t.parentElement.clientWidth,
                    cell: Math.min(...[...t.querySelectorAll('tbody td')].map(c => c.clientWidth))}; }""")
        shot = Path(os.environ.get("CLIPKIT_ARTIFACTS", tmp_path)) / "results_matrix.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert widths["doc"] <= widths["view"] == 1280, widths          # no horizontal scrollbar
    assert widths["table"] <= widths["box"], widths
    assert widths["cell"] >= 24, widths                              # "100" still fits in a cell


def test_model_sections_are_the_targets_of_the_row_links():
    summary = synthetic_summary()
    page = model_sections_html(summary, lambda stem, p: f"<i>{stem}:{p['status']}</i>")
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == [anchor(r["slug"]) for r in summary["models"]] and len(set(ids)) == 12
    rows_of = page.split("<section ")[1:]
    assert rows_of[0].count("<tr>") == 14 and rows_of[4].count("<tr>") == 13     # model 4 never ran probe_spatial
    assert '<td class="failed"><i>probe_shift:failed</i>' in rows_of[3]
    assert model_sections_html({"models": []}, str) == ""


def test_index_page_with_matrix_and_sections_fits_1280px(tmp_path):
    """The index page itself (matrix + per-model sections): no sideways scrolling at 12 models x 20 probes,
    where the former wide models x probes table alone needed about 3,100 px."""
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    from clipkit.report import index
    s = synthetic_summary()
    page = index._render(s["models"], s["probes"])
    assert "<table class=mx>" in page and page.count("<section id=") == len(s["models"])
    (tmp_path / "index.html").write_text(page)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--headless", "--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.goto((tmp_path / "index.html").as_uri())
        width = tab.evaluate("() => document.documentElement.scrollWidth")
        browser.close()
    assert width <= 1280, width
