"""LMEnsemble: the mixture of its members' answers, refusals of members that do not match."""

from __future__ import annotations

import pytest
import torch

from fmrilm.lm import FMRILanguageModel
from fmrilm.lm.ensemble import LMEnsemble, load_models

from .test_model import AGE, SEX


def _member(tiny_lm_dir, fmri_tokenizer, seed, tasks=(AGE, SEX), **overrides):
    from .conftest import tiny_config

    torch.manual_seed(seed)
    m = FMRILanguageModel.build(tiny_config(tiny_lm_dir, list(tasks), **overrides), fmri_tokenizer)
    with torch.no_grad():  # members that answer differently
        for p in m.trainable_parameters().values():
            p.add_(0.2 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def members(tiny_lm_dir):
    from .conftest import FakeFMRITokenizer

    tok = FakeFMRITokenizer()
    return [_member(tiny_lm_dir, tok, seed) for seed in (1, 2)]


def _codes(members, n=3):
    g = torch.Generator().manual_seed(0)
    return members[0].fmri_tokenizer.encode(torch.randn(n, 16, 6, generator=g))


def test_window_scores_are_the_mean_of_member_distributions(members):
    codes = _codes(members)
    ens = LMEnsemble(members)
    got = ens.score_tasks(codes, [AGE, SEX])
    for task in (AGE, SEX):
        probs = [torch.softmax(m.score(codes, task).double(), -1) for m in members]
        assert not torch.allclose(probs[0], probs[1], atol=1e-3)  # the members differ
        expected = (probs[0] + probs[1]) / 2
        assert torch.allclose(got[task.name].double().exp(), expected, atol=1e-5)


def test_ensemble_number_is_the_mean_of_member_numbers(members):
    codes = _codes(members)
    ens = LMEnsemble(members)
    value = ens.aggregate(ens.score_tasks(codes, [AGE])["age"], AGE)["value"]
    each = [m.aggregate(m.score(codes, AGE), AGE)["value"] for m in members]
    assert value == pytest.approx(sum(each) / 2, rel=1e-5)
    sex = ens.aggregate(ens.score_tasks(codes, [SEX])["sex"], SEX)
    assert sum(sex["probabilities"].values()) == pytest.approx(1.0)


def test_a_window_one_member_cannot_score_is_dropped(members, monkeypatch):
    codes = _codes(members)
    broken = members[1]
    real = broken.score_tasks

    def nan_first(codes, tasks=None, **kw):
        out = real(codes, tasks, **kw)
        for v in out.values():
            v[0] = float("nan")
        return out

    monkeypatch.setattr(broken, "score_tasks", nan_first)
    ens = LMEnsemble(members)
    res = ens.aggregate(ens.score_tasks(codes, [AGE])["age"], AGE)
    assert res["n_failed_windows"] == 1 and not res["parse_failure"]


def test_members_must_match(tiny_lm_dir, members):
    from .conftest import FakeFMRITokenizer

    with pytest.raises(ValueError, match="at least two"):
        LMEnsemble(members[:1])
    with pytest.raises(ValueError, match="other tasks"):
        LMEnsemble([members[0], _member(tiny_lm_dir, members[0].fmri_tokenizer, 3, tasks=[AGE])])
    with pytest.raises(ValueError, match="stride"):
        LMEnsemble([members[0], _member(tiny_lm_dir, members[0].fmri_tokenizer, 3, stride=4)])
    other = FakeFMRITokenizer()
    with torch.no_grad():
        other.table.add_(1.0)
    with pytest.raises(ValueError, match="fMRI tokenizer"):
        LMEnsemble([members[0], _member(tiny_lm_dir, other, 3)])


def test_load_models_checks_folders_and_sums_training(members, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_models([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no model folder"):
        load_models([])
    for m, seconds in zip(members, (10.0, 20.0), strict=True):
        m.config.extra["train_summary"] = {"train_seconds": seconds, "global_step": 5}
    summary = LMEnsemble(members).train_summary
    assert summary["train_seconds"] == 30.0 and summary["global_step"] == 5
    assert len(summary["members"]) == 2
    assert len(LMEnsemble(members).describe()["ensemble"]) == 2


def test_members_answer_the_tasks_they_are_given(members):
    codes = _codes(members)
    ens = LMEnsemble(members, answers=[["age"], ["sex"]])
    got = ens.score_tasks(codes, [AGE, SEX])
    for task, member in ((AGE, members[0]), (SEX, members[1])):
        expected = torch.log_softmax(member.score(codes, task).double(), -1)
        assert torch.allclose(got[task.name].double(), expected, atol=1e-5)
    both = LMEnsemble(members, answers=[None, ["sex"]]).score_tasks(codes, ["age", "sex"])
    mixed = LMEnsemble(members).score_tasks(codes, ["sex"])
    assert torch.allclose(both["sex"], mixed["sex"], atol=1e-6)  # sex: both members
    assert torch.allclose(both["age"].double(), got["age"].double(), atol=1e-5)  # age: member 0
    described = LMEnsemble(members, answers=[["age"], ["sex"]]).describe()["ensemble"]
    assert [d["answers"] for d in described] == [["age"], ["sex"]]
    with pytest.raises(ValueError, match=r"no ensemble member answers \['sex'\]"):
        LMEnsemble(members, answers=[["age"], ["age"]])
    with pytest.raises(ValueError, match="FIQ"):
        LMEnsemble(members, answers=[["age", "FIQ"], ["sex"]])
    with pytest.raises(ValueError, match="2 members"):
        LMEnsemble(members, answers=[None])


def test_checkpoints_of_one_run_count_its_training_once(members):
    for m, step in zip(members, (200, 600), strict=True):
        m.config.extra["train_summary"] = {
            "train_seconds": 100.0,
            "global_step": step,
            "run_dir": "/runs/a",
        }
    assert LMEnsemble(members).train_summary["train_seconds"] == 100.0
    members[1].config.extra["train_summary"]["run_dir"] = "/runs/b"
    assert LMEnsemble(members).train_summary["train_seconds"] == 200.0


def test_task_member_specs(members, tmp_path):
    from fmrilm.lm.ensemble import parse_member

    a, b = tmp_path / "a", tmp_path / "b"
    for m, folder in zip(members, (a, b), strict=True):
        m.save_pretrained(folder)
    assert parse_member(a) == (a, None)
    assert parse_member(f"age,sex={b}") == (b, ["age", "sex"])
    with pytest.raises(FileNotFoundError, match="of 'age="):
        parse_member(f"age={tmp_path / 'missing'}")
    ens = load_models([f"age={a}", f"sex={b}", f"sex={a}"])
    assert ens.answers == [["age", "sex"], ["sex"]]  # folder a is loaded once
    with pytest.raises(ValueError, match="the only model"):
        load_models([f"age={a}"])
