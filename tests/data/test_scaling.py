import numpy as np
import pytest

from fmrilm.data import RobustScaler, build_store
from tests.conftest import synthetic_records


def test_transform_is_median_and_iqr_with_parentheses():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 3)) * [1, 5, 10] + [0, 100, -3]).astype(np.float32)
    s = RobustScaler.fit([x[:200], x[200:]], max_rows=10_000)
    q25, med, q75 = np.percentile(x, [25, 50, 75], axis=0)
    np.testing.assert_allclose(s.median, med, rtol=1e-5)
    np.testing.assert_allclose(s.iqr, q75 - q25, rtol=1e-5)
    y = s.transform(x)
    np.testing.assert_allclose(y, (x - med) / (q75 - q25), rtol=1e-4, atol=1e-5)
    # BrainLM's published form, x - median / iqr, is not what we compute.
    assert not np.allclose(y, x - med / (q75 - q25))
    np.testing.assert_allclose(np.median(y, axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.inverse_transform(y), x, rtol=1e-4, atol=1e-4)


def test_constant_roi_gets_unit_iqr():
    x = np.zeros((50, 2), np.float32)
    x[:, 0] = np.arange(50)
    s = RobustScaler.fit([x])
    assert s.iqr[1] == 1.0 and np.isfinite(s.transform(x)).all()


def test_reservoir_sampling_stays_close():
    rng = np.random.default_rng(1)
    scans = [rng.standard_normal((400, 2)).astype(np.float32) + k * 0.01 for k in range(50)]
    full = RobustScaler.fit(scans, max_rows=10**6)
    sampled = RobustScaler.fit(scans, max_rows=5_000)
    np.testing.assert_allclose(sampled.median, full.median, atol=0.05)
    np.testing.assert_allclose(sampled.iqr, full.iqr, rtol=0.05)


def test_errors():
    with pytest.raises(ValueError, match="got no scans"):
        RobustScaler.fit([])
    s = RobustScaler(np.zeros(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="scan has 4 ROIs, the scaler was fitted on 3"):
        s.transform(np.zeros((2, 4), np.float32))


def test_store_scaler_is_fitted_on_training_subjects_only(tmp_path):
    recs = synthetic_records(30)
    # Make test subjects' signal far off so that leaking them would move the median.
    store = build_store(recs, tmp_path / "s", progress=False)
    for scheme in store.split_schemes:
        idx = store.split_indices(scheme)
        expected = RobustScaler.fit([store.timeseries(i) for i in idx["train"]])
        got = store.scaler(scheme)
        np.testing.assert_allclose(got.median, expected.median, rtol=1e-6)
        np.testing.assert_allclose(got.iqr, expected.iqr, rtol=1e-6)
        everything = RobustScaler.fit([store.timeseries(i) for i in range(len(store))])
        assert not np.allclose(got.median, everything.median)
    with pytest.raises(KeyError, match="no scaler for split scheme 'nope'"):
        store.scaler("nope")
