"""Metrics with bootstrap confidence intervals, and readable reports of them."""

from fmrilm.evaluation.metrics import (
    average_by_subject,
    classification_metrics,
    paired_bootstrap_difference,
    regression_metrics,
)
from fmrilm.evaluation.report import format_metrics, format_table, format_value

__all__ = [
    "average_by_subject",
    "classification_metrics",
    "paired_bootstrap_difference",
    "regression_metrics",
    "format_metrics",
    "format_table",
    "format_value",
]
