"""Readable fixed-width tables of metric dictionaries and baseline results."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["format_value", "format_metrics", "format_table", "json_default"]

_METRIC_TITLES = {
    "mae": "MAE",
    "pearson_r": "r",
    "r2": "R2",
    "predicted_std_ratio": "std ratio",
    "balanced_accuracy": "bal. acc.",
    "roc_auc": "ROC AUC",
}


def format_value(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """``"0.512 [0.431, 0.590]"`` from ``{"value", "ci_low", "ci_high"}`` (``"-"`` if undefined)."""
    if not entry or entry.get("value") is None:
        return "-"
    text = f"{entry['value']:.{digits}f}"
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
    return text


def _rows_to_text(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return lines


def format_metrics(results: dict[str, dict[str, Any]], digits: int = 3) -> str:
    """Table of several models' metric dicts (outputs of ``regression_metrics`` /
    ``classification_metrics``), one row per model.

    Parameters
    ----------
    results : dict
        Model name -> metrics dict.
    digits : int, default=3

    Returns
    -------
    str
    """
    if not results:
        return "(no results)"
    names = list(next(iter(results.values()))["metrics"])
    header = ["model", "n"] + [_METRIC_TITLES.get(m, m) for m in names]
    rows = []
    for model, res in results.items():
        rows.append(
            [model, str(res.get("n", ""))]
            + [format_value(res["metrics"].get(m), digits) for m in names]
        )
    return "\n".join(_rows_to_text(header, rows))


def _notes(res: dict[str, Any], comparison: dict[str, Any] | None) -> str:
    notes = []
    fit = res.get("fit") or {}
    if fit.get("n_fallback"):
        notes.append(f"{fit['n_fallback']} scans from unseen sites -> global value")
    if "alpha" in fit:
        notes.append(
            f"alpha={fit['alpha']:.3g}" + (" (grid edge)" if fit.get("at_grid_edge") else "")
        )
    if "C" in fit:
        notes.append(f"C={fit['C']:.3g}" + (" (grid edge)" if fit.get("at_grid_edge") else ""))
    if fit.get("calibration") not in (None, "platt"):
        notes.append(f"calibration {fit['calibration']}")
    if res.get("n_degenerate"):
        notes.append(f"{res['n_degenerate']} degenerate resamples skipped")
    if comparison and comparison.get("difference") is not None:
        lo, hi = comparison.get("ci_low"), comparison.get("ci_high")
        ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
        verdict = "" if comparison.get("excludes_zero") else " (n.s.)"
        notes.append(f"vs trivial {comparison['difference']:+.3f}{ci}{verdict}")
    return "; ".join(notes)


def format_table(results: dict[str, Any], digits: int = 3) -> str:
    """Fixed-width table of :func:`fmrilm.baselines.clinical.run_clinical_baselines` results.

    One block per target, one row per baseline, each metric as ``value [CI low, CI high]``, with
    notes (site fallbacks, chosen penalties, degenerate bootstrap resamples, the paired difference
    to the trivial baseline on the target's primary metric and whether its CI excludes 0).

    Parameters
    ----------
    results : dict
        Output of ``run_clinical_baselines`` / ``evaluate_clinical_baselines``.
    digits : int, default=3

    Returns
    -------
    str
    """
    if "targets" not in results:
        raise ValueError("results has no 'targets': pass the output of run_clinical_baselines")
    conf = results.get("confidence", 0.95)
    lines = []
    scheme = results.get("scheme")
    title = f"Clinical baselines{f' ({scheme})' if scheme else ''}"
    lines.append(title)
    lines.append(
        f"{int(round(conf * 100))}% percentile bootstrap CIs over subjects, "
        f"{results.get('n_bootstrap', '?')} resamples, seed {results.get('seed', '?')}"
    )
    for name, t in results["targets"].items():
        lines.append("")
        labels = f", positive class {t['labels'][-1]!r}" if t.get("labels") else ""
        n_train = f", train n={t['n_train']}" if "n_train" in t else ""
        lines.append(
            f"{name} ({t['task']}{labels}{n_train}, eval subjects n={t['n_eval_subjects']}, "
            f"missing target dropped: {t.get('n_train_missing', 0)} train / "
            f"{t.get('n_eval_missing', 0)} eval scans)"
        )
        first = next(iter(t["results"].values()))
        names = list(first["metrics"])
        header = ["baseline"] + [_METRIC_TITLES.get(m, m) for m in names] + ["notes"]
        rows = []
        for b, res in t["results"].items():
            rows.append(
                [b]
                + [format_value(res["metrics"].get(m), digits) for m in names]
                + [_notes(res, t.get("vs_trivial", {}).get(b))]
            )
        lines.extend(_rows_to_text(header, rows))
    for name, reason in results.get("skipped_targets", {}).items():
        lines.append("")
        lines.append(f"{name}: skipped ({reason})")
    return "\n".join(lines)


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays (anything else as text)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
