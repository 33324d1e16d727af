"""Subset figures of an LM evaluation: subjects with a full window and those read from a short one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from benchmarks.lm_subsets import subset_metrics


def _results_and_table():
    rng = np.random.default_rng(0)
    n = 24
    table = pd.DataFrame(
        {
            "scan_id": [f"s{i}" for i in range(n)],
            "subject_id": [f"p{i}" for i in range(n)],
            "n_timepoints": [196] * 12 + [116] * 12,  # the second half is short
            "age": rng.uniform(8, 30, n),
            "sex": ["male", "female"] * (n // 2),
        }
    )
    lm_age = table["age"].to_numpy() + np.where(np.arange(n) < 12, 1.0, 3.0)  # worse on short
    fc_age = table["age"].to_numpy() + 2.0
    p_male = np.where(table["sex"] == "male", 0.8, 0.3)
    results = {
        "predictions": [
            *(
                {"scan_id": f"s{i}", "task": "age", "parse_failure": False, "value": lm_age[i]}
                for i in range(n)
            ),
            *(
                {
                    "scan_id": f"s{i}",
                    "task": "sex",
                    "parse_failure": False,
                    "probabilities": {"female": 1 - p_male[i], "male": p_male[i]},
                }
                for i in range(n)
            ),
        ],
        "targets": {
            "age": {
                "labels": None,
                "subject_ids": list(table["subject_id"]),
                "subject_predictions": {"connectivity_correlation": list(fc_age)},
            },
            "sex": {
                "labels": ["female", "male"],
                "subject_ids": list(table["subject_id"]),
                "subject_predictions": {
                    "connectivity_correlation": [[0.5, 0.5]] * n,
                },
            },
        },
    }
    return results, table


def test_subsets_split_subjects_by_window_and_score_each():
    results, table = _results_and_table()
    out = subset_metrics(results, table, window_length=160, n_bootstrap=50)
    assert out["full"]["age"]["n_subjects"] == 12 and out["short"]["age"]["n_subjects"] == 12
    assert out["full"]["age"]["lm"]["value"] == pytest.approx(1.0)
    assert out["short"]["age"]["lm"]["value"] == pytest.approx(3.0)
    assert out["all"]["age"]["lm"]["value"] == pytest.approx(2.0)
    assert out["full"]["age"]["lm_minus_fc"]["value"] == pytest.approx(-1.0)
    assert out["short"]["age"]["lm_minus_fc"]["value"] == pytest.approx(1.0)
    assert out["all"]["sex"]["lm"]["value"] == pytest.approx(1.0)
    assert out["all"]["sex"]["connectivity_correlation"]["value"] == pytest.approx(0.5)
