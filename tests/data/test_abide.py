"""ABIDE through nilearn's real fetcher on the real data, and the bundled sample."""

import json

import numpy as np
import pandas as pd
import pytest

from fmrilm.cli import main
from fmrilm.data import open_store
from fmrilm.data.abide import ABIDE_TR, abide_record, iter_abide_sample, sample_files


def test_phenotype_mapping_handles_missing_codes():
    row = {
        "FILE_ID": "X_1",
        "SUB_ID": "50001",
        "SITE_ID": "NYU",
        "AGE_AT_SCAN": "12.5",
        "SEX": "2",
        "DX_GROUP": "1",
        "FIQ": "-9999",
        "func_mean_fd": "",
        "Unnamed: 0": "3",
    }
    rec = abide_record(row, np.zeros((5, 2), np.float32), "src")
    assert (rec.scan_id, rec.subject_id, rec.site, rec.tr) == ("X_1", "50001", "NYU", 2.0)
    assert rec.age == 12.5 and rec.sex == "female" and rec.diagnosis == "autism"
    assert np.isnan(rec.fiq) and np.isnan(rec.mean_fd)
    assert rec.phenotypes["FIQ"] is None and "Unnamed: 0" not in rec.phenotypes
    rec = abide_record(
        {**row, "SEX": "-9999", "DX_GROUP": "2", "SITE_ID": "ELSEWHERE"},
        np.zeros((5, 2), np.float32),
        "src",
    )
    assert rec.sex is None and rec.diagnosis == "control" and rec.tr is None


def test_bundled_sample_is_exact_real_data(shared_data):
    npz, csv = sample_files()
    assert npz.stat().st_size < 6_000_000
    full = np.load(shared_data / "abide_pcp_cc200.npz")
    records, total, _ = iter_abide_sample()
    records = list(records)
    assert total == len(records) == 32
    for rec in records:
        np.testing.assert_array_equal(rec.timeseries, (full[rec.scan_id] * 1e-6).astype(np.float32))


def test_cli_abide_through_nilearn_offline_cache(nilearn_cache, shared_data, tmp_path, capsys):
    out = tmp_path / "store"
    assert (
        main(
            [
                "data",
                "abide",
                "--data-dir",
                str(nilearn_cache),
                "--out",
                str(out),
                "--sites",
                "CALTECH,OHSU,SBL",
                "--min-timepoints",
                "100",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "ingest: read 66, kept 41, skipped 25 {'too_short': 25}" in printed
    store = open_store(out)
    t = store.table
    assert sorted(t.site.unique()) == ["CALTECH", "SBL"]  # OHSU's 78-point scans are too short
    assert store.n_rois == 200 and store.metadata["preprocessing"]["strategy"] == "filt_global"
    assert set(t.tr) == {np.float32(ABIDE_TR["CALTECH"]), np.float32(ABIDE_TR["SBL"])}
    ph = pd.read_csv(shared_data / "Phenotypic_V1_0b_preprocessed1.csv").set_index("FILE_ID")
    full = np.load(shared_data / "abide_pcp_cc200.npz")
    for i in (0, len(store) - 1):
        sid = t.scan_id[i]
        np.testing.assert_array_equal(store.timeseries(i), (full[sid] / 1e6).astype(np.float32))
        assert t.age[i] == pytest.approx(ph.loc[sid, "AGE_AT_SCAN"])
        assert json.loads(t.phenotypes[i])["SITE_ID"] == ph.loc[sid, "SITE_ID"]
    # Caltech_0051464 has 12 all-zero ROI columns outside its mask: kept and masked.
    row = int(np.flatnonzero(t.scan_id == "Caltech_0051464")[0])
    mask = store.roi_mask(row)
    assert np.flatnonzero(~mask).tolist() == [
        r - 1 for r in (12, 27, 32, 42, 43, 53, 109, 113, 124, 139, 181, 198)
    ]
    assert store.report().masked_rois["Caltech_0051464"] == np.flatnonzero(~mask).tolist()


def test_cli_inspect_json(sample_store, capsys):
    assert main(["data", "inspect", str(sample_store.path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["all"]["scans"] == 32 and s["n_rois"] == 200
    assert s["sites"]["KKI"]["female"] == 3
    assert sum(v["subjects"] for k, v in s["splits"]["site_stratified"].items()) == 32


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    assert "not a complete fmrilm store" in capsys.readouterr().err
    assert main(["data", "sample", "--out", str(tmp_path / "s"), "--on", "nan=skip"]) == 2
    assert "unknown kind 'nan'" in capsys.readouterr().err
