"""Subject-level splits: stratified by site, or whole sites held out. Seeded and recorded."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
_CV_SCHEME = re.compile(r"^(?P<parent>.+)-cv(?P<n_folds>\d+)-fold(?P<fold>\d+)$")


@dataclass
class SplitConfig:
    """How a store's subjects are split.

    Attributes
    ----------
    val_fraction, test_fraction : float
        Share of subjects in validation and test (per site for ``site_stratified``).
    seed : int
        Seed for every random choice.
    heldout_sites : list of str or None
        Sites for the test split of the ``heldout_sites`` scheme. None chooses whole sites at
        random (seeded) until they hold at least ``heldout_fraction`` of the subjects.
    heldout_fraction : float
        Minimum share of subjects in held-out sites when they are chosen at random.
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    heldout_sites: list[str] | None = None
    heldout_fraction: float = 0.2
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction", "heldout_fraction"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"SplitConfig.{name} must be in [0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "SplitConfig.val_fraction + test_fraction must be < 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _subject_sites(subjects: pd.DataFrame) -> pd.Series:
    """One site per subject (the first seen); subjects scanned at several sites keep one."""
    return subjects.drop_duplicates("subject_id").set_index("subject_id")["site"]


def site_stratified_split(subjects: pd.DataFrame, config: SplitConfig) -> dict[str, str]:
    """Assign each subject to train/val/test, the same shares within every site.

    Parameters
    ----------
    subjects : DataFrame with columns ``subject_id`` and ``site`` (one row per scan is fine).
    config : SplitConfig

    Returns
    -------
    dict mapping subject id to "train", "val" or "test".
    """
    rng = np.random.default_rng(config.seed)
    site_of = _subject_sites(subjects)
    out: dict[str, str] = {}
    for site in sorted(site_of.unique()):
        ids = np.array(sorted(site_of.index[site_of == site]))
        rng.shuffle(ids)
        n = len(ids)
        n_test = int(round(n * config.test_fraction))
        n_val = int(round(n * config.val_fraction))
        if n >= 3 and config.test_fraction > 0:
            n_test = max(n_test, 1)
        if n >= 3 and config.val_fraction > 0:
            n_val = max(n_val, 1)
        for i, sid in enumerate(ids):
            out[sid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def heldout_sites_split(
    subjects: pd.DataFrame, config: SplitConfig
) -> tuple[dict[str, str], list[str]]:
    """Whole sites form the test split; the other subjects split into train/val by site.

    Returns
    -------
    assignments : dict mapping subject id to split
    sites : the held-out sites
    """
    site_of = _subject_sites(subjects)
    counts = site_of.value_counts()
    if config.heldout_sites is not None:
        unknown = sorted(set(config.heldout_sites) - set(counts.index))
        if unknown:
            raise ValueError(
                f"held-out sites {unknown} are not in the store; sites: {sorted(counts.index)}"
            )
        sites = sorted(config.heldout_sites)
    else:
        rng = np.random.default_rng(config.seed)
        order = list(rng.permutation(sorted(counts.index)))
        sites, n = [], 0
        while order and n < config.heldout_fraction * len(site_of):
            s = order.pop(0)
            sites.append(s)
            n += counts[s]
        sites = sorted(sites)
    if len(sites) == len(counts):
        raise ValueError(
            f"holding out sites {sites} would leave no training site; sites: {dict(counts)}"
        )
    rest = site_of[~site_of.isin(sites)].reset_index()
    inner = SplitConfig(
        val_fraction=config.val_fraction / max(1e-9, 1 - config.test_fraction),
        test_fraction=0.0,
        seed=config.seed,
    )
    out = site_stratified_split(rest, inner)
    out.update({sid: "test" for sid in site_of.index[site_of.isin(sites)]})
    return out, sites


def make_splits(subjects: pd.DataFrame, config: SplitConfig) -> tuple[dict[str, dict], list[str]]:
    """The split schemes stored in a store's ``splits.json``, and warnings.

    ``heldout_sites`` needs at least two sites; a single-site store gets ``site_stratified``
    alone and a warning that says why (named held-out sites that cannot be honoured are an error).
    """
    schemes = {
        "site_stratified": {
            "config": config.to_dict(),
            "assignments": site_stratified_split(subjects, config),
        }
    }
    warnings = []
    try:
        heldout, sites = heldout_sites_split(subjects, config)
        schemes["heldout_sites"] = {
            "config": config.to_dict(),
            "sites": sites,
            "assignments": heldout,
        }
    except ValueError as e:
        if config.heldout_sites is not None:
            raise
        warnings.append(f"no heldout_sites split: {e}")
    return schemes, warnings


def cv_scheme_name(parent: str, n_folds: int, fold: int) -> str:
    """Name of fold ``fold`` of ``n_folds`` over ``parent``'s training and validation subjects.

    A store answers such a name without storing it (:func:`cross_validation_split`), so a
    configuration can be chosen by cross-validation without touching the test split.
    """
    _check_fold(n_folds, fold, f"{parent}-cv{n_folds}-fold{fold}")
    return f"{parent}-cv{n_folds}-fold{fold}"


def parse_cv_scheme(name: str) -> tuple[str, int, int] | None:
    """``(parent, n_folds, fold)`` of a cross-validation scheme name, or None for any other."""
    m = _CV_SCHEME.match(name)
    if m is None:
        return None
    n_folds, fold = int(m["n_folds"]), int(m["fold"])
    _check_fold(n_folds, fold, name)
    return m["parent"], n_folds, fold


def _check_fold(n_folds: int, fold: int, name: str) -> None:
    if n_folds < 2:
        raise ValueError(f"cross-validation scheme {name!r}: needs at least 2 folds, got {n_folds}")
    if not 0 <= fold < n_folds:
        raise ValueError(
            f"cross-validation scheme {name!r}: fold {fold} is not in [0, {n_folds - 1}]"
        )


def cross_validation_split(
    assignments: dict[str, str], subjects: pd.DataFrame, n_folds: int, fold: int, seed: int
) -> dict[str, str]:
    """One fold of cross-validation over a scheme's training and validation subjects.

    The parent's train and val subjects are pooled and dealt into ``n_folds`` folds, the same
    share of every site in each (shuffled within site, seeded, then dealt in turn across sites so
    that small sites do not all fall in one fold). Fold ``fold`` becomes "val", the others
    "train"; the parent's test subjects stay "test", so choosing by these folds never reads them.

    Parameters
    ----------
    assignments : dict
        The parent scheme's subject -> "train" / "val" / "test".
    subjects : DataFrame with columns ``subject_id`` and ``site``.
    n_folds, fold : int
    seed : int

    Returns
    -------
    dict mapping subject id to "train", "val" or "test".
    """
    _check_fold(n_folds, fold, f"cv{n_folds}-fold{fold}")
    site_of = _subject_sites(subjects)
    missing = sorted(set(assignments) - set(site_of.index))
    if missing:
        raise ValueError(f"subjects {missing[:5]} of the split have no site in the table")
    pool = sorted(s for s, split in assignments.items() if split in ("train", "val"))
    if len(pool) < n_folds:
        raise ValueError(
            f"{n_folds} folds need at least {n_folds} training and validation subjects, "
            f"got {len(pool)}"
        )
    rng = np.random.default_rng(seed)
    pooled_sites = site_of.loc[pool]
    dealt: list[str] = []
    for site in sorted(pooled_sites.unique()):
        ids = np.array(sorted(pooled_sites.index[pooled_sites == site]))
        rng.shuffle(ids)
        dealt.extend(ids)
    out = {s: "test" for s, split in assignments.items() if split == "test"}
    out.update({sid: "val" if i % n_folds == fold else "train" for i, sid in enumerate(dealt)})
    return out
