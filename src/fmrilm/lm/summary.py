"""Soft summary tokens: pooled features -> a few vectors in a causal LM's input space.

Two modules, smallest first:

:class:`PrefixProjector`
    a two-layer MLP (as in LLaVA-1.5) from one pooled feature vector per example to ``n_prefix``
    vectors of the LM's embedding width. The comparison study feeds it image-encoder and
    fMRI-encoder features (``fmrilm.study.PrefixLM``).
:class:`CodeSummary`
    the ``summary`` layout of the fMRI language model. It reads a window's codes through the
    LM's own input-embedding rows of the ``<fmri_k>`` tokens (the shared vocabulary, trainable),
    centred on their mean (``FMRILanguageModel.lm_inputs``), averages each ROI's rows over the
    window's time patches, maps every ROI's mean row to a few
    numbers with one shared linear map, and projects the ROI-ordered result to ``n_tokens``
    vectors with a :class:`PrefixProjector`.

Why the summary exists: the codes carry no age information as a bag (a ridge on a window's code
histogram is no better than the median age), only through *which ROI* holds which code, and a
LoRA-adapted LM reading a token sequence has to learn that ROI-specific readout through
attention. Pooling per ROI in a fixed ROI order hands it that readout directly, at 6 input
positions per window instead of 146-1,802 (see ``docs/lm.md``).
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import nn

__all__ = ["PrefixProjector", "CodeSummary"]


class PrefixProjector(nn.Module):
    """Pooled features (B, F) -> soft prefix (B, n_prefix, D).

    Parameters
    ----------
    feature_dim : int
        F, width of the pooled encoder features.
    embed_dim : int
        D, the language model's input-embedding width.
    n_prefix : int, default=4
        Number of prefix vectors.
    hidden_dim : int, optional
        Width of the hidden layer (default: ``embed_dim``).
    normalize : bool, default=True
        LayerNorm the input features first (encoders differ widely in feature scale).
    """

    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        n_prefix: int = 4,
        hidden_dim: int | None = None,
        normalize: bool = True,
    ):
        super().__init__()
        if min(feature_dim, embed_dim, n_prefix) < 1:
            raise ValueError("feature_dim, embed_dim and n_prefix must be >= 1")
        hidden = hidden_dim or embed_dim
        self.n_prefix, self.embed_dim = n_prefix, embed_dim
        self.norm = nn.LayerNorm(feature_dim) if normalize else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, n_prefix * embed_dim)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2:
            raise ValueError(f"features must be (B, F), got shape {tuple(features.shape)}")
        out = self.mlp(self.norm(features))
        return rearrange(out, "b (n d) -> b n d", n=self.n_prefix)


class CodeSummary(nn.Module):
    """Codes (B, R, P) -> ``n_tokens`` summary vectors (B, n_tokens, D) in the LM's input space.

    Parameters
    ----------
    n_rois : int
        R, ROIs per window (their order is fixed: the projector's weights are per ROI).
    embed_dim : int
        D, the LM's embedding width.
    n_tokens : int, default=4
        Summary vectors per window.
    roi_dim : int, default=32
        Width each ROI's mean code row is reduced to before the projector (the tokenizer's code
        vectors are 32-wide; ``R * roi_dim`` is the projector's input width).
    roi_dropout : float, default=0.0
        Probability of dropping a whole ROI's reduced row in training (``nn.Dropout1d`` over
        ROIs): the projector reads 6,400 numbers per window from about a thousand training
        windows, and without it the model memorises them.
    """

    def __init__(
        self,
        n_rois: int,
        embed_dim: int,
        n_tokens: int = 4,
        roi_dim: int = 32,
        roi_dropout: float = 0.0,
    ):
        super().__init__()
        if min(n_rois, embed_dim, n_tokens, roi_dim) < 1:
            raise ValueError("n_rois, embed_dim, n_tokens and roi_dim must be >= 1")
        if not 0.0 <= roi_dropout < 1.0:
            raise ValueError(f"roi_dropout must be in [0, 1), got {roi_dropout}")
        self.n_rois, self.n_tokens = n_rois, n_tokens
        self.reduce_roi = nn.Linear(embed_dim, roi_dim, bias=False)
        self.roi_dropout = nn.Dropout1d(roi_dropout)  # (B, R, k): drops whole ROIs
        self.projector = PrefixProjector(n_rois * roi_dim, embed_dim, n_tokens)

    def forward(self, code_rows: torch.Tensor) -> torch.Tensor:
        """Summary of windows from their code tokens' embedding rows.

        Parameters
        ----------
        code_rows : Tensor of shape (B, R, P, D)
            The LM's input embedding of each window's ``<fmri_k>`` tokens.

        Returns
        -------
        Tensor of shape (B, n_tokens, D)
        """
        if code_rows.ndim != 4 or code_rows.shape[1] != self.n_rois:
            raise ValueError(
                f"code rows must be (B, {self.n_rois}, P, D), got {tuple(code_rows.shape)}"
            )
        per_roi = reduce(code_rows, "b r p d -> b r d", "mean")
        reduced = self.roi_dropout(self.reduce_roi(per_roi))
        return self.projector(rearrange(reduced, "b r k -> b (r k)"))
