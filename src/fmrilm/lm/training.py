"""Fine-tuning the fMRI language model with Lightning.

Pipeline of :func:`train`:

1. open the store; windows of the training split of ``scheme`` (:class:`fmrilm.data.WindowDataset`,
   scaled with that scheme's training statistics) are encoded once by the fMRI tokenizer and
   cached (``codes_<scheme>_train.npz`` in the run folder);
2. tasks (answer sets, numeric grids, class shares) are fitted on the training split;
3. every step draws ``batch_size`` windows; each gets ``questions_per_example`` of its labelled
   tasks in random order. The batch of step ``s`` depends only on ``(seed, s)``, so a run resumed
   from a checkpoint (``resume=True``, e.g. after SIGKILL) continues the same sequence;
4. checkpoints hold only the trainable weights (LoRA + new rows, or everything for full
   fine-tuning) with the optimizer state; the final model is written with
   :meth:`fmrilm.lm.FMRILanguageModel.save_pretrained` to ``<out_dir>/model``;
5. with ``train.val_every_n_steps``, the answer-token loss on every validation window (fixed
   questions) is measured every that many steps; ``train.keep: best_val_loss`` then writes the
   weights of the step with the lowest validation loss instead of the last step's. Only the
   validation split is read: the test split stays untouched for model selection.

bf16 autocast is used on CUDA only (``precision: auto``); on CPU training runs in float32.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset, Sampler

from fmrilm import memory
from fmrilm.lm.config import LMConfig
from fmrilm.lm.model import FMRILanguageModel
from fmrilm.lm.summary import PAD_CODE, tokenizer_chunks
from fmrilm.lm.tasks import TaskSpec, build_tasks
from fmrilm.tokenizer.training import find_resume_checkpoint

__all__ = [
    "DEFAULT_CONFIG",
    "LMTrainingModule",
    "QADataset",
    "encode_windows",
    "encode_window_list",
    "export_checkpoint",
    "load_checkpoint_weights",
    "PAD_CODE",
    "find_resume_checkpoint",
    "merge_config",
    "scan_labels",
    "train",
    "validation_loss",
]

DEFAULT_CONFIG: dict[str, Any] = {
    "base_model": "smollm2",
    "gguf_file": None,
    "fmri_tokenizer": None,
    "store": None,
    "scheme": "site_stratified",
    "targets": ["age", "sex", "diagnosis"],
    "task_kinds": {},
    "questions": {},
    "out_dir": "runs/lm",
    "seed": 0,
    "model": {
        "layout": "compact",
        "layout_rois": None,
        "compact_rois": 16,
        "patch_stride": 1,
        "summary_tokens": 4,
        "summary_roi_dim": 32,
        "summary_roi_dropout": 0.0,
        "summary_connectivity_dim": 0,
        "summary_connectivity_components": 0,
        "init": "codebook",
        "finetune": "lora",
        "lora_r": 8,
        "lora_alpha": 16.0,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "v_proj"],
        "questions_per_example": 1,
        "grid_size": 41,
    },
    "data": {
        "window_length": None,
        "stride": 80,
        "train_stride": None,
        "train_window_length": None,
        "min_window_length": None,
        "encode_batch_size": 64,
    },
    "train": {
        "max_steps": 200,
        "batch_size": 8,
        "lr": 2e-3,
        "weight_decay": 0.0,
        "warmup_steps": 10,
        "grad_clip": 1.0,
        "checkpoint_every_n_steps": 25,
        # step checkpoints kept on disk (the newest ones); -1 keeps every one, for choosing a
        # step afterwards on a validation metric (fmrilm lm export-checkpoint)
        "checkpoints_kept": 2,
        "log_every_n_steps": 5,
        "accelerator": "auto",
        "devices": 1,
        "strategy": "auto",
        "precision": "auto",
        "progress_bar": False,
        "num_threads": None,
        "val_every_n_steps": None,
        "keep": "last",
        # glibc malloc keeps freed memory for reuse (fmrilm.memory): steps ~13% faster in one
        # profiling comparison; off by default, the recorded LM runs did not use it
        "keep_freed_memory": False,
    },
}

KEEP_CHOICES = ("last", "best_val_loss")


def merge_config(base: dict, override: dict) -> dict:
    """Recursive dict merge (``override`` wins); unknown top-level keys raise ``ValueError``."""
    out = json.loads(json.dumps(base))
    for k, v in (override or {}).items():
        if k not in out:
            raise ValueError(f"unknown LM config key {k!r}; known: {sorted(out)}")
        if isinstance(out[k], dict) and isinstance(v, dict):
            unknown = set(v) - set(out[k])
            if unknown and k in ("model", "data", "train"):
                raise ValueError(f"unknown keys in {k!r}: {sorted(unknown)}")
            out[k].update(v)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------ data


@torch.no_grad()
def encode_window_list(
    fmri_tokenizer, windows: list, n_patches: int, batch_size: int = 64
) -> np.ndarray:
    """Codes ``(N, R, n_patches)`` of scaled windows ``(L_i, R)`` of whole-patch lengths.

    Windows of one length are encoded together; the codes of a window with fewer than
    ``n_patches`` patches fill the first positions and :data:`PAD_CODE` the rest. A window
    longer than the tokenizer's own is encoded as consecutive tokenizer windows
    (:func:`fmrilm.lm.summary.tokenizer_chunks`), their codes side by side.
    """
    try:
        device = next(fmri_tokenizer.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    patch = int(getattr(getattr(fmri_tokenizer, "config", None), "patch_length", 1) or 1)
    n_rois = int(windows[0].shape[1]) if windows else 0
    out = np.full((len(windows), n_rois, n_patches), PAD_CODE, dtype=np.int32)
    # every (window, first patch, time points) piece the tokenizer reads, grouped by length
    pieces = []
    for i, w in enumerate(windows):
        for a, b in tokenizer_chunks(fmri_tokenizer, max(1, len(w) // patch)):
            pieces.append((i, a, a * patch, min(b * patch, len(w))))
    lengths = np.asarray([stop - start for _, _, start, stop in pieces], dtype=np.int64)
    for length in np.unique(lengths):
        group = np.flatnonzero(lengths == length)
        for s in range(0, len(group), batch_size):
            rows = [pieces[int(g)] for g in group[s : s + batch_size]]
            w = torch.stack(
                [torch.as_tensor(windows[i][start:stop]) for i, _, start, stop in rows]
            ).to(device)
            codes = fmri_tokenizer.encode(w).cpu().numpy().astype(np.int32)
            for (i, first, _, _), c in zip(rows, codes, strict=True):
                if first + c.shape[1] > n_patches:
                    raise ValueError(
                        f"a window of {len(windows[i])} points has {first + c.shape[1]} patches, "
                        f"more than {n_patches}"
                    )
                out[i, :, first : first + c.shape[1]] = c
    return out


def encode_windows(
    store,
    fmri_tokenizer,
    *,
    split: str | None,
    scheme: str,
    window_length: int,
    stride: int,
    batch_size: int = 64,
    rows: np.ndarray | None = None,
    min_window_length: int | None = None,
    n_patches: int | None = None,
) -> dict[str, np.ndarray]:
    """Codes of every window of a split (or of given store ``rows``).

    A scan shorter than ``window_length`` with at least ``min_window_length`` points gives one
    window of its whole patches (:func:`fmrilm.data.windows.window_spans`), whose missing patches
    hold :data:`PAD_CODE`; with ``min_window_length=None`` such scans have no window.
    ``n_patches`` (default: the window's) pads every window's codes to that many patches, so
    that shorter training windows fit the model's answered windows.

    Returns
    -------
    dict
        ``codes`` (N, R, P) int32, ``scan_index`` (N,), ``start`` (N,), ``length`` (N,),
        ``n_scans_without_window`` (scans too short for any window), ``n_short_windows``.
    """
    from fmrilm.data import WindowDataset

    patch = int(getattr(getattr(fmri_tokenizer, "config", None), "patch_length", 1) or 1)
    ds = WindowDataset(
        store,
        split=split,
        scheme=scheme,
        window_length=window_length,
        stride=stride,
        min_length=min_window_length,
        length_multiple=patch,
    )
    index = ds.index
    if rows is not None:
        positions = np.flatnonzero(np.isin(index[:, 0], np.asarray(rows)))
    else:
        positions = np.arange(len(index))
    windows = [ds[int(i)]["window"] for i in positions]
    if windows:
        width = n_patches or window_length // patch
        all_codes = encode_window_list(fmri_tokenizer, windows, width, batch_size)
    else:
        all_codes = np.zeros((0, 0, 0), dtype=np.int32)
    return {
        "codes": all_codes,
        "scan_index": index[positions, 0].astype(np.int64),
        "start": index[positions, 1].astype(np.int64),
        "length": index[positions, 2].astype(np.int64),
        "n_scans_without_window": np.asarray(ds.n_scans_without_window),
        "n_short_windows": np.asarray(int((index[positions, 2] < window_length).sum())),
    }


def scan_labels(table, tasks: list[TaskSpec]) -> np.ndarray:
    """Answer index per scan and task, ``(n_scans, n_tasks)``; -1 where the target is missing."""
    from fmrilm.baselines.clinical import target_values

    out = np.full((len(table), len(tasks)), -1, dtype=np.int64)
    for j, t in enumerate(tasks):
        values = target_values(table, t.name).to_numpy(dtype=object)
        out[:, j] = [t.answer_index(v) for v in values]
    return out


def answer_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is taken on: labels other than -100, after the one-token shift."""
    return int((batch["labels"][:, 1:] != -100).sum())


@torch.no_grad()
def validation_loss(
    model: FMRILanguageModel,
    codes: np.ndarray,
    window_scan: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 8,
    seed: int = 0,
) -> float:
    """Mean answer-token loss on every window once, with the questions training validates on.

    The value ``train.val_every_n_steps`` logs as ``val_loss``: the examples are those of a
    :class:`QADataset` of the windows (``model.config.questions_per_example`` questions each,
    chosen by ``seed``), in batches of ``batch_size``, weighted by answer tokens.
    """
    ds = QADataset(
        model,
        codes,
        window_scan,
        labels,
        batch_size=batch_size,
        seed=seed,
        questions_per_example=model.config.questions_per_example,
    )
    was = model.training
    model.eval()
    total = count = 0.0
    try:
        for s in range(0, ds.n, batch_size):
            batch = model.collate([ds[g] for g in range(s, min(ds.n, s + batch_size))])
            n = float(answer_tokens(batch))
            total += float(model(**batch).loss) * n
            count += n
    finally:
        model.train(was)
    return total / max(1.0, count)


class StepSampler(Sampler):
    """Global example numbers of steps ``start_step .. total_steps`` for one rank.

    Step ``s`` of rank ``r`` among ``world`` ranks takes examples
    ``(s * world + r) * batch_size + j``: the ranks see different examples, and the examples of
    a step do not depend on where a run was interrupted.
    """

    def __init__(self, batch_size: int, total_steps: int, rank: int = 0, world: int = 1):
        self.batch_size, self.total_steps, self.start_step = batch_size, total_steps, 0
        self.rank, self.world = rank, world

    def __iter__(self):
        b = self.batch_size
        for s in range(self.start_step, self.total_steps):
            first = (s * self.world + self.rank) * b
            yield from range(first, first + b)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.batch_size


class QADataset(Dataset):
    """Training examples: example ``g`` depends only on ``(seed, g)``.

    Windows are visited in a fresh permutation per epoch; each gets up to
    ``questions_per_example`` of its labelled tasks in random order.
    """

    def __init__(
        self,
        model: FMRILanguageModel,
        codes: np.ndarray,
        window_scan: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int = 0,
        questions_per_example: int = 1,
    ):
        has = (labels[window_scan] >= 0).any(axis=1)
        if not has.any():
            raise ValueError("no training window has a label for any task")
        self.model = model
        self.codes = torch.from_numpy(np.asarray(codes[has], dtype=np.int64))
        self.window_labels = labels[window_scan[has]]
        self.batch_size, self.seed, self.q = batch_size, seed, questions_per_example
        self.n = len(self.codes)
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:  # examples are addressed by number, without end
        return 2**62

    def window_of(self, g: int) -> int:
        epoch, k = divmod(int(g), self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._perm[1][k])

    def __getitem__(self, g: int):
        w = self.window_of(g)
        rng = np.random.default_rng([self.seed, 1, int(g)])
        avail = np.flatnonzero(self.window_labels[w] >= 0)
        chosen = rng.permutation(avail)[: self.q]
        tasks = self.model.tasks
        qa = [(tasks[j], int(self.window_labels[w, j])) for j in chosen]
        ids, labels = self.model.example(self.codes[w], qa)
        return ids, labels, self.codes[w]


# ---------------------------------------------------------------------------- module


class LMTrainingModule(L.LightningModule):
    """Lightning wrapper: AdamW on the trainable weights, linear warmup then cosine decay.

    Checkpoints hold only the trainable weights (``strict_loading = False``), so a LoRA
    checkpoint of SmolLM2-135M is a few MB instead of 0.5 GB.
    """

    def __init__(self, model: FMRILanguageModel, train_cfg: dict):
        super().__init__()
        self.model = model
        self.tcfg = train_cfg
        self.strict_loading = False
        self.tokens_seen = 0

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=float(self.tcfg["lr"]), weight_decay=float(self.tcfg["weight_decay"])
        )
        warm, total = int(self.tcfg["warmup_steps"]), max(1, int(self.tcfg["max_steps"]))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / max(1, warm)
            progress = (step - warm) / max(1, total - warm)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        out = self.model(**batch)
        loss = out.loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.global_step}")
        n_tok = int(batch["attention_mask"].sum())
        self.tokens_seen += n_tok
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, batch_size=1)
        self.log("tokens", float(n_tok), on_step=True, batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        out = self.model(**batch)
        # weighted by answer tokens, so the epoch value is the mean loss per answer token
        n_answer = answer_tokens(batch)
        self.log("val_loss", out.loss, on_epoch=True, batch_size=max(1, n_answer), sync_dist=True)
        return out.loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        if not keep:
            raise RuntimeError("no trainable parameter to checkpoint")
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["fmrilm_tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        expected = {n for n, p in self.named_parameters() if p.requires_grad}
        if set(checkpoint["state_dict"]) != expected:
            raise ValueError(
                "the checkpoint's trainable weights do not match this model "
                f"({len(checkpoint['state_dict'])} saved, {len(expected)} expected)"
            )
        self.tokens_seen = int(checkpoint.get("fmrilm_tokens_seen", 0))


class _Throughput(Callback):
    """Wall time and tokens of the steps run in this process."""

    def __init__(self):
        self.t0, self.steps, self.tokens0 = None, 0, 0

    def on_train_start(self, trainer, pl_module):
        self.t0, self.tokens0 = time.time(), pl_module.tokens_seen

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1


class ValidationCurve(Callback):
    """``(global_step, val_loss)`` after each validation; kept in checkpoints across resumes."""

    def __init__(self):
        self.points: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get("val_loss")
        if value is not None and not trainer.sanity_checking:
            self.points.append((int(trainer.global_step), float(value)))

    def state_dict(self) -> dict:
        return {"points": [list(p) for p in self.points]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.points = [(int(s), float(v)) for s, v in state_dict.get("points", [])]


def load_checkpoint_weights(module: LMTrainingModule, path: str | Path) -> int:
    """Load a step checkpoint's trainable weights into ``module``; return its global step.

    Raises ``ValueError`` (naming the file) unless the checkpoint holds exactly the module's
    trainable weights: a checkpoint of another configuration must not half-load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in state or "global_step" not in state:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict / global_step)")
    trainable = {n: tuple(p.shape) for n, p in module.named_parameters() if p.requires_grad}
    saved = {n: tuple(v.shape) for n, v in state["state_dict"].items()}
    if saved != trainable:
        differ = sum(saved.get(n) != trainable.get(n) for n in set(saved) | set(trainable))
        raise ValueError(
            f"{path} does not hold this model's trainable weights ({len(saved)} saved, "
            f"{len(trainable)} expected, {differ} differ in name or shape)"
        )
    module.load_state_dict(state["state_dict"], strict=False)
    return int(state["global_step"])


def export_checkpoint(
    model_dir: str | Path, checkpoint: str | Path, out: str | Path
) -> FMRILanguageModel:
    """Write the model of a training step checkpoint as a model folder.

    A run keeps its step checkpoints in ``<out_dir>/checkpoints`` (all of them with
    ``train.checkpoints_kept: -1``); its final model is ``<out_dir>/model``. This loads that
    model, replaces its trainable weights (LoRA, new token rows, summary projector) by the
    checkpoint's, and saves the result to ``out``, so that an earlier step can be evaluated or
    answered from like any model, e.g. to choose the step on a validation metric.

    Parameters
    ----------
    model_dir : str or Path
        The run's final model folder (it gives the configuration, tasks and frozen weights).
    checkpoint : str or Path
        A ``.ckpt`` file of the same run.
    out : str or Path
        Folder to write; must not be ``model_dir``.

    Returns
    -------
    FMRILanguageModel
        The exported model. Its ``train_summary`` is the run's, with ``global_step`` the
        checkpoint's, ``run_global_step`` the run's last step and ``checkpoint`` the file;
        ``train_seconds`` stays the whole run's (choosing a step needs the whole run).
    """
    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ValueError(f"export to another folder than the run's model ({model_dir})")
    model = FMRILanguageModel.from_pretrained(model_dir)
    module = LMTrainingModule(model, {})
    step = load_checkpoint_weights(module, checkpoint)
    summary = dict(model.config.extra.get("train_summary") or {})
    summary.update(
        run_global_step=summary.get("global_step"),
        global_step=step,
        checkpoint=str(checkpoint),
        run_dir=str(Path(checkpoint).resolve().parent.parent),  # <run>/checkpoints/<file>
    )
    model.config.extra["train_summary"] = summary
    model.save_pretrained(out)
    return model


def _config_repr(cfg: Any) -> str:
    if hasattr(cfg, "to_dict"):
        return json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return (
        json.dumps(vars(cfg), sort_keys=True, default=str) if hasattr(cfg, "__dict__") else str(cfg)
    )


def _precision(tcfg: dict) -> str:
    if tcfg.get("precision", "auto") != "auto":
        return tcfg["precision"]
    acc = tcfg.get("accelerator", "auto")
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return "bf16-mixed"
    return "32-true"


def load_fmri_tokenizer(path: str | Path):
    """``FMRITokenizer.from_pretrained(path)``."""
    from fmrilm.tokenizer import FMRITokenizer

    return FMRITokenizer.from_pretrained(path)


def check_tokenizer_scheme(
    model, scheme: str, what: str = "the fMRI tokenizer", error: type[Exception] = ValueError
) -> None:
    """Refuse a model whose scaler (and weights) were fitted on another split scheme.

    Its training split may hold this scheme's test subjects, so every figure measured with it
    would be optimistic. A cross-validation fold of a scheme (``"<scheme>-cv<K>-fold<i>"``)
    takes the tokenizer of its parent: the fold keeps the parent's test split. ``model`` is an
    fMRI tokenizer (``scaler_stats["scheme"]``); ``what`` names it in the message and ``error``
    is the exception raised.
    """
    from fmrilm.data import parse_cv_scheme

    stats = getattr(model, "scaler_stats", None) or {}
    fitted_on = stats.get("scheme")
    cv = parse_cv_scheme(scheme)
    if fitted_on is not None and fitted_on != scheme and (cv is None or cv[0] != fitted_on):
        raise error(
            f"{what} was trained on split scheme {fitted_on!r}, here the scheme is {scheme!r}: "
            f"its training split may hold this scheme's test subjects; use one trained on "
            f"{scheme!r}"
        )


def train(
    config: dict,
    *,
    resume: bool = False,
    fmri_tokenizer=None,
    base_lm=None,
    base_tokenizer=None,
    extra_callbacks: list[Callback] | None = None,
    trainer_overrides: dict | None = None,
) -> dict[str, Any]:
    """Fine-tune an LM on a store's training split; write ``<out_dir>/model``.

    Parameters
    ----------
    config : dict
        Merged over :data:`DEFAULT_CONFIG` (see ``configs/lm.yaml``).
    resume : bool
        Continue from the newest loadable checkpoint of ``<out_dir>/checkpoints``.
    fmri_tokenizer : object, optional
        Tokenizer protocol object (default: ``FMRITokenizer.from_pretrained(config
        ["fmri_tokenizer"])``).
    base_lm, base_tokenizer : optional
        Already loaded base LM and tokenizer (default: ``config["base_model"]``).
    extra_callbacks, trainer_overrides : optional
        Passed to ``lightning.Trainer``.

    Returns
    -------
    dict
        ``out_dir``, ``model_dir``, ``global_step``, ``train_seconds``, ``resumed_from``,
        ``tokens_per_second``, ``windows_per_second``, ``n_train_windows``, ``budget``.
    """
    from fmrilm.data import open_store

    cfg = merge_config(DEFAULT_CONFIG, config)
    if cfg["train"]["num_threads"]:
        torch.set_num_threads(int(cfg["train"]["num_threads"]))
    if cfg["train"]["keep_freed_memory"]:
        memory.keep_freed_memory_for_reuse()
    seed = int(cfg["seed"])
    L.seed_everything(seed, workers=True)
    mcfg, dcfg, tcfg = cfg["model"], cfg["data"], cfg["train"]
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    if cfg["store"] is None:
        raise ValueError("config 'store' is required")
    store = open_store(cfg["store"])
    scheme = cfg["scheme"]
    if fmri_tokenizer is None:
        if not cfg["fmri_tokenizer"]:
            raise ValueError("config 'fmri_tokenizer' (a tokenizer folder) is required")
        fmri_tokenizer = load_fmri_tokenizer(cfg["fmri_tokenizer"])
    check_tokenizer_scheme(fmri_tokenizer, scheme)
    tok_cfg = fmri_tokenizer.config
    window_length = int(dcfg["window_length"] or getattr(tok_cfg, "window_length", 160))
    stride = int(dcfg["stride"])
    # training windows may overlap more than the evaluated ones: more distinct windows per scan
    train_stride = stride if dcfg.get("train_stride") is None else int(dcfg["train_stride"])
    if train_stride < 1:
        raise ValueError(f"data.train_stride must be >= 1, got {train_stride}")
    min_window_length = dcfg.get("min_window_length")
    min_window_length = None if min_window_length is None else int(min_window_length)
    # refused before the windows are encoded: only the summary layout reads short windows
    LMConfig(
        window_length=window_length, min_window_length=min_window_length, layout=mcfg["layout"]
    ).validate()
    # training windows may be shorter than the answered ones: the summary pools over patches and
    # correlates over time, so a model trained on tokenizer windows can answer from whole scans
    train_window_length = int(dcfg.get("train_window_length") or window_length)
    patch = int(getattr(tok_cfg, "patch_length", 1) or 1)
    if train_window_length != window_length:
        if mcfg["layout"] != "summary":
            raise ValueError(
                "data.train_window_length other than data.window_length needs the summary layout "
                f"(the {mcfg['layout']!r} layout reads every patch position)"
            )
        if not patch <= train_window_length <= window_length or train_window_length % patch:
            raise ValueError(
                f"data.train_window_length must be a multiple of the {patch}-point patch between "
                f"{patch} and data.window_length={window_length}, got {train_window_length}"
            )

    # 1. codes of the training (and validation) windows, cached
    def split_codes(split: str) -> dict[str, np.ndarray]:
        split_stride = train_stride if split == "train" else stride
        split_window = train_window_length if split == "train" else window_length
        stamp = json.dumps(
            {
                "store": str(Path(cfg["store"]).resolve()),
                "fmri_tokenizer": str(cfg["fmri_tokenizer"]),
                "tokenizer_config": _config_repr(tok_cfg),
                "window_length": split_window,
                "stride": split_stride,
                "min_window_length": min_window_length,
                "n_patches": window_length // patch,
            },
            sort_keys=True,
            default=str,
        )
        cache = out_dir / f"codes_{scheme}_{split}.npz"
        if cache.exists():
            enc = dict(np.load(cache))
            if str(enc.pop("stamp", "")) == stamp:  # else another tokenizer / store / windowing
                return enc
        enc = encode_windows(
            store,
            fmri_tokenizer,
            split=split,
            scheme=scheme,
            window_length=split_window,
            stride=split_stride,
            batch_size=int(dcfg["encode_batch_size"]),
            min_window_length=min_window_length,
            n_patches=window_length // patch,  # shorter training windows: padded like short scans
        )
        np.savez(cache, **enc, stamp=np.asarray(stamp))
        return enc

    kept = int(tcfg["checkpoints_kept"])
    if kept == 0 or kept < -1:
        raise ValueError(f"train.checkpoints_kept must be -1 (all) or >= 1, got {kept}")
    keep = tcfg["keep"]
    if keep not in KEEP_CHOICES:
        raise ValueError(f"train.keep must be one of {KEEP_CHOICES}, got {keep!r}")
    val_every = int(tcfg["val_every_n_steps"] or 0)
    if keep == "best_val_loss" and val_every < 1:
        raise ValueError("train.keep='best_val_loss' needs train.val_every_n_steps >= 1")
    enc = split_codes("train")
    if len(enc["codes"]) == 0:
        raise ValueError("the training split has no window (scans shorter than window_length?)")
    val_enc = split_codes("val") if val_every else None
    if val_enc is not None and len(val_enc["codes"]) == 0:
        raise ValueError("the validation split has no window; set train.val_every_n_steps: null")
    n_rois, n_patches = enc["codes"].shape[1:]

    # 2. tasks fitted on the training split
    table = store.table.reset_index(drop=True)
    train_rows = store.split_indices(scheme)["train"]
    tasks = build_tasks(
        table,
        train_rows,
        list(cfg["targets"]),
        kinds=cfg["task_kinds"],
        questions=cfg["questions"],
        grid_size=int(mcfg["grid_size"]),
    )
    labels = scan_labels(table, tasks)
    for j, t in enumerate(tasks):
        if t.kind == "classification":
            y = labels[train_rows, j]
            counts = np.bincount(y[y >= 0], minlength=len(t.answers)).astype(float)
            t.extra["train_shares"] = (counts / max(1.0, counts.sum())).tolist()
    scaler = store.scaler(scheme)
    lm_config = LMConfig(
        base_model=cfg["base_model"],
        gguf_file=cfg["gguf_file"],
        codebook_size=int(tok_cfg.codebook_size),
        n_rois=int(n_rois),
        n_patches=int(n_patches),
        window_length=window_length,
        stride=stride,
        min_window_length=min_window_length,
        layout=mcfg["layout"],
        layout_rois=mcfg["layout_rois"],
        compact_rois=int(mcfg["compact_rois"]),
        patch_stride=int(mcfg["patch_stride"]),
        summary_tokens=int(mcfg["summary_tokens"]),
        summary_roi_dim=int(mcfg["summary_roi_dim"]),
        summary_roi_dropout=float(mcfg["summary_roi_dropout"]),
        summary_connectivity_dim=int(mcfg["summary_connectivity_dim"]),
        summary_connectivity_components=int(mcfg["summary_connectivity_components"]),
        init=mcfg["init"],
        finetune=mcfg["finetune"],
        lora_r=int(mcfg["lora_r"]),
        lora_alpha=float(mcfg["lora_alpha"]),
        lora_dropout=float(mcfg["lora_dropout"]),
        lora_target_modules=list(mcfg["lora_target_modules"]),
        tasks=[t.to_dict() for t in tasks],
        questions_per_example=int(mcfg["questions_per_example"]),
        scheme=scheme,
        seed=seed,
        extra={
            "store": str(cfg["store"]),
            "fmri_tokenizer": str(cfg["fmri_tokenizer"]) if cfg["fmri_tokenizer"] else None,
            "train_stride": train_stride,
            "train_window_length": train_window_length,
            "scaler": {
                "scheme": scheme,
                "median": np.asarray(scaler.median, dtype=float).tolist(),
                "iqr": np.asarray(scaler.iqr, dtype=float).tolist(),
            },
        },
    )
    model = FMRILanguageModel.build(lm_config, fmri_tokenizer, lm=base_lm, tokenizer=base_tokenizer)
    if lm_config.summary_connectivity_components:
        # fitted on the training windows only, afresh on --resume (deterministic)
        model.fit_summary_components(torch.from_numpy(enc["codes"]))

    # 3. data, module, trainer
    bs = int(tcfg["batch_size"])

    def qa_dataset(windows: dict[str, np.ndarray]) -> QADataset:
        return QADataset(
            model,
            windows["codes"],
            windows["scan_index"],
            labels,
            batch_size=bs,
            seed=seed,
            questions_per_example=lm_config.questions_per_example,
        )

    dataset = qa_dataset(enc)
    # every validation window once, with fixed questions: the same examples at each check
    val_dataset = qa_dataset(val_enc) if val_enc is not None else None
    module = LMTrainingModule(model, tcfg)
    ckpt_path = find_resume_checkpoint(ckpt_dir) if resume else None
    (out_dir / "config.resolved.json").write_text(json.dumps(cfg, indent=2, default=str))
    throughput = _Throughput()
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=int(tcfg["checkpoint_every_n_steps"]),
            save_top_k=kept,
            monitor="step",
            mode="max",
            save_last=True,
        ),
        throughput,
        *(extra_callbacks or []),
    ]
    best_ckpt = curve = None
    if val_dataset is not None:
        # in a subfolder, so that --resume (newest step of checkpoints/*.ckpt) never picks it
        best_ckpt = ModelCheckpoint(
            dirpath=str(ckpt_dir / "best"),
            filename="best",
            monitor="val_loss",
            mode="min",
            save_top_k=1,
        )
        curve = ValidationCurve()
        callbacks += [best_ckpt, curve]
    kw = dict(
        max_steps=int(tcfg["max_steps"]),
        max_epochs=-1,
        accelerator=tcfg["accelerator"],
        devices=tcfg["devices"],
        strategy=tcfg["strategy"],
        precision=_precision(tcfg),
        callbacks=callbacks,
        logger=CSVLogger(str(out_dir), name="logs", version=0),
        log_every_n_steps=int(tcfg["log_every_n_steps"]),
        enable_progress_bar=bool(tcfg["progress_bar"]),
        gradient_clip_val=float(tcfg["grad_clip"]) if tcfg["grad_clip"] else None,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    if val_dataset is not None:  # counted in global steps, so a resumed run keeps the schedule
        kw.update(val_check_interval=val_every, check_val_every_n_epoch=None)
    else:
        kw.update(limit_val_batches=0)
    kw.update(trainer_overrides or {})
    trainer = L.Trainer(**kw)

    class _DM(L.LightningDataModule):
        def train_dataloader(self_inner):
            sampler = StepSampler(
                bs, int(tcfg["max_steps"]), trainer.global_rank, trainer.world_size
            )
            sampler.start_step = int(trainer.global_step)
            return DataLoader(
                dataset, batch_size=bs, sampler=sampler, collate_fn=model.collate, num_workers=0
            )

        def val_dataloader(self_inner):
            if val_dataset is None:
                return []
            return DataLoader(
                val_dataset,
                batch_size=bs,
                sampler=range(val_dataset.n),
                collate_fn=model.collate,
                num_workers=0,
            )

    model.train()  # transformers loads models in eval mode
    t0 = time.time()
    trainer.fit(module, datamodule=_DM(), ckpt_path=str(ckpt_path) if ckpt_path else None)
    seconds = time.time() - t0
    validation = None
    if best_ckpt is not None:
        best_path = best_ckpt.best_model_path
        best_loss = best_ckpt.best_model_score
        validation = {
            "every_n_steps": val_every,
            "n_windows": int(val_dataset.n),
            "curve": curve.points,
            "best_val_loss": float(best_loss) if best_loss is not None else None,
            "best_step": None,
            "kept": keep,
        }
        if best_path:
            if keep == "best_val_loss":
                validation["best_step"] = load_checkpoint_weights(module, best_path)
            else:
                state = torch.load(best_path, map_location="cpu", weights_only=False)
                validation["best_step"] = int(state["global_step"])
    model_dir = out_dir / "model"
    tokens = module.tokens_seen - throughput.tokens0
    from fmrilm.lm.layouts import compute_budget

    base = model.base_model
    n_params = model.n_parameters()
    budget = compute_budget(
        model.layout,
        n_params=n_params["total"],
        n_layers=int(getattr(base.config, "num_hidden_layers", 0) or 0),
        d_model=int(getattr(base.config, "hidden_size", 0) or 0),
        batch_size=bs,
        trainable_fraction=n_params["trainable"] / max(1, n_params["total"]),
    )
    summary = {
        "global_step": int(trainer.global_step),
        "steps_this_run": throughput.steps,
        "train_seconds": seconds,
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "run_dir": str(out_dir.resolve()),
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "windows_per_second": throughput.steps * bs / seconds if seconds > 0 else None,
        "n_train_windows": int(dataset.n),
        "train_stride": train_stride,
        "train_window_length": train_window_length,
        "n_scans_without_window": int(enc["n_scans_without_window"]),
        "n_short_windows": int(enc["n_short_windows"]),
        "parameters": n_params,
        "budget": budget,
        "validation": validation,
        "pid": os.getpid(),
    }
    if trainer.is_global_zero:
        model.config.extra["train_summary"] = summary
        model.save_pretrained(model_dir)
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return {"out_dir": str(out_dir), "model_dir": str(model_dir), "model": model, **summary}
