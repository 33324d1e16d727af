"""Lightning training of the fMRI tokenizer.

- :class:`TokenizerModule` (``LightningModule``) wraps :class:`FMRITokenizer`, the masking, the
  losses and the adversarial alignment (gradient reversal, DANN schedule).
- :class:`WindowDataModule` (``LightningDataModule``) serves the store's ``WindowDataset``
  (or any datasets yielding the same dicts) with a step-indexed sampler: the batch of step ``s``
  is a pure function of ``(seed, s, rank)``, so a run resumed from a checkpoint continues the
  same trajectory as an uninterrupted run.
- :func:`train` runs a whole training from a config dict (see ``configs/tokenizer.yaml``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset, Sampler

from fmrilm.memory import keep_freed_memory_for_reuse
from fmrilm.tokenizer.config import TokenizerConfig
from fmrilm.tokenizer.model import FMRITokenizer, dann_lambda, grad_reverse, random_token_mask
from fmrilm.tokenizer.text_domain import TextDomain

__all__ = [
    "DEFAULT_CONFIG",
    "TokenizerModule",
    "WindowDataModule",
    "NonFiniteLossError",
    "NonFiniteLossDiagnosis",
    "CodebookDumpCallback",
    "StepDelayCallback",
    "train",
    "find_resume_checkpoint",
    "fit_conditional",
    "merge_config",
]

DEFAULT_CONFIG: dict = {
    "seed": 0,
    "out_dir": "runs/tokenizer",
    "data": {
        "store": "/tmp/fmrilm_abide_store",
        "scheme": "site_stratified",
        "window_length": 160,
        "stride": 80,
        "batch_size": 32,
        "num_workers": 0,
    },
    "model": {},
    "train": {
        "max_steps": 400,
        "lr": 2e-3,
        "weight_decay": 0.01,
        "warmup_steps": 20,
        "grad_clip": 1.0,
        "mask_ratios": [0.0, 0.2, 0.5, 0.75],
        "masked_loss_weight": 1.0,
        "align_weight": 0.1,
        "align_tokens": 512,
        "align_through_encoder": False,
        "checkpoint_every_n_steps": 50,
        "log_every_n_steps": 10,
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "auto",
        "progress_bar": True,
        "conditional_ridge_grid": [0.03, 0.1, 0.3],
        "conditional_alpha_grid": [0.3, 0.5, 0.7],
        "conditional_val_windows": 96,
        "num_threads": None,
        # glibc: keep large freed blocks for reuse instead of page-faulting them afresh every
        # step (fmrilm.memory; 1.7-1.9x faster steps with 4,096 codes)
        "keep_freed_memory": True,
        "max_time_minutes": None,
        "conditional_ridge_mask_ratio": 0.2,
        "max_conditional_windows": 4000,
    },
    "lm": {"name": "smollm2", "text": "hpo"},
}


def merge_config(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


TEXT_SUBSPACE_SAMPLES = 20000  # text tokens (by frequency) behind the principal subspace


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term becomes NaN/Inf; the message names the step and the term."""


# ---------------------------------------------------------------------------- data
class StepSampler(Sampler):
    """Indices for steps ``start .. total`` where the batch of step ``s`` depends only on
    ``(seed, s, rank)``: epoch ``e = s // steps_per_epoch`` uses permutation ``(seed, e)``."""

    def __init__(self, n: int, batch_size: int, seed: int, total_steps: int, rank=0, world=1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.total_steps, self.rank, self.world = total_steps, rank, world
        self.start_step = 0
        self.global_batch = batch_size * world
        self.steps_per_epoch = max(1, n // self.global_batch) if n >= self.global_batch else 1

    def _batch(self, s: int) -> list[int]:
        e, j = divmod(s, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, e]).permutation(self.n)
        if self.n < self.global_batch:  # tiny datasets: sample with replacement
            perm = np.random.default_rng([self.seed, e, 1]).integers(0, self.n, self.global_batch)
            j = 0
        g = perm[j * self.global_batch : (j + 1) * self.global_batch]
        return g[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def __iter__(self):
        for s in range(self.start_step, self.total_steps):
            yield from self._batch(s)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.batch_size


def collate_windows(items: list[dict]) -> dict:
    out = {"window": torch.stack([torch.as_tensor(i["window"]) for i in items]).float()}
    if "roi_mask" in items[0]:
        out["roi_mask"] = torch.stack([torch.as_tensor(i["roi_mask"]) for i in items]).bool()
    else:
        out["roi_mask"] = torch.ones(out["window"].shape[0], out["window"].shape[2], dtype=bool)
    return out


class WindowDataModule(L.LightningDataModule):
    """Windows of a dataset store (``fmrilm.data.WindowDataset``) or of given datasets."""

    def __init__(
        self,
        store: str | None = None,
        scheme: str = "site_stratified",
        window_length: int = 160,
        stride: int = 80,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        max_steps: int = 1000,
        datasets: dict[str, Dataset] | None = None,
    ):
        super().__init__()
        self.store_path, self.scheme = store, scheme
        self.window_length, self.stride = window_length, stride
        self.batch_size, self.num_workers = batch_size, num_workers
        self.seed, self.max_steps = seed, max_steps
        self.datasets = dict(datasets) if datasets is not None else None
        self._store = None

    @property
    def store(self):
        if self._store is None and self.store_path is not None:
            from fmrilm.data import open_store

            self._store = open_store(self.store_path)
        return self._store

    def dataset(self, split: str) -> Dataset:
        if self.datasets is None:
            self.datasets = {}
        if split not in self.datasets:
            from fmrilm.data import WindowDataset

            self.datasets[split] = WindowDataset(
                self.store,
                split=split,
                scheme=self.scheme,
                window_length=self.window_length,
                stride=self.stride,
            )
        return self.datasets[split]

    def scaler_stats(self) -> dict | None:
        if self.store is None:
            return None
        sc = self.store.scaler(self.scheme)
        return {
            "scheme": self.scheme,
            "median": np.asarray(sc.median, dtype=float).tolist(),
            "iqr": np.asarray(sc.iqr, dtype=float).tolist(),
        }

    def train_dataloader(self):
        ds = self.dataset("train")
        rank, world = 0, 1
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
        sampler = StepSampler(len(ds), self.batch_size, self.seed, self.max_steps, rank, world)
        if trainer is not None:
            sampler.start_step = int(trainer.global_step)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_windows,
            drop_last=True,
            # its own generator: creating the iterator must not consume the global RNG, or a
            # resumed run would diverge from an uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
        )

    def eval_dataloader(self, split: str, batch_size: int | None = None):
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size or self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_windows,
        )


# ------------------------------------------------------------------------- module
class TokenizerModule(L.LightningModule):
    """LightningModule: masked reconstruction + VQ commitment + adversarial alignment."""

    def __init__(
        self,
        model_config: dict,
        train_config: dict,
        seed: int = 0,
        text_domain: TextDomain | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["text_domain"])
        self.model = FMRITokenizer(TokenizerConfig.from_dict(model_config))
        self.tcfg = merge_config(DEFAULT_CONFIG["train"], train_config)
        self.seed = int(seed)
        self.text_domain = text_domain
        if self.model.config.align and text_domain is None:
            raise ValueError("alignment is on (model.align=true) but no text domain was given")
        if self.model.config.align and self.model.config.align_dim:
            # deterministic in the seed, so a resumed run refits the same subspace
            g = torch.Generator().manual_seed(self.seed)
            self.model.fit_text_subspace(text_domain.sample(TEXT_SUBSPACE_SAMPLES, "train", g))
        self._last_terms: dict[str, torch.Tensor] = {}
        self._last_batch_finite = True

    # the DDP codebook sync needs the process group, which exists from setup() on
    def setup(self, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                self.model.enable_codebook_sync()

    def configure_optimizers(self):
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "embed" in n else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.tcfg["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.tcfg["lr"],
            betas=(0.9, 0.98),
        )
        warm = max(1, int(self.tcfg["warmup_steps"]))
        total = max(warm + 1, int(self.tcfg["max_steps"]))

        def lr_lambda(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            prog = (step - warm) / max(1, total - warm)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _generator(self) -> torch.Generator:
        rank = self.global_rank if self._trainer is not None else 0
        return torch.Generator().manual_seed(
            (self.seed * 1_000_003 + int(self.global_step) * 7919 + rank) % (2**62)
        )

    def compute_losses(self, batch: dict, mask_ratio: float, g: torch.Generator) -> dict:
        m = self.model
        x, roi_mask = batch["window"], batch["roi_mask"]
        b, length, r = x.shape
        p = length // m.config.patch_length
        hidden = random_token_mask(b, r, p, mask_ratio, g, device=x.device)
        out = m(x, hidden, roi_mask)
        err = (out["pred"] - x) ** 2
        hid_t = rearrange(hidden, "b r p -> b p r").repeat_interleave(m.config.patch_length, 1)
        valid_t = roi_mask[:, None, :].expand_as(x)
        vis_sel = valid_t & ~hid_t
        hid_sel = valid_t & hid_t
        terms = {"rec_visible": err[vis_sel].mean(), "commit": out["commit_loss"]}
        if bool(hid_sel.any()):
            terms["rec_masked"] = err[hid_sel].mean()
        return {"terms": terms, "out": out, "hidden": hidden, "hid_sel": hid_sel}

    def alignment_losses(self, zq: torch.Tensor, codes: torch.Tensor, lambd: float, g):
        """Domain classifier on projected fMRI code vectors vs real text-token embeddings."""
        m = self.model
        n = int(self.tcfg["align_tokens"])
        flat = zq[codes >= 0]
        if flat.shape[0] == 0:
            return {}
        sel = torch.randint(0, flat.shape[0], (min(n, flat.shape[0]),), generator=g)
        vecs = flat[sel]
        if not self.tcfg.get("align_through_encoder", False):
            # by default the reversed gradient stops at the code vectors: the projector into
            # the LM space is what becomes domain-invariant, reconstruction is untouched
            vecs = vecs.detach()
        fmri = m.align_features(vecs)
        text = self.text_domain.sample(fmri.shape[0], "train", g).to(fmri.device)
        text = m.text_features(text)
        feats = torch.cat([fmri, text])
        labels = torch.cat([torch.ones(len(fmri)), torch.zeros(len(text))]).to(fmri.device)
        logits = m.discriminator(grad_reverse(feats, lambd))
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        acc = ((logits > 0).float() == labels).float().mean()
        return {"domain": loss, "_disc_acc": acc.detach()}

    def training_step(self, batch, batch_idx):
        g = self._generator()
        ratios = list(self.tcfg["mask_ratios"])
        ratio = float(ratios[int(self.global_step) % len(ratios)])
        self._last_batch_finite = bool(torch.isfinite(batch["window"]).all())
        res = self.compute_losses(batch, ratio, g)
        terms = res["terms"]
        lambd = 0.0
        if self.model.config.align:
            progress = self.global_step / max(1, int(self.tcfg["max_steps"]))
            lambd = dann_lambda(progress)
            terms.update(self.alignment_losses(res["out"]["zq"], res["out"]["codes"], lambd, g))
        loss = terms["rec_visible"] + terms["commit"]
        if "rec_masked" in terms:
            loss = loss + float(self.tcfg["masked_loss_weight"]) * terms["rec_masked"]
        if "domain" in terms:
            loss = loss + float(self.tcfg["align_weight"]) * terms["domain"]
        terms["total"] = loss
        self._last_terms = {k: v.detach() for k, v in terms.items()}
        logs = {f"train/{k.lstrip('_')}": v.detach() for k, v in terms.items()}
        logs["train/dann_lambda"] = torch.tensor(lambd)
        logs["train/mask_ratio"] = torch.tensor(ratio)
        self.log_dict(logs, on_step=True, prog_bar=False, batch_size=batch["window"].shape[0])
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, batch_size=1)
        return loss

    # RNG state travels with the checkpoint so that a resumed run continues the same
    # trajectory (k-means init and dead-code replacement use the global torch RNG)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fmrilm_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),  # noqa: NPY002 - the legacy global state
            "python": random.getstate(),
        }
        checkpoint["fmrilm_scaler_stats"] = self.model.scaler_stats

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("fmrilm_rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])  # noqa: NPY002
            random.setstate(rng["python"])
        if checkpoint.get("fmrilm_scaler_stats") is not None:
            self.model.scaler_stats = checkpoint["fmrilm_scaler_stats"]


# ----------------------------------------------------------------------- callbacks
class NonFiniteLossDiagnosis(Callback):
    """Stops training before a non-finite loss is back-propagated, naming the step and term."""

    def on_before_backward(self, trainer, pl_module, loss):
        if torch.isfinite(loss).all():
            return
        terms = getattr(pl_module, "_last_terms", {})
        bad = [k for k, v in terms.items() if k != "total" and not bool(torch.isfinite(v).all())]
        parts = [
            f"non-finite loss at step {trainer.global_step}: "
            f"term(s) {', '.join(bad) if bad else 'total'} became "
            f"{'/'.join(sorted({str(terms[k].item()) for k in bad})) if bad else loss.item()}"
        ]
        if not getattr(pl_module, "_last_batch_finite", True):
            parts.append("the input batch contains NaN/Inf values (check the store/scaler)")
        bad_params = [
            n for n, p in pl_module.named_parameters() if not bool(torch.isfinite(p).all())
        ]
        if bad_params:
            parts.append(f"non-finite parameters: {bad_params[:5]}")
        else:
            parts.append("all parameters are finite (try a lower learning rate)")
        finite_terms = {k: round(float(v), 5) for k, v in terms.items() if k not in bad}
        parts.append(f"finite terms: {finite_terms}")
        parts.append("training stopped; no checkpoint was written for this step")
        raise NonFiniteLossError("; ".join(parts))


class CodebookDumpCallback(Callback):
    """Writes each rank's final codebook to ``folder/codebook_rank{r}.pt`` (used by DDP tests)."""

    def __init__(self, folder: str):
        self.folder = str(folder)

    def on_train_end(self, trainer, pl_module):
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "codebook": pl_module.model.quantizer.codebook.detach().cpu().clone(),
                "state": {
                    k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()
                },
            },
            Path(self.folder) / f"codebook_rank{trainer.global_rank}.pt",
        )


class StepDelayCallback(Callback):
    """Sleeps after every step (tests use it to kill a run between checkpoints)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


# --------------------------------------------------------------------------- runner
def find_resume_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """Newest checkpoint of ``ckpt_dir`` that loads (a file cut by a kill is skipped)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.exists():
        return None
    cands = []
    for f in ckpt_dir.glob("*.ckpt"):
        try:
            c = torch.load(f, map_location="cpu", weights_only=False)
            cands.append((int(c.get("global_step", -1)), f.stat().st_mtime, f))
        except Exception:  # noqa: BLE001 - a truncated file is just skipped
            continue
    if not cands:
        return None
    return max(cands)[2]


@torch.no_grad()
def fit_conditional(model: FMRITokenizer, dm: WindowDataModule, tcfg: dict, seed: int = 0) -> dict:
    """Fit the spatial Gaussian conditional on training windows; choose its ridge, then the
    window-adaptive shrinkage alpha, on validation windows (hidden-value R^2)."""
    from fmrilm.baselines.reconstruction import (
        GaussianConditional,
        adaptive_conditional_mean,
        masked_r2,
    )

    def batches(split, limit):
        n = 0
        for b in dm.eval_dataloader(split, 64):
            yield b
            n += b["window"].shape[0]
            if n >= limit:
                break

    limit = int(tcfg.get("max_conditional_windows", 4000))
    gc = GaussianConditional.fit(
        {"window": b["window"], "roi_mask": b["roi_mask"]} for b in batches("train", limit)
    )
    cfg = model.config
    report = {"ridge": float(cfg.conditional_ridge), "alpha": float(cfg.conditional_alpha)}
    try:
        has_val = len(dm.dataset("val")) > 0
    except Exception:  # noqa: BLE001
        has_val = False
    if has_val:
        g = torch.Generator().manual_seed(seed + 12345)
        pl = cfg.patch_length
        val = []
        for b in batches("val", int(tcfg.get("conditional_val_windows", 128))):
            x, rm = b["window"].double(), b["roi_mask"]
            bsz, length, r = x.shape
            hid = random_token_mask(
                bsz, r, length // pl, float(tcfg["conditional_ridge_mask_ratio"]), g
            )
            hid_t = rearrange(hid, "b r p -> b p r").repeat_interleave(pl, 1)
            val.append((x, ~hid_t & rm[:, None, :], hid_t & rm[:, None, :]))

        def score(ridge, alpha):
            ys, ps = [], []
            for x, vis, sel in val:
                p = adaptive_conditional_mean(x, vis, gc.mean, gc.cov, ridge, alpha)
                ys.append(x[sel].numpy())
                ps.append(p[sel].numpy())
            return masked_r2(np.concatenate(ys), np.concatenate(ps))

        ridge_scores = {float(lam): score(lam, 0.0) for lam in tcfg["conditional_ridge_grid"]}
        ridge = max(ridge_scores, key=ridge_scores.get)
        alpha_scores = {0.0: ridge_scores[ridge]}
        for a in tcfg.get("conditional_alpha_grid", [0.3, 0.5, 0.7]):
            alpha_scores[float(a)] = score(ridge, float(a))
        alpha = max(alpha_scores, key=alpha_scores.get)
        report = {
            "ridge": ridge,
            "alpha": alpha,
            "ridge_scores": ridge_scores,
            "alpha_scores": alpha_scores,
            "mask_ratio": float(tcfg["conditional_ridge_mask_ratio"]),
        }
        gc.ridge = ridge
    else:
        ridge, alpha = report["ridge"], report["alpha"]
    model.set_conditional(gc.mean.numpy(), gc.cov.numpy(), ridge, alpha)
    return report


def _precision(tcfg: dict, accelerator: str) -> str:
    if tcfg.get("precision", "auto") != "auto":
        return tcfg["precision"]
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed"
    return "32-true"


def train(
    config: dict,
    resume: bool = False,
    extra_callbacks: list[Callback] | None = None,
    datasets: dict[str, Dataset] | None = None,
    text_domain: TextDomain | None = None,
    scaler_stats: dict | None = None,
    trainer_overrides: dict | None = None,
    on_trainer: Callable | None = None,
) -> dict:
    """Train a tokenizer from a config dict; returns paths and a summary.

    ``datasets`` ({"train", "val"} torch Datasets of window dicts) replaces the store;
    ``text_domain`` replaces building the LM text domain (tests pass a tiny random one).
    """
    cfg = merge_config(DEFAULT_CONFIG, config)
    if cfg["train"].get("num_threads"):
        torch.set_num_threads(int(cfg["train"]["num_threads"]))
    if cfg["train"].get("keep_freed_memory"):
        keep_freed_memory_for_reuse()
    seed = int(cfg["seed"])
    L.seed_everything(seed, workers=True)
    out_dir = Path(cfg["out_dir"])
    ckpt_dir = out_dir / "checkpoints"
    tcfg = cfg["train"]
    dcfg = cfg["data"]
    mcfg = dict(cfg["model"])
    mcfg.setdefault("window_length", dcfg["window_length"])
    dm = WindowDataModule(
        store=None if datasets is not None else dcfg["store"],
        scheme=dcfg["scheme"],
        window_length=dcfg["window_length"],
        stride=dcfg["stride"],
        batch_size=dcfg["batch_size"],
        num_workers=dcfg["num_workers"],
        seed=seed,
        max_steps=int(tcfg["max_steps"]),
        datasets=datasets,
    )
    if datasets is None:
        mcfg.setdefault("n_rois", int(dm.store.n_rois))
    align = bool(mcfg.get("align", True))
    if align and text_domain is None:
        from fmrilm.tokenizer.text_domain import build_text_domain

        text_domain = build_text_domain(cfg["lm"]["name"])
    if text_domain is not None:
        mcfg["lm_dim"] = text_domain.dim
        mcfg.setdefault("lm_name", cfg["lm"]["name"] if text_domain.lm_name != "random" else None)
    module = TokenizerModule(mcfg, tcfg, seed=seed, text_domain=text_domain)
    module.model.scaler_stats = scaler_stats if scaler_stats is not None else dm.scaler_stats()
    ckpt_path = None
    if resume:
        ckpt_path = find_resume_checkpoint(ckpt_dir)
    cond_report = None
    if ckpt_path is None:
        cond_report = fit_conditional(module.model, dm, tcfg, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.resolved.json").write_text(json.dumps(cfg, indent=2, default=str))
    accelerator = tcfg["accelerator"]
    callbacks: list[Callback] = [
        NonFiniteLossDiagnosis(),
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=int(tcfg["checkpoint_every_n_steps"]),
            save_top_k=-1 if tcfg.get("keep_all_checkpoints") else 2,
            monitor="step",
            mode="max",
            save_last=True,
        ),
    ]
    if tcfg.get("progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(tcfg["log_every_n_steps"]))))
    callbacks += list(extra_callbacks or [])
    loggers = [
        CSVLogger(str(out_dir), name="logs", version=0),
        TensorBoardLogger(str(out_dir), name="tb", version=0),
    ]
    strategy = tcfg["strategy"]
    if strategy in ("ddp", "ddp_spawn", "ddp_gloo", "ddp_spawn_gloo"):
        from lightning.pytorch.strategies import DDPStrategy

        backend = "gloo" if (strategy.endswith("gloo") or accelerator == "cpu") else None
        start = "spawn" if "spawn" in strategy else "popen"
        strategy = DDPStrategy(
            process_group_backend=backend, start_method=start, find_unused_parameters=True
        )
    kw = dict(
        max_steps=int(tcfg["max_steps"]),
        max_epochs=-1,
        accelerator=accelerator,
        devices=tcfg["devices"],
        num_nodes=int(tcfg["num_nodes"]),
        strategy=strategy,
        precision=_precision(tcfg, accelerator),
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=int(tcfg["log_every_n_steps"]),
        enable_progress_bar=bool(tcfg.get("progress_bar", True)),
        gradient_clip_val=float(tcfg["grad_clip"]) if tcfg["grad_clip"] else None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        use_distributed_sampler=False,
        deterministic=False,
        reload_dataloaders_every_n_epochs=0,
    )
    if tcfg.get("max_time_minutes"):
        kw["max_time"] = {"minutes": float(tcfg["max_time_minutes"])}
    kw.update(trainer_overrides or {})
    trainer = L.Trainer(**kw)
    if on_trainer is not None:
        on_trainer(trainer)
    t0 = time.time()
    # our own checkpoints carry RNG states (numpy/python objects): trusted, load them fully
    trainer.fit(
        module,
        datamodule=dm,
        ckpt_path=str(ckpt_path) if ckpt_path else None,
        weights_only=False if ckpt_path else None,
    )
    seconds = time.time() - t0
    model_dir = out_dir / "model"
    if trainer.is_global_zero:
        module.model.save_pretrained(model_dir)
        import resource

        summary = {
            "global_step": int(trainer.global_step),
            "train_seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "resumed_from": str(ckpt_path) if ckpt_path else None,
            "conditional": cond_report,
        }
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return {
        "out_dir": str(out_dir),
        "model_dir": str(model_dir),
        "global_step": int(trainer.global_step),
        "train_seconds": seconds,
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "module": module,
        "conditional": cond_report,
        "pid": os.getpid(),
    }
