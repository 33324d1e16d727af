"""Metric definitions of the tokenizer evaluation."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import r2_score

from fmrilm.tokenizer import FMRITokenizer
from fmrilm.tokenizer.evaluation import _per_roi_r2, evaluate_tokenizer, regression_metrics
from fmrilm.tokenizer.synthetic import SyntheticWindows

from .conftest import N_ROIS, WINDOW, tiny_model_config


def test_regression_metrics_is_pooled_sklearn_r2():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 7))
    p = y + 0.5 * rng.normal(size=y.shape)
    m = regression_metrics(y, p)
    assert np.isclose(m["r2"], r2_score(y.ravel(), p.ravel()))
    assert np.isclose(m["mse"], np.mean((y - p) ** 2))
    assert np.isclose(m["pearson_r"], np.corrcoef(y.ravel(), p.ravel())[0, 1])
    per = _per_roi_r2([y.ravel()], [p.ravel()], [np.tile(np.arange(7), 50)], 7)
    np.testing.assert_allclose(per, [r2_score(y[:, j], p[:, j]) for j in range(7)])


def test_evaluate_tokenizer_reports_everything(text_domain):
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_model_config())
    ds = SyntheticWindows(16, WINDOW, N_ROIS, seed=5)
    m.train()
    m(ds.x)  # k-means init
    x = ds.x.reshape(-1, N_ROIS)
    m.set_conditional(x.mean(0), torch.cov(x.T), 0.05, 0.0)
    batches = [
        {"window": ds.x[i : i + 8], "roi_mask": torch.ones(8, N_ROIS, dtype=bool)} for i in (0, 8)
    ]
    from fmrilm.baselines.reconstruction import GaussianConditional

    gc = GaussianConditional.fit([ds.x.numpy()], ridge=0.05)
    res = evaluate_tokenizer(m, batches, baseline=gc, text_domain=text_domain)
    assert res["n_windows"] == 16
    for r in ("0.2", "0.5", "0.75"):
        # with alpha = 0 the untrained model predicts exactly the conditional
        assert np.isclose(
            res["r2_masked_by_ratio"][r], res["r2_gaussian_conditional_by_ratio"][r], atol=1e-4
        )
        assert res["r2_zero_by_ratio"][r] < 0.05
    assert 0 < res["codebook_usage"] <= 1 and 1 <= res["perplexity"] <= m.config.codebook_size
    assert 0 <= res["discriminator_accuracy"] <= 1
    assert len(res["per_roi_r2_codes"]) == N_ROIS
