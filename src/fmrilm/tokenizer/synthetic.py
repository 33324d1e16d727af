"""Synthetic windows with spatial structure, for tests and benchmarks (no store needed)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticWindows"]


class SyntheticWindows(Dataset):
    """Windows ``x(t) = A s(t) + noise`` with ``k`` smooth latent sources shared by all windows.

    Items are dicts like ``fmrilm.data.WindowDataset``'s: ``window`` (L, R) float32,
    ``roi_mask`` (R,) bool, ``scan_index``, ``start``. ``nan_at`` plants NaN in one window
    (for the non-finite-loss test).
    """

    def __init__(
        self,
        n: int = 64,
        window_length: int = 32,
        n_rois: int = 12,
        n_sources: int = 3,
        noise: float = 0.3,
        seed: int = 0,
        mixing_seed: int = 1234,
        nan_at: int | None = None,
    ):
        rng = np.random.default_rng(seed)
        mix = np.random.default_rng(mixing_seed).normal(size=(n_sources, n_rois))
        s = rng.normal(size=(n, window_length + 8, n_sources))
        kernel = np.hanning(7)
        kernel /= kernel.sum()
        s = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), 1, s)[:, 4:-4]
        s /= s.std()
        x = s @ mix + noise * rng.normal(size=(n, window_length, n_rois))
        self.x = torch.from_numpy((x / x.std()).astype(np.float32))
        if nan_at is not None:
            self.x[nan_at, 0, 0] = float("nan")
        self.mixing = mix

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {
            "window": self.x[i],
            "roi_mask": torch.ones(self.x.shape[2], dtype=torch.bool),
            "scan_index": int(i),
            "start": 0,
        }
