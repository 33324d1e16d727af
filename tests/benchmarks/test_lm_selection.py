"""benchmarks.lm_selection records an evaluation of the validation split given as a file."""

from __future__ import annotations

import json

import pytest


def _evaluation(split: str) -> dict:
    def entry(metric, value):
        return {"metrics": {metric: {"value": value, "ci_low": value, "ci_high": value}}}

    def target(metric, lm, corr, tangent):
        return {
            "n_eval_subjects": 12,
            "results": {
                "lm": entry(metric, lm),
                "connectivity_correlation": entry(metric, corr),
                "connectivity_tangent": entry(metric, tangent),
                "site": entry(metric, 0.5 if metric == "roc_auc" else 4.0),
                "trivial": entry(metric, 0.5 if metric == "roc_auc" else 5.0),
            },
        }

    return {
        "scheme": "site_stratified",
        "split": split,
        "model": {"ensemble": [{"source": "runs/a/model"}, {"source": "runs/b/model"}]},
        "parse_failures": 0,
        "targets": {
            "age": target("mae", 3.2, 3.8, 3.7),
            "sex": target("roc_auc", 0.71, 0.80, 0.86),
            "diagnosis": target("roc_auc", 0.73, 0.73, 0.70),
        },
    }


def test_an_evaluated_validation_file_is_recorded(tmp_path, monkeypatch):
    import benchmarks.common
    import benchmarks.lm_selection

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(benchmarks.common, "DOCS", tmp_path / "benchmarks.md")
    path = tmp_path / "val.json"
    path.write_text(json.dumps(_evaluation("val")))
    argv = ["--evaluated", f"ensemble={path}", "--result-name", "sel"]
    assert benchmarks.lm_selection.main(argv) == 0
    run = json.loads((tmp_path / "results" / "sel.json").read_text())["runs"]["ensemble"]
    assert run["val_metrics"]["lm"] == {"age_mae": 3.2, "sex_auc": 0.71, "diagnosis_auc": 0.73}
    # fc: the better connectivity baseline per metric
    assert run["val_metrics"]["fc"] == {"age_mae": 3.7, "sex_auc": 0.86, "diagnosis_auc": 0.73}
    assert run["model"] == ["runs/a/model", "runs/b/model"] and run["val_loss"] is None
    assert run["fc_baselines"] == ["connectivity_correlation", "connectivity_tangent"]
    assert "loss n/a, age MAE 3.20" in (tmp_path / "benchmarks.md").read_text()
    path.write_text(json.dumps(_evaluation("test")))  # the test split is never a selection record
    with pytest.raises(SystemExit, match="val split"):
        benchmarks.lm_selection.main(argv)
    with pytest.raises(SystemExit, match="does not exist"):
        benchmarks.lm_selection.main(["--evaluated", f"x={tmp_path / 'missing.json'}"])
    with pytest.raises(SystemExit, match="--model or --evaluated"):
        benchmarks.lm_selection.main(["--result-name", "sel"])


def test_validation_windows_read_short_scans_as_the_model_does(sample_store):
    """The validation loss covers the scans the model answers, short ones included."""
    from types import SimpleNamespace

    from benchmarks.lm_selection import validation_windows

    from fmrilm.lm.tasks import build_tasks
    from tests.lm.conftest import FakeFMRITokenizer

    tok = FakeFMRITokenizer(n_rois=200, patch_length=20)
    tok.config.window_length = 160
    table = sample_store.table.reset_index(drop=True)
    train_rows = sample_store.split_indices("site_stratified")["train"]
    tasks = build_tasks(table, train_rows, ["age", "sex"])

    def model(min_window_length):
        cfg = SimpleNamespace(
            scheme="site_stratified", window_length=160, stride=80,
            min_window_length=min_window_length,
        )  # fmt: skip
        return SimpleNamespace(config=cfg, fmri_tokenizer=tok, tasks=tasks)

    full, labels = validation_windows(model(None), sample_store)
    with_short, _ = validation_windows(model(60), sample_store)
    assert int(full["n_short_windows"]) == 0 and int(with_short["n_short_windows"]) > 0
    assert len(with_short["codes"]) > len(full["codes"])
    assert labels.shape == (len(table), 2)
