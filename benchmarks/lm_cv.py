"""Choose between LM configurations by cross-validation over a scheme's training subjects.

The validation split (132 subjects on ``site_stratified``, 15 of them female) cannot rank
configurations that move sex or diagnosis AUC by less than about 0.1. Cross-validation pools
the parent scheme's training and validation subjects, trains each configuration once per fold
(``--scheme <scheme>-cv<K>-fold<i>``, :func:`fmrilm.data.splits.cross_validation_split`) and
scores every fold's model on the fold it did not train on; the test split is never read.

    fmrilm lm train --config configs/lm.yaml [--set KEY=VALUE ...] --store STORE \
        --scheme site_stratified-cv3-fold0 --fmri-tokenizer TOK --out-dir runs/cv/NAME/fold0 ...
    python -m benchmarks.lm_cv --store STORE --variant main=runs/cv/main \
        --variant components=runs/cv/components --reference main --result-name lm_cv_site_stratified

Every ``RUN/fold<i>/model`` is evaluated on its fold (``fmrilm.lm.evaluation.evaluate`` with
``split="val"``, kept as ``RUN/fold<i>/val_evaluation.json`` and reused), then the folds'
per-subject answers are pooled: each variant's age MAE, sex and diagnosis AUC and balanced
accuracy over every pooled subject, with bootstrap CIs; the paired difference from the
reference variant and from FC + linear on the same subjects; and the same figures for the
trivial, site-only and connectivity baselines (each fitted on its fold's training subjects).
A variant is ``better_than_reference_on_all_three`` when its pooled age MAE is lower and its sex
and diagnosis AUC higher. Only folds that every variant has are pooled.

Writes ``benchmarks/results/<result-name>.json`` and one line in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from benchmarks.common import named_paths, write_result

METRICS = {
    "age": ("mae", "age_mae"),
    "sex": ("roc_auc", "sex_auc"),
    "diagnosis": ("roc_auc", "diagnosis_auc"),
}
BASELINES = ("trivial", "site", "connectivity_correlation", "connectivity_tangent")
EVALUATION_FILE = "val_evaluation.json"


def fold_folders(run: Path) -> dict[int, Path]:
    """``{i: RUN/fold<i>}`` for every fold folder holding a trained ``model``."""
    if not run.is_dir():
        raise SystemExit(f"{run} is not a folder of fold runs (RUN/fold<i>/model)")
    out = {}
    for d in sorted(run.iterdir()):
        m = re.fullmatch(r"fold(\d+)", d.name)
        if m and (d / "model").is_dir():
            out[int(m[1])] = d
    if not out:
        raise SystemExit(f"{run} holds no fold<i>/model folder")
    return out


def fold_evaluation(
    folder: Path, store_path: Path, baselines: tuple[str, ...] = BASELINES, n_bootstrap: int = 0
) -> dict:
    """The fold model's evaluation of its validation fold, from ``EVALUATION_FILE`` if kept
    (and it holds every baseline asked for).

    The folds are pooled before any interval is drawn, so by default a fold gets none. The
    baselines do not depend on the model, so only the reference variant needs them.
    """
    path = folder / EVALUATION_FILE
    if path.is_file():
        ev = json.loads(path.read_text())
        if all(
            "lm_subjects" in t and set(baselines) <= set(t.get("subject_predictions", {}))
            for t in ev["targets"].values()
        ):
            return ev
    from fmrilm.lm.evaluation import evaluate
    from fmrilm.lm.model import FMRILanguageModel

    model = FMRILanguageModel.from_pretrained(folder / "model")
    ev = evaluate(model, store_path, split="val", baselines=baselines, n_bootstrap=n_bootstrap)
    path.write_text(json.dumps(ev))
    return ev


def check_folds(evaluations: dict[str, dict[int, dict]]) -> tuple[str, int]:
    """The parent scheme and fold count that every evaluation shares; exits otherwise."""
    from fmrilm.data import parse_cv_scheme

    seen = set()
    for name, by_fold in evaluations.items():
        for i, ev in by_fold.items():
            if ev.get("split") != "val":
                raise SystemExit(f"{name} fold {i}: an evaluation of {ev.get('split')!r}, not val")
            cv = parse_cv_scheme(ev["scheme"])
            if cv is None or cv[2] != i:
                raise SystemExit(
                    f"{name} fold{i}: its model was trained on scheme {ev['scheme']!r}, not a "
                    f"cross-validation fold {i} (<scheme>-cv<K>-fold{i})"
                )
            seen.add(cv[:2])
    if len(seen) != 1:
        raise SystemExit(f"the runs come from different cross-validations: {sorted(seen)}")
    return seen.pop()


def pooled(by_fold: dict[int, dict], task: str, who: str) -> tuple[list, list, np.ndarray]:
    """Subject ids, truth and predictions of ``who`` ("lm" or a baseline) over the folds."""
    ids, truth, preds = [], [], []
    for i in sorted(by_fold):
        t = by_fold[i]["targets"][task]
        lm = t["lm_subjects"]
        if who == "lm":
            ids += lm["subject_ids"]
            truth += lm["truth"]
            preds += lm["predictions"]
        else:  # the baselines' subjects, with the truth the LM's entry records for them
            y = dict(zip(lm["subject_ids"], lm["truth"], strict=True))
            for s, p in zip(t["subject_ids"], t["subject_predictions"][who], strict=True):
                if s in y:
                    ids.append(s)
                    truth.append(y[s])
                    preds.append(p)
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{task}: a subject is in more than one validation fold")
    return ids, truth, np.asarray(preds, dtype=float)


def scores(truth: list, pred: np.ndarray, task: str, labels, n_bootstrap: int, seed: int) -> dict:
    """Pooled metrics with bootstrap CIs: ``{key: value, key_ci95: [low, high]}``."""
    from fmrilm.evaluation.metrics import classification_metrics, regression_metrics

    if task == "age":
        m = regression_metrics(np.asarray(truth, float), pred, n_bootstrap=n_bootstrap, seed=seed)
        wanted = {"age_mae": "mae", "age_r": "pearson_r"}
    else:
        m = classification_metrics(
            np.asarray(truth, object), pred, labels=labels, n_bootstrap=n_bootstrap, seed=seed
        )
        wanted = {f"{task}_auc": "roc_auc", f"{task}_balanced_accuracy": "balanced_accuracy"}
    out = {}
    for key, metric in wanted.items():
        v = m["metrics"][metric]
        out[key] = v["value"]
        out[f"{key}_ci95"] = [v["ci_low"], v["ci_high"]]
    out[f"{task}_n_subjects"] = len(truth)
    return out


def paired(a, b, task: str, labels, n_bootstrap: int, seed: int) -> dict:
    """``metric(a) - metric(b)`` with its paired bootstrap CI on the subjects both answered."""
    from fmrilm.evaluation.metrics import paired_bootstrap_difference

    ids_a, truth, pa = a
    ids_b, _, pb = b
    where = {s: j for j, s in enumerate(ids_b)}
    keep = [j for j, s in enumerate(ids_a) if s in where]
    other = [where[ids_a[j]] for j in keep]
    y = np.asarray([truth[j] for j in keep], float if task == "age" else object)
    d = paired_bootstrap_difference(
        y, pa[keep], pb[other], METRICS[task][0], labels=labels, n_bootstrap=n_bootstrap, seed=seed
    )
    return {"difference": d["difference"], "ci95": [d["ci_low"], d["ci_high"]], "n": d["n"]}


def compare(
    evaluations: dict[str, dict[int, dict]], reference: str, n_bootstrap: int, seed: int
) -> dict:
    """The pooled record of every variant and baseline (see the module docstring)."""
    ref = evaluations[reference]
    tasks = [t for t in METRICS if all(t in ev["targets"] for ev in ref.values())]
    labels = {t: next(iter(ref.values()))["targets"][t].get("labels") for t in tasks}
    lm = {n: {t: pooled(by, t, "lm") for t in tasks} for n, by in evaluations.items()}
    base = {b: {t: pooled(ref, t, b) for t in tasks} for b in BASELINES}
    out: dict = {"baselines": {}, "variants": {}}
    for b, per_task in base.items():
        out["baselines"][b] = {}
        for t, (_, y, p) in per_task.items():
            out["baselines"][b].update(scores(y, p, t, labels[t], n_bootstrap, seed))
    for name, per_task in lm.items():
        rec: dict = {"pooled": {}, "per_fold": {}, "minus_reference": {}, "minus_fc": {}}
        for t, (ids, y, p) in per_task.items():
            rec["pooled"].update(scores(y, p, t, labels[t], n_bootstrap, seed))
            key = METRICS[t][1]
            # FC: the connectivity baseline that is better pooled on this metric
            fc = min(
                ("connectivity_correlation", "connectivity_tangent"),
                key=lambda b: out["baselines"][b][key] * (1 if t == "age" else -1),
            )
            rec["minus_fc"][key] = {
                "baseline": fc,
                **paired((ids, y, p), base[fc][t], t, labels[t], n_bootstrap, seed),
            }
            if name != reference:
                rec["minus_reference"][key] = paired(
                    (ids, y, p), lm[reference][t], t, labels[t], n_bootstrap, seed
                )
        for i, ev in sorted(evaluations[name].items()):
            rec["per_fold"][str(i)] = {
                METRICS[t][1]: ev["targets"][t]["results"]["lm"]["metrics"][METRICS[t][0]]["value"]
                for t in tasks
            }
        if name != reference:
            d = {k: v["difference"] for k, v in rec["minus_reference"].items()}
            rec["better_than_reference_on_all_three"] = len(d) == 3 and (
                d["age_mae"] < 0 and d["sex_auc"] > 0 and d["diagnosis_auc"] > 0
            )
        out["variants"][name] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=RUN",
        help="a configuration's fold runs: RUN/fold<i>/model, one per fold",
    )
    ap.add_argument("--reference", default=None, help="the variant others are paired with")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for evaluating")
    ap.add_argument("--result-name", default="lm_cv")
    args = ap.parse_args(argv)
    runs = named_paths(args.variant, "--variant")
    if len(runs) < 1:
        raise SystemExit("name at least one --variant NAME=RUN")
    reference = args.reference or next(iter(runs))
    if reference not in runs:
        raise SystemExit(f"--reference {reference!r} is not one of the variants {list(runs)}")
    folders = {n: fold_folders(r) for n, r in runs.items()}
    common = sorted(set.intersection(*(set(f) for f in folders.values())))
    if not common:
        raise SystemExit(
            f"no fold is trained for every variant: { ({n: sorted(f) for n, f in folders.items()}) }"
        )

    import torch

    torch.set_num_threads(args.threads)
    evaluations = {
        n: {
            i: fold_evaluation(f[i], args.store, BASELINES if n == reference else ("trivial",))
            for i in common
        }
        for n, f in folders.items()
    }
    parent, n_folds = check_folds(evaluations)
    record = {
        "scheme": parent,
        "n_folds": n_folds,
        "folds_pooled": common,
        "reference": reference,
        "runs": {n: str(r) for n, r in runs.items()},
        "n_bootstrap": args.n_bootstrap,
        **compare(evaluations, reference, args.n_bootstrap, args.seed),
    }
    parts = []
    for n, v in record["variants"].items():
        p = v["pooled"]
        parts.append(
            f"{n} age MAE {p.get('age_mae', float('nan')):.2f}, sex AUC "
            f"{p.get('sex_auc', float('nan')):.3f}, dx AUC {p.get('diagnosis_auc', float('nan')):.3f}"
            + (
                f" (all three better than {reference}: {v['better_than_reference_on_all_three']})"
                if n != reference
                else ""
            )
        )
    fc = record["baselines"]["connectivity_correlation"]
    n_subj = next(iter(record["variants"].values()))["pooled"].get("age_n_subjects")
    summary = (
        f"{parent} cv{n_folds}, folds {common} pooled ({n_subj} subjects): "
        + "; ".join(parts)
        + f"; FC (correlation) {fc.get('age_mae', float('nan')):.2f} / "
        f"{fc.get('sex_auc', float('nan')):.3f} / {fc.get('diagnosis_auc', float('nan')):.3f}"
    )
    path = write_result(args.result_name, record, summary)
    print(summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
