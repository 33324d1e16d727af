"""Phenotype tables: CSV, TSV and BIDS ``participants.tsv``, read through a column mapping.

A phenotype table is read whole (tables are small: one row per subject) as strings, so that
nothing is reinterpreted on the way in (``"0050002"`` stays ``"0050002"``). The table is indexed
by the normalized subject id (see :func:`normalize_subject_id`), and every standard field is
checked up front, so that a bad age or an unknown sex code stops the ingest before any scan is
read, with a message naming the file, the column, the subject and the value.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from fmrilm.data.records import DIAGNOSES, SEXES, IngestError

DEFAULT_SEX_MAP: dict[str, str] = {
    "1": "male",
    "2": "female",
    "m": "male",
    "f": "female",
    "male": "male",
    "female": "female",
    "man": "male",
    "woman": "female",
}
"""Default sex codings (keys are matched case-insensitively). ``1``/``2`` is ABIDE's ``SEX``."""

DEFAULT_DIAGNOSIS_MAP: dict[str, str] = {
    "1": "autism",
    "2": "control",
    "asd": "autism",
    "autism": "autism",
    "aut": "autism",
    "autistic": "autism",
    "td": "control",
    "tdc": "control",
    "typical": "control",
    "typically developing": "control",
    "control": "control",
    "controls": "control",
    "ctrl": "control",
    "hc": "control",
    "nc": "control",
}
"""Default diagnosis codings (case-insensitive). ``1``/``2`` is ABIDE's ``DX_GROUP``."""

DEFAULT_MISSING_VALUES: tuple[str, ...] = ("-9999", "-999", "n/a", "NA", "")
"""Default missing-value codes; numeric codes also match their float spelling (``-9999.0``)."""

_SUBJECT_PREFIX = "sub-"


@dataclass
class PhenotypeMapping:
    """Which column of a phenotype table holds which field, and how codes map to values.

    Parameters
    ----------
    subject_id : str
        Column of subject ids (required). ``sub-`` prefixes are dropped, so ``"sub-01"`` and
        ``"01"`` are the same subject.
    age, sex, diagnosis, site, tr, session, fiq, mean_fd : str or None
        Columns of the standard fields; None when the table has none. ``age`` is in years,
        ``tr`` in seconds, ``mean_fd`` in mm.
    sex_map : dict
        Raw sex code -> ``"male"``/``"female"``, matched case-insensitively after stripping.
    diagnosis_map : dict
        Raw diagnosis code -> ``"autism"``/``"control"``, matched case-insensitively.
    missing_values : tuple of str
        Codes meaning "missing" in any column.
    """

    subject_id: str
    age: str | None = None
    sex: str | None = None
    diagnosis: str | None = None
    site: str | None = None
    tr: str | None = None
    session: str | None = None
    fiq: str | None = None
    mean_fd: str | None = None
    sex_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SEX_MAP))
    diagnosis_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DIAGNOSIS_MAP))
    missing_values: tuple[str, ...] = DEFAULT_MISSING_VALUES

    def __post_init__(self) -> None:
        if not self.subject_id:
            raise ValueError("PhenotypeMapping.subject_id must name a column")
        for name, allowed, table in (
            ("sex_map", SEXES, self.sex_map),
            ("diagnosis_map", DIAGNOSES, self.diagnosis_map),
        ):
            bad = {k: v for k, v in table.items() if v not in allowed}
            if bad:
                raise ValueError(
                    f"PhenotypeMapping.{name} values must be one of {allowed}, got {bad}"
                )
        self.sex_map = {str(k).strip().lower(): v for k, v in self.sex_map.items()}
        self.diagnosis_map = {str(k).strip().lower(): v for k, v in self.diagnosis_map.items()}
        self.missing_values = tuple(str(v).strip() for v in self.missing_values)

    def columns(self) -> dict[str, str]:
        """Field name -> column name, for every mapped column (``subject_id`` first)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("sex_map", "diagnosis_map", "missing_values") or value is None:
                continue
            out[f.name] = value
        return out

    @classmethod
    def abide(cls, **overrides: Any) -> PhenotypeMapping:
        """Mapping for ABIDE's phenotypic CSV (the Preprocessed Connectomes Project release)."""
        kw: dict[str, Any] = dict(
            subject_id="SUB_ID",
            age="AGE_AT_SCAN",
            sex="SEX",
            diagnosis="DX_GROUP",
            site="SITE_ID",
            fiq="FIQ",
            mean_fd="func_mean_fd",
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def bids(cls, **overrides: Any) -> PhenotypeMapping:
        """Mapping for a BIDS ``participants.tsv`` (``participant_id``, ``age``, ``sex``)."""
        kw: dict[str, Any] = dict(subject_id="participant_id", age="age", sex="sex")
        kw.update(overrides)
        return cls(**kw)


def normalize_subject_id(value: Any) -> str:
    """Subject id as a string with any BIDS ``sub-`` prefix and surrounding space removed.

    Parameters
    ----------
    value : Any
        Raw id (``"sub-01"``, ``"01"``, ``50002``, ``50002.0``).

    Returns
    -------
    str
        ``"01"`` for ``"sub-01"``; integral floats lose their ``.0``.
    """
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    s = str(value).strip()
    if s.lower().startswith(_SUBJECT_PREFIX):
        s = s[len(_SUBJECT_PREFIX) :]
    return s


def is_missing(value: Any, missing_values: tuple[str, ...] = DEFAULT_MISSING_VALUES) -> bool:
    """True for None, NaN and the missing-value codes (numeric codes match as numbers too)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    s = str(value).strip()
    if s in missing_values:
        return True
    try:
        x = float(s)
    except ValueError:
        return False
    if math.isnan(x):
        return True
    for code in missing_values:
        try:
            if float(code) == x:
                return True
        except ValueError:
            continue
    return False


def _sniff_separator(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    with open(path, encoding="utf-8-sig", newline="") as f:
        head = f.readline()
    try:
        return csv.Sniffer().sniff(head, delimiters=",\t;").delimiter
    except csv.Error:
        return "\t" if "\t" in head else ","


def read_phenotypes(path: str | Path, mapping: PhenotypeMapping) -> pd.DataFrame:
    """Read a phenotype table and index it by normalized subject id.

    Parameters
    ----------
    path : str or Path
        CSV (``.csv``), TSV (``.tsv``, BIDS ``participants.tsv``) or another delimited text
        file (separator sniffed from the header line).
    mapping : PhenotypeMapping
        Which columns hold which fields.

    Returns
    -------
    pandas.DataFrame
        Every column of the table as strings (missing codes kept as written), indexed by the
        normalized subject id (index name ``"subject_id"``). When ``mapping.session`` is set the
        index may repeat (one row per session). ``df.attrs["source"]`` is the file path.

    Raises
    ------
    IngestError
        Naming the file and the value: missing file, a mapped column absent (the columns present
        are listed), duplicate subject ids (or subject/session pairs), a missing subject id, an
        age/fiq/mean_fd/tr that does not parse as a number, or a sex/diagnosis code absent from
        the mapping's value maps.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"phenotype table {str(path)!r} does not exist")
    try:
        df = pd.read_csv(
            path, sep=_sniff_separator(path), dtype=str, keep_default_na=False, encoding="utf-8-sig"
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise IngestError(f"phenotype table {str(path)!r} cannot be parsed: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [
        f"{name}={col!r}" for name, col in mapping.columns().items() if col not in df.columns
    ]
    if missing:
        raise IngestError(
            f"phenotype table {str(path)!r} has no column {', '.join(missing)}; "
            f"columns present: {list(df.columns)}"
        )

    ids = df[mapping.subject_id]
    empty = [i for i, v in enumerate(ids) if is_missing(v, mapping.missing_values)]
    if empty:
        raise IngestError(
            f"phenotype table {str(path)!r}: column {mapping.subject_id!r} is empty "
            f"on data row(s) {[i + 1 for i in empty[:10]]}"
        )
    index = pd.Index([normalize_subject_id(v) for v in ids], name="subject_id")
    keys: pd.Index | pd.MultiIndex = index
    if mapping.session is not None:
        keys = pd.MultiIndex.from_arrays([index, df[mapping.session].str.strip()])
    dup = keys[keys.duplicated()].unique().tolist()
    if dup:
        what = "subject/session pair(s)" if mapping.session is not None else "subject id(s)"
        raise IngestError(f"phenotype table {str(path)!r} has duplicate {what}: {dup[:20]}")
    df.index = index

    for i, (sid, row) in enumerate(df.iterrows()):
        try:
            standard_fields(row, mapping)
        except IngestError as e:
            raise IngestError(
                f"phenotype table {str(path)!r}, data row {i + 1} (subject {sid!r}): {e}"
            ) from None
    df.attrs["source"] = str(path)
    return df


def lookup_phenotype(
    phenotypes: pd.DataFrame,
    subject_id: str,
    session: str = "",
    mapping: PhenotypeMapping | None = None,
) -> tuple[str, pd.Series] | None:
    """Find a subject's phenotype row.

    Parameters
    ----------
    phenotypes : pandas.DataFrame
        From :func:`read_phenotypes`.
    subject_id : str
        Id as found in a file name; normalized first. When there is no exact match and the id is
        all digits, ids equal up to leading zeros match (``"0050002"`` finds ``"50002"``), provided
        that match is unique.
    session : str
        Session label; used to pick the row when the table has one row per session.
    mapping : PhenotypeMapping, optional
        Needed to choose among several rows of one subject (its ``session`` column).

    Returns
    -------
    (str, pandas.Series) or None
        The table's subject id and row, or None when the subject is not in the table.
    """
    sid = normalize_subject_id(subject_id)
    if sid not in phenotypes.index and sid.isdigit():
        stripped = sid.lstrip("0") or "0"
        candidates = [
            i
            for i in phenotypes.index.unique()
            if isinstance(i, str) and i.isdigit() and (i.lstrip("0") or "0") == stripped
        ]
        if len(candidates) != 1:
            return None
        sid = candidates[0]
    if sid not in phenotypes.index:
        return None
    rows = phenotypes.loc[[sid]]
    if len(rows) == 1:
        return sid, rows.iloc[0]
    if mapping is not None and mapping.session is not None:
        match = rows[rows[mapping.session].str.strip() == session]
        if len(match) == 1:
            return sid, match.iloc[0]
    return None


def _norm_code(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value).strip().lower()
    try:
        x = float(s)
    except ValueError:
        return s
    return str(int(x)) if math.isfinite(x) and x.is_integer() else s


def _number(value: Any, column: str, mapping: PhenotypeMapping, source: str) -> float:
    if is_missing(value, mapping.missing_values):
        return float("nan")
    try:
        return float(str(value).strip())
    except ValueError:
        where = f" in {source!r}" if source else ""
        raise IngestError(f"column {column!r}{where}: value {value!r} is not a number") from None


def _code(
    value: Any,
    column: str,
    table: dict[str, str],
    what: str,
    mapping: PhenotypeMapping,
    source: str,
) -> str | None:
    if is_missing(value, mapping.missing_values):
        return None
    key = _norm_code(value)
    if key in table:
        return table[key]
    if str(value).strip().lower() in table:
        return table[str(value).strip().lower()]
    where = f" in {source!r}" if source else ""
    raise IngestError(
        f"column {column!r}{where}: {what} value {value!r} is not in the mapping's "
        f"{what}_map {sorted(table)}; add it to PhenotypeMapping.{what}_map"
    )


def _raw(value: Any, missing_values: tuple[str, ...]) -> Any:
    if is_missing(value, missing_values):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()  # numpy scalar -> Python scalar
        except (ValueError, AttributeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def empty_fields() -> dict[str, Any]:
    """The fields of :func:`standard_fields` for a scan read without a phenotype table."""
    return {
        "age": math.nan,
        "sex": None,
        "diagnosis": None,
        "fiq": math.nan,
        "mean_fd": math.nan,
        "site": "",
        "tr": None,
        "session": "",
        "phenotypes": {},
    }


def standard_fields(
    row: Mapping[str, Any] | pd.Series, mapping: PhenotypeMapping, *, source: str = ""
) -> dict[str, Any]:
    """Standard fields of one phenotype row, ready for :class:`~fmrilm.data.records.ScanRecord`.

    Parameters
    ----------
    row : Mapping or pandas.Series
        One row: column name -> raw value.
    mapping : PhenotypeMapping
        Which columns hold which fields.
    source : str, optional
        File the row came from, named in errors.

    Returns
    -------
    dict
        ``age``, ``fiq``, ``mean_fd`` (float, NaN when missing or unmapped), ``sex``,
        ``diagnosis`` (mapped string or None), ``site`` and ``session`` (str, ``""`` when
        missing or unmapped), ``tr`` (float or None) and ``phenotypes`` (every column of the row, missing codes as None).

    Raises
    ------
    IngestError
        A number that does not parse, or a sex/diagnosis code not in the value maps; the message
        names the column and the value.
    """
    row = dict(row.items())
    m = mapping

    def get(col: str | None) -> Any:
        return None if col is None else row.get(col)

    out: dict[str, Any] = {
        "age": float("nan") if m.age is None else _number(get(m.age), m.age, m, source),
        "fiq": float("nan") if m.fiq is None else _number(get(m.fiq), m.fiq, m, source),
        "mean_fd": (
            float("nan") if m.mean_fd is None else _number(get(m.mean_fd), m.mean_fd, m, source)
        ),
        "sex": None if m.sex is None else _code(get(m.sex), m.sex, m.sex_map, "sex", m, source),
        "diagnosis": (
            None
            if m.diagnosis is None
            else _code(get(m.diagnosis), m.diagnosis, m.diagnosis_map, "diagnosis", m, source)
        ),
    }
    site = get(m.site)
    out["site"] = "" if is_missing(site, m.missing_values) else str(site).strip()
    session = get(m.session)
    out["session"] = "" if is_missing(session, m.missing_values) else str(session).strip()
    tr = float("nan") if m.tr is None else _number(get(m.tr), m.tr, m, source)
    if not math.isnan(tr) and tr <= 0:
        raise IngestError(
            f"column {m.tr!r}{' in ' + repr(source) if source else ''}: "
            f"repetition time {get(m.tr)!r} is not positive"
        )
    out["tr"] = None if math.isnan(tr) else tr
    out["phenotypes"] = {str(k): _raw(v, m.missing_values) for k, v in row.items()}
    return out
