"""Classical baselines for clinical targets: what a language model has to beat.

Three scikit-learn style estimators, weakest to strongest:

* :class:`TrivialBaseline` ignores its input: training median (numbers) or majority class with the
  training class shares as probabilities (categories).
* :class:`SiteBaseline` knows only the acquisition site: training mean per site (numbers) or class
  shares per site (categories). A test scan from a site unseen in training falls back to the
  global training value; this is counted (``n_fallback_``) and warned about, never silent.
* :class:`ConnectivityBaseline`: functional connectivity (nilearn ``ConnectivityMeasure``,
  correlation or tangent) -> mean imputation -> standardisation -> ``RidgeCV`` or
  ``LogisticRegressionCV(class_weight="balanced")``. Everything with parameters (the tangent
  reference, imputation means, scaling, the regularisation strength chosen by inner
  cross-validation) is fitted on training scans only. Binary logistic probabilities are
  Platt-rescaled on inner out-of-fold scores so that the 0.5 threshold is balanced (see
  ``ConnectivityBaseline(calibrate=...)``); ROC AUC is unaffected.

**Constant ROI columns.** A scan may contain ROI columns that are constant (all zero: the ROI lies
outside that subject's functional mask). Their correlation is undefined (zero variance). nilearn's
default Ledoit-Wolf estimator happens to return 0 for them, which would claim "uncorrelated". We
instead mark every connectivity feature that involves a constant ROI *of that scan* as missing
(NaN) and impute it with the training-set mean of that feature (features missing in every training
scan become 0), so an absent ROI carries no information rather than a fake value. Detection uses
the data itself (``np.ptp == 0`` over time), which is the store's ``roi_mask`` definition.

:func:`run_clinical_baselines` fits every baseline on a store's training split, predicts the test
split, averages predictions per subject and returns JSON-ready metrics with bootstrap confidence
intervals (see :mod:`fmrilm.evaluation.metrics`); :func:`format_table` prints them.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.model_selection import (
    GroupKFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_val_predict,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from fmrilm.evaluation.metrics import (
    average_by_subject,
    classification_metrics,
    paired_bootstrap_difference,
    regression_metrics,
)
from fmrilm.evaluation.report import format_table

__all__ = [
    "TrivialBaseline",
    "SiteBaseline",
    "ConnectivityFeatures",
    "ConnectivityBaseline",
    "LinearHead",
    "BASELINES",
    "KNOWN_LABELS",
    "infer_task",
    "target_values",
    "evaluate_clinical_baselines",
    "run_clinical_baselines",
    "format_table",
]

#: Baseline names understood by :func:`run_clinical_baselines`.
BASELINES = ("trivial", "site", "connectivity_correlation", "connectivity_tangent")
#: Label order of the standard categorical columns; the last label is the positive class.
KNOWN_LABELS = {"sex": ("female", "male"), "diagnosis": ("control", "autism")}
#: Standard store columns that are read directly (anything else is read from ``phenotypes``).
STANDARD_TARGETS = ("age", "sex", "diagnosis", "fiq", "mean_fd")
#: Values treated as missing in raw phenotype columns (ABIDE codes missing as -9999).
DEFAULT_MISSING_CODES = (-9999, -9999.0, "-9999", "", "NaN", "nan", "n/a", "NA")
DEFAULT_ALPHAS = tuple(np.logspace(-3, 7, 21))
DEFAULT_CS = tuple(np.logspace(-5, 0, 11))

Task = str  # "regression" | "classification"


# --------------------------------------------------------------------------- helpers


def _missing_mask(y: Sequence) -> np.ndarray:
    out = np.zeros(len(y), dtype=bool)
    for i, v in enumerate(y):
        if v is None:
            out[i] = True
        else:
            try:
                out[i] = bool(pd.isna(v))
            except (TypeError, ValueError):
                out[i] = False
    return out


def infer_task(y: Any) -> Task:
    """Guess whether a target is a regression or a classification problem.

    Parameters
    ----------
    y : array-like
        Target values (missing values are ignored).

    Returns
    -------
    str
        ``"classification"`` for strings/booleans/categories, or for numbers with exactly two
        distinct values (such as ``DX_GROUP`` coded 1/2); ``"regression"`` otherwise.
    """
    values = [v for v, m in zip(list(y), _missing_mask(list(y)), strict=True) if not m]
    if not values:
        raise ValueError("cannot infer the task of a target with no non-missing values")
    series = pd.Series(values).infer_objects()
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return "classification"
    return "classification" if series.nunique() == 2 else "regression"


def _check_task(task: str) -> None:
    if task not in ("auto", "regression", "classification"):
        raise ValueError(f"task must be 'auto', 'regression' or 'classification', got {task!r}")


def _check_y(y: Any, task: str, n: int | None = None) -> tuple[np.ndarray, str]:
    arr = np.asarray(y, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError("y is empty: cannot fit on zero samples")
    if n is not None and len(arr) != n:
        raise ValueError(f"X has {n} samples but y has {len(arr)}")
    missing = _missing_mask(arr)
    if missing.any():
        raise ValueError(
            f"y has {int(missing.sum())} missing values (NaN/None); drop those samples before "
            f"fitting"
        )
    if task == "auto":
        task = infer_task(arr)
    if task == "regression":
        try:
            arr = arr.astype(float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"regression targets must be numeric: {err}") from None
        if not np.isfinite(arr).all():
            raise ValueError("regression targets must be finite")
    else:  # plain str / numeric dtype, so that sklearn recognises binary/multiclass targets
        arr = arr.astype(str) if _all_str(arr) else np.asarray(arr.tolist())
    return arr, task


def _num_samples(X: Any) -> int:
    if X is None:
        raise ValueError("X is None; pass one entry per sample")
    if hasattr(X, "shape") and len(getattr(X, "shape", ())) > 0:
        return int(X.shape[0])
    try:
        return len(X)
    except TypeError:
        raise ValueError(f"X must be a sequence or array, got {type(X).__name__}") from None


def _sites(X: Any) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        if "site" not in X.columns:
            raise ValueError("a DataFrame passed to SiteBaseline needs a 'site' column")
        X = X["site"]
    arr = np.asarray(X, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"sites must be 1-D (one site per sample), got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError("sites is empty")
    if _missing_mask(arr).any():
        raise ValueError("sites contain missing values")
    return arr.astype(str)


# --------------------------------------------------------------------------- trivial / site


class TrivialBaseline(BaseEstimator):
    """Predict without looking at the input: training median, or majority class.

    Parameters
    ----------
    task : {"auto", "regression", "classification"}, default="auto"
        ``"auto"`` uses :func:`infer_task` on ``y``.

    Attributes
    ----------
    task_ : str
    median_ : float
        Training median (regression).
    classes_ : ndarray
        Sorted classes (classification).
    class_prior_ : ndarray of shape (n_classes,)
        Training class shares, returned by :meth:`predict_proba` for every sample.
    majority_ : object
        Most frequent training class (ties: first in ``classes_`` order).
    """

    def __init__(self, task: str = "auto"):
        self.task = task

    def fit(self, X: Any, y: Any) -> TrivialBaseline:
        """Fit on ``y`` only; ``X`` (any sequence of length n) is used for its length."""
        _check_task(self.task)
        y, self.task_ = _check_y(y, self.task, _num_samples(X))
        if self.task_ == "regression":
            self.median_ = float(np.median(y))
        else:
            self.classes_, counts = np.unique(
                y.astype(str) if _all_str(y) else y, return_counts=True
            )
            self.class_prior_ = counts / counts.sum()
            self.majority_ = self.classes_[int(np.argmax(counts))]
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Training median, or majority class, once per sample of ``X``."""
        check_is_fitted(self, "task_")
        n = _num_samples(X)
        if self.task_ == "regression":
            return np.full(n, self.median_)
        return np.repeat(np.asarray([self.majority_], dtype=self.classes_.dtype), n)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Training class shares, (n, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self, "task_")
        if self.task_ != "classification":
            raise AttributeError("predict_proba is only available for classification targets")
        return np.tile(self.class_prior_, (_num_samples(X), 1))


def _all_str(y: np.ndarray) -> bool:
    return all(isinstance(v, str) for v in y)


class SiteBaseline(BaseEstimator):
    """Predict from the acquisition site alone.

    Regression: training mean of the target per site. Classification: training class shares per
    site (probabilities), the predicted class being the most frequent one (ties: first in
    ``classes_`` order). A site not seen in training gets the global training mean / class
    shares; every such sample is counted in ``n_fallback_`` and ``fallback_sites_`` and a
    ``UserWarning`` names them.

    Parameters
    ----------
    task : {"auto", "regression", "classification"}, default="auto"

    Attributes
    ----------
    task_ : str
    site_values_ : dict
        Site -> training mean (regression) or class-share array (classification).
    site_counts_ : dict
        Site -> number of training samples.
    global_value_ : float or ndarray
        Fallback for unseen sites: training mean, or training class shares.
    classes_ : ndarray
        Sorted classes (classification).
    n_fallback_ : int
        Samples of the last :meth:`predict` / :meth:`predict_proba` call from unseen sites.
    fallback_sites_ : list of str
        Those unseen sites.
    """

    def __init__(self, task: str = "auto"):
        self.task = task

    def fit(self, X: Any, y: Any) -> SiteBaseline:
        """Fit per-site statistics.

        Parameters
        ----------
        X : array-like of shape (n,) or DataFrame with a ``site`` column
            Site of each training sample.
        y : array-like of shape (n,)
            Target, no missing values.
        """
        _check_task(self.task)
        sites = _sites(X)
        y, self.task_ = _check_y(y, self.task, len(sites))
        frame = pd.DataFrame({"site": sites, "y": list(y)})
        self.site_counts_ = {str(k): int(v) for k, v in frame["site"].value_counts().items()}
        if self.task_ == "regression":
            self.global_value_ = float(np.mean(y))
            self.site_values_ = {
                str(k): float(v) for k, v in frame.groupby("site")["y"].mean().items()
            }
        else:
            self.classes_ = np.unique(y.astype(str) if _all_str(y) else y)
            lookup = {c: i for i, c in enumerate(self.classes_)}
            codes = np.array([lookup[v] for v in (y.astype(str) if _all_str(y) else y)])
            k = len(self.classes_)
            self.global_value_ = np.bincount(codes, minlength=k) / len(codes)
            self.site_values_ = {}
            for site in self.site_counts_:
                c = codes[sites == site]
                self.site_values_[site] = np.bincount(c, minlength=k) / len(c)
        self.n_fallback_ = 0
        self.fallback_sites_: list[str] = []
        return self

    def _lookup(self, X: Any) -> list:
        check_is_fitted(self, "task_")
        sites = _sites(X)
        unseen = sorted({s for s in sites if s not in self.site_values_})
        self.fallback_sites_ = unseen
        self.n_fallback_ = int(np.isin(sites, unseen).sum()) if unseen else 0
        if unseen:
            what = "mean" if self.task_ == "regression" else "class shares"
            warnings.warn(
                f"SiteBaseline: {self.n_fallback_} of {len(sites)} samples are from "
                f"{len(unseen)} site(s) not seen in training ({', '.join(unseen[:5])}"
                f"{', ...' if len(unseen) > 5 else ''}); they get the global training {what}",
                UserWarning,
                stacklevel=3,
            )
        return [self.site_values_.get(s, self.global_value_) for s in sites]

    def predict(self, X: Any) -> np.ndarray:
        """Per-site training mean, or per-site most frequent class."""
        values = self._lookup(X)
        if self.task_ == "regression":
            return np.asarray(values, dtype=float)
        return self.classes_[np.argmax(np.vstack(values), axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Per-site training class shares, (n, n_classes) in ``classes_`` order."""
        check_is_fitted(self, "task_")
        if self.task_ != "classification":
            raise AttributeError("predict_proba is only available for classification targets")
        return np.vstack(self._lookup(X))


# --------------------------------------------------------------------------- connectivity


def _check_timeseries(X: Any, n_rois: int | None = None) -> list[np.ndarray]:
    if isinstance(X, np.ndarray) and X.ndim == 3:
        X = list(X)
    if isinstance(X, np.ndarray) and X.ndim == 2:
        raise ValueError("X must be a list of (T, R) arrays (one per scan), got a single 2-D array")
    try:
        X = list(X)
    except TypeError:
        raise ValueError(f"X must be a list of (T, R) arrays, got {type(X).__name__}") from None
    if not X:
        raise ValueError("X is empty: need at least one (T, R) time series")
    out = []
    for i, x in enumerate(X):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"scan {i}: time series must be 2-D (T, R), got shape {x.shape}")
        if x.shape[0] < 3:
            raise ValueError(f"scan {i}: {x.shape[0]} time points, need at least 3")
        if x.shape[1] < 2:
            raise ValueError(f"scan {i}: {x.shape[1]} ROIs, need at least 2")
        if n_rois is None:
            n_rois = x.shape[1]
        elif x.shape[1] != n_rois:
            raise ValueError(f"scan {i}: {x.shape[1]} ROIs, expected {n_rois} like the others")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"scan {i}: time series contains NaN/Inf values")
        out.append(x)
    return out


class ConnectivityFeatures(BaseEstimator):
    """Vectorised connectivity matrices, constant-ROI entries set to NaN.

    Wraps ``nilearn.connectome.ConnectivityMeasure(kind=kind, vectorize=True,
    discard_diagonal=True, standardize="zscore_sample")`` with its default Ledoit-Wolf
    covariance estimator. For ``kind="tangent"`` the reference (geometric mean) is computed in
    :meth:`fit`, from the training scans only.

    BLAS is limited to one thread while nilearn works: it handles many small (R, R) matrices,
    for which threading brings nothing, and on a busy machine multithreaded OpenBLAS made each
    200 x 200 eigendecomposition ~100x slower (0.5 s instead of 5 ms).

    Parameters
    ----------
    kind : {"correlation", "tangent"}, default="correlation"

    Attributes
    ----------
    measure_ : nilearn.connectome.ConnectivityMeasure
    n_rois_ : int
    n_constant_ : int
        Number of (scan, ROI) pairs found constant in the last :meth:`transform` call.
    """

    def __init__(self, kind: str = "correlation"):
        self.kind = kind

    def _check_kind(self) -> None:
        if self.kind not in ("correlation", "tangent"):
            raise ValueError(f"kind must be 'correlation' or 'tangent', got {self.kind!r}")

    def fit(self, X: Any, y: Any = None) -> ConnectivityFeatures:
        """Fit the connectivity measure (the tangent reference) on training scans ``X``."""
        from nilearn.connectome import ConnectivityMeasure

        self._check_kind()
        X = _check_timeseries(X)
        self.n_rois_ = X[0].shape[1]
        self.measure_ = ConnectivityMeasure(
            kind=self.kind, vectorize=True, discard_diagonal=True, standardize="zscore_sample"
        )
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.filterwarnings("ignore", category=FutureWarning)
            self.measure_.fit(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """(n_scans, R (R - 1) / 2) features; NaN where a pair involves a constant ROI."""
        from nilearn.connectome import sym_matrix_to_vec

        check_is_fitted(self, "measure_")
        X = _check_timeseries(X, self.n_rois_)
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.filterwarnings("ignore", category=FutureWarning)
            F = np.asarray(self.measure_.transform(X), dtype=np.float64)
        self.n_constant_ = 0
        for i, x in enumerate(X):
            const = np.ptp(x, axis=0) == 0
            if const.any():
                self.n_constant_ += int(const.sum())
                pair = const[:, None] | const[None, :]
                F[i, sym_matrix_to_vec(pair.astype(float), discard_diagonal=True) > 0] = np.nan
        return F

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit on ``X`` and transform it."""
        return self.fit(X).transform(X)


def _kwargs_supported(cls: type, **kwargs: Any) -> dict[str, Any]:
    params = inspect.signature(cls).parameters
    return {k: v for k, v in kwargs.items() if k in params}


class LinearHead(BaseEstimator):
    """Features -> impute -> standardise -> RidgeCV / LogisticRegressionCV, subject-aware.

    The model head of :class:`ConnectivityBaseline`, usable on any fixed features (a linear probe
    of a frozen encoder's features, for example). Everything with parameters (imputation means,
    scaling, the penalty chosen by inner cross-validation, the Platt map) is fitted on the
    training rows only.

    Parameters
    ----------
    model : {"ridge", "logistic"}, default="ridge"
        ``"ridge"``: ``RidgeCV`` over ``alphas`` (efficient leave-one-out CV on the training
        data, or ``GroupKFold`` when ``groups`` repeat). ``"logistic"``: L2
        ``LogisticRegressionCV`` over ``Cs``, inner stratified ``cv``-fold CV scored by log loss,
        ``class_weight="balanced"``.
    alphas : sequence of float, optional
        Ridge grid; default ``logspace(-3, 7, 21)`` (features are standardised, and there are
        ~20k connectivity features for 200 ROIs, so large penalties are needed).
    Cs : sequence of float, optional
        Inverse logistic penalties; default ``logspace(-5, 0, 11)``.
    cv : int, default=5
        Inner folds for logistic regression (and for ridge when ``groups`` repeat).
    max_iter : int, default=1000
        Logistic regression iterations.
    random_state : int, default=0
        Seed of the inner folds.
    calibrate : bool, default=True
        Binary logistic only. With many more features than rows the training data are
        separable: the fitted intercept reflects the extreme training margins, test margins
        shrink towards it, and every test row can land on one side of 0.5 (measured on ABIDE
        sex from connectivity: ROC AUC 0.79 but balanced accuracy exactly 0.5). When True,
        probabilities are Platt-rescaled (class-balanced) on out-of-fold decision values from the
        inner folds at the chosen C, so that 0.5 is a balanced threshold. The map is increasing,
        so ROC AUC is unchanged; if the out-of-fold scores do not rank the classes (non-positive
        slope) the raw probabilities are kept and ``calibration_status_`` says so.

    Attributes
    ----------
    model_ : sklearn.pipeline.Pipeline
    classes_ : ndarray
        Classes (logistic).
    alpha_ : float
        Chosen ridge penalty.
    C_ : float
        Chosen inverse logistic penalty.
    at_grid_edge_ : bool
        True when the chosen penalty is the smallest or largest of the grid (widen the grid).
    calibration_status_ : str
        ``"platt"``, ``"off"`` or why calibration was skipped (logistic only).
    """

    def __init__(
        self,
        model: str = "ridge",
        *,
        alphas: Sequence[float] | None = None,
        Cs: Sequence[float] | None = None,
        cv: int = 5,
        max_iter: int = 1000,
        random_state: int = 0,
        calibrate: bool = True,
    ):
        self.model = model
        self.alphas = alphas
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.random_state = random_state
        self.calibrate = calibrate

    def _check_params(self) -> None:
        if self.model not in ("ridge", "logistic"):
            raise ValueError(f"model must be 'ridge' or 'logistic', got {self.model!r}")
        if not isinstance(self.cv, (int, np.integer)) or self.cv < 2:
            raise ValueError(f"cv must be an integer >= 2, got {self.cv!r}")

    def fit(self, F: Any, y: Any, groups: Any = None) -> LinearHead:
        """Fit on training features.

        Parameters
        ----------
        F : array-like of shape (n, n_features)
            Features; NaN entries are imputed with the training mean of their column.
        y : array-like of shape (n,)
            Numeric target for ``model="ridge"``, labels for ``model="logistic"``; no missing.
        groups : array-like of shape (n,), optional
            Subject of each row. When a subject has several rows the inner CV keeps them in one
            fold (``GroupKFold`` / ``StratifiedGroupKFold``).
        """
        self._check_params()
        F = np.asarray(F, dtype=np.float64)
        if F.ndim != 2:
            raise ValueError(f"F must be 2-D (n_rows, n_features), got shape {F.shape}")
        task = "regression" if self.model == "ridge" else "classification"
        y, _ = _check_y(y, task, len(F))
        if task == "classification" and len(np.unique(y)) < 2:
            raise ValueError("logistic model needs at least two classes in y")
        splits = self._inner_splits(F, y, groups, task)
        if task == "regression":
            alphas = np.asarray(self.alphas if self.alphas is not None else DEFAULT_ALPHAS)
            head = RidgeCV(alphas=alphas, cv=splits)
        else:
            Cs = np.asarray(self.Cs if self.Cs is not None else DEFAULT_CS)
            cv = (
                splits
                if splits is not None
                else StratifiedKFold(
                    n_splits=min(self.cv, _min_class_count(y)),
                    shuffle=True,
                    random_state=self.random_state,
                )
            )
            head = LogisticRegressionCV(
                Cs=Cs,
                cv=cv,
                class_weight="balanced",
                max_iter=self.max_iter,
                **_kwargs_supported(
                    LogisticRegressionCV,
                    l1_ratios=(0.0,),
                    scoring="neg_log_loss",
                    use_legacy_attributes=False,
                ),
            )
        steps = [
            ("impute", SimpleImputer(strategy="mean", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]
        if task == "classification" and F.shape[1] > F.shape[0]:
            # Exact speed-up: an L2-penalised linear model with an unpenalised intercept has its
            # weights in the span of the centred training rows, so rotating onto that span
            # (all min(n, p) principal components, no truncation) changes nothing but the
            # number of features logistic regression iterates over (~20k -> n).
            steps.append(("rotate", PCA(n_components=None, svd_solver="full")))
        steps.append(("model", head))
        self.model_ = Pipeline(steps)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            self.model_.fit(F, y)
        fitted = self.model_.named_steps["model"]
        if task == "regression":
            self.alpha_ = float(fitted.alpha_)
            self.at_grid_edge_ = bool(self.alpha_ in (alphas.min(), alphas.max()))
        else:
            self.classes_ = fitted.classes_
            self.C_ = float(np.ravel(fitted.C_)[0])
            self.at_grid_edge_ = bool(self.C_ in (Cs.min(), Cs.max()))
            self._calibrate(F, y, cv)
        return self

    def _calibrate(self, F: np.ndarray, y: np.ndarray, cv: Any) -> None:
        """Platt-rescale binary probabilities on inner out-of-fold decision values."""
        self.calibration_ = None
        self.calibration_status_ = "off"
        if not self.calibrate:
            return
        if len(self.classes_) != 2:
            self.calibration_status_ = "skipped: not binary"
            return
        steps = [(name, clone(step)) for name, step in self.model_.steps[:-1]]
        fold_model = LogisticRegression(
            C=self.C_,
            class_weight="balanced",
            max_iter=self.max_iter,
            **_kwargs_supported(LogisticRegression, l1_ratio=0.0),
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            oof = cross_val_predict(
                Pipeline([*steps, ("model", fold_model)]),
                F,
                y,
                cv=cv,
                method="decision_function",
            )
        platt = LogisticRegression(C=1e6, class_weight="balanced", max_iter=1000)
        platt.fit(oof[:, None], y == self.classes_[1])
        if platt.coef_[0, 0] <= 0:
            self.calibration_status_ = "skipped: out-of-fold scores do not rank the classes"
            return
        self.calibration_ = platt
        self.calibration_status_ = "platt"

    def _inner_splits(self, F, y, groups, task):
        if groups is None:
            return None
        groups = np.asarray(groups)
        if len(groups) != len(F):
            raise ValueError(f"groups has {len(groups)} entries but there are {len(F)} scans")
        n_groups = len(np.unique(groups))
        if n_groups == len(groups):
            return None  # one scan per subject: plain inner CV is already subject-wise
        if task == "regression":
            return list(GroupKFold(n_splits=min(self.cv, n_groups)).split(F, y, groups))
        splitter = StratifiedGroupKFold(
            n_splits=min(self.cv, n_groups), shuffle=True, random_state=self.random_state
        )
        return list(splitter.split(F, y, groups))

    def predict_from_features(self, F: np.ndarray) -> np.ndarray:
        """Predict from features computed by ``features_.transform``."""
        check_is_fitted(self, "model_")
        if getattr(self, "calibration_", None) is not None:
            proba = self.predict_proba_from_features(F)
            return self.classes_[np.argmax(proba, axis=1)]
        return self.model_.predict(F)

    def predict_proba_from_features(self, F: np.ndarray) -> np.ndarray:
        """Class probabilities from features computed by ``features_.transform``."""
        check_is_fitted(self, "model_")
        if self.model != "logistic":
            raise AttributeError("predict_proba is only available for model='logistic'")
        if getattr(self, "calibration_", None) is None:
            return self.model_.predict_proba(F)
        d = self.model_.decision_function(F)
        return self.calibration_.predict_proba(np.asarray(d, dtype=float)[:, None])

    def predict(self, F: Any) -> np.ndarray:
        """Predict from features (n, n_features)."""
        return self.predict_from_features(np.asarray(F, dtype=np.float64))

    def predict_proba(self, F: Any) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in ``classes_`` order (logistic only)."""
        return self.predict_proba_from_features(np.asarray(F, dtype=np.float64))


class ConnectivityBaseline(LinearHead):
    """Connectivity features -> :class:`LinearHead` (impute, standardise, RidgeCV / logistic).

    Parameters
    ----------
    kind : {"correlation", "tangent"}, default="correlation"
        Connectivity measure, see :class:`ConnectivityFeatures`.
    model, alphas, Cs, cv, max_iter, random_state, calibrate
        The head's settings, see :class:`LinearHead`. ``calibrate`` matters here: with ~20k
        connectivity features and a few hundred scans, uncalibrated logistic probabilities put
        every ABIDE test scan on one side of 0.5 for sex (AUC 0.79, balanced accuracy 0.5).

    Attributes
    ----------
    features_ : ConnectivityFeatures
    model_, classes_, alpha_, C_, at_grid_edge_, calibration_status_
        See :class:`LinearHead`.
    """

    def __init__(
        self,
        kind: str = "correlation",
        model: str = "ridge",
        *,
        alphas: Sequence[float] | None = None,
        Cs: Sequence[float] | None = None,
        cv: int = 5,
        max_iter: int = 1000,
        random_state: int = 0,
        calibrate: bool = True,
    ):
        self.kind = kind
        super().__init__(
            model,
            alphas=alphas,
            Cs=Cs,
            cv=cv,
            max_iter=max_iter,
            random_state=random_state,
            calibrate=calibrate,
        )

    def _check_params(self) -> None:
        if self.kind not in ("correlation", "tangent"):
            raise ValueError(f"kind must be 'correlation' or 'tangent', got {self.kind!r}")
        super()._check_params()

    def fit(self, X: Any, y: Any, groups: Any = None) -> ConnectivityBaseline:
        """Fit on training scans.

        Parameters
        ----------
        X : list of ndarray of shape (T_i, R)
            Training time series (T may differ between scans, R may not).
        y : array-like of shape (n,)
            Numeric target for ``model="ridge"``, labels for ``model="logistic"``; no missing.
        groups : array-like of shape (n,), optional
            Subject of each scan. When a subject has several scans the inner CV keeps them in
            one fold (``GroupKFold`` / ``StratifiedGroupKFold``).
        """
        self._check_params()
        X = _check_timeseries(X)
        task = "regression" if self.model == "ridge" else "classification"
        _check_y(y, task, len(X))
        features = ConnectivityFeatures(self.kind).fit(X)
        return self.fit_from_features(features, features.transform(X), y, groups=groups)

    def fit_from_features(
        self, features: ConnectivityFeatures, F: np.ndarray, y: Any, groups: Any = None
    ) -> ConnectivityBaseline:
        """Fit the model head on features already computed by a fitted ``features``.

        Lets several targets share one (expensive) tangent fit: ``features`` must have been
        fitted on training scans only and ``F = features.transform(training scans)``. Gives the
        same model as :meth:`fit` on those scans.
        """
        self._check_params()
        check_is_fitted(features, "measure_")
        self.features_ = features
        return LinearHead.fit(self, F, y, groups=groups)

    def predict(self, X: Any) -> np.ndarray:
        """Predict from time series ``X`` (list of (T, R) arrays)."""
        check_is_fitted(self, "model_")
        return self.predict_from_features(self.features_.transform(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in ``classes_`` order (logistic only)."""
        check_is_fitted(self, "model_")
        return self.predict_proba_from_features(self.features_.transform(X))


def _min_class_count(y: np.ndarray) -> int:
    _, counts = np.unique(y, return_counts=True)
    return max(2, int(counts.min()))


# --------------------------------------------------------------------------- targets


def target_values(
    table: pd.DataFrame, name: str, *, missing_codes: Sequence = DEFAULT_MISSING_CODES
) -> pd.Series:
    """Values of one target per row of a store table.

    Parameters
    ----------
    table : DataFrame
        Store table (``store.table``).
    name : str
        A standard column (``age``, ``sex``, ``diagnosis``, ``fiq``, ``mean_fd``, or any other
        column of ``table``) or a key of the ``phenotypes`` JSON (e.g. ``"ADOS_TOTAL"``).
    missing_codes : sequence, optional
        Raw phenotype values read as missing (default: ABIDE's -9999 and empty strings). Only
        applied to values read from ``phenotypes``.

    Returns
    -------
    Series
        Same index as ``table``; missing values are NaN/None. Numeric-looking phenotype values
        are converted to float.
    """
    if name in table.columns and name not in ("phenotypes", "timeseries"):
        values = table[name]
        if name in ("sex", "diagnosis") or not pd.api.types.is_numeric_dtype(values):
            return values.astype(object).where(~values.isna(), None)
        return values.astype(float)
    if "phenotypes" not in table.columns:
        raise KeyError(f"target {name!r} is not a column and the table has no 'phenotypes'")
    raw = []
    found = False
    missing = set()
    for v in missing_codes:
        missing.add(v if not isinstance(v, float) else float(v))
    for text in table["phenotypes"]:
        row = json.loads(text) if isinstance(text, str) and text else {}
        if name in row:
            found = True
        value = row.get(name)
        if isinstance(value, str):
            value = value.strip()
        try:
            is_missing = value is None or value in missing or pd.isna(value)
        except TypeError:
            is_missing = False
        raw.append(None if is_missing else value)
    if not found:
        raise KeyError(f"target {name!r} is neither a table column nor a phenotype key")
    numeric = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce")
    non_missing = [v is not None for v in raw]
    if non_missing and numeric[non_missing].notna().all():
        return pd.Series(numeric.astype(float).to_numpy(), index=table.index)
    return pd.Series(raw, index=table.index, dtype=object)


def _labels_for(name: str, values: Sequence) -> list:
    present = sorted({v for v in values if v is not None and not _is_nan(v)}, key=str)
    if name in KNOWN_LABELS:
        known = list(KNOWN_LABELS[name])
        return known + [v for v in present if v not in known]
    return present


def _is_nan(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- runner core


def _proba_in_label_order(proba: np.ndarray, classes: np.ndarray, labels: list) -> np.ndarray:
    out = np.zeros((len(proba), len(labels)))
    where = {c: j for j, c in enumerate(classes)}
    for i, label in enumerate(labels):
        if label in where:
            out[:, i] = proba[:, where[label]]
    return out


def _check_baselines(baselines: Sequence[str]) -> list[str]:
    baselines = list(baselines)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    if not baselines:
        raise ValueError("baselines is empty")
    return baselines


def _predict_split(
    table: pd.DataFrame,
    timeseries: Sequence[np.ndarray],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    targets: dict[str, dict[str, Any]],
    baselines: list[str],
    *,
    seed: int,
    connectivity_options: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit every baseline for every target on train rows; predict test rows.

    Returns ``{target: {"test_rows": idx, "n_train": .., "n_train_missing": ..,
    "predictions": {baseline: (n_test, k) or (n_test,)}, "fit": {baseline: info}}}``.
    """
    sites = table["site"].astype(str).to_numpy()
    subjects = table["subject_id"].astype(str).to_numpy()
    conn_kinds = [b.split("_", 1)[1] for b in baselines if b.startswith("connectivity_")]
    features: dict[str, tuple[ConnectivityFeatures, np.ndarray, np.ndarray]] = {}
    if conn_kinds:
        train_ts = [timeseries[i] for i in train_idx]
        test_ts = [timeseries[i] for i in test_idx]
        for kind in conn_kinds:
            fe = ConnectivityFeatures(kind).fit(train_ts)
            features[kind] = (fe, fe.transform(train_ts), fe.transform(test_ts))
        del train_ts, test_ts
    out: dict[str, dict[str, Any]] = {}
    for name, spec in targets.items():
        y_all = spec["values"]
        task, labels = spec["task"], spec["labels"]
        y_train = y_all[train_idx]
        keep = ~_missing_mask(y_train)
        tr = train_idx[keep]
        ytr = y_train[keep]
        res: dict[str, Any] = {
            "test_rows": test_idx,
            "n_train": int(keep.sum()),
            "n_train_missing": int((~keep).sum()),
            "predictions": {},
            "fit": {},
        }
        out[name] = res
        if keep.sum() == 0:
            res["skipped"] = "no training sample has this target"
            continue
        if task == "classification" and len(set(ytr)) < 2:
            res["skipped"] = f"training samples have a single class ({ytr[0]!r})"
            continue
        for b in baselines:
            if b == "trivial":
                est = TrivialBaseline(task=task).fit(tr, ytr)
                info = {}
                pred = (
                    est.predict(test_idx)
                    if task == "regression"
                    else _proba_in_label_order(est.predict_proba(test_idx), est.classes_, labels)
                )
            elif b == "site":
                est = SiteBaseline(task=task).fit(sites[tr], ytr)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # counted below instead
                    pred = (
                        est.predict(sites[test_idx])
                        if task == "regression"
                        else _proba_in_label_order(
                            est.predict_proba(sites[test_idx]), est.classes_, labels
                        )
                    )
                info = {
                    "n_fallback": est.n_fallback_,
                    "fallback_sites": est.fallback_sites_,
                    "fallback": "global training mean"
                    if task == "regression"
                    else "global training class shares",
                }
            else:
                kind = b.split("_", 1)[1]
                fe, F_train, F_test = features[kind]
                est = ConnectivityBaseline(
                    kind=kind,
                    model="ridge" if task == "regression" else "logistic",
                    random_state=seed,
                    **(connectivity_options or {}),
                )
                est.fit_from_features(fe, F_train[keep], ytr, groups=subjects[tr])
                if task == "regression":
                    pred = est.predict_from_features(F_test)
                    info = {"alpha": est.alpha_, "at_grid_edge": est.at_grid_edge_}
                else:
                    pred = _proba_in_label_order(
                        est.predict_proba_from_features(F_test), est.classes_, labels
                    )
                    info = {
                        "C": est.C_,
                        "at_grid_edge": est.at_grid_edge_,
                        "calibration": est.calibration_status_,
                    }
                info["n_features"] = int(F_train.shape[1])
                info["n_constant_rois_test"] = int(fe.n_constant_)
            res["predictions"][b] = np.asarray(pred, dtype=float)
            res["fit"][b] = info
    return out


def _prepare_targets(
    table: pd.DataFrame,
    targets: Sequence[str],
    tasks: dict[str, str] | None,
    missing_codes: Sequence,
    rows: np.ndarray,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    prepared, skipped = {}, {}
    tasks = dict(tasks or {})
    for name in targets:
        try:
            values = target_values(table, name, missing_codes=missing_codes)
        except KeyError as err:
            raise ValueError(str(err.args[0])) from None
        arr = values.to_numpy(dtype=object)
        present = arr[rows][~_missing_mask(arr[rows])]
        if len(present) == 0:
            skipped[name] = "no non-missing values in the rows used"
            continue
        task = tasks.get(name, "auto")
        _check_task(task)
        if task == "auto":
            task = infer_task(present)
        if task == "regression":
            try:
                arr = np.array(
                    [
                        np.nan if m else float(v)
                        for v, m in zip(arr, _missing_mask(arr), strict=True)
                    ],
                    dtype=object,
                )
            except (TypeError, ValueError):
                raise ValueError(
                    f"target {name!r} is not numeric; pass tasks={{{name!r}: 'classification'}}"
                ) from None
            labels = None
        else:
            labels = _labels_for(name, present)
        prepared[name] = {"values": arr, "task": task, "labels": labels}
    return prepared, skipped


def _evaluate_predictions(
    table: pd.DataFrame,
    spec: dict[str, Any],
    test_rows: np.ndarray,
    predictions: dict[str, np.ndarray],
    *,
    n_bootstrap: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    y = spec["values"][test_rows]
    keep = ~_missing_mask(y)
    rows = test_rows[keep]
    subj = table["subject_id"].astype(str).to_numpy()[rows]
    site = table["site"].astype(str).to_numpy()[rows]
    results, subject_preds, info = {}, {}, {}
    y_subj = None
    for b, pred in predictions.items():
        subjects, y_subj, p_subj, site_subj, info = average_by_subject(
            subj, y[keep], pred[keep], sites=site
        )
        subject_preds[b] = p_subj
        if spec["task"] == "regression":
            results[b] = regression_metrics(
                y_subj.astype(float),
                p_subj,
                sites=site_subj,
                n_bootstrap=n_bootstrap,
                seed=seed,
                confidence=confidence,
            )
        else:
            results[b] = classification_metrics(
                y_subj,
                p_subj,
                labels=spec["labels"],
                sites=site_subj,
                n_bootstrap=n_bootstrap,
                seed=seed,
                confidence=confidence,
            )
    primary = "mae" if spec["task"] == "regression" else "roc_auc"
    comparisons = {}
    if "trivial" in subject_preds and n_bootstrap > 0:
        for b, p in subject_preds.items():
            if b == "trivial":
                continue
            comparisons[b] = paired_bootstrap_difference(
                y_subj.astype(float) if spec["task"] == "regression" else y_subj,
                p,
                subject_preds["trivial"],
                primary,
                labels=spec["labels"],
                n_bootstrap=n_bootstrap,
                seed=seed,
                confidence=confidence,
            )
    return {
        "n_eval_scans": int(keep.sum()),
        "n_eval_missing": int((~keep).sum()),
        "n_eval_subjects": int(info.get("n_subjects", 0)),
        "n_conflicting_labels": int(info.get("n_conflicting_labels", 0)),
        "primary_metric": primary,
        "results": results,
        "vs_trivial": comparisons,
        # per-subject predictions (in ``subject_ids`` order), for paired comparisons with other
        # models scored on the same subjects
        "subject_ids": [] if y_subj is None else [str(x) for x in subjects],
        "subject_predictions": {b: np.asarray(p).tolist() for b, p in subject_preds.items()},
    }


def evaluate_clinical_baselines(
    table: pd.DataFrame,
    timeseries: Sequence[np.ndarray],
    train_idx: Any,
    test_idx: Any,
    *,
    targets: Sequence[str] = ("age", "sex", "diagnosis"),
    baselines: Sequence[str] = BASELINES,
    tasks: dict[str, str] | None = None,
    missing_codes: Sequence = DEFAULT_MISSING_CODES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    connectivity_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit baselines on ``train_idx`` rows, evaluate on ``test_idx`` rows (one row per subject).

    The array-level core of :func:`run_clinical_baselines`: works on any table with the store
    columns (``subject_id``, ``site``, the targets, ``phenotypes`` for other targets) and a
    sequence of (T, R) arrays indexed like the table.

    Parameters
    ----------
    table : DataFrame
        One row per scan.
    timeseries : sequence of ndarray of shape (T_i, R)
        ``timeseries[i]`` is the scan of ``table.iloc[i]`` (only train and test rows are read,
        and only when a connectivity baseline is requested).
    train_idx, test_idx : array-like of int
        Row positions; they must not share a subject.
    targets : sequence of str
        See :func:`target_values`.
    baselines : sequence of str
        Subset of :data:`BASELINES`.
    tasks : dict, optional
        Target -> ``"regression"`` / ``"classification"``, overriding :func:`infer_task`.
    missing_codes : sequence
        See :func:`target_values`.
    n_bootstrap, seed, confidence
        See :func:`fmrilm.evaluation.metrics.regression_metrics`.
    connectivity_options : dict, optional
        Extra :class:`ConnectivityBaseline` parameters (``alphas``, ``Cs``, ``cv``,
        ``max_iter``) for the connectivity baselines.

    Returns
    -------
    dict
        JSON-ready: ``{"n_train_scans", "n_eval_scans", "baselines", "n_bootstrap", "seed",
        "confidence", "targets": {target: {"task", "labels", "n_train", "n_train_missing",
        "n_eval_scans", "n_eval_missing", "n_eval_subjects", "primary_metric",
        "results": {baseline: metrics dict + "fit"}, "vs_trivial": {baseline: paired
        bootstrap difference of the primary metric}}}, "skipped_targets": {target: reason}}``.
    """
    table = table.reset_index(drop=True)
    train_idx, test_idx = (
        _check_indices(train_idx, "train_idx", len(table)),
        _check_indices(test_idx, "test_idx", len(table)),
    )
    _check_no_subject_overlap(table, train_idx, test_idx)
    baselines = _check_baselines(baselines)
    _check_connectivity_options(connectivity_options)
    rows = np.concatenate([train_idx, test_idx])
    prepared, skipped = _prepare_targets(table, targets, tasks, missing_codes, rows)
    preds = _predict_split(
        table,
        timeseries,
        train_idx,
        test_idx,
        prepared,
        baselines,
        seed=seed,
        connectivity_options=connectivity_options,
    )
    out_targets = {}
    for name, spec in prepared.items():
        p = preds[name]
        if "skipped" in p:
            skipped[name] = p["skipped"]
            continue
        ev = _evaluate_predictions(
            table,
            spec,
            test_idx,
            p["predictions"],
            n_bootstrap=n_bootstrap,
            seed=seed,
            confidence=confidence,
        )
        for b, info in p["fit"].items():
            ev["results"][b]["fit"] = info
        out_targets[name] = {
            "task": spec["task"],
            "labels": spec["labels"],
            "n_train": p["n_train"],
            "n_train_missing": p["n_train_missing"],
            **ev,
        }
    return {
        "n_train_scans": int(len(train_idx)),
        "n_eval_scans": int(len(test_idx)),
        "baselines": baselines,
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "confidence": confidence,
        "targets": out_targets,
        "skipped_targets": skipped,
    }


def _check_connectivity_options(options: dict[str, Any] | None) -> None:
    allowed = {"alphas", "Cs", "cv", "max_iter"}
    unknown = set(options or {}) - allowed
    if unknown:
        raise ValueError(
            f"connectivity_options has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}"
        )


def _check_indices(idx: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer row positions, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"{name} has positions outside [0, {n})")
    return arr.astype(np.int64)


def _check_no_subject_overlap(table: pd.DataFrame, train: np.ndarray, test: np.ndarray) -> None:
    subj = table["subject_id"].astype(str).to_numpy()
    shared = set(subj[train]) & set(subj[test])
    if shared:
        raise ValueError(
            f"{len(shared)} subject(s) are in both train and test (e.g. "
            f"{sorted(shared)[:3]}): splits must not divide a subject"
        )


def _leave_one_site_out(
    table: pd.DataFrame,
    timeseries: Sequence[np.ndarray],
    rows: np.ndarray,
    *,
    targets: Sequence[str],
    baselines: list[str],
    tasks: dict[str, str] | None,
    missing_codes: Sequence,
    n_bootstrap: int,
    seed: int,
    confidence: float,
    connectivity_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    sites = table["site"].astype(str).to_numpy()
    site_list = sorted(set(sites[rows]))
    if len(site_list) < 2:
        raise ValueError("leave-one-site-out needs at least two sites")
    prepared, skipped = _prepare_targets(table, targets, tasks, missing_codes, rows)
    pooled = {name: {"rows": [], "preds": {}, "fit": {}} for name in prepared}
    folds = []
    for site in site_list:
        test = rows[sites[rows] == site]
        train = rows[sites[rows] != site]
        preds = _predict_split(
            table,
            timeseries,
            train,
            test,
            prepared,
            baselines,
            seed=seed,
            connectivity_options=connectivity_options,
        )
        fold = {
            "site": site,
            "n_train_scans": int(len(train)),
            "n_test_scans": int(len(test)),
            "skipped": {},
        }
        for name, p in preds.items():
            if "skipped" in p:
                fold["skipped"][name] = p["skipped"]
                continue
            pooled[name]["rows"].append(test)
            for b, pred in p["predictions"].items():
                pooled[name]["preds"].setdefault(b, []).append(pred)
                pooled[name]["fit"].setdefault(b, []).append(p["fit"][b])
        folds.append(fold)
    out_targets = {}
    for name, spec in prepared.items():
        pool = pooled[name]
        if not pool["rows"]:
            skipped[name] = "skipped in every fold"
            continue
        test_rows = np.concatenate(pool["rows"])
        predictions = {b: np.concatenate(v) for b, v in pool["preds"].items()}
        ev = _evaluate_predictions(
            table,
            spec,
            test_rows,
            predictions,
            n_bootstrap=n_bootstrap,
            seed=seed,
            confidence=confidence,
        )
        for b, infos in pool["fit"].items():
            ev["results"][b]["fit"] = {"per_fold": infos}
            if b == "site":
                ev["results"][b]["fit"]["n_fallback"] = int(sum(i["n_fallback"] for i in infos))
        out_targets[name] = {"task": spec["task"], "labels": spec["labels"], **ev}
    return {
        "n_eval_scans": int(len(rows)),
        "baselines": baselines,
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "confidence": confidence,
        "folds": folds,
        "targets": out_targets,
        "skipped_targets": skipped,
    }


class _StoreTimeseries(Sequence):
    """Lazy ``store.timeseries(i)`` as a sequence (scans are read only when needed)."""

    def __init__(self, store: Any):
        self._store = store

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self._store.timeseries(int(i))


def run_clinical_baselines(
    store: Any,
    *,
    scheme: str = "site_stratified",
    targets: Sequence[str] = ("age", "sex", "diagnosis"),
    baselines: Sequence[str] = BASELINES,
    train_splits: Sequence[str] = ("train",),
    eval_split: str = "test",
    leave_one_site_out: bool = False,
    tasks: dict[str, str] | None = None,
    missing_codes: Sequence = DEFAULT_MISSING_CODES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    connectivity_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit every baseline on a store split and evaluate it per subject with bootstrap CIs.

    Parameters
    ----------
    store : DatasetStore or str or path
        An open store (:func:`fmrilm.data.open_store`) or its folder.
    scheme : str, default="site_stratified"
        Split scheme of the store (``"site_stratified"`` or ``"heldout_sites"``).
    targets : sequence of str, default=("age", "sex", "diagnosis")
        Standard columns or ``phenotypes`` keys, see :func:`target_values`.
    baselines : sequence of str, default=BASELINES
        Subset of ``("trivial", "site", "connectivity_correlation", "connectivity_tangent")``.
    train_splits : sequence of str, default=("train",)
        Splits fitted on (add ``"val"`` to use it for training too; inner CV picks penalties).
    eval_split : str, default="test"
        Split evaluated.
    leave_one_site_out : bool, default=False
        Ignore the scheme and instead, for every site, fit on all other sites and predict it;
        pooled out-of-site predictions are evaluated (slow: one tangent fit per site).
    tasks, missing_codes, n_bootstrap, seed, confidence, connectivity_options
        See :func:`evaluate_clinical_baselines`.

    Returns
    -------
    dict
        JSON-ready results, see :func:`evaluate_clinical_baselines`, plus ``scheme``,
        ``train_splits``, ``eval_split`` and the store path. Print with :func:`format_table`.
    """
    if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        from fmrilm.data import open_store

        store = open_store(store)
    table = store.table.reset_index(drop=True)
    ts = _StoreTimeseries(store)
    head = {"store": str(getattr(store, "path", "")), "n_scans_in_store": int(len(table))}
    _check_connectivity_options(connectivity_options)
    if leave_one_site_out:
        rows = np.arange(len(table))
        res = _leave_one_site_out(
            table,
            ts,
            rows,
            targets=targets,
            baselines=_check_baselines(baselines),
            tasks=tasks,
            missing_codes=missing_codes,
            n_bootstrap=n_bootstrap,
            seed=seed,
            confidence=confidence,
            connectivity_options=connectivity_options,
        )
        return {**head, "scheme": "leave_one_site_out", **res}
    splits = store.split_indices(scheme)
    for name in (*train_splits, eval_split):
        if name not in splits:
            raise ValueError(f"split {name!r} not in scheme {scheme!r} (has {sorted(splits)})")
    train_idx = np.concatenate([np.asarray(splits[s], dtype=np.int64) for s in train_splits])
    test_idx = np.asarray(splits[eval_split], dtype=np.int64)
    res = evaluate_clinical_baselines(
        table,
        ts,
        train_idx,
        test_idx,
        targets=targets,
        baselines=baselines,
        tasks=tasks,
        missing_codes=missing_codes,
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
        connectivity_options=connectivity_options,
    )
    return {
        **head,
        "scheme": scheme,
        "train_splits": list(train_splits),
        "eval_split": eval_split,
        **res,
    }
