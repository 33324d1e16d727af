"""ABIDE Preprocessed (PCP) through nilearn's own fetcher, and the bundled real sample of it."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmrilm.data.phenotypes import PhenotypeMapping, normalize_subject_id, standard_fields
from fmrilm.data.records import ScanRecord
from fmrilm.data.store import StoreMetadata

# Repetition time (s) per ABIDE I SITE_ID: the commonly cited ABIDE I table. LEUVEN (1.656 vs
# 1.667) and SBL (2.2 vs 2.5) differ between public tables; see docs/data.md.
ABIDE_TR = {
    "CALTECH": 2.0,
    "CMU": 2.0,
    "KKI": 2.5,
    "LEUVEN_1": 1.656,
    "LEUVEN_2": 1.656,
    "MAX_MUN": 3.0,
    "NYU": 2.0,
    "OHSU": 2.5,
    "OLIN": 1.5,
    "PITT": 1.5,
    "SBL": 2.2,
    "SDSU": 2.0,
    "STANFORD": 2.0,
    "TRINITY": 2.0,
    "UCLA_1": 3.0,
    "UCLA_2": 3.0,
    "UM_1": 2.0,
    "UM_2": 2.0,
    "USM": 2.0,
    "YALE": 2.0,
}
SAMPLE_NPZ = "abide_sample_cc200.npz"
SAMPLE_PHENOTYPES = "abide_sample_phenotypes.csv"
ABIDE_MAPPING = PhenotypeMapping.abide()


def abide_record(row: pd.Series | dict, timeseries: np.ndarray, source: str) -> ScanRecord:
    """A ScanRecord from one row of the PCP phenotype table and its (T, R) series.

    Phenotypes go through :meth:`PhenotypeMapping.abide` (``-9999`` and empty cells are
    missing); the TR comes from the site table.
    """
    row = {k: v for k, v in dict(row).items() if not str(k).startswith("Unnamed")}
    fields = standard_fields(row, ABIDE_MAPPING, source=source)
    fields.pop("tr")
    return ScanRecord(
        scan_id=str(row["FILE_ID"]),
        subject_id=normalize_subject_id(row["SUB_ID"]),
        timeseries=timeseries,
        tr=ABIDE_TR.get(fields["site"]),
        source=source,
        **fields,
    )


def iter_abide_pcp(
    data_dir: str | Path | None = None,
    *,
    pipeline: str = "cpac",
    band_pass_filtering: bool = True,
    global_signal_regression: bool = True,
    derivative: str = "rois_cc200",
    quality_checked: bool = True,
    n_subjects: int | None = None,
    sites: list[str] | None = None,
) -> tuple[Iterator[ScanRecord], int, StoreMetadata]:
    """ABIDE PCP scans through ``nilearn.datasets.fetch_abide_pcp``.

    On a machine with internet nilearn downloads what its cache lacks; offline it reads the
    cache in ``data_dir``.

    Returns
    -------
    records : iterator of ScanRecord
    total : number of scans nilearn returned
    metadata : StoreMetadata describing the source
    """
    from nilearn.datasets import fetch_abide_pcp

    if not derivative.startswith("rois_"):
        raise ValueError(f"derivative must be an ROI time series (rois_*), got {derivative!r}")
    kwargs: dict[str, Any] = {}
    if sites:
        kwargs["SITE_ID"] = list(sites)
    bunch = fetch_abide_pcp(
        data_dir=data_dir,
        n_subjects=n_subjects,
        pipeline=pipeline,
        band_pass_filtering=band_pass_filtering,
        global_signal_regression=global_signal_regression,
        derivatives=derivative,
        quality_checked=quality_checked,
        verbose=0,
        **kwargs,
    )
    series = bunch[derivative]
    phenotypes = bunch.phenotypic.reset_index(drop=True)
    if len(series) != len(phenotypes):
        raise ValueError(
            f"nilearn returned {len(series)} scans but {len(phenotypes)} phenotype rows"
        )
    strategy = (
        ("filt" if band_pass_filtering else "nofilt")
        + "_"
        + ("global" if global_signal_regression else "noglobal")
    )
    folder = Path(data_dir or "~/nilearn_data").expanduser() / "ABIDE_pcp" / pipeline / strategy

    def records() -> Iterator[ScanRecord]:
        for i in range(len(series)):
            row = phenotypes.iloc[i]
            source = str(folder / f"{row['FILE_ID']}_{derivative}.1D")
            yield abide_record(row, np.asarray(series[i], dtype=np.float32), source)
            series[i] = None  # let nilearn's copy go as we stream

    meta = StoreMetadata(
        atlas=derivative.removeprefix("rois_"),
        source="ABIDE I, Preprocessed Connectomes Project, via nilearn.datasets.fetch_abide_pcp",
        preprocessing={
            "pipeline": pipeline,
            "strategy": strategy,
            "derivative": derivative,
            "quality_checked": quality_checked,
            "tr_table": "ABIDE I site table (fmrilm.data.abide.ABIDE_TR)",
        },
    )
    return records(), len(series), meta


def sample_files() -> tuple[Path, Path]:
    """Paths of the bundled ABIDE sample: the fixed-point series (.npz) and its phenotypes."""
    folder = resources.files("fmrilm") / "sample"
    return Path(str(folder / SAMPLE_NPZ)), Path(str(folder / SAMPLE_PHENOTYPES))


def iter_abide_sample() -> tuple[Iterator[ScanRecord], int, StoreMetadata]:
    """The real ABIDE sample that ships with fmrilm (see ``fmrilm/sample/README.md``).

    Series are stored as int32 counts of 1e-6 (the exact 6-decimal values of the PCP files).
    """
    npz_path, csv_path = sample_files()
    phenotypes = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    npz = np.load(npz_path)

    def records() -> Iterator[ScanRecord]:
        for _, row in phenotypes.iterrows():
            x = (npz[row["FILE_ID"]] * 1e-6).astype(np.float32)
            yield abide_record(row, x, f"{npz_path}::{row['FILE_ID']}")

    meta = StoreMetadata(
        atlas="cc200",
        source="fmrilm bundled sample of ABIDE I (PCP, C-PAC, filt_global, rois_cc200)",
        preprocessing={
            "pipeline": "cpac",
            "strategy": "filt_global",
            "derivative": "rois_cc200",
            "quality_checked": True,
        },
    )
    return records(), len(phenotypes), meta
