"""BrainLM-format Arrow datasets: a tiny synthetic one written with `datasets` in tmp_path."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest

from fmrilm.data.brainlm import iter_brainlm_scans, open_brainlm_datasets, orient_recording
from fmrilm.data.phenotypes import PhenotypeMapping
from fmrilm.data.records import IngestError, IngestReport

R = 6  # parcels (BrainLM: 424)
REC = "Voxelwise_RobustScaler_Normalized_Recording"
MAPPING = PhenotypeMapping(
    "eid", age="Age.At.MHQ", sex="Gender", sex_map={"0": "female", "1": "male"}
)


def recordings(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(R, t)).astype(np.float32) for t in lengths]  # parcels x time


def make_dataset(recs, **columns):
    n = len(recs)
    data = {
        REC: [r.tolist() for r in recs],
        "Filename": [f"{1000 + i}_20227_2_0.dat" for i in range(n)],
        "eid": [1000 + i for i in range(n)],
        "Age.At.MHQ": [60.5 + i for i in range(n)],
        "Gender": [i % 2 for i in range(n)],
    }
    data.update(columns)
    features = datasets.Features(
        {
            REC: datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
            "Filename": datasets.Value("string"),
            "eid": datasets.Value("int64"),
            "Age.At.MHQ": datasets.Value("float64"),
            "Gender": datasets.Value("int64"),
            **{k: datasets.Value("string") for k in columns},
        }
    )
    return datasets.Dataset.from_dict(data, features=features)


def test_save_to_disk_roi_by_time(tmp_path):
    recs = recordings([10, 12, 4])  # the last is shorter than R: auto must still orient it
    make_dataset(recs).save_to_disk(tmp_path / "ds")
    report = IngestReport()
    it = iter_brainlm_scans(tmp_path / "ds", MAPPING, tr=0.735, report=report)
    records = list(it)
    assert [r.scan_id for r in records] == ["1000", "1001", "1002"]
    for r, x in zip(records, recs, strict=True):
        assert r.timeseries.dtype == np.float32
        np.testing.assert_array_equal(r.timeseries, x.T)
    a, b, _ = records
    assert (a.subject_id, a.age, a.sex, a.tr) == ("1000", 60.5, "female", 0.735)
    assert b.sex == "male" and math.isnan(b.fiq)
    assert a.phenotypes == {
        "Filename": "1000_20227_2_0.dat",
        "eid": 1000,
        "Age.At.MHQ": 60.5,
        "Gender": 0,
    }
    assert a.source == f"{tmp_path / 'ds'}#0"
    assert report.warnings and "already-normalized" in report.warnings[0]


def test_time_by_roi_array2d_dict_and_arrow_file(tmp_path):
    recs = [np.arange(5 * R, dtype=np.float32).reshape(5, R) + i for i in range(2)]
    ds = datasets.Dataset.from_dict(
        {"Recording": [r for r in recs], "subject": ["sub-01", "sub-02"], "site": ["A", "B"]},
        features=datasets.Features(
            {
                "Recording": datasets.Array2D(shape=(5, R), dtype="float32"),
                "subject": datasets.Value("string"),
                "site": datasets.Value("string"),
            }
        ),
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "dd")
    mapping = PhenotypeMapping("subject", site="site")
    records = list(iter_brainlm_scans(tmp_path / "dd", mapping, layout="time_by_roi"))
    assert [(r.subject_id, r.site) for r in records] == [("01", "A"), ("02", "B"), ("02", "B")]
    np.testing.assert_array_equal(records[0].timeseries, recs[0])
    assert records[2].source.endswith("dd[test]#0")
    only = list(iter_brainlm_scans(tmp_path / "dd", mapping, split="test", n_rois=R))
    assert len(only) == 1 and only[0].timeseries.shape == (5, R)
    arrow = next((tmp_path / "dd" / "train").glob("*.arrow"))
    from_file = list(iter_brainlm_scans(arrow, mapping, layout="time_by_roi"))
    assert len(from_file) == 2
    with pytest.raises(IngestError, match=r"dd.*no split \['val'\]; splits present"):
        open_brainlm_datasets(tmp_path / "dd", "val")


def test_orient_recording():
    x = np.zeros((R, 20))
    assert orient_recording(x).shape == (20, R)
    assert orient_recording(x, "auto", n_rois=R).shape == (20, R)
    assert orient_recording(x, "roi_by_time").shape == (20, R)
    assert orient_recording(x, "time_by_roi").shape == (R, 20)
    with pytest.raises(ValueError, match="no axis of length n_rois=7"):
        orient_recording(x, "auto", n_rois=7)


def test_scan_id_column_and_bad_recordings(tmp_path):
    recs = recordings([10, 10])
    data = make_dataset(recs).to_dict()
    data[REC][1] = data[REC][1][:-1] + [data[REC][1][-1][:-2]]  # ragged: a short last row
    features = make_dataset(recs).features
    datasets.Dataset.from_dict(data, features=features).save_to_disk(tmp_path / "ds")
    report = IngestReport()
    records = list(
        iter_brainlm_scans(tmp_path / "ds", MAPPING, scan_id_column="Filename", report=report)
    )
    assert [r.scan_id for r in records] == ["1000_20227_2_0.dat"]
    assert [(s.scan_id, s.reason) for s in report.skipped] == [("1001_20227_2_0.dat", "unreadable")]
    with pytest.raises(IngestError, match=r"unreadable: scan '1001'.*row 1 of '.*ds'"):
        list(iter_brainlm_scans(tmp_path / "ds", MAPPING, on_unreadable="error"))
    with pytest.raises(IngestError, match="no axis of length n_rois=7"):
        list(iter_brainlm_scans(tmp_path / "ds", MAPPING, n_rois=7, on_unreadable="error"))


def test_missing_columns_and_labels(tmp_path):
    make_dataset(recordings([8])).save_to_disk(tmp_path / "ds")
    with pytest.raises(IngestError, match=r"ds.*no recording column 'X'; columns present: \["):
        next(iter_brainlm_scans(tmp_path / "ds", MAPPING, recording_column="X"))
    with pytest.raises(IngestError, match=r"ds.*no column diagnosis='DX'; columns present"):
        next(iter_brainlm_scans(tmp_path / "ds", PhenotypeMapping("eid", diagnosis="DX")))
    bad_sex = PhenotypeMapping("eid", sex="Gender", sex_map={"1": "male"})
    with pytest.raises(IngestError, match=r"ds.*row 0 \(subject '1000'\).*sex value 0"):
        next(iter_brainlm_scans(tmp_path / "ds", bad_sex))
    ds = datasets.Dataset.from_dict({"signal": [[[1.0]]], "eid": [1]})
    ds.save_to_disk(tmp_path / "norec")
    with pytest.raises(IngestError, match=r"norec.*none of the recording columns"):
        next(iter_brainlm_scans(tmp_path / "norec", PhenotypeMapping("eid")))


def test_empty_subject_skipped(tmp_path):
    ds = make_dataset(recordings([8, 8]))
    ds = ds.cast_column("eid", datasets.Value("string"))
    ds = ds.map(lambda r, i: {"eid": None if i == 1 else r["eid"]}, with_indices=True)
    ds.save_to_disk(tmp_path / "ds")
    report = IngestReport()
    assert len(list(iter_brainlm_scans(tmp_path / "ds", MAPPING, report=report))) == 1
    assert report.skipped[0].reason == "no_phenotype" and report.skipped[0].source.endswith("#1")
    with pytest.raises(IngestError, match=r"no_phenotype: row 1 of .*ds.*'eid' is empty"):
        list(iter_brainlm_scans(tmp_path / "ds", MAPPING, on_no_phenotype="error"))


def test_bad_paths(tmp_path):
    with pytest.raises(IngestError, match=r"nope.*does not exist"):
        open_brainlm_datasets(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match=r"empty.*neither a save_to_disk folder"):
        open_brainlm_datasets(tmp_path / "empty")
    (tmp_path / "bad.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(IngestError, match=r"bad\.arrow.*cannot be read"):
        open_brainlm_datasets(tmp_path / "bad.arrow")
