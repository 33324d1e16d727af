"""Ingest and loading benchmark for the dataset store (all 871 ABIDE subjects).

    python -m benchmarks.ingest [--shared-data ../shared/data] [--work /tmp/fmrilm_bench]

Measures, each in a fresh process so that peak RSS is its own:
- ingest of every ABIDE subject through nilearn's fetcher into a store: wall time, scans/s, peak RSS;
- windows/s through a torch DataLoader with 0 and 2 workers (160-point windows, stride 80,
  batch 64, the training split), median of 3 passes;
- peak RSS while iterating every window of the store, and of a store 10 times larger (every
  subject replicated under new ids): their ratio shows that memory stays flat.
Writes benchmarks/results/ingest.json and a line in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, peak_rss_mb, run_child, write_result


def _ingest(args) -> None:
    from fmrilm.data import build_store
    from fmrilm.data.abide import iter_abide_pcp

    t0 = time.perf_counter()
    records, total, meta = iter_abide_pcp(args.nilearn_data)
    store = build_store(
        records, args.out, metadata=meta, total=total, overwrite=True, progress=False
    )
    seconds = time.perf_counter() - t0
    report = store.report()
    print(
        json.dumps(
            {
                "subjects": int(store.table.subject_id.nunique()),
                "scans": len(store),
                "skipped": len(report.skipped),
                "seconds": seconds,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def _replicate(args) -> None:
    """A store with every scan of ``src`` copied ``factor`` times under new subject ids."""
    from fmrilm.data import ScanRecord, StoreMetadata, build_store, open_store

    src = open_store(args.src)
    t = src.table

    def records():
        for k in range(args.factor):
            for i in range(len(src)):
                row = t.iloc[i]
                yield ScanRecord(
                    scan_id=f"{row.scan_id}_r{k}",
                    subject_id=f"{row.subject_id}_r{k}",
                    timeseries=src.timeseries(i),
                    site=row.site,
                    tr=float(row.tr),
                    age=float(row.age),
                    sex=row.sex,
                    diagnosis=row.diagnosis,
                    source=row.source,
                )

    build_store(
        records(),
        args.out,
        metadata=StoreMetadata(atlas="cc200", source="replicated"),
        overwrite=True,
        progress=False,
    )
    print(json.dumps({"scans": len(src) * args.factor, "peak_rss_mb": peak_rss_mb()}))


def _iterate(args) -> None:
    import torch
    from torch.utils.data import DataLoader

    from fmrilm.data import WindowDataset

    torch.set_num_threads(1)
    ds = WindowDataset(args.store, split=args.split, window_length=160, stride=80)
    # One loader; its workers persist across passes, and the first pass (worker start-up,
    # cold page cache) is reported apart from the steady-state passes after it.
    loader = DataLoader(
        ds,
        batch_size=64,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    times = []
    for _ in range(args.repeats + 1):
        t0 = time.perf_counter()
        n = sum(len(b["window"]) for b in loader)
        times.append(time.perf_counter() - t0)
    first, times = times[0], times[1:]
    times.sort()
    median = times[len(times) // 2]
    print(
        json.dumps(
            {
                "windows": n,
                "seconds": times,
                "windows_per_s": n / median,
                "first_pass_seconds": first,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=Path("/tmp/fmrilm_bench"))
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--keep", action="store_true", help="keep the stores built under --work")
    args = p.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "nilearn_data"
    if not (cache / "ABIDE_pcp").exists():
        subprocess.run(
            [sys.executable, str(args.shared_data / "materialize_nilearn_cache.py"), str(cache)],
            check=True,
            capture_output=True,
        )
    store1, store10 = work / "abide_store", work / f"abide_store_x{args.factor}"
    ingest = run_child(
        ["benchmarks.ingest", "_ingest", "--nilearn-data", str(cache), "--out", str(store1)]
    )
    print("ingest", ingest, flush=True)
    loader = {}
    for workers in (0, 2):
        loader[workers] = run_child(
            [
                "benchmarks.ingest",
                "_iterate",
                "--store",
                str(store1),
                "--workers",
                str(workers),
                "--split",
                "train",
                "--repeats",
                "3",
            ]
        )
        print("loader", workers, loader[workers], flush=True)
    rep = run_child(
        [
            "benchmarks.ingest",
            "_replicate",
            "--src",
            str(store1),
            "--out",
            str(store10),
            "--factor",
            str(args.factor),
        ]
    )
    print("replicate", rep, flush=True)
    full1 = run_child(
        [
            "benchmarks.ingest",
            "_iterate",
            "--store",
            str(store1),
            "--workers",
            "0",
            "--split",
            "all",
            "--repeats",
            "1",
        ]
    )
    full10 = run_child(
        [
            "benchmarks.ingest",
            "_iterate",
            "--store",
            str(store10),
            "--workers",
            "0",
            "--split",
            "all",
            "--repeats",
            "1",
        ]
    )
    print("iterate 1x", full1, "10x", full10, flush=True)
    ratio = full10["peak_rss_mb"] / full1["peak_rss_mb"]
    result = {
        "subjects": ingest["subjects"],
        "scans": ingest["scans"],
        "skipped": ingest["skipped"],
        "seconds": round(ingest["seconds"], 2),
        "scans_per_s": round(ingest["scans"] / ingest["seconds"], 1),
        "peak_rss_mb": round(ingest["peak_rss_mb"], 1),
        "loader_windows_per_s": {
            "0": round(loader[0]["windows_per_s"], 1),
            "2": round(loader[2]["windows_per_s"], 1),
        },
        "loader_windows": loader[0]["windows"],
        "loader_first_pass_s": {
            "0": round(loader[0]["first_pass_seconds"], 3),
            "2": round(loader[2]["first_pass_seconds"], 3),
        },
        "loader_setting": "training split, window 160, stride 80, batch 64, shuffled; median of "
        "3 passes after a first pass (worker start-up) with persistent workers",
        "iterate_1x": {"windows": full1["windows"], "peak_rss_mb": round(full1["peak_rss_mb"], 1)},
        "iterate_10x": {
            "windows": full10["windows"],
            "peak_rss_mb": round(full10["peak_rss_mb"], 1),
        },
        "rss_ratio_10x_vs_1x": round(ratio, 3),
    }
    path = write_result(
        "ingest",
        result,
        (
            f"{result['subjects']} subjects ingested in {result['seconds']} s ({result['scans_per_s']} scans/s, "
            f"peak RSS {result['peak_rss_mb']} MiB); loader {result['loader_windows_per_s']['0']} windows/s "
            f"(0 workers), {result['loader_windows_per_s']['2']} (2 workers); peak RSS iterating 10x store "
            f"/ 1x = {result['rss_ratio_10x_vs_1x']}"
        ),
    )
    print(f"wrote {path}")
    if not args.keep:
        shutil.rmtree(store10, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        cmd = sys.argv.pop(1)
        p = argparse.ArgumentParser()
        for name in ("--nilearn-data", "--out", "--src", "--store", "--split"):
            p.add_argument(name)
        p.add_argument("--factor", type=int, default=10)
        p.add_argument("--workers", type=int, default=0)
        p.add_argument("--repeats", type=int, default=3)
        a = p.parse_args()
        if a.split == "all":
            a.split = None
        {"_ingest": _ingest, "_replicate": _replicate, "_iterate": _iterate}[cmd](a)
    else:
        main()
