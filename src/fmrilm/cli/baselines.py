"""`fmrilm baselines STORE`: fit the classical clinical baselines and print their metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fmrilm.cli import csv_list

SCHEMES = ("site_stratified", "heldout_sites")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``baselines`` subcommand on ``subparsers`` (from ``add_subparsers``)."""
    from fmrilm.baselines.clinical import BASELINES

    p = subparsers.add_parser(
        "baselines",
        help="fit trivial, site-only and connectivity baselines on a store split and report "
        "metrics with bootstrap CIs",
        description=__doc__,
    )
    p.add_argument("store", metavar="STORE", type=Path, help="dataset store folder")
    p.add_argument(
        "--scheme",
        default="site_stratified",
        choices=SCHEMES,
        help="split scheme of the store (default: site_stratified)",
    )
    p.add_argument(
        "--leave-one-site-out",
        action="store_true",
        help="instead of the scheme, fit on all sites but one for every site (slow)",
    )
    p.add_argument(
        "--targets",
        type=csv_list,
        default=["age", "sex", "diagnosis"],
        help="comma-separated targets: store columns or phenotype keys "
        "(default: age,sex,diagnosis)",
    )
    p.add_argument(
        "--baselines",
        type=csv_list,
        default=list(BASELINES),
        help=f"comma-separated subset of {','.join(BASELINES)} (default: all)",
    )
    p.add_argument(
        "--train-splits", type=csv_list, default=["train"], help="splits to fit on (default: train)"
    )
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument(
        "--n-bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples of subjects for CIs (default: 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.set_defaults(run=run, func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the baselines, print the table and write ``--out`` JSON. Returns the exit code."""
    from fmrilm.baselines.clinical import format_table, run_clinical_baselines

    if not Path(args.store).exists():
        raise FileNotFoundError(f"store {str(args.store)!r} does not exist")
    if args.n_bootstrap < 0:
        raise ValueError(f"--n-bootstrap must be >= 0, got {args.n_bootstrap}")
    results = run_clinical_baselines(
        args.store,
        scheme=args.scheme,
        targets=args.targets,
        baselines=args.baselines,
        train_splits=args.train_splits,
        leave_one_site_out=args.leave_one_site_out,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
    )
    print(format_table(results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
        print(f"\nwrote {args.out}")
    return 0
