"""ROI time-series files (``.1D``, ``.tsv``, ``.csv``, ``.txt``, ``.npy``, ``.npz``, ``.mat``) into
:class:`~fmrilm.data.records.ScanRecord` streams.

:func:`read_timeseries` reads one file into a (T, R) float32 array or raises
:class:`~fmrilm.data.records.IngestError` naming the file. :func:`iter_timeseries_files` walks many
files one at a time (only one scan is in memory at once), joins each to its phenotype row and
yields records; it does not validate them (that is :class:`~fmrilm.data.validation.ScanValidator`'s
job), except for the two problems only a reader sees: unreadable files and files with no
phenotype row, each an error or a recorded skip per the caller's choice.
"""

from __future__ import annotations

import glob
import gzip
import math
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fmrilm.data.phenotypes import (
    PhenotypeMapping,
    empty_fields,
    lookup_phenotype,
    standard_fields,
)
from fmrilm.data.records import IngestError, IngestReport, ScanRecord

Action = Literal["error", "skip"]

TEXT_SUFFIXES = (".1d", ".tsv", ".csv", ".txt")
ARRAY_SUFFIXES = (".npy", ".npz", ".mat")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + ARRAY_SUFFIXES

DEFAULT_SUBJECT_PATTERN = (
    r"sub-(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?"
    r"|(?:^|[_-])(?P<digits>\d+)(?=[_.-]|$)"
)
"""Default file-name pattern: a BIDS ``sub-<label>`` (with an optional ``_ses-<label>`` right
after it), else the first run of digits standing alone between ``_``/``-``/``.`` separators or
the ends of the file stem (``Pitt_0050003_rois_cc200`` -> ``0050003``; ``scan_012`` -> ``012``;
the ``200`` of ``cc200`` is not alone and does not match)."""

_NAN_WORDS = {"nan", "n/a", "na", "-nan", "+nan"}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for s in SUPPORTED_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(name).suffix


def _as_2d(x: np.ndarray, path: Path, what: str, transpose: bool) -> np.ndarray:
    if (
        not isinstance(x, np.ndarray)
        or x.dtype == object
        or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool)
    ):
        dtype = getattr(x, "dtype", type(x).__name__)
        raise IngestError(
            f"time-series file {str(path)!r}: {what} is not a numeric array (dtype {dtype})"
        )
    if x.ndim != 2:
        raise IngestError(
            f"time-series file {str(path)!r}: {what} has shape {x.shape}, "
            "expected a 2-D (time, ROI) array"
        )
    if np.iscomplexobj(x):
        raise IngestError(f"time-series file {str(path)!r}: {what} is complex ({x.dtype})")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise IngestError(f"time-series file {str(path)!r}: {what} is empty (shape {x.shape})")
    if transpose:
        x = x.T
    return np.ascontiguousarray(x, dtype=np.float32)


def _parse_float(token: str) -> float:
    try:
        return float(token)
    except ValueError:
        if token.strip().lower() in _NAN_WORDS:
            return math.nan
        raise


def _read_text(path: Path, suffix: str) -> np.ndarray:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise IngestError(f"time-series file {str(path)!r} cannot be read: {e}") from e
    delimiter = "," if suffix == ".csv" else None
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    header_checked = False
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue  # blank line, comment or C-PAC / AFNI header ("#1\t#2 ...")
        if delimiter is None and "," in text and not any(c in text for c in " \t"):
            delimiter = ","  # comma-separated .txt / .tsv
        tokens = [t.strip() for t in text.split(delimiter)]
        if not header_checked:
            header_checked = True
            try:
                [_parse_float(t) for t in tokens]
            except ValueError:
                continue  # the first non-comment line is a header of column names
        rows.append(tokens)
        line_numbers.append(number)
    if not rows:
        raise IngestError(f"time-series file {str(path)!r} holds no data rows")
    width = len(rows[0])
    for tokens, number in zip(rows, line_numbers, strict=True):
        if len(tokens) != width:
            raise IngestError(
                f"time-series file {str(path)!r} is ragged or truncated: line "
                f"{number} has {len(tokens)} columns, line {line_numbers[0]} has "
                f"{width}"
            )
    try:
        return np.array([[_parse_float(t) for t in tokens] for tokens in rows], dtype=np.float64)
    except ValueError:
        for tokens, number in zip(rows, line_numbers, strict=True):
            for col, t in enumerate(tokens):
                try:
                    _parse_float(t)
                except ValueError:
                    raise IngestError(
                        f"time-series file {str(path)!r}: line {number}, column "
                        f"{col + 1}: value {t!r} is not a number"
                    ) from None
        raise


def _pick_key(arrays: dict[str, object], key: str | None, path: Path) -> tuple[str, object]:
    keys = sorted(arrays)
    if key is not None:
        if key not in arrays:
            raise IngestError(
                f"time-series file {str(path)!r} has no key {key!r}; keys present: {keys}"
            )
        return key, arrays[key]
    if len(keys) != 1:
        raise IngestError(
            f"time-series file {str(path)!r} holds {len(keys)} arrays {keys}; "
            "pass key= to choose one"
        )
    return keys[0], arrays[keys[0]]


def read_timeseries(
    path: str | Path, *, key: str | None = None, transpose: bool = False
) -> np.ndarray:
    """Read one ROI time-series file into a (T, R) float32 array.

    Parameters
    ----------
    path : str or Path
        ``.1D``, ``.tsv``, ``.csv`` or ``.txt`` text (optionally gzipped, ``.tsv.gz``): one row
        per time point, whitespace-separated (comma for ``.csv``, or when a line has commas and
        no blanks). Lines starting with ``#`` (C-PAC's ``#1\\t#2...`` header, AFNI comments) and a
        first line of column names are skipped; ``nan``/``n/a``/``NA`` read as NaN. ``.npy``;
        ``.npz`` (the array ``key``, or the only array); ``.mat`` (MATLAB, via
        :func:`scipy.io.loadmat`: the variable ``key``, or the only variable).
    key : str, optional
        Array name inside ``.npz`` / ``.mat`` files.
    transpose : bool
        The file stores (R, T): transpose it.

    Returns
    -------
    ndarray of shape (T, R), float32

    Raises
    ------
    IngestError
        Naming the file: missing, unreadable, truncated or ragged (a row with a different
        number of columns, with the line numbers), a non-numeric value (with line, column and
        value), an unsupported extension, a missing key (keys present are listed), several
        arrays and no key, an array that is not 2-D or not numeric.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise IngestError(
            f"time-series file {str(path)!r}: unsupported extension {suffix!r}; "
            f"supported: {list(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise IngestError(f"time-series file {str(path)!r} does not exist")
    if suffix in TEXT_SUFFIXES:
        return _as_2d(_read_text(path, suffix), path, "the table", transpose)
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise IngestError(
                f"time-series file {str(path)!r} cannot be read as .npy "
                f"(truncated or corrupt?): {e}"
            ) from e
        return _as_2d(x, path, "the array", transpose)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                name = _pick_key({k: None for k in z.files}, key, path)[0]
                x = z[name]
        except IngestError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise IngestError(
                f"time-series file {str(path)!r} cannot be read as .npz "
                f"(truncated or corrupt?): {e}"
            ) from e
        return _as_2d(x, path, f"array {name!r}", transpose)
    # .mat
    import scipy.io

    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise IngestError(
            f"time-series file {str(path)!r}: MATLAB v7.3 files are not "
            f"supported; save with -v7 or convert to .npy: {e}"
        ) from e
    except Exception as e:  # scipy raises many kinds on corrupt input
        raise IngestError(
            f"time-series file {str(path)!r} cannot be read as .mat "
            f"(truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    variables = {k: v for k, v in contents.items() if not k.startswith("__")}
    name, x = _pick_key(variables, key, path)
    return _as_2d(np.asarray(x), path, f"variable {name!r}", transpose)


def expand_paths(paths_or_glob: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files named by a glob pattern, a directory, one file, or an iterable of paths.

    Parameters
    ----------
    paths_or_glob : str, Path or iterable
        A pattern with ``*``/``?``/``[`` (``**`` recurses), a directory (its files with a
        supported extension, sorted), a single file, or an iterable of paths (order kept).

    Returns
    -------
    list of Path
    """
    if isinstance(paths_or_glob, (str, Path)):
        s = str(paths_or_glob)
        if any(c in s for c in "*?["):
            return [Path(p) for p in sorted(glob.glob(s, recursive=True)) if Path(p).is_file()]
        p = Path(s)
        if p.is_dir():
            return sorted(
                q for q in p.iterdir() if q.is_file() and _suffix(q) in SUPPORTED_SUFFIXES
            )
        return [p]
    return [Path(p) for p in paths_or_glob]


def scan_id_for(subject_id: str, session: str = "") -> str:
    """Scan id of a subject's scan: ``"<subject>"`` or ``"<subject>_ses-<session>"``."""
    return f"{subject_id}_ses-{session}" if session else subject_id


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return name[: -len(Path(name).suffix)] if Path(name).suffix else name


def parse_subject(
    path: str | Path, pattern: str | re.Pattern[str] | None = None
) -> tuple[str, str] | None:
    """Subject id and session parsed from a file name.

    Parameters
    ----------
    path : str or Path
        File; only its name (without extension) is searched.
    pattern : str or compiled regex, optional
        With a named group ``subject`` (and optionally ``session``); default
        :data:`DEFAULT_SUBJECT_PATTERN`.

    Returns
    -------
    (subject, session) or None
        ``session`` is ``""`` when the pattern has no ``session`` group or it did not match.
        None when the pattern does not match.
    """
    rx = re.compile(pattern if pattern is not None else DEFAULT_SUBJECT_PATTERN)
    m = rx.search(_stem(Path(path)))
    if m is None:
        return None
    groups = m.groupdict()
    subject = groups.get("subject") or groups.get("digits")
    if not subject:
        return None
    return subject, groups.get("session") or ""


def iter_timeseries_files(
    paths_or_glob: str | Path | Iterable[str | Path],
    phenotypes: pd.DataFrame | None,
    mapping: PhenotypeMapping | None,
    *,
    subject_pattern: str | re.Pattern[str] | None = None,
    tr: float | None = None,
    site: str = "",
    report: IngestReport | None = None,
    on_unreadable: Action = "skip",
    on_no_phenotype: Action = "skip",
    key: str | None = None,
    transpose: bool = False,
) -> Iterator[ScanRecord]:
    """Stream ROI time-series files as :class:`ScanRecord` s joined to their phenotype rows.

    Files are read one at a time, when the iterator reaches them; nothing is validated beyond
    readability (pass the records to the store builder / :class:`ScanValidator`).

    Parameters
    ----------
    paths_or_glob : str, Path or iterable
        Files: see :func:`expand_paths`.
    phenotypes : pandas.DataFrame or None
        From :func:`~fmrilm.data.phenotypes.read_phenotypes`. None: no phenotype join (every
        file is kept, standard phenotypes missing).
    mapping : PhenotypeMapping or None
        The mapping the table was read with (required when ``phenotypes`` is given).
    subject_pattern : str or regex, optional
        Regex searched in each file name (without extension) with a named group ``subject`` and
        optionally ``session``; default :data:`DEFAULT_SUBJECT_PATTERN` (BIDS ``sub-<label>``
        [``_ses-<label>``], else a standalone run of digits). A session found in the file name
        wins over the phenotype table's session column.
    tr : float, optional
        Repetition time (s) for scans whose phenotype row has none (``mapping.tr``). None leaves
        TR missing, which the validator then skips or rejects.
    site : str
        Site for scans whose phenotype row has none.
    report : IngestReport, optional
        Where skips are recorded (reasons ``"unreadable"`` and ``"no_phenotype"``). The reader
        records skips only; counting reads and kept scans is the store builder's job.
    on_unreadable : {"skip", "error"}
        A file that cannot be read: record a skip, or raise :class:`IngestError`.
    on_no_phenotype : {"skip", "error"}
        A file whose subject id is not in ``phenotypes``, or whose name does not match
        ``subject_pattern``: record a skip (reason ``"no_phenotype"``), or raise.
    key, transpose
        Passed to :func:`read_timeseries`.

    Yields
    ------
    ScanRecord
        ``scan_id`` is ``"<subject>"`` or ``"<subject>_ses-<session>"`` (the subject id as spelled
        in the phenotype table when there is one), ``source`` the file path.

    Raises
    ------
    IngestError
        Per ``on_unreadable`` / ``on_no_phenotype``, naming the file.
    """
    for name, value in (("on_unreadable", on_unreadable), ("on_no_phenotype", on_no_phenotype)):
        if value not in ("error", "skip"):
            raise ValueError(f"{name} must be 'error' or 'skip', got {value!r}")
    if phenotypes is not None and mapping is None:
        raise ValueError("iter_timeseries_files: mapping is required when phenotypes is given")
    report = report if report is not None else IngestReport()
    rx = re.compile(subject_pattern if subject_pattern is not None else DEFAULT_SUBJECT_PATTERN)
    pheno_source = phenotypes.attrs.get("source", "") if phenotypes is not None else ""

    for path in expand_paths(paths_or_glob):
        source = str(path)
        parsed = parse_subject(path, rx)
        if parsed is None:
            detail = f"file name {path.name!r} does not match subject_pattern {rx.pattern!r}"
            if on_no_phenotype == "error":
                raise IngestError(f"no_phenotype: file {source!r}: {detail}")
            report.skip(_stem(path), "no_phenotype", detail, source=source)
            continue
        subject, session = parsed
        fields = empty_fields()
        if phenotypes is not None:
            found = lookup_phenotype(phenotypes, subject, session, mapping)
            if found is None:
                detail = f"subject {subject!r} is not in the phenotype table {pheno_source!r}"
                scan_id = scan_id_for(subject, session)
                if on_no_phenotype == "error":
                    raise IngestError(f"no_phenotype: scan {scan_id!r} (file {source!r}): {detail}")
                report.skip(scan_id, "no_phenotype", detail, subject_id=subject, source=source)
                continue
            subject, row = found
            fields = standard_fields(row, mapping, source=pheno_source)
        session = session or fields.pop("session")
        fields.pop("session", None)
        fields["site"] = fields["site"] or site
        fields["tr"] = fields["tr"] if fields["tr"] is not None else tr
        scan_id = scan_id_for(subject, session)
        try:
            x = read_timeseries(path, key=key, transpose=transpose)
        except IngestError as e:
            if on_unreadable == "error":
                raise
            report.skip(scan_id, "unreadable", str(e), subject_id=subject, source=source)
            continue
        yield ScanRecord(
            scan_id=scan_id,
            subject_id=subject,
            timeseries=x,
            session=session,
            source=source,
            **fields,
        )
