"""Shared fixtures: synthetic scans, the bundled sample store, and the real ABIDE data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmrilm.data import ScanRecord

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def require_shared_data() -> Path:
    """The real ABIDE data beside the repo: skip when absent, but fail under CI."""
    if (SHARED_DATA / "abide_pcp_cc200.npz").is_file():
        return SHARED_DATA
    message = f"real ABIDE data not found at {SHARED_DATA}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (required under CI=true)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared_data()


@pytest.fixture(scope="session")
def nilearn_cache(tmp_path_factory, shared_data) -> Path:
    """nilearn's offline ABIDE cache for three sites, written by the script beside the data."""
    dest = tmp_path_factory.mktemp("nilearn_data")
    subprocess.run(
        [
            sys.executable,
            str(shared_data / "materialize_nilearn_cache.py"),
            str(dest),
            "--sites",
            "CALTECH,OHSU,SBL",
        ],
        check=True,
        capture_output=True,
    )
    return dest


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory):
    """A store built from the sample bundled with fmrilm."""
    from fmrilm.data import build_store
    from fmrilm.data.abide import iter_abide_sample

    records, total, meta = iter_abide_sample()
    return build_store(
        records,
        tmp_path_factory.mktemp("stores") / "sample",
        metadata=meta,
        total=total,
        progress=False,
    )


def make_record(
    i: int,
    *,
    subject: str | None = None,
    site: str = "A",
    t: int = 40,
    r: int = 6,
    tr: float | None = 2.0,
    session: str = "",
    seed: int | None = None,
    **kw,
) -> ScanRecord:
    rng = np.random.default_rng(i if seed is None else seed)
    return ScanRecord(
        scan_id=f"scan{i}",
        subject_id=subject or f"sub{i}",
        site=site,
        tr=tr,
        session=session,
        timeseries=rng.standard_normal((t, r)).astype(np.float32),
        age=10.0 + i,
        sex="male" if i % 2 else "female",
        diagnosis="autism" if i % 3 else "control",
        phenotypes={"AGE": 10.0 + i, "note": f"row {i}"},
        source=f"/data/scan{i}.1D",
        **kw,
    )


def synthetic_records(
    n: int = 24, sites: tuple[str, ...] = ("A", "B", "C"), **kw
) -> list[ScanRecord]:
    return [make_record(i, site=sites[i % len(sites)], **kw) for i in range(n)]


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: far faster on a small machine shared with other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
