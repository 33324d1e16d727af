"""benchmarks.lm_cv pools the folds' validation answers and pairs the variants on them."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _fold_evaluation(fold: int, noise: float, seed: int, n: int = 60) -> dict:
    """An evaluation of validation fold ``fold`` whose LM answers carry ``noise``."""
    rng = np.random.default_rng(seed)
    truth_rng = np.random.default_rng(100 + fold)  # the same subjects for every variant
    ids = [f"f{fold}s{i}" for i in range(n)]
    age = truth_rng.uniform(8, 40, n)
    sex = truth_rng.choice(["female", "male"], n)
    dx = truth_rng.choice(["autism", "control"], n)

    def probs(y, labels):
        p = np.clip((y == labels[1]) + rng.normal(0, noise, len(y)), 0.01, 0.99)
        return np.stack([1 - p, p], 1)

    def target(y, pred, labels, metric):
        base = {
            b: (np.full(n, np.mean(age)) if labels is None else probs(y, labels) * 0 + 0.5)
            for b in ("trivial", "site")
        }
        base["connectivity_correlation"] = (
            age + rng.normal(0, 4, n) if labels is None else probs(y, labels)
        )
        base["connectivity_tangent"] = base["connectivity_correlation"]
        return {
            "labels": labels,
            "results": {"lm": {"metrics": {metric: {"value": float(fold)}}}},
            "lm_subjects": {
                "subject_ids": ids,
                "truth": [float(v) for v in y] if labels is None else [str(v) for v in y],
                "predictions": np.asarray(pred).tolist(),
            },
            "subject_ids": ids,
            "subject_predictions": {b: np.asarray(p).tolist() for b, p in base.items()},
        }

    return {
        "scheme": f"site_stratified-cv3-fold{fold}",
        "split": "val",
        "targets": {
            "age": target(age, age + rng.normal(0, 10 * noise, n), None, "mae"),
            "sex": target(sex, probs(sex, ["female", "male"]), ["female", "male"], "roc_auc"),
            "diagnosis": target(
                dx, probs(dx, ["autism", "control"]), ["autism", "control"], "roc_auc"
            ),
        },
    }


def _runs(tmp_path, noise: dict, folds=(0, 1), scheme=None):
    for name, sd in noise.items():
        for f in folds:
            d = tmp_path / name / f"fold{f}"
            (d / "model").mkdir(parents=True)
            ev = _fold_evaluation(f, sd, seed=sum(map(ord, name)) + f)
            if scheme is not None:
                ev["scheme"] = scheme
            (d / "val_evaluation.json").write_text(json.dumps(ev))


@pytest.fixture
def results(tmp_path, monkeypatch):
    import benchmarks.common

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(benchmarks.common, "DOCS", tmp_path / "benchmarks.md")
    return tmp_path / "results"


def test_pools_the_folds_and_finds_the_better_variant(tmp_path, results):
    import benchmarks.lm_cv

    _runs(tmp_path, {"main": 0.6, "better": 0.2})
    argv = [f"--variant=main={tmp_path / 'main'}", f"--variant=better={tmp_path / 'better'}"]
    argv += ["--reference", "main", "--n-bootstrap", "200", "--result-name", "cv"]
    assert benchmarks.lm_cv.main(argv) == 0
    rec = json.loads((results / "cv.json").read_text())
    assert rec["scheme"] == "site_stratified" and rec["n_folds"] == 3
    assert rec["folds_pooled"] == [0, 1]
    better, main = rec["variants"]["better"], rec["variants"]["main"]
    assert better["pooled"]["age_n_subjects"] == 120  # both folds' 60 subjects
    assert better["pooled"]["age_mae"] < main["pooled"]["age_mae"]
    assert better["pooled"]["sex_auc"] > main["pooled"]["sex_auc"]
    assert better["better_than_reference_on_all_three"] is True
    assert "better_than_reference_on_all_three" not in main and main["minus_reference"] == {}
    d = better["minus_reference"]["age_mae"]
    assert d["difference"] == pytest.approx(better["pooled"]["age_mae"] - main["pooled"]["age_mae"])
    assert d["ci95"][1] < 0 and d["n"] == 120  # planted: clearly better
    lo, hi = better["pooled"]["sex_auc_ci95"]
    assert lo <= better["pooled"]["sex_auc"] <= hi
    assert better["per_fold"] == {
        str(f): {k: float(f) for k in ("age_mae", "sex_auc", "diagnosis_auc")} for f in (0, 1)
    }
    assert better["minus_fc"]["age_mae"]["baseline"] in (
        "connectivity_correlation",
        "connectivity_tangent",
    )
    assert rec["baselines"]["trivial"]["sex_auc"] == pytest.approx(0.5)
    assert "(all three better than main: True)" in (tmp_path / "benchmarks.md").read_text()


def test_a_worse_variant_is_not_chosen(tmp_path, results):
    import benchmarks.lm_cv

    _runs(tmp_path, {"main": 0.2, "worse": 0.6})
    argv = [f"--variant=main={tmp_path / 'main'}", f"--variant=worse={tmp_path / 'worse'}"]
    assert benchmarks.lm_cv.main([*argv, "--n-bootstrap", "50", "--result-name", "cv"]) == 0
    rec = json.loads((results / "cv.json").read_text())
    assert rec["reference"] == "main"  # the first variant by default
    assert rec["variants"]["worse"]["better_than_reference_on_all_three"] is False


def test_only_folds_every_variant_has_are_pooled_and_bad_runs_are_refused(tmp_path, results):
    import benchmarks.lm_cv

    _runs(tmp_path, {"main": 0.5}, folds=(0, 1))
    _runs(tmp_path, {"other": 0.5}, folds=(1, 2))
    argv = [f"--variant=main={tmp_path / 'main'}", f"--variant=other={tmp_path / 'other'}"]
    assert benchmarks.lm_cv.main([*argv, "--n-bootstrap", "20", "--result-name", "cv"]) == 0
    assert json.loads((results / "cv.json").read_text())["folds_pooled"] == [1]

    _runs(tmp_path / "a", {"plain": 0.5}, folds=(0,), scheme="site_stratified")
    with pytest.raises(SystemExit, match="not a cross-validation fold 0"):
        benchmarks.lm_cv.main([f"--variant=plain={tmp_path / 'a' / 'plain'}"])
    _runs(tmp_path / "b", {"x": 0.5}, folds=(0,), scheme="heldout_sites-cv3-fold0")
    argv = [f"--variant=main={tmp_path / 'main'}", f"--variant=x={tmp_path / 'b' / 'x'}"]
    with pytest.raises(SystemExit, match="different cross-validations"):
        benchmarks.lm_cv.main(argv)
    with pytest.raises(SystemExit, match="no fold<i>/model folder"):
        benchmarks.lm_cv.main([f"--variant=empty={tmp_path / 'results'}"])
    with pytest.raises(SystemExit, match="--reference 'nope' is not one of"):
        benchmarks.lm_cv.main([f"--variant=main={tmp_path / 'main'}", "--reference", "nope"])
    with pytest.raises(SystemExit, match="at least one --variant"):
        benchmarks.lm_cv.main([])


def test_a_subject_in_two_validation_folds_is_refused(tmp_path, results):
    import benchmarks.lm_cv

    _runs(tmp_path, {"main": 0.5})
    path = tmp_path / "main" / "fold1" / "val_evaluation.json"
    ev = json.loads(path.read_text())
    fold0 = json.loads((tmp_path / "main" / "fold0" / "val_evaluation.json").read_text())
    ev["targets"]["age"]["lm_subjects"] = fold0["targets"]["age"]["lm_subjects"]
    path.write_text(json.dumps(ev))
    with pytest.raises(SystemExit, match="age: a subject is in more than one validation fold"):
        benchmarks.lm_cv.main([f"--variant=main={tmp_path / 'main'}", "--n-bootstrap", "10"])
