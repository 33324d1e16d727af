"""Figures and a self-contained HTML report of the comparison study (the poster's Figure 4).

* :func:`plot_predicted_vs_true`: one panel per arm, predicted against true value per subject,
  identity line, the same axes for every arm;
* :func:`plot_prediction_distributions`: one panel per arm, the distribution of its predictions
  over the distribution of the true values (shows arms whose predictions squeeze into a narrow
  band);
* :func:`write_html_report`: one HTML file with the results table and the figures embedded as
  base64 PNG (no external file, script or stylesheet), readable offline in any browser.

Arms are given as ``{name: {"y_true": array, "y_pred": array}}`` (one value per subject); an arm
without predictions (not run, failed) is left out of the figures but stays in the table with its
status and reason.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TABLE_COLUMNS",
    "comparisons_table_html",
    "plot_predicted_vs_true",
    "plot_prediction_distributions",
    "results_table_html",
    "write_html_report",
]

#: (key suffix or key, column title, format) of the HTML table for a regression task; keys with
#: ``{t}`` are formatted with the task name (``age``).
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("status", "status", "s"),
    ("{t}_mae", "MAE", ".2f"),
    ("{t}_mae_ci95", "MAE 95% CI", "ci"),
    ("{t}_r", "Pearson r", ".3f"),
    ("{t}_r2", "R\u00b2", ".3f"),
    ("predicted_{t}_std_ratio", "pred. std / true std", ".2f"),
    ("parse_failures", "unparseable", "d"),
    ("trainable_params", "trainable params", ","),
    ("train_seconds", "train s", ".0f"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("reason", "note", "s"),
)
CLASSIFICATION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("status", "status", "s"),
    ("{t}_balanced_accuracy", "balanced accuracy", ".3f"),
    ("{t}_balanced_accuracy_ci95", "95% CI", "ci"),
    ("{t}_auc", "ROC AUC", ".3f"),
    ("{t}_auc_ci95", "95% CI", "ci"),
    ("parse_failures", "unparseable", "d"),
    ("trainable_params", "trainable params", ","),
    ("train_seconds", "train s", ".0f"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("reason", "note", "s"),
)


def _with_predictions(
    arms: Mapping[str, Mapping[str, Any]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name, arm in arms.items():
        if arm is None or arm.get("y_true") is None or arm.get("y_pred") is None:
            continue
        y = np.asarray(arm["y_true"], dtype=float)
        p = np.asarray(arm["y_pred"], dtype=float)
        if len(y) != len(p):
            raise ValueError(f"arm {name!r}: {len(y)} true values but {len(p)} predictions")
        keep = np.isfinite(y) & np.isfinite(p)
        if keep.any():
            out[name] = (y[keep], p[keep])
    return out


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _figure(rows: int, cols: int, panel: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel * cols, (panel + 0.8) * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    return fig, axes


def plot_predicted_vs_true(
    arms: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    target: str = "age",
    unit: str = "years",
) -> Path:
    """Scatter of predicted against true values, one panel per arm, shared axes, identity line.

    Parameters
    ----------
    arms : mapping name -> {"y_true": array, "y_pred": array}
    path : str or Path
        PNG file to write.
    target, unit : str
        Axis labels.

    Returns
    -------
    pathlib.Path
    """
    data = _with_predictions(arms)
    if not data:
        raise ValueError("no arm has predictions to plot")
    lo = min(min(y.min(), p.min()) for y, p in data.values())
    hi = max(max(y.max(), p.max()) for y, p in data.values())
    pad = 0.04 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    rows, cols = _grid(len(data))
    fig, axes = _figure(rows, cols)
    for ax, (name, (y, p)) in zip(axes.flat, data.items(), strict=False):
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--", label="identity")
        ax.scatter(y, p, s=12, alpha=0.7, color="C0", edgecolors="none")
        mae = float(np.mean(np.abs(y - p)))
        ax.set_title(f"{name}\nMAE {mae:.2f}, n={len(y)}", fontsize=9)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
    for ax in axes.flat[len(data) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(f"true {target} ({unit})")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"predicted {target} ({unit})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_prediction_distributions(
    arms: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    target: str = "age",
    unit: str = "years",
    bins: int = 24,
) -> Path:
    """Each arm's distribution of predictions over the true distribution (shared bins and axes).

    Parameters
    ----------
    arms : mapping name -> {"y_true": array, "y_pred": array}
    path : str or Path
        PNG file to write.
    target, unit : str
    bins : int, default=24

    Returns
    -------
    pathlib.Path
    """
    data = _with_predictions(arms)
    if not data:
        raise ValueError("no arm has predictions to plot")
    lo = min(min(y.min(), p.min()) for y, p in data.values())
    hi = max(max(y.max(), p.max()) for y, p in data.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    rows, cols = _grid(len(data))
    fig, axes = _figure(rows, cols)
    for ax, (name, (y, p)) in zip(axes.flat, data.items(), strict=False):
        ax.hist(y, bins=edges, density=True, color="0.75", label="true")
        ax.hist(p, bins=edges, density=True, histtype="step", lw=2, color="C1", label="predicted")
        ratio = float(np.std(p) / np.std(y)) if np.std(y) > 0 else float("nan")
        ax.set_title(f"{name}\nstd ratio {ratio:.2f}", fontsize=9)
    for ax in axes.flat[len(data) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8, frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel(f"{target} ({unit})")
    for ax in axes[:, 0]:
        ax.set_ylabel("density")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "\u2013"
    if spec == "s":
        return str(value)
    if spec == "ci":
        if not isinstance(value, Sequence) or len(value) != 2 or None in value:
            return "\u2013"
        return f"[{value[0]:.2f}, {value[1]:.2f}]"
    try:
        if isinstance(value, float) and not math.isfinite(value):
            return "\u2013"
        return format(int(value) if spec in ("d", ",") else float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def results_table_html(
    arms: Mapping[str, Mapping[str, Any]], *, task: str = "age", kind: str = "regression"
) -> str:
    """The results table as an HTML ``<table>`` (one row per arm, every arm listed).

    Parameters
    ----------
    arms : mapping name -> result dict (the per-arm entries of ``study.json``)
    task : str
        Target name (``age``, ``sex`` ...), substituted in the column keys.
    kind : {"regression", "classification"}
    """
    columns = TABLE_COLUMNS if kind == "regression" else CLASSIFICATION_COLUMNS
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in columns)
    rows = []
    for name, arm in arms.items():
        status = str(arm.get("status", ""))
        cells = [f'<th scope="row">{html.escape(name)}</th>']
        for key, _, spec in columns:
            value = arm.get(key.format(t=task))
            cells.append(f"<td>{html.escape(_fmt(value, spec))}</td>")
        css = "ok" if status == "ok" else "notrun"
        rows.append(f'<tr class="{css}" data-arm="{html.escape(name)}">{"".join(cells)}</tr>')
    return (
        '<table id="results">\n<thead><tr><th>arm</th>'
        + head
        + "</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>"
    )


def comparisons_table_html(comparisons: Mapping[str, Any]) -> str:
    """Paired differences (arm - reference, 95% CI) as an HTML ``<table>``; bold: CI excludes 0.

    Parameters
    ----------
    comparisons : mapping
        ``study.json``'s ``comparisons``: ``metric`` and ``arms`` (arm -> reference -> dict with
        ``difference``, ``ci_low``, ``ci_high``, ``better``, ``n``).
    """
    arms = comparisons.get("arms", {})
    refs: list[str] = []
    for per_ref in arms.values():
        refs += [r for r in per_ref if r not in refs]
    head = "".join(f"<th>vs {html.escape(r)}</th>" for r in refs)
    rows = []
    for name, per_ref in arms.items():
        cells = [f'<th scope="row">{html.escape(name)}</th>']
        for ref in refs:
            d = per_ref.get(ref)
            if d is None or d.get("difference") is None:
                cells.append("<td>\u2013</td>")
                continue
            text = html.escape(
                f"{d['difference']:+.2f} {_fmt([d['ci_low'], d['ci_high']], 'ci')} (n={d['n']})"
            )
            cells.append(f"<td><b>{text}</b></td>" if d.get("better") else f"<td>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<table id="comparisons">\n<thead><tr><th>arm</th>'
        + head
        + "</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th[scope=row],td:last-child{text-align:left}
tr.notrun{color:#888}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em;font-size:13px}
dt{font-weight:600}
"""


def write_html_report(
    study: Mapping[str, Any],
    figures: Mapping[str, str | Path],
    path: str | Path,
    *,
    title: str = "fmrilm comparison study",
) -> Path:
    """Write a self-contained HTML report: run facts, the results table and the figures.

    Parameters
    ----------
    study : mapping
        The study results (``study.json``): ``arms`` (name -> result dict), and optionally
        ``task``, ``task_kind``, ``split``, ``commit``, ``date``, ``machine``, ``budget``.
    figures : mapping caption -> PNG path
        Embedded as base64 ``data:`` URIs, in order.
    path : str or Path
        HTML file to write.
    title : str

    Returns
    -------
    pathlib.Path
    """
    task = str(study.get("task", "age"))
    kind = str(study.get("task_kind", "regression"))
    facts = []
    for key in ("task", "split", "commit", "date", "machine", "budget"):
        if key in study:
            value = study[key]
            if isinstance(value, Mapping):
                value = ", ".join(
                    f"{k}={v}" for k, v in value.items() if not isinstance(v, (dict, list))
                )
            facts.append(f"<dt>{html.escape(key)}</dt><dd>{html.escape(str(value))}</dd>")
    imgs = []
    for caption, png in figures.items():
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        imgs.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    not_run = [
        f"<li><b>{html.escape(n)}</b>: {html.escape(str(a.get('reason', '')))}</li>"
        for n, a in study.get("arms", {}).items()
        if a.get("status") != "ok"
    ]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<dl>{''.join(facts)}</dl>",
        "<h2>Results</h2>",
        results_table_html(study.get("arms", {}), task=task, kind=kind),
    ]
    comparisons = study.get("comparisons") or {}
    if comparisons.get("arms"):
        metric = html.escape(str(comparisons.get("metric", "")))
        body += [
            "<h2>Paired differences</h2>",
            f"<p>{metric} of each arm minus that of a reference arm, on the subjects both scored "
            "and the same bootstrap resamples (95% CI); bold where the interval excludes 0. "
            "For MAE negative is better, for AUC positive.</p>",
            comparisons_table_html(comparisons),
        ]
    if not_run:
        body += ["<h2>Arms not run</h2>", f"<ul>{''.join(not_run)}</ul>"]
    if imgs:
        body += ["<h2>Figures</h2>", *imgs]
    doc = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path
