"""Fixtures of the tokenizer tests: a tiny config, synthetic windows, a random text domain."""

from __future__ import annotations

import pytest

from fmrilm.tokenizer import TokenizerConfig
from fmrilm.tokenizer.synthetic import SyntheticWindows
from fmrilm.tokenizer.text_domain import random_text_domain

N_ROIS, WINDOW, PATCH, LM_DIM = 12, 32, 8, 16


def tiny_model_config(**kw) -> dict:
    cfg = dict(
        n_rois=N_ROIS,
        window_length=WINDOW,
        patch_length=PATCH,
        d_model=16,
        n_heads=2,
        encoder_layers=1,
        decoder_layers=1,
        codebook_size=32,
        code_dim=8,
        projector_hidden=16,
        discriminator_hidden=16,
        lm_dim=LM_DIM,
        kmeans_iters=2,
    )
    cfg.update(kw)
    return cfg


def tiny_train_config(out_dir, max_steps=8, **train_kw) -> dict:
    train = {
        "max_steps": max_steps,
        "checkpoint_every_n_steps": 2,
        "progress_bar": False,
        "log_every_n_steps": 2,
        "align_tokens": 64,
    }
    train.update(train_kw)
    return {
        "seed": 0,
        "out_dir": str(out_dir),
        "data": {"window_length": WINDOW, "batch_size": 8},
        "model": tiny_model_config(),
        "train": train,
    }


def synthetic_datasets(**kw) -> dict:
    return {
        "train": SyntheticWindows(64, WINDOW, N_ROIS, seed=0, **kw),
        "val": SyntheticWindows(16, WINDOW, N_ROIS, seed=1),
    }


@pytest.fixture
def tiny_config() -> TokenizerConfig:
    return TokenizerConfig(**tiny_model_config())


@pytest.fixture
def text_domain():
    return random_text_domain(vocab=64, dim=LM_DIM)


@pytest.fixture
def windows():
    return SyntheticWindows(16, WINDOW, N_ROIS, seed=3).x
