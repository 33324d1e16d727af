"""The LM and its baselines on the test subjects with a full window and on those without.

    python -m benchmarks.lm_subsets --store /tmp/fmrilm_abide_store \
        --run short_windows=runs/lm_bench_v9/site_stratified/results.json \
        --run full_windows_only=runs/lm_bench_v8/site_stratified/results.json

Reads the per-scan answers and the baselines' subject predictions that ``fmrilm lm evaluate``
writes (``results.json``; nothing is trained or scored again) and splits the test subjects in two:

- ``full``: every scan of the subject has at least ``--window-length`` time points (the subjects a
  model without short windows answers);
- ``short``: the subject is answered from one shorter window (``data.min_window_length``).

For each run, subset and task: the LM's age MAE or AUC with a bootstrap 95% CI, the same for the
trivial, site-only and FC baselines of the same run, and the paired difference LM - FC
(correlation) on the same subjects. Two runs evaluated on different subject sets are thus compared
on the subjects both answered. Writes ``benchmarks/results/<--result-name>.json`` and one line in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import named_paths, write_result

METRIC = {"age": "mae", "sex": "roc_auc", "diagnosis": "roc_auc"}


def lm_subject_predictions(results: dict, table, task: str, answers: list[str] | None):
    """``{subject_id: prediction}`` of the LM from the per-scan answers of ``results``."""
    from fmrilm.evaluation.metrics import average_by_subject

    scans = [p for p in results["predictions"] if p["task"] == task and not p["parse_failure"]]
    subject_of = dict(
        zip(table["scan_id"].astype(str), table["subject_id"].astype(str), strict=True)
    )
    subj = [subject_of[p["scan_id"]] for p in scans]
    if answers is None:
        pred = np.array([p["value"] for p in scans], dtype=float)
    else:
        pred = np.array([[p["probabilities"][a] for a in answers] for p in scans], dtype=float)
    ids, _, p_s, _, _ = average_by_subject(subj, np.zeros(len(subj)), pred)
    return {str(i): p for i, p in zip(ids, p_s, strict=True)}


def subset_metrics(results: dict, table, window_length: int, n_bootstrap: int) -> dict:
    """Metrics of the LM and each baseline per subset (``all``, ``full``, ``short``) and task."""
    from fmrilm.baselines.clinical import target_values
    from fmrilm.evaluation.metrics import (
        average_by_subject,
        classification_metrics,
        paired_bootstrap_difference,
        regression_metrics,
    )

    rows = table.reset_index(drop=True)
    subj_all = rows["subject_id"].astype(str).to_numpy()
    shortest = rows.groupby(subj_all)["n_timepoints"].min()
    out: dict = {}
    for task, entry in results["targets"].items():
        if task not in METRIC:
            continue
        labels = entry.get("labels")
        lm = lm_subject_predictions(results, rows, task, labels)
        ids = [str(s) for s in entry["subject_ids"]]
        preds = {"lm": np.asarray([lm[s] for s in ids])}  # the baselines' subjects and order
        preds.update({b: np.asarray(p) for b, p in entry["subject_predictions"].items()})
        # the truth per subject, as the evaluation averaged it
        y_all = target_values(rows, task).to_numpy(dtype=object)
        in_eval = np.isin(subj_all, ids)
        s_ids, y_s, _, _, _ = average_by_subject(
            subj_all[in_eval], y_all[in_eval], np.zeros(int(in_eval.sum()))
        )
        truth = dict(zip([str(s) for s in s_ids], y_s, strict=True))
        y = np.asarray([truth[s] for s in ids], dtype=object)
        if labels is None:
            y = y.astype(float)
        full = np.asarray([shortest[s] >= window_length for s in ids])
        for subset, keep in (("all", np.ones(len(ids), bool)), ("full", full), ("short", ~full)):
            if keep.sum() < 10:
                continue
            row: dict = {"n_subjects": int(keep.sum())}
            for who, p in preds.items():
                if labels is None:
                    m = regression_metrics(y[keep], p[keep], n_bootstrap=n_bootstrap)
                else:
                    m = classification_metrics(
                        y[keep], p[keep], labels=labels, n_bootstrap=n_bootstrap
                    )
                value = m["metrics"][METRIC[task]]
                row[who] = {"value": value["value"], "ci95": [value["ci_low"], value["ci_high"]]}
            d = paired_bootstrap_difference(
                y[keep],
                preds["lm"][keep],
                preds["connectivity_correlation"][keep],
                METRIC[task],
                labels=labels,
                n_bootstrap=max(1, n_bootstrap),
            )
            row["lm_minus_fc"] = {"value": d["difference"], "ci95": [d["ci_low"], d["ci_high"]]}
            out.setdefault(subset, {})[task] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=RESULTS_JSON")
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    ap.add_argument("--window-length", type=int, default=160)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--result-name", default="lm_subsets")
    args = ap.parse_args(argv)

    from fmrilm.data import open_store

    table = open_store(args.store).table
    runs = {}
    for name, path in named_paths(args.run, "--run").items():
        results = json.loads(Path(path).read_text())
        runs[name] = {
            "results": str(path),
            "scheme": results.get("scheme"),
            "subsets": subset_metrics(results, table, args.window_length, args.bootstrap),
        }
    lines = []
    for name, r in runs.items():
        for subset, tasks in r["subsets"].items():
            cells = ", ".join(
                f"{t} {v['lm']['value']:.2f} (FC {v['connectivity_correlation']['value']:.2f})"
                for t, v in tasks.items()
            )
            n = next(iter(tasks.values()))["n_subjects"]
            lines.append(f"{name} {r['scheme']} {subset} ({n} subjects): {cells}")
    print("\n".join(lines))
    write_result(
        args.result_name,
        {"window_length": args.window_length, "n_bootstrap": args.bootstrap, "runs": runs},
        "LM by subset of test subjects (full window / short scans): " + "; ".join(lines),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
