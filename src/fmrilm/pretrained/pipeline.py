"""The pretrained pipeline: checks a scan against what the model was trained on, then answers.

:class:`Pipeline` wraps a trained :class:`~fmrilm.lm.model.FMRILanguageModel` folder and its
``release.json`` (what the model expects and what it measured). It refuses a scan the model cannot
read honestly (another ROI count, non-finite values, shorter than one window, most ROIs flat) with
:class:`ScanRefused`, and warns when the scan is readable but unlike the training data (TR or
signal scale outside the training range). ``predict_store`` answers every scan of a store into a
CSV file, one row per scan, flushed as it goes, so that a killed run resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Pipeline", "ScanCheck", "ScanRefused", "check_scan", "scan_scale"]

# most ROIs flat: another atlas, a mask mismatch or an empty file, not a readable scan
MAX_FLAT_ROI_FRACTION = 0.2


class ScanRefused(ValueError):
    """The scan cannot be answered honestly by this model (the message says why)."""


@dataclass
class ScanCheck:
    """What :func:`check_scan` found: the (T, R) array and any warnings."""

    timeseries: np.ndarray
    warnings: list[str] = field(default_factory=list)
    n_windows: int = 0


def scan_scale(x: np.ndarray) -> float:
    """Median over ROIs of each ROI's inter-quartile range (the scan's signal scale)."""
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    iqr = q75 - q25
    iqr = iqr[iqr > 0]
    return float(np.median(iqr)) if iqr.size else 0.0


def check_scan(
    timeseries: np.ndarray, expects: dict[str, Any], *, tr: float | None = None, name: str = "scan"
) -> ScanCheck:
    """Refuse or warn about a raw (T, R) scan given what the model ``expects``.

    Parameters
    ----------
    timeseries : array of shape (T, R)
    expects : dict
        ``n_rois``, ``window_length``, ``stride``, ``tr_range`` (seconds), ``scale_range``
        (:func:`scan_scale` over the training scans) and ``atlas`` (a name, for messages);
        ``min_window_length`` and ``patch_length`` when the model reads a scan shorter than one
        window from one window of its whole patches.
    tr : float, optional
        Repetition time of the scan in seconds, checked against ``tr_range`` when given.
    name : str
        How messages name the scan (its file).

    Raises
    ------
    ScanRefused
        Wrong shape or ROI count, non-finite values, fewer time points than one window (or than
        ``min_window_length`` when the model reads shorter windows), or more than 20% of the
        ROIs constant.
    """
    from fmrilm.data.windows import window_spans

    x = np.asarray(timeseries, dtype=np.float64)
    n_rois, wl = int(expects["n_rois"]), int(expects["window_length"])
    atlas = expects.get("atlas", f"{n_rois}-ROI atlas")
    if x.ndim != 2:
        raise ScanRefused(f"{name}: expected a 2-D (time x ROI) array, got shape {x.shape}")
    if x.shape[1] != n_rois:
        hint = " (is the file stored ROI x time? use --transpose)" if x.shape[0] == n_rois else ""
        raise ScanRefused(
            f"{name}: has {x.shape[1]} ROI columns; the model reads {n_rois} ({atlas}){hint}"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        t, r = np.argwhere(bad)[0]
        raise ScanRefused(
            f"{name}: {int(bad.sum())} non-finite values (first at time point {t}, ROI {r}); "
            "interpolate or drop them before asking"
        )
    shortest = expects.get("min_window_length")
    patch = int(expects.get("patch_length") or 1)
    spans = window_spans(len(x), wl, int(expects["stride"]), shortest, patch)
    n_windows = len(spans)
    if n_windows == 0:
        least = f"{wl}-point window" if shortest is None else f"window ({shortest} points)"
        raise ScanRefused(f"{name}: {len(x)} time points, fewer than one {least} of the model")
    flat = int((np.ptp(x, axis=0) == 0).sum())
    if flat > MAX_FLAT_ROI_FRACTION * n_rois:
        raise ScanRefused(
            f"{name}: {flat} of {n_rois} ROIs are constant; the scan does not look like "
            f"{atlas} time series"
        )
    warnings = []
    if n_windows == 1 and spans[0][1] < wl:
        warnings.append(
            f"{len(x)} time points, shorter than one {wl}-point window: answered from one "
            f"{int(spans[0][1])}-point window, with less data than most training scans"
        )
    if flat:
        warnings.append(f"{flat} constant ROIs are read as zeros")
    lo, hi = expects.get("tr_range") or (None, None)
    if tr is None:
        if lo is not None:
            warnings.append(f"TR not given; the model was trained on TR {lo:g}-{hi:g} s (--tr)")
    elif lo is not None and not (lo / 1.25 <= tr <= hi * 1.25):
        warnings.append(
            f"TR {tr:g} s is outside the training range {lo:g}-{hi:g} s: windows span a "
            "different duration, expect degraded answers"
        )
    s_lo, s_hi = expects.get("scale_range") or (None, None)
    scale = scan_scale(x)
    if s_lo is not None and not (s_lo / 2 <= scale <= s_hi * 2):
        warnings.append(
            f"signal scale {scale:.3g} (median ROI IQR) is far outside the training scans' "
            f"{s_lo:.3g}-{s_hi:.3g}: other preprocessing? expect degraded answers"
        )
    return ScanCheck(x.astype(np.float32), warnings, n_windows)


class Pipeline:
    """A trained fMRI LM plus what it expects of a scan.

    Parameters
    ----------
    folder : str or Path
        A model folder (``FMRILanguageModel.save_pretrained``) with a ``release.json`` (written
        by ``fmrilm.pretrained.release``); without one only the model's own config is checked.
    threads : int, optional
        torch CPU threads.
    """

    def __init__(self, folder: str | Path, *, threads: int | None = None):
        import torch

        from fmrilm.lm.model import FMRILanguageModel

        self.folder = Path(folder)
        if not (self.folder / "lm_config.json").exists():
            raise FileNotFoundError(f"{self.folder} is not an fmrilm model folder")
        if threads:
            torch.set_num_threads(int(threads))
        self.model = FMRILanguageModel.from_pretrained(self.folder)
        self.model.eval()
        release = self.folder / "release.json"
        self.release = json.loads(release.read_text()) if release.exists() else {}
        cfg = self.model.config
        self.expects = {
            "n_rois": cfg.n_rois,
            "window_length": cfg.window_length,
            "stride": cfg.stride,
            "min_window_length": cfg.min_window_length,
            "patch_length": cfg.patch_length,
            **self.release.get("expects", {}),
        }

    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.model.tasks]

    def read(self, scan, *, key: str | None = None, transpose: bool = False) -> np.ndarray:
        """A (T, R) array from an array or a time-series file."""
        if isinstance(scan, (str, Path)):
            from fmrilm.data.readers import read_timeseries

            return read_timeseries(Path(scan), key=key, transpose=transpose)
        return np.asarray(scan)

    def predict(
        self,
        scan,
        questions: list[str] | None = None,
        *,
        tr: float | None = None,
        balanced: bool = True,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Answer ``questions`` (default: every task) for one raw scan (array or file).

        Returns
        -------
        dict
            ``answers`` (task -> answer dict of :func:`fmrilm.lm.evaluation.answer_scan`),
            ``warnings``, ``n_timepoints``, ``n_windows``, ``scan``.

        Raises
        ------
        ScanRefused
            See :func:`check_scan`.
        """
        import torch

        from fmrilm.lm.evaluation import answer_scan

        if name is None:
            name = str(scan) if isinstance(scan, (str, Path)) else "scan"
        checked = check_scan(self.read(scan), self.expects, tr=tr, name=name)
        unknown = [q for q in questions or [] if q not in self.tasks]
        if unknown:
            raise ValueError(f"unknown question {unknown[0]!r}; this model answers {self.tasks}")
        with torch.no_grad():
            answers = answer_scan(self.model, checked.timeseries, questions, balanced=balanced)
        return {
            "scan": name,
            "n_timepoints": int(len(checked.timeseries)),
            "n_windows": checked.n_windows,
            "warnings": checked.warnings,
            "answers": answers,
        }

    # ------------------------------------------------------------------ whole stores
    def columns(self) -> list[str]:
        """CSV columns of :meth:`predict_store`."""
        cols = ["row", "scan_id", "subject_id", "site", "n_windows"]
        for t in self.model.tasks:
            if t.kind == "regression":
                cols += [t.name, f"{t.name}_low", f"{t.name}_high"]
            else:
                cols += [t.name, *[f"p_{t.name}_{a}" for a in t.answers]]
        return cols + ["warnings", "refused"]

    def _row(self, i: int, meta: dict, res: dict | None, refused: str = "") -> dict:
        row = {"row": i, **meta, "refused": refused}
        if res is None:
            return row
        row["n_windows"] = res["n_windows"]
        row["warnings"] = "; ".join(w for w in res["warnings"] if not w.startswith("TR not"))
        for t in self.model.tasks:
            a = res["answers"][t.name]
            if a["parse_failure"]:
                continue
            if t.kind == "regression":
                row[t.name] = round(float(a["value"]), 4)
                row[f"{t.name}_low"], row[f"{t.name}_high"] = a["interval"]
            else:
                row[t.name] = a["answer"]
                for k, v in a["probabilities"].items():
                    row[f"p_{t.name}_{k}"] = round(float(v), 6)
        return row

    def predict_store(
        self,
        store,
        out: str | Path,
        *,
        split: str | None = None,
        scheme: str | None = None,
        shard: tuple[int, int] = (0, 1),
        progress: bool = True,
    ) -> dict[str, Any]:
        """Answer every scan of a store (or of one split) into ``out`` (CSV), resumably.

        One row per scan in store order, written and flushed as soon as it is answered; a scan
        the model refuses gets a row whose ``refused`` column says why (nothing is dropped). An
        existing ``out`` is continued: its complete rows are kept and their scans skipped (a
        half-written last line from a killed run is cut off). ``shard=(k, n)`` answers rows
        ``k, k + n, ...`` only, for ``n`` processes side by side.

        Returns
        -------
        dict
            ``written``, ``skipped_existing``, ``refused``, ``seconds``, ``scans_per_second``.
        """
        import time

        from tqdm.auto import tqdm

        from fmrilm.data import open_store

        if not hasattr(store, "split_indices"):
            store = open_store(store)
        k, n = shard
        if not (0 <= k < n):
            raise ValueError(f"shard must be k/n with 0 <= k < n, got {k}/{n}")
        if split is None:
            rows = np.arange(len(store.table))
        else:
            rows = np.asarray(store.split_indices(scheme or self.model.config.scheme)[split])
        rows = np.sort(rows)[k::n]
        out = Path(out)
        done = _resume_csv(out, self.columns())
        table = store.table.reset_index(drop=True)
        todo = [int(i) for i in rows if int(i) not in done]
        tr_col = table["tr"] if "tr" in table.columns else None
        t0 = time.time()
        refused = 0
        new = not out.exists()
        with out.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns())
            if new:
                writer.writeheader()
            for i in tqdm(todo, desc="fmrilm predict", unit="scan", disable=not progress):
                meta = {
                    "scan_id": str(table.loc[i, "scan_id"]),
                    "subject_id": str(table.loc[i, "subject_id"]),
                    "site": str(table.loc[i, "site"]),
                }
                tr = float(tr_col[i]) if tr_col is not None and tr_col[i] == tr_col[i] else None
                try:
                    res = self.predict(store.timeseries(i), tr=tr, name=meta["scan_id"])
                    row = self._row(i, meta, res)
                except ScanRefused as e:
                    refused += 1
                    row = self._row(i, meta, None, refused=str(e))
                writer.writerow(row)
                f.flush()
                os.fsync(f.fileno())
        seconds = time.time() - t0
        return {
            "written": len(todo),
            "skipped_existing": int(len(rows) - len(todo)),
            "refused": refused,
            "seconds": seconds,
            "scans_per_second": len(todo) / seconds if seconds > 0 else None,
        }


def _resume_csv(path: Path, columns: list[str]) -> set[int]:
    """Rows already in ``path``; cut a half-written last line; refuse other columns."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    if not data:
        path.unlink()
        return set()
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != columns:
            raise ValueError(
                f"{path} has other columns than this model writes; choose another --out"
            )
        return {int(r["row"]) for r in reader}
