"""Validation loss of trained fMRI LMs: the record a release model is chosen by.

    python -m benchmarks.lm_val_loss --store /tmp/fmrilm_abide_store \
        --model summary_no_dropout=runs/lm_bench_v5/site_stratified/model \
        --model summary_roi_dropout=runs/lm_bench_v6/site_stratified/model

Each model's mean answer-token loss on every validation window of the scheme it was trained on
(``fmrilm.lm.training.validation_loss``: the questions training validates on, seed 0). Only the
validation split is read, so choosing among models by it leaves the test split untouched.
Writes ``benchmarks/results/lm_val_loss.json`` and one line in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import write_result


def measure(model_dir: Path, store_path: Path) -> dict:
    import torch

    from fmrilm.data import open_store
    from fmrilm.lm.model import FMRILanguageModel
    from fmrilm.lm.training import encode_windows, scan_labels, validation_loss

    torch.set_num_threads(1)
    model = FMRILanguageModel.from_pretrained(model_dir)
    store = open_store(store_path)
    cfg = model.config
    enc = encode_windows(
        store,
        model.fmri_tokenizer,
        split="val",
        scheme=cfg.scheme,
        window_length=cfg.window_length,
        stride=cfg.stride,
    )
    labels = scan_labels(store.table.reset_index(drop=True), model.tasks)
    loss = validation_loss(model, enc["codes"], enc["scan_index"], labels)
    summary = cfg.extra.get("train_summary") or {}
    return {
        "model": str(model_dir),
        "scheme": cfg.scheme,
        "val_loss": loss,
        "n_val_windows": int(len(enc["codes"])),
        "global_step": summary.get("global_step"),
        "kept": (summary.get("validation") or {}).get("kept", "last"),
        "best_step": (summary.get("validation") or {}).get("best_step"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=MODEL_DIR")
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    args = ap.parse_args(argv)
    runs = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--model expects NAME=MODEL_DIR, got {item!r}")
        runs[name] = measure(Path(path), args.store)
        print(name, runs[name], flush=True)
    line = "; ".join(f"{n} ({r['scheme']}): val loss {r['val_loss']:.4f}" for n, r in runs.items())
    write_result("lm_val_loss", {"runs": runs}, line)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
