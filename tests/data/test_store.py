import json
import os

import numpy as np
import pandas as pd
import pytest

from fmrilm.data import IngestPolicy, StoreMetadata, build_store, open_store
from fmrilm.data.store import METADATA_FILE, resample_to_tr
from tests.conftest import make_record, synthetic_records


def test_round_trip_is_exact_and_keeps_every_phenotype(tmp_path):
    recs = synthetic_records(9)
    store = build_store(recs, tmp_path / "s", metadata=StoreMetadata(atlas="toy"), progress=False)
    assert len(store) == 9 and store.n_rois == 6
    assert store.metadata["atlas"] == "toy" and store.metadata["n_rois"] == 6
    t = store.table.set_index("scan_id")
    for i, r in enumerate(recs):
        np.testing.assert_array_equal(store.timeseries(i), r.timeseries)
        row = t.loc[r.scan_id]
        assert row["subject_id"] == r.subject_id and row["site"] == r.site
        assert row["age"] == pytest.approx(r.age) and row["sex"] == r.sex
        assert json.loads(row["phenotypes"]) == r.phenotypes
    np.testing.assert_array_equal(store.timeseries(3, 5, 9), recs[3].timeseries[5:9])
    with pytest.raises(IndexError, match="out of range"):
        store.timeseries(3, 10, 5)


def test_missing_phenotypes_are_null(tmp_path):
    rec = make_record(0)
    rec.age, rec.sex, rec.diagnosis = float("nan"), None, None
    rec.phenotypes = {"FIQ": float("nan")}
    store = build_store([rec] + synthetic_records(6)[1:], tmp_path / "s", progress=False)
    row = store.table.iloc[0]
    assert np.isnan(row["age"]) and pd.isna(row["sex"]) and pd.isna(row["diagnosis"])
    assert json.loads(row["phenotypes"]) == {"FIQ": None}


def test_existing_store_is_not_overwritten_without_consent(tmp_path):
    build_store(synthetic_records(6), tmp_path / "s", progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_store(synthetic_records(6), tmp_path / "s", progress=False)
    store = build_store(synthetic_records(9), tmp_path / "s", overwrite=True, progress=False)
    assert len(store) == 9
    assert os.listdir(tmp_path) == ["s"]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_crash_mid_build_leaves_nothing_readable(tmp_path, exc):
    def records():
        yield from synthetic_records(5)
        raise exc

    with pytest.raises(type(exc)):
        build_store(records(), tmp_path / "s", progress=False)
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="not a complete fmrilm store"):
        open_store(tmp_path / "s")


def test_crash_while_overwriting_keeps_the_old_store(tmp_path):
    build_store(synthetic_records(6), tmp_path / "s", progress=False)

    def records():
        yield from synthetic_records(3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_store(records(), tmp_path / "s", overwrite=True, progress=False)
    assert len(open_store(tmp_path / "s")) == 6
    assert os.listdir(tmp_path) == ["s"]


def test_half_written_folder_is_refused(tmp_path):
    store = build_store(synthetic_records(6), tmp_path / "s", progress=False)
    (store.path / METADATA_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no metadata.json"):
        open_store(store.path)


def test_foreign_or_newer_store_is_refused(tmp_path):
    store = build_store(synthetic_records(6), tmp_path / "s", progress=False)
    meta = json.loads((store.path / METADATA_FILE).read_text())
    (store.path / METADATA_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="newer than this fmrilm reads"):
        open_store(store.path)
    (store.path / METADATA_FILE).write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ValueError, match="format is 'other'"):
        open_store(store.path)


def test_nothing_kept_is_an_error_with_the_reasons(tmp_path):
    recs = synthetic_records(3, t=5)
    with pytest.raises(ValueError, match=r"no scan was kept out of 3 read.*too_short"):
        build_store(recs, tmp_path / "s", policy=IngestPolicy(min_timepoints=10), progress=False)
    assert os.listdir(tmp_path) == []


def test_resampling_to_a_target_tr(tmp_path):
    t = np.arange(120) * 2.0
    x = np.stack([np.sin(2 * np.pi * 0.05 * t)] * 3, axis=1).astype(np.float32)
    y = resample_to_tr(x, 2.0, 1.0)
    assert y.shape == (240, 3)
    np.testing.assert_allclose(y[::2], x, atol=1e-4)
    recs = synthetic_records(6, t=40)
    store = build_store(recs, tmp_path / "s", metadata=StoreMetadata(target_tr=1.0), progress=False)
    assert set(store.table["tr"]) == {1.0} and set(store.table["n_timepoints"]) == {80}
    assert json.loads(store.table["phenotypes"][0])["original_tr"] == 2.0


def test_wrong_number_of_roi_labels(tmp_path):
    with pytest.raises(ValueError, match="3 ROI labels for 6 ROIs"):
        build_store(
            synthetic_records(6),
            tmp_path / "s",
            metadata=StoreMetadata(roi_labels=["a", "b", "c"]),
            progress=False,
        )


def test_a_cross_validation_fold_of_a_stored_scheme(sample_store):
    """The store answers "<scheme>-cv<K>-fold<i>" without storing it, with the parent's scaler."""
    parent = sample_store.split_of_subjects("site_stratified")
    fold = sample_store.split_of_subjects("site_stratified-cv2-fold1")
    assert {s for s, v in fold.items() if v == "test"} == {
        s for s, v in parent.items() if v == "test"
    }
    rows = sample_store.split_indices("site_stratified-cv2-fold1")
    subject = np.asarray(sample_store.scans["subject_id"])
    assert {fold[s] for s in subject[rows["val"]]} == {"val"} and len(rows["val"]) > 0
    other = sample_store.split_indices("site_stratified-cv2-fold0")
    assert set(other["val"]) == set(rows["train"])  # two folds: each trains on the other
    assert (
        sample_store.scaler("site_stratified-cv2-fold1").to_dict()
        == sample_store.scaler("site_stratified").to_dict()
    )
    with pytest.raises(KeyError, match="or a cross-validation fold of one"):
        sample_store.split_of_subjects("no_such_scheme")
    with pytest.raises(KeyError, match="no_such_scheme-cv2-fold0"):
        sample_store.split_of_subjects("no_such_scheme-cv2-fold0")
    with pytest.raises(KeyError, match="no scaler for split scheme"):
        sample_store.scaler("no_such_scheme-cv2-fold0")
