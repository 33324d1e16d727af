"""Classical baselines (trivial, site-only, connectivity + linear model) for clinical targets."""

from fmrilm.baselines.clinical import (
    BASELINES,
    ConnectivityBaseline,
    ConnectivityFeatures,
    LinearHead,
    SiteBaseline,
    TrivialBaseline,
    evaluate_clinical_baselines,
    format_table,
    run_clinical_baselines,
)

__all__ = [
    "BASELINES",
    "ConnectivityBaseline",
    "ConnectivityFeatures",
    "LinearHead",
    "SiteBaseline",
    "TrivialBaseline",
    "evaluate_clinical_baselines",
    "format_table",
    "run_clinical_baselines",
]
