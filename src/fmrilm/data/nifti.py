"""BIDS / fMRIPrep derivatives trees of 4-D BOLD images into ROI time series, one scan at a time.

Each preprocessed BOLD image is reduced to a (T, R) ROI time series with nilearn's
:class:`~nilearn.maskers.NiftiLabelsMasker` on a label atlas (``standardize=False``: the store keeps
raw signal and scales on read). Optionally, chosen columns of fMRIPrep's
``*_desc-confounds_timeseries.tsv`` beside each image are regressed out; their NaN first rows (the
derivative columns) are filled with the second row's values, as nilearn's ``load_confounds`` does.
The repetition time comes from the image's JSON sidecar (``RepetitionTime``, with BIDS inheritance
from parent folders), else from the NIfTI header's fourth zoom (converted to seconds).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fmrilm.data.phenotypes import (
    PhenotypeMapping,
    empty_fields,
    lookup_phenotype,
    standard_fields,
)
from fmrilm.data.readers import scan_id_for
from fmrilm.data.records import IngestError, IngestReport, ScanRecord

Action = Literal["error", "skip"]

DEFAULT_BOLD_GLOB = "sub-*/**/func/*desc-preproc_bold.nii.gz"
"""fMRIPrep's preprocessed BOLD images, with or without ``ses-*`` folders."""

_ENTITY = re.compile(r"(?P<key>[a-zA-Z0-9]+)-(?P<value>[a-zA-Z0-9.+]+)")
_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def _strip_ext(name: str) -> str:
    for ext in (".nii.gz", ".nii", ".json", ".tsv.gz", ".tsv"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name.split(".", 1)[0]


def parse_bids_entities(path: str | Path) -> dict[str, str]:
    """BIDS entities of a file name.

    Parameters
    ----------
    path : str or Path
        E.g. ``sub-01_ses-2_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz``.

    Returns
    -------
    dict
        Entity -> label (``{"sub": "01", "ses": "2", "task": "rest", ...}``) plus ``"suffix"``
        (``"bold"``) when the name ends with one.
    """
    stem = _strip_ext(Path(path).name)
    out: dict[str, str] = {}
    parts = stem.split("_")
    for part in parts:
        m = _ENTITY.fullmatch(part)
        if m:
            out[m["key"]] = m["value"]
    if parts and "-" not in parts[-1]:
        out["suffix"] = parts[-1]
    return out


def find_confounds_file(bold_path: str | Path) -> Path | None:
    """fMRIPrep confounds table of a BOLD image, or None.

    Parameters
    ----------
    bold_path : str or Path
        A ``*_desc-preproc_bold.nii.gz`` image.

    Returns
    -------
    Path or None
        ``<entities without space/res/den/desc>_desc-confounds_timeseries.tsv`` in the same folder
        (or fMRIPrep < 20.2's ``_desc-confounds_regressors.tsv``), when it exists.
    """
    bold_path = Path(bold_path)
    parts = _strip_ext(bold_path.name).split("_")[:-1]  # drop the "bold" suffix
    keep = [p for p in parts if p.split("-", 1)[0] not in ("space", "res", "den", "desc")]
    base = "_".join(keep)
    for suffix in ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv"):
        candidate = bold_path.with_name(base + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_confounds(
    path: str | Path, columns: Sequence[str], *, n_volumes: int | None = None
) -> np.ndarray:
    """Chosen columns of an fMRIPrep confounds table as a (T, C) float array.

    Parameters
    ----------
    path : str or Path
        Tab-separated table with a header line (fMRIPrep writes ``n/a`` for missing values).
    columns : sequence of str
        Column names or shell-style patterns (``"trans_*"``, ``"a_comp_cor_0[0-4]"``); each must
        match at least one column.
    n_volumes : int, optional
        Expected row count (the image's volumes).

    Returns
    -------
    ndarray of shape (T, C), float64
        NaN in the first row (derivative columns) is filled with the second row's value, as
        nilearn's ``load_confounds`` does.

    Raises
    ------
    IngestError
        Naming the file: unreadable table, a column or pattern matching nothing (the columns
        present are listed), a row count different from ``n_volumes``, NaN left after the fill.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", na_values=["n/a", "NA", "NaN", "nan", ""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise IngestError(f"confounds file {str(path)!r} cannot be read: {e}") from e
    chosen: list[str] = []
    for pattern in columns:
        hits = [c for c in df.columns if fnmatch.fnmatchcase(str(c), pattern)]
        if not hits:
            raise IngestError(
                f"confounds file {str(path)!r} has no column {pattern!r}; "
                f"columns present: {list(df.columns)}"
            )
        chosen.extend(h for h in hits if h not in chosen)
    if n_volumes is not None and len(df) != n_volumes:
        raise IngestError(
            f"confounds file {str(path)!r} has {len(df)} rows, the image has {n_volumes} volumes"
        )
    try:
        x = df[chosen].to_numpy(dtype=np.float64, copy=True)
    except (ValueError, TypeError) as e:
        raise IngestError(
            f"confounds file {str(path)!r}: columns {chosen} are not all numeric: {e}"
        ) from e
    if len(x) > 1:
        first = np.isnan(x[0])
        x[0, first] = x[1, first]
    if np.isnan(x).any():
        t, c = np.argwhere(np.isnan(x))[0]
        raise IngestError(
            f"confounds file {str(path)!r}: column {chosen[c]!r} is n/a at row {t + 1}"
        )
    return x


def _sidecars(bold_path: Path, root: Path | None) -> list[Path]:
    """JSON sidecars applying to a BOLD image, nearest first (BIDS inheritance)."""
    own = bold_path.with_name(_strip_ext(bold_path.name) + ".json")
    found = [own] if own.is_file() else []
    entities = parse_bids_entities(bold_path)
    folder = bold_path.parent
    stop = root.resolve() if root is not None else None
    while True:
        for candidate in sorted(folder.glob("*bold.json")):
            if candidate == own:
                continue
            ent = parse_bids_entities(candidate)
            if all(entities.get(k) == v for k, v in ent.items()):
                found.append(candidate)
        if stop is None or folder.resolve() == stop or folder.parent == folder:
            break
        folder = folder.parent
    return found


def repetition_time(
    bold_path: str | Path, img: Any = None, *, root: str | Path | None = None
) -> tuple[float | None, str]:
    """Repetition time of a BOLD image and where it came from.

    Parameters
    ----------
    bold_path : str or Path
        The image.
    img : nibabel image, optional
        The loaded image (loaded from ``bold_path`` when None).
    root : str or Path, optional
        Dataset root: sidecars are inherited from folders up to it (only the image's own folder
        when None).

    Returns
    -------
    (float or None, str)
        TR in seconds and its origin: the sidecar path, ``"header"``, or ``""`` when none.

    Raises
    ------
    IngestError
        A sidecar that is not valid JSON, or whose ``RepetitionTime`` is not a positive number;
        the message names the file and the value.
    """
    bold_path = Path(bold_path)
    for sidecar in _sidecars(bold_path, Path(root) if root is not None else None):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IngestError(f"sidecar {str(sidecar)!r} is not valid JSON: {e}") from e
        if "RepetitionTime" not in meta:
            continue
        value = meta["RepetitionTime"]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise IngestError(
                f"sidecar {str(sidecar)!r}: RepetitionTime {value!r} is not a "
                "positive number of seconds"
            )
        return float(value), str(sidecar)
    if img is None:
        import nibabel as nib

        img = nib.load(bold_path)
    header_tr = _header_tr(img)
    return (header_tr, "header") if header_tr is not None else (None, "")


def _header_tr(img: Any) -> float | None:
    """TR in seconds from the header's fourth zoom and time unit, or None."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not float(zooms[3]) > 0:
        return None
    try:
        unit = img.header.get_xyzt_units()[1]
    except (AttributeError, IndexError):
        unit = "unknown"
    return float(zooms[3]) * _TIME_UNITS.get(unit, 1.0)


def _no_standardize() -> bool | None:
    """nilearn's "do not standardize": None from 0.14 on (False is deprecated there)."""
    import nilearn

    m = re.match(r"(\d+)\.(\d+)", nilearn.__version__)
    return None if m is None or (int(m[1]), int(m[2])) >= (0, 14) else False


def atlas_labels(atlas: str | Path | Any) -> list[int]:
    """Non-zero label values of a label atlas image, sorted (the ROI order of the time series)."""
    import nibabel as nib

    img = nib.load(atlas) if isinstance(atlas, (str, Path)) else atlas
    values = np.unique(np.asarray(img.dataobj))
    return [int(v) for v in values if v != 0]


def iter_bids_scans(
    root: str | Path,
    atlas: str | Path | Any,
    *,
    bold_glob: str = DEFAULT_BOLD_GLOB,
    phenotypes: pd.DataFrame | None = None,
    mapping: PhenotypeMapping | None = None,
    confounds: Sequence[str] | None = None,
    tr: float | None = None,
    site: str = "",
    report: IngestReport | None = None,
    on_unreadable: Action = "skip",
    on_no_phenotype: Action = "skip",
    on_missing_tr: Action = "skip",
    masker_kwargs: dict[str, Any] | None = None,
) -> Iterator[ScanRecord]:
    """Stream the BOLD images of a BIDS / fMRIPrep derivatives tree as ROI time-series records.

    Parameters
    ----------
    root : str or Path
        Dataset root (the folder holding ``sub-*``).
    atlas : str, Path or nibabel image
        Label atlas (integer labels, 0 = background) in the images' space; resampled to each
        image's grid by nilearn (``resampling_target="data"``, unless ``masker_kwargs`` says
        otherwise). ROI ``i`` of the time series is the ``i``-th smallest non-zero label
        (:func:`atlas_labels`).
    bold_glob : str
        Pattern of the images under ``root`` (``**`` spans zero or more folders). The store
        expects one image per subject and session: narrow the pattern (``*space-MNI152NLin2009c``
        ``Asym_desc-preproc_bold.nii.gz``, ``*task-rest*run-1*``) when there are several.
    phenotypes, mapping : DataFrame and PhenotypeMapping, optional
        Phenotype table from :func:`~fmrilm.data.phenotypes.read_phenotypes` and its mapping;
        subjects are matched on the BIDS ``sub`` entity.
    confounds : sequence of str, optional
        Confound columns (names or shell patterns) regressed out of the signal, read from the
        fMRIPrep confounds table beside each image (:func:`find_confounds_file`,
        :func:`read_confounds`). None: no confound regression.
    tr : float, optional
        Repetition time (s) that overrides the sidecar and the header for every image.
        Otherwise: the sidecar's ``RepetitionTime``, else the header's zooms[3], else the
        phenotype table's TR column.
    site : str
        Site for scans whose phenotype row has none.
    report : IngestReport, optional
        Where skips are recorded (``"unreadable"``, ``"no_phenotype"``, ``"missing_tr"``) and
        sidecar/header TR disagreements are noted (``warnings``).
    on_unreadable, on_no_phenotype, on_missing_tr : {"skip", "error"}
        Record a skip, or raise :class:`IngestError` naming the file. Unreadable covers a
        corrupt image or sidecar, an image that is not 4-D, a missing or bad confounds table.
    masker_kwargs : dict, optional
        Extra :class:`~nilearn.maskers.NiftiLabelsMasker` arguments (``standardize`` is False
        unless given).

    Yields
    ------
    ScanRecord
        (T, R) float32 time series, ``scan_id`` ``"<sub>"`` or ``"<sub>_ses-<ses>"``, ``source``
        the image path.
    """
    for name, value in (
        ("on_unreadable", on_unreadable),
        ("on_no_phenotype", on_no_phenotype),
        ("on_missing_tr", on_missing_tr),
    ):
        if value not in ("error", "skip"):
            raise ValueError(f"{name} must be 'error' or 'skip', got {value!r}")
    if phenotypes is not None and mapping is None:
        raise ValueError("iter_bids_scans: mapping is required when phenotypes is given")
    import nibabel as nib
    from nilearn.maskers import NiftiLabelsMasker

    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"BIDS root {str(root)!r} is not a folder")
    report = report if report is not None else IngestReport()
    pheno_source = phenotypes.attrs.get("source", "") if phenotypes is not None else ""
    kwargs: dict[str, Any] = {"standardize": _no_standardize()}
    kwargs.update(masker_kwargs or {})
    try:
        atlas_img = nib.load(atlas) if isinstance(atlas, (str, Path)) else atlas
        masker = NiftiLabelsMasker(labels_img=atlas_img, **kwargs).fit()
    except Exception as e:  # nibabel / nilearn raise many kinds on a bad atlas
        raise IngestError(f"atlas {str(atlas)!r} cannot be used: {type(e).__name__}: {e}") from e

    def problem(
        kind: str, action: Action, scan_id: str, subject: str, source: str, detail: str
    ) -> None:
        if action == "error":
            raise IngestError(
                f"{kind}: scan {scan_id!r} (subject {subject!r}, file {source!r}): {detail}"
            )
        report.skip(scan_id, kind, detail, subject_id=subject, source=source)

    paths = sorted(p for p in root.glob(bold_glob) if p.is_file())
    for path in paths:
        source = str(path)
        entities = parse_bids_entities(path)
        subject = entities.get("sub", "")
        session = entities.get("ses", "")
        scan_id = scan_id_for(subject, session)
        if not subject:
            problem(
                "no_phenotype",
                on_no_phenotype,
                _strip_ext(path.name),
                "",
                source,
                "file name has no BIDS sub-<label> entity",
            )
            continue
        fields = empty_fields()
        if phenotypes is not None:
            found = lookup_phenotype(phenotypes, subject, session, mapping)
            if found is None:
                problem(
                    "no_phenotype",
                    on_no_phenotype,
                    scan_id,
                    subject,
                    source,
                    f"subject {subject!r} is not in the phenotype table {pheno_source!r}",
                )
                continue
            subject, row = found
            scan_id = scan_id_for(subject, session)
            fields = standard_fields(row, mapping, source=pheno_source)
        fields.pop("session", None)
        fields["site"] = fields["site"] or site

        try:
            img = nib.load(path)
            if len(img.shape) != 4:
                raise IngestError(f"image has shape {img.shape}, expected 4-D (x, y, z, time)")
            n_volumes = int(img.shape[3])
        except Exception as e:
            problem(
                "unreadable",
                on_unreadable,
                scan_id,
                subject,
                source,
                f"cannot read the image: {type(e).__name__}: {e}",
            )
            continue

        try:
            found_tr, tr_source = repetition_time(path, img, root=root)
        except IngestError as e:
            problem("unreadable", on_unreadable, scan_id, subject, source, str(e))
            continue
        if tr_source and tr_source != "header":
            header_tr = _header_tr(img)
            if header_tr is not None and found_tr is not None and abs(header_tr - found_tr) > 1e-3:
                report.warnings.append(
                    f"{source}: sidecar RepetitionTime {found_tr} s differs "
                    f"from the header's {header_tr} s; using the sidecar"
                )
        if tr is not None:
            found_tr, tr_source = float(tr), "argument"
        elif found_tr is None and fields["tr"] is not None:
            found_tr, tr_source = fields["tr"], "phenotypes"
        if found_tr is None:
            problem(
                "missing_tr",
                on_missing_tr,
                scan_id,
                subject,
                source,
                "no RepetitionTime in a sidecar, no time zoom in the header, no TR column",
            )
            continue
        fields["tr"] = found_tr

        conf = None
        if confounds:
            conf_path = find_confounds_file(path)
            if conf_path is None:
                problem(
                    "unreadable",
                    on_unreadable,
                    scan_id,
                    subject,
                    source,
                    "no *_desc-confounds_timeseries.tsv beside the image",
                )
                continue
            try:
                conf = read_confounds(conf_path, confounds, n_volumes=n_volumes)
            except IngestError as e:
                problem("unreadable", on_unreadable, scan_id, subject, source, str(e))
                continue

        try:
            x = masker.transform(img, confounds=conf)
        except Exception as e:
            problem(
                "unreadable",
                on_unreadable,
                scan_id,
                subject,
                source,
                f"ROI extraction failed: {type(e).__name__}: {e}",
            )
            continue
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(n_volumes, -1))
        yield ScanRecord(
            scan_id=scan_id,
            subject_id=subject,
            timeseries=x,
            session=session,
            source=source,
            **fields,
        )
