"""benchmarks.lm_checkpoints: step checkpoints measured on validation, one step chosen per task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.lm_checkpoints import choose_steps, selection_members, step_checkpoints

KINDS = {"age": "regression", "sex": "classification"}


def _curve(*points):
    return [{"step": s, "metrics": {"age": a, "sex": x}} for s, a, x in points]


def test_each_task_takes_its_best_step_the_later_one_on_a_tie():
    curve = _curve((100, 4.0, 0.70), (200, 3.5, 0.74), (300, 3.2, 0.74), (400, 3.3, 0.60))
    assert choose_steps(curve, KINDS) == {"age": 300, "sex": 300}
    curve = _curve((100, 4.0, 0.80), (200, 3.5, None), (300, 3.2, 0.74))
    assert choose_steps(curve, KINDS) == {"age": 300, "sex": 100}  # MAE lower, AUC higher
    with pytest.raises(SystemExit, match="no checkpoint has a validation roc_auc for sex"):
        choose_steps(_curve((100, 4.0, None)), KINDS)


def test_selection_members_name_each_task_once():
    folders = {100: Path("r/steps/a"), 300: Path("r/steps/b")}
    assert selection_members({"age": 300, "sex": 300}, folders) == ["r/steps/b"]
    assert selection_members({"age": 300, "sex": 100, "diagnosis": 100}, folders) == [
        "sex,diagnosis=r/steps/a",
        "age=r/steps/b",
    ]


def test_step_checkpoints_filters_by_step_and_says_how_to_keep_them(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("step0000050.ckpt", "step0000100.ckpt", "step0000200.ckpt", "last.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert list(step_checkpoints(tmp_path, 100)) == [100, 200]
    assert list(step_checkpoints(tmp_path, 50)) == [50, 100, 200]
    with pytest.raises(SystemExit, match="checkpoints_kept=-1"):
        step_checkpoints(tmp_path, 300)


def test_a_run_is_measured_step_by_step_and_its_selection_evaluates(
    sample_store, tmp_path, monkeypatch
):
    import benchmarks.common
    import benchmarks.lm_checkpoints

    from fmrilm.lm.ensemble import load_models
    from fmrilm.lm.training import train
    from tests.lm.conftest import make_tiny_fmri_tokenizer, make_tiny_lm

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "benchmarks" / "results")
    monkeypatch.setattr(benchmarks.common, "DOCS", tmp_path / "benchmarks.md")
    run = tmp_path / "run"
    cfg = {
        "base_model": str(make_tiny_lm(tmp_path / "lm")),
        "fmri_tokenizer": str(make_tiny_fmri_tokenizer(tmp_path / "tok")),
        "store": str(sample_store.path),
        "out_dir": str(run),
        "targets": ["age", "sex"],
        "model": {"lora_r": 2, "compact_rois": 8},
        "train": {
            "max_steps": 4,
            "batch_size": 2,
            "checkpoint_every_n_steps": 2,
            "checkpoints_kept": -1,
            "warmup_steps": 1,
        },
    }
    train(cfg)
    argv = ["--run", str(run), "--store", str(sample_store.path), "--every", "2"]
    assert benchmarks.lm_checkpoints.main([*argv, "--result-name", "ck"]) == 0
    rec = json.loads((tmp_path / "benchmarks" / "results" / "ck.json").read_text())["runs"][
        "site_stratified"
    ]
    assert [p["step"] for p in rec["curve"]] == [2, 4]
    assert all(p["parse_failures"] == 0 and p["val_loss"] > 0 for p in rec["curve"])
    assert set(rec["baselines"]["age"]) == {"fc", "site", "trivial"}
    assert (tmp_path / rec["figure"]).stat().st_size > 0
    assert (run / "steps" / "step0000002" / "trainable.safetensors").exists()
    assert json.loads((run / "checkpoint_selection.json").read_text())["members"] == rec["members"]
    model = load_models(rec["members"])  # the selection answers every task
    assert sorted(t.name for t in model.tasks) == ["age", "sex"]
    assert "chosen steps age" in (tmp_path / "benchmarks.md").read_text()
