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
    """The main command answers for the bundled scan exactly what the model card records."""
    import json

    install, _ = readme_commands()
    steps = [s.strip() for s in install.split("&&")]
    # installs, verified by CI itself (it runs the same pip commands)
    assert [s.split()[0] for s in steps[:-1]] == ["pip", "pip", "pip"]
    main = shlex.split(steps[-1])
    assert main[0] == "fmrilm"
    out = subprocess.run(
        [sys.executable, "-m", "fmrilm.cli", *main[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    release = REPO / "src" / "fmrilm" / "pretrained" / "abide_smollm2" / "release.json"
    want = json.loads(release.read_text())["example"]["answers"]
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    assert f"age        {want['age']['value']:.1f} (90% interval" in lines["age"]
    for task in ("sex", "diagnosis"):
        a = want[task]
        assert f"{task:<10} {a['answer']} (p = {a['probability']:.2f};" in lines[task]
    assert "not a diagnostic device" in out.stdout


def test_readme_links_point_to_files():
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|src)/[^)]+)\)", text)
    assert links, "the README links its docs"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
