"""BrainLM-format Arrow datasets into :class:`~fmrilm.data.records.ScanRecord` streams.

BrainLM (Caro et al., 2024) keeps parcellated recordings in Hugging Face ``datasets`` folders
(``save_to_disk``): one row per scan, one or more recording columns (A424 atlas: 424 parcels by T
time points, under names like ``Voxelwise_RobustScaler_Normalized_Recording``) and label columns
(``Filename``, ``eid``, ``Age.At.MHQ``, ``Gender``...). Datasets are memory-mapped and read one row
at a time. Labels map to the standard phenotypes through the same
:class:`~fmrilm.data.phenotypes.PhenotypeMapping` as phenotype tables.

Note that BrainLM's recording columns are usually already normalized (robust-scaled per parcel);
the store expects raw signal and scales on read, so a raw column is preferable where one exists.
Reading a column whose name says ``Normalized`` adds a warning to the ingest report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fmrilm.data.phenotypes import (
    PhenotypeMapping,
    is_missing,
    normalize_subject_id,
    standard_fields,
)
from fmrilm.data.readers import scan_id_for
from fmrilm.data.records import IngestError, IngestReport, ScanRecord

Action = Literal["error", "skip"]
Layout = Literal["time_by_roi", "roi_by_time", "auto"]

DEFAULT_RECORDING_COLUMNS: tuple[str, ...] = (
    "Voxelwise_RobustScaler_Normalized_Recording",
    "Recording",
    "recording",
)
"""Recording columns tried, in order, when none is named."""


def open_brainlm_datasets(
    path: str | Path, split: str | Sequence[str] | None = None
) -> list[tuple[str, Any]]:
    """Open a BrainLM dataset (memory-mapped) as ``(name, datasets.Dataset)`` pairs.

    Parameters
    ----------
    path : str or Path
        A ``save_to_disk`` folder of a ``Dataset`` or a ``DatasetDict``, one ``.arrow`` file, or a
        folder of ``.arrow`` files.
    split : str or sequence of str, optional
        Splits of a ``DatasetDict`` to read (all, in the dict's order, when None).

    Returns
    -------
    list of (str, datasets.Dataset)
        The name is the split, the arrow file's name, or ``""`` for a single dataset.

    Raises
    ------
    IngestError
        Naming the path: missing, not a dataset, unreadable, or a split that does not exist
        (the splits present are listed).
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise IngestError(f"BrainLM dataset {str(path)!r} does not exist")
    try:
        if path.is_file():
            return [(path.stem, datasets.Dataset.from_file(str(path)))]
        if (path / "dataset_dict.json").is_file():
            dd = datasets.load_from_disk(str(path))
            names = (
                list(dd) if split is None else [split] if isinstance(split, str) else list(split)
            )
            missing = [s for s in names if s not in dd]
            if missing:
                raise IngestError(
                    f"BrainLM dataset {str(path)!r} has no split {missing}; "
                    f"splits present: {list(dd)}"
                )
            return [(s, dd[s]) for s in names]
        if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
            return [("", datasets.load_from_disk(str(path)))]
        arrows = sorted(path.glob("*.arrow"))
        if arrows:
            return [(p.stem, datasets.Dataset.from_file(str(p))) for p in arrows]
    except IngestError:
        raise
    except Exception as e:  # datasets / pyarrow raise many kinds on corrupt input
        raise IngestError(
            f"BrainLM dataset {str(path)!r} cannot be read: {type(e).__name__}: {e}"
        ) from e
    raise IngestError(
        f"BrainLM dataset {str(path)!r} is neither a save_to_disk folder nor "
        "an .arrow file / folder of .arrow files"
    )


def orient_recording(
    x: np.ndarray, layout: Layout = "auto", n_rois: int | None = None
) -> np.ndarray:
    """A recording as (T, R).

    Parameters
    ----------
    x : ndarray, 2-D
    layout : {"auto", "time_by_roi", "roi_by_time"}
        ``"time_by_roi"``: ``x`` is (T, R); ``"roi_by_time"``: ``x`` is (R, T) (BrainLM's
        424 x T); ``"auto"``: the axis of length ``n_rois`` is the ROI axis (ties, T == R, read
        as time_by_roi); with no ``n_rois``, the smaller axis is the ROI axis.
    n_rois : int, optional
        Expected ROI count.

    Returns
    -------
    ndarray of shape (T, R)

    Raises
    ------
    ValueError
        Unknown layout, a non-2-D array, or (auto) no axis of length ``n_rois``.
    """
    if x.ndim != 2:
        raise ValueError(f"recording has shape {x.shape}, expected 2-D")
    if layout == "time_by_roi":
        return x
    if layout == "roi_by_time":
        return x.T
    if layout != "auto":
        raise ValueError(f"layout must be 'auto', 'time_by_roi' or 'roi_by_time', got {layout!r}")
    if n_rois is not None:
        if x.shape[1] == n_rois:
            return x
        if x.shape[0] == n_rois:
            return x.T
        raise ValueError(f"recording has shape {x.shape}: no axis of length n_rois={n_rois}")
    return x if x.shape[1] <= x.shape[0] else x.T


def _scalar_columns(ds: Any) -> list[str]:
    import datasets

    return [
        name
        for name, feat in ds.features.items()
        if isinstance(feat, (datasets.Value, datasets.ClassLabel))
    ]


def _as_array(value: Any) -> np.ndarray:
    x = np.asarray(value)
    if x.dtype == object:
        x = np.stack([np.asarray(r, dtype=np.float64) for r in value])
    return x


def iter_brainlm_scans(
    path: str | Path,
    mapping: PhenotypeMapping,
    *,
    recording_column: str | None = None,
    layout: Layout = "auto",
    n_rois: int | None = None,
    split: str | Sequence[str] | None = None,
    scan_id_column: str | None = None,
    tr: float | None = None,
    site: str = "",
    report: IngestReport | None = None,
    on_unreadable: Action = "skip",
    on_no_phenotype: Action = "skip",
) -> Iterator[ScanRecord]:
    """Stream the recordings of a BrainLM-format dataset as :class:`ScanRecord` s.

    Parameters
    ----------
    path : str or Path
        See :func:`open_brainlm_datasets`.
    mapping : PhenotypeMapping
        Label columns -> standard fields (e.g. ``subject_id="eid"``, ``age="Age.At.MHQ"``,
        ``sex="Gender"`` with ``sex_map={"0": "female", "1": "male"}`` for UK Biobank).
    recording_column : str, optional
        Column of recordings; default the first of :data:`DEFAULT_RECORDING_COLUMNS` present.
    layout : {"auto", "time_by_roi", "roi_by_time"}
        How recordings are stored. ``"auto"``: the axis of length ``n_rois`` is the ROI axis;
        with no ``n_rois``, the first recording's smaller axis is taken as ROIs and its length
        becomes ``n_rois`` for the rest of the dataset (so a later scan shorter than the ROI
        count is still read the right way round). BrainLM stores parcels x time and its scans
        are longer than 424 time points, so ``"auto"`` reads it correctly; pass the layout
        explicitly for datasets of short scans.
    n_rois : int, optional
        Expected ROI count (used by ``"auto"``).
    split : str or sequence of str, optional
        ``DatasetDict`` splits to read (all when None).
    scan_id_column : str, optional
        Column of unique scan ids (e.g. ``"Filename"``); default ``"<subject>"`` or
        ``"<subject>_ses-<session>"`` (``mapping.session``).
    tr : float, optional
        Repetition time (s) where ``mapping.tr`` gives none (UK Biobank: 0.735).
    site : str
        Site where ``mapping.site`` gives none.
    report : IngestReport, optional
        Skips (``"unreadable"``, ``"no_phenotype"``) and warnings are recorded here.
    on_unreadable : {"skip", "error"}
        A recording that cannot be read as a 2-D numeric array of the expected orientation.
    on_no_phenotype : {"skip", "error"}
        A row with no subject id.

    Yields
    ------
    ScanRecord
        (T, R) float32; ``source`` is ``"<path>"`` or ``"<path>[<split>]"`` plus ``#<row>``;
        ``phenotypes`` holds every scalar column of the row.

    Raises
    ------
    IngestError
        Naming the dataset: no recording column (columns present listed), a mapped label column
        absent, a label value that does not parse; and per the ``on_*`` choices.
    """
    for name, value in (("on_unreadable", on_unreadable), ("on_no_phenotype", on_no_phenotype)):
        if value not in ("error", "skip"):
            raise ValueError(f"{name} must be 'error' or 'skip', got {value!r}")
    if layout not in ("auto", "time_by_roi", "roi_by_time"):
        raise ValueError(f"layout must be 'auto', 'time_by_roi' or 'roi_by_time', got {layout!r}")
    report = report if report is not None else IngestReport()
    for part, ds in open_brainlm_datasets(path, split):
        where = f"{path}[{part}]" if part else str(path)
        columns = list(ds.column_names)
        if recording_column is not None:
            if recording_column not in columns:
                raise IngestError(
                    f"BrainLM dataset {where!r} has no recording column "
                    f"{recording_column!r}; columns present: {columns}"
                )
            rec = recording_column
        else:
            present = [c for c in DEFAULT_RECORDING_COLUMNS if c in columns]
            if not present:
                raise IngestError(
                    f"BrainLM dataset {where!r} has none of the recording columns "
                    f"{list(DEFAULT_RECORDING_COLUMNS)}; columns present: "
                    f"{columns}; pass recording_column="
                )
            rec = present[0]
        wanted = dict(mapping.columns())
        if scan_id_column is not None:
            wanted["scan_id_column"] = scan_id_column
        absent = [f"{k}={v!r}" for k, v in wanted.items() if v not in columns]
        if absent:
            raise IngestError(
                f"BrainLM dataset {where!r} has no column {', '.join(absent)}; "
                f"columns present: {columns}"
            )
        if "normalized" in rec.lower():
            report.warnings.append(
                f"{where}: recordings read from {rec!r}, which holds "
                "already-normalized signal, not raw"
            )
        labels = [c for c in _scalar_columns(ds) if c != rec]
        view = ds.select_columns([rec, *labels]).with_format(
            "numpy", columns=[rec], output_all_columns=True
        )
        for i in range(len(view)):
            row = view[i]
            label_row = {c: row[c] for c in labels}
            source = f"{where}#{i}"
            raw_subject = label_row.get(mapping.subject_id)
            if is_missing(raw_subject, mapping.missing_values):
                detail = f"column {mapping.subject_id!r} is empty ({raw_subject!r})"
                if on_no_phenotype == "error":
                    raise IngestError(f"no_phenotype: row {i} of {where!r}: {detail}")
                report.skip(f"{where}#{i}", "no_phenotype", detail, source=source)
                continue
            subject = normalize_subject_id(raw_subject)
            try:
                fields = standard_fields(label_row, mapping, source=where)
            except IngestError as e:
                raise IngestError(
                    f"BrainLM dataset {where!r}, row {i} (subject {subject!r}): {e}"
                ) from None
            session = fields.pop("session")
            scan_id = (
                str(label_row[scan_id_column])
                if scan_id_column is not None
                else scan_id_for(subject, session)
            )
            fields["site"] = fields["site"] or site
            fields["tr"] = fields["tr"] if fields["tr"] is not None else tr
            try:
                x = orient_recording(_as_array(row[rec]), layout, n_rois)
                if not (np.issubdtype(x.dtype, np.number) and x.size):
                    raise ValueError(
                        f"recording is not a non-empty numeric array ({x.dtype}, shape {x.shape})"
                    )
            except (ValueError, TypeError) as e:
                detail = f"column {rec!r}: {e}"
                if on_unreadable == "error":
                    raise IngestError(
                        f"unreadable: scan {scan_id!r} (row {i} of {where!r}): {detail}"
                    ) from None
                report.skip(scan_id, "unreadable", detail, subject_id=subject, source=source)
                continue
            if layout == "auto" and n_rois is None:
                n_rois = x.shape[1]
            yield ScanRecord(
                scan_id=scan_id,
                subject_id=subject,
                timeseries=np.ascontiguousarray(x, dtype=np.float32),
                session=session,
                source=source,
                **fields,
            )
