"""Where a result came from: the machine, the commit and the time, as results files record them."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path


def machine() -> str:
    """CPU model, cores, memory, GPU (or "no GPU") and torch version, in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}, torch {torch.__version__}"


def commit(cwd: str | Path | None = None) -> str:
    """Short hash of HEAD of the checkout holding ``cwd`` (default: this package), with
    "+dirty" when tracked files differ from it; "unknown" outside a git checkout."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def utc_now() -> str:
    """The current time, ISO 8601 in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
