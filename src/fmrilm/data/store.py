"""The dataset store: one folder that every later stage reads.

Writing streams records through the validator into an Arrow file (memory stays flat in the
number of scans), then computes splits and scaling statistics, all inside a temporary folder
beside the destination that is renamed into place only when complete: a crash or Ctrl-C
mid-build leaves no folder that :func:`open_store` would accept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from scipy.signal import resample
from tqdm.auto import tqdm

from fmrilm import __version__
from fmrilm.data.records import IngestReport, ScanRecord
from fmrilm.data.scaling import RobustScaler
from fmrilm.data.splits import (
    SPLITS,
    SplitConfig,
    cross_validation_split,
    cv_scheme_name,
    make_splits,
    parse_cv_scheme,
)
from fmrilm.data.validation import IngestPolicy, ScanValidator

STORE_FORMAT = "fmrilm-store"
STORE_VERSION = 1
SCANS_FILE = "scans.arrow"
METADATA_FILE = "metadata.json"
SPLITS_FILE = "splits.json"
SCALER_FILE = "scaler.json"
REPORT_FILE = "ingest_report.json"


def store_features(n_rois: int) -> datasets.Features:
    """Arrow schema of a store with ``n_rois`` ROIs."""
    return datasets.Features(
        {
            "scan_id": datasets.Value("string"),
            "subject_id": datasets.Value("string"),
            "session": datasets.Value("string"),
            "site": datasets.Value("string"),
            "tr": datasets.Value("float32"),
            "n_timepoints": datasets.Value("int32"),
            "timeseries": datasets.Array2D(shape=(None, n_rois), dtype="float32"),
            "roi_mask": datasets.Sequence(datasets.Value("bool")),
            "age": datasets.Value("float32"),
            "sex": datasets.Value("string"),
            "diagnosis": datasets.Value("string"),
            "fiq": datasets.Value("float32"),
            "mean_fd": datasets.Value("float32"),
            "phenotypes": datasets.Value("string"),
            "source": datasets.Value("string"),
        }
    )


@dataclass
class StoreMetadata:
    """What a store holds and how it was made (``metadata.json``)."""

    atlas: str = ""
    n_rois: int = 0
    roi_labels: list[str] = field(default_factory=list)
    source: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    target_tr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def _clean(value: Any) -> Any:
    """JSON-safe phenotype value: NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def resample_to_tr(x: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample a (T, R) series from ``tr`` to ``target_tr`` seconds (Fourier method)."""
    n = max(1, int(round(x.shape[0] * tr / target_tr)))
    if n == x.shape[0]:
        return x
    return resample(x, n, axis=0).astype(np.float32)


def _row(record: ScanRecord, x: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    return {
        "scan_id": record.scan_id,
        "subject_id": record.subject_id,
        "session": record.session or "",
        "site": record.site or "",
        "tr": float(record.tr),
        "n_timepoints": int(x.shape[0]),
        "timeseries": x,
        "roi_mask": mask.tolist(),
        "age": float(record.age) if record.age is not None else float("nan"),
        "sex": record.sex,
        "diagnosis": record.diagnosis,
        "fiq": float(record.fiq) if record.fiq is not None else float("nan"),
        "mean_fd": float(record.mean_fd) if record.mean_fd is not None else float("nan"),
        "phenotypes": json.dumps(
            {k: _clean(v) for k, v in record.phenotypes.items()}, default=_json_default
        ),
        "source": record.source,
    }


def build_store(
    records: Iterable[ScanRecord],
    path: str | Path,
    *,
    metadata: StoreMetadata | None = None,
    policy: IngestPolicy | None = None,
    split: SplitConfig | None = None,
    report: IngestReport | None = None,
    overwrite: bool = False,
    total: int | None = None,
    progress: bool = True,
) -> DatasetStore:
    """Validate a stream of scans and write them as a store at ``path``.

    Parameters
    ----------
    records : iterable of ScanRecord
        Consumed once, one at a time.
    path : str or Path
        Destination folder. It appears only when the store is complete.
    metadata : StoreMetadata
        Atlas, source, preprocessing; ``n_rois`` is filled in from the data.
    policy : IngestPolicy
        What to do with each kind of bad scan (see :mod:`fmrilm.data.validation`).
    split : SplitConfig
        Subject-level split parameters.
    report : IngestReport
        Report that readers have already written skips into (unreadable files, scans without
        phenotypes); the validator adds its own.
    overwrite : bool
        Replace an existing store at ``path``.
    total : int, optional
        Number of records, for the progress bar.

    Returns
    -------
    DatasetStore
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    metadata = metadata or StoreMetadata()
    policy = policy or IngestPolicy()
    split = split or SplitConfig()
    report = report or IngestReport()
    validator = ScanValidator(policy, report)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    started = time.time()
    try:
        writer: ArrowWriter | None = None
        for record in tqdm(records, total=total, desc="ingest", unit="scan", disable=not progress):
            mask = validator.check(record)
            if mask is None:
                continue
            x = np.ascontiguousarray(record.timeseries, dtype=np.float32)
            if metadata.target_tr is not None:
                x = resample_to_tr(x, float(record.tr), metadata.target_tr)
                record.phenotypes = {**record.phenotypes, "original_tr": float(record.tr)}
                record.tr = metadata.target_tr
                if x.shape[0] < policy.min_timepoints:
                    validator.problem(
                        "too_short",
                        record,
                        f"{x.shape[0]} time points after "
                        f"resampling to TR {metadata.target_tr}, fewer than "
                        f"{policy.min_timepoints}",
                    )
                    continue
            if writer is None:
                writer = ArrowWriter(
                    features=store_features(x.shape[1]), path=str(tmp / SCANS_FILE)
                )
            writer.write(_row(record, x, mask))
            report.n_kept += 1
        if writer is None:
            raise ValueError(
                f"no scan was kept out of {len(report.skipped)} read; skipped: {report.skip_counts()}"
            )
        writer.finalize()
        writer.close()
        # Every scan read was kept or skipped, by a reader (unreadable, no phenotype) or here.
        report.n_read = report.n_kept + len(report.skipped)
        metadata.n_rois = validator.n_rois
        if metadata.roi_labels and len(metadata.roi_labels) != metadata.n_rois:
            raise ValueError(f"{len(metadata.roi_labels)} ROI labels for {metadata.n_rois} ROIs")
        scans = datasets.Dataset.from_file(str(tmp / SCANS_FILE))
        subjects = scans.select_columns(["subject_id", "site"]).to_pandas()
        splits, split_warnings = make_splits(subjects, split)
        report.warnings.extend(split_warnings)
        (tmp / SPLITS_FILE).write_text(json.dumps(splits, indent=1))
        del scans
        _write_scalers(tmp, splits, split.seed)
        meta = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "fmrilm_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "n_scans": report.n_kept,
            "n_subjects": int(subjects["subject_id"].nunique()),
            "atlas": metadata.atlas,
            "n_rois": metadata.n_rois,
            "roi_labels": metadata.roi_labels,
            "source": metadata.source,
            "preprocessing": metadata.preprocessing,
            "target_tr": metadata.target_tr,
            "policy": policy.__dict__,
            "ingest_seconds": round(time.time() - started, 3),
            **metadata.extra,
        }
        report.save(tmp / REPORT_FILE)
        # metadata.json is written last: its presence marks a complete store.
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1, default=_json_default))
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, trash / "store")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_store(path)


def _write_scalers(folder: Path, splits: dict[str, dict], seed: int) -> None:
    store = DatasetStore(folder, _partial=True)
    scalers = {}
    for scheme in splits:
        train = store.split_indices(scheme, splits=splits)["train"]
        if len(train) == 0:
            raise ValueError(f"split scheme {scheme!r} has an empty training split")
        scalers[scheme] = RobustScaler.fit(
            (store.timeseries(i) for i in train), seed=seed
        ).to_dict()
    (folder / SCALER_FILE).write_text(json.dumps(scalers))


def _cv_fold_of(scheme: str, stored: dict) -> tuple[str, int, int] | None:
    """``(parent, n_folds, fold)`` when ``scheme`` is a cross-validation fold of a scheme in
    ``stored`` (and is not itself stored), else None."""
    if scheme in stored:
        return None
    cv = parse_cv_scheme(scheme)
    return cv if cv is not None and cv[0] in stored else None


class DatasetStore:
    """A store opened for reading; the scans stay on disk and are read on demand.

    Use :func:`open_store` to open one.
    """

    def __init__(self, path: str | Path, *, _partial: bool = False):
        self.path = Path(path)
        self.scans = datasets.Dataset.from_file(str(self.path / SCANS_FILE))
        self.metadata = {} if _partial else json.loads((self.path / METADATA_FILE).read_text())
        self._splits: dict | None = None
        self._scalers: dict | None = None
        self._table: pd.DataFrame | None = None
        self._index_timeseries()

    def _index_timeseries(self) -> None:
        # File offset and length of each scan's float32 values, so that reads are plain
        # positional reads (os.pread) of just the bytes asked for: they go through the page
        # cache without mapping the file, so a process's resident memory stays flat however
        # large the store and however much of it is read.
        file = str(self.path / SCANS_FILE)
        mapped = pa.memory_map(file)
        base = mapped.read_buffer(1).address
        mapped.seek(0)
        column = pa.ipc.open_stream(mapped).read_all().column("timeseries")
        offsets, lengths = [], []
        for chunk in column.chunks:
            storage = chunk.storage
            inner, values = storage.values, storage.values.values
            first = values.buffers()[1].address - base + values.offset * 4
            bounds = inner.offsets.to_numpy()[storage.offsets.to_numpy()]
            offsets.append(first + bounds[:-1].astype(np.int64) * 4)
            lengths.append(np.diff(bounds))
        mapped.close()
        self.n_rois = int(self.scans.features["timeseries"].shape[1])
        self._offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        self._n_timepoints = (
            np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        ) // self.n_rois
        self._file = file
        self._fd: int | None = None
        self._fd_pid = -1

    def _descriptor(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self._file, os.O_RDONLY), os.getpid()
        return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    def __len__(self) -> int:
        return self.scans.num_rows

    def __repr__(self) -> str:
        return f"DatasetStore({str(self.path)!r}, scans={len(self)}, rois={self.n_rois})"

    def timeseries(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Raw (T, R) float32 series of row ``i``, or its time points ``start:stop``.

        Only the bytes asked for are read.
        """
        n = int(self._n_timepoints[i])
        stop = n if stop is None else min(stop, n)
        if not 0 <= start <= stop:
            raise IndexError(f"time points {start}:{stop} out of range for scan {i} of length {n}")
        count = (stop - start) * self.n_rois
        data = os.pread(
            self._descriptor(), count * 4, int(self._offsets[i]) + start * self.n_rois * 4
        )
        if len(data) != count * 4:
            raise OSError(f"{self._file}: short read for scan {i}; the store is truncated")
        return np.frombuffer(data, dtype=np.float32).reshape(stop - start, self.n_rois)

    @property
    def table(self) -> pd.DataFrame:
        """Every column but the time series, one row per scan."""
        if self._table is None:
            cols = [c for c in self.scans.column_names if c not in ("timeseries", "roi_mask")]
            self._table = self.scans.select_columns(cols).to_pandas()
        return self._table

    def roi_mask(self, i: int) -> np.ndarray:
        return np.asarray(self.scans[i]["roi_mask"], dtype=bool)

    @property
    def split_schemes(self) -> list[str]:
        return list(self._load_splits())

    def _load_splits(self) -> dict:
        if self._splits is None:
            self._splits = json.loads((self.path / SPLITS_FILE).read_text())
        return self._splits

    def split_of_subjects(self, scheme: str = "site_stratified") -> dict[str, str]:
        """Subject -> "train" / "val" / "test" of ``scheme``.

        ``scheme`` is a stored scheme, or a cross-validation fold of one,
        ``"<scheme>-cv<K>-fold<i>"`` (:func:`fmrilm.data.splits.cross_validation_split`).
        """
        splits = self._load_splits()
        cv = _cv_fold_of(scheme, splits)
        if cv is not None:
            parent, n_folds, fold = cv
            seed = int(splits[parent].get("config", {}).get("seed", 0))
            return cross_validation_split(
                splits[parent]["assignments"], self.table, n_folds, fold, seed
            )
        if scheme not in splits:
            raise KeyError(
                f"split scheme {scheme!r} not in store {self.path}; schemes: {list(splits)}, "
                "or a cross-validation fold of one, e.g. "
                f"{cv_scheme_name(next(iter(splits)), 5, 0)!r}"
            )
        return splits[scheme]["assignments"]

    def split_indices(
        self, scheme: str = "site_stratified", *, splits: dict | None = None
    ) -> dict[str, np.ndarray]:
        """Row indices of each split of ``scheme``: {"train", "val", "test"}."""
        if splits is not None:
            self._splits = splits
        assignments = self.split_of_subjects(scheme)
        subject = np.asarray(self.scans["subject_id"])
        labels = np.array([assignments[s] for s in subject])
        return {name: np.flatnonzero(labels == name) for name in SPLITS}

    def scaler(self, scheme: str = "site_stratified") -> RobustScaler:
        """Robust scaler fitted on the training split of ``scheme``.

        A cross-validation fold (``"<scheme>-cv<K>-fold<i>"``) takes its parent's scaler: the
        parent's tokenizer was trained on inputs scaled by it, and the fold's models read that
        tokenizer's codes. Those statistics (medians and quartiles, no labels) have seen the
        fold's validation subjects that lie in the parent's training split, never its test split.
        """
        if self._scalers is None:
            self._scalers = json.loads((self.path / SCALER_FILE).read_text())
        cv = _cv_fold_of(scheme, self._scalers)
        if cv is not None:
            scheme = cv[0]
        if scheme not in self._scalers:
            raise KeyError(
                f"no scaler for split scheme {scheme!r} in {self.path}; "
                f"schemes: {list(self._scalers)}"
            )
        return RobustScaler.from_dict(self._scalers[scheme])

    def report(self) -> IngestReport:
        return IngestReport.load(self.path / REPORT_FILE)


def open_store(path: str | Path) -> DatasetStore:
    """Open a complete store for reading.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a complete store (no ``metadata.json``: absent, or a build that
        never finished).
    ValueError
        When the store's format or version is not one this fmrilm reads.
    """
    path = Path(path)
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a complete fmrilm store (no {METADATA_FILE}); "
            "build one with `fmrilm data ...`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != STORE_FORMAT:
        raise ValueError(f"{meta_path}: format is {meta.get('format')!r}, not {STORE_FORMAT!r}")
    if meta.get("version", 0) > STORE_VERSION:
        raise ValueError(
            f"{meta_path}: store version {meta['version']} is newer than this "
            f"fmrilm reads ({STORE_VERSION}); upgrade fmrilm"
        )
    return DatasetStore(path)
