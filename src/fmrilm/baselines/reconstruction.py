"""Closed-form reconstruction baselines for masked fMRI windows.

All functions work on scaled windows of shape ``(..., L, R)`` (time x ROI) with a boolean
``visible`` array of the same shape (True where the value may be used as input).

- :func:`zero_predictor`: predicts 0 (the training median after robust scaling) everywhere.
- :func:`linear_interpolation`: per ROI, linear interpolation in time between the nearest
  visible time points of that ROI (constant extrapolation at the edges, 0 when an ROI has no
  visible value in the window).
- :class:`GaussianConditional`: the spatial Gaussian conditional. At each time point the
  hidden ROIs are predicted from the visible ROIs of the same time point with
  ``mu_M + S_MV (S_VV + ridge * mean(diag S) * I)^-1 (x_V - mu_V)``, where ``mu`` and ``S`` are
  the ROI mean and covariance of the training split. The ridge is chosen on validation windows
  with :meth:`GaussianConditional.select_ridge`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "GaussianConditional",
    "adaptive_conditional_mean",
    "conditional_mean",
    "linear_interpolation",
    "zero_predictor",
    "masked_r2",
]


def zero_predictor(x: torch.Tensor | np.ndarray, visible=None):
    """Predict zeros (the robust-scaled median) everywhere."""
    if isinstance(x, np.ndarray):
        return np.zeros_like(x)
    return torch.zeros_like(x)


def linear_interpolation(x: np.ndarray | torch.Tensor, visible) -> np.ndarray:
    """Linear interpolation in time of each ROI from its visible time points.

    ``x`` and ``visible`` have shape ``(L, R)`` or ``(B, L, R)``. Visible entries are returned
    unchanged. An ROI with no visible time point is predicted as 0.
    """
    xa = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    va = (
        visible.detach().cpu().numpy() if isinstance(visible, torch.Tensor) else np.asarray(visible)
    )
    squeeze = xa.ndim == 2
    if squeeze:
        xa, va = xa[None], va[None]
    out = np.zeros_like(xa, dtype=np.float32)
    t = np.arange(xa.shape[1])
    for b in range(xa.shape[0]):
        for r in range(xa.shape[2]):
            v = va[b, :, r]
            if v.all():
                out[b, :, r] = xa[b, :, r]
            elif v.any():
                out[b, :, r] = np.interp(t, t[v], xa[b, v, r])
    return out[0] if squeeze else out


def masked_r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn ``r2_score`` on pooled values (BrainLM's definition)."""
    from sklearn.metrics import r2_score

    return float(r2_score(np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()))


@dataclass
class _Moments:
    sum_x: np.ndarray
    sum_xx: np.ndarray
    count_i: np.ndarray
    count_ij: np.ndarray


class GaussianConditional:
    """Spatial Gaussian conditional reconstruction (closed form).

    Parameters
    ----------
    mean: (R,) ROI means of the training split (scaled units).
    cov: (R, R) ROI covariance of the training split.
    ridge: relative ridge; ``ridge * mean(diag(cov))`` is added to the visible block's diagonal.
    """

    def __init__(self, mean, cov, ridge: float = 0.1):
        self.mean = torch.as_tensor(np.asarray(mean), dtype=torch.float64)
        self.cov = torch.as_tensor(np.asarray(cov), dtype=torch.float64)
        self.ridge = float(ridge)

    @property
    def n_rois(self) -> int:
        return int(self.mean.shape[0])

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, windows: Iterable, ridge: float = 0.1) -> GaussianConditional:
        """Fit mean and covariance from an iterable of windows.

        Each item is either an array ``(L, R)`` / ``(B, L, R)``, or a dict with ``"window"`` and
        optionally ``"roi_mask"`` (``(R,)`` or ``(B, R)`` bool, False = constant ROI to ignore),
        as yielded by :class:`fmrilm.data.WindowDataset` or its DataLoader. Covariances use
        pairwise-complete time points so that masked ROI columns never bias the estimate.
        """
        m: _Moments | None = None
        skipped = 0
        for item in windows:
            if isinstance(item, dict):
                x = item["window"]
                rm = item.get("roi_mask")
            else:
                x, rm = item, None
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            x = x.astype(np.float64)
            if x.ndim == 2:
                x = x[None]
            if rm is None:
                rm = np.ones((x.shape[0], x.shape[2]), dtype=bool)
            else:
                rm = rm.detach().cpu().numpy() if isinstance(rm, torch.Tensor) else np.asarray(rm)
                rm = rm.reshape(x.shape[0], x.shape[2]).astype(bool)
            finite = np.isfinite(x).all(axis=(1, 2))
            if not finite.all():  # a window with NaN/Inf is skipped, not averaged in
                skipped += int((~finite).sum())
                x, rm = x[finite], rm[finite]
                if x.shape[0] == 0:
                    continue
            valid = np.broadcast_to(rm[:, None, :], x.shape).reshape(-1, x.shape[2])
            flat = np.where(valid, x.reshape(-1, x.shape[2]), 0.0)
            vf = valid.astype(np.float64)
            if m is None:
                r = x.shape[2]
                m = _Moments(np.zeros(r), np.zeros((r, r)), np.zeros(r), np.zeros((r, r)))
            m.sum_x += flat.sum(0)
            m.sum_xx += flat.T @ flat
            m.count_i += vf.sum(0)
            m.count_ij += vf.T @ vf
        if m is None:
            raise ValueError(
                f"GaussianConditional.fit got no usable windows ({skipped} non-finite skipped)"
            )
        mean = m.sum_x / np.maximum(m.count_i, 1)
        cov = m.sum_xx / np.maximum(m.count_ij, 1) - np.outer(mean, mean)
        cov = 0.5 * (cov + cov.T)
        # ROIs never observed get unit variance and no covariance
        never = m.count_i == 0
        cov[never, :] = 0
        cov[:, never] = 0
        cov[never, never] = 1.0
        gc = cls(mean, cov, ridge)
        gc.n_skipped_windows = skipped
        return gc

    # --------------------------------------------------------------- prediction
    def predict(self, x, visible, ridge: float | None = None) -> torch.Tensor:
        """Predict every entry of ``x`` (``(..., R)``) from its visible entries of the same row.

        ``visible`` is a bool tensor/array of the same shape. Visible entries are returned
        unchanged; hidden entries get the conditional mean. Rows sharing a visibility pattern
        are solved together (one Cholesky factorisation per distinct pattern).
        """
        xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        vt = torch.as_tensor(
            np.asarray(visible) if not isinstance(visible, torch.Tensor) else visible
        ).bool()
        out_dtype = xt.dtype if xt.is_floating_point() else torch.float32
        shape = xt.shape
        r = shape[-1]
        xf = xt.reshape(-1, r).to(torch.float64)
        vf = vt.reshape(-1, r)
        pred = conditional_mean(
            xf,
            vf,
            self.mean.to(xf.device),
            self.cov.to(xf.device),
            self.ridge if ridge is None else ridge,
        )
        return pred.reshape(shape).to(out_dtype)

    def select_ridge(
        self,
        windows: Sequence,
        visibles: Sequence,
        grid: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
        valid: Sequence | None = None,
    ) -> dict:
        """Choose the ridge maximising pooled hidden-value R^2 on validation windows.

        ``windows`` and ``visibles`` are sequences of ``(L, R)`` (or batched) arrays; ``valid``
        optionally marks the entries that count (default: all). Sets ``self.ridge`` and returns
        ``{"ridge": best, "scores": {ridge: r2}}``.
        """
        scores = {}
        for lam in grid:
            ys, ps = [], []
            for i, (w, v) in enumerate(zip(windows, visibles, strict=True)):
                p = self.predict(
                    torch.as_tensor(np.asarray(w)), torch.as_tensor(np.asarray(v)), lam
                )
                hid = ~np.asarray(v, dtype=bool)
                if valid is not None:
                    hid &= np.asarray(valid[i], dtype=bool)
                ys.append(np.asarray(w)[hid])
                ps.append(p.numpy()[hid])
            scores[float(lam)] = masked_r2(np.concatenate(ys), np.concatenate(ps))
        best = max(scores, key=scores.get)
        self.ridge = best
        return {"ridge": best, "scores": scores}

    # ------------------------------------------------------------------ storage
    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "cov": self.cov.clone(), "ridge": self.ridge}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        np.savez(path, mean=self.mean.numpy(), cov=self.cov.numpy(), ridge=np.float64(self.ridge))

    @classmethod
    def load(cls, path: str | Path) -> GaussianConditional:
        d = np.load(path)
        return cls(d["mean"], d["cov"], float(d["ridge"]))

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"GaussianConditional(n_rois={self.n_rois}, ridge={self.ridge})"

    def to_json(self) -> str:
        return json.dumps({"n_rois": self.n_rois, "ridge": self.ridge})


def _group_rows(inv: torch.Tensor, u: int):
    """Order rows by pattern: returns (order, inv_sorted, pos_in_group, max_count)."""
    n = inv.shape[0]
    order = torch.argsort(inv, stable=True)
    counts = torch.bincount(inv, minlength=u)
    starts = torch.cumsum(counts, 0) - counts
    inv_sorted = inv[order]
    pos = torch.arange(n, device=inv.device) - starts[inv_sorted]
    return order, inv_sorted, pos, int(counts.max())


def _padded_indices(sel: torch.Tensor):
    """For a (U, R) bool selection, the selected column indices first: (idx (U, k), pad (U, k))."""
    k = int(sel.sum(1).max())
    idx = torch.argsort((~sel).to(torch.uint8), dim=1, stable=True)[:, :k]
    pad = torch.arange(k, device=sel.device)[None, :] < sel.sum(1, keepdim=True)
    return idx, pad


def conditional_mean(
    x: torch.Tensor,
    visible: torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    ridge: float,
    group: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batched Gaussian conditional mean, rows grouped by visibility pattern.

    ``x`` (N, R), ``visible`` (N, R) bool, ``mean`` (R,), ``cov`` (R, R). Returns (N, R) in the
    dtype of ``cov``: visible entries copied, hidden entries
    ``mu_M + S_MV (S_VV + lam I)^-1 (x_V - mu_V)`` with ``lam = ridge * mean(diag S)``.

    With ``C = S + lam I`` and ``P = C^-1`` this equals ``mu_M - P_MM^-1 P_MV (x_V - mu_V)``, so
    each pattern needs one Cholesky factorisation of size ``min(|V|, |M|)`` (padded to the
    largest in the batch), not of size R.

    ``cov`` may also be ``(G, R, R)``: one covariance per group of rows, ``group`` (N,) giving
    each row's group (the window-adaptive conditional uses one covariance per window).
    """
    n, r = x.shape
    dtype = cov.dtype
    x = x.to(dtype)
    visible = visible.bool()
    if n == 0 or bool(visible.all()):
        return x.clone()
    eye = torch.eye(r, dtype=dtype, device=cov.device)
    grouped = cov.ndim == 3
    if grouped:
        if group is None:
            raise ValueError("a (G, R, R) covariance needs the row groups")
        lam = float(ridge) * torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)  # (G,)
        c = cov + lam[:, None, None] * eye
        key = torch.cat([visible.to(torch.int64), group.to(torch.int64)[:, None]], 1)
        uniq, inv = torch.unique(key, dim=0, return_inverse=True)
        ugroup = uniq[:, -1]
        uniq = uniq[:, :-1].bool()
    else:
        lam = float(ridge) * float(torch.diagonal(cov).mean())
        c = cov + lam * eye
        uniq, inv = torch.unique(visible.to(torch.uint8), dim=0, return_inverse=True)
        uniq = uniq.bool()
        ugroup = None
    u = uniq.shape[0]
    order, inv_sorted, pos, maxc = _group_rows(inv, u)
    centred = (x - mean) * visible.to(dtype)
    n_hidden = int((~uniq).sum(1).max())
    n_visible = int(uniq.sum(1).max())
    use_precision = n_hidden <= n_visible
    sel = ~uniq if use_precision else uniq
    idx, pad = _padded_indices(sel)  # (U, k)
    k = idx.shape[1]
    if k == 0:
        return torch.where(visible, x, mean.expand_as(x))
    if use_precision:
        # c is symmetric positive definite (covariance + ridge). Inverting through its Cholesky
        # factor also sidesteps an MKL LU failure (lu_solve "pivots") seen in batched
        # torch.linalg.inv after torch.set_num_threads changes the thread count mid-process.
        prec = torch.cholesky_inverse(torch.linalg.cholesky(c))
        prec = 0.5 * (prec + prec.mT)
        if grouped:
            a = prec[ugroup[:, None, None], idx[:, :, None], idx[:, None, :]]
            y = _grouped_matmul(centred, prec, group)
        else:
            a = prec[idx[:, :, None], idx[:, None, :]]
            y = centred @ prec  # (N, R); only the hidden entries are used
        rhs_rows = -torch.gather(y, 1, idx[inv])
    else:
        if grouped:
            a = c[ugroup[:, None, None], idx[:, :, None], idx[:, None, :]]
        else:
            a = c[idx[:, :, None], idx[:, None, :]]
        rhs_rows = torch.gather(centred, 1, idx[inv])
    pad2 = pad[:, :, None] & pad[:, None, :]
    a = torch.where(pad2, a, torch.eye(k, dtype=dtype, device=cov.device).expand_as(a))
    rhs_rows = rhs_rows * pad[inv].to(dtype)
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):
        chol = torch.linalg.cholesky(a + 1e-6 * torch.eye(k, dtype=dtype, device=cov.device))
    rhs = torch.zeros(u, maxc, k, dtype=dtype, device=x.device)
    rhs[inv_sorted, pos] = rhs_rows[order]
    # two triangular solves (batched cholesky_solve is pathologically slow on CPU for some sizes)
    half = torch.linalg.solve_triangular(chol, rhs.transpose(1, 2), upper=False)
    sol = torch.linalg.solve_triangular(chol.mT, half, upper=True).transpose(1, 2)  # (U, maxc, k)
    sol_rows = torch.empty(n, k, dtype=dtype, device=x.device)
    sol_rows[order] = sol[inv_sorted, pos]
    sol_rows = sol_rows * pad[inv].to(dtype)
    full = torch.zeros(n, r, dtype=dtype, device=x.device).scatter_add_(1, idx[inv], sol_rows)
    if use_precision:
        pred = full + mean
    elif grouped:
        pred = _grouped_matmul(full, cov, group) + mean
    else:
        pred = full @ cov + mean
    return torch.where(visible, x, pred)


def _grouped_matmul(rows: torch.Tensor, mats: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``out[i] = rows[i] @ mats[group[i]]`` without materialising one matrix per row."""
    out = torch.empty(rows.shape[0], mats.shape[-1], dtype=rows.dtype, device=rows.device)
    for g in torch.unique(group).tolist():
        sel = group == g
        out[sel] = rows[sel] @ mats[g]
    return out


def adaptive_conditional_mean(
    x: torch.Tensor,
    visible: torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    ridge: float,
    alpha: float,
) -> torch.Tensor:
    """Window-adaptive spatial Gaussian conditional of windows ``(B, L, R)``.

    Step 1: the population conditional fills the hidden entries. Step 2: each window's own
    covariance ``S_w`` is computed from that completed window (visible values only enter it),
    shrunk towards the training covariance, ``C_w = (1 - alpha) S + alpha S_w``, and the hidden
    entries are predicted again with ``C_w``. ``alpha = 0`` is the plain conditional.
    """
    b, length, r = x.shape
    dtype = cov.dtype
    flat_x = x.reshape(-1, r)
    flat_v = visible.reshape(-1, r)
    p0 = conditional_mean(flat_x, flat_v, mean, cov, ridge)
    if alpha <= 0:
        return p0.reshape(b, length, r)
    xc = (p0 - mean.to(dtype)).reshape(b, length, r)
    sw = xc.transpose(1, 2) @ xc / length  # (B, R, R), PSD
    cw = (1.0 - alpha) * cov + alpha * sw
    cw = 0.5 * (cw + cw.transpose(1, 2))
    group = torch.arange(b, device=x.device).repeat_interleave(length)
    return conditional_mean(flat_x, flat_v, mean, cw, ridge, group=group).reshape(b, length, r)
