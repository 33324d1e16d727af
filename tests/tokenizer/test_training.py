"""Lightning training: logs and checkpoints, NaN diagnosis, kill + resume, DDP (gloo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fmrilm.tokenizer import FMRITokenizer
from fmrilm.tokenizer.synthetic import SyntheticWindows
from fmrilm.tokenizer.text_domain import random_text_domain
from fmrilm.tokenizer.training import (
    CodebookDumpCallback,
    NonFiniteLossError,
    find_resume_checkpoint,
    train,
)

from .conftest import N_ROIS, WINDOW, synthetic_datasets, tiny_train_config

HERE = Path(__file__).resolve().parent


def _state(module):
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_train_writes_logs_checkpoints_and_model(tmp_path, text_domain):
    res = train(
        tiny_train_config(tmp_path / "run", max_steps=6),
        datasets=synthetic_datasets(),
        text_domain=text_domain,
    )
    out = Path(res["out_dir"])
    assert res["global_step"] == 6
    assert (out / "logs" / "version_0" / "metrics.csv").exists()
    assert any((out / "tb" / "version_0").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "last.ckpt").exists()
    metrics = (out / "logs" / "version_0" / "metrics.csv").read_text()
    for col in ("train/rec_visible", "train/domain", "train/dann_lambda", "train/disc_acc"):
        assert col in metrics
    m = FMRITokenizer.from_pretrained(out / "model")
    assert bool(m.cond_fitted)
    assert m.encode(SyntheticWindows(2, WINDOW, N_ROIS).x).shape == (2, N_ROIS, WINDOW // 8)


def test_nan_loss_stops_with_diagnosis(tmp_path, text_domain):
    from fmrilm.tokenizer.training import StepSampler

    sampler = StepSampler(64, 8, 0, 4)
    bad_step = 2
    bad = sampler._batch(bad_step)[0]  # a window first seen at step 2
    assert all(bad not in sampler._batch(s) for s in range(bad_step))
    ds = synthetic_datasets()
    ds["train"] = SyntheticWindows(64, WINDOW, N_ROIS, seed=0, nan_at=bad)
    with pytest.raises(NonFiniteLossError, match=rf"step {bad_step}: .*rec_visible.*NaN/Inf"):
        train(
            tiny_train_config(tmp_path / "nan", max_steps=4), datasets=ds, text_domain=text_domain
        )
    # nothing from the failing step reaches disk: checkpoints stop before it, all finite
    for f in (tmp_path / "nan" / "checkpoints").glob("*.ckpt"):
        c = torch.load(f, map_location="cpu", weights_only=False)
        assert c["global_step"] <= bad_step
        assert all(
            torch.isfinite(v).all() for v in c["state_dict"].values() if v.is_floating_point()
        )


def test_resume_after_sigkill_continues_trajectory(tmp_path, text_domain):
    steps = 8
    ref = train(
        tiny_train_config(tmp_path / "ref", max_steps=steps),
        datasets=synthetic_datasets(),
        text_domain=text_domain,
    )
    ref_state = _state(ref["module"])

    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_train_script.py"), str(run), str(steps), "1.0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    ckpt = run / "checkpoints" / "step0000004.ckpt"
    deadline = time.time() + 90
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ""
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model").exists()  # it did not finish
    last = find_resume_checkpoint(run / "checkpoints")
    step_at_kill = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 4 <= step_at_kill < steps

    res = train(
        tiny_train_config(run, max_steps=steps),
        resume=True,
        datasets=synthetic_datasets(),
        text_domain=text_domain,
    )
    assert res["resumed_from"] is not None and res["global_step"] == steps
    state = _state(res["module"])
    for k, v in ref_state.items():
        torch.testing.assert_close(state[k], v, atol=1e-5, rtol=1e-4, msg=f"{k} diverged")


def test_ddp_gloo_two_processes_identical_codebooks(tmp_path):
    dump = tmp_path / "dump"
    cfg = tiny_train_config(tmp_path / "ddp", max_steps=4)
    cfg["train"].update({"strategy": "ddp_spawn", "accelerator": "cpu", "devices": 2})
    t0 = time.time()
    train(
        cfg,
        extra_callbacks=[CodebookDumpCallback(str(dump))],
        datasets=synthetic_datasets(),
        text_domain=random_text_domain(vocab=64, dim=16),
    )
    a = torch.load(dump / "codebook_rank0.pt", weights_only=True)
    b = torch.load(dump / "codebook_rank1.pt", weights_only=True)
    assert torch.equal(a["codebook"], b["codebook"])
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k], b["state"][k], msg=k)
    assert time.time() - t0 < 120


def test_alignment_in_the_text_principal_subspace(tmp_path, text_domain):
    cfg = tiny_train_config(tmp_path / "run", max_steps=4)
    cfg["model"]["align_dim"] = 4
    res = train(cfg, datasets=synthetic_datasets(), text_domain=text_domain)
    m = FMRITokenizer.from_pretrained(Path(res["out_dir"]) / "model")
    basis, mean = m.text_basis, m.text_mean
    assert basis.shape == (4, text_domain.dim)
    assert torch.allclose(basis @ basis.T, torch.eye(4), atol=1e-5)  # orthonormal directions
    # the basis is the text's top principal subspace: it keeps more variance than any other
    # 4 directions we try (random ones)
    x = text_domain.embeddings[text_domain.train] - mean
    kept = (x @ basis.T).pow(2).sum()
    q, _ = torch.linalg.qr(
        torch.randn(text_domain.dim, 4, generator=torch.Generator().manual_seed(0))
    )
    assert kept > (x @ q).pow(2).sum()
    # LM embeddings of codes lie in mean + span(basis); the classifier compares 4-d features
    lm = m.codebook_lm_embeddings().detach()
    assert lm.shape == (m.config.codebook_size, text_domain.dim)
    resid = (lm - mean) - ((lm - mean) @ basis.T) @ basis
    assert resid.abs().max() < 1e-5
    assert m.text_features(text_domain.embeddings[:3]).shape == (3, 4)
    with pytest.raises(ValueError, match="align_dim must be in"):
        FMRITokenizer(m.config.__class__(**{**m.config.to_dict(), "align_dim": 10_000}))
