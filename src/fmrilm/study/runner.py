"""The comparison study: every arm on the same subject split, the same questions and metrics.

Arms (``StudyConfig.arms``; each name expands to one run per rendering / model):

=========================  =================================================================
``baseline_median``        training-set median (:class:`fmrilm.baselines.TrivialBaseline`)
``baseline_site``          the training-set mean of the subject's site (:class:`SiteBaseline`)
``baseline_fc``            functional connectivity + ridge (:class:`ConnectivityBaseline`)
``efficientnet_imagenet``  rendered window -> ImageNet EfficientNet-Lite0 -> prefix -> LM+LoRA
``efficientnet_random``    the same with a randomly initialised encoder (the control)
``fmri_encoder``           the fMRI tokenizer's continuous encoder -> prefix -> LM+LoRA
``fmri_codes``             the same with the quantized codes' codebook vectors (what the shared
                           vocabulary carries) instead of the continuous encoder output
``linear_probe``           ridge / logistic regression on each encoder's frozen pooled features
                           (the same windows): is the target in the features, whatever the LM does
``shared_vocab``           the shared-vocabulary LM (``fmrilm lm``), evaluated here
``vlm``                    rendered window -> a VLM's own processor/encoder -> LM+LoRA
=========================  =================================================================

Every arm predicts the target of each **test** scan of the chosen split scheme (scans with
several windows: the mean of the per-window expectations; classes: summed log-probabilities),
predictions are averaged per subject and scored with :mod:`fmrilm.evaluation.metrics` (bootstrap
95% CIs over subjects). An arm whose dependencies are missing (no trained tokenizer, no LM
weights, VLM weights not available offline) is recorded with ``status: "not run"`` and the
reason, never dropped or faked.

The run is resumable arm by arm: each finished arm is written to
``<work_dir>/arms/<arm>.json`` (with its per-subject predictions) and a rerun with the same
settings skips it. :func:`run_study` then writes ``study.json`` (per arm: ``age_mae``,
``age_mae_ci95``, ``age_r``, ``age_r2``, ``predicted_age_std_ratio``, ``parse_failures``,
``trainable_params``, ``train_seconds``, ``peak_rss_mb``, ``status``; plus ``split``,
``commit``, ``date``, ``machine``), the figures and the HTML report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.provenance import commit, machine
from fmrilm.study.prefix import LoraSettings, NumericTask

__all__ = [
    "ARM_KINDS",
    "DEFAULT_VLMS",
    "ArmBudget",
    "ArmSpec",
    "StudyConfig",
    "expand_arms",
    "run_study",
    "load_study_config",
]

ARM_KINDS = (
    "baseline_median",
    "baseline_site",
    "baseline_fc",
    "efficientnet_imagenet",
    "efficientnet_random",
    "fmri_encoder",
    "fmri_codes",
    "linear_probe",
    "shared_vocab",
    "vlm",
)
#: VLMs tried by default (none is available offline; they are listed as not run).
DEFAULT_VLMS = (
    "HuggingFaceTB/SmolVLM-256M-Instruct",
    "Qwen/Qwen2-VL-2B-Instruct",
    "llava-hf/llava-1.5-7b-hf",
    "meta-llama/Llama-3.2-11B-Vision-Instruct",
)
_IMAGE_KINDS = ("efficientnet_imagenet", "efficientnet_random", "vlm")
_FMRI_KINDS = ("fmri_encoder", "fmri_codes")
_TRAINED_KINDS = ("efficientnet_imagenet", "efficientnet_random", *_FMRI_KINDS, "vlm")
#: Frozen encoders whose pooled features the prefix arms feed to the LM (and the probes read).
_ENCODER_KINDS = ("efficientnet_imagenet", "efficientnet_random", *_FMRI_KINDS)
_ARM_FORMAT = "fmrilm.study.arm"


# ============================================================================ configuration


@dataclass
class ArmBudget:
    """Training budget of one trained arm.

    Attributes
    ----------
    steps : int
        Optimiser steps (at most).
    max_seconds : float or None
        Wall-time limit of training; training stops at the first step past it.
    batch_size : int
    lr : float
    max_train_windows : int or None
        Seeded random subset of training windows (None: all).
    max_eval_windows : int or None
        Seeded random subset of test windows (None: all; a subset can drop whole scans).
    """

    steps: int = 300
    max_seconds: float | None = 1800.0
    batch_size: int = 8
    lr: float = 1e-3
    max_train_windows: int | None = 512
    max_eval_windows: int | None = None

    def __post_init__(self) -> None:
        # one type per field, so that 1500 (YAML) and 1500.0 (command line) are the same budget
        self.steps, self.batch_size, self.lr = int(self.steps), int(self.batch_size), float(self.lr)
        if self.max_seconds is not None:
            self.max_seconds = float(self.max_seconds)


@dataclass
class StudyConfig:
    """Everything a study run needs (read from ``configs/study*.yaml``).

    Attributes
    ----------
    store : str
        Dataset store folder.
    scheme : str
        Split scheme (``site_stratified`` or ``heldout_sites``); every arm trains on its
        ``train`` split and is scored on its ``test`` split.
    task : str
        Target: ``age``, ``sex``, ``diagnosis`` or any store column / phenotype key.
    arms : list of str
        Subset of :data:`ARM_KINDS`, in run order.
    renderings : list of str
        Image renderings for the image arms (``heatmap``, ``connectivity``).
    lm : str
        Causal LM of the prefix arms: hub id, local folder, GGUF or ``smollm2``.
    vlms : list of str
        VLM hub ids or folders for the ``vlm`` arm.
    fmri_tokenizer : str or None
        Folder of a trained fMRI tokenizer (``fmrilm tokenizer train``) for ``fmri_encoder``.
    shared_vocab_model : str or None
        Folder of a trained shared-vocabulary LM (``fmrilm lm train``) for ``shared_vocab``.
    window_length, stride : int
        Windows (time points) read from every scan.
    image_size : int
        Side of the rendered images fed to EfficientNet (224: its training size).
    colormap : str
    n_prefix : int
        Soft-prefix vectors per example.
    fmri_pooling : {"time", "all"}
        Pooling of the fMRI encoder's (R, P, C) output: over time patches (features R*C) or over
        everything (C).
    lora : LoraSettings
    budget : ArmBudget
        Default budget of every trained arm.
    budgets : dict
        Per-arm-kind overrides of ``budget`` fields, e.g. ``{"vlm": {"steps": 50}}``.
    n_bootstrap : int
    seed : int
    out : str
        Path of ``study.json``.
    work_dir : str or None
        Per-arm results, renderers and figures (default: ``<out without .json>/``).
    """

    store: str = ""
    scheme: str = "site_stratified"
    task: str = "age"
    arms: list[str] = field(default_factory=lambda: list(ARM_KINDS))
    renderings: list[str] = field(default_factory=lambda: ["heatmap", "connectivity"])
    lm: str = "smollm2"
    vlms: list[str] = field(default_factory=lambda: list(DEFAULT_VLMS))
    fmri_tokenizer: str | None = None
    shared_vocab_model: str | None = None
    window_length: int = 160
    stride: int = 80
    image_size: int = 224
    colormap: str = "viridis"
    n_prefix: int = 4
    fmri_pooling: str = "time"
    lora: LoraSettings = field(default_factory=LoraSettings)
    budget: ArmBudget = field(default_factory=ArmBudget)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_bootstrap: int = 1000
    seed: int = 0
    out: str = "benchmarks/results/study.json"
    work_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if isinstance(self.budget, dict):
            self.budget = ArmBudget(**self.budget)
        unknown = [a for a in self.arms if a not in ARM_KINDS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; known: {', '.join(ARM_KINDS)}")
        from fmrilm.study.render import RENDERINGS

        bad = [r for r in self.renderings if r not in RENDERINGS]
        if bad:
            raise ValueError(f"unknown renderings {bad}; known: {', '.join(RENDERINGS)}")
        for kind, over in self.budgets.items():
            if kind not in ARM_KINDS:
                raise ValueError(f"budgets: unknown arm kind {kind!r}")
            names = {f.name for f in dataclasses.fields(ArmBudget)}
            if set(over) - names:
                raise ValueError(f"budgets[{kind!r}]: unknown fields {sorted(set(over) - names)}")
        if self.fmri_pooling not in ("time", "all"):
            raise ValueError(f"fmri_pooling must be 'time' or 'all', got {self.fmri_pooling!r}")

    @property
    def work_path(self) -> Path:
        if self.work_dir:
            return Path(self.work_dir)
        out = Path(self.out)
        return out.with_suffix("") if out.suffix else out.parent / (out.name + "_work")

    def budget_for(self, kind: str) -> ArmBudget:
        """``budget`` with the overrides of ``budgets[kind]``."""
        return dataclasses.replace(self.budget, **self.budgets.get(kind, {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown study config keys: {sorted(unknown)}")
        return cls(**d)


def load_study_config(path: str | Path, **overrides: Any) -> StudyConfig:
    """Read a YAML (or JSON) study config; non-None ``overrides`` replace its keys."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return StudyConfig.from_dict(data)


@dataclass(frozen=True)
class ArmSpec:
    """One run of the study: an arm kind, with its rendering and model when it has them."""

    kind: str
    rendering: str | None = None
    model: str | None = None

    @property
    def name(self) -> str:
        parts = [self.kind]
        if self.model:
            parts.append(
                Path(self.model.rstrip("/")).name if Path(self.model).exists() else self.model
            )
        if self.rendering:
            parts.append(self.rendering)
        return ":".join(parts)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)


def expand_arms(config: StudyConfig) -> list[ArmSpec]:
    """The runs of a study, in order: image arms once per rendering, VLMs once per model too."""
    specs = []
    for kind in config.arms:
        if kind in ("efficientnet_imagenet", "efficientnet_random"):
            specs += [ArmSpec(kind, rendering=r) for r in config.renderings]
        elif kind == "vlm":
            specs += [ArmSpec(kind, r, m) for m in config.vlms for r in config.renderings]
        elif kind == "linear_probe":
            for enc in _ENCODER_KINDS:
                renderings = [None] if enc in _FMRI_KINDS else config.renderings
                specs += [ArmSpec(kind, rendering=r, model=enc) for r in renderings]
        else:
            specs.append(ArmSpec(kind))
    return specs


# ============================================================================ helpers


class _PeakRSS:
    """Peak resident memory of this process while a block runs (sampled every 0.1 s)."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()

    def _rss(self) -> float:
        try:
            import psutil

            return psutil.Process().memory_info().rss / 2**20
        except Exception:  # noqa: BLE001
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> _PeakRSS:
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)  # atomic: a kill never leaves a half-written result


class ArmNotRunnable(RuntimeError):
    """An arm's dependency is missing: the arm is recorded as "not run" with this reason."""


# ============================================================================ the study context


@dataclass
class _Context:
    config: StudyConfig
    store: Any
    table: Any
    train_rows: np.ndarray
    test_rows: np.ndarray
    values: np.ndarray  # target per store row (object; NaN/None missing)
    kind: str  # regression | classification
    task: Any  # TaskSpec-like
    lm_factory: Callable[[], tuple[Any, Any]]
    progress: bool


def _task_spec(table, train_rows: np.ndarray, name: str) -> tuple[Any, str]:
    """The task's question and closed answer set, from :func:`fmrilm.lm.build_tasks` when the LM
    stage imports (the same answers as the shared-vocabulary LM), else a bare integer grid."""
    try:
        from fmrilm.lm.tasks import build_tasks
    except Exception as err:  # noqa: BLE001 - a broken or absent LM stage: fall back, say so
        build_tasks, why = None, f"{type(err).__name__}: {err}"
    if build_tasks is not None:
        return build_tasks(table, train_rows, [name])[0], "fmrilm.lm.build_tasks"
    from fmrilm.baselines.clinical import infer_task, target_values

    col = target_values(table, name).to_numpy(dtype=object)[train_rows]
    col = [v for v in col if not _missing(v)]
    if infer_task(np.asarray(col, dtype=object)) != "regression":
        raise ValueError(f"task {name!r} is categorical and needs fmrilm.lm for answers ({why})")
    vals = np.asarray(col, dtype=float)
    grid = list(range(int(np.floor(vals.min())), int(np.ceil(vals.max())) + 1))
    question = f"What is this participant's {name.replace('_', ' ')}?"
    if name == "age":
        question = "How old is this participant, in years?"
    return NumericTask(name, question, grid), f"integer grid (fmrilm.lm unavailable: {why})"


def _answer_index(task, value) -> int:
    if hasattr(task, "answer_index"):
        return task.answer_index(value)
    return int(np.argmin(np.abs(np.asarray(task.values) - float(value))))


def _missing(v) -> bool:
    if v is None:
        return True
    try:
        return bool(np.isnan(v))
    except TypeError:
        return False


def _default_lm_factory(name: str) -> Callable[[], tuple[Any, Any]]:
    def factory():
        try:
            from fmrilm.lm.vocab import load_causal_lm
        except Exception as err:  # noqa: BLE001 - absent or broken LM stage
            raise ArmNotRunnable(f"the LM stage (fmrilm.lm) is not available: {err}") from None
        try:
            return load_causal_lm(name)
        except (OSError, FileNotFoundError, ImportError, ValueError) as err:
            raise ArmNotRunnable(f"causal LM {name!r} cannot be loaded here: {err}") from None

    return factory


# ============================================================================ evaluation


def _evaluate(ctx: _Context, rows: np.ndarray, preds: np.ndarray) -> dict[str, Any]:
    """Per-subject metrics of scan-level predictions, flattened to the study's keys."""
    from fmrilm.evaluation.metrics import (
        average_by_subject,
        classification_metrics,
        regression_metrics,
    )

    t = ctx.config.task
    # every arm is scored on the same scans: the test scans long enough for one study window
    # (an arm reading shorter windows, such as a shared-vocabulary LM, may answer more)
    inside = np.isin(rows, ctx.test_rows)
    rows, preds = rows[inside], np.asarray(preds)[inside]
    y = ctx.values[rows]
    keep = np.array([not _missing(v) for v in y], dtype=bool)
    rows, y, preds = rows[keep], y[keep], np.asarray(preds)[keep]
    if len(rows) == 0:
        raise ArmNotRunnable("no test scan with a target value and a window")
    subj = ctx.table["subject_id"].astype(str).to_numpy()[rows]
    site = ctx.table["site"].astype(str).to_numpy()[rows]
    y_in = y.astype(float) if ctx.kind == "regression" else y
    subjects, y_s, p_s, site_s, info = average_by_subject(subj, y_in, preds, sites=site)
    out: dict[str, Any] = {"n_test_subjects": int(len(subjects)), "n_test_scans": int(len(rows))}
    if ctx.kind == "regression":
        m = regression_metrics(
            y_s.astype(float), p_s, n_bootstrap=ctx.config.n_bootstrap, seed=ctx.config.seed
        )["metrics"]
        for src, dst in (
            ("mae", f"{t}_mae"),
            ("pearson_r", f"{t}_r"),
            ("r2", f"{t}_r2"),
            ("predicted_std_ratio", f"predicted_{t}_std_ratio"),
        ):
            out[dst] = m[src]["value"]
            out[dst + "_ci95"] = [m[src]["ci_low"], m[src]["ci_high"]]
        y_plot, p_plot = y_s.astype(float), p_s
    else:
        labels = list(ctx.task.answers)
        m = classification_metrics(
            y_s, p_s, labels=labels, n_bootstrap=ctx.config.n_bootstrap, seed=ctx.config.seed
        )["metrics"]
        for src, dst in (("balanced_accuracy", f"{t}_balanced_accuracy"), ("roc_auc", f"{t}_auc")):
            out[dst] = m[src]["value"]
            out[dst + "_ci95"] = [m[src]["ci_low"], m[src]["ci_high"]]
        y_plot, p_plot = None, None
    out["predictions"] = {
        "subject_id": list(subjects),
        "site": list(site_s) if site_s is not None else None,
        "y_true": y_plot.tolist() if y_plot is not None else [str(v) for v in y_s],
        "y_pred": p_plot.tolist() if p_plot is not None else np.asarray(p_s).tolist(),
        "labels": None if ctx.kind == "regression" else list(ctx.task.answers),
    }
    return out


# ============================================================================ arms


def _arm_baseline(spec: ArmSpec, ctx: _Context, bar) -> dict[str, Any]:
    from fmrilm.baselines.clinical import ConnectivityBaseline, SiteBaseline, TrivialBaseline

    y_tr = ctx.values[ctx.train_rows]
    keep = np.array([not _missing(v) for v in y_tr], dtype=bool)
    tr = ctx.train_rows[keep]
    y_fit = y_tr[keep].astype(float) if ctx.kind == "regression" else y_tr[keep].astype(str)
    test = ctx.test_rows
    t0 = time.perf_counter()
    sites = ctx.table["site"].astype(str).to_numpy()
    if spec.kind == "baseline_median":
        est = TrivialBaseline(task=ctx.kind).fit(tr, y_fit)
        params = 1
    elif spec.kind == "baseline_site":
        est = SiteBaseline(task=ctx.kind).fit(sites[tr], y_fit)
        params = int(sum(np.size(v) for v in est.site_values_.values()))
    else:
        ts = [ctx.store.timeseries(int(i)) for i in tr]
        est = ConnectivityBaseline(
            kind="correlation",
            model="ridge" if ctx.kind == "regression" else "logistic",
            random_state=ctx.config.seed,
        )
        groups = ctx.table["subject_id"].astype(str).to_numpy()[tr]
        est.fit(ts, y_fit, groups=groups)
        r = ctx.store.n_rois
        params = r * (r - 1) // 2 + 1
    train_seconds = time.perf_counter() - t0
    if spec.kind == "baseline_median":
        X = test
    elif spec.kind == "baseline_site":
        X = sites[test]
    else:
        X = [ctx.store.timeseries(int(i)) for i in test]
    if ctx.kind == "regression":
        pred = np.asarray(est.predict(X), dtype=float)
    else:
        proba = est.predict_proba(X)
        order = [
            list(est.classes_).index(a) if a in list(est.classes_) else None
            for a in ctx.task.answers
        ]
        pred = np.stack([proba[:, j] if j is not None else np.zeros(len(test)) for j in order], 1)
    bar.update(1)
    return {
        **_evaluate(ctx, test, pred),
        "parse_failures": 0,
        "trainable_params": params,
        "train_seconds": train_seconds,
    }


def _windows(ctx: _Context, split: str, max_windows: int | None):
    from fmrilm.study.render import store_windows

    return store_windows(
        ctx.store,
        split,
        scheme=ctx.config.scheme,
        window_length=ctx.config.window_length,
        stride=ctx.config.stride,
        max_windows=max_windows,
        seed=ctx.config.seed,
    )


def _training_targets(ctx: _Context, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Mask of windows with a target, and their answer texts (" 24", " autism")."""
    keep, answers = [], []
    for r in rows:
        v = ctx.values[r]
        if _missing(v):
            keep.append(False)
            continue
        i = _answer_index(ctx.task, v)
        keep.append(i >= 0)
        if i >= 0:
            answers.append(" " + ctx.task.answers[i])
    return np.asarray(keep, dtype=bool), answers


def _scan_predictions(ctx: _Context, rows: np.ndarray, out: dict) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate window predictions per scan: mean expectation, or summed log-probabilities."""
    scans = np.unique(rows)
    if ctx.kind == "regression":
        pred = np.array([out["expected"][rows == s].mean() for s in scans])
    else:
        logp = np.log(np.clip(out["probs"], 1e-300, None))
        summed = np.stack([logp[rows == s].sum(0) for s in scans])
        summed -= summed.max(1, keepdims=True)
        pred = np.exp(summed) / np.exp(summed).sum(1, keepdims=True)
    return scans, pred


def _features_image(kind: str, ctx: _Context, windows, renderer, bar) -> Any:
    import torch

    from fmrilm.study.efficientnet import build_efficientnet, preprocess

    try:
        encoder = build_efficientnet(
            pretrained=kind == "efficientnet_imagenet", seed=ctx.config.seed
        )
    except FileNotFoundError as err:
        raise ArmNotRunnable(str(err)) from None
    feats = []
    with torch.no_grad():
        for s in range(0, len(windows), 16):
            images = renderer.transform_many(windows[s : s + 16])
            x = preprocess(list(images), size=ctx.config.image_size, crop=False)
            feats.append(encoder.features(x))
    return torch.cat(feats) if feats else torch.zeros(0, 1280)


def _features_fmri(ctx: _Context, windows, encoder, quantized: bool = False) -> Any:
    import torch
    from einops import reduce

    out = []
    with torch.no_grad():
        for s in range(0, len(windows), 16):
            w = torch.from_numpy(np.stack(windows[s : s + 16]))
            if quantized:  # codebook vectors of the discrete codes: what the vocabulary holds
                z = encoder.code_vectors(encoder.encode(w))  # (B, R, P, C)
            else:
                z = encoder.encode_continuous(w)  # (B, R, P, C)
            if ctx.config.fmri_pooling == "time":
                out.append(reduce(z, "b r p c -> b (r c)", "mean"))
            else:
                out.append(reduce(z, "b r p c -> b c", "mean"))
    return torch.cat(out)


def _renderer(ctx: _Context, rendering: str):
    from fmrilm.study.render import ImageRenderer, fit_renderer_on_store

    path = ctx.config.work_path / "renderers" / f"{rendering}.json"
    if path.exists():
        r = ImageRenderer.load(path)
        if r.extra.get("scheme") == ctx.config.scheme and r.size == ctx.config.image_size:
            return r
    r = ImageRenderer(
        rendering,
        size=ctx.config.image_size,
        colormap=ctx.config.colormap,
        symmetric=rendering == "connectivity",
        seed=ctx.config.seed,
    )
    fit_renderer_on_store(
        ctx.store,
        r,
        scheme=ctx.config.scheme,
        window_length=ctx.config.window_length,
        stride=ctx.config.stride,
        seed=ctx.config.seed,
    )
    r.save(path)
    return r


def _check_fitted_scheme(fmri_tokenizer, scheme: str, what: str) -> None:
    """Refuse (arm not run) a model fitted on another split scheme."""
    from fmrilm.lm.training import check_tokenizer_scheme

    check_tokenizer_scheme(fmri_tokenizer, scheme, what, error=ArmNotRunnable)


def _featurizer(kind: str, rendering: str | None, ctx: _Context, bar) -> Callable:
    """``windows -> (N, F)`` pooled features of a frozen encoder (an image or the fMRI encoder)."""
    if kind in _FMRI_KINDS:
        if not ctx.config.fmri_tokenizer:
            raise ArmNotRunnable("no trained fMRI tokenizer given (config key fmri_tokenizer)")
        try:
            from fmrilm.tokenizer import FMRITokenizer
        except Exception as err:  # noqa: BLE001 - absent or broken tokenizer stage
            raise ArmNotRunnable(
                f"the tokenizer stage (fmrilm.tokenizer) is not available: {err}"
            ) from None
        if not Path(ctx.config.fmri_tokenizer).is_dir():
            raise ArmNotRunnable(
                f"fMRI tokenizer folder {ctx.config.fmri_tokenizer} does not exist"
            )
        encoder = FMRITokenizer.from_pretrained(ctx.config.fmri_tokenizer).eval()
        _check_fitted_scheme(
            encoder, ctx.config.scheme, f"fMRI tokenizer {ctx.config.fmri_tokenizer}"
        )
        quantized = kind == "fmri_codes"
        featurize = lambda w: _features_fmri(ctx, w, encoder, quantized)  # noqa: E731
    else:
        renderer = _renderer(ctx, rendering)
        featurize = lambda w: _features_image(kind, ctx, w, renderer, bar)  # noqa: E731
    return featurize


def _featurized_windows(ctx: _Context, featurize: Callable, budget: ArmBudget) -> dict[str, Any]:
    """Features of the training windows that have a target and of every test window.

    Returns ``f_train``, ``train_rows`` (store row per training window), ``answers`` (their
    answer texts, ``" 24"``), ``f_test``, ``test_rows`` and ``feature_seconds``.
    """
    train_w, train_rows = _windows(ctx, "train", budget.max_train_windows)
    keep, answers = _training_targets(ctx, train_rows)
    train_w = [w for w, k in zip(train_w, keep, strict=True) if k]
    if not train_w:
        raise ArmNotRunnable("no training window has a target value")
    test_w, test_rows = _windows(ctx, "test", budget.max_eval_windows)
    if not test_w:
        raise ArmNotRunnable("no test scan is long enough for one window")
    t0 = time.perf_counter()
    f_train, f_test = featurize(train_w), featurize(test_w)
    return {
        "f_train": f_train,
        "train_rows": train_rows[keep],
        "answers": answers,
        "f_test": f_test,
        "test_rows": test_rows,
        "feature_seconds": time.perf_counter() - t0,
    }


def _arm_prefix(spec: ArmSpec, ctx: _Context, bar) -> dict[str, Any]:
    """Image-encoder and fMRI-encoder arms: frozen encoder -> projector prefix -> LM + LoRA."""
    from fmrilm.study.prefix import PrefixLM, train_prefix_lm, trainable_parameters

    budget = ctx.config.budget_for(spec.kind)
    featurize = _featurizer(spec.kind, spec.rendering, ctx, bar)
    lm, tok = ctx.lm_factory()
    data = _featurized_windows(ctx, featurize, budget)
    f_train, f_test, answers = data["f_train"], data["f_test"], data["answers"]
    model = PrefixLM(lm, tok, f_train.shape[1], n_prefix=ctx.config.n_prefix, lora=ctx.config.lora)
    bar.reset(total=budget.steps)
    hist = train_prefix_lm(
        model,
        f_train,
        [ctx.task.question] * len(answers),
        answers,
        steps=budget.steps,
        batch_size=budget.batch_size,
        lr=budget.lr,
        max_seconds=budget.max_seconds,
        seed=ctx.config.seed,
        progress=lambda s, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
    )
    out = {"expected": [], "probs": [], "parse_failures": 0}
    for s in range(0, len(f_test), 8):
        p = model.predict_task(f_test[s : s + 8], ctx.task)
        out["probs"].append(p["probs"])
        out["parse_failures"] += p["parse_failures"]
        if "expected" in p:
            out["expected"].append(p["expected"])
    out["probs"] = np.concatenate(out["probs"])
    if out["expected"]:
        out["expected"] = np.concatenate(out["expected"])
    scans, pred = _scan_predictions(ctx, data["test_rows"], out)
    return {
        **_evaluate(ctx, scans, pred),
        "parse_failures": out["parse_failures"],
        "trainable_params": trainable_parameters(model),
        "train_seconds": hist["seconds"],
        "feature_seconds": data["feature_seconds"],
        "train_steps": hist["steps"],
        "stopped_by_budget": hist["stopped_by_budget"],
        "final_loss": float(np.mean(hist["losses"][-10:])),
        "n_train_windows": len(f_train),
        "n_test_windows": len(f_test),
    }


def _arm_probe(spec: ArmSpec, ctx: _Context, bar) -> dict[str, Any]:
    """Linear probe: ridge / logistic regression on an encoder's frozen pooled window features.

    The same windows and features as the encoder's prefix arm (its budget's window caps), so
    the gap between the two says what the language model loses or adds on top of the encoder.
    """
    from fmrilm.baselines.clinical import LinearHead

    encoder = spec.model or ""
    if encoder not in _ENCODER_KINDS:
        raise ValueError(f"linear_probe needs an encoder in {_ENCODER_KINDS}, got {encoder!r}")
    budget = ctx.config.budget_for(encoder)
    data = _featurized_windows(ctx, _featurizer(encoder, spec.rendering, ctx, bar), budget)
    f_train = np.asarray(data["f_train"], dtype=np.float64)
    f_test = np.asarray(data["f_test"], dtype=np.float64)
    train_rows = data["train_rows"]
    if ctx.kind == "regression":
        y = ctx.values[train_rows].astype(float)
    else:
        y = np.asarray([a.strip() for a in data["answers"]])
    groups = ctx.table["subject_id"].astype(str).to_numpy()[train_rows]
    t0 = time.perf_counter()
    head = LinearHead(
        model="ridge" if ctx.kind == "regression" else "logistic", random_state=ctx.config.seed
    ).fit(f_train, y, groups=groups)
    train_seconds = time.perf_counter() - t0
    if ctx.kind == "regression":
        out = {"expected": head.predict(f_test)}
    else:
        proba = head.predict_proba(f_test)
        classes = [str(c) for c in head.classes_]
        out = {
            "probs": np.stack(
                [
                    proba[:, classes.index(a)] if a in classes else np.zeros(len(f_test))
                    for a in ctx.task.answers
                ],
                axis=1,
            )
        }
    scans, pred = _scan_predictions(ctx, data["test_rows"], out)
    bar.update(1)
    penalty = {"alpha": head.alpha_} if ctx.kind == "regression" else {"C": head.C_}
    return {
        **_evaluate(ctx, scans, pred),
        "parse_failures": 0,
        "trainable_params": int(f_train.shape[1] + 1),
        "train_seconds": train_seconds,
        "feature_seconds": data["feature_seconds"],
        "penalty": penalty,
        "penalty_at_grid_edge": bool(head.at_grid_edge_),
        "n_train_windows": len(f_train),
        "n_test_windows": len(f_test),
    }


def _arm_vlm(spec: ArmSpec, ctx: _Context, bar) -> dict[str, Any]:
    from fmrilm.study.prefix import trainable_parameters
    from fmrilm.study.vlm import load_vlm, train_vlm, vlm_available, vlm_predict_task

    ok, where = vlm_available(spec.model)
    if not ok:
        raise ArmNotRunnable(where)
    budget = ctx.config.budget_for("vlm")
    renderer = _renderer(ctx, spec.rendering)
    model, processor = load_vlm(where, lora=ctx.config.lora)
    train_w, train_rows = _windows(ctx, "train", budget.max_train_windows)
    keep, answers = _training_targets(ctx, train_rows)
    images = [renderer.transform(w) for w, k in zip(train_w, keep, strict=True) if k]
    test_w, test_rows = _windows(ctx, "test", budget.max_eval_windows)
    bar.reset(total=budget.steps)
    hist = train_vlm(
        model,
        processor,
        images,
        [ctx.task.question] * len(images),
        answers,
        steps=budget.steps,
        batch_size=budget.batch_size,
        lr=budget.lr,
        max_seconds=budget.max_seconds,
        seed=ctx.config.seed,
        progress=lambda s, loss: bar.update(1),
    )
    p = vlm_predict_task(model, processor, [renderer.transform(w) for w in test_w], ctx.task)
    scans, pred = _scan_predictions(ctx, test_rows, p)
    return {
        **_evaluate(ctx, scans, pred),
        "parse_failures": p["parse_failures"],
        "trainable_params": trainable_parameters(model),
        "train_seconds": hist["seconds"],
        "train_steps": hist["steps"],
        "stopped_by_budget": hist["stopped_by_budget"],
    }


def _arm_shared_vocab(spec: ArmSpec, ctx: _Context, bar) -> dict[str, Any]:
    folder = ctx.config.shared_vocab_model
    if not folder:
        raise ArmNotRunnable(
            "no trained shared-vocabulary LM given (config key shared_vocab_model)"
        )
    if not Path(folder).is_dir():
        raise ArmNotRunnable(f"shared-vocabulary LM folder {folder} does not exist")
    try:
        from fmrilm.lm import FMRILanguageModel
        from fmrilm.lm.evaluation import predict_store
    except Exception as err:  # noqa: BLE001 - absent or broken LM stage
        raise ArmNotRunnable(f"the LM stage (fmrilm.lm) is not available: {err}") from None
    model = FMRILanguageModel.from_pretrained(folder)
    _check_fitted_scheme(model.fmri_tokenizer, ctx.config.scheme, f"shared-vocabulary LM {folder}")
    task = model.task(ctx.config.task)
    ctx = dataclasses.replace(ctx, task=task)
    res = predict_store(model, ctx.store, scheme=ctx.config.scheme, split="test", tasks=[task.name])
    answers = [a for a in res["answers"][task.name] if not a.get("parse_failure")]
    failures = len(res["answers"][task.name]) - len(answers)
    rows = np.asarray([a["group"] for a in answers], dtype=np.int64)
    if ctx.kind == "regression":
        pred = np.asarray([a["value"] for a in answers], dtype=float)
    else:
        pred = np.asarray([[a["probabilities"][lab] for lab in task.answers] for a in answers])
    bar.update(1)
    n_params = model.n_parameters()
    return {
        **_evaluate(ctx, rows, pred),
        "parse_failures": failures,
        "trainable_params": n_params.get("trainable") if isinstance(n_params, dict) else n_params,
        "train_seconds": None,
        "note": f"trained by `fmrilm lm train`, loaded from {folder}",
    }


_RUNNERS: dict[str, Callable] = {
    "baseline_median": _arm_baseline,
    "baseline_site": _arm_baseline,
    "baseline_fc": _arm_baseline,
    "efficientnet_imagenet": _arm_prefix,
    "efficientnet_random": _arm_prefix,
    "fmri_encoder": _arm_prefix,
    "fmri_codes": _arm_prefix,
    "linear_probe": _arm_probe,
    "vlm": _arm_vlm,
    "shared_vocab": _arm_shared_vocab,
}


# ============================================================================ the run


def _arm_fingerprint(config: StudyConfig, spec: ArmSpec) -> str:
    """Hash of the settings an arm's result depends on (a change reruns the arm)."""
    keys = (
        "store",
        "scheme",
        "task",
        "lm",
        "fmri_tokenizer",
        "shared_vocab_model",
        "window_length",
        "stride",
        "image_size",
        "colormap",
        "n_prefix",
        "fmri_pooling",
        "n_bootstrap",
        "seed",
    )
    d = {k: getattr(config, k) for k in keys}
    d["lora"] = config.lora.to_dict()
    budget_kind = spec.model if spec.kind == "linear_probe" else spec.kind
    d["budget"] = dataclasses.asdict(config.budget_for(budget_kind or spec.kind))
    d["arm"] = dataclasses.asdict(spec)
    if spec.kind.startswith("baseline") or spec.kind == "shared_vocab":
        # these arms once scored every test scan, short ones included: such results are stale
        d["eval_scans"] = "at least window_length"
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("predictions", "format", "fingerprint")}


def run_study(
    config: StudyConfig,
    *,
    resume: bool = True,
    progress: bool = True,
    lm_factory: Callable[[], tuple[Any, Any]] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run every arm of ``config`` (skipping finished ones) and write the results and report.

    Parameters
    ----------
    config : StudyConfig
    resume : bool, default=True
        Skip arms whose result file exists with status ``"ok"`` and the same settings.
    progress : bool, default=True
        tqdm bars: one over the arms, one per arm.
    lm_factory : callable, optional
        Returns a fresh ``(causal_lm, tokenizer)`` for every prefix arm (default: load
        ``config.lm`` through :func:`fmrilm.lm.load_causal_lm`).
    report : bool, default=True
        Write the figures and the HTML report beside ``config.out``.

    Returns
    -------
    dict
        The content of ``study.json``.
    """
    from tqdm.auto import tqdm

    from fmrilm.baselines.clinical import infer_task, target_values
    from fmrilm.data import open_store

    if not config.store:
        raise ValueError("the study config names no store")
    if not Path(config.store).exists():
        raise FileNotFoundError(f"store {config.store!r} does not exist")
    store = open_store(config.store)
    table = store.table.reset_index(drop=True)
    splits = store.split_indices(config.scheme)
    train_rows = np.asarray(splits["train"], dtype=np.int64)
    all_test_rows = np.asarray(splits["test"], dtype=np.int64)
    long_enough = table["n_timepoints"].to_numpy()[all_test_rows] >= config.window_length
    test_rows = all_test_rows[long_enough]
    if not len(test_rows):
        raise ValueError(
            f"no {config.scheme} test scan has window_length={config.window_length} time points"
        )
    values = target_values(table, config.task).to_numpy(dtype=object)
    present = [v for v in values[train_rows] if not _missing(v)]
    if not present:
        raise ValueError(f"target {config.task!r} has no value in the training split")
    kind = infer_task(np.asarray(present, dtype=object))
    task, task_source = _task_spec(table, train_rows, config.task)
    ctx = _Context(
        config,
        store,
        table,
        train_rows,
        test_rows,
        values,
        kind,
        task,
        lm_factory or _default_lm_factory(config.lm),
        progress,
    )
    work = config.work_path
    arms_dir = work / "arms"
    specs = expand_arms(config)
    results: dict[str, dict[str, Any]] = {}
    outer = tqdm(specs, desc="study", unit="arm", disable=not progress)
    for spec in outer:
        outer.set_postfix_str(spec.name)
        path = arms_dir / f"{spec.slug}.json"
        fp = _arm_fingerprint(config, spec)
        if resume and path.exists():
            old = json.loads(path.read_text())
            if old.get("status") == "ok" and old.get("fingerprint") == fp:
                results[spec.name] = old
                continue
        bar = tqdm(total=1, desc=spec.name, leave=False, disable=not progress)
        t0 = time.perf_counter()
        try:
            with _PeakRSS() as rss:
                res = _RUNNERS[spec.kind](spec, ctx, bar)
            res = {"status": "ok", **res, "peak_rss_mb": rss.peak}
        except ArmNotRunnable as err:
            res = {"status": "not run", "reason": str(err)}
        except Exception as err:  # noqa: BLE001 - one failing arm must not lose the others
            res = {
                "status": "failed",
                "reason": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=8),
            }
        finally:
            bar.close()
        res.update(
            {
                "format": _ARM_FORMAT,
                "arm": dataclasses.asdict(spec),
                "fingerprint": fp,
                "wall_seconds": time.perf_counter() - t0,
            }
        )
        _write_json(path, res)
        results[spec.name] = res
    study = {
        "task": config.task,
        "task_kind": kind,
        "task_source": task_source,
        "split": {
            "scheme": config.scheme,
            "train_split": "train",
            "eval_split": "test",
            "n_train_scans": int(len(train_rows)),
            "n_test_scans": int(len(test_rows)),
            "n_test_scans_too_short": int((~long_enough).sum()),
            "eval_rule": f"test scans with at least window_length={config.window_length} time "
            "points; every arm, baselines included, is scored on these",
            "n_train_subjects": int(table["subject_id"].iloc[train_rows].nunique()),
            "n_test_subjects": int(table["subject_id"].iloc[test_rows].nunique()),
        },
        "store": str(config.store),
        "budget": dataclasses.asdict(config.budget),
        "budgets": config.budgets,
        "lm": config.lm,
        "arms": {name: _summary(r) for name, r in results.items()},
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": config.to_dict(),
    }
    study["comparisons"] = _paired_comparisons(results, config, kind, list(task.answers))
    if report:
        study["report"] = _write_report(study, results, config, kind)
    _write_json(Path(config.out), study)
    return _jsonable(study)


#: Arms every other arm is compared with, paired on the same subjects (the baselines, and the
#: fMRI encoder that the study's question puts against the image encoders).
REFERENCE_ARMS = ("baseline_fc", "baseline_site", "baseline_median", "fmri_encoder")


def _paired_comparisons(
    results: dict[str, dict[str, Any]], config: StudyConfig, kind: str, labels: list
) -> dict[str, Any]:
    """Paired bootstrap difference of every arm against each reference arm that ran.

    MAE (regression) or ROC AUC (classification), arm minus reference, both scored on the same
    bootstrap resamples of the subjects they share, so the interval says whether a gap is real.
    """
    from fmrilm.evaluation.metrics import paired_bootstrap_difference

    metric = "mae" if kind == "regression" else "roc_auc"
    ok = {n: r for n, r in results.items() if r.get("status") == "ok" and r.get("predictions")}
    out: dict[str, Any] = {"metric": metric, "difference": "arm - reference", "arms": {}}
    for ref in (r for r in REFERENCE_ARMS if r in ok):
        ref_pred = ok[ref]["predictions"]
        by_subject = dict(zip(ref_pred["subject_id"], ref_pred["y_pred"], strict=True))
        for name, res in ok.items():
            if name == ref:
                continue
            pred = res["predictions"]
            idx = [i for i, s in enumerate(pred["subject_id"]) if s in by_subject]
            if len(idx) < 2:
                continue
            d = paired_bootstrap_difference(
                [pred["y_true"][i] for i in idx],
                [pred["y_pred"][i] for i in idx],
                [by_subject[pred["subject_id"][i]] for i in idx],
                metric,
                labels=None if kind == "regression" else labels,
                n_bootstrap=config.n_bootstrap,
                seed=config.seed,
            )
            keys = ("n", "value_a", "value_b", "difference", "ci_low", "ci_high", "better")
            out["arms"].setdefault(name, {})[ref] = {k: d[k] for k in keys}
    return out


def _write_report(study: dict, results: dict, config: StudyConfig, kind: str) -> dict[str, str]:
    from fmrilm.study.report import (
        plot_predicted_vs_true,
        plot_prediction_distributions,
        write_html_report,
    )

    work = config.work_path
    figures: dict[str, Path] = {}
    if kind == "regression":
        arms = {
            n: r["predictions"]
            for n, r in results.items()
            if r.get("status") == "ok" and r.get("predictions")
        }
        if arms:
            unit = "years" if config.task == "age" else ""
            figures[f"Predicted against true {config.task}, per arm"] = plot_predicted_vs_true(
                arms, work / f"{config.task}_predicted_vs_true.png", target=config.task, unit=unit
            )
            figures[f"Distribution of predicted {config.task}, per arm"] = (
                plot_prediction_distributions(
                    arms, work / f"{config.task}_distributions.png", target=config.task, unit=unit
                )
            )
    html_path = write_html_report(study, figures, work / "report.html")
    return {"html": str(html_path), **{k: str(v) for k, v in figures.items()}}
