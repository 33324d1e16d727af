"""Scan checks, the pipeline on a tiny released model, store-wide prediction and its resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fmrilm.pretrained import Pipeline, ScanRefused, check_scan, load_pipeline
from fmrilm.pretrained.release import sample_scan

EXPECTS = {
    "n_rois": 200,
    "window_length": 160,
    "stride": 80,
    "tr_range": [1.5, 3.0],
    "scale_range": [0.5, 2.0],
    "atlas": "cc200",
}


def _scan(t=200, r=200, seed=0):
    return np.random.default_rng(seed).standard_normal((t, r))


# ------------------------------------------------------------------ refusals and warnings
def test_wrong_roi_count_is_refused_with_a_hint_when_transposed():
    with pytest.raises(ScanRefused, match="has 116 ROI columns; the model reads 200"):
        check_scan(_scan(r=116), EXPECTS, name="a.tsv")
    with pytest.raises(ScanRefused, match="--transpose"):
        check_scan(_scan(t=200, r=180), EXPECTS)


def test_non_finite_values_are_refused_with_their_place():
    x = _scan()
    x[7, 3] = np.nan
    x[9, 4] = np.inf
    with pytest.raises(ScanRefused, match=r"2 non-finite values \(first at time point 7, ROI 3\)"):
        check_scan(x, EXPECTS)


def test_too_short_and_mostly_flat_scans_are_refused():
    with pytest.raises(ScanRefused, match="159 time points, fewer than one 160-point window"):
        check_scan(_scan(t=159), EXPECTS)
    x = _scan()
    x[:, :41] = 1.0
    with pytest.raises(ScanRefused, match="41 of 200 ROIs are constant"):
        check_scan(x, EXPECTS)
    with pytest.raises(ScanRefused, match="2-D"):
        check_scan(np.zeros(500), EXPECTS)


def test_a_model_that_reads_short_scans_takes_them_with_a_warning():
    expects = {**EXPECTS, "min_window_length": 60, "patch_length": 20}
    ok = check_scan(_scan(t=78), expects, tr=2.0)
    assert ok.n_windows == 1
    assert ok.warnings == [
        "78 time points, shorter than one 160-point window: answered from one 60-point "
        "window, with less data than most training scans"
    ]
    with pytest.raises(ScanRefused, match="59 time points, fewer than one window \\(60 points"):
        check_scan(_scan(t=59), expects)


def test_readable_but_unusual_scans_get_warnings():
    x = _scan()
    x[:, :3] = 0.0
    ok = check_scan(x, EXPECTS, tr=2.0)
    assert ok.n_windows == 2  # windows at 0 and at the end (40)
    assert ok.warnings == ["3 constant ROIs are read as zeros"]
    assert any("TR not given" in w for w in check_scan(_scan(), EXPECTS).warnings)
    assert any("TR 0.72 s is outside" in w for w in check_scan(_scan(), EXPECTS, tr=0.72).warnings)
    assert any("signal scale" in w for w in check_scan(_scan() * 1000, EXPECTS, tr=2).warnings)
    assert check_scan(_scan(), EXPECTS, tr=2.0).warnings == []


# ------------------------------------------------------------------ the pipeline
def test_release_records_what_scans_must_look_like(tiny_release):
    rel = json.loads((tiny_release["folder"] / "release.json").read_text())
    store = tiny_release["store"]
    train = store.split_indices("site_stratified")["train"]
    trs = store.table.reset_index(drop=True).loc[train, "tr"]
    assert rel["expects"]["tr_range"] == [float(trs.min()), float(trs.max())]
    assert rel["expects"]["n_rois"] == 200 and rel["expects"]["n_training_scans"] == len(train)
    card = (tiny_release["folder"] / "README.md").read_text()
    assert "Not a diagnostic device" in card and "CC BY-NC-SA 3.0" in card
    assert "| age MAE (years) | 5.000 [4.000, 6.000] | 4.500 |" in card
    assert (tiny_release["folder"] / "fmri_tokenizer" / "README.md").exists()


def test_pipeline_reproduces_the_release_answers(tiny_release):
    pipe = load_pipeline(tiny_release["folder"])
    rel = tiny_release["release"]
    got = pipe.predict(tiny_release["example"])
    assert got["n_windows"] >= 1 and got["warnings"][0].startswith("TR not given")
    for task, want in rel["example"]["answers"].items():
        a = got["answers"][task]
        if "value" in want:
            assert a["value"] == pytest.approx(want["value"], abs=1e-6)
        else:
            assert a["answer"] == want["answer"]
            for k, p in want["probabilities"].items():
                assert a["probabilities"][k] == pytest.approx(p, abs=1e-6)
    sid = next(iter(rel["sample_test_answers"]))
    again = pipe.predict(sample_scan(sid), ["sex"])["answers"]
    assert list(again) == ["sex"]
    assert again["sex"]["answer"] == rel["sample_test_answers"][sid]["sex"]["answer"]


def test_pipeline_rejects_unknown_questions_and_folders(tiny_release, tmp_path):
    pipe = Pipeline(tiny_release["folder"])
    with pytest.raises(ValueError, match="unknown question 'handedness'"):
        pipe.predict(tiny_release["example"], ["handedness"])
    with pytest.raises(FileNotFoundError, match="no fmrilm model"):
        load_pipeline(tmp_path)


# ------------------------------------------------------------------ whole stores
def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_store_prediction_resumes_after_a_kill(tiny_release, tmp_path, monkeypatch):
    pipe = Pipeline(tiny_release["folder"])
    store = tiny_release["store"]
    full = tmp_path / "full.csv"
    res = pipe.predict_store(store, full, progress=False)
    rows = _rows(full)
    assert res["written"] == len(rows) == len(store.table)
    # the OHSU scan (78 points) is shorter than a window: a row that says why, not a gap
    short = [r for r in rows if r["refused"]]
    assert short and all("fewer than one 160-point window" in r["refused"] for r in short)
    assert all(r["age"] and r["sex"] and r["diagnosis"] for r in rows if not r["refused"])

    # a run killed after 5 scans, in the middle of writing the 6th line
    part = tmp_path / "part.csv"
    calls = {"n": 0}
    real = Pipeline.predict

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Pipeline, "predict", dying)
    with pytest.raises(KeyboardInterrupt):
        pipe.predict_store(store, part, progress=False)
    monkeypatch.setattr(Pipeline, "predict", real)
    with part.open("a") as f:
        f.write("5,NYU_half_writ")
    assert len(_rows(part)) == 6  # five complete rows plus the torn one, before resuming
    res = pipe.predict_store(store, part, progress=False)
    assert res["skipped_existing"] == 5 and res["written"] == len(store.table) - 5
    assert _rows(part) == rows  # same rows, same order, none twice, none lost


def test_store_shards_cover_every_row_once(tiny_release, tmp_path):
    pipe = Pipeline(tiny_release["folder"])
    store = tiny_release["store"]
    got = []
    for k in range(3):
        pipe.predict_store(
            store, tmp_path / f"s{k}.csv", shard=(k, 3), split="test", progress=False
        )
        got += [int(r["row"]) for r in _rows(tmp_path / f"s{k}.csv")]
    assert sorted(got) == sorted(store.split_indices("site_stratified")["test"])
    with pytest.raises(ValueError, match="shard must be k/n"):
        pipe.predict_store(store, tmp_path / "x.csv", shard=(3, 3))


def test_a_csv_of_another_model_is_not_continued(tiny_release, tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("scan_id,age\nx,3\n")
    with pytest.raises(ValueError, match="other columns"):
        Pipeline(tiny_release["folder"]).predict_store(tiny_release["store"], out, progress=False)


def test_release_ships_float16_weights_and_refuses_a_folder_without_them(tiny_release, tmp_path):
    import torch
    from safetensors.torch import load_file

    from fmrilm.pretrained.release import _halve

    assert tiny_release["release"]["weights_dtype"] == "float16"
    shipped = load_file(str(tiny_release["folder"] / "trainable.safetensors"))
    assert shipped and all(v.dtype == torch.float16 for v in shipped.values())
    with pytest.raises(FileNotFoundError, match="float16 shipping needs the LoRA weights file"):
        _halve(tmp_path / "trainable.safetensors")
