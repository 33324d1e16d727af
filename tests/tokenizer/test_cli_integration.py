"""The ``fmrilm tokenizer`` commands end to end on the real ABIDE sample bundled with fmrilm."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from fmrilm.cli import apply_sets
from fmrilm.cli.tokenizer import add_parser, run

REPO = Path(__file__).resolve().parents[2]


def _parser():
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    return p


def test_overrides_parse_yaml_values():
    cfg = {"train": {"lr": 1.0}}
    apply_sets(cfg, ["train.lr=0.003", "model.align=false", "train.mask_ratios=[0.0, 0.5]", "x=y"])
    assert cfg == {
        "train": {"lr": 0.003, "mask_ratios": [0.0, 0.5]},
        "model": {"align": False},
        "x": "y",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_sets({}, ["novalue"])
    with pytest.raises(ValueError, match="not a mapping"):
        apply_sets({"train": 3}, ["train.lr=0.1"])
    with pytest.raises(ValueError, match="give it once"):
        apply_sets({}, ["out_dir=a"], given={"out_dir"})


def test_parser_has_all_commands():
    p = _parser()
    for argv in (
        ["tokenizer", "train", "--set", "a=1", "--resume"],
        ["tokenizer", "evaluate", "--model", "m", "--store", "s"],
        ["tokenizer", "encode", "--model", "m", "--store", "s", "--out", "o.npz"],
        [
            "tokenizer",
            "reconstruct",
            "--model",
            "m",
            "--store",
            "s",
            "--scan-index",
            "0",
            "--out",
            "o.npz",
        ],
    ):
        args = p.parse_args(argv)
        assert args.run is run


@pytest.mark.slow
def test_train_evaluate_encode_reconstruct_on_sample(sample_store, tmp_path, capsys):
    """Trains briefly on the bundled real sample; beats predicting zeros on held-out subjects."""
    p = _parser()
    out = tmp_path / "run"
    args = p.parse_args(
        [
            "tokenizer",
            "train",
            "--config",
            str(REPO / "configs" / "tokenizer_tiny.yaml"),
            "--set",
            f"data.store={sample_store.path}",
            "--set",
            "train.max_steps=16",
            "--set",
            "train.progress_bar=false",
            "--set",
            "train.lr=0.005",
            "--out-dir",
            str(out),
        ]
    )
    assert run(args) == 0
    assert (out / "model" / "model.safetensors").exists()
    ev = tmp_path / "ev.json"
    assert (
        run(
            p.parse_args(
                [
                    "tokenizer",
                    "evaluate",
                    "--model",
                    str(out / "model"),
                    "--store",
                    str(sample_store.path),
                    "--out",
                    str(ev),
                ]
            )
        )
        == 0
    )
    res = json.loads(ev.read_text())
    assert res["n_windows"] > 0 and res["split"] == "test"
    for r in ("0.2", "0.5", "0.75"):
        zero = res["r2_zero_by_ratio"][r]
        assert res["r2_masked_by_ratio"][r] > zero + 0.1, res["r2_masked_by_ratio"]
        assert res["r2_gaussian_conditional_by_ratio"][r] > zero
    assert res["r2_codes"] > res["codes"]["r2"] - 1e-9  # same number, both reported
    assert 0 < res["codebook_usage"] <= 1 and res["perplexity"] >= 1
    assert len(res["per_roi_r2_codes"]) == 200

    codes = tmp_path / "codes.npz"
    assert (
        run(
            p.parse_args(
                [
                    "tokenizer",
                    "encode",
                    "--model",
                    str(out / "model"),
                    "--store",
                    str(sample_store.path),
                    "--split",
                    "test",
                    "--out",
                    str(codes),
                ]
            )
        )
        == 0
    )
    z = np.load(codes)
    first = z[z.files[0]]
    assert first.ndim == 3 and first.shape[1] == 200 and first.max() < 64

    rec = tmp_path / "rec.npz"
    assert (
        run(
            p.parse_args(
                [
                    "tokenizer",
                    "reconstruct",
                    "--model",
                    str(out / "model"),
                    "--store",
                    str(sample_store.path),
                    "--scan-index",
                    "0",
                    "--mask-ratio",
                    "0.5",
                    "--out",
                    str(rec),
                    "--plot",
                    str(tmp_path / "rec.png"),
                ]
            )
        )
        == 0
    )
    d = np.load(rec)
    assert d["original"].shape == d["reconstruction"].shape
    assert (tmp_path / "rec.png").exists()
