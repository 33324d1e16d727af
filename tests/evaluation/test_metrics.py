"""Metrics with bootstrap CIs: agreement with scikit-learn, CI behaviour, input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score

from fmrilm.evaluation import (
    average_by_subject,
    classification_metrics,
    format_metrics,
    paired_bootstrap_difference,
    regression_metrics,
)
from fmrilm.evaluation import metrics as M


@pytest.fixture
def reg_data():
    rng = np.random.default_rng(0)
    y = rng.uniform(5, 50, size=200)
    p = y + rng.normal(0, 5, size=200)
    return y, p


@pytest.fixture
def clf_data():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2, size=200)
    scores = np.clip(0.5 + 0.25 * (codes - 0.5) + rng.normal(0, 0.2, size=200), 0, 1)
    labels = np.array(["control", "autism"])[codes]
    return labels, scores


def test_regression_point_estimates_match_sklearn(reg_data):
    y, p = reg_data
    m = regression_metrics(y, p, n_bootstrap=0)["metrics"]
    assert m["mae"]["value"] == pytest.approx(mean_absolute_error(y, p))
    assert m["pearson_r"]["value"] == pytest.approx(stats.pearsonr(y, p).statistic)
    assert m["r2"]["value"] == pytest.approx(r2_score(y, p))
    assert m["predicted_std_ratio"]["value"] == pytest.approx(np.std(p) / np.std(y))
    assert m["mae"]["ci_low"] is None  # no bootstrap asked


def test_vectorised_bootstrap_formulas_match_sklearn(reg_data, clf_data):
    y, p = reg_data
    idx = np.random.default_rng(3).integers(0, len(y), size=(5, len(y)))
    np.testing.assert_allclose(
        M._v_mae(y[idx], p[idx]), [mean_absolute_error(y[i], p[i]) for i in idx]
    )
    np.testing.assert_allclose(M._v_r2(y[idx], p[idx]), [r2_score(y[i], p[i]) for i in idx])
    np.testing.assert_allclose(
        M._v_pearson(y[idx], p[idx]), [stats.pearsonr(y[i], p[i]).statistic for i in idx]
    )
    labels, s = clf_data
    codes = (labels == "autism").astype(int)
    s = np.round(s, 1)  # many ties: the rank formula must count them as sklearn does
    np.testing.assert_allclose(
        M._v_binary_auc(codes[idx] == 1, s[idx]), [roc_auc_score(codes[i], s[i]) for i in idx]
    )
    np.testing.assert_allclose(
        M._v_balanced_accuracy(codes[idx], (s[idx] >= 0.5).astype(int), 2),
        [balanced_accuracy_score(codes[i], s[i] >= 0.5) for i in idx],
    )


def test_ci_contains_point_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 2000):
        y = rng.normal(size=n)
        p = 0.7 * y + rng.normal(scale=0.7, size=n)
        m = regression_metrics(y, p, n_bootstrap=500, seed=1)["metrics"]
        for name in ("mae", "pearson_r", "r2", "predicted_std_ratio"):
            assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"], name
            assert m[name]["n_valid"] == 500
        widths.append(m["mae"]["ci_high"] - m["mae"]["ci_low"])
    assert widths[1] < widths[0] / 4  # ~ 1/sqrt(n): sqrt(50) ~ 7


def test_bootstrap_is_seeded(reg_data):
    y, p = reg_data
    a = regression_metrics(y, p, n_bootstrap=100, seed=5)
    b = regression_metrics(y, p, n_bootstrap=100, seed=5)
    c = regression_metrics(y, p, n_bootstrap=100, seed=6)
    assert a == b
    assert a["metrics"]["mae"]["ci_low"] != c["metrics"]["mae"]["ci_low"]


def test_regression_drops_nan_truth_and_counts(reg_data):
    y, p = reg_data
    y = y.copy()
    y[:7] = np.nan
    out = regression_metrics(y, p, n_bootstrap=50)
    assert out["n"] == 193 and out["n_dropped_missing"] == 7
    assert out["metrics"]["mae"]["value"] == pytest.approx(mean_absolute_error(y[7:], p[7:]))


def test_per_site_breakdown(reg_data):
    y, p = reg_data
    sites = np.array(["A", "B", "C", "D"], dtype=object)[np.arange(len(y)) % 4]
    sites[-1] = "tiny"
    out = regression_metrics(y, p, sites=sites, n_bootstrap=50)
    assert set(out["per_site"]) == {"A", "B", "C", "D", "tiny"}
    a = sites == "A"
    assert out["per_site"]["A"]["n"] == a.sum()
    assert out["per_site"]["A"]["metrics"]["mae"]["value"] == pytest.approx(
        mean_absolute_error(y[a], p[a])
    )
    tiny = out["per_site"]["tiny"]["metrics"]
    assert tiny["pearson_r"]["value"] is None and tiny["mae"]["ci_low"] is None
    json.dumps(out, allow_nan=False)


def test_classification_matches_sklearn_and_is_json_ready(clf_data):
    labels, s = clf_data
    sites = np.where(np.arange(len(labels)) % 2, "X", "Y")
    out = classification_metrics(
        labels, s, labels=("control", "autism"), sites=sites, n_bootstrap=200
    )
    pos = labels == "autism"
    m = out["metrics"]
    assert m["roc_auc"]["value"] == pytest.approx(roc_auc_score(pos, s))
    assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(pos, s >= 0.5))
    assert m["roc_auc"]["ci_low"] <= m["roc_auc"]["value"] <= m["roc_auc"]["ci_high"]
    assert out["class_counts"] == {"control": int((~pos).sum()), "autism": int(pos.sum())}
    assert out["threshold"] == "p(labels[1]) >= 0.5"
    assert set(out["per_site"]) == {"X", "Y"}
    json.dumps(out, allow_nan=False)


def test_classification_two_column_probabilities_use_argmax(clf_data):
    labels, s = clf_data
    two = np.column_stack([1 - s, s])
    a = classification_metrics(labels, s, labels=["control", "autism"], n_bootstrap=0)
    b = classification_metrics(labels, two, labels=["control", "autism"], n_bootstrap=0)
    assert a["metrics"]["roc_auc"]["value"] == pytest.approx(b["metrics"]["roc_auc"]["value"])
    assert b["threshold"] == "argmax"


def test_multiclass_auc_matches_sklearn():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 3, size=150)
    logits = rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[codes]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array(["a", "b", "c"])[codes]
    out = classification_metrics(y, proba, labels=["a", "b", "c"], n_bootstrap=100)
    assert out["metrics"]["roc_auc"]["value"] == pytest.approx(
        roc_auc_score(codes, proba, multi_class="ovr")
    )
    assert out["metrics"]["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(codes, proba.argmax(1))
    )


def test_degenerate_resamples_are_skipped_and_counted():
    y = ["control"] * 9 + ["autism"]
    s = np.linspace(0.1, 0.9, 10)
    out = classification_metrics(y, s, labels=["control", "autism"], n_bootstrap=400, seed=0)
    # P(the one autism subject is not drawn) = 0.9**10 ~ 35 %
    assert 80 < out["n_degenerate"] < 200
    for name in ("balanced_accuracy", "roc_auc"):
        assert out["metrics"][name]["n_valid"] == 400 - out["n_degenerate"]


def test_classification_missing_truth_dropped_and_single_class_is_undefined():
    out = classification_metrics(
        ["male", None, np.nan, "male"],
        [0.2, 0.4, 0.5, 0.9],
        labels=["female", "male"],
        n_bootstrap=10,
    )
    assert out["n"] == 2 and out["n_dropped_missing"] == 2
    assert out["metrics"]["roc_auc"]["value"] is None


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "y_true has 3 entries but y_pred has 2"),
        ([], [], "empty"),
        ([1.0, 2.0], [1.0, np.nan], "NaN/Inf predictions"),
        ([np.nan, np.nan], [1.0, 2.0], "all NaN"),
        ([[1.0, 2.0]], [[1.0, 2.0]], "must be 1-D"),
        (["a", "b"], [1.0, 2.0], "numeric"),
    ],
)
def test_regression_input_errors(y, p, match):
    with pytest.raises(ValueError, match=match):
        regression_metrics(y, p, n_bootstrap=10)


def test_regression_sites_length_checked():
    with pytest.raises(ValueError, match="sites has 1 entries but y_true has 2"):
        regression_metrics([1.0, 2.0], [1.0, 2.0], sites=["A"])


@pytest.mark.parametrize(
    "y, s, labels, match",
    [
        (["a", "b"], [0.1], ["a", "b"], "y_true has 2 entries but scores has 1"),
        (["a", "b"], [0.1, np.nan], ["a", "b"], "NaN/Inf"),
        (["a", "z"], [0.1, 0.2], ["a", "b"], "not in labels"),
        (["a", "b"], [0.1, 1.7], ["a", "b"], r"probabilities in \[0, 1\]"),
        (["a", "b"], [0.1, 0.2], ["a"], "at least two classes"),
        (["a", "b"], [0.1, 0.2], ["a", "b", "c"], "need exactly two labels"),
        (["a", "b"], [[0.1, 0.9], [0.5, 0.5]], ["a", "b", "c"], "2 columns but there are 3"),
        ([], [], ["a", "b"], "empty"),
    ],
)
def test_classification_input_errors(y, s, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, s, labels=labels, n_bootstrap=10)


def test_bad_bootstrap_settings():
    with pytest.raises(ValueError, match="n_bootstrap must be a non-negative integer"):
        regression_metrics([1.0, 2.0], [1.0, 2.0], n_bootstrap=-1)
    with pytest.raises(ValueError, match="confidence"):
        regression_metrics([1.0, 2.0], [1.0, 2.0], confidence=1.5)


def test_paired_difference_identical_models_is_zero(reg_data):
    y, p = reg_data
    out = paired_bootstrap_difference(y, p, p, "mae", n_bootstrap=200)
    assert out["difference"] == 0 and out["ci_low"] == 0 and out["ci_high"] == 0
    assert not out["excludes_zero"] and out["better"] is None


def test_paired_difference_finds_a_real_gap(reg_data):
    y, p = reg_data
    worse = np.full_like(y, np.median(y))
    out = paired_bootstrap_difference(y, p, worse, "mae", n_bootstrap=300)
    assert out["difference"] < 0 and out["ci_high"] < 0
    assert out["better"] == "a" and out["p_value"] < 0.01
    out = paired_bootstrap_difference(y, worse, p, "pearson_r", n_bootstrap=50)
    assert out["value_a"] is None and out["difference"] is None  # constant predictions


def test_paired_difference_noise_gap_is_not_significant():
    rng = np.random.default_rng(4)
    y = rng.normal(size=100)
    a = y + rng.normal(size=100)
    b = y + rng.normal(size=100)
    out = paired_bootstrap_difference(y, a, b, "r2", n_bootstrap=300)
    assert out["ci_low"] < 0 < out["ci_high"] and out["better"] is None


def test_paired_difference_classification_and_callable(clf_data):
    labels, s = clf_data
    flat = np.full_like(s, 0.5)
    out = paired_bootstrap_difference(
        labels, s, flat, "roc_auc", labels=["control", "autism"], n_bootstrap=200
    )
    assert out["better"] == "a" and out["value_b"] == pytest.approx(0.5)
    y = (labels == "autism").astype(float)
    out = paired_bootstrap_difference(
        y, s, flat, lambda t, q: np.mean((t - q) ** 2), n_bootstrap=50
    )
    assert out["n_bootstrap"] == 50 and out["difference"] < 0


def test_paired_difference_errors(reg_data, clf_data):
    y, p = reg_data
    with pytest.raises(ValueError, match="unknown metric 'accuracy'"):
        paired_bootstrap_difference(y, p, p, "accuracy")
    labels, s = clf_data
    with pytest.raises(ValueError, match="needs labels="):
        paired_bootstrap_difference(labels, s, s, "roc_auc")
    with pytest.raises(ValueError, match="pred_b contains 1 NaN/Inf"):
        q = p.copy()
        q[0] = np.nan
        paired_bootstrap_difference(y, p, q, "mae")
    with pytest.raises(ValueError, match="at least 1"):
        paired_bootstrap_difference(y, p, p, "mae", n_bootstrap=0)


def test_average_by_subject():
    subjects, y, pred, sites, info = average_by_subject(
        ["s1", "s2", "s1", "s3"],
        [10.0, 20.0, 12.0, 30.0],
        [1.0, 2.0, 3.0, 4.0],
        sites=["A", "B", "A", "C"],
    )
    assert list(subjects) == ["s1", "s2", "s3"]
    np.testing.assert_allclose(y, [11.0, 20.0, 30.0])
    np.testing.assert_allclose(pred, [2.0, 2.0, 4.0])
    assert list(sites) == ["A", "B", "C"] and info["n_subjects"] == 3
    _, y, pred, _, info = average_by_subject(
        ["s1", "s1", "s2"], ["autism", "control", "control"], [[0.2, 0.8], [0.4, 0.6], [1, 0]]
    )
    np.testing.assert_allclose(pred, [[0.3, 0.7], [1.0, 0.0]])
    assert info["n_conflicting_labels"] == 1
    with pytest.raises(ValueError, match="differ in length"):
        average_by_subject(["s1"], [1.0, 2.0], [1.0, 2.0])


def test_format_metrics(reg_data):
    y, p = reg_data
    text = format_metrics({"model": regression_metrics(y, p, n_bootstrap=50)})
    assert "MAE" in text and "model" in text and "[" in text
