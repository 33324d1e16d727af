"""The README's two set-up commands, run as tests."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_setup_is_two_commands_and_ci_runs_the_second():
    install, test = readme_commands()
    assert install.startswith("pip install torch==2.13.0 && ")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in [line.strip() for line in ci]
    assert "python -m pip install -q torch==2.13.0" in ci


def test_main_command_runs(tmp_path):
    install, _ = readme_commands()
    steps = [s.strip() for s in install.split("&&")]
    assert [s.split()[0] for s in steps[:-1]] == ["pip", "pip"]  # installs, verified by CI itself
    main = shlex.split(steps[-1])
    assert main[0] == "fmrilm"
    out = subprocess.run(
        [sys.executable, "-m", "fmrilm.cli", *main[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "32 scans, 32 subjects, 7 sites, 200 ROIs (cc200)" in out.stdout
    assert (tmp_path / "fmrilm_sample_store" / "metadata.json").is_file()


def test_readme_links_point_to_files():
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|src)/[^)]+)\)", text)
    assert links, "the README links its docs"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
