import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fmrilm.data import WindowDataset, build_store, window_spans, window_starts
from tests.conftest import make_record, synthetic_records


def test_window_starts():
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]  # the end is covered
    assert window_starts(3, 4, 1).tolist() == []
    with pytest.raises(ValueError, match="must be >= 1"):
        window_starts(10, 0, 1)


def test_window_spans_give_short_scans_one_whole_patch_window():
    assert window_spans(11, 4, 3).tolist() == [[0, 4], [3, 4], [6, 4], [7, 4]]
    assert window_spans(3, 4, 1).tolist() == []  # no minimum: short scans have none
    assert window_spans(78, 160, 80, min_length=60, length_multiple=20).tolist() == [[0, 60]]
    assert window_spans(146, 160, 80, min_length=60, length_multiple=20).tolist() == [[0, 140]]
    assert window_spans(59, 160, 80, min_length=60, length_multiple=20).tolist() == []
    # whole patches only: 79 points give 60, and 60 is enough
    assert window_spans(79, 160, 80, min_length=60, length_multiple=20).tolist() == [[0, 60]]
    assert window_spans(79, 160, 80, min_length=80, length_multiple=20).tolist() == []


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    recs = synthetic_records(18, t=40)
    recs[0] = make_record(0, t=8)  # shorter than a window
    recs[1].timeseries[:, 2] = 0.0  # a masked ROI
    return build_store(recs, tmp_path_factory.mktemp("w") / "s", progress=False)


def test_items_are_scaled_windows_with_identity(store):
    ds = WindowDataset(store, split=None, window_length=16, stride=8)
    scaler = store.scaler()
    assert ds.n_scans_without_window == 1
    assert len(ds) == 17 * 4  # starts 0, 8, 16, 24
    item = ds[5]
    row, start = item["scan_index"], item["start"]
    raw = store.timeseries(row)[start : start + 16]
    np.testing.assert_allclose(item["window"].numpy(), scaler.transform(raw), rtol=1e-5, atol=1e-6)
    assert item["window"].dtype == torch.float32 and item["window"].shape == (16, 6)
    masked = next(ds[i] for i in range(len(ds)) if ds[i]["scan_index"] == 1)
    assert masked["roi_mask"].tolist() == [True, True, False, True, True, True]
    assert (masked["window"][:, 2] == 0).all()


def test_split_windows_come_from_split_scans(store):
    idx = store.split_indices()
    for split in ("train", "val", "test"):
        ds = WindowDataset(store, split=split, window_length=16, stride=16)
        assert set(ds.index[:, 0]) <= set(idx[split])


def test_raw_windows(store):
    ds = WindowDataset(store, split="train", window_length=16, stride=16, scale=False)
    item = ds[0]
    np.testing.assert_array_equal(
        item["window"].numpy(),
        store.timeseries(item["scan_index"])[item["start"] : item["start"] + 16],
    )


def test_dataloader_with_workers(store):
    ds = WindowDataset(store.path, split="train", window_length=16, stride=8)
    batches = list(DataLoader(ds, batch_size=8, num_workers=2))
    assert sum(len(b["window"]) for b in batches) == len(ds)
    assert batches[0]["window"].shape == (8, 16, 6)


def test_short_scan_gives_one_short_window(store):
    ds = WindowDataset(
        store, split=None, window_length=16, stride=8, min_length=8, length_multiple=4
    )
    assert ds.n_scans_without_window == 0 and ds.n_short_windows == 1
    short = [i for i in range(len(ds)) if ds.index[i, 0] == 0]
    assert len(short) == 1 and ds.index[short[0]].tolist() == [0, 0, 8]
    item = ds[short[0]]
    np.testing.assert_allclose(
        item["window"].numpy(), store.scaler().transform(store.timeseries(0)), rtol=1e-5, atol=1e-6
    )
    assert len(ds) == 17 * 4 + 1


@pytest.mark.parametrize("min_length", [2, 17])
def test_min_length_outside_patch_and_window_is_refused(store, min_length):
    with pytest.raises(ValueError, match="min_length must be between"):
        WindowDataset(store, window_length=16, stride=8, min_length=min_length, length_multiple=4)
