"""One scan on its way into a store, and the report of what ingest kept and skipped."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SEXES = ("male", "female")
DIAGNOSES = ("autism", "control")
# Standard phenotype columns every store has; everything else stays in `phenotypes` (JSON).
STANDARD_PHENOTYPES = ("age", "sex", "diagnosis", "fiq", "mean_fd")


@dataclass
class ScanRecord:
    """One scan: its (T, R) ROI time series, identity and phenotypes.

    Parameters
    ----------
    scan_id : str
        Unique id of the scan in the store.
    subject_id : str
        Subject id; splits never divide one subject's scans.
    timeseries : ndarray of shape (T, R)
        Time x ROI signal.
    site : str
        Acquisition site ("" when unknown).
    tr : float or None
        Repetition time in seconds.
    session : str
        Session label ("" when the source has none).
    age, sex, diagnosis, fiq, mean_fd
        Standard phenotypes; NaN / None when missing. ``sex`` is "male" or "female",
        ``diagnosis`` is "autism" or "control".
    phenotypes : dict
        Every column of the source phenotype row, raw.
    source : str
        Path of the file the scan came from.
    """

    scan_id: str
    subject_id: str
    timeseries: np.ndarray
    site: str = ""
    tr: float | None = None
    session: str = ""
    age: float = float("nan")
    sex: str | None = None
    diagnosis: str | None = None
    fiq: float = float("nan")
    mean_fd: float = float("nan")
    phenotypes: dict[str, Any] = field(default_factory=dict)
    source: str = ""


class IngestError(ValueError):
    """A scan or table that cannot be ingested under the chosen policy; the message names it."""


@dataclass
class Skip:
    """A scan left out of the store, and why."""

    scan_id: str
    subject_id: str
    source: str
    reason: str
    detail: str = ""


@dataclass
class IngestReport:
    """What an ingest read, kept, masked and skipped."""

    source: str = ""
    n_read: int = 0
    n_kept: int = 0
    skipped: list[Skip] = field(default_factory=list)
    masked_rois: dict[str, list[int]] = field(default_factory=dict)  # scan_id -> 0-based ROIs
    warnings: list[str] = field(default_factory=list)

    def skip(
        self,
        record_or_id: ScanRecord | str,
        reason: str,
        detail: str = "",
        *,
        subject_id: str = "",
        source: str = "",
    ) -> None:
        if isinstance(record_or_id, ScanRecord):
            r = record_or_id
            self.skipped.append(Skip(r.scan_id, r.subject_id, r.source, reason, detail))
        else:
            self.skipped.append(Skip(record_or_id, subject_id, source, reason, detail))

    def skip_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s.reason] = counts.get(s.reason, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skip_counts"] = self.skip_counts()
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> IngestReport:
        d = json.loads(Path(path).read_text())
        d.pop("skip_counts", None)
        d["skipped"] = [Skip(**s) for s in d["skipped"]]
        return cls(**d)
