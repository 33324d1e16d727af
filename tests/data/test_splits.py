import numpy as np
import pandas as pd
import pytest

from fmrilm.data import SplitConfig, build_store
from fmrilm.data.splits import heldout_sites_split, site_stratified_split
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
