"""What every benchmark records: machine, commit, date; and the results file and docs line."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path

from fmrilm.provenance import commit, machine

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "benchmarks.md"


def comma_list(value: str) -> list[str]:
    """argparse type: ``"a,b,,c"`` -> ``["a", "b", "c"]``."""
    return [x for x in value.split(",") if x]


def named_paths(items: list[str], flag: str) -> dict[str, Path]:
    """``NAME=PATH`` command-line items as ``{name: path}``; exits naming ``flag`` otherwise."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} expects NAME=PATH, got {item!r}")
        out[name] = Path(path)
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set size (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args: list[str], **kw) -> dict:
    """Run ``python -m <args>`` in a fresh process; it prints one JSON line last."""
    import sys

    out = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, check=False, **kw
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_result(name: str, result: dict, summary: str) -> Path:
    """Write ``benchmarks/results/<name>.json`` and append a line to docs/benchmarks.md."""
    result = {
        **result,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    if not DOCS.exists():
        DOCS.write_text(
            "# Benchmarks\n\nOne line per run: `python -m benchmarks.<name>` writes "
            "`benchmarks/results/<name>.json` and appends here.\n\n"
        )
    with DOCS.open("a") as f:
        f.write(
            f"- {result['date']} `{name}` ({result['commit']}; {result['machine']}): {summary}\n"
        )
    return path
