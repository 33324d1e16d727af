"""`fmrilm study`: a short study on the real bundled sample through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.study.tiny_models import save_tiny_causal_lm, save_tiny_llava

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _main(argv: list[str]) -> int:
    """Run the subcommand as ``fmrilm`` does."""
    from fmrilm import cli

    return cli.main(["study", *argv])


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, sample_store):
    root = tmp_path_factory.mktemp("cli_study")
    cfg = {
        "store": str(sample_store.path),
        "task": "age",
        "arms": [
            "baseline_median",
            "baseline_fc",
            "efficientnet_imagenet",
            "efficientnet_random",
            "fmri_encoder",
            "shared_vocab",
            "vlm",
        ],
        "renderings": ["connectivity"],
        "lm": str(save_tiny_causal_lm(root / "tiny-lm")),
        "vlms": [str(save_tiny_llava(root / "tiny-llava")), "HuggingFaceTB/SmolVLM-256M-Instruct"],
        "window_length": 64,
        "stride": 64,
        "image_size": 64,
        "n_prefix": 2,
        "lora": {"r": 2},
        "budget": {"steps": 2, "batch_size": 4, "max_train_windows": 8},
        "budgets": {"vlm": {"steps": 1, "max_train_windows": 4, "max_eval_windows": 2}},
        "n_bootstrap": 50,
        "out": str(root / "out" / "study.json"),
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_runs_a_short_study_on_the_sample_and_resumes(config_file, capsys):
    rc = _main([str(config_file), "--quiet", "--set", "budget.lr=0.01"])
    out = capsys.readouterr().out
    assert rc == 0, out
    study_path = Path(yaml.safe_load(config_file.read_text())["out"])
    study = json.loads(study_path.read_text())
    arms = study["arms"]
    ok = [n for n, a in arms.items() if a["status"] == "ok"]
    assert set(ok) == {
        "baseline_median",
        "baseline_fc",
        "efficientnet_imagenet:connectivity",
        "efficientnet_random:connectivity",
        "vlm:tiny-llava:connectivity",
    }
    for name in ok:
        a = arms[name]
        assert a["parse_failures"] == 0 and a["age_mae"] is not None and a["peak_rss_mb"] > 0
    assert arms["fmri_encoder"]["status"] == "not run"
    assert "fmri_tokenizer" in arms["fmri_encoder"]["reason"]
    assert (
        "not available offline"
        in arms["vlm:HuggingFaceTB/SmolVLM-256M-Instruct:connectivity"]["reason"]
    )
    assert study["config"]["budget"]["lr"] == 0.01
    assert "baseline_fc" in out and "not run" in out and "report" in out
    html = Path(study["report"]["html"])
    assert html.is_file() and "efficientnet_imagenet:connectivity" in html.read_text()
    assert (html.parent / "age_predicted_vs_true.png").is_file()

    before = {p.name: p.stat().st_mtime_ns for p in (html.parent / "arms").glob("*.json")}
    assert _main([str(config_file), "--quiet", "--set", "budget.lr=0.01"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (html.parent / "arms").glob("*.json")}
    assert before["baseline_fc.json"] == after["baseline_fc.json"]  # finished: not rerun
    assert (
        before["efficientnet_imagenet_connectivity.json"]
        == after["efficientnet_imagenet_connectivity.json"]
    )


def test_cli_errors(tmp_path, config_file, capsys):
    # fmrilm's main turns these into exit code 2 with the message on stderr.
    assert _main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: x\ncolour: red\n")
    assert _main([str(bad)]) == 2
    assert "unknown study config keys" in capsys.readouterr().err
    assert _main([str(config_file), "--set", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _main([str(config_file), "--arms", ""])
    for twice in (
        ["--arms", "baseline_fc", "--set", "arms=[baseline_median]"],
        ["--steps", "3", "--set", "budget.steps=4"],
        ["--steps", "3", "--set", "budget={steps: 4}"],
    ):
        assert _main([str(config_file), *twice]) == 2
        assert "give it once" in capsys.readouterr().err
