"""The step checkpoints of LM runs on the validation split, and one step chosen per task.

    fmrilm lm train --config configs/lm.yaml --set train.checkpoints_kept=-1 ... --out-dir RUN/site_stratified
    python -m benchmarks.lm_checkpoints --store /tmp/fmrilm_abide_store \
        --run RUN/site_stratified [--run RUN/heldout_sites] [--every 100]

A multi-task model does not peak on every task at the same step: its answer-token loss rises
when it grows over-confident on sex and diagnosis, long before the age answers stop improving
(``docs/lm.md``). For each run (trained with ``train.checkpoints_kept: -1``, so that every step
checkpoint is on disk), every ``--every``-th step checkpoint is exported as a model folder
(``fmrilm.lm.training.export_checkpoint``, into ``RUN/steps/step<N>``) and measured on the
validation split of the run's scheme (the test split is not read):

- ``val_loss``: the mean answer-token loss on every validation window
  (``fmrilm.lm.training.validation_loss``);
- each task's metric (MAE for numbers, ROC AUC for classes) of ``fmrilm.lm.evaluation.evaluate``
  with ``split="val"``; the trivial, site-only and connectivity baselines of the same split are
  evaluated once, with the first checkpoint.

Each task then takes the step with the best validation metric (the later step on a tie), and
``RUN/checkpoint_selection.json`` lists the model folders that answer each task (``TASK=FOLDER``
specs of ``fmrilm lm evaluate``); ``python -m benchmarks.lm --selection-run NAME=RUN_PARENT``
evaluates that selection on the test split beside every baseline. Writes
``benchmarks/results/<name>.json``, one figure per run (``benchmarks/results/<name>/<scheme>
_val_by_step.png``: each validation metric against the step, with the baselines) and one line
in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import benchmarks.common as common
from benchmarks.common import write_result
from benchmarks.lm_selection import validation_windows

CHECKPOINT_NAME = re.compile(r"^step(\d+)\.ckpt$")
BASELINES = ("trivial", "site", "connectivity_correlation", "connectivity_tangent")


def step_checkpoints(run_dir: Path, every: int) -> dict[int, Path]:
    """``{step: checkpoint}`` of the run's step checkpoints whose step is a multiple of ``every``."""
    found = {}
    for path in sorted((run_dir / "checkpoints").glob("step*.ckpt")):
        m = CHECKPOINT_NAME.match(path.name)
        if m and int(m.group(1)) % every == 0:
            found[int(m.group(1))] = path
    if not found:
        raise SystemExit(
            f"{run_dir}: no step checkpoint at a multiple of {every} steps in "
            f"{run_dir / 'checkpoints'} (train with --set train.checkpoints_kept=-1)"
        )
    return dict(sorted(found.items()))


def task_metric(kind: str) -> tuple[str, bool]:
    """``(metric, lower_is_better)`` a task is chosen on: MAE for numbers, ROC AUC for classes."""
    return ("mae", True) if kind == "regression" else ("roc_auc", False)


def lm_metrics(ev: dict, kinds: dict[str, str]) -> dict[str, float | None]:
    """Each task's chosen metric of the LM in an evaluation."""
    out = {}
    for name, kind in kinds.items():
        entry = ev["targets"][name]["results"]["lm"]["metrics"].get(task_metric(kind)[0]) or {}
        out[name] = entry.get("value")
    return out


def baseline_metrics(ev: dict, kinds: dict[str, str]) -> dict[str, dict[str, float | None]]:
    """``{task: {baseline: value}}``; ``fc`` is the better of the connectivity baselines."""
    out = {}
    for name, kind in kinds.items():
        metric, lower = task_metric(kind)
        results = ev["targets"][name]["results"]
        values = {
            b: (results[b]["metrics"].get(metric) or {}).get("value")
            for b in BASELINES
            if b in results
        }
        fc = [v for b, v in values.items() if b.startswith("connectivity_") and v is not None]
        out[name] = {
            "fc": (min if lower else max)(fc) if fc else None,
            "site": values.get("site"),
            "trivial": values.get("trivial"),
        }
    return out


def choose_steps(curve: list[dict], kinds: dict[str, str]) -> dict[str, int]:
    """For each task, the step whose validation metric is best (the later one on a tie)."""
    chosen = {}
    for name, kind in kinds.items():
        lower = task_metric(kind)[1]
        scored = [(p["metrics"][name], p["step"]) for p in curve if p["metrics"][name] is not None]
        if not scored:
            raise SystemExit(f"no checkpoint has a validation {task_metric(kind)[0]} for {name}")
        best = min(v for v, _ in scored) if lower else max(v for v, _ in scored)
        chosen[name] = max(s for v, s in scored if v == best)
    return chosen


def selection_members(chosen: dict[str, int], folders: dict[int, Path]) -> list[str]:
    """``fmrilm lm evaluate`` model specs answering each task from its chosen step's folder.

    One step for every task gives that folder alone; otherwise ``TASK[,TASK]=FOLDER`` per step.
    """
    by_step: dict[int, list[str]] = {}
    for name, step in chosen.items():
        by_step.setdefault(step, []).append(name)
    if len(by_step) == 1:
        return [str(folders[next(iter(by_step))])]
    return [f"{','.join(names)}={folders[step]}" for step, names in sorted(by_step.items())]


def measure_run(run_dir: Path, store_path: Path, every: int) -> dict:
    """Export and measure every ``every``-th step checkpoint of one run on validation."""
    import torch

    from fmrilm.data import open_store
    from fmrilm.lm.evaluation import evaluate
    from fmrilm.lm.model import FMRILanguageModel
    from fmrilm.lm.training import export_checkpoint, validation_loss

    torch.set_num_threads(1)
    if not (run_dir / "model").exists():
        raise SystemExit(f"{run_dir}: no final model (run_dir/model): has the run finished?")
    store = open_store(store_path)
    checkpoints = step_checkpoints(run_dir, every)
    folders, curve, baselines, enc = {}, [], None, None
    for step, ckpt in checkpoints.items():
        t0 = time.time()
        folder = run_dir / "steps" / f"step{step:07d}"
        if (folder / "lm_config.json").exists():
            model = FMRILanguageModel.from_pretrained(folder)
            if model.train_summary.get("checkpoint") != str(ckpt):
                raise SystemExit(f"{folder} was exported from another checkpoint; remove it")
        else:
            model = export_checkpoint(run_dir / "model", ckpt, folder)
        folders[step] = folder
        kinds = {t.name: t.kind for t in model.tasks}
        cfg = model.config
        if enc is None:  # the same windows for every step: the tokenizer is frozen
            enc, labels = validation_windows(model, store)
        loss = validation_loss(model, enc["codes"], enc["scan_index"], labels)
        ev = evaluate(
            model,
            store,
            split="val",
            baselines=BASELINES if baselines is None else ("trivial",),
            n_bootstrap=200,
        )
        if baselines is None:
            baselines = baseline_metrics(ev, kinds)
            n_subjects = {n: t.get("n_eval_subjects") for n, t in ev["targets"].items()}
        point = {
            "step": step,
            "val_loss": loss,
            "metrics": lm_metrics(ev, kinds),
            "parse_failures": ev["parse_failures"],
            "seconds": time.time() - t0,
        }
        curve.append(point)
        print(f"[lm_checkpoints] {run_dir} {point}", flush=True)
    chosen = choose_steps(curve, kinds)
    members = selection_members(chosen, folders)
    record = {
        "run_dir": str(run_dir),
        "scheme": cfg.scheme,
        "every": every,
        "tasks": {n: {"kind": k, "metric": task_metric(k)[0]} for n, k in kinds.items()},
        "n_val_subjects": n_subjects,
        "n_val_windows": int(len(enc["codes"])),
        "curve": curve,
        "baselines": baselines,
        "chosen_steps": chosen,
        "members": members,
    }
    (run_dir / "checkpoint_selection.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def plot_run(record: dict, path: Path) -> Path:
    """Validation loss and each task's metric against the step, with the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = record["tasks"]
    steps = [p["step"] for p in record["curve"]]
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4 * (len(tasks) + 1), 3.4))
    axes[0].plot(steps, [p["val_loss"] for p in record["curve"]], "o-", color="k")
    axes[0].set(title="answer-token loss", xlabel="step", ylabel="validation loss")
    styles = {"fc": ("tab:blue", "FC + linear"), "site": ("tab:orange", "site only")}
    styles["trivial"] = ("tab:gray", "trivial")
    for ax, (name, task) in zip(axes[1:], tasks.items(), strict=True):
        ax.plot(steps, [p["metrics"][name] for p in record["curve"]], "o-", color="k", label="LM")
        for who, value in record["baselines"][name].items():
            if value is not None:
                color, label = styles[who]
                ax.axhline(value, color=color, ls="--", lw=1, label=label)
        ax.axvline(record["chosen_steps"][name], color="tab:green", lw=1, label="chosen step")
        ax.set(title=name, xlabel="step", ylabel=f"validation {task['metric']}")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{record['scheme']}: validation split, {record['run_dir']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, action="append", required=True, metavar="RUN_DIR")
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    ap.add_argument("--every", type=int, default=100, help="measure every N-th step (default 100)")
    ap.add_argument("--result-name", default="lm_checkpoints")
    args = ap.parse_args(argv)
    if args.every < 1:
        raise SystemExit(f"--every must be >= 1, got {args.every}")
    runs = {}
    for run_dir in args.run:
        record = measure_run(run_dir, args.store, args.every)
        if record["scheme"] in runs:
            raise SystemExit(f"two runs of scheme {record['scheme']!r}: give one per scheme")
        results = common.RESULTS
        figure = plot_run(
            record, results / args.result_name / f"{record['scheme']}_val_by_step.png"
        )
        record["figure"] = str(figure.relative_to(results.parent.parent))
        runs[record["scheme"]] = record

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    line = "; ".join(
        f"{s} val, chosen steps "
        + ", ".join(
            f"{n} {st} ({r['tasks'][n]['metric']} "
            f"{fmt(next(p for p in r['curve'] if p['step'] == st)['metrics'][n])}, "
            f"last step {fmt(r['curve'][-1]['metrics'][n])})"
            for n, st in r["chosen_steps"].items()
        )
        for s, r in runs.items()
    )
    write_result(args.result_name, {"runs": runs}, line)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
