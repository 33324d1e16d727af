"""``fmrilm predict`` on scans and stores, with a tiny released model; every refusal case."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fmrilm.cli import main
from fmrilm.pretrained.release import sample_scan

from .conftest import write_scan


def _predict(capsys, *argv):
    rc = main(["predict", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_scan_answers_every_question(tiny_release, capsys):
    rc, out, _ = _predict(capsys, tiny_release["example"], "--model", tiny_release["folder"])
    assert rc == 0
    for task in ("age", "sex", "diagnosis"):
        assert f"  {task}" in out
    assert "90% interval" in out and "p = " in out and "not a diagnostic device" in out
    assert "warning: TR not given" in out


def test_json_answer_matches_the_release_record(tiny_release, capsys):
    rc, out, _ = _predict(
        capsys, tiny_release["example"], "--model", tiny_release["folder"], "--json", "--tr", "2"
    )
    assert rc == 0
    res = json.loads(out)
    want = tiny_release["release"]["example"]["answers"]
    assert res["warnings"] == []
    assert res["answers"]["age"]["value"] == pytest.approx(want["age"]["value"], abs=1e-6)
    assert res["answers"]["sex"]["answer"] == want["sex"]["answer"]


def test_question_option_limits_the_answers(tiny_release, capsys):
    rc, out, _ = _predict(
        capsys,
        tiny_release["example"],
        "--model",
        tiny_release["folder"],
        "--question",
        "sex",
        "--json",
    )
    assert rc == 0 and list(json.loads(out)["answers"]) == ["sex"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: x[:, :116], "has 116 ROI columns; the model reads 200"),
        (lambda x: np.where(np.arange(x.shape[0])[:, None] == 3, np.nan, x), "non-finite"),
        (lambda x: x[:100], "100 time points, fewer than one 160-point window"),
    ],
    ids=["roi_count", "nan", "too_short"],
)
def test_refusals_exit_2_with_a_reason(tiny_release, capsys, tmp_path, make, message):
    x = make(sample_scan(str(tiny_release["release"]["example"]["scan_id"])))
    path = write_scan(tmp_path / "scan.tsv", x)
    rc, out, err = _predict(capsys, path, "--model", tiny_release["folder"])
    assert rc == 2 and out == ""
    assert message in err and "scan.tsv" in err


def test_unreadable_and_missing_files_are_refused(tiny_release, capsys, tmp_path):
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    rc, _, err = _predict(capsys, bad, "--model", tiny_release["folder"])
    assert rc == 2 and "broken.npy" in err
    rc, _, err = _predict(capsys, tmp_path / "nope.1D", "--model", tiny_release["folder"])
    assert rc == 2 and "does not exist" in err
    rc, _, err = _predict(capsys, "--model", tiny_release["folder"])
    assert rc == 2 and "--example" in err


def test_store_with_two_workers_equals_one(tiny_release, capsys, tmp_path):
    store = tiny_release["store"].path
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    common = ["--model", tiny_release["folder"], "--split", "test", "--no-progress"]
    assert _predict(capsys, store, "--out", one, *common)[0] == 0
    assert _predict(capsys, store, "--out", two, "--workers", "2", *common)[0] == 0
    with one.open() as a, two.open() as b:
        assert list(csv.DictReader(a)) == list(csv.DictReader(b))
    assert not list(tmp_path.glob("two.csv.shard-*"))
    rc, _, err = _predict(capsys, store, "--model", tiny_release["folder"])
    assert rc == 2 and "--out" in err


def test_nifti_without_atlas_and_scan_with_example_are_refused(tiny_release, capsys, tmp_path):
    nifti = tmp_path / "sub-01_bold.nii.gz"
    nifti.write_bytes(b"")
    rc, _, err = _predict(capsys, nifti, "--model", tiny_release["folder"])
    assert rc == 2 and "a NIfTI scan needs --atlas" in err
    rc, _, err = _predict(capsys, tiny_release["example"], "--example")
    assert rc == 2 and "either SCAN or --example, not both" in err
