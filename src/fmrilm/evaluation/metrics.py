"""Metrics with bootstrap confidence intervals for clinical predictions.

Every function here takes one row per **subject**: the bootstrap resamples rows, so rows must be
independent units. When a subject has several scans, average the per-scan predictions first with
:func:`average_by_subject`.

Point estimates are computed with scikit-learn / SciPy. The bootstrap distribution is computed with
vectorised NumPy formulas that are identical to them (this is tested), so that 1000 resamples of a
few hundred subjects take milliseconds. Confidence intervals are percentile intervals.

A bootstrap resample on which a metric is undefined (every subject of one class for balanced
accuracy and ROC AUC, constant truth for Pearson r and R^2) is *skipped and counted*, never
silently replaced: see ``n_degenerate`` and each metric's ``n_valid``.

All returned dictionaries are JSON-ready (plain ``float``/``int``/``str``/``None``; undefined
values are ``None``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import (
    balanced_accuracy_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)

__all__ = [
    "REGRESSION_METRICS",
    "CLASSIFICATION_METRICS",
    "LOWER_IS_BETTER",
    "regression_metrics",
    "classification_metrics",
    "paired_bootstrap_difference",
    "average_by_subject",
]

REGRESSION_METRICS = ("mae", "pearson_r", "r2", "predicted_std_ratio")
CLASSIFICATION_METRICS = ("balanced_accuracy", "roc_auc")
#: Metrics for which a smaller value is better (used to say which model of a pair wins).
LOWER_IS_BETTER = frozenset({"mae"})

# A per-site breakdown skips the bootstrap for sites with fewer subjects than this.
_MIN_SITE_BOOTSTRAP = 5


# --------------------------------------------------------------------------- input checks


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _as_1d(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be a 1-D sequence, got a scalar")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check_n_bootstrap(n_bootstrap: int, confidence: float) -> None:
    if not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _check_sites(sites: Any, n: int) -> np.ndarray | None:
    if sites is None:
        return None
    arr = _as_1d(sites, "sites")
    if len(arr) != n:
        raise ValueError(f"sites has {len(arr)} entries but y_true has {n}")
    return arr.astype(str)


def _regression_inputs(y_true: Any, y_pred: Any, name: str = "y_pred"):
    y = _as_1d(y_true, "y_true")
    p = _as_1d(y_pred, name)
    if len(y) != len(p):
        raise ValueError(f"y_true has {len(y)} entries but {name} has {len(p)}")
    if len(y) == 0:
        raise ValueError("y_true is empty: nothing to evaluate")
    try:
        y = y.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"y_true must be numeric for regression metrics: {err}") from None
    try:
        p = p.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric: {err}") from None
    if not np.isfinite(p).all():
        bad = int((~np.isfinite(p)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf predictions; predictions must be finite")
    if np.isinf(y).any():
        raise ValueError("y_true contains Inf values")
    keep = ~np.isnan(y)
    return y, p, keep


def _encode_labels(y_true: Any, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Return (codes, keep): integer codes into ``labels`` and a mask of non-missing truth."""
    y = _as_1d(np.asarray(y_true, dtype=object), "y_true")
    keep = np.array([not _is_missing(v) for v in y], dtype=bool)
    lookup = {label: i for i, label in enumerate(labels)}
    codes = np.full(len(y), -1, dtype=np.int64)
    unknown = set()
    for i in np.flatnonzero(keep):
        try:
            codes[i] = lookup[y[i]]
        except (KeyError, TypeError):
            unknown.add(repr(y[i]))
    if unknown:
        raise ValueError(
            f"y_true has values not in labels {list(labels)!r}: {', '.join(sorted(unknown)[:5])}"
        )
    return codes, keep


def _classification_inputs(y_true: Any, scores: Any, labels: Sequence, name: str = "scores"):
    if labels is None or len(labels) < 2:
        raise ValueError(f"labels must list at least two classes, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {list(labels)!r}")
    codes, keep = _encode_labels(y_true, labels)
    s = np.asarray(scores)
    if s.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (n,) or 2-D (n, n_labels), got shape {s.shape}")
    if len(s) != len(codes):
        raise ValueError(f"y_true has {len(codes)} entries but {name} has {len(s)}")
    if len(codes) == 0:
        raise ValueError("y_true is empty: nothing to evaluate")
    try:
        s = s.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric probabilities: {err}") from None
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf values; predictions must be finite")
    if s.ndim == 1:
        if len(labels) != 2:
            raise ValueError(
                f"1-D {name} are the probability of labels[1] and need exactly two labels; "
                f"got {len(labels)} labels: pass {name} of shape (n, {len(labels)})"
            )
    elif s.shape[1] != len(labels):
        raise ValueError(f"{name} has {s.shape[1]} columns but there are {len(labels)} labels")
    if (s < 0).any() or (s > 1).any():
        raise ValueError(
            f"{name} must be probabilities in [0, 1] (the 1-D threshold is 0.5); "
            f"got values in [{s.min():.3g}, {s.max():.3g}]"
        )
    return codes, s, keep


# --------------------------------------------------------------------------- vectorised metrics
# Each takes (B, n) arrays (one bootstrap resample per row) and returns (B,) with NaN where the
# metric is undefined on that resample.


def _v_mae(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.abs(y - p).mean(axis=1)


def _v_pearson(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    yc = y - y.mean(axis=1, keepdims=True)
    pc = p - p.mean(axis=1, keepdims=True)
    sy = np.sqrt((yc**2).sum(axis=1))
    sp = np.sqrt((pc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (yc * pc).sum(axis=1) / (sy * sp)
    r[(sy <= 1e-12 * np.maximum(1.0, np.abs(y).max(axis=1))) | (sp == 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _v_r2(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    ss_res = ((y - p) ** 2).sum(axis=1)
    ss_tot = ((y - y.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    r2[ss_tot == 0] = np.nan
    return r2


def _v_std_ratio(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    sy = y.std(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = p.std(axis=1) / sy
    ratio[sy == 0] = np.nan
    return ratio


def _predict_codes(s: np.ndarray, binary_scores: bool) -> np.ndarray:
    if binary_scores:
        return (s >= 0.5).astype(np.int64)
    return np.argmax(s, axis=-1)


def _v_balanced_accuracy(codes: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    recalls = np.empty((codes.shape[0], k))
    present = np.ones(codes.shape[0], dtype=bool)
    for c in range(k):
        is_c = codes == c
        n_c = is_c.sum(axis=1)
        present &= n_c > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls[:, c] = (is_c & (pred == c)).sum(axis=1) / n_c
    out = recalls.mean(axis=1)
    out[~present] = np.nan
    return out


def _v_binary_auc(is_pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row, ties counted as one half (identical to sklearn's roc_auc_score)."""
    ranks = stats.rankdata(score, axis=1)
    n_pos = is_pos.sum(axis=1)
    n_neg = is_pos.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * is_pos).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _v_auc(codes: np.ndarray, s: np.ndarray, k: int, binary_scores: bool) -> np.ndarray:
    if binary_scores:
        return _v_binary_auc(codes == 1, s)
    if k == 2:
        return _v_binary_auc(codes == 1, s[..., 1])
    # one-vs-rest, macro average (sklearn's multi_class="ovr", average="macro")
    return np.mean([_v_binary_auc(codes == c, s[..., c]) for c in range(k)], axis=0)


# --------------------------------------------------------------------------- point estimates


def _float(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _point_regression(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    out: dict[str, float | None] = {"mae": _float(mean_absolute_error(y, p))}
    constant_y = len(y) < 2 or np.ptp(y) == 0
    constant_p = len(p) < 2 or np.ptp(p) == 0
    out["pearson_r"] = None if constant_y or constant_p else _float(stats.pearsonr(y, p).statistic)
    out["r2"] = None if constant_y else _float(r2_score(y, p))
    out["predicted_std_ratio"] = None if constant_y else _float(np.std(p) / np.std(y))
    return out


def _point_classification(
    codes: np.ndarray, s: np.ndarray, k: int, binary_scores: bool
) -> dict[str, float | None]:
    present = np.unique(codes)
    if len(present) < k:
        return {"balanced_accuracy": None, "roc_auc": None}
    pred = _predict_codes(s, binary_scores)
    ba = balanced_accuracy_score(codes, pred)
    if binary_scores:
        auc = roc_auc_score(codes == 1, s)
    elif k == 2:
        auc = roc_auc_score(codes == 1, s[:, 1])
    else:
        auc = roc_auc_score(codes, s, multi_class="ovr", average="macro", labels=np.arange(k))
    return {"balanced_accuracy": _float(ba), "roc_auc": _float(auc)}


# --------------------------------------------------------------------------- bootstrap core


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None, None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _bootstrap_indices(n: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(n_bootstrap, n))


def _summaries(
    point: dict[str, float | None],
    boot: dict[str, np.ndarray],
    confidence: float,
) -> dict[str, dict[str, Any]]:
    out = {}
    for name, value in point.items():
        values = boot.get(name)
        if values is None or value is None:
            lo = hi = None
            n_valid = 0 if values is None else int(np.isfinite(values).sum())
        else:
            lo, hi = _percentile_ci(values, confidence)
            n_valid = int(np.isfinite(values).sum())
        out[name] = {"value": value, "ci_low": lo, "ci_high": hi, "n_valid": n_valid}
    return out


def _regression_core(
    y: np.ndarray, p: np.ndarray, n_bootstrap: int, rng: np.random.Generator, confidence: float
) -> dict[str, Any]:
    point = _point_regression(y, p)
    boot: dict[str, np.ndarray] = {}
    n_degenerate = 0
    if n_bootstrap > 0 and len(y) >= 2:
        idx = _bootstrap_indices(len(y), n_bootstrap, rng)
        yb, pb = y[idx], p[idx]
        boot = {
            "mae": _v_mae(yb, pb),
            "pearson_r": _v_pearson(yb, pb),
            "r2": _v_r2(yb, pb),
            "predicted_std_ratio": _v_std_ratio(yb, pb),
        }
        n_degenerate = int(np.isnan(boot["r2"]).sum())  # constant truth on that resample
    metrics = _summaries(point, boot, confidence)
    return {"n": len(y), "metrics": metrics, "n_degenerate": n_degenerate}


def _classification_core(
    codes: np.ndarray,
    s: np.ndarray,
    k: int,
    n_bootstrap: int,
    rng: np.random.Generator,
    confidence: float,
) -> dict[str, Any]:
    binary_scores = s.ndim == 1
    point = _point_classification(codes, s, k, binary_scores)
    boot: dict[str, np.ndarray] = {}
    n_degenerate = 0
    if n_bootstrap > 0 and len(codes) >= 2 and point["balanced_accuracy"] is not None:
        idx = _bootstrap_indices(len(codes), n_bootstrap, rng)
        cb, sb = codes[idx], s[idx]
        ba = _v_balanced_accuracy(cb, _predict_codes(sb, binary_scores), k)
        degenerate = np.isnan(ba)  # some class absent from the resample
        n_degenerate = int(degenerate.sum())
        auc = _v_auc(cb, sb, k, binary_scores)
        auc[degenerate] = np.nan
        boot = {"balanced_accuracy": ba, "roc_auc": auc}
    metrics = _summaries(point, boot, confidence)
    counts = np.bincount(codes, minlength=k)
    return {"n": len(codes), "metrics": metrics, "n_degenerate": n_degenerate, "counts": counts}


def _site_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1 + i])


# --------------------------------------------------------------------------- public API


def regression_metrics(
    y_true: Any,
    y_pred: Any,
    *,
    sites: Any = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Regression metrics with percentile bootstrap confidence intervals.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        True values, one per subject. NaN entries are dropped and counted.
    y_pred : array-like of shape (n,)
        Predictions; must be finite.
    sites : array-like of shape (n,), optional
        Site of each subject; adds a per-site breakdown (with its own bootstrap for sites with at
        least 5 subjects).
    n_bootstrap : int, default=1000
        Bootstrap resamples of subjects (0 turns confidence intervals off).
    seed : int, default=0
        Seed of the resampling.
    confidence : float, default=0.95
        Confidence level of the percentile intervals.

    Returns
    -------
    dict
        ``{"task": "regression", "n", "n_dropped_missing", "n_bootstrap", "n_degenerate",
        "confidence", "metrics": {name: {"value", "ci_low", "ci_high", "n_valid"}},
        "per_site": {site: {...}} (when ``sites`` is given)}`` where the metric names are
        ``mae``, ``pearson_r``, ``r2`` (:func:`sklearn.metrics.r2_score`) and
        ``predicted_std_ratio`` (std of predictions / std of truth: well below 1 means the
        model shrinks towards the mean). ``n_degenerate`` counts resamples with constant truth
        (skipped for r and R^2). Undefined values are None.

    Raises
    ------
    ValueError
        If the inputs differ in length, are empty (also after dropping missing truth), are not
        numeric, or if any prediction is NaN/Inf.
    """
    _check_n_bootstrap(n_bootstrap, confidence)
    y, p, keep = _regression_inputs(y_true, y_pred)
    site_arr = _check_sites(sites, len(y))
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise ValueError(f"y_true is all NaN ({n_dropped} values): nothing to evaluate")
    y, p = y[keep], p[keep]
    core = _regression_core(y, p, n_bootstrap, np.random.default_rng(seed), confidence)
    out: dict[str, Any] = {
        "task": "regression",
        "n": core["n"],
        "n_dropped_missing": n_dropped,
        "n_bootstrap": int(n_bootstrap),
        "n_degenerate": core["n_degenerate"],
        "confidence": confidence,
        "metrics": core["metrics"],
    }
    if site_arr is not None:
        site_arr = site_arr[keep]
        per_site = {}
        for i, site in enumerate(sorted(set(site_arr))):
            m = site_arr == site
            b = n_bootstrap if m.sum() >= _MIN_SITE_BOOTSTRAP else 0
            c = _regression_core(y[m], p[m], b, _site_rng(seed, i), confidence)
            per_site[str(site)] = {
                "n": c["n"],
                "n_degenerate": c["n_degenerate"],
                "metrics": c["metrics"],
            }
        out["per_site"] = per_site
    return out


def classification_metrics(
    y_true: Any,
    scores: Any,
    *,
    labels: Sequence,
    sites: Any = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Balanced accuracy and ROC AUC with percentile bootstrap confidence intervals.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        True labels, one per subject, each in ``labels``. Missing entries (None/NaN) are dropped
        and counted.
    scores : array-like of shape (n,) or (n, n_labels)
        Probabilities. 1-D: probability of ``labels[1]`` (two labels only), thresholded at 0.5
        for balanced accuracy. 2-D: one column per label in ``labels`` order, the predicted class
        is the argmax. Must be finite and in [0, 1].
    labels : sequence
        The classes, e.g. ``("control", "autism")``; ``labels[1]`` is the positive class for a
        binary ROC AUC. More than two labels give a one-vs-rest macro ROC AUC.
    sites : array-like of shape (n,), optional
        Site of each subject; adds a per-site breakdown.
    n_bootstrap : int, default=1000
        Bootstrap resamples of subjects (0 turns confidence intervals off).
    seed : int, default=0
        Seed of the resampling.
    confidence : float, default=0.95
        Confidence level of the percentile intervals.

    Returns
    -------
    dict
        ``{"task": "classification", "labels", "n", "n_dropped_missing", "class_counts",
        "threshold", "n_bootstrap", "n_degenerate", "confidence", "metrics":
        {"balanced_accuracy": {...}, "roc_auc": {...}}, "per_site": {...}}``.
        ``n_degenerate`` counts resamples in which a class is absent: they are skipped. Metrics
        are None when the evaluated subjects do not contain every class.

    Raises
    ------
    ValueError
        If the inputs differ in length, are empty, ``y_true`` has a value outside ``labels``, or
        ``scores`` are not finite probabilities of the right shape.
    """
    _check_n_bootstrap(n_bootstrap, confidence)
    labels = list(labels) if labels is not None else None
    codes, s, keep = _classification_inputs(y_true, scores, labels)
    site_arr = _check_sites(sites, len(codes))
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise ValueError(f"y_true is all missing ({n_dropped} values): nothing to evaluate")
    codes, s = codes[keep], s[keep]
    k = len(labels)
    core = _classification_core(codes, s, k, n_bootstrap, np.random.default_rng(seed), confidence)
    out: dict[str, Any] = {
        "task": "classification",
        "labels": [_jsonable_label(x) for x in labels],
        "n": core["n"],
        "n_dropped_missing": n_dropped,
        "class_counts": {str(lab): int(c) for lab, c in zip(labels, core["counts"], strict=True)},
        "threshold": "p(labels[1]) >= 0.5" if s.ndim == 1 else "argmax",
        "n_bootstrap": int(n_bootstrap),
        "n_degenerate": core["n_degenerate"],
        "confidence": confidence,
        "metrics": core["metrics"],
    }
    if site_arr is not None:
        site_arr = site_arr[keep]
        per_site = {}
        for i, site in enumerate(sorted(set(site_arr))):
            m = site_arr == site
            b = n_bootstrap if m.sum() >= _MIN_SITE_BOOTSTRAP else 0
            c = _classification_core(codes[m], s[m], k, b, _site_rng(seed, i), confidence)
            per_site[str(site)] = {
                "n": c["n"],
                "n_degenerate": c["n_degenerate"],
                "class_counts": {
                    str(lab): int(x) for lab, x in zip(labels, c["counts"], strict=True)
                },
                "metrics": c["metrics"],
            }
        out["per_site"] = per_site
    return out


def _jsonable_label(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return x


def paired_bootstrap_difference(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    metric: str | Callable[[np.ndarray, np.ndarray], float],
    *,
    labels: Sequence | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Confidence interval of ``metric(a) - metric(b)`` for two models scored on the same subjects.

    Both models are evaluated on the *same* bootstrap resample each time, so the interval accounts
    for the correlation between them; if it excludes 0 the gap is unlikely to be resampling noise.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Truth, one per subject; missing entries are dropped (from both models) and counted.
    pred_a, pred_b : array-like of shape (n,) or (n, n_labels)
        Predictions of the two models (values for regression metrics, probabilities as in
        :func:`classification_metrics` for classification metrics).
    metric : str or callable
        One of ``"mae"``, ``"pearson_r"``, ``"r2"``, ``"predicted_std_ratio"``,
        ``"balanced_accuracy"``, ``"roc_auc"``, or a callable ``metric(y_true, pred) -> float``
        (evaluated in a Python loop; return NaN for an undefined resample to skip it).
    labels : sequence, optional
        Required for the classification metrics.
    n_bootstrap : int, default=1000
        Number of paired resamples (at least 1).
    seed : int, default=0
        Seed of the resampling.
    confidence : float, default=0.95
        Confidence level of the percentile interval.

    Returns
    -------
    dict
        ``{"metric", "n", "n_dropped_missing", "value_a", "value_b", "difference" (a - b),
        "ci_low", "ci_high", "p_value" (two-sided, from the bootstrap distribution),
        "excludes_zero", "better" ("a", "b" or None when the interval contains 0),
        "n_bootstrap", "n_degenerate", "confidence"}``.

    Raises
    ------
    ValueError
        For an unknown metric name, missing ``labels`` for a classification metric, or any of
        the input errors of :func:`regression_metrics` / :func:`classification_metrics`.
    """
    _check_n_bootstrap(n_bootstrap, confidence)
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be at least 1 for a paired bootstrap")
    rng = np.random.default_rng(seed)
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")

    if callable(metric):
        y = _as_1d(np.asarray(y_true, dtype=object), "y_true")
        a, b = np.asarray(pred_a), np.asarray(pred_b)
        if not (len(y) == len(a) == len(b)):
            raise ValueError(
                f"y_true, pred_a and pred_b differ in length: {len(y)}, {len(a)}, {len(b)}"
            )
        keep = np.array([not _is_missing(v) for v in y], dtype=bool)
        n_dropped = int((~keep).sum())
        y, a, b = y[keep], a[keep], b[keep]
        if len(y) == 0:
            raise ValueError("y_true is empty (after dropping missing values): nothing to evaluate")
        try:
            y = y.astype(float)
        except (TypeError, ValueError):
            pass
        va, vb = _float(metric(y, a)), _float(metric(y, b))
        idx = _bootstrap_indices(len(y), n_bootstrap, rng)
        diffs = np.array(
            [float(metric(y[i], a[i])) - float(metric(y[i], b[i])) for i in idx], dtype=float
        )
    elif metric in REGRESSION_METRICS:
        y, a, keep = _regression_inputs(y_true, pred_a, "pred_a")
        _, b, _ = _regression_inputs(y_true, pred_b, "pred_b")
        n_dropped = int((~keep).sum())
        y, a, b = y[keep], a[keep], b[keep]
        if len(y) == 0:
            raise ValueError("y_true is all NaN: nothing to evaluate")
        va, vb = _point_regression(y, a)[metric], _point_regression(y, b)[metric]
        func = {
            "mae": _v_mae,
            "pearson_r": _v_pearson,
            "r2": _v_r2,
            "predicted_std_ratio": _v_std_ratio,
        }[metric]
        idx = _bootstrap_indices(len(y), n_bootstrap, rng)
        diffs = func(y[idx], a[idx]) - func(y[idx], b[idx])
    elif metric in CLASSIFICATION_METRICS:
        if labels is None:
            raise ValueError(f"metric {metric!r} needs labels=")
        labels = list(labels)
        codes, a, keep = _classification_inputs(y_true, pred_a, labels, "pred_a")
        _, b, _ = _classification_inputs(y_true, pred_b, labels, "pred_b")
        n_dropped = int((~keep).sum())
        codes, a, b = codes[keep], a[keep], b[keep]
        if len(codes) == 0:
            raise ValueError("y_true is all missing: nothing to evaluate")
        k = len(labels)
        va = _point_classification(codes, a, k, a.ndim == 1)[metric]
        vb = _point_classification(codes, b, k, b.ndim == 1)[metric]
        idx = _bootstrap_indices(len(codes), n_bootstrap, rng)
        cb = codes[idx]

        def score(s: np.ndarray) -> np.ndarray:
            sb = s[idx]
            ba = _v_balanced_accuracy(cb, _predict_codes(sb, s.ndim == 1), k)
            if metric == "balanced_accuracy":
                return ba
            auc = _v_auc(cb, sb, k, s.ndim == 1)
            auc[np.isnan(ba)] = np.nan
            return auc

        diffs = score(a) - score(b)
    else:
        raise ValueError(
            f"unknown metric {metric!r}; expected one of "
            f"{REGRESSION_METRICS + CLASSIFICATION_METRICS} or a callable"
        )

    valid = np.isfinite(diffs)
    lo, hi = _percentile_ci(diffs, confidence)
    diff = None if va is None or vb is None else va - vb
    if valid.any():
        d = diffs[valid]
        p_value = float(min(1.0, 2.0 * min((d <= 0).mean(), (d >= 0).mean())))
    else:
        p_value = None
    excludes_zero = lo is not None and (lo > 0 or hi < 0)
    better = None
    if excludes_zero:
        a_higher = lo > 0
        better = (
            ("b" if a_higher else "a") if name in LOWER_IS_BETTER else ("a" if a_higher else "b")
        )
    return {
        "metric": name,
        "n": int(keep.sum()),
        "n_dropped_missing": n_dropped,
        "value_a": va,
        "value_b": vb,
        "difference": _float(diff),
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p_value,
        "excludes_zero": bool(excludes_zero),
        "better": better,
        "n_bootstrap": int(n_bootstrap),
        "n_degenerate": int((~valid).sum()),
        "confidence": confidence,
    }


def average_by_subject(
    subject_ids: Any,
    y_true: Any,
    predictions: Any,
    *,
    sites: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, dict[str, int]]:
    """Collapse per-scan rows to one row per subject by averaging predictions.

    Parameters
    ----------
    subject_ids : array-like of shape (n_scans,)
    y_true : array-like of shape (n_scans,)
        Per-scan truth. Numbers are averaged per subject (ages can differ between sessions);
        other values take the subject's most frequent non-missing value.
    predictions : array-like of shape (n_scans,) or (n_scans, k)
        Per-scan predictions or probabilities, averaged per subject.
    sites : array-like of shape (n_scans,), optional
        Per-scan site; a subject takes the site of its first scan.

    Returns
    -------
    subjects : ndarray of shape (n_subjects,)
        Subject ids in order of first appearance.
    y : ndarray of shape (n_subjects,)
    pred : ndarray of shape (n_subjects,) or (n_subjects, k)
    sites : ndarray of shape (n_subjects,) or None
    counts : dict
        ``{"n_scans", "n_subjects", "n_conflicting_labels"}``: subjects whose scans disagree
        on a categorical truth are counted (the most frequent value is used).
    """
    subj = _as_1d(np.asarray(subject_ids, dtype=object), "subject_ids").astype(str)
    pred = np.asarray(predictions, dtype=float)
    y = np.asarray(y_true, dtype=object)
    if not (len(subj) == len(pred) == len(y)):
        raise ValueError(
            f"subject_ids, y_true and predictions differ in length: "
            f"{len(subj)}, {len(y)}, {len(pred)}"
        )
    if len(subj) == 0:
        raise ValueError("no rows to average")
    codes, uniques = pd.factorize(subj, sort=False)
    n_sub = len(uniques)
    counts = np.bincount(codes, minlength=n_sub).astype(float)
    if pred.ndim == 1:
        pred_s = np.bincount(codes, weights=pred, minlength=n_sub) / counts
    else:
        pred_s = np.stack(
            [
                np.bincount(codes, weights=pred[:, j], minlength=n_sub) / counts
                for j in range(pred.shape[1])
            ],
            axis=1,
        )
    numeric = pd.api.types.is_numeric_dtype(pd.Series(list(y)).infer_objects())
    n_conflict = 0
    if numeric:
        y_s = pd.Series(y.astype(float)).groupby(codes).mean().to_numpy()
    else:
        y_s = np.empty(n_sub, dtype=object)
        frame = pd.DataFrame({"c": codes, "y": list(y)})
        for c, grp in frame.groupby("c", sort=True):
            vals = [v for v in grp["y"] if not _is_missing(v)]
            if not vals:
                y_s[c] = None
                continue
            vc = pd.Series(vals).value_counts()
            n_conflict += int(len(vc) > 1)
            y_s[c] = vc.index[0]
    site_s = None
    if sites is not None:
        s = np.asarray(sites, dtype=object).astype(str)
        if len(s) != len(subj):
            raise ValueError(f"sites has {len(s)} entries but subject_ids has {len(subj)}")
        first = np.unique(codes, return_index=True)[1]
        site_s = s[first]
    info = {"n_scans": len(subj), "n_subjects": n_sub, "n_conflicting_labels": n_conflict}
    return np.asarray(uniques, dtype=str), y_s, pred_s, site_s, info
