"""`fmrilm study CONFIG`: run the comparison study (image encoders vs the fMRI encoder vs baselines).

Every arm trains on the same split, answers the same question and is scored with the same
metrics; finished arms are skipped on a rerun (resumable after a kill). Writes ``study.json``,
one JSON per arm, the figures and a self-contained HTML report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmrilm.cli import add_set_option, apply_sets, csv_list


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``study`` subcommand on ``subparsers`` (from ``add_subparsers``)."""
    from fmrilm.study.runner import ARM_KINDS

    p = subparsers.add_parser(
        "study",
        help="compare image encoders reading rendered fMRI, the fMRI encoder and baselines on "
        "one split (resumable; writes study.json and an HTML report)",
        description=__doc__,
    )
    p.add_argument("config", metavar="CONFIG", type=Path, help="study config (configs/study*.yaml)")
    p.add_argument("--store", default=None, help="dataset store folder (overrides the config)")
    p.add_argument(
        "--scheme", default=None, choices=("site_stratified", "heldout_sites"), help="split scheme"
    )
    p.add_argument("--task", default=None, help="target: age, sex, diagnosis or a phenotype key")
    p.add_argument(
        "--arms",
        type=csv_list,
        default=None,
        help=f"comma-separated subset of {','.join(ARM_KINDS)}",
    )
    p.add_argument(
        "--renderings", type=csv_list, default=None, help="comma-separated: heatmap,connectivity"
    )
    p.add_argument("--lm", default=None, help="causal LM: hub id, folder, GGUF or smollm2")
    p.add_argument("--fmri-tokenizer", default=None, help="trained fMRI tokenizer folder")
    p.add_argument("--shared-vocab-model", default=None, help="trained shared-vocabulary LM folder")
    p.add_argument("--out", default=None, help="study.json path (default from the config)")
    p.add_argument("--work-dir", default=None, help="per-arm results and report folder")
    p.add_argument("--steps", type=int, default=None, help="training steps per arm (budget)")
    p.add_argument(
        "--max-seconds", type=float, default=None, help="training seconds per arm (budget)"
    )
    p.add_argument("--n-bootstrap", type=int, default=None, help="bootstrap resamples for CIs")
    add_set_option(
        p,
        "override any config key (YAML value; dotted for budget.* / lora.*), repeatable",
        dest="set",
    )
    p.add_argument("--no-resume", action="store_true", help="rerun arms that already finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run, func=run)
    return p


def build_config(args: argparse.Namespace):
    """The :class:`StudyConfig` of the config file with the command-line overrides applied."""
    import dataclasses

    import yaml

    from fmrilm.study.runner import StudyConfig

    if not args.config.is_file():
        raise FileNotFoundError(f"config {str(args.config)!r} does not exist")
    data = yaml.safe_load(args.config.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{args.config}: expected a mapping of config keys")
    simple = {
        "store": args.store,
        "scheme": args.scheme,
        "task": args.task,
        "arms": args.arms,
        "renderings": args.renderings,
        "lm": args.lm,
        "fmri_tokenizer": args.fmri_tokenizer,
        "shared_vocab_model": args.shared_vocab_model,
        "out": args.out,
        "work_dir": args.work_dir,
        "n_bootstrap": args.n_bootstrap,
    }
    given = {k for k, v in simple.items() if v is not None}
    given |= {f"budget.{k}" for k in ("steps", "max_seconds") if getattr(args, k) is not None}
    data.update({k: v for k, v in simple.items() if v is not None})
    budget = dict(data.get("budget") or {})
    if args.steps is not None:
        budget["steps"] = args.steps
    if args.max_seconds is not None:
        budget["max_seconds"] = args.max_seconds
    data["budget"] = budget
    data = apply_sets(data, args.set, given)
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{args.config}: unknown study config keys {unknown}")
    return StudyConfig.from_dict(data)


def format_results(study: dict) -> str:
    """A plain-text table of the study's arms."""
    t = study.get("task", "age")
    if study.get("task_kind", "regression") == "regression":
        cols = [
            (f"{t}_mae", "MAE", ".2f"),
            (f"{t}_r", "r", ".3f"),
            (f"{t}_r2", "R2", ".3f"),
            (f"predicted_{t}_std_ratio", "std ratio", ".2f"),
        ]
    else:
        cols = [(f"{t}_balanced_accuracy", "bal. acc", ".3f"), (f"{t}_auc", "AUC", ".3f")]
    cols += [
        ("parse_failures", "unparseable", "d"),
        ("trainable_params", "params", ","),
        ("train_seconds", "train s", ".0f"),
    ]
    arms = study.get("arms", {})
    width = max([len("arm"), *(len(n) for n in arms)])
    lines = [f"{'arm':<{width}}  {'status':<8}" + "".join(f"  {c[1]:>11}" for c in cols)]
    for name, arm in arms.items():
        cells = []
        for key, _, spec in cols:
            v = arm.get(key)
            cells.append(f"  {'-' if v is None else format(v, spec):>11}")
        line = f"{name:<{width}}  {arm.get('status', ''):<8}" + "".join(cells)
        if arm.get("status") != "ok":
            line = f"{name:<{width}}  {arm.get('status', ''):<8}  {arm.get('reason', '')}"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the study; print the results table and where the files are. Returns the exit code."""
    from fmrilm.study.runner import run_study

    config = build_config(args)
    study = run_study(config, resume=not args.no_resume, progress=not args.quiet)
    print(format_results(study))
    print(f"\nwrote {config.out}")
    if study.get("report"):
        print(f"report {study['report']['html']}")
    failed = [n for n, a in study["arms"].items() if a.get("status") == "failed"]
    return 1 if failed else 0
