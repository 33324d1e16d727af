"""The LM benchmark keeps earlier ablations when its main configuration changes."""

from __future__ import annotations

import json

import pytest
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


def test_a_finished_training_of_the_same_config_is_adopted(tmp_path):
    from benchmarks.lm import finished_training

    from fmrilm.lm.training import DEFAULT_CONFIG, merge_config

    out = tmp_path / "site_stratified"
    config = {"out_dir": str(out), "store": "S", "train": {"max_steps": 600, "num_threads": 1}}
    assert finished_training(config) is None  # nothing trained
    (out / "model").mkdir(parents=True)
    resolved = merge_config(DEFAULT_CONFIG, config)
    (out / "config.resolved.json").write_text(json.dumps(resolved))
    (out / "train_summary.json").write_text(
        json.dumps({"global_step": 600, "train_seconds": 2400.0})
    )
    assert finished_training(config) == 2400.0
    older = json.loads(json.dumps(resolved))
    del older["train"]["keep_freed_memory"]  # written before that key existed
    (out / "config.resolved.json").write_text(json.dumps(older))
    assert finished_training(config) == 2400.0
    moved = {**config, "out_dir": str(tmp_path / "elsewhere")}
    (tmp_path / "elsewhere").symlink_to(out)
    assert finished_training(moved) == 2400.0  # the same training, found in another folder
    other = {**config, "data": {"train_stride": 20}}  # not the config it was trained with
    assert finished_training(other) is None
    (out / "train_summary.json").write_text(
        json.dumps({"global_step": 300, "train_seconds": 1200.0})
    )
    assert finished_training(config) is None  # stopped early


def _fake_results(scheme: str, age_mae: float) -> dict:
    def entry(value):
        return {"metrics": {"mae": {"value": value, "ci_low": value - 1, "ci_high": value + 1}}}

    return {
        "scheme": scheme,
        "model": {"layout": "summary", "init": "subspace"},
        "train_summary": {"train_seconds": 100.0, "global_step": 600},
        "targets": {"age": {"results": {"lm": entry(age_mae), "trivial": entry(5.0)}}},
        "parse_failures": 0,
        "wall_seconds": {"train": 100.0, "evaluate": 10.0},
    }


def test_ablation_runs_are_added_to_a_kept_main_configuration(tmp_path, monkeypatch):
    import benchmarks.common
    import benchmarks.lm

    from fmrilm.lm.training import DEFAULT_CONFIG, merge_config

    results = tmp_path / "results"
    monkeypatch.setattr(benchmarks.lm, "RESULTS", results)
    monkeypatch.setattr(benchmarks.common, "RESULTS", results)
    monkeypatch.setattr(benchmarks.common, "DOCS", tmp_path / "benchmarks.md")
    main_cfg = tmp_path / "lm.yaml"
    main_cfg.write_text("model:\n  layout: summary\n")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(
        json.dumps(
            {
                "age_mae": 2.86,
                "heldout_sites_age_mae": 3.83,
                "config": "configs/lm.yaml",
                "commit": "abc123",
                "date": "2026-12-02T10:00:00Z",
                "ablations": {"reference": {"age_mae": 2.86}, "compact": {"age_mae": 4.98}},
                "runs": {"site_stratified": {"scheme": "site_stratified"}},
            }
        )
    )
    run = tmp_path / "runs" / "stride"
    for scheme, mae in (("site_stratified", 3.1), ("heldout_sites", 4.2)):
        folder = run / scheme
        (folder / "model").mkdir(parents=True)
        cfg = merge_config(
            DEFAULT_CONFIG,
            {
                "model": {"layout": "summary"},
                "data": {"train_stride": 20},
                "scheme": scheme,
                "out_dir": str(folder),
                "train": {"max_steps": 600},
            },
        )
        (folder / "config.resolved.json").write_text(json.dumps(cfg))
        (folder / "train_summary.json").write_text(
            json.dumps({"global_step": 600, "train_seconds": 100.0})
        )
        (folder / "results.json").write_text(json.dumps(_fake_results(scheme, mae)))
        (folder / "results.txt").write_text(f"{scheme} table\n")
    store = tmp_path / "store"
    store.mkdir()
    argv = ["--store", str(store), "--config", str(main_cfg), "--keep-main"]
    argv += ["--ablation-run", f"train_stride_20={run}", "--no-ablations"]
    with pytest.raises(SystemExit, match="--carry-ablations"):
        benchmarks.lm.main(argv)
    assert benchmarks.lm.main([*argv, "--carry-ablations", str(earlier)]) == 0
    out = json.loads((results / "lm.json").read_text())
    assert out["age_mae"] == 2.86 and out["heldout_sites_age_mae"] == 3.83  # main kept
    assert out["main_carried_from"]["commit"] == "abc123"
    assert out["ablations"]["reference"] == {"age_mae": 2.86}
    assert out["ablations"]["compact"]["carried_from"]["commit"] == "abc123"
    added = out["ablations"]["train_stride_20"]
    assert added["age_mae"] == 3.1 and added["heldout_sites"]["age_mae"] == 4.2
    assert added["config_differences"] == {
        "data.train_stride": 20,
        "train.max_steps": 600,
    }
    assert set(out["runs"]) == {
        "site_stratified",
        "train_stride_20@site_stratified",
        "train_stride_20@heldout_sites",
    }
    assert "heldout_sites table" in (results / "lm_tables.md").read_text()


def test_an_unfinished_ablation_run_is_refused(tmp_path):
    from benchmarks.lm import ablation_run_specs

    folder = tmp_path / "site_stratified"
    folder.mkdir()
    (folder / "config.resolved.json").write_text(
        json.dumps({"out_dir": str(folder), "train": {"max_steps": 600}})
    )
    with pytest.raises(SystemExit, match="not finished"):
        ablation_run_specs("x", tmp_path, 10)
    with pytest.raises(SystemExit, match="no finished run"):
        ablation_run_specs("x", tmp_path / "missing", 10)


def _finished_run(folder, scheme: str, **overrides) -> None:
    from fmrilm.lm.training import DEFAULT_CONFIG, merge_config

    (folder / "model").mkdir(parents=True)
    cfg = merge_config(
        DEFAULT_CONFIG,
        {
            "scheme": scheme,
            "out_dir": str(folder),
            "model": {"layout": "summary"},
            "train": {"max_steps": 600},
            **overrides,
        },
    )
    (folder / "config.resolved.json").write_text(json.dumps(cfg))
    (folder / "train_summary.json").write_text(
        json.dumps({"global_step": 600, "train_seconds": 100.0})
    )


def test_ensemble_runs_are_evaluated_per_scheme_and_listed_with_their_members(
    tmp_path, monkeypatch
):
    import argparse

    import benchmarks.common
    import benchmarks.lm

    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    for scheme in ("site_stratified", "heldout_sites"):
        _finished_run(a / scheme, scheme)
        _finished_run(b / scheme, scheme, train={"max_steps": 600, "weight_decay": 1.0})
    store = tmp_path / "store"
    store.mkdir()
    args = argparse.Namespace(out_dir=tmp_path / "bench", store=store, bootstrap=10)
    specs = benchmarks.lm.ensemble_run_specs("ens", [a, b], args)
    assert [s["name"] for s in specs] == ["ens@site_stratified", "ens@heldout_sites"]
    assert specs[0]["ensemble"] == [
        str(a / "site_stratified" / "model"),
        str(b / "site_stratified" / "model"),
    ]
    assert specs[1]["config"]["out_dir"] == str(tmp_path / "bench" / "ens" / "heldout_sites")
    with pytest.raises(SystemExit, match="no run in"):
        benchmarks.lm.ensemble_run_specs("ens", [a, tmp_path / "runs" / "c"], args)
    _finished_run(tmp_path / "runs" / "c" / "site_stratified", "site_stratified")
    (tmp_path / "runs" / "c" / "site_stratified" / "train_summary.json").write_text(
        json.dumps({"global_step": 10, "train_seconds": 5.0})
    )
    with pytest.raises(SystemExit, match="not finished"):
        benchmarks.lm.ensemble_run_specs("ens", [a, tmp_path / "runs" / "c"], args)

    # the benchmark lists the ensemble (its results written beforehand: not evaluated again)
    results = tmp_path / "results"
    monkeypatch.setattr(benchmarks.lm, "RESULTS", results)
    monkeypatch.setattr(benchmarks.common, "RESULTS", results)
    monkeypatch.setattr(benchmarks.common, "DOCS", tmp_path / "benchmarks.md")
    for scheme, mae in (("site_stratified", 2.5), ("heldout_sites", 3.5)):
        folder = tmp_path / "bench" / "ens" / scheme
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(_fake_results(scheme, mae)))
        (folder / "results.txt").write_text(f"ensemble {scheme}\n")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"age_mae": 2.86, "ablations": {}, "commit": "abc"}))
    config = tmp_path / "lm.yaml"
    config.write_text("model:\n  layout: summary\n")
    argv = ["--store", str(store), "--config", str(config), "--keep-main", "--no-ablations"]
    argv += ["--carry-ablations", str(earlier), "--out-dir", str(tmp_path / "bench")]
    assert benchmarks.lm.main([*argv, "--ensemble-run", f"ens={a},{b}"]) == 0
    entry = json.loads((results / "lm.json").read_text())["ablations"]["ens"]
    assert entry["age_mae"] == 2.5 and entry["heldout_sites"]["age_mae"] == 3.5
    assert [m["run_dir"] for m in entry["ensemble"]] == [str(a), str(b)]
    assert entry["ensemble"][1]["config_differences"] == {
        "train.max_steps": 600,
        "train.weight_decay": 1.0,
    }
    with pytest.raises(SystemExit, match="NAME=RUN_DIR,RUN_DIR"):
        benchmarks.lm.main([*argv, "--ensemble-run", f"ens={a}"])


def test_a_checkpoint_selection_is_evaluated_and_listed_with_its_steps(tmp_path, monkeypatch):
    import argparse

    import benchmarks.common
    import benchmarks.lm

    run = tmp_path / "runs" / "a"
    store = tmp_path / "store"
    store.mkdir()
    args = argparse.Namespace(out_dir=tmp_path / "bench", store=store, bootstrap=10)
    for scheme in ("site_stratified", "heldout_sites"):
        _finished_run(run / scheme, scheme, train={"max_steps": 600, "checkpoints_kept": -1})
    with pytest.raises(SystemExit, match="benchmarks.lm_checkpoints"):
        benchmarks.lm.selection_run_specs("sel", run, args)
    members = {
        s: [f"sex,diagnosis={run / s / 'steps' / 'step0000200'}", f"age={run / s / 'model'}"]
        for s in ("site_stratified", "heldout_sites")
    }
    for scheme in ("site_stratified", "heldout_sites"):
        selection = {
            "scheme": scheme,
            "every": 100,
            "chosen_steps": {"age": 600, "sex": 200, "diagnosis": 200},
            "members": members[scheme],
            "curve": [],
        }
        (run / scheme / "checkpoint_selection.json").write_text(json.dumps(selection))
    specs = benchmarks.lm.selection_run_specs("sel", run, args)
    assert [s["name"] for s in specs] == ["sel@site_stratified", "sel@heldout_sites"]
    assert specs[0]["ensemble"] == members["site_stratified"]
    assert len(specs[0]["member_configs"]) == 1  # one run: its training time counts once

    results = tmp_path / "results"
    monkeypatch.setattr(benchmarks.lm, "RESULTS", results)
    monkeypatch.setattr(benchmarks.common, "RESULTS", results)
    monkeypatch.setattr(benchmarks.common, "DOCS", tmp_path / "benchmarks.md")
    for scheme, mae in (("site_stratified", 2.6), ("heldout_sites", 3.4)):
        folder = tmp_path / "bench" / "sel" / scheme
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(_fake_results(scheme, mae)))
        (folder / "results.txt").write_text(f"selection {scheme}\n")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"age_mae": 2.86, "ablations": {}, "commit": "abc"}))
    config = tmp_path / "lm.yaml"
    config.write_text("model:\n  layout: summary\n")
    argv = ["--store", str(store), "--config", str(config), "--keep-main", "--no-ablations"]
    argv += ["--carry-ablations", str(earlier), "--out-dir", str(tmp_path / "bench")]
    assert benchmarks.lm.main([*argv, "--selection-run", f"sel={run}"]) == 0
    entry = json.loads((results / "lm.json").read_text())["ablations"]["sel"]
    assert entry["age_mae"] == 2.6 and entry["heldout_sites"]["age_mae"] == 3.4
    assert entry["checkpoint_selection"]["chosen_steps"]["sex"] == 200
    assert entry["ensemble"][0]["config_differences"] == {
        "train.max_steps": 600,
        "train.checkpoints_kept": -1,
    }
