"""fMRI language model benchmark on ABIDE: the LM and its baselines on both split schemes.

    python -m benchmarks.lm --store /tmp/fmrilm_abide_store \
        --tokenizer site_stratified=runs/tokenizer_site_stratified/model \
        --tokenizer heldout_sites=runs/tokenizer_heldout_sites/model \
        [--config configs/lm.yaml] [--max-steps 120] [--parallel 2] [--out-dir runs/lm_bench]

Jobs (each: ``fmrilm.lm.training.train`` then ``fmrilm.lm.evaluation.evaluate`` on the test split
of its scheme, in its own process with one torch thread, ``--parallel`` at a time):

- ``site_stratified`` and ``heldout_sites``: the configuration of ``--config`` trained on each
  scheme's training split with that scheme's tokenizer (a tokenizer fitted on one scheme is
  refused for the other), evaluated beside every clinical baseline;
- ablations on ``site_stratified`` (:data:`ABLATIONS`, or the ones named with ``--ablations``),
  evaluated beside the trivial and site-only baselines: ``summary_init_random`` (the fMRI rows
  from random directions instead of the projected codebook) and the token-sequence layouts, where
  the LM reads the codes themselves: ``compact_16rois`` (16 ROIs x 8 patches, 146 tokens), with
  random rows, ``compact_32rois_stride2`` (32 ROIs x 4 patches, 162 tokens) and
  ``time_major_200rois_1patch`` (all 200 ROIs, the first 20-point patch, 203 tokens). Each
  ablation records its own number of training steps (``train_steps``).

``--ablation-run NAME=RUN_DIR`` adds a configuration trained beforehand with ``fmrilm lm train``
(``RUN_DIR/site_stratified`` and, when it exists, ``RUN_DIR/heldout_sites``, each a finished run
with any config): it is evaluated beside every baseline and listed under ``ablations`` with its
config's differences from ``--config``. ``--ensemble-run NAME=RUN_DIR,RUN_DIR,...`` evaluates the
ensemble of such runs (``fmrilm.lm.ensemble.LMEnsemble``) on each scheme all of them were trained
on, listed under ``ablations`` with each member's differences; its training time is the sum of
the members'. ``--selection-run NAME=RUN_DIR`` evaluates the step checkpoints of such runs
that ``python -m benchmarks.lm_checkpoints`` chose per task on the validation split
(``RUN_DIR/<scheme>/checkpoint_selection.json``). ``--keep-main`` (with ``--carry-ablations``) runs no main
job and keeps the earlier file's main configuration and figures, marked ``main_carried_from``.

A job whose ``results.json`` exists is not run again (so the benchmark resumes); ``--reevaluate
NAME,...`` evaluates finished jobs again with the current evaluation code, without retraining. Writes
``benchmarks/results/lm.json`` (the keys of ``fmrilm.lm.evaluation.summarize_runs`` plus the wall
time of each stage and the throughputs), ``benchmarks/results/lm_tables.md`` (the readable
tables) and one line in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPO, RESULTS, comma_list, named_paths, write_result

ABLATIONS = {
    # the summary without its decoded-connectivity branch: the main configuration until
    # 2026-12-01, measured then as the main run (lm.json: ablations.previous_main_2026-12-01)
    "summary_without_connectivity": {"model": {"summary_connectivity_dim": 0}},
    # the summary layout, rows from the tokenizer's alignment projector, 2 questions per window;
    # as measured, the rows were read uncentred (commit ece3b3f)
    "summary_init_codebook_2_questions": {
        "model": {"init": "codebook", "questions_per_example": 2}
    },
    # subspace rows and 3 questions, as first measured: the summary read the rows uncentred
    # (commit ece3b3f) and collapsed; not reproducible with the current code (kept as a record)
    "summary_uncentred_3_questions": {},
    # ROI dropout 0.2 and the weights of the step with the lowest validation loss (step 200)
    "summary_roi_dropout_best_val_loss": {
        "model": {"summary_roi_dropout": 0.2},
        "train": {"val_every_n_steps": 100, "keep": "best_val_loss"},
    },
    # training windows every 20 points instead of 80 (2,041 windows instead of 1,177); scans are
    # still answered every 80 points
    "train_stride_20": {"data": {"train_stride": 20}},
    # the summary layout with the fMRI rows from random directions
    "summary_init_random": {"model": {"init": "random"}},
    # token-sequence layouts (the LM reads the codes as tokens, no summary), as first measured:
    # rows from the alignment projector, 2 questions per window (150 steps at lr 2e-3)
    "compact_16rois": {
        "model": {"layout": "compact", "init": "codebook", "questions_per_example": 2}
    },
    "compact_16rois_init_random": {
        "model": {"layout": "compact", "init": "random", "questions_per_example": 2}
    },
    "compact_32rois_stride2": {
        "model": {
            "layout": "compact",
            "init": "codebook",
            "questions_per_example": 2,
            "compact_rois": 32,
            "patch_stride": 2,
        }
    },
    # all 200 ROIs, first time patch only: 203 tokens
    "time_major_200rois_1patch": {
        "model": {
            "layout": "time_major",
            "init": "codebook",
            "questions_per_example": 2,
            "patch_stride": 8,
        }
    },
}
SIMPLE_BASELINES = ["trivial", "site"]


def jobs(args) -> list[dict]:
    """The job specs: main runs on each scheme, then the ablations."""
    import yaml

    base = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    tokenizers = named_paths(args.tokenizer, "--tokenizer")
    out = []

    def spec(name: str, scheme: str, override: dict, baselines) -> dict:
        from fmrilm.lm.training import merge_config

        cfg = merge_config(base, override)
        cfg.update(
            store=str(args.store),
            scheme=scheme,
            fmri_tokenizer=str(tokenizers[scheme]),
            out_dir=str(Path(args.out_dir) / name),
            seed=args.seed,
        )
        cfg.setdefault("train", {}).update(max_steps=args.max_steps, num_threads=1)
        return {"name": name, "config": cfg, "baselines": baselines, "n_bootstrap": args.bootstrap}

    if not args.keep_main:
        for scheme in ("site_stratified", "heldout_sites"):
            if scheme not in tokenizers:
                raise SystemExit(f"--tokenizer {scheme}=FOLDER is required")
            out.append(spec(scheme, scheme, {}, None))
    for item in args.ensemble_run:
        name, sep, dirs = item.partition("=")
        if not sep or not name or "," not in dirs:
            raise SystemExit(f"--ensemble-run expects NAME=RUN_DIR,RUN_DIR[,...], got {item!r}")
        out += ensemble_run_specs(name, [Path(d) for d in dirs.split(",")], args)
    for name, run_dir in named_paths(args.selection_run, "--selection-run").items():
        out += selection_run_specs(name, run_dir, args)
    for name, run_dir in named_paths(args.ablation_run, "--ablation-run").items():
        out += ablation_run_specs(name, run_dir, args.bootstrap)
    if not args.no_ablations:
        names = args.ablations or list(ABLATIONS)
        unknown = sorted(set(names) - set(ABLATIONS))
        if unknown:
            raise SystemExit(f"unknown ablations {unknown}; known: {sorted(ABLATIONS)}")
        for name, override in ((n, ABLATIONS[n]) for n in names):
            out.append(spec(name, "site_stratified", override, SIMPLE_BASELINES))
    return out


def ablation_run_specs(name: str, run_dir: Path, n_bootstrap: int) -> list[dict]:
    """Evaluation jobs of a finished ``fmrilm lm train`` run per scheme found in ``run_dir``."""
    specs = []
    for scheme in ("site_stratified", "heldout_sites"):
        resolved = Path(run_dir) / scheme / "config.resolved.json"
        if not resolved.exists():
            continue
        config = json.loads(resolved.read_text())
        config["out_dir"] = str(Path(run_dir) / scheme)
        if finished_training(config) is None:
            raise SystemExit(f"--ablation-run {name}: {resolved.parent} has not finished training")
        specs.append(
            {
                "name": f"{name}@{scheme}",
                "ablation_run": name,
                "config": config,
                "baselines": None,
                "n_bootstrap": n_bootstrap,
            }
        )
    if not specs or specs[0]["config"]["scheme"] != "site_stratified":
        raise SystemExit(f"--ablation-run {name}: no finished run in {run_dir}/site_stratified")
    return specs


def ensemble_job(name: str, scheme: str, members: list[str], configs: list[dict], args) -> dict:
    """Evaluation job of models trained beforehand answering as one (``load_models(members)``);
    its training time is the sum over ``configs`` (the runs trained)."""
    return {
        "name": f"{name}@{scheme}",
        "ablation_run": name,
        "ensemble": members,
        "member_configs": configs,
        "config": {
            "out_dir": str(Path(args.out_dir) / name / scheme),
            "store": str(args.store),
            "scheme": scheme,
        },
        "baselines": None,
        "n_bootstrap": args.bootstrap,
    }


def ensemble_run_specs(name: str, run_dirs: list[Path], args) -> list[dict]:
    """Evaluation jobs of the ensemble of several finished runs, per scheme all of them have.

    Each member is a ``--ablation-run``-style folder (``RUN_DIR/<scheme>``, trained with
    ``fmrilm lm train``); the ensemble's results go to ``OUT_DIR/NAME/<scheme>``.
    """
    specs = []
    for scheme in ("site_stratified", "heldout_sites"):
        members = [Path(d) / scheme for d in run_dirs]
        found = [(m / "config.resolved.json").exists() for m in members]
        if not any(found):
            continue
        if not all(found):
            missing = [str(m) for m, f in zip(members, found, strict=True) if not f]
            raise SystemExit(f"--ensemble-run {name}: no run in {missing} ({scheme})")
        configs = []
        for m in members:
            config = json.loads((m / "config.resolved.json").read_text())
            config["out_dir"] = str(m)
            if finished_training(config) is None:
                raise SystemExit(f"--ensemble-run {name}: {m} has not finished training")
            configs.append(config)
        specs.append(ensemble_job(name, scheme, [str(m / "model") for m in members], configs, args))
    if not specs or specs[0]["config"]["scheme"] != "site_stratified":
        raise SystemExit(f"--ensemble-run {name}: the runs lack site_stratified")
    return specs


def selection_run_specs(name: str, run_dir: Path, args) -> list[dict]:
    """Evaluation jobs of the step checkpoints chosen per task on validation, per scheme.

    ``RUN_DIR/<scheme>`` is a finished ``fmrilm lm train`` run whose
    ``checkpoint_selection.json`` was written by ``python -m benchmarks.lm_checkpoints``; its
    ``members`` (``TASK=FOLDER`` specs) answer as one model (``fmrilm.lm.ensemble.load_models``),
    and its training time is the run's, counted once.
    """
    specs = []
    for scheme in ("site_stratified", "heldout_sites"):
        folder = Path(run_dir) / scheme
        selection_file = folder / "checkpoint_selection.json"
        if not (folder / "config.resolved.json").exists():
            continue
        if not selection_file.exists():
            raise SystemExit(
                f"--selection-run {name}: no {selection_file} "
                "(python -m benchmarks.lm_checkpoints --run ...)"
            )
        config = json.loads((folder / "config.resolved.json").read_text())
        config["out_dir"] = str(folder)
        if finished_training(config) is None:
            raise SystemExit(f"--selection-run {name}: {folder} has not finished training")
        selection = json.loads(selection_file.read_text())
        if selection.get("scheme") != scheme:
            raise SystemExit(f"{selection_file} is of scheme {selection.get('scheme')!r}")
        spec = ensemble_job(name, scheme, selection["members"], [config], args)
        spec["selection"] = {k: selection[k] for k in ("chosen_steps", "members", "every", "curve")}
        specs.append(spec)
    if not specs or specs[0]["config"]["scheme"] != "site_stratified":
        raise SystemExit(f"--selection-run {name}: no run in {run_dir}/site_stratified")
    return specs


def config_differences(config: dict, reference: dict, prefix: str = "") -> dict:
    """``{dotted.key: value}`` where ``config`` differs from ``reference`` (both merged)."""
    skip = {"out_dir", "store", "fmri_tokenizer", "scheme"}
    out = {}
    for key, value in config.items():
        if not prefix and key in skip:
            continue
        ref = reference.get(key)
        if isinstance(value, dict) and isinstance(ref, dict):
            out.update(config_differences(value, ref, f"{prefix}{key}."))
        elif value != ref:
            out[f"{prefix}{key}"] = value
    return out


def finished_training(config: dict) -> float | None:
    """Training seconds of a finished run of exactly ``config`` in its ``out_dir``, else None.

    Finished: ``config.resolved.json`` equals the job's config merged over the defaults (but for
    ``out_dir``: a run may have been moved to the job's folder), and
    ``train_summary.json`` reached ``train.max_steps`` and the model was written.
    """
    from fmrilm.lm.training import DEFAULT_CONFIG, merge_config

    out_dir = Path(config["out_dir"])
    paths = [out_dir / n for n in ("config.resolved.json", "train_summary.json", "model")]
    if not all(p.exists() for p in paths):
        return None
    want = json.loads(json.dumps(merge_config(DEFAULT_CONFIG, config), default=str))
    try:  # keys added to the defaults since, at their default values, are the same training
        have = json.loads(
            json.dumps(merge_config(DEFAULT_CONFIG, json.loads(paths[0].read_text())))
        )
    except ValueError:  # a key the defaults no longer know
        return None
    # a run moved to the job's folder is the same training
    if {**have, "out_dir": None} != {**want, "out_dir": None}:
        return None
    summary = json.loads(paths[1].read_text())
    if int(summary.get("global_step", 0)) < int(want["train"]["max_steps"]):
        return None
    return float(summary["train_seconds"])


def run_job(spec: dict) -> dict:
    """Train and evaluate one configuration in this process; write ``results.json``."""
    import torch

    from fmrilm.evaluation.report import json_default
    from fmrilm.lm.ensemble import load_models
    from fmrilm.lm.evaluation import evaluate, format_results
    from fmrilm.lm.model import FMRILanguageModel
    from fmrilm.lm.training import train

    torch.set_num_threads(1)
    out_dir = Path(spec["config"]["out_dir"])
    if spec.get("ensemble"):  # members trained beforehand: their fit times add up
        train_wall = sum(finished_training(c) for c in spec["member_configs"])
        model_dir = None
    elif spec.get("evaluate_only"):  # the trained model, evaluated again by the current code
        earlier = json.loads((out_dir / "results.json").read_text())
        train_wall = earlier["wall_seconds"]["train"]
        model_dir = out_dir / "model"
    elif (adopted := finished_training(spec["config"])) is not None:
        # trained beforehand with `fmrilm lm train` and exactly this config: its fit time is
        # the record (it leaves out loading the LM and encoding the windows, ~1-2 min)
        train_wall = adopted
        model_dir = out_dir / "model"
    else:
        t0 = time.time()
        model_dir = train(spec["config"], resume=True)["model_dir"]
        train_wall = time.time() - t0
    t1 = time.time()
    if spec.get("ensemble"):
        model = load_models(spec["ensemble"])
        summary = model.train_summary
    else:
        summary = json.loads((out_dir / "train_summary.json").read_text())
        model = FMRILanguageModel.from_pretrained(model_dir)
    ev = evaluate(
        model,
        spec["config"]["store"],
        baselines=tuple(spec["baselines"]) if spec["baselines"] else None,
        n_bootstrap=spec["n_bootstrap"],
    )
    ev["wall_seconds"] = {"train": train_wall, "evaluate": time.time() - t1}
    ev["train_throughput"] = {
        k: summary.get(k) for k in ("tokens_per_second", "windows_per_second", "global_step")
    }
    (out_dir / "results.json").write_text(json.dumps(ev, indent=1, default=json_default) + "\n")
    (out_dir / "results.txt").write_text(format_results(ev) + "\n")
    return {"name": spec["name"], "results": str(out_dir / "results.json")}


def _launch(spec: dict) -> dict:
    out_dir = Path(spec["config"]["out_dir"])
    if spec.get("evaluate_only"):
        if not (out_dir / "results.json").exists():
            raise SystemExit(f"{spec['name']}: --reevaluate needs a finished run in {out_dir}")
    elif (out_dir / "results.json").exists():
        print(f"[lm benchmark] {spec['name']}: results exist, not rerun", flush=True)
        return spec
    out_dir.mkdir(parents=True, exist_ok=True)
    # a re-evaluation keeps the training job's record (job.json, job.log) as it was
    stem = "reevaluate" if spec.get("evaluate_only") else "job"
    (out_dir / f"{stem}.json").write_text(json.dumps(spec, indent=1))
    print(f"[lm benchmark] {spec['name']}: started (log {out_dir / f'{stem}.log'})", flush=True)
    t0 = time.time()
    with (out_dir / f"{stem}.log").open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.lm", "--job", str(out_dir / f"{stem}.json")],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"job {spec['name']} failed; see {out_dir / f'{stem}.log'}")
    print(f"[lm benchmark] {spec['name']}: done in {time.time() - t0:.0f} s", flush=True)
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    ap.add_argument("--tokenizer", action="append", default=[], metavar="SCHEME=FOLDER")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "lm.yaml")
    ap.add_argument("--out-dir", type=Path, default=REPO / "runs" / "lm_bench")
    ap.add_argument("--max-steps", type=int, default=120)
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time (one thread each)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument(
        "--ablations",
        type=comma_list,
        default=None,
        help="comma-separated subset of the ablations (default: all)",
    )
    ap.add_argument(
        "--reevaluate",
        type=comma_list,
        default=[],
        help="comma-separated finished jobs to evaluate again with the current evaluation code "
        "(their trained models and training times are kept)",
    )
    ap.add_argument(
        "--carry-ablations",
        type=Path,
        default=None,
        help="an earlier results file whose ablations (and main configuration, as "
        "previous_main_DATE) are kept in the new one, marked with their origin",
    )
    ap.add_argument(
        "--ablation-run",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a finished `fmrilm lm train` run (RUN_DIR/site_stratified, optionally "
        "RUN_DIR/heldout_sites) evaluated and listed under ablations",
    )
    ap.add_argument(
        "--ensemble-run",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR,RUN_DIR[,...]",
        help="the ensemble (fmrilm.lm.ensemble) of finished `fmrilm lm train` runs, evaluated "
        "on each scheme all of them were trained on and listed under ablations",
    )
    ap.add_argument(
        "--selection-run",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="finished runs (RUN_DIR/<scheme>) whose step checkpoints benchmarks.lm_checkpoints "
        "chose per task on validation: that selection, evaluated and listed under ablations",
    )
    ap.add_argument(
        "--keep-main",
        action="store_true",
        help="run no main job: keep the main configuration of --carry-ablations",
    )
    ap.add_argument(
        "--result-name",
        default="lm",
        help="results file (benchmarks/results/NAME.json, tables in NAME_tables.md)",
    )
    args = ap.parse_args(argv)
    if args.job is not None:
        print(json.dumps(run_job(json.loads(args.job.read_text()))))
        return 0
    if not args.store.exists():
        raise SystemExit(f"store {args.store} does not exist (fmrilm data abide ...)")
    if args.keep_main and not args.carry_ablations:
        raise SystemExit("--keep-main needs --carry-ablations (the file whose main run is kept)")
    specs = jobs(args)
    unknown = sorted(set(args.reevaluate) - {s["name"] for s in specs})
    if unknown:
        raise SystemExit(f"--reevaluate: unknown jobs {unknown}")
    for s in specs:
        s["evaluate_only"] = s["name"] in args.reevaluate
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        list(pool.map(_launch, specs))
    wall = time.time() - t0
    return summarize(specs, args, wall)


def heldout_sites_figures(flat: dict) -> dict:
    """The ``heldout_sites_*`` keys of a flat summary, without their prefix."""
    prefix = "heldout_sites_"
    return {k.removeprefix(prefix): v for k, v in flat.items() if k.startswith(prefix)}


def read_earlier(path: Path) -> tuple[dict, dict]:
    """An earlier results file and its origin record (``file``, ``commit``, ``date``)."""
    earlier = json.loads(Path(path).read_text())
    return earlier, {
        "file": str(path),
        "commit": earlier.get("commit"),
        "date": earlier.get("date"),
    }


def carried_ablations(path: Path, taken: set[str]) -> dict[str, dict]:
    """The ablations of an earlier results file, each marked with where it was measured.

    Lets a new main configuration keep the record of configurations that were run before (their
    models need not exist any more). The earlier main configuration (its ``reference`` entry)
    becomes ``previous_main_<date>`` (``previous_main_<date>_<commit>`` when that name is taken)
    and takes its ``heldout_sites_*`` figures along; entries whose names this invocation measured
    again are not carried.
    """
    earlier, origin = read_earlier(path)
    out = {}
    for name, entry in earlier.get("ablations", {}).items():
        entry = {**entry, "carried_from": {**entry.get("carried_from", origin)}}
        if name == "reference":
            name = f"previous_main_{str(earlier.get('date', 'unknown'))[:10]}"
            if name in earlier.get("ablations", {}) or name in taken:
                name = f"{name}_{earlier.get('commit')}"
            entry["heldout_sites"] = heldout_sites_figures(earlier)
            entry["config"] = earlier.get("config", "configs/lm.yaml")
        if name not in taken:
            out[name] = entry
    return out


def kept_main(path: Path) -> dict:
    """An earlier results file's main configuration and ablations, to add ablations to."""
    earlier, origin = read_earlier(path)
    out = {k: v for k, v in earlier.items() if k not in ("commit", "date", "machine")}
    out["main_carried_from"] = earlier.get("main_carried_from", origin)
    out["ablations"] = {
        name: entry
        if name == "reference"
        else {**entry, "carried_from": entry.get("carried_from", origin)}
        for name, entry in earlier.get("ablations", {}).items()
    }
    return out


def ablation_run_entries(specs: list[dict], results: dict, config_path: Path | None) -> dict:
    """``--ablation-run`` results as ablation entries (with their held-out-sites figures)."""
    import yaml

    from fmrilm.lm.evaluation import flat_summary, summarize_runs
    from fmrilm.lm.training import DEFAULT_CONFIG, merge_config

    base = yaml.safe_load(Path(config_path).read_text()) if config_path else {}
    reference = merge_config(DEFAULT_CONFIG, base)
    out: dict[str, dict] = {}
    for s in specs:
        name = s.get("ablation_run")
        if name is None:
            continue
        r = results[s["name"]]
        if r["scheme"] == "site_stratified":
            entry = summarize_runs([], {name: r})["ablations"][name]
            if s.get("ensemble"):
                entry["ensemble"] = [
                    {
                        "run_dir": str(Path(c["out_dir"]).parent),
                        "config_differences": config_differences(c, reference),
                    }
                    for c in s["member_configs"]
                ]
                if s.get("selection"):
                    entry["checkpoint_selection"] = {
                        k: s["selection"][k] for k in ("chosen_steps", "members", "every")
                    }
            else:
                entry["config_differences"] = config_differences(s["config"], reference)
                entry["run_dir"] = str(Path(s["config"]["out_dir"]).parent)
            out[name] = {**entry, **out.get(name, {})}
        else:
            held = heldout_sites_figures(flat_summary({"heldout_sites": r}))
            out.setdefault(name, {})["heldout_sites"] = held
    return out


def summarize(specs: list[dict], args, wall: float) -> int:
    from fmrilm.lm.evaluation import summarize_runs

    results = {
        s["name"]: json.loads((Path(s["config"]["out_dir"]) / "results.json").read_text())
        for s in specs
    }
    ablations = {n: r for n, r in results.items() if n in ABLATIONS}
    if args.keep_main:
        out = kept_main(args.carry_ablations)
        out["ablations"].update(summarize_runs([], ablations)["ablations"])
    else:
        main_runs = [results["site_stratified"], results["heldout_sites"]]
        # the main configuration on site_stratified is the reference each ablation changes one
        # thing of; list it among them so that the table compares like with like
        ablations = {"reference": results["site_stratified"], **ablations}
        out = summarize_runs(main_runs, ablations)
        if args.carry_ablations:
            taken = set(out["ablations"]) | {
                s["ablation_run"] for s in specs if "ablation_run" in s
            }
            out["ablations"].update(carried_ablations(args.carry_ablations, taken))
    out["ablations"].update(ablation_run_entries(specs, results, args.config))
    earlier_runs = out.get("runs", {}) if args.keep_main else {}
    out["runs"] = earlier_runs | {
        name: {
            "scheme": r["scheme"],
            "wall_seconds": r.get("wall_seconds"),
            "train_throughput": r.get("train_throughput"),
            "lm_eval_seconds": r.get("lm_eval_seconds"),
            "lm_scans_per_second": r.get("lm_scans_per_second"),
            "baseline_seconds": r.get("baseline_seconds"),
            "n_windows_evaluated": r.get("n_windows"),
        }
        for name, r in results.items()
    }
    # jobs may come from earlier invocations (resume): their own wall times are the record
    jobs_wall = sum(sum((r.get("wall_seconds") or {}).values()) for r in results.values())
    out["benchmark_wall_seconds_this_invocation"] = wall
    if args.keep_main:  # the main figures, steps and wall time are the earlier file's
        out["added_jobs_wall_seconds_sum"] = jobs_wall
    else:
        out["max_steps"] = args.max_steps
        out["jobs_wall_seconds_sum"] = jobs_wall
        out["parallel_jobs"] = args.parallel
    tables_path = RESULTS / f"{args.result_name}_tables.md"
    if args.keep_main and tables_path.exists():  # the kept main run's tables stay first
        tables = tables_path.read_text().rstrip().split("\n") + [""]
    else:
        tables = ["# fMRI LM benchmark tables", ""]
    for name, s in zip(results, specs, strict=True):
        text = (Path(s["config"]["out_dir"]) / "results.txt").read_text()
        tables += [f"## {name}", "", "```", text.rstrip(), "```", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    tables_path.write_text("\n".join(tables))
    for key in ("commit", "date", "machine"):
        out.pop(key, None)  # write_result records them

    def fmt(k):
        v = out.get(k)
        return "n/a" if v is None else f"{v:.3f}"

    if args.keep_main:
        added = [n for n in out["ablations"] if any(s.get("ablation_run") == n for s in specs)]
        added += [n for n in results if n in ABLATIONS]
        line = "main configuration kept; ablations added: " + "; ".join(
            f"{n}: age MAE {out['ablations'][n].get('age_mae', float('nan')):.3f}, sex AUC "
            f"{out['ablations'][n].get('sex_auc', float('nan')):.3f}, dx AUC "
            f"{out['ablations'][n].get('diagnosis_auc', float('nan')):.3f}"
            for n in added
        )
        path = write_result(args.result_name, out, line)
        print(line)
        print(f"wrote {path}")
        return 0
    line = (
        f"site_stratified: LM age MAE {fmt('age_mae')} (FC {fmt('fc_age_mae')}, site "
        f"{fmt('site_age_mae')}), sex AUC {fmt('sex_auc')} (FC {fmt('fc_sex_auc')}), dx AUC "
        f"{fmt('diagnosis_auc')} (FC {fmt('fc_diagnosis_auc')}); heldout_sites: age MAE "
        f"{fmt('heldout_sites_age_mae')} (FC {fmt('heldout_sites_fc_age_mae')}); "
        f"{args.max_steps} steps; parse failures {out.get('parse_failures')}; "
        f"jobs' wall time {out['jobs_wall_seconds_sum'] / 60:.0f} min, {args.parallel} at a time"
    )
    config = Path(args.config).resolve()
    out["config"] = str(config.relative_to(REPO) if config.is_relative_to(REPO) else config)
    path = write_result(args.result_name, out, line)
    print(line)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
