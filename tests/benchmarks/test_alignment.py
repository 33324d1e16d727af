"""The alignment benchmark's probes: what a linear and a non-linear classifier can tell apart."""

from __future__ import annotations

import numpy as np
from benchmarks.alignment import _probe


def test_a_linear_probe_sees_moments_and_an_mlp_also_sees_shape():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 4))
    assert abs(_probe(a, rng.normal(size=(600, 4)), 0) - 0.5) < 0.06  # one distribution
    assert _probe(a, rng.normal(size=(600, 4)) + 2.0, 0) > 0.9  # shifted mean
    # the same mean, another covariance: spread along two axes, flat along the other two
    b = rng.normal(size=(600, 4)) * np.r_[2.0, 2.0, 0.2, 0.2]
    assert abs(_probe(a, b, 0) - 0.5) < 0.08
    assert _probe(a, b, 0, "mlp") > 0.8
