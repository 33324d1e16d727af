"""`fmrilm data ...`: build, inspect and describe dataset stores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fmrilm.data import IngestPolicy, SplitConfig, build_store, open_store
from fmrilm.data.abide import iter_abide_pcp, iter_abide_sample

POLICY_KINDS = (
    "nonfinite",
    "too_short",
    "roi_mismatch",
    "duplicate",
    "no_phenotype",
    "missing_tr",
    "unreadable",
)


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="store folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument(
        "--min-timepoints",
        type=int,
        default=1,
        help="shortest scan kept (default 1: keep all, windowing reports short scans)",
    )
    p.add_argument(
        "--target-tr",
        type=float,
        default=None,
        help="resample every scan to this repetition time (s)",
    )
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--heldout-sites",
        default=None,
        help="comma-separated sites for the heldout_sites scheme (default: seeded choice)",
    )
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument(
        "--on",
        action="append",
        default=[],
        metavar="KIND=ACTION",
        help=f"policy for bad scans, ACTION error or skip; KIND in {', '.join(POLICY_KINDS)}",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _policy(args: argparse.Namespace) -> IngestPolicy:
    actions = {}
    for item in args.on:
        kind, _, action = item.partition("=")
        if kind not in POLICY_KINDS:
            raise ValueError(
                f"--on {item!r}: unknown kind {kind!r}; kinds: {', '.join(POLICY_KINDS)}"
            )
        actions[kind] = action
    return IngestPolicy(min_timepoints=args.min_timepoints, **actions)


def _split(args: argparse.Namespace) -> SplitConfig:
    sites = args.heldout_sites.split(",") if args.heldout_sites else None
    return SplitConfig(
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        heldout_sites=sites,
        heldout_fraction=args.heldout_fraction,
    )


def _build(args: argparse.Namespace, records, total, metadata, report=None) -> int:
    metadata.target_tr = args.target_tr
    store = build_store(
        records,
        args.out,
        metadata=metadata,
        policy=_policy(args),
        split=_split(args),
        report=report,
        overwrite=args.overwrite,
        total=total,
        progress=not args.quiet,
    )
    print(describe(store))
    return 0


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="build and inspect dataset stores")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser(
        "sample", help="build a store from the real ABIDE sample bundled with fmrilm"
    )
    _store_options(p)
    p.set_defaults(run=lambda a: _build(a, *iter_abide_sample()))

    p = sub.add_parser("abide", help="ABIDE Preprocessed through nilearn's fetch_abide_pcp")
    _store_options(p)
    p.add_argument("--data-dir", type=Path, default=None, help="nilearn data folder (cache)")
    p.add_argument("--pipeline", default="cpac", choices=["cpac", "css", "dparsf", "niak"])
    p.add_argument(
        "--strategy",
        default="filt_global",
        choices=["filt_global", "filt_noglobal", "nofilt_global", "nofilt_noglobal"],
    )
    p.add_argument("--derivative", default="rois_cc200")
    p.add_argument("--all-subjects", action="store_true", help="include subjects that failed QC")
    p.add_argument("--n-subjects", type=int, default=None)
    p.add_argument("--sites", default=None, help="comma-separated SITE_IDs")
    p.set_defaults(run=_run_abide)

    p = sub.add_parser("files", help="plain ROI time-series files plus a phenotype table")
    _store_options(p)
    p.add_argument("timeseries", nargs="+", help="files, folders or a quoted glob")
    _phenotype_options(p)
    p.add_argument(
        "--subject-pattern",
        default=None,
        help="regex with a named group 'subject' (and optional 'session') on the file name",
    )
    p.add_argument("--key", default=None, help="array name inside .npz / .mat files")
    p.add_argument("--transpose", action="store_true", help="files are ROI x time")
    p.set_defaults(run=_run_files)

    p = sub.add_parser("nifti", help="4D NIfTI in a BIDS / fMRIPrep tree, through a label atlas")
    _store_options(p)
    p.add_argument("root", type=Path, help="dataset root holding sub-*")
    p.add_argument("--atlas", required=True, type=Path, help="label image (0 = background)")
    p.add_argument("--bold-glob", default=None, help="glob of BOLD images under ROOT")
    p.add_argument(
        "--confounds",
        default=None,
        help="comma-separated fMRIPrep confound columns to regress (patterns allowed)",
    )
    _phenotype_options(p, required=False)
    p.set_defaults(run=_run_nifti)

    p = sub.add_parser("brainlm", help="a BrainLM-format Arrow dataset")
    _store_options(p)
    p.add_argument("path", type=Path, help="saved dataset folder or .arrow file(s)")
    p.add_argument("--recording-column", default=None)
    p.add_argument("--layout", default="auto", choices=["auto", "time_by_roi", "roi_by_time"])
    p.add_argument("--n-rois", type=int, default=None)
    p.add_argument("--scan-id-column", default=None)
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="label columns: subject_id=..., age=..., sex=..., diagnosis=..., site=...",
    )
    p.add_argument("--tr", type=float, default=None)
    p.add_argument("--site", default="")
    p.set_defaults(run=_run_brainlm)

    p = sub.add_parser("inspect", help="print what a store holds and what ingest skipped")
    p.add_argument("store", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(run=_run_inspect)


def _phenotype_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--phenotypes",
        type=Path,
        required=required,
        help="phenotype table (CSV, TSV, BIDS participants.tsv)",
    )
    p.add_argument(
        "--preset",
        choices=["abide", "bids", "none"],
        default="none",
        help="column mapping to start from",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="column mapping: subject_id, age, sex, diagnosis, site, tr, session, fiq, mean_fd",
    )
    p.add_argument("--missing", default=None, help="comma-separated missing-value codes")
    p.add_argument(
        "--tr", type=float, default=None, help="repetition time (s) when no column gives it"
    )
    p.add_argument("--site", default="", help="site of every scan when no column gives it")


def _mapping(args: argparse.Namespace):
    from fmrilm.data.phenotypes import PhenotypeMapping

    fields = {}
    for item in args.map:
        field, sep, column = item.partition("=")
        if not sep or not column:
            raise ValueError(f"--map {item!r}: expected FIELD=COLUMN")
        fields[field] = column
    if getattr(args, "missing", None):
        fields["missing_values"] = tuple(args.missing.split(","))
    preset = getattr(args, "preset", "none")
    try:
        if preset == "abide":
            return PhenotypeMapping.abide(**fields)
        if preset == "bids":
            return PhenotypeMapping.bids(**fields)
        return PhenotypeMapping(**fields)
    except TypeError as e:
        raise ValueError(
            f"--map: {e} (fields: subject_id, age, sex, diagnosis, site, tr, session, fiq, mean_fd)"
        ) from None


def _run_files(args: argparse.Namespace) -> int:
    from fmrilm.data import IngestReport, StoreMetadata
    from fmrilm.data.phenotypes import read_phenotypes
    from fmrilm.data.readers import expand_paths, iter_timeseries_files

    mapping = _mapping(args)
    table = read_phenotypes(args.phenotypes, mapping)
    paths = expand_paths(args.timeseries if len(args.timeseries) > 1 else args.timeseries[0])
    report = IngestReport(source=", ".join(args.timeseries))
    policy = _policy(args)
    records = iter_timeseries_files(
        paths,
        table,
        mapping,
        subject_pattern=args.subject_pattern,
        tr=args.tr,
        site=args.site,
        report=report,
        on_unreadable=policy.unreadable,
        on_no_phenotype=policy.no_phenotype,
        key=args.key,
        transpose=args.transpose,
    )
    meta = StoreMetadata(
        source=f"ROI time-series files ({len(paths)}), phenotypes {args.phenotypes}",
        preprocessing={"reader": "fmrilm.data.readers"},
    )
    return _build(args, records, len(paths), meta, report)


def _run_nifti(args: argparse.Namespace) -> int:
    from fmrilm.data import IngestReport, StoreMetadata
    from fmrilm.data.nifti import atlas_labels, iter_bids_scans
    from fmrilm.data.phenotypes import read_phenotypes

    mapping = _mapping(args) if args.phenotypes else None
    table = read_phenotypes(args.phenotypes, mapping) if args.phenotypes else None
    report = IngestReport(source=str(args.root))
    policy = _policy(args)
    kw = {"bold_glob": args.bold_glob} if args.bold_glob else {}
    records = iter_bids_scans(
        args.root,
        args.atlas,
        phenotypes=table,
        mapping=mapping,
        confounds=args.confounds.split(",") if args.confounds else None,
        tr=args.tr,
        site=args.site,
        report=report,
        on_unreadable=policy.unreadable,
        on_no_phenotype=policy.no_phenotype,
        on_missing_tr=policy.missing_tr,
        **kw,
    )
    meta = StoreMetadata(
        atlas=args.atlas.name,
        source=f"BIDS/fMRIPrep tree {args.root}",
        roi_labels=[str(v) for v in atlas_labels(args.atlas)],
        preprocessing={"masker": "nilearn NiftiLabelsMasker", "confounds": args.confounds or None},
    )
    return _build(args, records, None, meta, report)


def _run_brainlm(args: argparse.Namespace) -> int:
    from fmrilm.data import IngestReport, StoreMetadata
    from fmrilm.data.brainlm import iter_brainlm_scans

    mapping = _mapping(args)
    report = IngestReport(source=str(args.path))
    policy = _policy(args)
    records = iter_brainlm_scans(
        args.path,
        mapping,
        recording_column=args.recording_column,
        layout=args.layout,
        n_rois=args.n_rois,
        scan_id_column=args.scan_id_column,
        tr=args.tr,
        site=args.site,
        report=report,
        on_unreadable=policy.unreadable,
        on_no_phenotype=policy.no_phenotype,
    )
    meta = StoreMetadata(
        source=f"BrainLM-format dataset {args.path}",
        preprocessing={"reader": "fmrilm.data.brainlm"},
    )
    return _build(args, records, None, meta, report)


def _run_abide(args: argparse.Namespace) -> int:
    filt, glob = args.strategy.split("_")
    records, total, meta = iter_abide_pcp(
        args.data_dir,
        pipeline=args.pipeline,
        band_pass_filtering=filt == "filt",
        global_signal_regression=glob == "global",
        derivative=args.derivative,
        quality_checked=not args.all_subjects,
        n_subjects=args.n_subjects,
        sites=args.sites.split(",") if args.sites else None,
    )
    return _build(args, records, total, meta)


def _run_inspect(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    if args.json:
        print(json.dumps(summary(store), indent=1))
    else:
        print(describe(store))
    return 0


def summary(store) -> dict:
    """Counts, per-site phenotype summaries, splits and skips of a store, JSON-ready."""
    t = store.table
    report = store.report()

    def stats(df):
        age = df["age"].astype(float)
        return {
            "scans": int(len(df)),
            "subjects": int(df["subject_id"].nunique()),
            "age_mean": _r(np.nanmean(age)) if age.notna().any() else None,
            "age_sd": _r(np.nanstd(age)) if age.notna().any() else None,
            "age_min": _r(np.nanmin(age)) if age.notna().any() else None,
            "age_max": _r(np.nanmax(age)) if age.notna().any() else None,
            "age_missing": int(age.isna().sum()),
            "male": int((df["sex"] == "male").sum()),
            "female": int((df["sex"] == "female").sum()),
            "autism": int((df["diagnosis"] == "autism").sum()),
            "control": int((df["diagnosis"] == "control").sum()),
            "tr": sorted({_r(v) for v in df["tr"]}),
            "timepoints": [int(df["n_timepoints"].min()), int(df["n_timepoints"].max())],
        }

    splits = {}
    for scheme in store.split_schemes:
        idx = store.split_indices(scheme)
        splits[scheme] = {
            k: {"scans": int(len(v)), "subjects": int(t["subject_id"].iloc[v].nunique())}
            for k, v in idx.items()
        }
        if scheme == "heldout_sites":
            splits[scheme]["sites"] = store._load_splits()[scheme]["sites"]
    return {
        "path": str(store.path),
        "atlas": store.metadata.get("atlas"),
        "n_rois": store.n_rois,
        "source": store.metadata.get("source"),
        "preprocessing": store.metadata.get("preprocessing"),
        "all": stats(t),
        "sites": {site: stats(df) for site, df in t.groupby("site")},
        "splits": splits,
        "read": report.n_read,
        "kept": report.n_kept,
        "skipped": report.skip_counts(),
        "skipped_scans": [s.__dict__ for s in report.skipped],
        "warnings": report.warnings,
        "scans_with_masked_rois": len(report.masked_rois),
        "masked_roi_columns": sum(len(v) for v in report.masked_rois.values()),
    }


def _r(x: float) -> float:
    return round(float(x), 3)


def describe(store) -> str:
    """Readable summary of a store."""
    s = summary(store)
    a = s["all"]
    lines = [
        f"store {s['path']}",
        f"  {a['scans']} scans, {a['subjects']} subjects, {len(s['sites'])} sites, "
        f"{s['n_rois']} ROIs ({s['atlas']}), T {a['timepoints'][0]}-{a['timepoints'][1]}",
        f"  source: {s['source']}",
        f"  age {a['age_mean']} +/- {a['age_sd']} ({a['age_min']}-{a['age_max']}, "
        f"{a['age_missing']} missing); {a['male']} male, {a['female']} female; "
        f"{a['autism']} autism, {a['control']} control",
        "",
        f"  {'site':<10} {'scans':>5} {'TR':>6} {'age mean+/-sd':>14} {'M':>4} {'F':>4} {'ASD':>4} {'TC':>4}",
    ]
    for site, v in s["sites"].items():
        age = f"{v['age_mean']:.1f}+/-{v['age_sd']:.1f}" if v["age_mean"] is not None else "-"
        tr = ",".join(str(x) for x in v["tr"])
        lines.append(
            f"  {site:<10} {v['scans']:>5} {tr:>6} {age:>14} {v['male']:>4} "
            f"{v['female']:>4} {v['autism']:>4} {v['control']:>4}"
        )
    lines.append("")
    for scheme, v in s["splits"].items():
        parts = ", ".join(f"{k} {v[k]['subjects']}" for k in ("train", "val", "test"))
        extra = f" (test sites: {', '.join(v['sites'])})" if "sites" in v else ""
        lines.append(f"  split {scheme}: subjects {parts}{extra}")
    lines.append(
        f"  ingest: read {s['read']}, kept {s['kept']}, skipped "
        f"{sum(s['skipped'].values())} {s['skipped'] or ''}".rstrip()
    )
    for sk in s["skipped_scans"][:20]:
        lines.append(
            f"    skipped {sk['scan_id']} (subject {sk['subject_id']}): {sk['reason']}: {sk['detail']}"
        )
    if len(s["skipped_scans"]) > 20:
        lines.append(f"    ... and {len(s['skipped_scans']) - 20} more (see ingest_report.json)")
    lines.append(
        f"  constant ROI columns kept and masked: {s['masked_roi_columns']} in "
        f"{s['scans_with_masked_rois']} scans"
    )
    return "\n".join(lines)
