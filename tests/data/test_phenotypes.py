"""Phenotype tables: mapping, subject ids, missing codes and every error naming file and value."""

from __future__ import annotations

import math

import pytest

from fmrilm.data.phenotypes import (
    PhenotypeMapping,
    is_missing,
    lookup_phenotype,
    normalize_subject_id,
    read_phenotypes,
    standard_fields,
)
from fmrilm.data.records import IngestError

ABIDE_CSV = """SUB_ID,SITE_ID,DX_GROUP,AGE_AT_SCAN,SEX,FIQ,func_mean_fd,EXTRA
50002,PITT,1,16.77,1,103,0.12,x
50003,PITT,2,24.45,2,-9999,0.08,
50004,NYU,1,-9999,1,,0.2,-9999.0
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_abide_csv_fields(tmp_path):
    path = write(tmp_path, "pheno.csv", ABIDE_CSV)
    mapping = PhenotypeMapping.abide()
    df = read_phenotypes(path, mapping)
    assert list(df.index) == ["50002", "50003", "50004"]
    assert df.attrs["source"] == str(path)
    f = standard_fields(df.loc["50002"], mapping)
    assert f["age"] == pytest.approx(16.77)
    assert (f["sex"], f["diagnosis"], f["site"]) == ("male", "autism", "PITT")
    assert f["fiq"] == 103 and f["mean_fd"] == pytest.approx(0.12) and f["tr"] is None
    assert f["phenotypes"]["EXTRA"] == "x" and f["phenotypes"]["SUB_ID"] == "50002"
    f = standard_fields(df.loc["50003"], mapping)
    assert (f["sex"], f["diagnosis"]) == ("female", "control")
    assert math.isnan(f["fiq"]) and f["phenotypes"]["FIQ"] is None
    f = standard_fields(df.loc["50004"], mapping)
    assert math.isnan(f["age"]) and math.isnan(f["fiq"])
    assert f["phenotypes"]["EXTRA"] is None  # "-9999.0" is the numeric missing code


def test_bids_participants_tsv_and_prefix(tmp_path):
    path = write(
        tmp_path,
        "participants.tsv",
        "participant_id\tage\tsex\tgroup\ttr\tsession\n"
        "sub-01\t23\tM\tASD\t2.0\t1\nsub-02\tn/a\tF\tTD\tn/a\t1\nsub-02\t30\tF\tcontrol\t2\t2\n",
    )
    mapping = PhenotypeMapping.bids(diagnosis="group", tr="tr", session="session")
    df = read_phenotypes(path, mapping)
    assert list(df.index) == ["01", "02", "02"]
    sid, row = lookup_phenotype(df, "sub-01", mapping=mapping)
    assert sid == "01"
    f = standard_fields(row, mapping)
    assert (f["sex"], f["diagnosis"], f["tr"], f["session"]) == ("male", "autism", 2.0, "1")
    sid, row = lookup_phenotype(df, "02", "2", mapping)
    assert standard_fields(row, mapping)["age"] == 30
    assert lookup_phenotype(df, "02", "", mapping) is None  # ambiguous without a session
    assert lookup_phenotype(df, "03", "", mapping) is None


def test_leading_zero_lookup(tmp_path):
    df = read_phenotypes(write(tmp_path, "p.csv", ABIDE_CSV), PhenotypeMapping.abide())
    assert lookup_phenotype(df, "0050002")[0] == "50002"
    assert lookup_phenotype(df, "0059999") is None


def test_sniffed_separator_and_custom_maps(tmp_path):
    path = write(tmp_path, "pheno.txt", "id;gender;dx\nA;0;patient\nB;1;healthy\n")
    mapping = PhenotypeMapping(
        "id",
        sex="gender",
        diagnosis="dx",
        sex_map={"0": "female", "1": "male"},
        diagnosis_map={"patient": "autism", "healthy": "control"},
    )
    df = read_phenotypes(path, mapping)
    f = standard_fields(df.loc["A"], mapping)
    assert (f["sex"], f["diagnosis"]) == ("female", "autism")


def test_helpers():
    assert normalize_subject_id("sub-01") == "01"
    assert normalize_subject_id(50002.0) == "50002"
    assert is_missing("-9999") and is_missing("-9999.0") and is_missing(float("nan"))
    assert is_missing(None) and not is_missing("0")
    with pytest.raises(ValueError, match="sex_map"):
        PhenotypeMapping("id", sex_map={"x": "other"})


def test_missing_file(tmp_path):
    with pytest.raises(IngestError, match="nope.csv.*does not exist"):
        read_phenotypes(tmp_path / "nope.csv", PhenotypeMapping.abide())


def test_missing_column_lists_present(tmp_path):
    path = write(tmp_path, "p.csv", "SUB_ID,AGE\n1,20\n")
    with pytest.raises(
        IngestError, match=r"p\.csv.*sex='SEX'.*columns present: \['SUB_ID', 'AGE'\]"
    ):
        read_phenotypes(path, PhenotypeMapping("SUB_ID", sex="SEX"))


def test_duplicate_subjects_named(tmp_path):
    path = write(tmp_path, "p.tsv", "participant_id\tage\nsub-01\t1\n01\t2\nsub-02\t3\n")
    with pytest.raises(IngestError, match=r"p\.tsv.*duplicate subject id.*'01'"):
        read_phenotypes(path, PhenotypeMapping.bids(sex=None))


def test_empty_subject_id(tmp_path):
    path = write(tmp_path, "p.csv", "SUB_ID,AGE\n1,20\n,21\n")
    with pytest.raises(IngestError, match=r"p\.csv.*'SUB_ID' is empty on data row\(s\) \[2\]"):
        read_phenotypes(path, PhenotypeMapping("SUB_ID"))


def test_unparseable_age(tmp_path):
    path = write(tmp_path, "p.csv", "SUB_ID,AGE\n1,20\n2,twelve\n")
    with pytest.raises(IngestError, match=r"p\.csv.*subject '2'.*'AGE'.*'twelve' is not a number"):
        read_phenotypes(path, PhenotypeMapping("SUB_ID", age="AGE"))


def test_unknown_sex_and_diagnosis_codes(tmp_path):
    path = write(tmp_path, "p.csv", "SUB_ID,SEX,DX\n1,3,1\n")
    with pytest.raises(IngestError, match=r"p\.csv.*sex value '3' is not in"):
        read_phenotypes(path, PhenotypeMapping("SUB_ID", sex="SEX"))
    path = write(tmp_path, "q.csv", "SUB_ID,DX\n1,ADHD\n")
    with pytest.raises(IngestError, match=r"q\.csv.*diagnosis value 'ADHD'"):
        read_phenotypes(path, PhenotypeMapping("SUB_ID", diagnosis="DX"))


def test_nonpositive_tr(tmp_path):
    path = write(tmp_path, "p.csv", "SUB_ID,TR\n1,0\n")
    with pytest.raises(IngestError, match=r"p\.csv.*repetition time '0'"):
        read_phenotypes(path, PhenotypeMapping("SUB_ID", tr="TR"))
