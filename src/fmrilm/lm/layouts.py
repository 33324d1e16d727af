"""Token layouts: a window's codes ``(R, P)`` as a sequence of LM token ids, and its cost.

Every layout wraps the window in ``<fmri> ... </fmri>``:

``roi_major``
    ``<fmri> <fmri_roi> c[0,0] .. c[0,P-1] <fmri_roi> c[1,0] .. </fmri>``: one group per ROI,
    ``R * (P + 1) + 2`` tokens (1,802 for 200 ROIs x 8 patches).
``time_major``
    ``<fmri> <fmri_t> c[0,0] .. c[R-1,0] <fmri_t> c[0,1] .. </fmri>``: one group per time patch,
    ``P * (R + 1) + 2`` tokens (1,610 for 200 x 8).
``compact``
    ROI-major over a subset of ROIs (by default 16 evenly spaced ones, or a list given by the
    user), and optionally every ``patch_stride``-th patch: ``R' * (P' + 1) + 2`` tokens (146 for
    16 x 8). The LM's cost grows with the token count (training about ``6 N`` FLOPs per token for
    an ``N``-parameter LM, plus attention), so this is the layout a 2-core CPU can afford.
``summary``
    ``<fmri> s_1 .. s_S </fmri>``: ``S`` summary positions (``summary_tokens``, default 4) whose
    input vectors the model computes from *all* the window's code tokens, pooled per ROI
    (:class:`fmrilm.lm.summary.CodeSummary`); in ``input_ids`` they hold the ``<fmri_roi>`` id
    as a placeholder. ``S + 2`` tokens per window whatever the number of ROIs and patches.

Any layout accepts ``rois`` and ``patch_stride``; ``compact`` only changes the default ROI set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fmrilm.lm.summary import PAD_CODE

__all__ = ["TokenLayout", "LAYOUTS", "compute_budget"]

LAYOUTS = ("roi_major", "time_major", "compact", "summary")


@dataclass(frozen=True)
class TokenLayout:
    """How codes ``(R, P)`` become a token sequence.

    Parameters
    ----------
    kind : {"roi_major", "time_major", "compact", "summary"}
    n_rois, n_patches : int
        Shape of the codes the layout reads.
    rois : tuple of int or None
        ROIs kept, in order (None: all ROIs, or ``compact_rois`` evenly spaced for compact).
    patch_stride : int
        Keep patches ``0, s, 2s, ...``.
    compact_rois : int
        ROIs kept by the compact layout when ``rois`` is None.
    summary_tokens : int
        Summary positions of the summary layout.
    """

    kind: str
    n_rois: int
    n_patches: int
    rois: tuple[int, ...] | None = None
    patch_stride: int = 1
    compact_rois: int = 16
    summary_tokens: int = 4

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"unknown layout {self.kind!r}; choose from {LAYOUTS}")
        if self.rois is not None:
            rois = tuple(int(r) for r in self.rois)
            if not rois or min(rois) < 0 or max(rois) >= self.n_rois:
                raise ValueError(f"layout rois must be in [0, {self.n_rois}), got {self.rois}")
            object.__setattr__(self, "rois", rois)
        if self.patch_stride < 1:
            raise ValueError("patch_stride must be >= 1")
        if self.summary_tokens < 1:
            raise ValueError("summary_tokens must be >= 1")
        if self.kind == "summary" and (self.rois is not None or self.patch_stride != 1):
            raise ValueError("the summary layout reads every ROI and patch: drop rois/patch_stride")

    # ---------------------------------------------------------------- what is kept
    @property
    def roi_index(self) -> np.ndarray:
        """Indices of the ROIs kept, in sequence order."""
        if self.rois is not None:
            return np.asarray(self.rois, dtype=np.int64)
        if self.kind == "compact":
            k = min(self.compact_rois, self.n_rois)
            return np.unique(np.linspace(0, self.n_rois - 1, k).round().astype(np.int64))
        return np.arange(self.n_rois)

    @property
    def patch_index(self) -> np.ndarray:
        """Indices of the time patches kept."""
        return np.arange(0, self.n_patches, self.patch_stride)

    @property
    def n_tokens(self) -> int:
        """Tokens per window, delimiters included."""
        r, p = len(self.roi_index), len(self.patch_index)
        if self.kind == "summary":
            return self.summary_tokens + 2
        if self.kind == "time_major":
            return p * (r + 1) + 2
        return r * (p + 1) + 2

    # ---------------------------------------------------------------- codes -> ids
    def token_ids(self, codes: torch.Tensor, vocab) -> torch.Tensor:
        """Token ids of windows.

        Parameters
        ----------
        codes : LongTensor of shape (B, R, P) or (R, P)
            Codes in ``[0, K)``; the summary layout also reads :data:`~fmrilm.lm.summary.PAD_CODE`
            (the patches a short window lacks).
        vocab : FMRIVocabulary
            Ids of the code and delimiter tokens (:func:`fmrilm.lm.vocab.extend_vocabulary`).

        Returns
        -------
        LongTensor of shape (B, n_tokens) or (n_tokens,)
        """
        squeeze = codes.dim() == 2
        if squeeze:
            codes = codes[None]
        if codes.dim() != 3 or codes.shape[1:] != (self.n_rois, self.n_patches):
            raise ValueError(
                f"codes must have shape (B, {self.n_rois}, {self.n_patches}), got "
                f"{tuple(codes.shape)}"
            )
        codes = codes.long()
        lowest = PAD_CODE if self.kind == "summary" else 0
        if codes.numel() and (codes.min() < lowest or codes.max() >= len(vocab.code_ids)):
            why = " (padded short windows are read by the summary layout only)"
            raise ValueError(
                f"codes outside [0, {len(vocab.code_ids)})"
                + (why if int(codes.min()) == PAD_CODE else "")
            )
        if self.kind == "summary":  # placeholders: the model writes their input vectors
            b = codes.shape[0]
            ids = torch.full((b, self.n_tokens), vocab.roi_sep_id, dtype=torch.long)
            ids[:, 0], ids[:, -1] = vocab.open_id, vocab.close_id
            ids = ids.to(codes.device)
            return ids[0] if squeeze else ids
        ri = torch.as_tensor(self.roi_index, device=codes.device)
        pi = torch.as_tensor(self.patch_index, device=codes.device)
        c = codes.index_select(1, ri).index_select(2, pi)  # (B, R', P')
        if self.kind == "time_major":
            c, sep = c.transpose(1, 2), vocab.time_sep_id  # (B, P', R')
        else:
            sep = vocab.roi_sep_id
        ids = vocab.code_ids.to(codes.device)[c]
        b, g, n = ids.shape
        seps = torch.full((b, g, 1), sep, dtype=torch.long, device=codes.device)
        body = torch.cat([seps, ids], dim=2).reshape(b, g * (n + 1))
        open_ = torch.full((b, 1), vocab.open_id, dtype=torch.long, device=codes.device)
        close = torch.full((b, 1), vocab.close_id, dtype=torch.long, device=codes.device)
        out = torch.cat([open_, body, close], dim=1)
        return out[0] if squeeze else out

    def describe(self) -> dict:
        """JSON-ready summary: kind, ROIs and patches kept, tokens per window."""
        out = {
            "kind": self.kind,
            "n_rois_kept": int(len(self.roi_index)),
            "n_patches_kept": int(len(self.patch_index)),
            "tokens_per_window": self.n_tokens,
        }
        if self.kind == "summary":
            out["summary_tokens"] = self.summary_tokens
        return out


def compute_budget(
    layout: TokenLayout,
    *,
    n_params: int,
    n_layers: int,
    d_model: int,
    text_tokens: int = 20,
    batch_size: int = 8,
    trainable_fraction: float = 0.0,
) -> dict:
    """Tokens and FLOPs per window and per training step.

    Uses the usual dense-transformer estimate: a forward pass costs ``2 N + 2 n_layers T d``
    FLOPs per token (weights + attention scores over a context of ``T`` tokens, averaged over
    causal positions as ``T/2``, counted for QK^T and AV). Full training costs 3x the forward
    (``6 N``); LoRA skips most weight gradients, about ``(4 + 2 f) N`` with ``f`` the trainable
    fraction; we report the full-training figure as the upper bound and the LoRA one.

    Parameters
    ----------
    layout : TokenLayout
    n_params : int
        Parameters of the LM (embedding table excluded is more exact, included is an upper bound).
    n_layers, d_model : int
    text_tokens : int, default=20
        Question + answer tokens per example.
    batch_size : int, default=8
    trainable_fraction : float, default=0.0
        Trainable parameters / all parameters (LoRA).

    Returns
    -------
    dict
        ``tokens_per_window``, ``tokens_per_example``, ``forward_flops_per_example``,
        ``train_flops_per_step_full``, ``train_flops_per_step_lora``, ``inference_flops_per_window``.
    """
    t = layout.n_tokens + text_tokens
    fwd_token = 2 * n_params + 2 * n_layers * (t / 2) * d_model * 2
    fwd = fwd_token * t
    return {
        "layout": layout.describe(),
        "tokens_per_window": layout.n_tokens,
        "tokens_per_example": t,
        "forward_flops_per_example": fwd,
        "inference_flops_per_window": fwd,
        "train_flops_per_step_full": 3 * fwd * batch_size,
        "train_flops_per_step_lora": (2 + trainable_fraction) * fwd * batch_size,
        "batch_size": batch_size,
    }
