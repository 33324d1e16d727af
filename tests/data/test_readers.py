"""Time-series files: every format, bad files named in errors, and the streaming file iterator."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from fmrilm.data.phenotypes import PhenotypeMapping, read_phenotypes
from fmrilm.data.readers import (
    expand_paths,
    iter_timeseries_files,
    parse_subject,
    read_timeseries,
)
from fmrilm.data.records import IngestError, IngestReport

X = np.arange(12, dtype=np.float64).reshape(4, 3) / 7


def text(rows, sep="\t"):
    return "\n".join(sep.join(repr(float(v)) for v in r) for r in rows) + "\n"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("a.1D", "#1\t#2\t#3\n" + text(X)),  # C-PAC header
        ("b.1D", text(X, " ")),
        ("c.tsv", "roi1\troi2\troi3\n" + text(X)),  # header of names
        ("d.csv", "r1,r2,r3\n" + text(X, ",")),
        ("e.csv", text(X, ",")),
        ("f.txt", "# comment\n\n" + text(X, "  ")),
        ("g.txt", text(X, ",")),
    ],
)
def test_text_formats(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    x = read_timeseries(p)
    assert x.dtype == np.float32 and x.shape == (4, 3)
    np.testing.assert_allclose(x, X, rtol=1e-6)


def test_gzipped_text_and_nan_words(tmp_path):
    import gzip

    p = tmp_path / "a.tsv.gz"
    with gzip.open(p, "wt") as f:
        f.write("1\tn/a\n2\t3\n")
    x = read_timeseries(p)
    assert x.shape == (2, 2) and np.isnan(x[0, 1])


def test_array_formats_and_transpose(tmp_path):
    np.save(tmp_path / "a.npy", X)
    np.savez(tmp_path / "b.npz", ts=X)
    np.savez(tmp_path / "c.npz", ts=X, other=X)
    scipy.io.savemat(tmp_path / "d.mat", {"ROISignals": X})
    scipy.io.savemat(tmp_path / "e.mat", {"a": X, "b": X.T})
    for x in (
        read_timeseries(tmp_path / "a.npy"),
        read_timeseries(tmp_path / "b.npz"),
        read_timeseries(tmp_path / "c.npz", key="ts"),
        read_timeseries(tmp_path / "d.mat"),
        read_timeseries(tmp_path / "e.mat", key="b", transpose=True),
    ):
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, X, rtol=1e-6)
    assert read_timeseries(tmp_path / "a.npy", transpose=True).shape == (3, 4)


def test_ragged_and_truncated_text(tmp_path):
    p = tmp_path / "sub-01.1D"
    p.write_text("#1\t#2\t#3\n1\t2\t3\n4\t5\t6\n7\t8\n")
    with pytest.raises(IngestError, match=r"sub-01\.1D.*ragged or truncated: line 4 has 2 columns"):
        read_timeseries(p)


def test_bad_value_and_empty_text(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("1,2\n3,abc\n")
    with pytest.raises(IngestError, match=r"x\.csv.*line 2, column 2: value 'abc'"):
        read_timeseries(p)
    q = tmp_path / "empty.tsv"
    q.write_text("#1\t#2\n")
    with pytest.raises(IngestError, match=r"empty\.tsv.*no data rows"):
        read_timeseries(q)


def test_binary_garbage_text(tmp_path):
    p = tmp_path / "bin.txt"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(IngestError, match=r"bin\.txt"):
        read_timeseries(p)


def test_unsupported_and_missing(tmp_path):
    p = tmp_path / "a.h5"
    p.write_text("x")
    with pytest.raises(IngestError, match=r"a\.h5.*unsupported extension '\.h5'"):
        read_timeseries(p)
    with pytest.raises(IngestError, match=r"nope\.npy.*does not exist"):
        read_timeseries(tmp_path / "nope.npy")


def test_truncated_npy_npz_mat(tmp_path):
    for name, save in (
        ("a.npy", lambda p: np.save(p, X)),
        ("b.npz", lambda p: np.savez(p, ts=X)),
        ("c.mat", lambda p: scipy.io.savemat(p, {"ts": X})),
    ):
        p = tmp_path / name
        save(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(IngestError, match=name.replace(".", r"\.")):
            read_timeseries(p)


def test_missing_key_lists_keys(tmp_path):
    np.savez(tmp_path / "b.npz", ts=X, other=X)
    with pytest.raises(
        IngestError, match=r"b\.npz.*no key 'nope'; keys present: \['other', 'ts'\]"
    ):
        read_timeseries(tmp_path / "b.npz", key="nope")
    with pytest.raises(IngestError, match=r"b\.npz.*holds 2 arrays.*pass key="):
        read_timeseries(tmp_path / "b.npz")
    scipy.io.savemat(tmp_path / "c.mat", {"ts": X})
    with pytest.raises(IngestError, match=r"c\.mat.*no key 'x'; keys present: \['ts'\]"):
        read_timeseries(tmp_path / "c.mat", key="x")


def test_non_2d_and_non_numeric(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(5))
    with pytest.raises(IngestError, match=r"a\.npy.*shape \(5,\), expected a 2-D"):
        read_timeseries(tmp_path / "a.npy")
    np.save(tmp_path / "b.npy", np.zeros((2, 3, 4)))
    with pytest.raises(IngestError, match=r"b\.npy.*shape \(2, 3, 4\)"):
        read_timeseries(tmp_path / "b.npy")
    np.save(tmp_path / "c.npy", np.array([["a", "b"]]))
    with pytest.raises(IngestError, match=r"c\.npy.*not a numeric array"):
        read_timeseries(tmp_path / "c.npy")


def test_parse_subject():
    assert parse_subject("sub-01_ses-2_task-rest_timeseries.tsv") == ("01", "2")
    assert parse_subject("sub-A12_timeseries.npy") == ("A12", "")
    assert parse_subject("Pitt_0050003_rois_cc200.1D") == ("0050003", "")
    assert parse_subject("scan_012.txt") == ("012", "")
    assert parse_subject("cc200.1D") is None
    assert parse_subject("x-S7.npy", r"-S(?P<subject>\d+)") == ("7", "")


@pytest.fixture
def abide_tree(tmp_path):
    """Three ABIDE-style .1D files (one truncated), one file with no phenotype row."""
    (tmp_path / "pheno.csv").write_text(
        "SUB_ID,SITE_ID,DX_GROUP,AGE_AT_SCAN,SEX,TR\n"
        "50002,PITT,1,16.5,1,1.5\n50003,PITT,2,20,2,-9999\n50004,NYU,1,30,1,2\n"
    )
    d = tmp_path / "rois"
    d.mkdir()
    rng = np.random.default_rng(0)
    for sub in ("0050002", "0050003", "0050099"):
        (d / f"Pitt_{sub}_rois_cc200.1D").write_text("#1\t#2\t#3\n" + text(rng.normal(size=(6, 3))))
    (d / "NYU_0050004_rois_cc200.1D").write_text("#1\t#2\t#3\n1\t2\t3\n4\t5\n")
    mapping = PhenotypeMapping.abide(tr="TR", fiq=None, mean_fd=None)
    return d, read_phenotypes(tmp_path / "pheno.csv", mapping), mapping


def test_iter_files_skips(abide_tree):
    d, df, mapping = abide_tree
    report = IngestReport()
    it = iter_timeseries_files(str(d / "*.1D"), df, mapping, tr=2.5, report=report)
    assert iter(it) is it  # a lazy generator
    records = list(it)
    assert [r.scan_id for r in records] == ["50002", "50003"]
    a, b = records
    assert a.timeseries.shape == (6, 3) and a.timeseries.dtype == np.float32
    assert (a.tr, a.site, a.sex, a.diagnosis, a.age) == (1.5, "PITT", "male", "autism", 16.5)
    assert b.tr == 2.5  # phenotype TR missing: the default
    assert a.source.endswith("Pitt_0050002_rois_cc200.1D")
    assert report.skip_counts() == {"no_phenotype": 1, "unreadable": 1}
    unreadable = next(s for s in report.skipped if s.reason == "unreadable")
    assert unreadable.scan_id == "50004" and "ragged" in unreadable.detail
    no_pheno = next(s for s in report.skipped if s.reason == "no_phenotype")
    assert no_pheno.subject_id == "0050099" and "pheno.csv" in no_pheno.detail


def test_iter_files_errors(abide_tree):
    d, df, mapping = abide_tree
    with pytest.raises(IngestError, match=r"no_phenotype.*0050099.*Pitt_0050099_rois_cc200\.1D"):
        list(iter_timeseries_files(d, df, mapping, on_no_phenotype="error"))
    with pytest.raises(IngestError, match=r"NYU_0050004_rois_cc200\.1D.*ragged"):
        list(iter_timeseries_files(d, df, mapping, on_unreadable="error"))


def test_iter_files_no_match_and_no_table(tmp_path):
    np.save(tmp_path / "sub-01_ses-A.npy", X)
    np.save(tmp_path / "junk.npy", X)
    report = IngestReport()
    records = list(iter_timeseries_files(tmp_path, None, None, report=report))
    assert [(r.scan_id, r.subject_id, r.session, r.tr) for r in records] == [
        ("01_ses-A", "01", "A", None)
    ]
    assert report.skipped[0].reason == "no_phenotype"
    assert "does not match subject_pattern" in report.skipped[0].detail
    with pytest.raises(IngestError, match=r"junk\.npy.*does not match"):
        list(iter_timeseries_files([tmp_path / "junk.npy"], None, None, on_no_phenotype="error"))
    with pytest.raises(ValueError, match="on_unreadable"):
        next(iter_timeseries_files(tmp_path, None, None, on_unreadable="warn"))


def test_expand_paths(tmp_path):
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "x.npy", X)
    (tmp_path / "a" / "notes.md").write_text("x")
    assert [p.name for p in expand_paths(tmp_path / "a")] == ["x.npy"]
    assert [p.name for p in expand_paths(str(tmp_path / "**" / "*.npy"))] == ["x.npy"]
