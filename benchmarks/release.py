"""Release benchmark: the bundled pretrained model from a user's point of view.

    python -m benchmarks.release [--store /tmp/fmrilm_abide_store] [--skip-card-check]

- cold start of the README's main command (``fmrilm predict --example``) in a fresh process:
  first run with an empty ``$FMRILM_CACHE`` (includes the one-off SmolLM2 GGUF conversion), then
  second run (cache warm);
- predict latency per scan (median over the bundled sample's scans, model loaded) and scans/s
  for a whole store (the bundled sample store, ``fmrilm predict STORE --workers 1`` and ``2``);
- peak RSS of the predict processes; size of what ships (model folder + example scan);
- the model card's metrics recomputed from the shipped weights on the full test split of the
  store given (``fmrilm.lm.evaluation.evaluate``), compared with ``release.json``.

Writes ``benchmarks/results/release.json`` and one line in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, write_result


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    return wall, out.stdout


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def cold_start(env: dict) -> dict:
    cmd = [sys.executable, "-m", "fmrilm.cli", "predict", "--example"]
    with tempfile.TemporaryDirectory() as cache:
        env = {**env, "FMRILM_CACHE": cache}
        first, out = _timed(cmd, env)
        second, _ = _timed(cmd, env)
    return {"first_run_seconds": first, "second_run_seconds": second, "output": out}


def latency(pipe, n: int = 8) -> dict:
    import numpy as np

    from fmrilm.pretrained.release import SAMPLE_NPZ

    with np.load(SAMPLE_NPZ) as d:
        ids = [k for k in d.keys() if d[k].shape[0] >= pipe.expects["window_length"]][:n]
        scans = {k: d[k] * 1e-6 for k in ids}
    times, windows = [], []
    pipe.predict(scans[ids[0]])  # warm-up
    for k in ids:
        t = time.perf_counter()
        res = pipe.predict(scans[k])
        times.append(time.perf_counter() - t)
        windows.append(res["n_windows"])
    return {
        "median_seconds_per_scan": statistics.median(times),
        "median_windows_per_scan": statistics.median(windows),
        "n_scans": len(ids),
    }


def store_throughput(env: dict, workers: int, store: Path, out_dir: Path) -> dict:
    out = out_dir / f"answers_{workers}.csv"
    cmd = [sys.executable, "-m", "fmrilm.cli", "predict", str(store), "--out", str(out)]
    cmd += ["--workers", str(workers), "--no-progress"]
    wall, _ = _timed(cmd, env)
    with out.open() as f:
        n = sum(1 for _ in f) - 1
    return {"workers": workers, "scans": n, "seconds": wall, "scans_per_second": n / wall}


def card_check(pipe, store: Path) -> dict:
    from fmrilm.lm.evaluation import evaluate, flat_summary

    t = time.perf_counter()
    res = evaluate(pipe.model, store, baselines=("trivial",), n_bootstrap=1000)
    flat = flat_summary({res["scheme"]: res})
    card = pipe.release["metrics"]["site_stratified test"]
    diffs = {}
    for key, entry in card.items():
        want, got = entry["fmrilm"]["value"], flat.get(key)
        if want is not None and got is not None:
            diffs[key] = abs(want - got)
    return {
        "seconds": time.perf_counter() - t,
        "recomputed": {k: flat.get(k) for k in card},
        "max_abs_difference": max(diffs.values()) if diffs else None,
        # the card prints 3 decimals; float16 weights must not change a printed figure
        "equal_to_card": bool(diffs)
        and all(round(card[k]["fmrilm"]["value"], 3) == round(flat[k], 3) for k in diffs),
        "parse_failures": res["parse_failures"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    ap.add_argument("--skip-card-check", action="store_true")
    args = ap.parse_args(argv)

    from fmrilm.data import build_store
    from fmrilm.data.abide import iter_abide_sample
    from fmrilm.pretrained import EXAMPLE_SCAN, PRETRAINED_DIR, load_pipeline

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result: dict = {"threads_per_process": 1}
    result["cold_start"] = cold_start(env)
    with tempfile.TemporaryDirectory() as tmp:
        records, total, meta = iter_abide_sample()
        sample = build_store(
            records, Path(tmp) / "sample", metadata=meta, total=total, progress=False
        )
        result["store"] = [store_throughput(env, w, sample.path, Path(tmp)) for w in (1, 2)]
    result["predict_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    pipe = load_pipeline()
    result["load_seconds"] = time.perf_counter() - t
    result["latency"] = latency(pipe)
    result["shipped_mb"] = {
        "model_folder": folder_mb(PRETRAINED_DIR),
        "example_scan": EXAMPLE_SCAN.stat().st_size / 2**20,
    }
    result["shipped_mb"]["total"] = sum(result["shipped_mb"].values())
    if not args.skip_card_check:
        result["card_check"] = card_check(pipe, args.store)
    cs, lat = result["cold_start"], result["latency"]
    line = (
        f"main command {cs['first_run_seconds']:.0f} s first run (LM conversion), "
        f"{cs['second_run_seconds']:.0f} s after; {lat['median_seconds_per_scan']:.2f} s/scan; "
        f"store {result['store'][0]['scans_per_second']:.2f} / "
        f"{result['store'][1]['scans_per_second']:.2f} scans/s (1 / 2 workers); "
        f"ships {result['shipped_mb']['total']:.1f} MB; card metrics reproduced: "
        f"{result.get('card_check', {}).get('equal_to_card', 'not checked')}"
    )
    path = write_result("release", result, line)
    print(line)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
