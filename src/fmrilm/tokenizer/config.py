"""Typed configuration of the fMRI tokenizer."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TokenizerConfig"]


@dataclass
class TokenizerConfig:
    """Sizes and switches of :class:`fmrilm.tokenizer.FMRITokenizer`.

    Defaults fit 200 ROIs x 160 time points (CC200, TR ~2 s).
    """

    n_rois: int = 200
    window_length: int = 160
    patch_length: int = 20
    max_patches: int = 64  # longest window (in patches) that encode() accepts
    d_model: int = 64
    n_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    mlp_ratio: float = 2.0
    temporal_kernel: int = 3  # depthwise convolution over patches (cheap temporal mixing)
    dropout: float = 0.0
    roi_coords: list[list[float]] | None = None  # optional (R, 3) atlas coordinates
    # vector quantizer (vector-quantize-pytorch)
    codebook_size: int = 1024
    code_dim: int = 32
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_threshold: float = 1.0
    # masked reconstruction: the decoder predicts a residual over the closed-form spatial
    # Gaussian conditional of the hidden tokens (computed from the visible input values of the
    # same window; training-split covariance, ridge and alpha chosen on validation)
    residual_over_conditional: bool = True
    conditional_ridge: float = 0.1
    # window-adaptive conditional: the covariance is shrunk towards each window's own
    # covariance with weight alpha (0 = the plain training-split conditional)
    conditional_alpha: float = 0.5
    # alignment with a language model's input embeddings
    align: bool = True
    lm_name: str | None = None
    lm_dim: int = 576
    projector_hidden: int = 256
    discriminator_hidden: int = 256
    # None: the domain classifier compares projected codes and text embeddings in the full LM
    # space, where a projection from code_dim dimensions spans a code_dim-dimensional manifold
    # that the classifier can always tell from full-rank text. k: compare them in the top-k
    # principal subspace of the text embeddings (fitted on the training text), where the
    # projector can match the text distribution; LM embeddings are then mean + coords @ basis.
    align_dim: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_patches(self) -> int:
        return self.window_length // self.patch_length

    def validate(self) -> None:
        if self.align_dim is not None and not 0 < self.align_dim < self.lm_dim:
            raise ValueError(
                f"align_dim must be in (0, lm_dim={self.lm_dim}), got {self.align_dim}"
            )
        if self.window_length % self.patch_length:
            raise ValueError(
                f"window_length {self.window_length} is not a multiple of patch_length "
                f"{self.patch_length}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_patches > self.max_patches:
            raise ValueError("window_length / patch_length exceeds max_patches")
        if self.roi_coords is not None and len(self.roi_coords) != self.n_rois:
            raise ValueError("roi_coords must have one row per ROI")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TokenizerConfig keys: {sorted(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TokenizerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
