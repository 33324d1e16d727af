"""Training on the bundled sample store with a tiny LM: runs, evaluates, resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from fmrilm.lm.evaluation import evaluate, flat_summary, format_results, predict_scan
from fmrilm.lm.training import train

from .conftest import FakeFMRITokenizer


def _tokenizer():
    fk = FakeFMRITokenizer(n_rois=200, patch_length=20, codebook_size=8, d_lm=32)
    fk.config.window_length = 160
    return fk


def _config(store, lm_dir, out, steps=4, **train_kw):
    return {
        "base_model": str(lm_dir),
        "store": str(store.path),
        "out_dir": str(out),
        "targets": ["age", "sex", "diagnosis", "FIQ"],
        "model": {"questions_per_example": 2, "lora_r": 2, "compact_rois": 8},
        "train": {
            "max_steps": steps,
            "batch_size": 2,
            "checkpoint_every_n_steps": 2,
            "warmup_steps": 1,
            **train_kw,
        },
    }


@pytest.fixture(scope="module")
def trained(sample_store, tiny_lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_run")
    res = train(_config(sample_store, tiny_lm_dir, out), fmri_tokenizer=_tokenizer())
    return res


def test_train_writes_model_and_summary(trained):
    assert trained["global_step"] == 4
    assert trained["tokens_per_second"] > 0
    assert trained["budget"]["tokens_per_window"] == 8 * 9 + 2
    model = trained["model"]
    assert [t.name for t in model.tasks] == ["age", "sex", "diagnosis", "FIQ"]
    assert model.task("sex").extra["train_shares"][1] > 0.5  # more males in ABIDE
    assert trained["out_dir"] and (model.config.extra["scaler"]["scheme"] == "site_stratified")


def test_evaluate_against_baselines(trained, sample_store):
    res = evaluate(
        trained["model"],
        sample_store,
        n_bootstrap=20,
        baselines=("trivial", "site", "connectivity_correlation"),
    )
    assert res["parse_failures"] == 0
    for name in ("age", "sex", "diagnosis", "FIQ"):
        t = res["targets"][name]
        assert list(t["results"])[:2] == ["lm", "trivial"]
        assert t["results"]["lm"]["n_parse_failures"] == 0
    age = res["targets"]["age"]["results"]["lm"]["metrics"]["mae"]["value"]
    assert np.isfinite(age)
    flat = flat_summary({"site_stratified": res, "heldout_sites": res})
    for key in (
        "age_mae",
        "fc_age_mae",
        "site_age_mae",
        "heldout_sites_age_mae",
        "heldout_sites_fc_sex_auc",
        "parse_failures",
        "predicted_age_std_ratio",
    ):
        assert key in flat
    assert len(flat["age_mae_ci95"]) == 2
    # the LM and FC are compared pairwise on the same subjects
    paired = res["targets"]["age"]["lm_vs_connectivity"]["connectivity_correlation"]
    lm_mae = res["targets"]["age"]["results"]["lm"]["metrics"]["mae"]["value"]
    fc_mae = res["targets"]["age"]["results"]["connectivity_correlation"]["metrics"]["mae"]["value"]
    assert paired["difference"] == pytest.approx(lm_mae - fc_mae)
    assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"]
    assert flat["lm_minus_fc_age_mae"] == pytest.approx(lm_mae - fc_mae)
    assert "heldout_sites_lm_minus_fc_diagnosis_auc" in flat
    assert "lm" in format_results(res)
    with pytest.raises(ValueError, match="trained on"):
        evaluate(trained["model"], sample_store, scheme="heldout_sites", n_bootstrap=0)


def test_predict_raw_scan(trained, sample_store):
    raw = sample_store.timeseries(0)
    age = predict_scan(trained["model"], raw, "age")
    assert not age["parse_failure"] and age["interval"][0] <= age["value"] <= age["interval"][1]
    sex = predict_scan(trained["model"], raw, "sex")
    assert sum(sex["probabilities"].values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fewer than one window"):
        predict_scan(trained["model"], raw[:50], "age")


class _Interrupt(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at_step:
            raise KeyboardInterrupt  # stands in for a kill: no checkpoint is written on exit


def _trainable(model):
    return {k: v.detach().clone() for k, v in model.trainable_parameters().items()}


def test_resume_continues_the_same_run(sample_store, tiny_lm_dir, tmp_path):
    ref = train(
        _config(sample_store, tiny_lm_dir, tmp_path / "a", steps=4), fmri_tokenizer=_tokenizer()
    )
    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "b", steps=4)
    with pytest.raises(BaseException):  # noqa: B017 - the interrupt propagates
        train(cfg, fmri_tokenizer=_tokenizer(), extra_callbacks=[_Interrupt(3)])
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").exists()
    res = train(cfg, fmri_tokenizer=_tokenizer(), resume=True)
    assert res["resumed_from"] is not None and res["steps_this_run"] == 2
    assert res["global_step"] == 4
    a, b = _trainable(ref["model"]), _trainable(res["model"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_resume_after_sigkill(sample_store, tiny_lm_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    here = Path(__file__).parent
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(here / "_kill_script.py"),
            str(tiny_lm_dir),
            str(sample_store.path),
            str(out),
            str(here),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt_dir = out / "checkpoints"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(ckpt_dir.glob("step*.ckpt"))) >= 2:  # at least step 2 and 4 written
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the training finished or failed before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists()
    cfg = {
        "base_model": str(tiny_lm_dir),
        "store": str(sample_store.path),
        "out_dir": str(out),
        "targets": ["age", "sex"],
        "model": {"lora_r": 2, "compact_rois": 8},
        "train": {
            "max_steps": 12,
            "batch_size": 2,
            "checkpoint_every_n_steps": 2,
            "warmup_steps": 1,
        },
    }
    tok = _tokenizer()
    res = train(cfg, fmri_tokenizer=tok, resume=True)
    assert res["resumed_from"] is not None
    assert res["global_step"] == 12 and 0 < res["steps_this_run"] < 12
    assert (out / "model" / "trainable.safetensors").exists()


def test_refuses_a_tokenizer_fitted_on_another_scheme(sample_store, tiny_lm_dir, tmp_path):
    tok = _tokenizer()
    tok.scaler_stats = {"scheme": "heldout_sites", "median": [0.0], "iqr": [1.0]}
    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "run")
    cfg["scheme"] = "site_stratified"
    with pytest.raises(ValueError, match="trained on split scheme 'heldout_sites'"):
        train(cfg, fmri_tokenizer=tok)


class _Corrupt(Callback):
    """Adds noise to the trainable weights after one step, so a later check is worse."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn_like(p))


def test_keeps_the_step_with_the_lowest_validation_loss(sample_store, tiny_lm_dir, tmp_path):
    from fmrilm.lm.model import FMRILanguageModel
    from fmrilm.lm.training import QADataset, scan_labels, validation_loss

    cfg = _config(
        sample_store, tiny_lm_dir, tmp_path, steps=6, val_every_n_steps=2, keep="best_val_loss"
    )
    res = train(cfg, fmri_tokenizer=_tokenizer(), extra_callbacks=[_Corrupt(5)])
    val = res["validation"]
    steps = [s for s, _ in val["curve"]]
    losses = [v for _, v in val["curve"]]
    assert steps == [2, 4, 6] and all(np.isfinite(losses))
    assert losses[2] > min(losses[:2])  # the noise after step 5 made step 6 worse
    assert val["best_step"] == steps[int(np.argmin(losses))] != 6
    assert val["best_val_loss"] == pytest.approx(min(losses), rel=1e-5)
    # the saved model is the best step's: its loss on the same validation examples, recomputed
    # in one batch and by validation_loss, is the curve's minimum (the last step's is another)
    model = FMRILanguageModel.from_pretrained(res["model_dir"], fmri_tokenizer=_tokenizer())
    model.eval()
    enc = dict(np.load(tmp_path / "codes_site_stratified_val.npz"))
    labels = scan_labels(sample_store.table.reset_index(drop=True), model.tasks)
    ds = QADataset(
        model, enc["codes"], enc["scan_index"], labels, batch_size=2, questions_per_example=2
    )
    batch = model.collate([ds[g] for g in range(ds.n)])
    with torch.no_grad():
        loss = float(model(**batch).loss)
    assert loss == pytest.approx(min(losses), rel=1e-4)
    assert loss != pytest.approx(losses[-1], rel=1e-2)
    again = validation_loss(model, enc["codes"], enc["scan_index"], labels, batch_size=2)
    assert again == pytest.approx(loss, rel=1e-4)


def test_best_val_loss_needs_validation(sample_store, tiny_lm_dir, tmp_path):
    with pytest.raises(ValueError, match="val_every_n_steps"):
        train(
            _config(sample_store, tiny_lm_dir, tmp_path, keep="best_val_loss"),
            fmri_tokenizer=_tokenizer(),
        )
    with pytest.raises(ValueError, match="train.keep"):
        train(
            _config(sample_store, tiny_lm_dir, tmp_path, keep="best"), fmri_tokenizer=_tokenizer()
        )


def test_short_scans_are_read_from_one_shorter_window(sample_store, tiny_lm_dir, tmp_path):
    """Scans shorter than a window (KKI, OHSU in the sample) train and get answers."""
    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "short", steps=2)
    cfg["model"].update({"layout": "summary", "summary_connectivity_dim": 2})
    cfg["data"] = {"min_window_length": 60}
    res = train(cfg, fmri_tokenizer=_tokenizer())
    assert res["n_scans_without_window"] == 0 and res["n_short_windows"] > 0
    model = res["model"]
    assert model.config.min_window_length == 60
    ev = evaluate(model, sample_store, n_bootstrap=0, baselines=("trivial",))
    assert ev["n_scans_without_window"] == 0 and ev["n_short_windows"] > 0
    assert ev["parse_failures"] == 0
    n_test = len(sample_store.split_indices("site_stratified")["test"])
    assert ev["targets"]["age"]["n_eval_scans"] == n_test  # every test scan answered
    raw = sample_store.timeseries(0)
    short = predict_scan(model, raw[:78], "age")  # 3 whole patches
    assert short["n_windows"] == 1 and not short["parse_failure"]
    with pytest.raises(ValueError, match="fewer than one window"):
        predict_scan(model, raw[:59], "age")


def test_whole_scans_are_read_as_one_window_of_consecutive_tokenizer_windows(
    sample_store, tiny_lm_dir, tmp_path
):
    """``data.window_length`` above the tokenizer's: each scan (all under 320 points) is one
    window, encoded as consecutive 160-point tokenizer windows; answers read the whole scan."""
    from fmrilm.lm.training import encode_window_list

    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "whole", steps=2)
    cfg["model"].update({"layout": "summary", "summary_connectivity_dim": 2})
    cfg["data"] = {"window_length": 320, "min_window_length": 60}
    res = train(cfg, fmri_tokenizer=_tokenizer())
    model = res["model"]
    assert (model.config.window_length, model.config.n_patches) == (320, 16)
    cached = np.load(tmp_path / "whole" / "codes_site_stratified_train.npz")
    assert len(np.unique(cached["scan_index"])) == len(cached["scan_index"])  # one per scan
    assert res["n_train_windows"] == len(sample_store.split_indices("site_stratified")["train"])
    raw = sample_store.timeseries(0)
    assert len(raw) > 160  # a scan longer than the tokenizer's window
    answer = predict_scan(model, raw, "age")
    assert answer["n_windows"] == 1 and not answer["parse_failure"]
    x = torch.randn(200, 200)
    codes = encode_window_list(_tokenizer(), [x], n_patches=16)
    pieces = [_tokenizer().encode(x[None, a:b])[0].numpy() for a, b in ((0, 160), (160, 200))]
    np.testing.assert_array_equal(codes[0, :, :10], np.concatenate(pieces, axis=1))


def test_training_on_tokenizer_windows_answers_whole_scans_with_the_same_weights(
    sample_store, tiny_lm_dir, tmp_path
):
    """``data.train_window_length: 160`` under ``window_length: 320`` trains on the same padded
    160-point windows as ``window_length: 160`` (the same weights), and answers whole scans."""
    runs = {}
    for name, data in (
        ("windows", {"min_window_length": 60}),
        ("whole", {"window_length": 320, "train_window_length": 160, "min_window_length": 60}),
    ):
        cfg = _config(sample_store, tiny_lm_dir, tmp_path / name, steps=2)
        cfg["model"].update({"layout": "summary", "summary_connectivity_dim": 2})
        cfg["data"] = data
        runs[name] = train(cfg, fmri_tokenizer=_tokenizer())
    a, b = runs["windows"], runs["whole"]
    assert a["n_train_windows"] == b["n_train_windows"] and b["train_window_length"] == 160
    assert b["model"].config.window_length == 320 and b["model"].config.n_patches == 16
    assert b["model"].config.extra["train_window_length"] == 160
    wa, wb = a["model"].trainable_parameters(), b["model"].trainable_parameters()
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    raw = sample_store.timeseries(0)
    whole = predict_scan(b["model"], raw, "age")
    assert whole["n_windows"] == 1  # the whole scan
    assert predict_scan(a["model"], raw, "age")["n_windows"] > 1
    # a model trained on 160-point windows, told to answer from 320: the same answer
    reread = predict_scan(a["model"].set_window_length(320), raw, "age")
    assert reread["n_windows"] == 1
    assert reread["value"] == pytest.approx(whole["value"], abs=1e-3)
    with pytest.raises(ValueError, match="multiple of the 20-point patch"):
        a["model"].set_window_length(330)
    with pytest.raises(ValueError, match="below min_window_length"):
        a["model"].set_window_length(40)
    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "refused", steps=1)
    cfg["data"] = {"window_length": 320, "train_window_length": 160}
    with pytest.raises(ValueError, match="needs the summary layout"):
        train(cfg, fmri_tokenizer=_tokenizer())
    cfg["model"]["layout"] = "summary"
    for bad in (330, 150, 340):  # not whole patches, or longer than the answered window
        cfg["data"] = {"window_length": 320, "train_window_length": bad}
        with pytest.raises(ValueError, match="multiple of the 20-point patch"):
            train(cfg, fmri_tokenizer=_tokenizer())


def test_only_the_summary_layout_answers_from_windows_of_another_length(trained):
    with pytest.raises(ValueError, match="only the summary layout"):
        trained["model"].set_window_length(320)


def test_short_windows_need_the_summary_layout(sample_store, tiny_lm_dir, tmp_path):
    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "refused", steps=1)
    cfg["data"] = {"min_window_length": 60}  # the compact layout reads the codes themselves
    with pytest.raises(ValueError, match="only the summary layout"):
        train(cfg, fmri_tokenizer=_tokenizer())


def test_train_stride_overlaps_training_windows_only(sample_store, tiny_lm_dir, tmp_path):
    """``data.train_stride`` adds training windows; validation and the model keep ``stride``."""
    from fmrilm.lm.training import encode_windows

    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "stride", steps=1, val_every_n_steps=1)
    cfg["data"] = {"stride": 80, "train_stride": 20}
    res = train(cfg, fmri_tokenizer=_tokenizer())
    expected = {}
    for split, stride in (("train", 20), ("val", 80)):
        enc = encode_windows(
            sample_store,
            _tokenizer(),
            split=split,
            scheme="site_stratified",
            window_length=160,
            stride=stride,
        )
        expected[split] = enc
        cached = np.load(tmp_path / "stride" / f"codes_site_stratified_{split}.npz")
        np.testing.assert_array_equal(cached["start"], enc["start"])
        np.testing.assert_array_equal(cached["codes"], enc["codes"])
    every_80 = encode_windows(
        sample_store,
        _tokenizer(),
        split="train",
        scheme="site_stratified",
        window_length=160,
        stride=80,
    )
    assert len(expected["train"]["codes"]) > len(every_80["codes"])
    assert res["n_train_windows"] == len(expected["train"]["codes"])
    assert res["train_stride"] == 20
    assert res["model"].config.stride == 80  # scans are still answered every 80 points
    assert res["model"].config.extra["train_stride"] == 20
    cfg["data"]["train_stride"] = 0
    with pytest.raises(ValueError, match="train_stride"):
        train({**cfg, "out_dir": str(tmp_path / "zero")}, fmri_tokenizer=_tokenizer())


def test_keep_freed_memory_is_applied_only_when_asked(
    sample_store, tiny_lm_dir, tmp_path, monkeypatch
):
    import fmrilm.memory

    calls = []
    # recorded, not applied: mallopt would change this whole test process's allocator
    monkeypatch.setattr(fmrilm.memory, "keep_freed_memory_for_reuse", lambda: calls.append(1))
    train(
        _config(sample_store, tiny_lm_dir, tmp_path / "off", steps=1), fmri_tokenizer=_tokenizer()
    )
    assert calls == []
    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "on", steps=1, keep_freed_memory=True)
    train(cfg, fmri_tokenizer=_tokenizer())
    assert calls == [1]


def test_every_step_checkpoint_exports_as_a_model(sample_store, tiny_lm_dir, tmp_path):
    from safetensors.torch import load_file

    from fmrilm.lm.model import FMRILanguageModel
    from fmrilm.lm.training import export_checkpoint

    out = tmp_path / "run"
    cfg = _config(sample_store, tiny_lm_dir, out, steps=6, checkpoints_kept=-1)
    train(cfg, fmri_tokenizer=_tokenizer())
    steps = sorted(p.name for p in (out / "checkpoints").glob("step*.ckpt"))
    assert steps == ["step0000002.ckpt", "step0000004.ckpt", "step0000006.ckpt"]

    exported = export_checkpoint(out / "model", out / "checkpoints" / steps[0], tmp_path / "s2")
    summary = exported.train_summary
    assert (summary["global_step"], summary["run_global_step"]) == (2, 6)
    state = torch.load(out / "checkpoints" / steps[0], map_location="cpu", weights_only=False)
    weights = load_file(tmp_path / "s2" / "trainable.safetensors")
    final = load_file(out / "model" / "trainable.safetensors")
    assert weights.keys() == final.keys()
    # the exported weights are the checkpoint's (step 2), not the final model's (step 6)
    ckpt = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    differs = 0
    for name, value in weights.items():
        matches = [v for k, v in ckpt.items() if k.endswith(name) or name.endswith(k)]
        assert len(matches) == 1, name
        assert torch.equal(value, matches[0].to(value.dtype)), name
        differs += not torch.equal(value, final[name])
    assert differs > 0
    again = FMRILanguageModel.from_pretrained(tmp_path / "s2", fmri_tokenizer=_tokenizer())
    assert again.train_summary["global_step"] == 2


def test_export_refuses_a_checkpoint_of_another_configuration(
    sample_store, tiny_lm_dir, tmp_path, trained
):
    from fmrilm.lm.training import export_checkpoint

    other = tmp_path / "other"
    cfg = _config(sample_store, tiny_lm_dir, other, steps=2)
    cfg["model"]["lora_r"] = 4
    train(cfg, fmri_tokenizer=_tokenizer())
    ckpt = next((other / "checkpoints").glob("step*.ckpt"))
    model_dir = trained["model_dir"]
    with pytest.raises(ValueError, match="does not hold this model's trainable weights"):
        export_checkpoint(model_dir, ckpt, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_checkpoint(model_dir, tmp_path / "missing.ckpt", tmp_path / "x")
    with pytest.raises(ValueError, match="another folder"):
        export_checkpoint(model_dir, ckpt, model_dir)


def test_checkpoints_kept_must_be_all_or_positive(sample_store, tiny_lm_dir, tmp_path):
    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "run", checkpoints_kept=0)
    with pytest.raises(ValueError, match="checkpoints_kept"):
        train(cfg, fmri_tokenizer=_tokenizer())


def test_connectivity_components_are_fitted_on_the_training_windows(
    sample_store, tiny_lm_dir, tmp_path
):
    """The components come from the training windows' codes alone, are saved with the model
    and fitted again identically on --resume."""
    from fmrilm.lm import FMRILanguageModel
    from fmrilm.lm.summary import CodeSummary, decoded_connectivity

    cfg = _config(sample_store, tiny_lm_dir, tmp_path / "pc", steps=2)
    cfg["model"].update({"layout": "summary", "summary_connectivity_components": 3})
    res = train(cfg, fmri_tokenizer=_tokenizer())
    model = res["model"]
    cached = np.load(tmp_path / "pc" / "codes_site_stratified_train.npz")
    ref = CodeSummary(n_rois=200, embed_dim=8, connectivity_components=3)
    ref.fit_connectivity_components(
        decoded_connectivity(_tokenizer(), torch.from_numpy(cached["codes"]))
    )
    torch.testing.assert_close(model.summary.components, ref.components)
    loaded = FMRILanguageModel.from_pretrained(res["model_dir"], fmri_tokenizer=_tokenizer())
    torch.testing.assert_close(loaded.summary.components, ref.components)
    cfg["train"]["max_steps"] = 4
    again = train(cfg, fmri_tokenizer=_tokenizer(), resume=True)
    assert again["resumed_from"] is not None
    torch.testing.assert_close(again["model"].summary.components, ref.components)
    ev = evaluate(again["model"], sample_store, n_bootstrap=0, baselines=("trivial",))
    assert ev["parse_failures"] == 0


def test_trains_and_evaluates_on_a_cross_validation_fold(
    sample_store, tiny_lm_dir, fmri_tokenizer_dir, tmp_path, monkeypatch
):
    """A fold of the parent's train + val subjects takes the parent's tokenizer; the model trains
    on the fold's training subjects, answers its validation fold, and refuses the parent's."""
    import benchmarks.common
    import benchmarks.lm_cv

    from fmrilm.lm.training import load_fmri_tokenizer

    tok = load_fmri_tokenizer(fmri_tokenizer_dir)  # a real one: saved with the model
    tok.scaler_stats = {"scheme": "site_stratified", "median": [0.0], "iqr": [1.0]}
    run = tmp_path / "cv" / "main" / "fold0"
    cfg = _config(sample_store, tiny_lm_dir, run, steps=2)
    cfg["targets"] = ["age", "sex"]
    cfg["scheme"] = "site_stratified-cv2-fold0"
    model = train(cfg, fmri_tokenizer=tok)["model"]
    assert model.config.scheme == "site_stratified-cv2-fold0"
    assert (
        model.config.extra["scaler"]["median"]
        == sample_store.scaler("site_stratified").median.tolist()
    )
    cached = np.load(run / "codes_site_stratified-cv2-fold0_train.npz")
    rows = sample_store.split_indices("site_stratified-cv2-fold0")
    assert set(np.unique(cached["scan_index"])) <= set(rows["train"])
    res = evaluate(model, sample_store, split="val", n_bootstrap=0, baselines=("trivial",))
    fold = sample_store.split_of_subjects("site_stratified-cv2-fold0")
    for name in ("age", "sex"):
        lm = res["targets"][name]["lm_subjects"]
        assert lm["subject_ids"] and {fold[s] for s in lm["subject_ids"]} == {"val"}
        assert len(lm["truth"]) == len(lm["predictions"]) == len(lm["subject_ids"])
    assert np.asarray(res["targets"]["sex"]["lm_subjects"]["predictions"]).shape[1] == 2
    with pytest.raises(ValueError, match="trained on"):
        evaluate(model, sample_store, scheme="site_stratified", n_bootstrap=0)
    # the cross-validation benchmark evaluates the fold's model itself and pools its answers
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(benchmarks.common, "DOCS", tmp_path / "benchmarks.md")
    argv = ["--store", str(sample_store.path), "--variant", f"main={tmp_path / 'cv' / 'main'}"]
    assert benchmarks.lm_cv.main([*argv, "--n-bootstrap", "20", "--result-name", "cv"]) == 0
    assert (run / "val_evaluation.json").is_file()
    rec = json.loads((tmp_path / "results" / "cv.json").read_text())
    assert (rec["scheme"], rec["n_folds"], rec["folds_pooled"]) == ("site_stratified", 2, [0])
    pooled = rec["variants"]["main"]["pooled"]
    assert pooled["age_n_subjects"] == len(res["targets"]["age"]["lm_subjects"]["subject_ids"])
    assert pooled["age_mae"] == pytest.approx(
        res["targets"]["age"]["results"]["lm"]["metrics"]["mae"]["value"]
    )
    tok.scaler_stats = {"scheme": "heldout_sites", "median": [0.0], "iqr": [1.0]}
    with pytest.raises(ValueError, match="trained on split scheme 'heldout_sites'"):
        train({**cfg, "out_dir": str(tmp_path / "other")}, fmri_tokenizer=tok)
