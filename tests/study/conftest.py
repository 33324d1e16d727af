"""Keep the study tests light on a shared 2-core machine: one torch thread."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    """Every test here runs with one torch thread (``tests/conftest.py``)."""
