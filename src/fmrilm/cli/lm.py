"""``fmrilm lm`` subcommands: train, evaluate, predict.

- ``fmrilm lm train --config configs/lm.yaml [--store S --fmri-tokenizer T --scheme X
  --out-dir D --layout L --init I --finetune F --max-steps N --base-model M] [--resume]``
- ``fmrilm lm evaluate MODEL STORE [--scheme X --split test --out results.json
  --n-bootstrap 1000]``: the LM and every clinical baseline on the same split, JSON + table.
- ``fmrilm lm summarize SS.json HS.json [--ablation NAME=X.json] --out lm.json``: the flat keys
  of ``benchmarks/results/lm.json`` from one evaluate result per split scheme.
- ``fmrilm lm predict MODEL SCAN --question age|sex|diagnosis|...``: answer for a new scan
  (a time-series file, or a NIfTI with ``--atlas``), with its probability or 90% interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fmrilm.cli import add_set_option, apply_sets, csv_list, set_dotted

__all__ = [
    "add_parser",
    "read_scan",
    "run_train",
    "run_evaluate",
    "run_predict",
    "run_summarize",
    "run_export_checkpoint",
]


LAYOUT_CHOICES = ("roi_major", "time_major", "compact", "summary")
_WINDOW_HELP = (
    "answer from windows of this many points (summary layout; e.g. 320: whole ABIDE scans, "
    "read as consecutive tokenizer windows); default: the model's"
)
_THREADS_HELP = (
    "torch CPU threads (default: torch's choice; 1 is ~10x faster than 2 when other jobs "
    "share a 2-core machine)"
)


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``lm`` subcommand group on ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser(
        "lm",
        help="fine-tune / evaluate / apply the fMRI language model",
        description="Fine-tune a causal LM on fMRI tokens to answer clinical questions.",
    )
    sub = p.add_subparsers(dest="lm_command", required=True)

    t = sub.add_parser("train", help="fine-tune an LM on a store's training split")
    t.add_argument("--config", type=Path, default=None, help="YAML/JSON config (configs/lm.yaml)")
    t.add_argument("--store", type=Path, default=None, help="dataset store folder")
    t.add_argument("--fmri-tokenizer", type=Path, default=None, help="trained tokenizer folder")
    t.add_argument(
        "--scheme",
        default=None,
        help="split scheme: site_stratified, heldout_sites, or a cross-validation fold of one "
        "over its training and validation subjects, e.g. site_stratified-cv3-fold0",
    )
    t.add_argument("--out-dir", type=Path, default=None, help="run folder (model in OUT/model)")
    t.add_argument("--base-model", default=None, help="hub id, folder, .gguf or 'smollm2'")
    t.add_argument("--gguf-file", default=None, help="GGUF file inside --base-model")
    t.add_argument("--targets", type=csv_list, default=None, help="comma-separated targets")
    # the CLI imports no stage at start-up (torch and transformers take seconds): a test pins this
    # list to fmrilm.lm.LAYOUTS
    t.add_argument("--layout", choices=LAYOUT_CHOICES, default=None)
    t.add_argument("--init", choices=("codebook", "subspace", "random"), default=None)
    t.add_argument("--finetune", choices=("lora", "full"), default=None)
    t.add_argument("--lora-r", type=int, default=None)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    add_set_option(
        t, "override any config key (dotted, YAML value), e.g. --set train.weight_decay=0.1"
    )
    t.set_defaults(run=run_train, func=run_train)

    e = sub.add_parser("evaluate", help="LM and baselines on the same split, with bootstrap CIs")
    e.add_argument(
        "model",
        type=Path,
        nargs="+",
        metavar="MODEL",
        help="model folder (OUT/model); several: their ensemble (mean answer distribution); "
        "TASK[,TASK]=FOLDER: a member that answers only those tasks",
    )
    e.add_argument("store", type=Path, metavar="STORE", help="dataset store folder")
    e.add_argument("--scheme", default=None, help="split scheme (default: the model's)")
    e.add_argument("--split", default="test", help="split evaluated (default: test)")
    e.add_argument("--baselines", type=csv_list, default=None, help="subset of the baselines")
    e.add_argument("--n-bootstrap", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=8, help="windows per LM forward pass")
    e.add_argument("--no-balance", action="store_true", help="keep the training class prior")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    e.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    e.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    e.add_argument("--window-length", type=int, default=None, help=_WINDOW_HELP)
    e.set_defaults(run=run_evaluate, func=run_evaluate)

    m = sub.add_parser(
        "summarize", help="merge evaluate results (one per split scheme) into lm.json keys"
    )
    m.add_argument("results", type=Path, nargs="+", metavar="RESULTS", help="evaluate --out files")
    m.add_argument(
        "--ablation",
        action="append",
        default=[],
        metavar="NAME=RESULTS",
        help="an ablation's evaluate --out file (repeatable)",
    )
    m.add_argument("--out", type=Path, default=None, help="write the summary here")
    m.set_defaults(run=run_summarize, func=run_summarize)

    q = sub.add_parser("predict", help="answer a question for a new scan")
    q.add_argument(
        "model",
        type=Path,
        nargs="+",
        metavar="MODEL",
        help="model folder (OUT/model); several: their ensemble; TASK=FOLDER: a member that "
        "answers only that task",
    )
    q.add_argument("scan", type=Path, metavar="SCAN", help="time-series file (T x R) or NIfTI")
    q.add_argument("--question", "--task", dest="question", required=True, help="task name")
    q.add_argument("--atlas", default=None, help="atlas image for a NIfTI scan")
    q.add_argument("--key", default=None, help="array name inside .npz/.mat files")
    q.add_argument("--transpose", action="store_true", help="the file stores (R, T)")
    q.add_argument("--no-balance", action="store_true", help="keep the training class prior")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    q.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    q.add_argument("--json", action="store_true", help="print the full answer as JSON")
    q.add_argument("--window-length", type=int, default=None, help=_WINDOW_HELP)
    q.set_defaults(run=run_predict, func=run_predict)

    x = sub.add_parser(
        "export-checkpoint",
        help="write a training step checkpoint as a model folder",
        description="Write the model of one step checkpoint of a run (train.checkpoints_kept: -1 "
        "keeps every one) as a model folder that evaluate and predict read.",
    )
    x.add_argument("model", type=Path, metavar="MODEL", help="the run's final model folder")
    x.add_argument("checkpoint", type=Path, metavar="CKPT", help="a .ckpt file of the same run")
    x.add_argument("--out", type=Path, required=True, help="folder to write the model to")
    x.set_defaults(run=run_export_checkpoint, func=run_export_checkpoint)
    return p


# train options -> the config keys they set (dotted for nested ones)
_TRAIN_FLAGS = {
    "store": "store",
    "fmri_tokenizer": "fmri_tokenizer",
    "scheme": "scheme",
    "out_dir": "out_dir",
    "base_model": "base_model",
    "gguf_file": "gguf_file",
    "targets": "targets",
    "seed": "seed",
    "layout": "model.layout",
    "init": "model.init",
    "finetune": "model.finetune",
    "lora_r": "model.lora_r",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
}


def run_train(args: argparse.Namespace) -> int:
    """Merge the config file and flags, train, print the summary."""
    from fmrilm.lm.config import load_config_file
    from fmrilm.lm.training import train

    _threads(args)
    cfg = load_config_file(args.config) if args.config else {}
    given = set()
    for flag, key in _TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        set_dotted(cfg, key, str(value) if isinstance(value, Path) else value)
        given.add(key)
    apply_sets(cfg, args.overrides, given)
    if not cfg.get("store") or not Path(cfg["store"]).exists():
        raise FileNotFoundError(f"store {cfg.get('store')!r} does not exist")
    res = train(cfg, resume=args.resume)
    keys = (
        "global_step",
        "train_seconds",
        "tokens_per_second",
        "windows_per_second",
        "n_train_windows",
        "resumed_from",
        "model_dir",
    )
    print(json.dumps({k: res[k] for k in keys if k in res}, indent=2, default=str))
    return 0


def _load(model_dirs: list[Path], device: str = "cpu", window_length: int | None = None):
    """One model folder's model, or several folders' ensemble, on ``device``; answering from
    windows of ``window_length`` points when given (summary layout)."""
    import torch

    from fmrilm.lm.ensemble import load_models

    model = load_models(list(model_dirs))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    for m in getattr(model, "members", [model]):
        if window_length is not None:
            m.set_window_length(window_length)
        m.to(device)
        if isinstance(m.fmri_tokenizer, torch.nn.Module):
            m.fmri_tokenizer.to(device)
    return model


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained model and the baselines; print the table, write ``--out``."""
    from fmrilm.evaluation.report import json_default
    from fmrilm.lm.evaluation import evaluate, flat_summary, format_results

    if not args.store.exists():
        raise FileNotFoundError(f"store {str(args.store)!r} does not exist")
    _threads(args)
    model = _load(args.model, args.device, args.window_length)
    res = evaluate(
        model,
        args.store,
        scheme=args.scheme,
        split=args.split,
        baselines=tuple(args.baselines) if args.baselines else None,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        balanced=not args.no_balance,
    )
    res["summary"] = flat_summary({res["scheme"]: res})
    print(format_results(res))
    if res["parse_failures"]:
        print(f"WARNING: {res['parse_failures']} answers could not be read")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=json_default) + "\n")
        print(f"\nwrote {args.out}")
    return 0 if res["parse_failures"] == 0 else 1


def run_export_checkpoint(args: argparse.Namespace) -> int:
    """Export one step checkpoint; print its step and folder."""
    from fmrilm.lm.training import export_checkpoint

    if not args.model.exists():
        raise FileNotFoundError(f"model folder {str(args.model)!r} does not exist")
    model = export_checkpoint(args.model, args.checkpoint, args.out)
    step = model.train_summary["global_step"]
    print(json.dumps({"global_step": step, "model_dir": str(args.out)}, indent=2))
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    """Print (and write) the flat summary of several evaluate results."""
    from fmrilm.evaluation.report import json_default
    from fmrilm.lm.evaluation import summarize_runs

    def read(path: Path) -> dict:
        if not path.exists():
            raise FileNotFoundError(f"results file {str(path)!r} does not exist")
        return json.loads(path.read_text())

    ablations = {}
    for item in args.ablation:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--ablation expects NAME=RESULTS, got {item!r}")
        ablations[name] = read(Path(path))
    summary = summarize_runs([read(p) for p in args.results], ablations)
    text = json.dumps(summary, indent=2, default=json_default)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def read_scan(path: Path, *, atlas=None, key=None, transpose: bool = False):
    """A raw (T, R) scan from a time-series file, or from a NIfTI through ``atlas``."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        if not atlas:
            raise ValueError("a NIfTI scan needs --atlas (a label image matching the model's ROIs)")
        from nilearn.maskers import NiftiLabelsMasker

        # raw signals: the model applies its training split's scaler itself
        masker = NiftiLabelsMasker(labels_img=atlas, standardize=False)
        return masker.fit_transform(str(path))
    from fmrilm.data.readers import read_timeseries

    return read_timeseries(path, key=key, transpose=transpose)


def run_predict(args: argparse.Namespace) -> int:
    """Print the answer to ``--question`` for one scan."""
    from fmrilm.lm.evaluation import predict_scan

    if not args.scan.exists():
        raise FileNotFoundError(f"scan {str(args.scan)!r} does not exist")
    _threads(args)
    model = _load(args.model, args.device, args.window_length)
    scan = read_scan(args.scan, atlas=args.atlas, key=args.key, transpose=args.transpose)
    res = predict_scan(model, scan, args.question, balanced=not args.no_balance)
    if args.json:
        res.pop("window_values", None)
        print(json.dumps(res, indent=2))
    elif res["parse_failure"]:
        print(f"{res['question']} -> no readable answer ({res['n_windows']} windows)")
        return 1
    elif "probabilities" in res:
        probs = ", ".join(f"{k} {v:.3f}" for k, v in res["probabilities"].items())
        print(
            f"{res['question']} -> {res['answer']} (p = {res['probability']:.3f}; {probs}; "
            f"{res['n_windows']} windows)"
        )
    else:
        lo, hi = res["interval"]
        print(
            f"{res['question']} -> {res['value']:.1f} (90% interval {lo:g}-{hi:g}; "
            f"{res['n_windows']} windows)"
        )
    return 0
