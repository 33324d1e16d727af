"""fmrilm.memory: freed large blocks stay with the process for reuse."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Resident MiB before, while holding and after freeing a 256 MiB tensor.
RSS = """
import os, sys, torch
from fmrilm.memory import keep_freed_memory_for_reuse
if sys.argv[1] == "keep":
    assert keep_freed_memory_for_reuse()
def rss():
    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 2**20
before = rss()
x = torch.ones(64 * 2**20)
held = rss()
del x
print(before, held, rss())
"""


def _rss(mode: str) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", RSS, mode], capture_output=True, text=True, check=True
    )
    before, held, after = map(int, out.stdout.split()[-3:])
    return before, held, after


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc, /proc")
def test_freed_large_blocks_stay_for_reuse():
    before, held, after = _rss("default")
    assert held - before > 200  # the 256 MiB tensor is resident while held
    assert after - before < 50  # glibc's default: unmapped when freed
    before, held, after = _rss("keep")
    assert held - before > 200
    assert after - before > 200  # kept: the next step reuses these pages
