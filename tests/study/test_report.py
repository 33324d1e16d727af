"""The study's figures and self-contained HTML report."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmrilm.study.report import (
    plot_predicted_vs_true,
    plot_prediction_distributions,
    results_table_html,
    write_html_report,
)

CHROMIUM = Path("/usr/bin/chromium")


def _arms():
    rng = np.random.default_rng(0)
    y = rng.uniform(8, 40, 30)
    return {
        "fmri_encoder": {"y_true": y, "y_pred": y + rng.normal(0, 3, 30)},
        "efficientnet_imagenet:heatmap": {
            "y_true": y,
            "y_pred": np.full(30, 17.0) + rng.normal(0, 0.5, 30),
        },
        "baseline_median": {"y_true": y, "y_pred": np.full(30, float(np.median(y)))},
        "vlm:llava:heatmap": None,  # not run: no predictions
    }


def _study():
    return {
        "task": "age",
        "task_kind": "regression",
        "split": {"scheme": "site_stratified", "n_test_subjects": 30},
        "commit": "abc1234",
        "date": "2026-11-25T00:00:00Z",
        "machine": "test machine",
        "arms": {
            "fmri_encoder": {
                "status": "ok",
                "age_mae": 2.4,
                "age_mae_ci95": [1.9, 3.0],
                "age_r": 0.9,
                "age_r2": 0.8,
                "predicted_age_std_ratio": 0.95,
                "parse_failures": 0,
                "trainable_params": 460800,
                "train_seconds": 1200.0,
                "peak_rss_mb": 2100.0,
            },
            "baseline_median": {
                "status": "ok",
                "age_mae": 7.9,
                "age_mae_ci95": [6.8, 9.1],
                "age_r": None,
                "age_r2": -0.01,
                "predicted_age_std_ratio": 0.0,
                "parse_failures": 0,
                "trainable_params": 1,
                "train_seconds": 0.001,
                "peak_rss_mb": 300.0,
            },
            "vlm:llava:heatmap": {
                "status": "not run",
                "reason": "weights of 'llava' are not available offline <script>",
            },
        },
    }


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.imgs, self.external, self._row, self._cell = [], [], [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("script", "link") or (tag == "img" and not a.get("src", "").startswith("data:")):
            self.external.append(tag)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None


def test_figures_are_pngs_with_one_panel_per_arm_with_predictions(tmp_path):
    a = plot_predicted_vs_true(_arms(), tmp_path / "pvt.png")
    b = plot_prediction_distributions(_arms(), tmp_path / "dist.png")
    for path in (a, b):
        img = Image.open(path)
        assert img.format == "PNG" and img.size == (3 * 320, 400)  # 3 panels in a row
    with pytest.raises(ValueError, match="no arm"):
        plot_predicted_vs_true({"x": None}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="predictions"):
        plot_predicted_vs_true({"x": {"y_true": [1, 2], "y_pred": [1]}}, tmp_path / "bad.png")


def test_table_lists_every_arm_with_ci_and_reason():
    table = results_table_html(_study()["arms"])
    assert table.count("<tr") == 4  # header + 3 arms
    assert "[1.90, 3.00]" in table and "460,800" in table
    assert "&lt;script&gt;" in table and "<script>" not in table  # escaped


def test_html_report_is_self_contained_and_parses(tmp_path):
    figs = {
        "Predicted against true age": plot_predicted_vs_true(_arms(), tmp_path / "a.png"),
        "Distributions": plot_prediction_distributions(_arms(), tmp_path / "b.png"),
    }
    path = write_html_report(_study(), figs, tmp_path / "report.html")
    text = path.read_text()
    parser = _Collector()
    parser.feed(text)
    assert not parser.external  # no script, stylesheet link or external image
    assert len(parser.imgs) == 2
    for src in parser.imgs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    header, *rows = parser.rows
    assert header[:3] == ["arm", "status", "MAE"]
    by_arm = {r[0]: r for r in rows}
    assert set(by_arm) == {"fmri_encoder", "baseline_median", "vlm:llava:heatmap"}
    assert by_arm["fmri_encoder"][2] == "2.40" and by_arm["vlm:llava:heatmap"][1] == "not run"
    assert "Arms not run" in text and "abc1234" in text
    # the report moves: nothing refers to the PNG files beside it
    (tmp_path / "a.png").unlink()
    assert "a.png" not in text


def test_report_opens_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("no headless browser at /usr/bin/chromium (the HTML is parsed instead)")
    figs = {"pvt": plot_predicted_vs_true(_arms(), tmp_path / "a.png")}
    path = write_html_report(_study(), figs, tmp_path / "report.html")
    out = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'id="results"' in out.stdout and "fmri_encoder" in out.stdout
