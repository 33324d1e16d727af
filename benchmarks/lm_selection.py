"""Trained fMRI LMs on the validation split: the record a configuration is chosen by.

    python -m benchmarks.lm_selection --store /tmp/fmrilm_abide_store \
        --model summary_no_dropout=runs/lm_bench_v5/site_stratified/model \
        --model summary_roi_dropout=runs/lm_bench_v6/site_stratified/model

For each model, on the validation split of the scheme it was trained on (the test split is not
read, so choosing among models by these figures leaves it untouched):

- ``val_loss``: the mean answer-token loss on every validation window
  (``fmrilm.lm.training.validation_loss``: the questions training validates on, seed 0);
- ``val_metrics``: age MAE, sex and diagnosis AUC (``fmrilm.lm.evaluation.evaluate`` with
  ``split="val"``), beside the trivial, site-only and FC (correlation) baselines of the same run.

``--evaluated NAME=RESULTS`` records an ``fmrilm lm evaluate MODEL [MODEL ...] STORE --split val
--out RESULTS`` file instead (an ensemble has no single answer-token loss: ``val_loss`` is null);
``fc`` is then the better, per metric, of the connectivity baselines it holds (``fc_baselines``).

Writes ``benchmarks/results/lm_selection.json`` and one line in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import named_paths, write_result


def val_record(ev: dict) -> dict:
    """``val_metrics`` (LM, FC, site only, trivial), ``n_val_subjects`` and ``scheme`` of an
    evaluation of the validation split."""
    from fmrilm.lm.evaluation import flat_summary

    if ev.get("split") != "val":
        raise SystemExit(f"expected an evaluation of the val split, got {ev.get('split')!r}")
    flat = flat_summary({"site_stratified": ev})  # unprefixed keys, here of the val split
    keys = ("age_mae", "sex_auc", "diagnosis_auc")
    return {
        "val_metrics": {
            who: {k: flat.get(f"{p}{k}") for k in keys}
            for who, p in (("lm", ""), ("fc", "fc_"), ("site", "site_"), ("trivial", "trivial_"))
        },
        "n_val_subjects": ev["targets"]["age"]["n_eval_subjects"],
        "scheme": ev["scheme"],
        # fc is the better of these per metric
        "fc_baselines": sorted(
            {
                n
                for t in ev["targets"].values()
                for n in t["results"]
                if n.startswith("connectivity_")
            }
        ),
    }


def validation_windows(model, store) -> tuple[dict, object]:
    """The validation split's encoded windows (``encode_windows``) of the model's scheme and
    windows, short scans read as the model reads them (``min_window_length``), and every scan's
    task labels (``scan_labels``)."""
    from fmrilm.lm.training import encode_windows, scan_labels

    cfg = model.config
    enc = encode_windows(
        store,
        model.fmri_tokenizer,
        split="val",
        scheme=cfg.scheme,
        window_length=cfg.window_length,
        stride=cfg.stride,
        min_window_length=cfg.min_window_length,
    )
    return enc, scan_labels(store.table.reset_index(drop=True), model.tasks)


def measure(model_dir: Path, store_path: Path) -> dict:
    import torch

    from fmrilm.data import open_store
    from fmrilm.lm.evaluation import evaluate
    from fmrilm.lm.model import FMRILanguageModel
    from fmrilm.lm.training import validation_loss

    torch.set_num_threads(1)
    model = FMRILanguageModel.from_pretrained(model_dir)
    store = open_store(store_path)
    enc, labels = validation_windows(model, store)
    loss = validation_loss(model, enc["codes"], enc["scan_index"], labels)
    summary = model.config.extra.get("train_summary") or {}
    ev = evaluate(
        model,
        store,
        split="val",
        baselines=("trivial", "site", "connectivity_correlation"),
        n_bootstrap=1000,
    )
    return {
        **val_record(ev),
        "model": str(model_dir),
        "val_loss": loss,
        "n_val_windows": int(len(enc["codes"])),
        "global_step": summary.get("global_step"),
        "kept": (summary.get("validation") or {}).get("kept", "last"),
        "best_step": (summary.get("validation") or {}).get("best_step"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=MODEL_DIR")
    ap.add_argument(
        "--evaluated",
        action="append",
        default=[],
        metavar="NAME=RESULTS",
        help="an `fmrilm lm evaluate ... --split val --out RESULTS` file (e.g. of an ensemble)",
    )
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    ap.add_argument(
        "--result-name", default="lm_selection", help="results file (benchmarks/results/NAME.json)"
    )
    args = ap.parse_args(argv)
    if not args.model and not args.evaluated:
        raise SystemExit("give --model or --evaluated")
    runs = {}
    for name, path in named_paths(args.model, "--model").items():
        runs[name] = measure(path, args.store)
        print(name, runs[name], flush=True)
    for name, path in named_paths(args.evaluated, "--evaluated").items():
        if not path.exists():
            raise SystemExit(f"--evaluated {name}: {path} does not exist")
        ev = json.loads(path.read_text())
        members = (ev.get("model") or {}).get("ensemble")
        runs[name] = {
            **val_record(ev),
            "model": [m.get("source") for m in members] if members else ev.get("model"),
            "evaluation": str(path),
            "val_loss": None,  # not defined for an ensemble; read the metrics
        }
        print(name, runs[name], flush=True)

    def loss(r):
        return "n/a" if r["val_loss"] is None else f"{r['val_loss']:.4f}"

    line = "; ".join(
        f"{n} ({r['scheme']} val): loss {loss(r)}, age MAE "
        f"{r['val_metrics']['lm']['age_mae']:.2f}, sex AUC {r['val_metrics']['lm']['sex_auc']:.2f}, "
        f"dx AUC {r['val_metrics']['lm']['diagnosis_auc']:.2f}"
        for n, r in runs.items()
    )
    write_result(args.result_name, {"runs": runs}, line)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
