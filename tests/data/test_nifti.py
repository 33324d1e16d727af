"""BIDS / fMRIPrep trees on real small 4-D images shipped with nibabel (and nitime when present)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pandas as pd
import pytest

from fmrilm.data.nifti import (
    atlas_labels,
    find_confounds_file,
    iter_bids_scans,
    parse_bids_entities,
    read_confounds,
    repetition_time,
)
from fmrilm.data.phenotypes import PhenotypeMapping, read_phenotypes
from fmrilm.data.records import IngestError, IngestReport

FUNCTIONAL = Path(nib.__file__).parent / "tests" / "data" / "functional.nii"  # 17x21x3x20, TR 2
CONFOUNDS = (
    Path(nilearn.__file__).parent
    / "interfaces"
    / "fmriprep"
    / "data"
    / "test-v21_desc-confounds_timeseries.tsv"
)  # fMRIPrep 21 confounds, 30 rows
BOLD = "task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
CONF_COLUMNS = ["trans_?", "rot_x", "csf", "white_matter", "global_signal_derivative1"]


def block_atlas(img, blocks=(2, 2, 1)):
    """Integer labels 1..n on the image's own grid: a grid of blocks."""
    shape = img.shape[:3]
    labels = np.zeros(shape, dtype=np.int16)
    edges = [np.array_split(np.arange(n), b) for n, b in zip(shape, blocks, strict=True)]
    label = 0
    for xs in edges[0]:
        for ys in edges[1]:
            for zs in edges[2]:
                label += 1
                labels[np.ix_(xs, ys, zs)] = label
    return nib.Nifti1Image(labels, img.affine)


def write_confounds(path, n_rows):
    df = pd.read_csv(CONFOUNDS, sep="\t")
    df.iloc[:n_rows].to_csv(path, sep="\t", index=False, na_rep="n/a")


def add_bold(root, sub, ses=None, *, src=FUNCTIONAL, tr=2.0, confounds=True, sidecar=True):
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
    folder.mkdir(parents=True, exist_ok=True)
    base = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    path = folder / f"{base}_{BOLD}"
    img = nib.load(src)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), path)
    if sidecar:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
            json.dumps({"RepetitionTime": tr, "TaskName": "rest"})
        )
    if confounds:
        write_confounds(folder / f"{base}_task-rest_desc-confounds_timeseries.tsv", img.shape[3])
    return path


@pytest.fixture(scope="module")
def functional():
    return nib.load(FUNCTIONAL)


@pytest.fixture
def tree(tmp_path, functional):
    root = tmp_path / "derivatives" / "fmriprep"
    add_bold(root, "01")
    p2 = add_bold(root, "02", "1", sidecar=False)  # TR inherited from the root sidecar
    (root / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    assert not p2.with_name(p2.name.replace(".nii.gz", ".json")).exists()
    return root, block_atlas(functional)


def test_entities_and_confounds_file(tree):
    root, _ = tree
    bold = root / "sub-02" / "ses-1" / "func" / f"sub-02_ses-1_{BOLD}"
    ent = parse_bids_entities(bold)
    assert ent == {
        "sub": "02",
        "ses": "1",
        "task": "rest",
        "space": "MNI152NLin2009cAsym",
        "desc": "preproc",
        "suffix": "bold",
    }
    conf = find_confounds_file(bold)
    assert conf.name == "sub-02_ses-1_task-rest_desc-confounds_timeseries.tsv"
    x = read_confounds(conf, CONF_COLUMNS, n_volumes=20)
    assert x.shape == (20, 7) and np.isfinite(x).all()  # trans_x/y/z, rot_x, csf, wm, gs deriv
    raw = pd.read_csv(conf, sep="\t", na_values="n/a")
    assert np.isnan(raw["global_signal_derivative1"][0])
    assert x[0, -1] == pytest.approx(raw["global_signal_derivative1"][1])  # filled from row 2


def test_read_confounds_errors(tree):
    root, _ = tree
    conf = root / "sub-01" / "func" / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    with pytest.raises(IngestError, match=r"sub-01_task-rest_desc-confounds.*no column 'nope'"):
        read_confounds(conf, ["nope"])
    with pytest.raises(IngestError, match=r"confounds_timeseries\.tsv.*20 rows.*40 volumes"):
        read_confounds(conf, ["csf"], n_volumes=40)


def test_repetition_time_sources(tree, functional, tmp_path):
    root, _ = tree
    bold = root / "sub-02" / "ses-1" / "func" / f"sub-02_ses-1_{BOLD}"
    tr, origin = repetition_time(bold, root=root)
    assert tr == 2.0 and origin.endswith("task-rest_bold.json")
    assert repetition_time(bold) == (2.0, "header")  # no inheritance without the root
    bad = tmp_path / "x_bold.nii.gz"
    nib.save(functional, bad)
    (tmp_path / "x_bold.json").write_text('{"RepetitionTime": "2s"}')
    with pytest.raises(IngestError, match=r"x_bold\.json.*RepetitionTime '2s'"):
        repetition_time(bad)
    (tmp_path / "x_bold.json").write_text("{not json")
    with pytest.raises(IngestError, match=r"x_bold\.json.*not valid JSON"):
        repetition_time(bad)


def test_extract_shapes_values_and_tr(tree, functional):
    root, atlas = tree
    assert atlas_labels(atlas) == [1, 2, 3, 4]
    report = IngestReport()
    records = list(iter_bids_scans(root, atlas, report=report))
    assert [(r.scan_id, r.subject_id, r.session) for r in records] == [
        ("01", "01", ""),
        ("02_ses-1", "02", "1"),
    ]
    data = np.asarray(functional.dataobj, dtype=np.float64)
    labels = np.asarray(atlas.dataobj)
    expected = np.stack([data[labels == k].mean(axis=0) for k in (1, 2, 3, 4)], axis=1)
    for r in records:
        assert r.timeseries.shape == (20, 4) and r.timeseries.dtype == np.float32
        assert r.tr == 2.0 and r.source.endswith(BOLD)
        np.testing.assert_allclose(r.timeseries, expected, rtol=1e-5)
    assert report.skipped == [] and report.warnings == []


def test_confound_regression(tree):
    root, atlas = tree
    (r1, r2) = iter_bids_scans(root, atlas, confounds=CONF_COLUMNS)
    plain = next(iter_bids_scans(root, atlas))
    assert r1.timeseries.shape == (20, 4) and np.isfinite(r1.timeseries).all()
    assert not np.allclose(r1.timeseries, plain.timeseries)


def test_phenotype_join_and_skips(tree, tmp_path):
    root, atlas = tree
    (tmp_path / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t30\tF\n")
    mapping = PhenotypeMapping.bids()
    df = read_phenotypes(tmp_path / "participants.tsv", mapping)
    report = IngestReport()
    (r,) = iter_bids_scans(root, atlas, phenotypes=df, mapping=mapping, site="S1", report=report)
    assert (r.subject_id, r.age, r.sex, r.site) == ("01", 30.0, "female", "S1")
    assert r.phenotypes == {"participant_id": "sub-01", "age": "30", "sex": "F"}
    assert [(s.scan_id, s.reason) for s in report.skipped] == [("02_ses-1", "no_phenotype")]
    with pytest.raises(IngestError, match=r"no_phenotype: scan '02_ses-1'.*sub-02_ses-1_task"):
        list(iter_bids_scans(root, atlas, phenotypes=df, mapping=mapping, on_no_phenotype="error"))


def test_sidecar_header_disagreement_warns(tree):
    root, atlas = tree
    sidecar = root / "sub-01" / "func" / f"sub-01_{BOLD}".replace(".nii.gz", ".json")
    sidecar.write_text(json.dumps({"RepetitionTime": 2.5}))
    report = IngestReport()
    records = list(iter_bids_scans(root, atlas, report=report))
    assert records[0].tr == 2.5
    assert len(report.warnings) == 1 and "2.5" in report.warnings[0]
    assert [r.tr for r in iter_bids_scans(root, atlas, tr=3.0)] == [3.0, 3.0]  # override


def test_unreadable_images_and_confounds(tree, functional):
    root, atlas = tree
    # sub-03: truncated gzip; sub-04: 3-D image; sub-05: confounds missing; sub-06: bad sidecar
    p3 = add_bold(root, "03")
    p3.write_bytes(p3.read_bytes()[:2000])
    folder = root / "sub-04" / "func"
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), folder / f"sub-04_{BOLD}")
    add_bold(root, "05", confounds=False)
    p6 = add_bold(root, "06")
    p6.with_name(p6.name.replace(".nii.gz", ".json")).write_text("{")
    report = IngestReport()
    records = list(iter_bids_scans(root, atlas, confounds=["csf"], report=report))
    assert [r.subject_id for r in records] == ["01", "02"]
    details = {s.scan_id: s.detail for s in report.skipped}
    assert report.skip_counts() == {"unreadable": 4}
    assert "cannot read the image" in details["03"] or "ROI extraction failed" in details["03"]
    assert "expected 4-D" in details["04"]
    assert "no *_desc-confounds_timeseries.tsv" in details["05"]
    assert "not valid JSON" in details["06"]
    with pytest.raises(IngestError, match=r"unreadable: scan '03'.*sub-03_task-rest"):
        list(iter_bids_scans(root, atlas, on_unreadable="error"))


def test_missing_tr(tmp_path, functional):
    root = tmp_path / "bids"
    path = add_bold(root, "01", sidecar=False, confounds=False)
    img = nib.load(path)
    header = img.header.copy()
    header.set_zooms(header.get_zooms()[:3] + (0.0,))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header), path)
    atlas = block_atlas(functional)
    report = IngestReport()
    assert list(iter_bids_scans(root, atlas, report=report)) == []
    assert [s.reason for s in report.skipped] == ["missing_tr"]
    with pytest.raises(IngestError, match=r"missing_tr: scan '01'.*sub-01_task-rest"):
        list(iter_bids_scans(root, atlas, on_missing_tr="error"))
    assert next(iter_bids_scans(root, atlas, tr=2.0)).tr == 2.0


def test_bad_root_and_atlas(tmp_path, functional):
    with pytest.raises(IngestError, match=r"nowhere.*not a folder"):
        next(iter_bids_scans(tmp_path / "nowhere", block_atlas(functional)))
    (tmp_path / "atlas.nii.gz").write_bytes(b"garbage")
    with pytest.raises(IngestError, match=r"atlas\.nii\.gz.*cannot be used"):
        next(iter_bids_scans(tmp_path, tmp_path / "atlas.nii.gz"))


def test_nitime_fmri1_header_tr(tmp_path):
    nitime = pytest.importorskip("nitime")
    src = Path(nitime.__file__).parent / "data" / "fmri1.nii.gz"  # 10x10x18x40, TR 1.35 s
    root = tmp_path / "bids"
    path = add_bold(root, "07", src=src, sidecar=False, confounds=False)
    write_confounds(path.with_name("sub-07_task-rest_desc-confounds_timeseries.tsv"), 30)
    img = nib.load(src)
    atlas = block_atlas(img, (2, 2, 3))
    (r,) = iter_bids_scans(root, atlas)
    assert r.timeseries.shape == (40, 12) and r.tr == pytest.approx(1.35)
    # nilearn's confounds data has 30 rows, this scan 40 volumes: unreadable, never misaligned
    report = IngestReport()
    assert list(iter_bids_scans(root, atlas, confounds=["csf"], report=report)) == []
    assert "30 rows, the image has 40 volumes" in report.skipped[0].detail
    shutil.rmtree(root)
