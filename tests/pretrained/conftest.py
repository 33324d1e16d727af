"""A tiny trained model released from the bundled sample store (built in seconds, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lm.conftest import make_tiny_fmri_tokenizer, make_tiny_lm


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    """Every test here runs with one torch thread (``tests/conftest.py``)."""


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory, sample_store) -> dict:
    """Train a tiny LM for 2 steps on the sample store and build a release folder from it."""
    from fmrilm.lm.training import train
    from fmrilm.pretrained.release import build_release

    root = tmp_path_factory.mktemp("release")
    table = sample_store.table.reset_index(drop=True)
    test = table.loc[sample_store.split_indices("site_stratified")["test"]]
    example_id = str(test.loc[test["n_timepoints"] >= 160, "scan_id"].iloc[0])
    cfg = {
        "base_model": str(make_tiny_lm(root / "lm")),
        "fmri_tokenizer": str(make_tiny_fmri_tokenizer(root / "tok")),
        "store": str(sample_store.path),
        "out_dir": str(root / "run"),
        "targets": ["age", "sex", "diagnosis"],
        "model": {"questions_per_example": 2, "lora_r": 2, "compact_rois": 8},
        "train": {"max_steps": 2, "batch_size": 2, "warmup_steps": 1, "num_threads": 1},
    }
    res = train(cfg)
    lm_results = {"age_mae": 5.0, "age_mae_ci95": [4.0, 6.0], "fc_age_mae": 4.5}
    release = build_release(
        res["model_dir"],
        sample_store,
        lm_results,
        out=root / "release",
        limits=["a tiny test model"],
        example_scan_id=example_id,
        example_path=root / "example_scan.1D",
    )
    return {
        "folder": root / "release",
        "release": release,
        "example": root / "example_scan.1D",
        "store": sample_store,
    }


def write_scan(path: Path, x) -> Path:
    import numpy as np

    np.savetxt(path, x, fmt="%.6f", delimiter="\t")
    return path
