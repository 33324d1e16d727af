"""Rendering fMRI windows as images: shapes, a fixed colour scale, no leakage of test data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fmrilm.study.render import (
    ImageRenderer,
    connectivity_matrix,
    fit_renderer_on_store,
    render_matrix,
    store_windows,
)


def _windows(n=4, t=40, r=12, seed=0, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((t, r)) * scale + shift).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("kind", ["heatmap", "connectivity"])
@pytest.mark.parametrize("size", [32, 224])
def test_shapes_dtype_and_pil(kind, size):
    train = _windows()
    r = ImageRenderer(kind, size=size).fit(train)
    img = r.transform(train[0])
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    batch = r.transform_many(train[:3])
    assert batch.shape == (3, size, size, 3)
    pil = r.to_pil(train[1])
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (size, size)
    np.testing.assert_array_equal(np.asarray(pil), r.transform(train[1]))


def test_heatmap_orientation_rois_are_rows():
    # one pixel per cell: ROI 0 high everywhere, ROI 1 low everywhere
    x = np.zeros((6, 3), np.float32)
    x[:, 0], x[:, 1] = 5.0, -5.0
    r = ImageRenderer("heatmap", size=8, resample="nearest", percentiles=(0, 100)).fit([x])
    img = render_matrix(r.matrix(x), vmin=r.vmin, vmax=r.vmax, size=None)
    assert img.shape == (3, 6, 3)  # (R, T, 3)
    assert (img[0] == img[0, 0]).all() and (img[1] == img[1, 0]).all()
    assert not np.array_equal(img[0, 0], img[1, 0])


def test_fixed_scale_same_value_same_colour_across_scans():
    r = ImageRenderer("heatmap", size=16, colormap="magma").fit(_windows())
    # two different scans that both contain the value 0.7 in a uniform region
    a = np.full((40, 12), 0.7, np.float32)
    b = np.full((40, 12), 0.7, np.float32)
    b[:, 6:] = -3.0  # b's own range differs; the colour of 0.7 must not
    ia, ib = r.transform(a), r.transform(b)
    np.testing.assert_array_equal(ia[:6], ib[:6])  # image rows are ROIs: ROIs 0-5 -> rows 0-7
    # values beyond the fitted limits saturate instead of rescaling the image
    hi = r.transform(np.full((40, 12), 1e6, np.float32))
    top = r.transform(np.full((40, 12), r.vmax, np.float32))
    np.testing.assert_array_equal(hi, top)


def test_colours_follow_the_colormap_monotonically():
    r = ImageRenderer("heatmap", size=8, colormap="gray", percentiles=(0, 100))
    r.fit([np.linspace(-1, 1, 80, dtype=np.float32).reshape(40, 2)])
    levels = [r.transform(np.full((40, 2), v, np.float32))[0, 0, 0] for v in (-1, -0.5, 0, 0.5, 1)]
    assert levels == sorted(levels) and levels[0] == 0 and levels[-1] == 255


def test_fit_uses_only_the_arrays_given():
    train, test = _windows(seed=1), _windows(seed=2, scale=5.0, shift=100.0)
    r1 = ImageRenderer("heatmap").fit(train)
    r2 = ImageRenderer("heatmap").fit(train)
    r2.transform_many(test)  # rendering test data never refits
    assert (r1.vmin, r1.vmax) == (r2.vmin, r2.vmax)
    assert r1.n_fit_arrays == len(train)
    # limits come from the training values: the test scans' range is far outside them
    assert r1.vmax < 5 and min(t.min() for t in test) > r1.vmax
    # fitting on train+test gives different limits: the test data would have leaked
    r3 = ImageRenderer("heatmap").fit(train + test)
    assert r3.vmax > r1.vmax


def test_transform_before_fit_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        ImageRenderer().transform(np.zeros((4, 4), np.float32))


def test_invalid_settings():
    with pytest.raises(ValueError, match="kind"):
        ImageRenderer("spectrogram")
    with pytest.raises(ValueError, match="colormap"):
        ImageRenderer(colormap="no-such-map")
    with pytest.raises(ValueError, match="percentiles"):
        ImageRenderer(percentiles=(99, 1))
    with pytest.raises(ValueError, match="at least one"):
        ImageRenderer().fit([])


def test_connectivity_matrix_and_constant_rois():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 5)).astype(np.float32)
    x[:, 3] = 0.0  # a ROI outside this subject's mask
    c = connectivity_matrix(x)
    np.testing.assert_allclose(c[:3, :3], np.corrcoef(x[:, :3].T), atol=1e-5)
    assert np.isnan(c[3]).all() and np.isnan(c[:, 3]).all()
    r = ImageRenderer("connectivity", size=8, resample="nearest").fit([x])
    img = render_matrix(c, vmin=r.vmin, vmax=r.vmax, size=None)
    assert (img[3] == 0).all()  # drawn in the bad colour, not as "uncorrelated"
    z = connectivity_matrix(x, fisher_z=True)
    np.testing.assert_allclose(z[0, 1], np.arctanh(c[0, 1]), rtol=1e-5)


def test_constant_training_data_gives_a_valid_range():
    r = ImageRenderer("heatmap", size=8).fit([np.ones((4, 3), np.float32)])
    assert r.vmin < 1.0 < r.vmax


def test_save_load_roundtrip(tmp_path):
    train = _windows()
    r = ImageRenderer("connectivity", size=48, colormap="RdBu_r", symmetric=True).fit(train)
    assert r.vmin == -r.vmax
    path = r.save(tmp_path / "renderer.json")
    assert json.loads(path.read_text())["format"] == "fmrilm.study.ImageRenderer"
    back = ImageRenderer.load(path)
    assert back == r
    np.testing.assert_array_equal(back.transform(train[2]), r.transform(train[2]))


def test_fit_on_store_reads_training_scans_only(sample_store, monkeypatch):
    splits = sample_store.split_indices("site_stratified")
    read = []
    original = type(sample_store).timeseries

    def spy(self, i):
        read.append(int(i))
        return original(self, i)

    monkeypatch.setattr(type(sample_store), "timeseries", spy)
    r = fit_renderer_on_store(
        sample_store,
        ImageRenderer("heatmap", size=32),
        window_length=64,
        stride=64,
        max_windows=12,
    )
    assert read and set(read) <= set(splits["train"].tolist())
    assert r.extra["fit_split"] == "train" and r.is_fitted
    windows, rows = store_windows(sample_store, "test", window_length=64, stride=64, max_windows=3)
    assert set(rows.tolist()) <= set(splits["test"].tolist())
    assert r.transform(windows[0]).shape == (32, 32, 3)
