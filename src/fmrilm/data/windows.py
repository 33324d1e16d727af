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


def window_spans(
    n_timepoints: int,
    window_length: int,
    stride: int,
    min_length: int | None = None,
    length_multiple: int = 1,
) -> np.ndarray:
    """``(start, length)`` of the windows of one scan, shape ``(k, 2)``.

    Windows of ``window_length`` points, as :func:`window_starts`. A scan shorter than that but
    with at least ``min_length`` points gets one window instead of none: from its start, of the
    largest multiple of ``length_multiple`` (the tokenizer's patch length) that it holds, so that
    no scan whose length allows an answer is lost.
    """
    starts = window_starts(n_timepoints, window_length, stride)
    if len(starts):
        return np.stack([starts, np.full_like(starts, window_length)], axis=1)
    if min_length is not None:
        length = n_timepoints // length_multiple * length_multiple
        if length >= min_length:
            return np.asarray([[0, length]], dtype=np.int64)
    return np.zeros((0, 2), dtype=np.int64)


def check_min_length(window_length: int, min_length: int | None, length_multiple: int) -> None:
    """Raise ``ValueError`` unless ``min_length`` is None or in [1, window_length]."""
    if length_multiple < 1:
        raise ValueError(f"length_multiple must be >= 1, got {length_multiple}")
    if min_length is not None and not length_multiple <= min_length <= window_length:
        raise ValueError(
            f"min_length must be between the patch length ({length_multiple}) and the window "
            f"length ({window_length}), got {min_length}"
        )


class WindowDataset(Dataset):
    """Windows of ``window_length`` time points, ``stride`` apart, from one split of a store.

    Each item is a dict: ``window`` (L, R) float32 tensor (L = ``window_length``, or shorter for
    a scan answered from one short window, see ``min_length``), robust-scaled with the scheme's
    training statistics (constant ROIs are set to 0 after scaling); ``roi_mask`` (R,) bool;
    ``scan_index`` (row in the store); ``start`` (first time point).

    ``index`` holds one ``(row, start, length)`` per window.

    Parameters
    ----------
    store : DatasetStore or path
    split : "train", "val", "test" or None (every scan)
    scheme : split scheme name ("site_stratified" or "heldout_sites")
    window_length, stride : int
    scale : bool
        Apply the robust scaler; False returns the raw signal.
    min_length : int, optional
        A scan shorter than ``window_length`` but with at least ``min_length`` points gives one
        shorter window (:func:`window_spans`); None (default) leaves such scans out. Windows of
        several lengths cannot share a default-collated batch.
    length_multiple : int, default=1
        Short windows are cut to a multiple of this (the tokenizer's patch length).
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
        min_length: int | None = None,
        length_multiple: int = 1,
    ):
        check_min_length(window_length, min_length, length_multiple)
        self.store_path = Path(store.path if isinstance(store, DatasetStore) else store)
        self._store = store if isinstance(store, DatasetStore) else None
        store = self.store
        self.split, self.scheme = split, scheme
        self.window_length, self.stride = window_length, stride
        rows = np.arange(len(store)) if split is None else store.split_indices(scheme)[split]
        lengths = np.asarray(store.scans["n_timepoints"])
        spans = {
            int(r): window_spans(
                int(lengths[r]), window_length, stride, min_length, length_multiple
            )
            for r in rows
        }
        index = [(r, s, n) for r, sp in spans.items() for s, n in sp]
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
        self.n_scans_without_window = int(sum(len(sp) == 0 for sp in spans.values()))
        self.n_short_windows = int((self.index[:, 2] < window_length).sum())
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
        row, start, length = self.index[i]
        x = self.store.timeseries(int(row))[start : start + length]
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
