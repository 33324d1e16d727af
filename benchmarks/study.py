"""The comparison study on ABIDE, run as parallel one-thread jobs, then gathered.

    python -m benchmarks.study [--config configs/study.yaml] [--parallel 2] [--task age]
        [--arms a,b,...] [--renderings heatmap,...] [--out study.json] [--work-dir DIR]
        [--set KEY=VALUE ...]

One job per unit of work (an arm kind with one rendering: ``efficientnet_imagenet`` x
``heatmap``; or a whole kind: ``fmri_encoder``, ``linear_probe``, the baselines), each a
``fmrilm study CONFIG --arms KIND [--renderings R]`` process with one torch thread, longest first,
``--parallel`` at a time, all writing their arm files into the config's ``work_dir``. Finished arms
are skipped (the study resumes arm by arm), so a killed benchmark is simply rerun. Then one
gathering run (every arm cached) writes ``study.json``, the figures and the HTML report, and this
script appends one line to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPO, write_result

#: Rough cost of one job, to start the longest first (trained arms dominate).
COST = {
    "efficientnet_imagenet": 20,
    "efficientnet_random": 20,
    "fmri_encoder": 20,
    "fmri_codes": 20,
}


def job_units(config) -> list[tuple[str, str | None]]:
    """(arm kind, rendering or None) per job: image arms split by rendering, longest first."""
    units = []
    for kind in config.arms:
        if kind in ("efficientnet_imagenet", "efficientnet_random"):
            units += [(kind, r) for r in config.renderings]
        else:
            units.append((kind, None))
    return sorted(units, key=lambda u: -COST.get(u[0], 1))


def _launch(unit, argv_config: list[str], renderings: str | None, log_dir: Path) -> dict:
    kind, rendering = unit
    name = kind + (f"_{rendering}" if rendering else "")
    cmd = [sys.executable, "-m", "fmrilm.cli", "study", *argv_config, "--arms", kind, "--quiet"]
    if rendering or renderings:
        cmd += ["--renderings", rendering or renderings]
    # each job writes its own partial study.json; only the gathering run writes the real one
    cmd += ["--out", str(log_dir / f"{name}.json")]
    t0 = time.time()
    print(f"[study benchmark] {name}: started (log {log_dir / name}.log)", flush=True)
    with (log_dir / f"{name}.log").open("w") as log:
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            check=False,
        )
    wall = time.time() - t0
    print(f"[study benchmark] {name}: exit {proc.returncode} after {wall:.0f} s", flush=True)
    return {"job": name, "returncode": proc.returncode, "wall_seconds": wall}


def summary_line(study: dict) -> str:
    t = study["task"]
    parts = []
    for name, arm in study["arms"].items():
        if arm.get("status") != "ok":
            continue
        if study["task_kind"] == "regression":
            ratio = arm.get(f"predicted_{t}_std_ratio")
            parts.append(
                f"{name} MAE {arm[f'{t}_mae']:.2f}"
                + (f" (std ratio {ratio:.2f})" if ratio is not None else "")
            )
        else:
            auc = arm.get(f"{t}_auc")
            parts.append(f"{name} AUC {'-' if auc is None else format(auc, '.3f')}")
    not_run = sum(a.get("status") == "not run" for a in study["arms"].values())
    return (
        f"{t} on {study['split']['scheme']} test ({study['split']['n_test_subjects']} subjects): "
        + "; ".join(parts)
        + f"; {not_run} arms not run; arms' wall time "
        + f"{study['benchmark']['arms_wall_seconds_sum'] / 60:.0f} min"
    )


def main(argv: list[str] | None = None) -> int:
    from fmrilm.cli import build_parser
    from fmrilm.cli.study import build_config, format_results
    from fmrilm.study.runner import run_study

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "study.yaml")
    ap.add_argument("--task", default=None)
    ap.add_argument("--arms", default=None, help="comma-separated arm kinds (default: config)")
    ap.add_argument("--renderings", default=None, help="comma-separated (default: config)")
    ap.add_argument("--out", default=None, help="study.json (default: config)")
    ap.add_argument("--work-dir", default=None, help="arm files and report (default: config)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time (one thread each)")
    args = ap.parse_args(argv)
    argv_config = [str(args.config)]
    if args.task:
        argv_config += ["--task", args.task]
    if args.work_dir:
        argv_config += ["--work-dir", args.work_dir]
    for item in args.set:
        argv_config += ["--set", item]
    # the gathering run names every arm and rendering; each job only its own (never via --set)
    chosen = [
        f"--{k}={v}"
        for k, v in (("arms", args.arms), ("renderings", args.renderings), ("out", args.out))
        if v
    ]
    cli_args = build_parser().parse_args(["study", *argv_config, *chosen])
    config = build_config(cli_args)
    if not Path(config.store).exists():
        raise SystemExit(f"store {config.store} does not exist (fmrilm data abide ...)")
    if not args.work_dir:  # jobs write elsewhere than --out: pin their arm files' folder
        argv_config += ["--work-dir", str(config.work_path)]
    t0 = time.time()
    log_dir = config.work_path / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        jobs = list(
            pool.map(lambda u: _launch(u, argv_config, args.renderings, log_dir), job_units(config))
        )
    # every arm is cached now: this run only reads them and writes study.json and the report
    study = run_study(config, progress=False)
    # arms finished by earlier invocations keep their own wall times: those are the record
    arm_walls = [a.get("wall_seconds") or 0.0 for a in study["arms"].values()]
    study["benchmark"] = {
        "jobs_this_invocation": jobs,
        "wall_seconds_this_invocation": time.time() - t0,
        "arms_wall_seconds_sum": float(sum(arm_walls)),
        "parallel": args.parallel,
        "threads_per_job": 1,
    }
    print(format_results(study))
    write_result(Path(config.out).stem, study, summary_line(study))
    return 1 if any(j["returncode"] != 0 for j in jobs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
