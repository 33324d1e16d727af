"""Clinical baselines on synthetic data with planted signals, a fake store, the CLI, real ABIDE."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from fmrilm.baselines import (
    ConnectivityBaseline,
    ConnectivityFeatures,
    LinearHead,
    SiteBaseline,
    TrivialBaseline,
    evaluate_clinical_baselines,
    format_table,
    run_clinical_baselines,
)
from fmrilm.baselines.clinical import infer_task, target_values

R, T = 6, 120


def planted_scans(ages, diagnoses=None, *, seed=0, r=R, t=T):
    """Scans whose ROI 0-1 correlation is linear in age (and ROI 2-3 correlated for autism)."""
    rng = np.random.default_rng(seed)
    scans = []
    for i, age in enumerate(ages):
        x = rng.standard_normal((t, r))
        rho = 0.8 * (age - 30.0) / 25.0
        x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho**2) * x[:, 1]
        if diagnoses is not None and diagnoses[i] == "autism":
            x[:, 3] = 0.7 * x[:, 2] + np.sqrt(1 - 0.49) * x[:, 3]
        scans.append(x.astype(np.float32))
    return scans


def planted_table(n=150, *, scans_per_subject=1, seed=0):
    rng = np.random.default_rng(seed)
    n_sub = n // scans_per_subject
    sub_age = rng.uniform(5, 55, size=n_sub)
    sub_dx = np.where(rng.random(n_sub) < 0.5, "autism", "control")
    sub_site = np.array(["S1", "S2", "S3"])[np.arange(n_sub) % 3]
    idx = np.repeat(np.arange(n_sub), scans_per_subject)
    table = pd.DataFrame(
        {
            "scan_id": [f"scan{i}" for i in range(len(idx))],
            "subject_id": [f"sub{j}" for j in idx],
            "site": sub_site[idx],
            "age": sub_age[idx],
            "sex": np.where(idx % 2, "male", "female").astype(object),
            "diagnosis": sub_dx[idx].astype(object),
            "phenotypes": [
                json.dumps(
                    {
                        "AGE_AT_SCAN": float(sub_age[j]),
                        "DX_GROUP": 1 + int(j % 2),
                        "ADOS": -9999 if j % 4 == 0 else float(j % 10),
                    }
                )
                for j in idx
            ],
        }
    )
    return table, planted_scans(table["age"], table["diagnosis"], seed=seed)


def split_by_subject(table, test_fraction=0.3, seed=0):
    subjects = table["subject_id"].unique()
    rng = np.random.default_rng(seed)
    test_sub = set(rng.choice(subjects, int(len(subjects) * test_fraction), replace=False))
    is_test = table["subject_id"].isin(test_sub).to_numpy()
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


# --------------------------------------------------------------------------- trivial / site


def test_trivial_baseline_regression_and_classification():
    est = TrivialBaseline().fit([0] * 5, [1.0, 2.0, 3.0, 10.0, 20.0])
    assert est.task_ == "regression"
    np.testing.assert_array_equal(est.predict([0, 0]), [3.0, 3.0])
    est = TrivialBaseline().fit(np.zeros(4), ["a", "b", "b", "b"])
    assert est.task_ == "classification" and list(est.predict([0, 0])) == ["b", "b"]
    np.testing.assert_allclose(est.predict_proba([0]), [[0.25, 0.75]])
    with pytest.raises(AttributeError, match="only available for classification"):
        TrivialBaseline().fit([0, 0, 0], [1.0, 2.0, 4.0]).predict_proba([0])


def test_site_baseline_recovers_site_means_exactly():
    rng = np.random.default_rng(0)
    sites = np.array(["A", "B", "C"])[rng.integers(0, 3, size=90)]
    y = {"A": 10.0, "B": 20.0, "C": 30.0}
    y = np.array([y[s] for s in sites]) + rng.normal(0, 1, size=90)
    est = SiteBaseline().fit(sites, y)
    for s in "ABC":
        assert est.site_values_[s] == pytest.approx(y[sites == s].mean(), abs=1e-12)
    pred = est.predict(np.array(["C", "A"]))
    np.testing.assert_allclose(pred, [y[sites == "C"].mean(), y[sites == "A"].mean()])
    assert est.n_fallback_ == 0
    est2 = SiteBaseline().fit(pd.DataFrame({"site": sites}), y)  # DataFrame input
    assert est2.site_values_ == est.site_values_


def test_site_baseline_fallback_is_counted_and_warned():
    est = SiteBaseline().fit(["A", "A", "B"], [1.0, 3.0, 10.0])
    with pytest.warns(UserWarning, match=r"2 of 3 samples are from 1 site\(s\) not seen"):
        pred = est.predict(["Z", "A", "Z"])
    np.testing.assert_allclose(pred, [14 / 3, 2.0, 14 / 3])
    assert est.n_fallback_ == 2 and est.fallback_sites_ == ["Z"]


def test_site_baseline_classification_shares():
    est = SiteBaseline().fit(["A", "A", "A", "B"], ["x", "x", "y", "y"])
    np.testing.assert_allclose(est.predict_proba(["A", "B"]), [[2 / 3, 1 / 3], [0, 1]])
    assert list(est.predict(["A", "B"])) == ["x", "y"]
    with pytest.warns(UserWarning, match="global training class shares"):
        np.testing.assert_allclose(est.predict_proba(["C"]), [[0.5, 0.5]])


@pytest.mark.parametrize(
    "est, X, y, match",
    [
        (TrivialBaseline(), [0, 0], [1.0], "X has 2 samples but y has 1"),
        (TrivialBaseline(), [], [], "y is empty"),
        (TrivialBaseline(), [0, 0], [1.0, np.nan], "1 missing values"),
        (TrivialBaseline(task="nope"), [0], [1.0], "task must be"),
        (TrivialBaseline(task="regression"), [0, 0], ["a", "b"], "must be numeric"),
        (SiteBaseline(), ["A", None], [1.0, 2.0], "sites contain missing"),
        (SiteBaseline(), pd.DataFrame({"x": [1]}), [1.0], "needs a 'site' column"),
    ],
)
def test_simple_baselines_input_errors(est, X, y, match):
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)


def test_infer_task():
    assert infer_task([1.5, 2.5, 3.0, np.nan]) == "regression"
    assert infer_task(["male", None, "female"]) == "classification"
    assert infer_task([1, 2, 2, 1]) == "classification"  # DX_GROUP-style codes
    with pytest.raises(ValueError, match="no non-missing"):
        infer_task([None, np.nan])


# --------------------------------------------------------------------------- connectivity


@pytest.fixture(scope="module")
def age_data():
    rng = np.random.default_rng(1)
    ages = rng.uniform(5, 55, size=160)
    return planted_scans(ages, seed=1, t=200), ages


@pytest.mark.parametrize("kind", ["correlation", "tangent"])
def test_connectivity_ridge_finds_planted_age_signal(age_data, kind):
    scans, ages = age_data
    tr, te = slice(0, 110), slice(110, None)
    est = ConnectivityBaseline(kind=kind, model="ridge").fit(scans[tr], ages[tr])
    mae = np.abs(est.predict(scans[te]) - ages[te]).mean()
    trivial = np.abs(TrivialBaseline().fit(scans[tr], ages[tr]).predict(scans[te]) - ages[te])
    assert mae < 0.4 * trivial.mean(), (mae, trivial.mean())
    assert np.isfinite(est.alpha_) and not est.at_grid_edge_


def test_connectivity_logistic_finds_planted_diagnosis():
    rng = np.random.default_rng(2)
    dx = np.where(rng.random(140) < 0.4, "autism", "control")  # unbalanced on purpose
    scans = planted_scans(np.full(140, 30.0), dx, seed=2)
    est = ConnectivityBaseline(model="logistic", Cs=(1e-3, 1e-2, 1e-1, 1.0), cv=3)
    est.fit(scans[:100], dx[:100])
    proba = est.predict_proba(scans[100:])
    assert list(est.classes_) == ["autism", "control"] and proba.shape == (40, 2)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(dx[100:] == "autism", proba[:, 0]) > 0.9
    assert (est.predict(scans[100:]) == dx[100:]).mean() > 0.8


def test_tangent_reference_uses_training_scans_only(age_data):
    scans, _ = age_data
    a = ConnectivityFeatures("tangent").fit(scans[:50])
    b = ConnectivityFeatures("tangent").fit(scans[:50] + scans[100:])
    fa, fb = a.transform(scans[50:60]), b.transform(scans[50:60])
    assert not np.allclose(fa, fb)  # the reference depends on the fitting scans
    np.testing.assert_allclose(
        fa, ConnectivityFeatures("tangent").fit(scans[:50]).transform(scans[50:60])
    )


@pytest.mark.parametrize("kind", ["correlation", "tangent"])
def test_constant_roi_features_are_missing_then_imputed(age_data, kind):
    scans, ages = age_data
    scans = [s.copy() for s in scans]
    for i in range(0, 160, 5):
        scans[i][:, 4] = 0.0  # ROI outside the functional mask in every 5th scan
    scans[10][:, 5] = 0.0
    fe = ConnectivityFeatures(kind).fit(scans)
    F = fe.transform(scans)
    n_pairs = R * (R - 1) // 2
    assert F.shape == (160, n_pairs)
    assert np.isnan(F[0]).sum() == R - 1  # every pair with ROI 4
    assert np.isnan(F[10]).sum() == 2 * (R - 1) - 1  # pairs with ROI 4 or 5
    assert not np.isnan(F[1]).any()
    assert fe.n_constant_ == 33
    est = ConnectivityBaseline(kind=kind).fit(scans[:110], ages[:110])
    pred = est.predict(scans[110:])
    assert np.isfinite(pred).all()
    assert np.abs(pred - ages[110:]).mean() < 6


def test_feature_missing_in_every_training_scan_is_zero_filled(age_data):
    scans, ages = age_data
    scans = [s.copy() for s in scans[:60]]
    for s in scans:
        s[:, 5] = 0.0
    est = ConnectivityBaseline().fit(scans[:40], ages[:40])
    assert np.isfinite(est.predict(scans[40:])).all()


def test_fit_from_features_equals_fit(age_data):
    scans, ages = age_data
    a = ConnectivityBaseline().fit(scans[:80], ages[:80])
    fe = ConnectivityFeatures().fit(scans[:80])
    b = ConnectivityBaseline().fit_from_features(fe, fe.transform(scans[:80]), ages[:80])
    np.testing.assert_allclose(a.predict(scans[80:100]), b.predict(scans[80:100]))


def test_linear_head_is_the_connectivity_head(age_data):
    scans, ages = age_data
    fe = ConnectivityFeatures().fit(scans[:80])
    F_train, F_test = fe.transform(scans[:80]), fe.transform(scans[80:100])
    head = LinearHead().fit(F_train, ages[:80])
    full = ConnectivityBaseline().fit(scans[:80], ages[:80])
    np.testing.assert_allclose(head.predict(F_test), full.predict(scans[80:100]))
    assert head.alpha_ == full.alpha_


def test_linear_head_probes_any_features_with_subject_folds():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(60), 3)  # three windows per subject
    age = rng.uniform(8, 40, 60)[subjects]
    F = rng.normal(size=(180, 50))
    F[:, 0] += 3 * (age - age.mean()) / age.std()
    F[:, 1] = np.nan  # a column missing everywhere is imputed, not fatal
    head = LinearHead().fit(F[:120], age[:120], groups=subjects[:120])
    assert np.corrcoef(head.predict(F[120:]), age[120:])[0, 1] > 0.8
    sex = np.where(F[:, 0] + 0.3 * rng.normal(size=180) > 0, "male", "female")
    clf = LinearHead(model="logistic").fit(F[:120], sex[:120], groups=subjects[:120])
    proba = clf.predict_proba(F[120:])
    assert proba.shape == (60, 2) and list(clf.classes_) == ["female", "male"]
    assert np.mean(clf.predict(F[120:]) == sex[120:]) > 0.7
    with pytest.raises(ValueError, match="must be 2-D"):
        LinearHead().fit(F[:, 0], age)
    with pytest.raises(ValueError, match="at least two classes"):
        LinearHead(model="logistic").fit(F[:10], ["male"] * 10)


def test_repeated_subjects_use_group_inner_cv(age_data):
    scans, ages = age_data
    groups = np.repeat(np.arange(40), 2)
    est = ConnectivityBaseline().fit(scans[:80], ages[:80], groups=groups)
    assert np.isfinite(est.alpha_)
    with pytest.raises(ValueError, match="groups has 3 entries"):
        ConnectivityBaseline().fit(scans[:80], ages[:80], groups=[1, 2, 3])


@pytest.mark.parametrize(
    "kwargs, X, y, match",
    [
        ({}, [], [], "X is empty"),
        ({}, [np.zeros((10, 4)), np.zeros((10, 5))], [1.0, 2.0], "5 ROIs, expected 4"),
        ({}, [np.full((10, 4), np.nan)], [1.0], "NaN/Inf"),
        ({}, [np.zeros(10)], [1.0], r"must be 2-D \(T, R\)"),
        ({}, np.zeros((10, 4)), [1.0], "got a single 2-D array"),
        ({}, [np.ones((2, 4))], [1.0], "need at least 3"),
        ({}, [np.ones((10, 4))] * 2, [1.0], "X has 2 samples but y has 1"),
        ({"kind": "partial"}, [np.ones((10, 4))], [1.0], "kind must be"),
        ({"model": "svm"}, [np.ones((10, 4))], [1.0], "model must be"),
        ({"model": "ridge"}, [np.ones((10, 4))] * 2, ["a", "b"], "must be numeric"),
    ],
)
def test_connectivity_input_errors(kwargs, X, y, match):
    with pytest.raises(ValueError, match=match):
        ConnectivityBaseline(**kwargs).fit(X, y)


# --------------------------------------------------------------------------- runner


def test_target_values_from_columns_and_phenotypes():
    table, _ = planted_table(12)
    assert target_values(table, "age").dtype == float
    ados = target_values(table, "ADOS")
    assert ados.isna().sum() == 3  # -9999 is missing
    dx_group = target_values(table, "DX_GROUP")
    assert list(dx_group[:2]) == [1.0, 2.0] and infer_task(dx_group) == "classification"
    with pytest.raises(KeyError, match="neither a table column nor a phenotype key"):
        target_values(table, "NOPE")


@pytest.fixture(scope="module")
def evaluated():
    table, scans = planted_table(150, scans_per_subject=2)
    train, test = split_by_subject(table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent warnings from the runner
        res = evaluate_clinical_baselines(
            table,
            scans,
            train,
            test,
            targets=("age", "diagnosis", "ADOS"),
            connectivity_options={"Cs": (1e-3, 1e-2, 1e-1), "cv": 3},
            n_bootstrap=200,
        )
    return table, test, res


def test_runner_structure_and_planted_signal(evaluated):
    table, test, res = evaluated
    json.dumps(res, allow_nan=False)
    age = res["targets"]["age"]
    assert age["task"] == "regression" and age["n_eval_subjects"] == len(test) // 2
    assert set(age["results"]) == {
        "trivial",
        "site",
        "connectivity_correlation",
        "connectivity_tangent",
    }
    mae = {b: r["metrics"]["mae"]["value"] for b, r in age["results"].items()}
    assert mae["connectivity_correlation"] < 0.5 * mae["trivial"]
    assert age["vs_trivial"]["connectivity_correlation"]["better"] == "a"
    assert age["results"]["site"]["fit"]["n_fallback"] == 0
    assert set(age["results"]["trivial"]["per_site"]) == {"S1", "S2", "S3"}
    dx = res["targets"]["diagnosis"]
    assert dx["labels"] == ["control", "autism"]
    assert dx["results"]["connectivity_correlation"]["metrics"]["roc_auc"]["value"] > 0.9
    assert dx["results"]["trivial"]["metrics"]["roc_auc"]["value"] == pytest.approx(0.5)
    assert res["targets"]["ADOS"]["n_train_missing"] > 0


def test_runner_averages_scans_per_subject(evaluated):
    table, test, res = evaluated
    assert res["targets"]["age"]["n_eval_scans"] == len(test)
    assert res["targets"]["age"]["results"]["trivial"]["n"] == len(test) // 2


def test_format_table(evaluated):
    text = format_table(evaluated[2])
    assert "age (regression" in text and "connectivity_tangent" in text
    assert "vs trivial" in text and "MAE" in text and "ROC AUC" in text
    with pytest.raises(ValueError, match="no 'targets'"):
        format_table({})


def test_runner_rejects_bad_splits_and_targets():
    table, scans = planted_table(30)
    with pytest.raises(ValueError, match="in both train and test"):
        evaluate_clinical_baselines(table, scans, np.arange(20), np.arange(15, 30))
    with pytest.raises(ValueError, match="unknown baseline"):
        evaluate_clinical_baselines(
            table, scans, np.arange(20), np.arange(20, 30), baselines=("magic",)
        )
    with pytest.raises(ValueError, match="neither a table column"):
        evaluate_clinical_baselines(
            table,
            scans,
            np.arange(20),
            np.arange(20, 30),
            targets=("NOPE",),
            baselines=("trivial",),
        )
    with pytest.raises(ValueError, match="connectivity_options has unknown keys"):
        evaluate_clinical_baselines(
            table, scans, np.arange(20), np.arange(20, 30), connectivity_options={"C": 1}
        )
    with pytest.raises(ValueError, match="test_idx is empty"):
        evaluate_clinical_baselines(table, scans, np.arange(20), np.array([], dtype=int))


class FakeStore:
    """The DatasetStore reading API, backed by arrays."""

    def __init__(self, table, scans, splits):
        self.table, self._scans, self._splits, self.path = table, scans, splits, "fake"

    def __len__(self):
        return len(self._scans)

    def timeseries(self, i):
        return self._scans[i]

    def split_indices(self, scheme="site_stratified"):
        return self._splits[scheme]


@pytest.fixture(scope="module")
def fake_store():
    table, scans = planted_table(90)
    train, test = split_by_subject(table)
    held = np.flatnonzero(table["site"] == "S3")
    rest = np.flatnonzero(table["site"] != "S3")
    splits = {
        "site_stratified": {"train": train, "val": np.array([], int), "test": test},
        "heldout_sites": {"train": rest, "val": np.array([], int), "test": held},
    }
    return FakeStore(table, scans, splits)


def test_run_clinical_baselines_on_store_api(fake_store):
    res = run_clinical_baselines(fake_store, baselines=("trivial", "site"), n_bootstrap=50)
    assert res["scheme"] == "site_stratified" and res["eval_split"] == "test"
    assert set(res["targets"]) == {"age", "sex", "diagnosis"}
    res = run_clinical_baselines(
        fake_store,
        scheme="heldout_sites",
        targets=("age",),
        baselines=("trivial", "site"),
        n_bootstrap=50,
    )
    site = res["targets"]["age"]["results"]["site"]
    assert site["fit"]["n_fallback"] == 30 and site["fit"]["fallback_sites"] == ["S3"]
    assert "30 scans from unseen sites" in format_table(res)
    with pytest.raises(ValueError, match="split 'dev' not in scheme"):
        run_clinical_baselines(fake_store, train_splits=("dev",))


def test_leave_one_site_out(fake_store):
    res = run_clinical_baselines(
        fake_store,
        leave_one_site_out=True,
        targets=("age",),
        baselines=("trivial", "site", "connectivity_correlation"),
        n_bootstrap=50,
    )
    json.dumps(res, allow_nan=False)
    assert res["scheme"] == "leave_one_site_out"
    assert [f["site"] for f in res["folds"]] == ["S1", "S2", "S3"]
    age = res["targets"]["age"]
    assert age["n_eval_subjects"] == 90 and set(age["results"]["site"]["per_site"]) == {
        "S1",
        "S2",
        "S3",
    }
    assert age["results"]["site"]["fit"]["n_fallback"] == 90  # every site is unseen once
    assert (
        age["results"]["connectivity_correlation"]["metrics"]["mae"]["value"]
        < age["results"]["trivial"]["metrics"]["mae"]["value"]
    )


# --------------------------------------------------------------------------- CLI and real data


def test_cli_on_sample_store(sample_store, tmp_path, capsys):
    from fmrilm.cli import baselines as cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "res" / "baselines.json"
    args = parser.parse_args(
        [
            "baselines",
            str(sample_store.path),
            "--targets",
            "age,sex",
            "--baselines",
            "trivial,site",
            "--n-bootstrap",
            "20",
            "--out",
            str(out),
        ]
    )
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "age (regression" in printed and f"wrote {out}" in printed
    res = json.loads(out.read_text())
    assert set(res["targets"]) | set(res["skipped_targets"]) == {"age", "sex"}
    from fmrilm.cli import main

    assert main(["baselines", str(tmp_path / "missing")]) == 2  # wired into `fmrilm`
    args = parser.parse_args(["baselines", str(tmp_path / "missing")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        args.run(args)


@pytest.mark.slow
def test_real_abide_site_and_connectivity_baselines(shared_data):
    """Three real ABIDE sites: the site-only baseline beats the median on age (sites differ in
    age range), and every number is finite and JSON-ready."""
    from fmrilm.data.abide import abide_record

    ph = pd.read_csv(
        shared_data / "Phenotypic_V1_0b_preprocessed1.csv", dtype=str, keep_default_na=False
    )
    npz = np.load(shared_data / "abide_pcp_cc200.npz")
    rows = ph[ph["SITE_ID"].isin(["CALTECH", "OHSU", "SBL"]) & ph["FILE_ID"].isin(npz.files)]
    records = [
        abide_record(r, (npz[r["FILE_ID"]] * 1e-6).astype(np.float32), r["FILE_ID"])
        for _, r in rows.iterrows()
    ]
    table = pd.DataFrame(
        {
            "subject_id": [r.subject_id for r in records],
            "site": [r.site for r in records],
            "age": [r.age for r in records],
            "sex": [r.sex for r in records],
            "diagnosis": [r.diagnosis for r in records],
            "phenotypes": ["{}"] * len(records),
        }
    )
    scans = [r.timeseries[:, :60] for r in records]  # 60 ROIs keep it fast
    assert len(scans) == 66
    train, test = split_by_subject(table, test_fraction=0.4, seed=0)
    res = evaluate_clinical_baselines(
        table,
        scans,
        train,
        test,
        targets=("age", "diagnosis"),
        baselines=("trivial", "site", "connectivity_correlation"),
        connectivity_options={"Cs": (1e-3, 1e-2, 1e-1), "cv": 3},
        n_bootstrap=200,
    )
    json.dumps(res, allow_nan=False)
    assert res["targets"]["diagnosis"]["labels"] == ["control", "autism"]
    mae = {b: r["metrics"]["mae"]["value"] for b, r in res["targets"]["age"]["results"].items()}
    assert mae["site"] < mae["trivial"]
    assert all(np.isfinite(v) for v in mae.values())


def test_logistic_rotation_onto_training_span_is_exact():
    """The PCA step used when features outnumber scans must not change the model."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    F = rng.normal(size=(40, 300))
    y = (F[:, 0] + rng.normal(size=40) > 0).astype(int)
    Ft = rng.normal(size=(10, 300))
    kw = {"C": 0.05, "class_weight": "balanced", "tol": 1e-10, "max_iter": 10000}
    plain = make_pipeline(StandardScaler(), LogisticRegression(**kw)).fit(F, y)
    rotated = make_pipeline(StandardScaler(), PCA(svd_solver="full"), LogisticRegression(**kw))
    rotated.fit(F, y)
    np.testing.assert_allclose(rotated.predict_proba(Ft), plain.predict_proba(Ft), atol=1e-6)


def test_platt_calibration_keeps_auc_and_fixes_the_threshold():
    """Unbalanced classes, features >> scans: raw probabilities sit on one side of 0.5 out of
    sample; inner out-of-fold Platt scaling keeps the ranking and restores balanced accuracy."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    dx = np.where(rng.random(260) < 0.15, "autism", "control")
    scans = planted_scans(np.full(260, 30.0), dx, seed=0, r=25, t=60)
    fe = ConnectivityFeatures().fit(scans[:160])
    F, Ft = fe.transform(scans[:160]), fe.transform(scans[160:])
    res = {}
    for calibrate in (False, True):
        est = ConnectivityBaseline(model="logistic", Cs=(1e-2,), cv=3, calibrate=calibrate)
        est.fit_from_features(fe, F, dx[:160])
        proba = est.predict_proba_from_features(Ft)[:, 0]
        pred = est.predict_from_features(Ft)
        assert np.allclose(est.predict_proba_from_features(Ft).sum(1), 1)
        res[calibrate] = (
            roc_auc_score(dx[160:] == "autism", proba),
            balanced_accuracy_score(dx[160:], pred),
            est.calibration_status_,
        )
    assert res[True][0] == pytest.approx(res[False][0])  # increasing map: same ranking
    assert res[True][1] > res[False][1] + 0.1, res
    assert res[False][2] == "off" and res[True][2] == "platt"
