"""The LM benchmark keeps earlier ablations when its main configuration changes."""

from __future__ import annotations

import json

from benchmarks.lm import carried_ablations


def test_carried_ablations_keep_their_origin_and_the_earlier_main_run(tmp_path):
    earlier = {
        "commit": "abc123",
        "date": "2026-12-01T06:28:29Z",
        "age_mae": 2.9,
        "heldout_sites_age_mae": 4.8,
        "heldout_sites_fc_age_mae": 3.9,
        "ablations": {
            "reference": {"age_mae": 2.9},
            "init_random": {"age_mae": 4.1},
            "rerun_now": {"age_mae": 5.0},
            "older": {"age_mae": 6.0, "carried_from": {"commit": "0ld", "date": "2026-11-30"}},
        },
    }
    path = tmp_path / "lm.json"
    path.write_text(json.dumps(earlier))
    out = carried_ablations(path, taken={"reference", "rerun_now"})
    assert set(out) == {"previous_main_2026-12-01", "init_random", "older"}
    main = out["previous_main_2026-12-01"]
    assert main["age_mae"] == 2.9
    assert main["heldout_sites"] == {"age_mae": 4.8, "fc_age_mae": 3.9}
    assert main["carried_from"]["commit"] == "abc123"
    assert out["init_random"]["carried_from"]["date"] == "2026-12-01T06:28:29Z"
    assert out["older"]["carried_from"]["commit"] == "0ld"  # the first origin is kept


def test_a_second_main_change_on_the_same_day_keeps_both_earlier_mains(tmp_path):
    earlier = {
        "commit": "def456",
        "date": "2026-12-01T10:00:00Z",
        "ablations": {
            "reference": {"age_mae": 2.94},
            "previous_main_2026-12-01": {"age_mae": 2.95, "carried_from": {"commit": "abc123"}},
        },
    }
    path = tmp_path / "lm.json"
    path.write_text(json.dumps(earlier))
    out = carried_ablations(path, taken={"reference"})
    assert set(out) == {"previous_main_2026-12-01", "previous_main_2026-12-01_def456"}
    assert out["previous_main_2026-12-01_def456"]["age_mae"] == 2.94
    assert out["previous_main_2026-12-01"]["age_mae"] == 2.95
