"""Evaluating a fine-tuned fMRI LM against the baselines of the same run, and predicting a scan.

:func:`evaluate` answers every task for every scan of a split from all of the scan's windows
(mean of the per-window expectations for numbers; summed per-window log-probabilities for
classes), averages per subject, and scores the LM with
:func:`fmrilm.evaluation.metrics.regression_metrics` / ``classification_metrics`` next to the
baselines of :func:`fmrilm.baselines.clinical.evaluate_clinical_baselines` fitted on the same
training split and evaluated on the same scans (those long enough for one window). Paired
bootstrap differences against the trivial and site-only baselines are added.

:func:`flat_summary` turns the results of both split schemes into the flat keys of
``benchmarks/results/lm.json`` (``age_mae``, ``fc_age_mae``, ``site_age_mae``,
``heldout_sites_age_mae``, ... each with ``_ci95``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmrilm.lm.model import FMRILanguageModel
from fmrilm.lm.tasks import TaskSpec
from fmrilm.provenance import commit, machine, utc_now

__all__ = [
    "summarize_runs",
    "predict_codes",
    "predict_store",
    "predict_scan",
    "answer_scan",
    "evaluate",
    "flat_summary",
    "format_results",
    "balanced_probabilities",
]


def balanced_probabilities(probs: np.ndarray, task: TaskSpec) -> np.ndarray:
    """Divide class probabilities by the training class shares and renormalise.

    The LM learns the training prior (e.g. 85% male); for balanced accuracy the decision at
    p = 0.5 should not favour the majority class. Ranking (AUC) is unchanged for two classes.
    """
    shares = task.extra.get("train_shares")
    if not shares:
        return probs
    w = probs / np.clip(np.asarray(shares, dtype=float), 1e-6, None)
    return w / w.sum(axis=-1, keepdims=True)


def predict_codes(
    model: FMRILanguageModel,
    codes: torch.Tensor,
    groups: np.ndarray,
    tasks: list[TaskSpec],
    *,
    batch_size: int = 8,
) -> dict[str, list[dict]]:
    """Score windows and aggregate them per group (scan).

    Parameters
    ----------
    codes : LongTensor of shape (N, R, P)
    groups : array of shape (N,)
        Scan of each window; the answers are aggregated per distinct value (sorted).
    tasks : list of TaskSpec

    Returns
    -------
    dict
        ``{task name: [aggregate dict per group]}`` (see :meth:`FMRILanguageModel.aggregate`),
        each with ``group`` added.
    """
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    out = {}
    all_scores = model.score_tasks(codes, tasks, batch_size=batch_size)
    for task in tasks:
        scores = all_scores[task.name]
        res = []
        for g in uniq:
            a = model.aggregate(scores[torch.as_tensor(groups == g)], task)
            a["group"] = g.item() if hasattr(g, "item") else g
            res.append(a)
        out[task.name] = res
    return out


def predict_store(
    model: FMRILanguageModel,
    store,
    *,
    scheme: str,
    split: str = "test",
    batch_size: int = 8,
    tasks: list[str] | None = None,
) -> dict[str, Any]:
    """Answers of every task for every scan of a split that has at least one window."""
    from fmrilm.lm.training import encode_windows

    t0 = time.time()
    enc = encode_windows(
        store,
        model.fmri_tokenizer,
        split=split,
        scheme=scheme,
        window_length=model.config.window_length,
        stride=model.config.stride,
        min_window_length=model.config.min_window_length,
    )
    t_enc = time.time() - t0
    chosen = [model.task(n) for n in tasks] if tasks else model.tasks
    codes = torch.from_numpy(enc["codes"].astype(np.int64))
    t1 = time.time()
    answers = predict_codes(model, codes, enc["scan_index"], chosen, batch_size=batch_size)
    t_score = time.time() - t1
    rows = np.unique(enc["scan_index"])
    return {
        "rows": rows,
        "answers": answers,
        "n_windows": int(len(codes)),
        "n_scans_without_window": int(enc["n_scans_without_window"]),
        "n_short_windows": int(enc["n_short_windows"]),
        "encode_seconds": t_enc,
        "score_seconds": t_score,
        "scans_per_second": len(rows) / max(1e-9, t_enc + t_score),
    }


def _metric_entry(metrics: dict, name: str) -> dict:
    return (metrics or {}).get("metrics", {}).get(name) or {}


def evaluate(
    model: FMRILanguageModel,
    store,
    *,
    scheme: str | None = None,
    split: str = "test",
    baselines: tuple[str, ...] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 8,
    balanced: bool = True,
) -> dict[str, Any]:
    """The LM and the baselines on the same split and scans, with bootstrap CIs.

    Parameters
    ----------
    model : FMRILanguageModel
    store : DatasetStore or path
    scheme : str, optional
        Split scheme (default: the one the model was trained on; another one raises because
        its test subjects may have been trained on).
    split : str, default="test"
    baselines : tuple of str, optional
        Subset of ``fmrilm.baselines.clinical.BASELINES`` (default: all).
    n_bootstrap, seed : int
    batch_size : int
        Windows per LM forward pass.
    balanced : bool, default=True
        Correct class probabilities by the training class shares
        (:func:`balanced_probabilities`) before balanced accuracy.

    Returns
    -------
    dict
        The structure of ``evaluate_clinical_baselines`` (so
        ``fmrilm.evaluation.report.format_table`` prints it) with ``"lm"`` added to each
        target's ``results`` and ``vs_trivial``, ``lm_subjects`` (ids, truth and answers per
        subject) beside the baselines' ``subject_predictions``, plus ``lm_vs_site``, ``parse_failures``,
        ``predictions`` (per scan) and throughput.
    """
    from fmrilm.baselines.clinical import BASELINES, evaluate_clinical_baselines, target_values
    from fmrilm.data import open_store
    from fmrilm.evaluation.metrics import (
        average_by_subject,
        classification_metrics,
        paired_bootstrap_difference,
        regression_metrics,
    )

    if not hasattr(store, "split_indices"):
        store = open_store(store)
    trained_on = model.config.scheme
    scheme = scheme or trained_on or "site_stratified"
    if trained_on is not None and scheme != trained_on:
        raise ValueError(
            f"the model was trained on split scheme {trained_on!r}; evaluating it on "
            f"{scheme!r} would test on subjects it may have trained on"
        )
    pred = predict_store(model, store, scheme=scheme, split=split, batch_size=batch_size)
    rows = pred["rows"]
    if len(rows) == 0:
        raise ValueError(f"no scan of split {split!r} is long enough for one window")
    table = store.table.reset_index(drop=True)
    splits = store.split_indices(scheme)
    tasks = {t.name: t for t in model.tasks}
    t0 = time.time()
    base = evaluate_clinical_baselines(
        table,
        _Timeseries(store),
        splits["train"],
        rows,
        targets=list(tasks),
        tasks={n: t.kind for n, t in tasks.items()},
        baselines=baselines or BASELINES,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    baseline_seconds = time.time() - t0
    subj = table["subject_id"].astype(str).to_numpy()
    site = table["site"].astype(str).to_numpy()
    parse_failures = 0
    per_scan = []
    for name, task in tasks.items():
        ans = pred["answers"][name]
        parse_failures += sum(bool(a["parse_failure"]) for a in ans)
        ok = np.array([not a["parse_failure"] for a in ans])
        r = rows[ok]
        if task.kind == "regression":
            p = np.array([a["value"] for a in ans if not a["parse_failure"]], dtype=float)
        else:
            p = np.array(
                [
                    [a["probabilities"][c] for c in task.answers]
                    for a in ans
                    if not a["parse_failure"]
                ]
            )
            if balanced:
                p = balanced_probabilities(p, task)
        for a, row in zip(ans, rows, strict=True):
            per_scan.append(
                {
                    "scan_id": str(table.loc[row, "scan_id"]),
                    "task": name,
                    **{
                        k: v
                        for k, v in a.items()
                        if k
                        in (
                            "value",
                            "interval",
                            "probabilities",
                            "answer",
                            "n_windows",
                            "parse_failure",
                        )
                    },
                }
            )
        y = target_values(table, name).to_numpy(dtype=object)[r]
        if task.kind == "classification":
            y = np.array([None if v is None or v != v else str(v) for v in y], dtype=object)
        keep = np.array([v is not None and v == v for v in y])
        if name not in base["targets"] or not keep.any():
            continue
        subjects, y_s, p_s, site_s, _ = average_by_subject(
            subj[r][keep], y[keep], p[keep], sites=site[r][keep]
        )
        entry = base["targets"][name]
        if task.kind == "regression":
            lm = regression_metrics(
                y_s.astype(float), p_s, sites=site_s, n_bootstrap=n_bootstrap, seed=seed
            )
            metric, labels, y_cmp = "mae", None, y_s.astype(float)
        else:
            lm = classification_metrics(
                y_s, p_s, labels=task.answers, sites=site_s, n_bootstrap=n_bootstrap, seed=seed
            )
            metric, labels, y_cmp = "roc_auc", task.answers, y_s
        lm["n_parse_failures"] = int((~ok).sum())
        entry["results"] = {"lm": lm, **entry["results"]}
        # the LM's per-subject answers (probabilities as scored above), so that evaluations of
        # several models (cross-validation folds, variants) can be pooled and paired later
        entry["lm_subjects"] = {
            "subject_ids": [str(x) for x in subjects],
            "truth": [float(v) if task.kind == "regression" else str(v) for v in y_s],
            "predictions": np.asarray(p_s, dtype=float).tolist(),
        }
        if n_bootstrap > 0:
            comparisons = _paired_vs_simple(
                table,
                splits["train"],
                r[keep],
                name,
                task,
                subjects,
                y_cmp,
                p_s,
                metric,
                labels,
                n_bootstrap,
                seed,
                paired_bootstrap_difference,
                average_by_subject,
            )
            entry.setdefault("vs_trivial", {})["lm"] = comparisons.get("trivial")
            entry["lm_vs_site"] = comparisons.get("site")
            entry["lm_vs_connectivity"] = _paired_vs_connectivity(
                entry, subjects, y_cmp, p_s, metric, labels, n_bootstrap, seed
            )
    base.update(
        {
            "scheme": scheme,
            "split": split,
            "model": model.describe(),
            "parse_failures": int(parse_failures),
            "n_scans_without_window": pred["n_scans_without_window"],
            "n_short_windows": pred["n_short_windows"],
            "min_window_length": model.config.min_window_length,
            "n_windows": pred["n_windows"],
            "lm_eval_seconds": pred["encode_seconds"] + pred["score_seconds"],
            "lm_scans_per_second": pred["scans_per_second"],
            "baseline_seconds": baseline_seconds,
            "balanced_probabilities": balanced,
            "train_summary": model.train_summary,
            "predictions": per_scan,
        }
    )
    return base


def _paired_vs_connectivity(entry, subjects, y_s, p_lm, metric, labels, n_bootstrap, seed):
    """Paired bootstrap of the LM against each connectivity baseline on the same subjects."""
    from fmrilm.evaluation.metrics import paired_bootstrap_difference

    out = {}
    ids = [str(x) for x in subjects]
    for b, pred in entry.get("subject_predictions", {}).items():
        if not b.startswith("connectivity"):
            continue
        if entry.get("subject_ids") != ids:  # e.g. an LM answer failed to parse: no pairing
            out[b] = {"skipped": "the baseline was scored on other subjects than the LM"}
            continue
        out[b] = paired_bootstrap_difference(
            y_s, p_lm, np.asarray(pred), metric, labels=labels, n_bootstrap=n_bootstrap, seed=seed
        )
    return out


def _paired_vs_simple(
    table,
    train_rows,
    rows,
    name,
    task,
    subjects,
    y_s,
    p_lm,
    metric,
    labels,
    n_bootstrap,
    seed,
    paired,
    average_by_subject,
):
    """Paired bootstrap of the LM against the trivial and site-only predictions (same rows)."""
    from fmrilm.baselines.clinical import SiteBaseline, TrivialBaseline, target_values

    y_all = target_values(table, name).to_numpy(dtype=object)
    if task.kind == "classification":
        y_all = np.array([None if v is None or v != v else str(v) for v in y_all], dtype=object)
    tr = np.asarray(train_rows)
    tr = tr[np.array([v is not None and v == v for v in y_all[tr]])]
    sites = table["site"].astype(str).to_numpy()
    subj = table["subject_id"].astype(str).to_numpy()
    out = {}
    for b, est in (
        ("trivial", TrivialBaseline(task=task.kind)),
        ("site", SiteBaseline(task=task.kind)),
    ):
        ytr = y_all[tr].astype(float) if task.kind == "regression" else y_all[tr]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            est.fit(sites[tr], ytr)
            if task.kind == "regression":
                p = est.predict(sites[rows])
            else:
                proba = est.predict_proba(sites[rows])
                where = {c: j for j, c in enumerate(est.classes_)}
                p = np.stack(
                    [
                        proba[:, where[c]] if c in where else np.zeros(len(rows))
                        for c in task.answers
                    ],
                    1,
                )
        _, _, p_s, _, _ = average_by_subject(subj[rows], y_all[rows], p)
        out[b] = paired(y_s, p_lm, p_s, metric, labels=labels, n_bootstrap=n_bootstrap, seed=seed)
    return out


class _Timeseries:
    def __init__(self, store):
        self._store = store

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, i):
        return self._store.timeseries(int(i))


# ------------------------------------------------------------------------ summaries

_KEYS = {
    "age": (("mae", "age_mae"), ("pearson_r", "age_r"), ("r2", "age_r2")),
    "sex": (("balanced_accuracy", "sex_balanced_accuracy"), ("roc_auc", "sex_auc")),
    "diagnosis": (
        ("balanced_accuracy", "diagnosis_balanced_accuracy"),
        ("roc_auc", "diagnosis_auc"),
    ),
}


def flat_summary(results_by_scheme: dict[str, dict]) -> dict[str, Any]:
    """Flat keys for ``benchmarks/results/lm.json``.

    ``site_stratified`` results give unprefixed keys, ``heldout_sites`` ones the prefix
    ``heldout_sites_``; within each, the LM has no prefix, ``fc_`` is the better (per metric) of
    the two connectivity baselines (a conservative bar), ``site_`` the site-only and ``trivial_``
    the trivial baseline. Each metric has a ``_ci95`` pair. ``parse_failures`` and
    ``predicted_age_std_ratio`` come from the site-stratified LM.
    """
    out: dict[str, Any] = {}
    for scheme, res in results_by_scheme.items():
        pre = "" if scheme == "site_stratified" else f"{scheme}_"
        for target, keys in _KEYS.items():
            t = res.get("targets", {}).get(target)
            if t is None:
                continue
            results = t["results"]
            for metric, key in keys:
                lower = metric == "mae"
                for prefix, names in (
                    ("", ["lm"]),
                    ("fc_", ["connectivity_correlation", "connectivity_tangent"]),
                    ("site_", ["site"]),
                    ("trivial_", ["trivial"]),
                ):
                    entries = [
                        (n, _metric_entry(results.get(n), metric)) for n in names if n in results
                    ]
                    if not entries:
                        continue
                    defined = [(n, e) for n, e in entries if e.get("value") is not None]
                    if not defined:  # e.g. one class only among the evaluated subjects
                        out[f"{pre}{prefix}{key}"] = None
                        out[f"{pre}{prefix}{key}_ci95"] = [None, None]
                        continue
                    entries = defined
                    n, e = (min if lower else max)(entries, key=lambda x: x[1]["value"])
                    out[f"{pre}{prefix}{key}"] = e["value"]
                    out[f"{pre}{prefix}{key}_ci95"] = [e.get("ci_low"), e.get("ci_high")]
                    if prefix == "fc_":
                        out[f"{pre}{prefix}{key}_baseline"] = n
                        paired = (t.get("lm_vs_connectivity") or {}).get(n)
                        if paired is not None and paired.get("metric") == metric:
                            out[f"{pre}lm_minus_fc_{key}"] = paired["difference"]
                            out[f"{pre}lm_minus_fc_{key}_ci95"] = [
                                paired["ci_low"],
                                paired["ci_high"],
                            ]
        out[f"{pre}parse_failures"] = res.get("parse_failures")
        age = res.get("targets", {}).get("age", {}).get("results", {}).get("lm")
        if age is not None:
            out[f"{pre}predicted_age_std_ratio"] = _metric_entry(age, "predicted_std_ratio").get(
                "value"
            )
    return out


def summarize_runs(
    results: list[dict[str, Any]], ablations: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The content of ``benchmarks/results/lm.json`` from :func:`evaluate` results.

    Parameters
    ----------
    results : list of dict
        One :func:`evaluate` result per split scheme (the best configuration).
    ablations : dict, optional
        Name -> :func:`evaluate` result of an ablation (layout, initialisation, ...).

    Returns
    -------
    dict
        :func:`flat_summary` keys plus ``split``, ``ablations`` (each: its flat summary, layout,
        init, train seconds and steps), ``train_seconds`` (sum over the main runs), ``commit``,
        ``date``, ``machine``.
    """

    by_scheme = {r["scheme"]: r for r in results}
    if len(by_scheme) != len(results):
        raise ValueError("give one result per split scheme")
    out = flat_summary(by_scheme)
    out["split"] = sorted(by_scheme)
    out["model"] = {k: r.get("model") for k, r in by_scheme.items()}

    def seconds(r):
        return float((r.get("train_summary") or {}).get("train_seconds") or 0.0)

    out["train_seconds"] = sum(seconds(r) for r in results)
    out["eval_seconds"] = sum(float(r.get("lm_eval_seconds") or 0.0) for r in results)
    out["ablations"] = {
        name: {
            "scheme": r["scheme"],
            "layout": (r.get("model") or {}).get("layout"),
            "init": (r.get("model") or {}).get("init"),
            "train_seconds": seconds(r),
            "train_steps": (r.get("train_summary") or {}).get("global_step"),
            **flat_summary({"site_stratified": r}),
        }
        for name, r in (ablations or {}).items()
    }
    out["commit"] = commit()
    out["date"] = utc_now()
    out["machine"] = f"{machine()}, {torch.get_num_threads()} torch threads"
    return out


def format_results(results: dict[str, Any]) -> str:
    """Readable table (``fmrilm.evaluation.report.format_table``) plus LM-specific lines."""
    from fmrilm.evaluation.report import format_table

    lines = [format_table(results).replace("Clinical baselines", "fMRI LM and baselines", 1)]
    m = results.get("model", {})
    members = m.get("ensemble") or [m]
    described = " + ".join(
        f"{x.get('base_model')} ({x.get('finetune')}, init {x.get('init')}, layout "
        f"{x.get('layout', {}).get('kind')} {x.get('layout', {}).get('tokens_per_window')} "
        "tokens/window" + (f"; answers {', '.join(x['answers'])}" if x.get("answers") else "") + ")"
        for x in members
    )
    lines.append("")
    lines.append(
        f"{'LM ensemble' if 'ensemble' in m else 'LM'}: {described}; "
        f"parse failures: {results.get('parse_failures')}; scans too short "
        f"for a window: {results.get('n_scans_without_window')}; answered from one shorter "
        f"window: {results.get('n_short_windows', 0)}; "
        f"{results.get('lm_scans_per_second', 0):.2f} scans/s"
    )
    for name, t in results.get("targets", {}).items():
        d = t.get("lm_vs_site")
        if d and d.get("difference") is not None and d.get("ci_low") is not None:
            lines.append(
                f"  {name}: LM - site-only {d['metric']} = {d['difference']:+.3f} "
                f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- predict


def scale_scan(x: np.ndarray, scaler: dict | None) -> np.ndarray:
    """Robust-scale a raw (T, R) scan with saved statistics; constant ROIs become 0."""
    x = np.asarray(x, dtype=np.float32)
    mask = np.ptp(x, axis=0) > 0
    if scaler is not None:
        med = np.asarray(scaler["median"], dtype=np.float32)
        iqr = np.asarray(scaler["iqr"], dtype=np.float32)
        x = (x - med) / np.where(iqr > 0, iqr, 1.0)
    return np.where(mask, x, 0.0).astype(np.float32)


def predict_scan(
    model: FMRILanguageModel,
    timeseries: np.ndarray | str | Path,
    task: str,
    *,
    scaled: bool = False,
    balanced: bool = True,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Answer one question for one scan (:func:`answer_scan` with one task)."""
    res = answer_scan(
        model, timeseries, [task], scaled=scaled, balanced=balanced, batch_size=batch_size
    )
    return res[task]


def answer_scan(
    model: FMRILanguageModel,
    timeseries: np.ndarray | str | Path,
    tasks: list[str] | None = None,
    *,
    scaled: bool = False,
    balanced: bool = True,
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """Answer several questions for one scan; its windows are encoded once.

    Parameters
    ----------
    model : FMRILanguageModel
    timeseries : ndarray of shape (T, R) or path
        Raw ROI time series (any file :func:`fmrilm.data.readers.read_timeseries` reads).
    tasks : list of str, optional
        Task names (``age``, ``sex``, ``diagnosis``, ...; default: every task of the model).
    scaled : bool
        The series is already robust-scaled (otherwise the training split's statistics saved in
        the model are applied).
    balanced : bool
        Correct class probabilities by the training class shares.
    batch_size : int
        Windows per LM forward pass.

    Returns
    -------
    dict
        Task name -> ``answer`` and, for classes, ``probabilities`` / ``probability``; for
        numbers ``value`` and a 90% ``interval``; ``n_windows``, ``parse_failure``,
        ``question``.
    """
    from fmrilm.data.windows import window_spans
    from fmrilm.lm.training import encode_window_list

    if isinstance(timeseries, (str, Path)):
        from fmrilm.data.readers import read_timeseries

        timeseries = read_timeseries(timeseries)
    x = np.asarray(timeseries, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != model.config.n_rois:
        raise ValueError(f"expected a (T, {model.config.n_rois}) series, got shape {x.shape}")
    if not scaled:
        x = scale_scan(x, model.config.extra.get("scaler"))
    cfg = model.config
    wl, shortest = cfg.window_length, cfg.min_window_length
    patch = cfg.patch_length
    spans = window_spans(len(x), wl, cfg.stride, shortest, patch)
    if len(spans) == 0:
        raise ValueError(
            f"the scan has {len(x)} time points, fewer than one window ({shortest or wl} in "
            f"whole {patch}-point patches)"
        )
    if model.fmri_tokenizer is None:
        raise ValueError("this model has no fMRI tokenizer to encode windows with")
    windows = [torch.from_numpy(np.ascontiguousarray(x[s : s + n])) for s, n in spans]
    codes = torch.from_numpy(
        encode_window_list(model.fmri_tokenizer, windows, cfg.n_patches).astype(np.int64)
    )
    chosen = [model.task(n) for n in tasks] if tasks else list(model.tasks)
    scores = model.score_tasks(codes, chosen, batch_size=batch_size)
    out = {}
    for t in chosen:
        res = model.aggregate(scores[t.name], t)
        if t.kind == "classification" and balanced and not res["parse_failure"]:
            p = balanced_probabilities(np.array([res["probabilities"][a] for a in t.answers]), t)
            res["probabilities"] = {a: float(v) for a, v in zip(t.answers, p, strict=True)}
            res["answer"] = t.answers[int(np.argmax(p))]
            res["probability"] = float(np.max(p))
        res["question"] = t.question
        out[t.name] = res
    return out
