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
    vectors with a :class:`PrefixProjector`. Optionally (``connectivity_dim > 0``) each ROI's
    row also holds a few numbers read from its connectivity profile in the signal *decoded from
    the same codes* (:func:`decoded_connectivity`).

Why the summary exists: the codes carry no age information as a bag (a ridge on a window's code
histogram is no better than the median age), only through *which ROI* holds which code, and a
LoRA-adapted LM reading a token sequence has to learn that ROI-specific readout through
attention. Pooling per ROI in a fixed ROI order hands it that readout directly, at 6 input
positions per window instead of 146-1,802 (see ``docs/lm.md``).

Why the connectivity branch exists: pooling over time discards how the ROIs co-fluctuate, which
is what functional connectivity (the strongest baseline) reads. The codes keep it: a ridge on
the correlations of the signal the tokenizer decodes from the codes alone predicts diagnosis
(AUC 0.76) as well as FC on the raw signal, where the pooled rows reach 0.60. The branch is a
function of the codes only, through the frozen tokenizer decoder, so the LM still reads nothing
but fMRI tokens.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import nn

__all__ = [
    "PAD_CODE",
    "PrefixProjector",
    "CodeSummary",
    "decoded_connectivity",
    "tokenizer_chunks",
    "valid_patches",
]

PAD_CODE = -1
"""Code of the time patches a short window lacks: a scan shorter than one window is read from
the whole patches it has, padded at the end (``fmrilm.lm.training.encode_windows``)."""


def valid_patches(codes: torch.Tensor) -> torch.Tensor:
    """Number of leading non-padded patches of each window, ``(B,)``.

    Raises ``ValueError`` unless the padding (:data:`PAD_CODE`) fills whole trailing patches,
    the same for every ROI, and each window keeps at least one patch.
    """
    present = codes != PAD_CODE  # (B, R, P)
    per_patch = present.all(1)
    if not bool((per_patch == present.any(1)).all()):
        raise ValueError("padded codes must pad whole patches (every ROI of a time patch)")
    n = per_patch.sum(1)
    prefix = torch.arange(codes.shape[2], device=codes.device)[None] < n[:, None]
    if not bool((per_patch == prefix).all()) or bool((n == 0).any()):
        raise ValueError("padding must follow the window's patches, and leave at least one")
    return n


def tokenizer_chunks(fmri_tokenizer, n_patches: int) -> list[tuple[int, int]]:
    """Patch spans ``[(start, stop), ...]`` of the tokenizer's own windows covering ``n_patches``.

    A window longer than the one the tokenizer was trained on (``config.window_length``) is
    encoded and decoded as consecutive windows of that length, the last one shorter: the
    tokenizer's temporal positions beyond its window were never trained. A tokenizer without a
    window length reads the whole window as one.
    """
    cfg = getattr(fmri_tokenizer, "config", None)
    length, patch = getattr(cfg, "window_length", None), getattr(cfg, "patch_length", None)
    size = int(length) // int(patch) if length and patch else n_patches
    size = max(1, size)
    return [(s, min(s + size, n_patches)) for s in range(0, n_patches, size)]


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


def decoded_connectivity(fmri_tokenizer, codes: torch.Tensor) -> torch.Tensor:
    """Fisher-z correlation between ROIs of the signal decoded from codes alone.

    Parameters
    ----------
    fmri_tokenizer : object
        Anything with ``decode(codes) -> windows (B, L, R)`` (:class:`fmrilm.tokenizer.FMRITokenizer`).
    codes : LongTensor of shape (B, R, P)
        Short windows padded with :data:`PAD_CODE` are decoded from their own patches only;
        windows longer than the tokenizer's are decoded as consecutive tokenizer windows
        (:func:`tokenizer_chunks`) and correlated over all their time points.

    Returns
    -------
    Tensor of shape (B, R, R)
        ``arctanh`` of the Pearson correlation over the window's time points (clipped to
        +-0.999), zero on the diagonal. Computed without gradient: the tokenizer stays frozen.
    """
    if not hasattr(fmri_tokenizer, "decode"):
        raise ValueError("the connectivity branch needs an fMRI tokenizer that can decode codes")
    device = next(iter(fmri_tokenizer.parameters()), codes).device
    codes = codes.long().to(device)
    n_valid = valid_patches(codes)
    b, r = codes.shape[:2]
    z = torch.zeros(b, r, r, device=device)
    with torch.no_grad():
        for n in torch.unique(n_valid).tolist():
            rows = torch.nonzero(n_valid == n).flatten()
            chunks = tokenizer_chunks(fmri_tokenizer, n)
            x = torch.cat(
                [fmri_tokenizer.decode(codes[rows, :, a:b]).float() for a, b in chunks], dim=1
            )  # (b', L, R)
            x = x - x.mean(1, keepdim=True)
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
            z[rows] = torch.atanh(torch.einsum("blr,bls->brs", x, x).clamp(-0.999, 0.999))
        z = z * (1 - torch.eye(r, device=device))
    return z.to(codes.device)


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
    connectivity_dim : int, default=0
        Numbers read from each ROI's connectivity profile (one shared ``R -> connectivity_dim``
        linear map) and appended to its row; 0 turns the branch off. ``forward`` then needs
        ``connectivity`` (:func:`decoded_connectivity`).
    connectivity_components : int, default=0
        Principal-component scores of the whole connectivity matrix (its upper triangle) appended
        to the projector's input; 0 turns them off. The components are fitted once, on the
        training windows, by :meth:`fit_connectivity_components` (buffers saved with the model):
        where the per-ROI branch reads connectivity through one map shared by all ROIs, these
        read the directions along which whole connectivity matrices differ between subjects,
        as the FC + linear baseline's features do.
    """

    def __init__(
        self,
        n_rois: int,
        embed_dim: int,
        n_tokens: int = 4,
        roi_dim: int = 32,
        roi_dropout: float = 0.0,
        connectivity_dim: int = 0,
        connectivity_components: int = 0,
    ):
        super().__init__()
        if min(n_rois, embed_dim, n_tokens, roi_dim) < 1:
            raise ValueError("n_rois, embed_dim, n_tokens and roi_dim must be >= 1")
        if connectivity_dim < 0:
            raise ValueError(f"connectivity_dim must be >= 0, got {connectivity_dim}")
        n_pairs = n_rois * (n_rois - 1) // 2
        if not 0 <= connectivity_components <= n_pairs:
            raise ValueError(
                f"connectivity_components must be in [0, {n_pairs}] (ROI pairs), "
                f"got {connectivity_components}"
            )
        if not 0.0 <= roi_dropout < 1.0:
            raise ValueError(f"roi_dropout must be in [0, 1), got {roi_dropout}")
        self.n_rois, self.n_tokens, self.connectivity_dim = n_rois, n_tokens, connectivity_dim
        self.reduce_roi = nn.Linear(embed_dim, roi_dim, bias=False)
        self.reduce_connectivity = (
            nn.Linear(n_rois, connectivity_dim, bias=False) if connectivity_dim else None
        )
        self.roi_dropout = nn.Dropout1d(roi_dropout)  # (B, R, k): drops whole ROIs
        self.connectivity_components = connectivity_components
        if connectivity_components:
            k = connectivity_components
            self.register_buffer("components_mean", torch.zeros(n_pairs))
            self.register_buffer("components", torch.zeros(k, n_pairs))
            self.register_buffer("components_scale", torch.ones(k))
            self.register_buffer("components_fitted", torch.tensor(False))
        self.projector = PrefixProjector(
            n_rois * (roi_dim + connectivity_dim) + connectivity_components, embed_dim, n_tokens
        )

    @property
    def reads_connectivity(self) -> bool:
        """Whether ``forward`` needs the windows' :func:`decoded_connectivity`."""
        return bool(self.connectivity_dim or self.connectivity_components)

    def _pairs(self, connectivity: torch.Tensor) -> torch.Tensor:
        iu = torch.triu_indices(self.n_rois, self.n_rois, 1, device=connectivity.device)
        return connectivity[:, iu[0], iu[1]]  # (B, R (R - 1) / 2)

    @torch.no_grad()
    def fit_connectivity_components(self, connectivity: torch.Tensor) -> None:
        """Fit the principal components of ``connectivity`` (N, R, R), training windows only.

        Scores are divided by their standard deviation on these windows, so each component
        enters the projector with unit variance.
        """
        k = self.connectivity_components
        if not k:
            raise ValueError("this summary reads no connectivity components (0 configured)")
        r = self.n_rois
        if connectivity.ndim != 3 or tuple(connectivity.shape[1:]) != (r, r):
            raise ValueError(f"connectivity must be (N, {r}, {r}), got {tuple(connectivity.shape)}")
        if len(connectivity) <= k:
            raise ValueError(
                f"{k} connectivity components need more than {k} windows, got {len(connectivity)}"
            )
        x = self._pairs(connectivity).double()
        if not torch.isfinite(x).all():
            raise ValueError("connectivity holds non-finite values")
        mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        comps = vh[:k]
        # a fixed sign per component (largest loading positive): the same fit on any machine
        sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
        comps = comps * sign[:, None]
        scale = ((x - mean) @ comps.T).std(0).clamp_min(1e-12)
        self.components_mean.copy_(mean)
        self.components.copy_(comps)
        self.components_scale.copy_(scale)
        self.components_fitted.fill_(True)

    def connectivity_scores(self, connectivity: torch.Tensor) -> torch.Tensor:
        """Standardised principal-component scores (B, connectivity_components)."""
        if not bool(self.components_fitted):
            raise RuntimeError(
                "the connectivity components are not fitted (fit_connectivity_components on the "
                "training windows first)"
            )
        x = self._pairs(connectivity).to(self.components.dtype)
        return (x - self.components_mean) @ self.components.T / self.components_scale

    def forward(
        self,
        code_rows: torch.Tensor,
        connectivity: torch.Tensor | None = None,
        n_patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Summary of windows from their code tokens' embedding rows.

        Parameters
        ----------
        code_rows : Tensor of shape (B, R, P, D)
            The LM's input embedding of each window's ``<fmri_k>`` tokens.
        n_patches : LongTensor of shape (B,), optional
            Patches present in each window (:func:`valid_patches`); the rows of later, padded
            patches are left out of the mean. Default: all ``P``.
        connectivity : Tensor of shape (B, R, R), optional
            Required when ``reads_connectivity``: :func:`decoded_connectivity` of the windows.

        Returns
        -------
        Tensor of shape (B, n_tokens, D)
        """
        if code_rows.ndim != 4 or code_rows.shape[1] != self.n_rois:
            raise ValueError(
                f"code rows must be (B, {self.n_rois}, P, D), got {tuple(code_rows.shape)}"
            )
        if n_patches is None:
            per_roi = reduce(code_rows, "b r p d -> b r d", "mean")
        else:
            p = code_rows.shape[2]
            n = n_patches.to(code_rows.device)
            weight = (torch.arange(p, device=code_rows.device)[None] < n[:, None]).to(code_rows)
            weight = weight / n[:, None].to(code_rows)  # (B, P): a mean over present patches
            per_roi = torch.einsum("brpd,bp->brd", code_rows, weight)
        reduced = self.reduce_roi(per_roi)
        if self.reads_connectivity:
            b, r = code_rows.shape[:2]
            if connectivity is None or tuple(connectivity.shape) != (b, r, r):
                got = None if connectivity is None else tuple(connectivity.shape)
                raise ValueError(f"connectivity must be (B, R, R) = {(b, r, r)}, got {got}")
        if self.reduce_connectivity is not None:
            profile = self.reduce_connectivity(connectivity.to(reduced.dtype))  # (B, R, c)
            reduced = torch.cat([reduced, profile], dim=-1)
        features = rearrange(self.roi_dropout(reduced), "b r k -> b (r k)")
        if self.connectivity_components:
            scores = self.connectivity_scores(connectivity).to(features.dtype)
            features = torch.cat([features, scores], dim=-1)
        return self.projector(features)
