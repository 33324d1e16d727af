import numpy as np
import pytest

from fmrilm.data import IngestError, IngestPolicy, IngestReport, build_store
from fmrilm.data.validation import ScanValidator
from tests.conftest import make_record, synthetic_records


def _check(record, **policy):
    report = IngestReport()
    v = ScanValidator(IngestPolicy(**policy), report)
    return v, report, v.check(record)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_is_skipped_with_reason(bad):
    rec = make_record(1)
    rec.timeseries[3, 2] = bad
    _, report, mask = _check(rec)
    assert mask is None
    assert report.skipped[0].reason == "nonfinite"
    assert "time 3, ROI 2" in report.skipped[0].detail
    assert report.skipped[0].source == "/data/scan1.1D"


def test_nonfinite_error_names_scan_subject_and_file():
    rec = make_record(1)
    rec.timeseries[0, 0] = np.nan
    with pytest.raises(
        IngestError, match=r"nonfinite: scan 'scan1' \(subject 'sub1', file '/data/scan1.1D'\)"
    ):
        _check(rec, nonfinite="error")


def test_constant_columns_are_kept_and_masked():
    rec = make_record(1)
    rec.timeseries[:, 4] = 0.0
    rec.timeseries[:, 1] = 3.5
    _, report, mask = _check(rec)
    assert mask.tolist() == [True, False, True, True, False, True]
    assert report.masked_rois == {"scan1": [1, 4]}
    assert not report.skipped


def test_too_short():
    _, report, mask = _check(make_record(1, t=10), min_timepoints=20)
    assert mask is None and report.skipped[0].reason == "too_short"
    with pytest.raises(IngestError, match="10 time points, fewer than 20"):
        _check(make_record(1, t=10), min_timepoints=20, too_short="error")


def test_roi_count_mismatch_against_first_scan():
    report = IngestReport()
    v = ScanValidator(IngestPolicy(), report)
    assert v.check(make_record(1, r=6)) is not None
    assert v.check(make_record(2, r=7)) is None
    assert report.skipped[0].reason == "roi_mismatch"
    assert "7 ROIs, the store has 6" in report.skipped[0].detail


def test_roi_count_mismatch_against_configured_count():
    with pytest.raises(IngestError, match="5 ROIs, the store has 6"):
        _check(make_record(1, r=5), n_rois=6, roi_mismatch="error")


@pytest.mark.parametrize("tr", [None, float("nan"), 0.0, -2.0])
def test_missing_tr(tr):
    _, report, mask = _check(make_record(1, tr=tr))
    assert mask is None and report.skipped[0].reason == "missing_tr"


def test_duplicate_subject_session_is_an_error_by_default():
    report = IngestReport()
    v = ScanValidator(IngestPolicy(), report)
    v.check(make_record(1, subject="s1"))
    with pytest.raises(IngestError, match="subject 's1' session '' already in the store"):
        v.check(make_record(2, subject="s1"))


def test_duplicate_scan_id_skip_policy_keeps_first():
    report = IngestReport()
    v = ScanValidator(IngestPolicy(duplicate="skip"), report)
    assert v.check(make_record(1)) is not None
    assert v.check(make_record(1, subject="other")) is None
    assert report.skipped[0].detail == "scan id already in the store"


def test_sessions_of_one_subject_are_not_duplicates():
    report = IngestReport()
    v = ScanValidator(IngestPolicy(), report)
    assert v.check(make_record(1, subject="s1", session="1")) is not None
    assert v.check(make_record(2, subject="s1", session="2")) is not None


def test_bad_policy_values_are_refused():
    with pytest.raises(ValueError, match="IngestPolicy.nonfinite must be 'error' or 'skip'"):
        IngestPolicy(nonfinite="ignore")
    with pytest.raises(ValueError, match="min_timepoints must be >= 1"):
        IngestPolicy(min_timepoints=0)


def test_report_in_store_lists_every_skip(tmp_path):
    recs = synthetic_records(12)
    recs[2].timeseries[0, 0] = np.nan
    recs[5] = make_record(5, t=5, site="C")
    store = build_store(
        recs, tmp_path / "s", policy=IngestPolicy(min_timepoints=10), progress=False
    )
    report = store.report()
    assert report.n_read == 12 and report.n_kept == 10
    assert report.skip_counts() == {"nonfinite": 1, "too_short": 1}
    assert sorted(store.table["scan_id"]) == sorted(
        r.scan_id for i, r in enumerate(recs) if i not in (2, 5)
    )
