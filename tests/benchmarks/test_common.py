"""Command-line helpers shared by the benchmarks."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.common import comma_list, named_paths


def test_comma_list_drops_empty_items():
    assert comma_list("a,b,,c,") == ["a", "b", "c"]
    assert comma_list("") == []


def test_named_paths_parses_and_refuses_items_without_a_name_or_path():
    assert named_paths(["x=runs/a", "y=b=c"], "--run") == {"x": Path("runs/a"), "y": Path("b=c")}
    for bad in ("runs/a", "=runs/a", "x="):
        with pytest.raises(SystemExit, match=r"--run expects NAME=PATH"):
            named_paths([bad], "--run")
