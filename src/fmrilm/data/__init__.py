"""Data foundation: ingest fMRI ROI time series into a dataset store, split, scale and window it."""

from fmrilm.data.records import IngestError, IngestReport, ScanRecord
from fmrilm.data.scaling import RobustScaler
from fmrilm.data.splits import SplitConfig, cv_scheme_name, parse_cv_scheme
from fmrilm.data.store import DatasetStore, StoreMetadata, build_store, open_store
from fmrilm.data.validation import IngestPolicy
from fmrilm.data.windows import WindowDataset, window_spans, window_starts

__all__ = [
    "DatasetStore",
    "IngestError",
    "IngestPolicy",
    "IngestReport",
    "RobustScaler",
    "ScanRecord",
    "SplitConfig",
    "StoreMetadata",
    "WindowDataset",
    "build_store",
    "cv_scheme_name",
    "open_store",
    "parse_cv_scheme",
    "window_spans",
    "window_starts",
]
