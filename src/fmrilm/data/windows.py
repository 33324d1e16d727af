"""Fixed-length windows over a store's scans, as a torch Dataset, with scan identity kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fmrilm.data.store import DatasetStore, open_store


def window_starts(n_timepoints: int, window_length: int, stride: int) -> np.ndarray:
    """Start indices of the windows of one scan; a scan shorter than a window has none.

    The last window is aligned to the scan's end when the stride does not reach it exactly, so
    that no time point is left out.
    """
    if window_length < 1 or stride < 1:
        raise ValueError(f"window_length and stride must be >= 1, got {window_length}, {stride}")
    if n_timepoints < window_length:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, n_timepoints - window_length + 1, stride)
    if starts[-1] != n_timepoints - window_length:
        starts = np.append(starts, n_timepoints - window_length)
    return starts


class WindowDataset(Dataset):
    """Windows of ``window_length`` time points, ``stride`` apart, from one split of a store.

    Each item is a dict: ``window`` (L, R) float32 tensor, robust-scaled with the scheme's
    training statistics (constant ROIs are set to 0 after scaling); ``roi_mask`` (R,) bool;
    ``scan_index`` (row in the store); ``start`` (first time point).

    Parameters
    ----------
    store : DatasetStore or path
    split : "train", "val", "test" or None (every scan)
    scheme : split scheme name ("site_stratified" or "heldout_sites")
    window_length, stride : int
    scale : bool
        Apply the robust scaler; False returns the raw signal.
    """

    def __init__(
        self,
        store: DatasetStore | str | Path,
        split: str | None = "train",
        *,
        scheme: str = "site_stratified",
        window_length: int = 160,
        stride: int = 80,
        scale: bool = True,
    ):
        self.store_path = Path(store.path if isinstance(store, DatasetStore) else store)
        self._store = store if isinstance(store, DatasetStore) else None
        store = self.store
        self.split, self.scheme = split, scheme
        self.window_length, self.stride = window_length, stride
        rows = np.arange(len(store)) if split is None else store.split_indices(scheme)[split]
        lengths = np.asarray(store.scans["n_timepoints"])
        index = [
            (r, s) for r in rows for s in window_starts(int(lengths[r]), window_length, stride)
        ]
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self.n_scans_without_window = int(sum(lengths[r] < window_length for r in rows))
        scaler = store.scaler(scheme) if scale else None
        self.median = None if scaler is None else scaler.median
        self.iqr = None if scaler is None else scaler.iqr
        masks = store.scans.select_columns(["roi_mask"]).with_format("numpy")["roi_mask"]
        self.roi_masks = (
            np.stack(list(masks)).astype(bool) if len(store) else np.zeros((0, 0), bool)
        )

    @property
    def store(self) -> DatasetStore:
        # Opened lazily so that DataLoader workers each map the file themselves.
        if self._store is None:
            self._store = open_store(self.store_path)
        return self._store

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        row, start = self.index[i]
        x = self.store.timeseries(int(row))[start : start + self.window_length]
        mask = self.roi_masks[row]
        if self.median is not None:
            x = (x - self.median) / self.iqr
            x = np.where(mask, x, 0.0)
        return {
            "window": torch.from_numpy(
                np.array(x, dtype=np.float32)
            ),  # a copy: the store is read-only
            "roi_mask": torch.from_numpy(mask.copy()),
            "scan_index": int(row),
            "start": int(start),
        }
