"""Evaluation of a trained tokenizer on a split, with closed-form baselines on the same masks.

Definitions:

- masked R^2: ``sklearn.metrics.r2_score`` on all hidden values of the split pooled into one
  vector (BrainLM's definition); hidden = tokens masked uniformly at random at the given ratio,
  ROIs that are constant in a scan never count;
- codes R^2: the same on every value of the split reconstructed by ``decode(encode(x))``
  (mask 0, the codes alone);
- MSE and Pearson r on the same pooled values; per-ROI R^2 on each ROI's pooled values;
- codebook usage: distinct codes used on the split / codebook size; perplexity:
  ``exp(entropy)`` of the code frequencies;
- discriminator accuracy: the domain classifier on projected codes of the split vs held-out
  text-token embeddings (balanced), ~0.5 = indistinguishable.

Baselines on the same windows and masks: zero predictor, linear interpolation in time, and the
spatial Gaussian conditional fitted on the training split with its ridge chosen on validation
(one ridge per mask ratio).
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from sklearn.metrics import r2_score

from fmrilm.baselines.reconstruction import GaussianConditional, linear_interpolation
from fmrilm.tokenizer.model import FMRITokenizer, domain_accuracy, random_token_mask

__all__ = ["evaluate_tokenizer", "fit_baseline_conditional", "regression_metrics"]

DEFAULT_RATIOS = (0.2, 0.5, 0.75)


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.size < 2:
        return {
            "r2": float("nan"),
            "mse": float("nan"),
            "pearson_r": float("nan"),
            "n": int(y.size),
        }
    r = float(np.corrcoef(y, p)[0, 1]) if np.std(p) > 0 and np.std(y) > 0 else 0.0
    return {
        "r2": float(r2_score(y, p)),
        "mse": float(np.mean((y - p) ** 2)),
        "pearson_r": r,
        "n": int(y.size),
    }


def _per_roi_r2(ys: list[np.ndarray], ps: list[np.ndarray], rois: list[np.ndarray], n_rois: int):
    y = np.concatenate(ys).astype(np.float64)
    p = np.concatenate(ps).astype(np.float64)
    r = np.concatenate(rois)
    out = np.full(n_rois, np.nan)
    cnt = np.bincount(r, minlength=n_rois)
    sy = np.bincount(r, y, n_rois)
    syy = np.bincount(r, y * y, n_rois)
    sres = np.bincount(r, (y - p) ** 2, n_rois)
    ok = cnt > 1
    sst = syy[ok] - sy[ok] ** 2 / cnt[ok]
    out[ok] = 1 - sres[ok] / np.where(sst > 0, sst, np.nan)
    return out


def _hidden_time(hidden: torch.Tensor, patch_length: int) -> torch.Tensor:
    return rearrange(hidden, "b r p -> b p r").repeat_interleave(patch_length, 1)


def fit_baseline_conditional(
    train_batches,
    val_batches,
    ratios=DEFAULT_RATIOS,
    patch_length: int = 20,
    seed: int = 0,
    grid=(0.01, 0.03, 0.1, 0.3),
) -> tuple[GaussianConditional, dict]:
    """Fit the Gaussian conditional on training windows; choose one ridge per mask ratio on
    validation windows. Returns ``(gc, {ratio: ridge})``."""
    gc = GaussianConditional.fit(
        {"window": b["window"], "roi_mask": b["roi_mask"]} for b in train_batches
    )
    vals = list(val_batches)
    ridges = {}
    for ratio in ratios:
        if not vals:
            ridges[float(ratio)] = gc.ridge
            continue
        g = torch.Generator().manual_seed(seed + 777 + int(ratio * 1000))
        ws, vs, valid = [], [], []
        for b in vals:
            x, rm = b["window"], b["roi_mask"]
            bsz, length, r = x.shape
            hid = random_token_mask(bsz, r, length // patch_length, ratio, g)
            vis = ~_hidden_time(hid, patch_length) & rm[:, None, :]
            ws.append(x.numpy())
            vs.append(vis.numpy())
            valid.append(np.broadcast_to(rm[:, None, :].numpy(), x.shape))
        ridges[float(ratio)] = gc.select_ridge(ws, vs, grid=grid, valid=valid)["ridge"]
    return gc, ridges


@torch.no_grad()
def evaluate_tokenizer(
    model: FMRITokenizer,
    batches,
    baseline: GaussianConditional | None = None,
    baseline_ridges: dict | None = None,
    ratios=DEFAULT_RATIOS,
    seed: int = 0,
    text_domain=None,
    n_disc_samples: int = 4096,
    include_interpolation: bool = True,
) -> dict:
    """Evaluate on an iterable of batches ``{"window": (B, L, R), "roi_mask": (B, R)}``."""
    model.eval()
    cfg = model.config
    pl, n_rois, k = cfg.patch_length, cfg.n_rois, cfg.codebook_size
    counts = np.zeros(k, dtype=np.int64)
    codes_y, codes_p, codes_roi = [], [], []
    acc = {
        r: {"y": [], "model": [], "zero": [], "interp": [], "gauss": [], "adaptive": [], "roi": []}
        for r in ratios
    }
    fmri_vecs = []
    gens = {r: torch.Generator().manual_seed(seed * 100 + int(r * 1000)) for r in ratios}
    n_windows = 0
    for b in batches:
        x = b["window"].float()
        rm = b["roi_mask"].bool()
        bsz, length, r = x.shape
        n_windows += bsz
        valid = rm[:, None, :].expand_as(x)
        roi_idx = torch.arange(r)[None, None, :].expand_as(x)
        codes = model.encode(x, rm)
        cv = codes.masked_select(rm[:, :, None].expand_as(codes))
        counts += np.bincount(cv.numpy(), minlength=k)
        rec = model.decode(codes)
        codes_y.append(x[valid].numpy())
        codes_p.append(rec[valid].numpy())
        codes_roi.append(roi_idx[valid].numpy())
        if text_domain is not None and model.config.align:
            fmri_vecs.append(model.code_vectors(cv[torch.randperm(len(cv))[:512]]))
        for ratio in ratios:
            hid = random_token_mask(bsz, r, length // pl, ratio, gens[ratio])
            hid_t = _hidden_time(hid, pl)
            sel = hid_t & valid
            a = acc[ratio]
            out = model(x, hid, rm)
            a["y"].append(x[sel].numpy())
            a["model"].append(out["pred"][sel].numpy())
            a["roi"].append(roi_idx[sel].numpy())
            a["zero"].append(np.zeros(int(sel.sum()), dtype=np.float32))
            vis = ~hid_t & valid
            if include_interpolation:
                a["interp"].append(linear_interpolation(x, vis)[sel.numpy()])
            if baseline is not None:
                lam = (baseline_ridges or {}).get(float(ratio), baseline.ridge)
                a["gauss"].append(baseline.predict(x, vis, lam)[sel].numpy())
            if cfg.residual_over_conditional:
                # the model's closed-form starting point (window-adaptive conditional)
                a["adaptive"].append(model.conditional(x * rm[:, None, :], vis)[sel].numpy())
    res: dict = {"n_windows": n_windows}
    cm = regression_metrics(np.concatenate(codes_y), np.concatenate(codes_p))
    res["codes"] = cm
    res["r2_codes"] = cm["r2"]
    res["per_roi_r2_codes"] = _per_roi_r2(codes_y, codes_p, codes_roi, n_rois).tolist()
    res["masked"] = {}
    for ratio in ratios:
        a = acc[ratio]
        y = np.concatenate(a["y"])
        entry = {"model": regression_metrics(y, np.concatenate(a["model"]))}
        entry["zero"] = regression_metrics(y, np.concatenate(a["zero"]))
        if a["interp"]:
            entry["linear_interpolation"] = regression_metrics(y, np.concatenate(a["interp"]))
        if a["gauss"]:
            entry["gaussian_conditional"] = regression_metrics(y, np.concatenate(a["gauss"]))
            entry["gaussian_ridge"] = (baseline_ridges or {}).get(float(ratio), baseline.ridge)
        if a["adaptive"]:
            entry["window_adaptive_conditional"] = regression_metrics(
                y, np.concatenate(a["adaptive"])
            )
        entry["per_roi_r2"] = _per_roi_r2(a["y"], a["model"], a["roi"], n_rois).tolist()
        res["masked"][str(ratio)] = entry
    res["r2_masked_by_ratio"] = {str(r): res["masked"][str(r)]["model"]["r2"] for r in ratios}
    if baseline is not None:
        res["r2_gaussian_conditional_by_ratio"] = {
            str(r): res["masked"][str(r)]["gaussian_conditional"]["r2"] for r in ratios
        }
    res["r2_linear_interpolation_by_ratio"] = {
        str(r): res["masked"][str(r)].get("linear_interpolation", {}).get("r2") for r in ratios
    }
    if cfg.residual_over_conditional:
        res["r2_window_adaptive_conditional_by_ratio"] = {
            str(r): res["masked"][str(r)]["window_adaptive_conditional"]["r2"] for r in ratios
        }
    res["r2_zero_by_ratio"] = {str(r): res["masked"][str(r)]["zero"]["r2"] for r in ratios}
    total = counts.sum()
    prob = counts[counts > 0] / max(1, total)
    res["codebook_usage"] = float((counts > 0).sum() / k)
    res["perplexity"] = float(np.exp(-(prob * np.log(prob)).sum())) if total else 0.0
    res["codebook_size"] = int(k)
    if fmri_vecs:
        g = torch.Generator().manual_seed(seed + 99)
        fv = torch.cat(fmri_vecs)
        fv = fv[torch.randperm(len(fv), generator=g)[:n_disc_samples]]
        tv = text_domain.sample(len(fv), "heldout", g)
        acc = domain_accuracy(
            model.discriminator(model.align_features(fv)),
            model.discriminator(model.text_features(tv)),
        )
        res.update({f"discriminator_{k}": v for k, v in acc.items()})
    else:
        res["discriminator_accuracy"] = None
    return res
