"""Robust per-ROI scaling: (x - median) / IQR, fitted on a training split only.

BrainLM's published preprocessing computes ``x - median / iqr`` (operator precedence); the
parentheses here are deliberate and tested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass
class RobustScaler:
    """Per-ROI median and interquartile range.

    ``transform`` returns ``(x - median) / iqr``; ROIs with zero IQR (constant everywhere in the
    training data) get an IQR of 1 so that nothing is divided by zero.
    """

    median: np.ndarray
    iqr: np.ndarray

    @classmethod
    def fit(
        cls, scans: Iterable[np.ndarray], *, max_rows: int = 200_000, seed: int = 0
    ) -> RobustScaler:
        """Fit on an iterable of (T, R) arrays.

        To keep memory flat in the store's size, at most ``max_rows`` time points are kept, drawn
        uniformly at random (seeded) across all scans by reservoir sampling; for the median and
        quartiles of a few hundred thousand values the sampling error is far below the
        between-subject spread.
        """
        rng = np.random.default_rng(seed)
        reservoir: np.ndarray | None = None
        seen = 0
        for x in scans:
            x = np.asarray(x, dtype=np.float32)
            if reservoir is None:
                reservoir = np.empty((max_rows, x.shape[1]), dtype=np.float32)
            take = min(len(x), max(0, max_rows - seen))
            reservoir[seen : seen + take] = x[:take]
            rest = x[take:]
            if len(rest):
                # Reservoir sampling (Algorithm R), vectorised over the rows of this scan.
                idx = seen + take + np.arange(len(rest))
                j = rng.integers(0, idx + 1)
                keep = j < max_rows
                reservoir[j[keep]] = rest[keep]
            seen += len(x)
        if reservoir is None:
            raise ValueError("RobustScaler.fit got no scans (is the training split empty?)")
        sample = reservoir[: min(seen, max_rows)]
        q25, median, q75 = np.percentile(sample, [25, 50, 75], axis=0)
        iqr = q75 - q25
        iqr = np.where(iqr > 0, iqr, 1.0)
        return cls(median.astype(np.float32), iqr.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        if x.shape[-1] != self.median.shape[0]:
            raise ValueError(
                f"scan has {x.shape[-1]} ROIs, the scaler was fitted on {self.median.shape[0]}"
            )
        return ((x - self.median) / self.iqr).astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        return (x * self.iqr + self.median).astype(np.float32)

    def to_dict(self) -> dict:
        return {"median": self.median.tolist(), "iqr": self.iqr.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> RobustScaler:
        return cls(np.asarray(d["median"], np.float32), np.asarray(d["iqr"], np.float32))
