"""`fmrilm data files / nifti / brainlm` end to end, bad inputs included."""

import json

import nibabel as nib
import numpy as np
import pandas as pd

from fmrilm.cli import main
from fmrilm.data import open_store
from fmrilm.data.abide import sample_files
from tests.data.test_brainlm import make_dataset, recordings
from tests.data.test_nifti import FUNCTIONAL, add_bold, block_atlas

PATTERN = r"_(?P<subject>\d{7})_rois"


def test_files_real_abide_scans_with_bad_ones(tmp_path, capsys):
    npz_path, csv_path = sample_files()
    npz = np.load(npz_path)
    pheno = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    folder = tmp_path / "ts"
    folder.mkdir()
    ids = list(pheno.FILE_ID[:8])
    header = "\t".join(f"#{i + 1}" for i in range(200))
    for fid in ids:
        np.savetxt(
            folder / f"{fid}_rois_cc200.1D",
            npz[fid] / 1e6,
            delimiter="\t",
            fmt="%.6f",
            header=header[1:],
            comments="#",
        )
    x = npz[ids[0]] / 1e6
    x[5, 7] = np.nan
    np.savetxt(folder / "Bad_0000001_rois_cc200.1D", x, delimiter="\t")  # NaN
    text = (folder / f"{ids[1]}_rois_cc200.1D").read_text().splitlines()
    (folder / "Trunc_0000002_rois_cc200.1D").write_text("\n".join(text[:20] + [text[20][:50]]))
    np.save(folder / "Orphan_0000003_rois_cc200.npy", x[:, :10])  # no phenotype row
    extra = pheno.iloc[:1].copy()
    extra[["SUB_ID", "FILE_ID"]] = ["1", "Bad_0000001"]
    extra2 = pheno.iloc[:1].copy()
    extra2[["SUB_ID", "FILE_ID"]] = ["2", "Trunc_0000002"]
    table = pd.concat([pheno, extra, extra2])
    table.to_csv(tmp_path / "pheno.csv", index=False)
    out = tmp_path / "store"
    code = main(
        [
            "data",
            "files",
            str(folder),
            "--phenotypes",
            str(tmp_path / "pheno.csv"),
            "--preset",
            "abide",
            "--tr",
            "2.0",
            "--out",
            str(out),
            "--quiet",
            "--subject-pattern",
            PATTERN,
        ]
    )
    assert code == 0, capsys.readouterr().err
    store = open_store(out)
    report = store.report()
    assert report.n_kept == 8 and report.n_read == 11
    assert report.skip_counts() == {"no_phenotype": 1, "nonfinite": 1, "unreadable": 1}
    reasons = {s.reason: s for s in report.skipped}
    assert "Trunc_0000002" in reasons["unreadable"].source
    t = store.table
    fid = pheno.set_index("SUB_ID").loc[str(int(t.subject_id[0])), "FILE_ID"]
    np.testing.assert_allclose(store.timeseries(0), npz[fid] / 1e6, atol=1e-6)
    assert set(t.diagnosis) <= {"autism", "control"} and t.age.notna().all()
    # The same with an error policy stops on the first bad file and names it.
    assert (
        main(
            [
                "data",
                "files",
                str(folder),
                "--phenotypes",
                str(tmp_path / "pheno.csv"),
                "--preset",
                "abide",
                "--tr",
                "2.0",
                "--out",
                str(tmp_path / "s2"),
                "--quiet",
                "--on",
                "unreadable=error",
                "--subject-pattern",
                PATTERN,
            ]
        )
        == 2
    )
    assert "Trunc_0000002" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()


def test_files_bad_mapping_is_clear(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("id,age\n1,3\n")
    assert (
        main(
            [
                "data",
                "files",
                str(tmp_path),
                "--phenotypes",
                str(tmp_path / "p.csv"),
                "--map",
                "subject=id",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    assert "--map" in capsys.readouterr().err


def test_nifti_tree_through_the_cli(tmp_path):
    root = tmp_path / "fmriprep"
    for sub in ("01", "02", "03"):
        add_bold(root, sub)
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(block_atlas(nib.load(FUNCTIONAL)), atlas)
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tage\tsex\nsub-01\t20\tM\nsub-02\t30\tF\nsub-03\t40\tF\n"
    )
    out = tmp_path / "store"
    assert (
        main(
            [
                "data",
                "nifti",
                str(root),
                "--atlas",
                str(atlas),
                "--phenotypes",
                str(tmp_path / "participants.tsv"),
                "--preset",
                "bids",
                "--confounds",
                "trans_?,csf",
                "--out",
                str(out),
                "--quiet",
                "--val-fraction",
                "0",
                "--test-fraction",
                "0.3",
                "--heldout-fraction",
                "0.3",
            ]
        )
        == 0
    )
    store = open_store(out)
    assert len(store) == 3 and store.n_rois == 4
    assert store.metadata["roi_labels"] == ["1", "2", "3", "4"]
    assert sorted(store.table.age) == [20, 30, 40] and set(store.table.tr) == {2.0}
    assert store.timeseries(0).shape == (20, 4)


def test_brainlm_through_the_cli(tmp_path):
    ds = make_dataset(recordings([30, 40, 50]))
    ds.save_to_disk(str(tmp_path / "brainlm"))
    out = tmp_path / "store"
    assert (
        main(
            [
                "data",
                "brainlm",
                str(tmp_path / "brainlm"),
                "--map",
                "subject_id=eid",
                "--map",
                "age=Age.At.MHQ",
                "--tr",
                "0.735",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    store = open_store(out)
    assert len(store) == 3
    assert json.loads(store.table.phenotypes[0])["Filename"].endswith(".dat")
    assert sorted(store.table.n_timepoints) == [30, 40, 50]
