"""``fmrilm predict``: answer clinical questions about a scan or a whole store.

- ``fmrilm predict SCAN`` (a ROI time-series file, or a NIfTI with ``--atlas``): age with a 90%
  interval, sex and diagnosis with probabilities, from the bundled pretrained model;
  ``--example`` answers for the bundled example scan; ``--question`` for other questions the
  model knows; ``--json`` for machines.
- ``fmrilm predict STORE --out answers.csv`` (a dataset store folder): one CSV row per scan,
  streamed, resumable; ``--workers N`` runs N processes on interleaved shards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fmrilm.cli import csv_list
from fmrilm.cli.lm import read_scan

__all__ = ["add_parser", "run"]


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, got {text!r}") from None
    if not sep or not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return k, n


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="answer age / sex / diagnosis for a scan or a store (bundled pretrained model)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("target", nargs="?", type=Path, metavar="SCAN|STORE", help="scan or store")
    p.add_argument("--example", action="store_true", help="use the bundled example scan")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: bundled)")
    p.add_argument(
        "--question", type=csv_list, default=None, help="task names (default: all of them)"
    )
    p.add_argument("--tr", type=float, default=None, help="repetition time in seconds (checked)")
    p.add_argument("--atlas", default=None, help="label image for a NIfTI scan")
    p.add_argument("--key", default=None, help="array name inside .npz/.mat files")
    p.add_argument("--transpose", action="store_true", help="the file stores (ROI, time)")
    p.add_argument("--no-balance", action="store_true", help="keep the training class prior")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the answers as JSON")
    p.add_argument("--out", type=Path, default=None, help="CSV of answers (store mode)")
    p.add_argument("--split", default=None, help="only this split of the store")
    p.add_argument("--workers", type=int, default=1, help="processes (store mode)")
    p.add_argument("--shard", type=_shard, default=(0, 1), help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run, func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from fmrilm.pretrained import EXAMPLE_SCAN

    if args.example:
        if args.target is not None:
            raise ValueError("give either SCAN or --example, not both")
        args.target = EXAMPLE_SCAN
    if args.target is None:
        raise ValueError("give a SCAN file or STORE folder, or --example")
    if not args.target.exists():
        raise FileNotFoundError(f"{str(args.target)!r} does not exist")
    if args.target.is_dir():
        return _run_store(args)
    return _run_scan(args)


def _pipeline(args):
    import warnings

    from transformers.utils import logging as hf_logging

    from fmrilm.pretrained import load_pipeline

    # a user asking about a scan wants the answers, not the libraries' loading chatter
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    return load_pipeline(args.model, threads=args.threads)


def _run_scan(args) -> int:
    pipe = _pipeline(args)
    if args.example and args.tr is None:  # the bundled example's TR is known
        args.tr = pipe.release.get("example", {}).get("tr")
    res = pipe.predict(
        read_scan(args.target, atlas=args.atlas, key=args.key, transpose=args.transpose),
        args.question,
        tr=args.tr,
        balanced=not args.no_balance,
        name=str(args.target),
    )
    for a in res["answers"].values():
        a.pop("window_values", None)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_answers(res, pipe.release))
    return 1 if any(a["parse_failure"] for a in res["answers"].values()) else 0


def format_answers(res: dict, release: dict) -> str:
    """Human-readable answers for one scan."""
    lines = [
        f"{res['scan']}: {res['n_timepoints']} time points, {res['n_windows']} windows",
    ]
    for w in res["warnings"]:
        lines.append(f"  warning: {w}")
    for name, a in res["answers"].items():
        if a["parse_failure"]:
            lines.append(f"  {name:<10} no readable answer")
        elif "probabilities" in a:
            probs = ", ".join(f"{k} {v:.2f}" for k, v in a["probabilities"].items())
            lines.append(f"  {name:<10} {a['answer']} (p = {a['probability']:.2f}; {probs})")
        else:
            lo, hi = a["interval"]
            lines.append(f"  {name:<10} {a['value']:.1f} (90% interval {lo:g} to {hi:g})")
        lines.append(f"  {'':<10} asked: {a['question']}")
    card = release.get("card_line")
    if card:
        lines.append(card)
    lines.append("Research use only; not a diagnostic device.")
    return "\n".join(lines)


def _run_store(args) -> int:
    if args.out is None:
        raise ValueError("a store needs --out answers.csv")
    if args.workers > 1:
        return _run_workers(args)
    pipe = _pipeline(args)
    res = pipe.predict_store(
        args.target,
        args.out,
        split=args.split,
        shard=args.shard,
        progress=not args.no_progress,
    )
    print(json.dumps(res))
    return 0


def _run_workers(args) -> int:
    """N processes on interleaved shards, each resumable, then one CSV in store order."""
    import csv

    parts = [
        args.out.with_name(f"{args.out.name}.shard-{k}-of-{args.workers}")
        for k in range(args.workers)
    ]
    base = [sys.executable, "-m", "fmrilm.cli", "predict", str(args.target), "--no-progress"]
    for flag, value in (("--model", args.model), ("--split", args.split)):
        if value is not None:
            base += [flag, str(value)]
    base += ["--threads", str(args.threads)]
    procs = [
        subprocess.Popen([*base, "--out", str(part), "--shard", f"{k}/{args.workers}"])
        for k, part in enumerate(parts)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"a worker failed (exit codes {codes}); rerun to resume")
    rows, header = [], None
    for part in parts:
        with part.open(newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            rows += list(reader)
    rows.sort(key=lambda r: int(r["row"]))
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(args.out)
    for part in parts:
        part.unlink()
    print(json.dumps({"written": len(rows), "workers": args.workers, "out": str(args.out)}))
    return 0
