"""Closed-form baselines: Gaussian conditional, linear interpolation, zero predictor."""

from __future__ import annotations

import numpy as np
import torch

from fmrilm.baselines.reconstruction import (
    GaussianConditional,
    conditional_mean,
    linear_interpolation,
    masked_r2,
    zero_predictor,
)


def test_gaussian_conditional_recovers_planted_linear_relation():
    rng = np.random.default_rng(0)
    n, r = 4000, 8
    x = rng.normal(size=(n, r))
    x[:, 5] = 2.0 * x[:, 0] - 1.5 * x[:, 3] + 0.5 * x[:, 7]  # planted exact relation
    gc = GaussianConditional.fit([x], ridge=1e-10)
    test = rng.normal(size=(50, r))
    test[:, 5] = 2.0 * test[:, 0] - 1.5 * test[:, 3] + 0.5 * test[:, 7]
    visible = np.ones_like(test, dtype=bool)
    visible[:, 5] = False
    visible[::2, 1] = False  # other hidden entries do not matter
    pred = gc.predict(torch.from_numpy(test), torch.from_numpy(visible)).numpy()
    np.testing.assert_allclose(pred[:, 5], test[:, 5], atol=1e-5)
    np.testing.assert_array_equal(pred[visible], test[visible])
    assert masked_r2(test[:, 5], pred[:, 5]) > 0.999999


def test_conditional_mean_matches_direct_solve_in_both_forms():
    torch.manual_seed(0)
    r = 20
    a = torch.randn(r, r, dtype=torch.float64)
    cov = a @ a.T / r + 0.1 * torch.eye(r, dtype=torch.float64)
    mean = torch.randn(r, dtype=torch.float64)
    for ratio in (0.1, 0.5, 0.9):  # small hidden set (precision form) and large (covariance form)
        x = torch.randn(30, r, dtype=torch.float64)
        vis = torch.rand(30, r) > ratio
        vis[:6] = vis[0]  # rows sharing a pattern are solved together
        pred = conditional_mean(x, vis, mean, cov, 0.05)
        lam = 0.05 * cov.diagonal().mean()
        for i in range(30):
            v, m = vis[i], ~vis[i]
            if not m.any():
                continue
            ref = mean[m] + cov[m][:, v] @ torch.linalg.solve(
                cov[v][:, v] + lam * torch.eye(int(v.sum()), dtype=torch.float64), x[i, v] - mean[v]
            )
            torch.testing.assert_close(pred[i, m], ref)
            torch.testing.assert_close(pred[i, v], x[i, v])


def test_select_ridge_and_save(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    gc = GaussianConditional.fit([{"window": x[None], "roi_mask": np.ones((1, 6), bool)}])
    vis = rng.random((200, 6)) > 0.3
    res = gc.select_ridge([x[:200]], [vis], grid=(1e-3, 1.0, 100.0))
    assert res["ridge"] in (1e-3, 1.0) and gc.ridge == res["ridge"]
    gc.save(tmp_path / "gc.npz")
    gc2 = GaussianConditional.load(tmp_path / "gc.npz")
    np.testing.assert_allclose(gc2.cov.numpy(), gc.cov.numpy())


def test_fit_ignores_masked_roi_columns():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 50, 4))
    rm = np.ones((3, 4), bool)
    x[1, :, 2] = 1000.0  # constant column of one scan, flagged in roi_mask
    rm[1, 2] = False
    gc = GaussianConditional.fit([{"window": x, "roi_mask": rm}])
    assert abs(float(gc.mean[2])) < 0.5 and float(gc.cov[2, 2]) < 2.0


def test_linear_interpolation_and_zero():
    t = np.arange(10, dtype=np.float32)
    x = np.stack([t, 2 * t], axis=1)
    vis = np.ones_like(x, dtype=bool)
    vis[3:7, 0] = False
    vis[:, 1] = False
    out = linear_interpolation(x, vis)
    np.testing.assert_allclose(out[:, 0], t)  # a line is interpolated exactly
    np.testing.assert_allclose(out[:, 1], 0.0)  # no visible value: 0
    assert not zero_predictor(x).any()
