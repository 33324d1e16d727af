"""The study runner: configuration, arms, "not run" reasons, resumability and study.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmrilm.study import runner as runner_mod
from fmrilm.study.runner import (
    ArmBudget,
    ArmSpec,
    StudyConfig,
    expand_arms,
    load_study_config,
    run_study,
)
from tests.conftest import REPO
from tests.study.tiny_models import save_tiny_fmri_tokenizer, save_tiny_llava, tiny_causal_lm

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ISSUE_KEYS = (
    "age_mae",
    "age_mae_ci95",
    "age_r",
    "age_r2",
    "predicted_age_std_ratio",
    "parse_failures",
    "trainable_params",
    "train_seconds",
    "peak_rss_mb",
    "status",
)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown arms"):
        StudyConfig(store="x", arms=["clip"])
    with pytest.raises(ValueError, match="renderings"):
        StudyConfig(store="x", renderings=["spectrogram"])
    with pytest.raises(ValueError, match="unknown fields"):
        StudyConfig(store="x", budgets={"vlm": {"epochs": 3}})
    with pytest.raises(ValueError, match="unknown study config keys"):
        StudyConfig.from_dict({"store": "x", "colour": "red"})
    c = StudyConfig(store="x", budget={"steps": 7}, budgets={"vlm": {"steps": 2}}, lora={"r": 2})
    assert c.budget_for("vlm").steps == 2 and c.budget_for("fmri_encoder").steps == 7
    assert c.lora.r == 2
    assert StudyConfig(out="a/b/study.json").work_path == Path("a/b/study")


@pytest.mark.parametrize("name", ["study.yaml", "study_sample.yaml"])
def test_repository_configs_load(name):
    c = load_study_config(REPO / "configs" / name)
    assert c.task == "age" and c.arms and c.budget.steps > 0
    assert load_study_config(REPO / "configs" / name, task="sex").task == "sex"


def test_expand_arms_names():
    c = StudyConfig(
        store="x",
        arms=["baseline_median", "efficientnet_imagenet", "vlm"],
        renderings=["heatmap", "connectivity"],
        vlms=["org/tiny-vlm"],
    )
    names = [s.name for s in expand_arms(c)]
    assert names == [
        "baseline_median",
        "efficientnet_imagenet:heatmap",
        "efficientnet_imagenet:connectivity",
        "vlm:org/tiny-vlm:heatmap",
        "vlm:org/tiny-vlm:connectivity",
    ]
    assert ArmSpec("vlm", "heatmap", "org/tiny-vlm").slug == "vlm_org_tiny-vlm_heatmap"


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory, sample_store):
    root = tmp_path_factory.mktemp("study_assets")
    return {
        "vlm": str(save_tiny_llava(root / "tiny-llava")),
        "tokenizer": str(save_tiny_fmri_tokenizer(root / "tok", sample_store.n_rois, 64)),
    }


def _config(tmp_path, store, **kw) -> StudyConfig:
    base = dict(
        store=str(store.path),
        arms=[
            "baseline_median",
            "baseline_site",
            "baseline_fc",
            "efficientnet_imagenet",
            "fmri_encoder",
            "shared_vocab",
            "vlm",
        ],
        renderings=["heatmap"],
        window_length=64,
        stride=64,
        image_size=64,
        n_prefix=2,
        lora={"r": 2},
        budget=ArmBudget(steps=3, batch_size=4, max_train_windows=12, max_seconds=60),
        budgets={
            "vlm": {"steps": 1, "batch_size": 2, "max_train_windows": 4, "max_eval_windows": 3}
        },
        vlms=["no-such-org/no-such-vlm"],
        n_bootstrap=50,
        out=str(tmp_path / "results" / "study.json"),
    )
    base.update(kw)
    return StudyConfig(**base)


def test_short_study_resumes_arm_by_arm(tmp_path, sample_store, tiny_assets, monkeypatch):
    config = _config(
        tmp_path,
        sample_store,
        fmri_tokenizer=tiny_assets["tokenizer"],
        vlms=[tiny_assets["vlm"], "no-such-org/no-such-vlm"],
    )
    study = run_study(config, lm_factory=tiny_causal_lm, progress=False)
    arms = study["arms"]
    assert list(arms) == [
        "baseline_median",
        "baseline_site",
        "baseline_fc",
        "efficientnet_imagenet:heatmap",
        "fmri_encoder",
        "shared_vocab",
        "vlm:tiny-llava:heatmap",
        "vlm:no-such-org/no-such-vlm:heatmap",
    ]
    for name in (
        "baseline_median",
        "baseline_site",
        "baseline_fc",
        "efficientnet_imagenet:heatmap",
        "fmri_encoder",
        "vlm:tiny-llava:heatmap",
    ):
        assert arms[name]["status"] == "ok", arms[name].get("traceback", arms[name])
        assert set(ISSUE_KEYS) <= set(arms[name]), name
        assert arms[name]["parse_failures"] == 0
        assert arms[name]["age_mae"] > 0 and len(arms[name]["age_mae_ci95"]) == 2
    assert arms["efficientnet_imagenet:heatmap"]["trainable_params"] > 0
    _check_site_baseline(config, sample_store)
    comp = study["comparisons"]
    assert comp["metric"] == "mae" and set(comp["arms"]["fmri_encoder"]) == {
        "baseline_median",
        "baseline_site",
        "baseline_fc",
    }
    vs_fc = comp["arms"]["fmri_encoder"]["baseline_fc"]
    assert vs_fc["value_a"] == pytest.approx(arms["fmri_encoder"]["age_mae"])
    assert vs_fc["value_b"] == pytest.approx(arms["baseline_fc"]["age_mae"])
    assert vs_fc["difference"] == pytest.approx(vs_fc["value_a"] - vs_fc["value_b"])
    assert vs_fc["ci_low"] <= vs_fc["difference"] <= vs_fc["ci_high"]
    assert "baseline_fc" not in comp["arms"].get("baseline_fc", {})
    assert "fmri_encoder" in comp["arms"]["efficientnet_imagenet:heatmap"]
    assert 'id="comparisons"' in Path(study["report"]["html"]).read_text()
    assert arms["shared_vocab"]["status"] == "not run"
    assert "shared_vocab_model" in arms["shared_vocab"]["reason"]
    assert "not available offline" in arms["vlm:no-such-org/no-such-vlm:heatmap"]["reason"]
    for key in ("split", "commit", "date", "machine"):
        assert study[key]
    assert study["split"]["scheme"] == "site_stratified"
    on_disk = json.loads(Path(config.out).read_text())
    assert on_disk["arms"].keys() == arms.keys()
    assert "predictions" not in on_disk["arms"]["baseline_fc"]  # kept in the per-arm files
    assert Path(study["report"]["html"]).is_file()
    arm_files = sorted(p.name for p in (config.work_path / "arms").glob("*.json"))
    assert len(arm_files) == 8

    # a rerun skips every finished arm; "not run" arms are checked again (cheap)
    calls = []
    kinds = ("baseline_median", "baseline_site", "baseline_fc", "efficientnet_imagenet")
    for kind in (*kinds, "fmri_encoder", "vlm"):
        monkeypatch.setitem(runner_mod._RUNNERS, kind, lambda s, c, b: calls.append(s.name))
    again = run_study(config, lm_factory=tiny_causal_lm, progress=False, report=False)
    assert calls == ["vlm:no-such-org/no-such-vlm:heatmap"]
    assert again["arms"]["baseline_fc"]["age_mae"] == arms["baseline_fc"]["age_mae"]

    # after a kill before an arm's file was written, only that arm reruns
    monkeypatch.undo()
    (config.work_path / "arms" / "baseline_fc.json").unlink()
    seen = []
    original = runner_mod._RUNNERS["baseline_fc"]
    monkeypatch.setitem(
        runner_mod._RUNNERS, "baseline_fc", lambda s, c, b: seen.append(s.name) or original(s, c, b)
    )
    for kind in (
        "baseline_median",
        "baseline_site",
        "efficientnet_imagenet",
        "fmri_encoder",
        "vlm",
    ):
        monkeypatch.setitem(runner_mod._RUNNERS, kind, lambda s, c, b: pytest.fail(s.name))
    config.vlms = [tiny_assets["vlm"]]
    third = run_study(config, lm_factory=tiny_causal_lm, progress=False, report=False)
    assert seen == ["baseline_fc"] and third["arms"]["baseline_fc"]["status"] == "ok"


def test_changed_settings_rerun_an_arm_and_failures_are_recorded(tmp_path, sample_store):
    config = _config(tmp_path, sample_store, arms=["baseline_median", "efficientnet_random"])

    def broken_lm():
        raise RuntimeError("simulated LM crash")

    study = run_study(config, lm_factory=broken_lm, progress=False, report=False)
    assert study["arms"]["baseline_median"]["status"] == "ok"
    failed = study["arms"]["efficientnet_random:heatmap"]
    assert failed["status"] == "failed" and "simulated LM crash" in failed["reason"]
    first = study["arms"]["baseline_median"]["wall_seconds"]
    config.seed = 1  # a different setting: the finished arm is not reused
    again = run_study(config, lm_factory=broken_lm, progress=False, report=False)
    assert again["arms"]["baseline_median"]["wall_seconds"] != first


def test_missing_lm_stage_or_weights_is_not_run(tmp_path, sample_store):
    config = _config(
        tmp_path, sample_store, arms=["efficientnet_imagenet"], lm=str(tmp_path / "no-such-lm")
    )
    study = run_study(config, progress=False, report=False)
    arm = study["arms"]["efficientnet_imagenet:heatmap"]
    assert arm["status"] == "not run" and "cannot be loaded" in arm["reason"]


def test_missing_store_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_study(StudyConfig(store=str(tmp_path / "none")), progress=False)


def test_classification_task_reports_balanced_accuracy_and_auc(tmp_path, sample_store):
    pytest.importorskip("fmrilm.lm.tasks")
    config = _config(
        tmp_path,
        sample_store,
        task="sex",
        arms=["baseline_median", "efficientnet_random"],
        budget=ArmBudget(steps=2, batch_size=4, max_train_windows=8),
    )
    study = run_study(config, lm_factory=tiny_causal_lm, progress=False)
    assert study["task_kind"] == "classification"
    for name in ("baseline_median", "efficientnet_random:heatmap"):
        arm = study["arms"][name]
        assert arm["status"] == "ok", arm.get("traceback", arm)
        assert "sex_balanced_accuracy" in arm and "sex_auc" in arm
        assert len(arm["sex_auc_ci95"]) == 2 and arm["parse_failures"] == 0
    assert "balanced accuracy" in Path(study["report"]["html"]).read_text()


def _check_site_baseline(config, store):
    """Each test subject's site-only prediction is its site's mean age over the training split."""
    table = store.table.reset_index(drop=True)
    train = table.iloc[store.split_indices(config.scheme)["train"]]
    site_mean = train.groupby("site")["age"].mean()
    arm = json.loads((config.work_path / "arms" / "baseline_site.json").read_text())
    preds = arm["predictions"]
    assert preds["site"] and len(preds["site"]) == len(preds["y_pred"])
    for site, pred in zip(preds["site"], preds["y_pred"], strict=True):
        expected = site_mean.get(site, train["age"].mean())
        assert pred == pytest.approx(expected)


def test_every_arm_is_scored_on_the_scans_long_enough_for_a_window(tmp_path, sample_store):
    # window 180: two of the sample's six test scans (152 and 176 points) are too short
    config = _config(
        tmp_path, sample_store, arms=["baseline_median", "baseline_site"], window_length=180
    )
    study = run_study(config, progress=False, report=False)
    table = sample_store.table.reset_index(drop=True)
    test = sample_store.split_indices(config.scheme)["test"]
    n_long = int((table["n_timepoints"].to_numpy()[test] >= 180).sum())
    assert 0 < n_long < len(test)
    assert study["split"]["n_test_scans"] == n_long
    assert study["split"]["n_test_scans_too_short"] == len(test) - n_long
    for arm in study["arms"].values():
        assert arm["status"] == "ok" and arm["n_test_scans"] == n_long


@pytest.mark.parametrize("task", ["age", "diagnosis"])  # the sample's test scans are all male
def test_linear_probes_read_every_encoders_features(tmp_path, sample_store, tiny_assets, task):
    config = _config(
        tmp_path,
        sample_store,
        arms=["linear_probe"],
        task=task,
        fmri_tokenizer=tiny_assets["tokenizer"],
    )
    assert [s.name for s in expand_arms(config)] == [
        "linear_probe:efficientnet_imagenet:heatmap",
        "linear_probe:efficientnet_random:heatmap",
        "linear_probe:fmri_encoder",
        "linear_probe:fmri_codes",
    ]
    study = run_study(config, progress=False, report=False)
    for name, arm in study["arms"].items():
        assert arm["status"] == "ok", (name, arm.get("traceback", arm))
        assert arm["parse_failures"] == 0 and arm["n_train_windows"] > 0
        assert arm["n_test_scans"] == study["split"]["n_test_scans"]
        if task == "age":
            assert arm["age_mae"] > 0 and len(arm["age_mae_ci95"]) == 2
            assert "alpha" in arm["penalty"]
        else:
            assert 0 <= arm["diagnosis_auc"] <= 1 and "C" in arm["penalty"]
    # the fMRI encoder's pooled features: code_dim=4 per ROI (mean over time patches)
    assert study["arms"]["linear_probe:fmri_encoder"]["trainable_params"] == (
        sample_store.n_rois * 4 + 1
    )


def test_a_tokenizer_fitted_on_another_scheme_is_not_run(tmp_path, sample_store, tiny_assets):
    from fmrilm.tokenizer import FMRITokenizer

    tok = FMRITokenizer.from_pretrained(tiny_assets["tokenizer"])
    r = sample_store.n_rois
    tok.scaler_stats = {"scheme": "heldout_sites", "median": [0.0] * r, "iqr": [1.0] * r}
    tok.save_pretrained(tmp_path / "tok_heldout")
    config = _config(
        tmp_path, sample_store, arms=["fmri_encoder"], fmri_tokenizer=str(tmp_path / "tok_heldout")
    )
    arm = run_study(config, progress=False, report=False)["arms"]["fmri_encoder"]
    assert arm["status"] == "not run"
    assert "trained on split scheme 'heldout_sites'" in arm["reason"]
