"""The code probe's decoded-connectivity features: one row per scan, the mean over its windows."""

from __future__ import annotations

import numpy as np
import torch
from benchmarks.code_probe import decoded_connectivity_features
from torch import nn

from fmrilm.lm.summary import decoded_connectivity


class _Decoder(nn.Module):
    """Decodes each code as a fixed random time course per (ROI, patch)."""

    def __init__(self):
        super().__init__()
        self.courses = nn.Parameter(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)))

    def decode(self, codes):  # (B, R, P) -> (B, P * 5, R)
        x = self.courses[codes]  # (B, R, P, 5)
        return x.flatten(2).transpose(1, 2)


def test_features_average_each_scans_windows():
    tok = _Decoder()
    codes = np.random.default_rng(0).integers(0, 8, size=(5, 4, 3))
    scans = np.array([7, 7, 2, 7, 2])
    rows = np.array([2, 7])
    x = decoded_connectivity_features(tok, codes, scans, rows)
    assert x.shape == (2, 6)  # 4 ROIs -> 6 pairs
    z = decoded_connectivity(tok, torch.from_numpy(codes)).numpy()
    iu = np.triu_indices(4, 1)
    np.testing.assert_allclose(x[0], z[[2, 4]].mean(0)[iu], atol=1e-6)
    np.testing.assert_allclose(x[1], z[[0, 1, 3]].mean(0)[iu], atol=1e-6)
