"""Checks every scan passes before it enters a store, under a documented policy.

Each problem is either a clear error (``IngestError`` naming the scan, subject and file) or a
recorded skip in the ingest report, per :class:`IngestPolicy`. Constant ROI columns (for example
ROIs outside a subject's functional mask, all zero) are never a reason to skip: they are kept and
marked False in the scan's ``roi_mask`` so that nothing downstream divides by their zero variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fmrilm.data.records import IngestError, IngestReport, ScanRecord

Action = Literal["error", "skip"]


@dataclass
class IngestPolicy:
    """What ingest does with each kind of bad scan: ``"error"`` stops with a message naming the
    scan and file, ``"skip"`` leaves the scan out and records the reason in the ingest report.

    Attributes
    ----------
    nonfinite : NaN or Inf values in the time series.
    too_short : fewer than ``min_timepoints`` time points (usually the window length).
    roi_mismatch : ROI count differs from the store's (the first kept scan, or ``n_rois``).
    duplicate : a second scan with the same (subject, session), or the same scan id.
    no_phenotype : a scan with no row in the phenotype table.
    missing_tr : no repetition time from any source.
    unreadable : a file that cannot be read or parsed (truncated, wrong format).
    min_timepoints : shortest scan kept.
    n_rois : expected ROI count; None takes the first kept scan's.
    """

    nonfinite: Action = "skip"
    too_short: Action = "skip"
    roi_mismatch: Action = "skip"
    duplicate: Action = "error"
    no_phenotype: Action = "skip"
    missing_tr: Action = "skip"
    unreadable: Action = "skip"
    min_timepoints: int = 1
    n_rois: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "nonfinite",
            "too_short",
            "roi_mismatch",
            "duplicate",
            "no_phenotype",
            "missing_tr",
            "unreadable",
        ):
            value = getattr(self, name)
            if value not in ("error", "skip"):
                raise ValueError(f"IngestPolicy.{name} must be 'error' or 'skip', got {value!r}")
        if self.min_timepoints < 1:
            raise ValueError(f"IngestPolicy.min_timepoints must be >= 1, got {self.min_timepoints}")


def constant_roi_mask(timeseries: np.ndarray) -> np.ndarray:
    """(R,) bool: True where the ROI's signal varies over time, False where it is constant."""
    return np.ptp(timeseries, axis=0) > 0


class ScanValidator:
    """Applies an :class:`IngestPolicy` to a stream of records, one at a time (memory stays flat)."""

    def __init__(self, policy: IngestPolicy, report: IngestReport):
        self.policy = policy
        self.report = report
        self.n_rois = policy.n_rois
        self._seen_scans: set[str] = set()
        self._seen_sessions: set[tuple[str, str]] = set()

    def problem(
        self,
        kind: str,
        record: ScanRecord | None,
        detail: str,
        *,
        scan_id: str = "",
        subject_id: str = "",
        source: str = "",
    ) -> None:
        """Raise or record one problem of the given policy kind."""
        if record is not None:
            scan_id, subject_id, source = record.scan_id, record.subject_id, record.source
        if getattr(self.policy, kind) == "error":
            raise IngestError(
                f"{kind}: scan {scan_id!r} (subject {subject_id!r}, file {source!r}): {detail}"
            )
        self.report.skip(scan_id, kind, detail, subject_id=subject_id, source=source)

    def check(self, record: ScanRecord) -> np.ndarray | None:
        """Validate one record. Return its ROI mask if it is kept, None if it is skipped."""
        x = record.timeseries
        if x.ndim != 2:
            self.problem("unreadable", record, f"time series has shape {x.shape}, expected (T, R)")
            return None
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))
            t, r = bad[0]
            self.problem(
                "nonfinite", record, f"{len(bad)} NaN/Inf values, first at time {t}, ROI {r}"
            )
            return None
        if self.n_rois is not None and x.shape[1] != self.n_rois:
            self.problem("roi_mismatch", record, f"{x.shape[1]} ROIs, the store has {self.n_rois}")
            return None
        if x.shape[0] < self.policy.min_timepoints:
            self.problem(
                "too_short",
                record,
                f"{x.shape[0]} time points, fewer than {self.policy.min_timepoints}",
            )
            return None
        if record.tr is None or not np.isfinite(record.tr) or record.tr <= 0:
            self.problem("missing_tr", record, f"repetition time is {record.tr!r}")
            return None
        if record.scan_id in self._seen_scans:
            self.problem("duplicate", record, "scan id already in the store")
            return None
        key = (record.subject_id, record.session)
        if key in self._seen_sessions:
            self.problem(
                "duplicate",
                record,
                f"subject {record.subject_id!r} session {record.session!r} already in the store",
            )
            return None
        self._seen_scans.add(record.scan_id)
        self._seen_sessions.add(key)
        if self.n_rois is None:
            self.n_rois = x.shape[1]
        mask = constant_roi_mask(x)
        if not mask.all():
            self.report.masked_rois[record.scan_id] = np.flatnonzero(~mask).tolist()
        return mask
