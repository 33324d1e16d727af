import numpy as np
import pandas as pd
import pytest

from fmrilm.data import SplitConfig, build_store
from fmrilm.data.splits import (
    cross_validation_split,
    cv_scheme_name,
    heldout_sites_split,
    parse_cv_scheme,
    site_stratified_split,
)
from tests.conftest import make_record


def _subjects(n_per_site=(40, 20, 10)):
    rows = [(f"{s}{i}", s) for s, n in zip("ABC", n_per_site, strict=True) for i in range(n)]
    return pd.DataFrame(rows, columns=["subject_id", "site"])


def test_site_stratified_shares_within_each_site():
    subjects = _subjects()
    split = site_stratified_split(subjects, SplitConfig(val_fraction=0.2, test_fraction=0.2))
    df = subjects.assign(split=subjects.subject_id.map(split))
    counts = df.groupby(["site", "split"]).size().unstack()
    assert counts.loc["A"].to_dict() == {"test": 8, "train": 24, "val": 8}
    assert counts.loc["B"].to_dict() == {"test": 4, "train": 12, "val": 4}
    assert counts.loc["C"].to_dict() == {"test": 2, "train": 6, "val": 2}


def test_split_is_seeded():
    s = _subjects()
    assert site_stratified_split(s, SplitConfig(seed=3)) == site_stratified_split(
        s, SplitConfig(seed=3)
    )
    assert site_stratified_split(s, SplitConfig(seed=3)) != site_stratified_split(
        s, SplitConfig(seed=4)
    )


def test_heldout_sites_are_whole_and_large_enough():
    s = _subjects()
    split, sites = heldout_sites_split(s, SplitConfig(heldout_fraction=0.2, seed=1))
    test = {k for k, v in split.items() if v == "test"}
    assert test == set(s.subject_id[s.site.isin(sites)])
    assert len(test) >= 0.2 * len(s)
    assert {v for k, v in split.items() if k not in test} == {"train", "val"}


def test_named_heldout_sites():
    split, sites = heldout_sites_split(_subjects(), SplitConfig(heldout_sites=["C"]))
    assert sites == ["C"] and sum(v == "test" for v in split.values()) == 10
    with pytest.raises(ValueError, match=r"held-out sites \['Z'\] are not in the store"):
        heldout_sites_split(_subjects(), SplitConfig(heldout_sites=["Z"]))


def test_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        SplitConfig(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        SplitConfig(test_fraction=-0.1)


def test_sessions_of_one_subject_stay_together(tmp_path):
    recs = [
        make_record(i, subject=f"s{i // 3}", session=str(i % 3), site="AB"[i // 3 % 2])
        for i in range(60)
    ]
    store = build_store(recs, tmp_path / "s", progress=False)
    for scheme in store.split_schemes:
        idx = store.split_indices(scheme)
        subj = {k: set(store.table.subject_id.iloc[v]) for k, v in idx.items()}
        assert not subj["train"] & subj["test"] and not subj["train"] & subj["val"]
        assert not subj["val"] & subj["test"]
        assert sum(len(v) for v in idx.values()) == 60
        assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(60))


def test_single_site_store_has_no_heldout_scheme_and_says_why(tmp_path):
    store = build_store(
        [make_record(i, site="only") for i in range(10)], tmp_path / "s", progress=False
    )
    assert store.split_schemes == ["site_stratified"]
    assert any("no heldout_sites split" in w for w in store.report().warnings)
    with pytest.raises(KeyError, match="split scheme 'heldout_sites' not in store"):
        store.split_indices("heldout_sites")
    with pytest.raises(ValueError, match="would leave no training site"):
        build_store(
            [make_record(i, site="only") for i in range(10)],
            tmp_path / "t",
            split=SplitConfig(heldout_sites=["only"]),
            progress=False,
        )


def test_cross_validation_folds_partition_train_and_val_and_keep_test():
    subjects = _subjects()
    parent = site_stratified_split(subjects, SplitConfig(val_fraction=0.2, test_fraction=0.2))
    folds = [cross_validation_split(parent, subjects, 3, i, seed=0) for i in range(3)]
    test = {s for s, v in parent.items() if v == "test"}
    pool = set(parent) - test
    vals = [{s for s, v in f.items() if v == "val"} for f in folds]
    for f, val in zip(folds, vals, strict=True):
        assert {s for s, v in f.items() if v == "test"} == test  # never moved into a fold
        assert {s for s, v in f.items() if v == "train"} == pool - val
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)  # each once
    # every site is spread over the folds in the same shares (within one subject)
    site = subjects.set_index("subject_id")["site"]
    for s in "ABC":
        per_fold = [sum(site[x] == s for x in val) for val in vals]
        assert max(per_fold) - min(per_fold) <= 1, per_fold
    assert max(map(len, vals)) - min(map(len, vals)) <= 1  # small sites do not pile up in fold 0
    assert folds[1] == cross_validation_split(parent, subjects, 3, 1, seed=0)  # seeded
    assert folds[1] != cross_validation_split(parent, subjects, 3, 1, seed=1)


def test_cross_validation_scheme_names_and_bad_folds():
    assert cv_scheme_name("heldout_sites", 5, 2) == "heldout_sites-cv5-fold2"
    assert parse_cv_scheme("heldout_sites-cv5-fold2") == ("heldout_sites", 5, 2)
    assert parse_cv_scheme("site_stratified") is None
    with pytest.raises(ValueError, match="fold 5 is not in \\[0, 4\\]"):
        parse_cv_scheme("site_stratified-cv5-fold5")
    with pytest.raises(ValueError, match="needs at least 2 folds, got 1"):
        cv_scheme_name("site_stratified", 1, 0)
    subjects = _subjects((2, 1, 1))
    parent = dict.fromkeys(subjects.subject_id, "train")
    with pytest.raises(ValueError, match="5 folds need at least 5 training and validation"):
        cross_validation_split(parent, subjects, 5, 0, seed=0)
    with pytest.raises(ValueError, match=r"subjects \['Z1'\] of the split have no site"):
        cross_validation_split({**parent, "Z1": "train"}, subjects, 2, 0, seed=0)
