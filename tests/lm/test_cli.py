"""``fmrilm lm`` train / evaluate / predict on the bundled sample through the CLI functions."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from fmrilm.cli import lm as cli_lm


def _parser():
    parser = argparse.ArgumentParser(prog="fmrilm")
    cli_lm.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.run(args)


def test_cli_train_evaluate_predict(
    sample_store, tiny_lm_dir, fmri_tokenizer_dir, tmp_path, capsys
):
    cfg = tmp_path / "lm.yaml"
    cfg.write_text(
        "model:\n  compact_rois: 8\n  lora_r: 2\n"
        "train:\n  batch_size: 2\n  checkpoint_every_n_steps: 2\n  warmup_steps: 1\n"
    )
    out = tmp_path / "run"
    rc = _run(
        [
            "lm",
            "train",
            "--config",
            str(cfg),
            "--store",
            str(sample_store.path),
            "--fmri-tokenizer",
            str(fmri_tokenizer_dir),
            "--base-model",
            str(tiny_lm_dir),
            "--out-dir",
            str(out),
            "--max-steps",
            "2",
            "--targets",
            "age,sex",
            "--set",
            "train.weight_decay=0.01",
        ]
    )
    assert rc == 0
    assert (out / "model" / "fmri_tokenizer" / "config.json").exists()
    resolved = json.loads((out / "config.resolved.json").read_text())
    assert resolved["train"]["weight_decay"] == 0.01 and resolved["train"]["max_steps"] == 2
    results = tmp_path / "results.json"
    rc = _run(
        [
            "lm",
            "evaluate",
            str(out / "model"),
            str(sample_store.path),
            "--n-bootstrap",
            "10",
            "--baselines",
            "trivial,site",
            "--out",
            str(results),
        ]
    )
    assert rc == 0
    res = json.loads(results.read_text())
    assert res["parse_failures"] == 0 and "age_mae" in res["summary"]
    # an ensemble of a model with itself answers as the model does
    twice = tmp_path / "twice.json"
    argv = ["lm", "evaluate", str(out / "model"), str(out / "model"), str(sample_store.path)]
    assert _run([*argv, "--n-bootstrap", "10", "--baselines", "trivial", "--out", str(twice)]) == 0
    ens = json.loads(twice.read_text())
    assert [m["source"] for m in ens["model"]["ensemble"]] == [str(out / "model")] * 2
    single = {(p["scan_id"], p["task"]): p for p in res["predictions"]}
    for p in ens["predictions"]:
        ref = single[(p["scan_id"], p["task"])]
        if "value" in p:
            assert p["value"] == pytest.approx(ref["value"], rel=1e-4)
        else:
            for k, v in p["probabilities"].items():
                assert v == pytest.approx(ref["probabilities"][k], abs=1e-4)
    # a step checkpoint exported as a model; each task answered by its own member
    capsys.readouterr()
    step = tmp_path / "step2"
    ckpt = out / "checkpoints" / "step0000002.ckpt"
    assert _run(["lm", "export-checkpoint", str(out / "model"), str(ckpt), "--out", str(step)]) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 2
    routed = tmp_path / "routed.json"
    argv = ["lm", "evaluate", f"age={step}", f"sex={out / 'model'}", str(sample_store.path)]
    assert _run([*argv, "--n-bootstrap", "10", "--baselines", "trivial", "--out", str(routed)]) == 0
    assert "tokens/window; answers age)" in capsys.readouterr().out
    members = json.loads(routed.read_text())["model"]["ensemble"]
    assert [(m["source"], m["answers"]) for m in members] == [
        (str(step), ["age"]),
        (str(out / "model"), ["sex"]),
    ]
    # --window-length reaches the model (this compact-layout one refuses it)
    with pytest.raises(ValueError, match="only the summary layout"):
        _run(
            ["lm", "evaluate", str(out / "model"), str(sample_store.path), "--window-length", "320"]
        )
    summary = tmp_path / "lm.json"
    rc = _run(
        ["lm", "summarize", str(results), "--ablation", f"random={results}", "--out", str(summary)]
    )
    assert rc == 0
    flat = json.loads(summary.read_text())
    assert flat["split"] == ["site_stratified"] and "age_mae" in flat and "site_age_mae" in flat
    assert flat["ablations"]["random"]["age_mae"] == flat["age_mae"]
    assert flat["parse_failures"] == 0 and "machine" in flat and "date" in flat
    scan = tmp_path / "scan.npy"
    np.save(scan, sample_store.timeseries(0))
    capsys.readouterr()
    assert _run(["lm", "predict", str(out / "model"), str(scan), "--question", "age"]) == 0
    assert "90% interval" in capsys.readouterr().out
    assert _run(["lm", "predict", str(out / "model"), str(scan), "--question", "sex"]) == 0
    alone = capsys.readouterr().out
    assert "p = " in alone
    model = str(out / "model")
    assert _run(["lm", "predict", model, model, str(scan), "--question", "sex"]) == 0
    assert capsys.readouterr().out == alone
    # resume: nothing left to do, the step count is kept
    assert (
        _run(
            [
                "lm",
                "train",
                "--config",
                str(cfg),
                "--store",
                str(sample_store.path),
                "--fmri-tokenizer",
                str(fmri_tokenizer_dir),
                "--base-model",
                str(tiny_lm_dir),
                "--out-dir",
                str(out),
                "--max-steps",
                "2",
                "--targets",
                "age,sex",
                "--resume",
            ]
        )
        == 0
    )


def test_cli_train_refuses_a_set_that_an_option_also_gives(tmp_path):
    argv = ["lm", "train", "--store", str(tmp_path), "--max-steps", "2"]
    with pytest.raises(ValueError, match="give it once"):
        _run([*argv, "--set", "train.max_steps=3"])
    with pytest.raises(ValueError, match="give it once"):
        _run([*argv, "--set", "train={max_steps: 3}"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _run(["lm", "train", "--store", str(tmp_path), "--set", "novalue"])
