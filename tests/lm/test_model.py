"""Prompt masking, answer scoring, readable numeric answers, save/load round trip, tasks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fmrilm.lm import FMRILanguageModel, LMConfig, TaskSpec, build_tasks

AGE = TaskSpec(
    "age",
    "regression",
    "how old is this participant in years ?",
    [str(a) for a in range(5, 66)],
    [float(a) for a in range(5, 66)],
)
SEX = TaskSpec("sex", "classification", "what is the sex of this participant ?", ["female", "male"])


@pytest.fixture(scope="module")
def model(tiny_lm_dir):
    from .conftest import FakeFMRITokenizer, tiny_config

    cfg = tiny_config(tiny_lm_dir, [AGE, SEX])
    torch.manual_seed(0)
    return FMRILanguageModel.build(cfg, FakeFMRITokenizer())


def _codes(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model.fmri_tokenizer.encode(torch.randn(n, 16, 6, generator=g))


def test_labels_only_on_answers(model):
    codes = _codes(model)
    ids, labels = model.example(codes[0], [(AGE, 18), (SEX, 1)])
    answer_positions = [i for i, lab in enumerate(labels) if lab != -100]
    answers = model.answer_ids(AGE, 18) + model.answer_ids(SEX, 1)
    assert [ids[i] for i in answer_positions] == answers
    assert [labels[i] for i in answer_positions] == answers
    toks = model.tokenizer.convert_ids_to_tokens(answers)
    assert toks == ["2", "3", "</s>", "male", "</s>"]
    # no fMRI or question token carries a label
    assert all(labels[i] == -100 for i, t in enumerate(ids) if t in set(model.vocab.new_ids))
    # the model's loss is the mean cross-entropy over exactly those tokens
    batch = model.collate([(ids, labels)])
    with torch.no_grad():
        out = model(**batch)
        logp = F.log_softmax(model.lm(input_ids=batch["input_ids"]).logits[0].float(), -1)
    manual = -torch.stack([logp[i - 1, ids[i]] for i in answer_positions]).mean()
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_collate_pads_right_and_masks(model):
    codes = _codes(model)
    ex = [model.example(codes[0], [(AGE, 0)]), model.example(codes[1], [(SEX, 0), (AGE, 60)])]
    b = model.collate(ex)
    n0 = len(ex[0][0])
    assert b["attention_mask"][0, :n0].all() and not b["attention_mask"][0, n0:].any()
    assert (b["labels"][0, n0:] == -100).all()


def test_score_matches_full_forward(model):
    codes = _codes(model, n=2)
    scores = model.score(codes, AGE, batch_size=2)
    assert scores.shape == (2, 61)
    for w in range(2):
        for j in (0, 7, 60):
            ids = model.prompt_ids(model.layout.token_ids(codes[w], model.vocab), AGE)
            a = model.answer_ids(AGE, j)
            with torch.no_grad():
                lp = F.log_softmax(model.lm(input_ids=torch.tensor([ids + a])).logits[0], -1)
            ref = sum(lp[len(ids) - 1 + i, a[i]].item() for i in range(len(a)))
            assert scores[w, j].item() == pytest.approx(ref, abs=1e-4)


def test_numeric_answers_always_readable(model):
    codes = _codes(model, n=4)
    res = model.aggregate(model.score(codes, AGE), AGE)
    assert not res["parse_failure"]
    assert 5.0 <= res["value"] <= 65.0 and np.isfinite(res["value"])
    assert 5.0 <= res["interval"][0] <= res["interval"][1] <= 65.0
    # adversarial scores: huge, tiny, one window broken -> still a number inside the grid
    s = torch.full((3, 61), -1e30)
    s[0, 60] = 0.0
    s[1, :] = torch.linspace(-500, 500, 61)
    s[2, 3] = float("nan")
    res = model.aggregate(s, AGE)
    assert res["n_failed_windows"] == 1 and not res["parse_failure"]
    assert res["value"] == pytest.approx(65.0)
    # every window broken: counted as a parse failure, never a silent value
    bad = model.aggregate(torch.full((2, 61), float("nan")), AGE)
    assert bad["parse_failure"] and "value" not in bad


def test_classes_sum_window_log_probabilities(model):
    s = torch.log(torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]))
    res = model.aggregate(s, SEX)
    odds = (0.4 * 0.7 * 0.8) / (0.6 * 0.3 * 0.2)
    assert res["probabilities"]["male"] == pytest.approx(odds / (1 + odds))
    assert res["answer"] == "male"


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_save_load_round_trip(tiny_lm_dir, tmp_path, finetune):
    from .conftest import FakeFMRITokenizer

    cfg = LMConfig(
        base_model=str(tiny_lm_dir),
        codebook_size=8,
        n_rois=6,
        n_patches=4,
        layout="time_major",
        tasks=[AGE.to_dict(), SEX.to_dict()],
        finetune=finetune,
        lora_r=2,
    )
    fk = FakeFMRITokenizer()
    m = FMRILanguageModel.build(cfg, fk)
    # move the trainable weights away from their initial values
    with torch.no_grad():
        for p in m.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    codes = fk.encode(torch.randn(2, 16, 6))
    m.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "lm_config.json").read_text())
    assert meta["config"]["tasks"][0]["name"] == "age"
    m2 = FMRILanguageModel.from_pretrained(tmp_path / "m", fk)
    assert m2.vocab.new_ids == m.vocab.new_ids
    assert m2.layout == m.layout
    for task in (AGE, SEX):
        assert torch.allclose(m.score(codes, task), m2.score(codes, task), atol=1e-5)


def test_build_tasks_from_table():
    table = pd.DataFrame(
        {
            "age": [6.5, 12.2, 30.0, np.nan, 64.1],
            "sex": ["male", "female", "male", "male", None],
            "phenotypes": [
                json.dumps({"FIQ": v, "HAND": h, "SCORE": s})
                for v, h, s in [
                    (100, "R", 0.12),
                    (85, "L", 0.5),
                    (-9999, "R", 0.9),
                    (120, "R", 0.33),
                    (110, "A", 0.7),
                ]
            ],
        }
    )
    tasks = build_tasks(table, np.arange(4), ["age", "sex", "FIQ", "HAND", "SCORE"])
    age, sex, fiq, hand, score = tasks
    assert age.kind == "regression" and age.answers[0] == "6" and age.answers[-1] == "30"
    assert age.answer_index(12.2) == age.answers.index("12")
    assert age.answer_index(float("nan")) == -1
    assert sex.answers == ["female", "male"]
    assert fiq.kind == "regression" and fiq.values[0] == 85 and fiq.values[-1] == 120
    assert hand.kind == "classification" and hand.answers == ["L", "R"]
    assert hand.answer_index("A") == -1  # unseen in training: unlabelled, not a wrong label
    assert score.kind == "regression" and len(score.answers) <= 41
    assert all(
        float(s) == pytest.approx(v) for s, v in zip(score.answers, score.values, strict=True)
    )
    assert score.values[0] == pytest.approx(0.12) and score.values[-1] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="neither"):
        build_tasks(table, np.arange(4), ["NOPE"])


def test_packed_and_cached_scoring_agree(model):
    codes = _codes(model, n=3, seed=5)
    for task in (AGE, SEX):
        packed = model.score(codes, task, method="packed")
        cached = model.score(codes, task, method="cache")
        assert torch.allclose(packed, cached, atol=1e-4)
    both = model.score_tasks(codes, [AGE, SEX], batch_size=2, method="packed")
    assert torch.allclose(both["age"], model.score(codes, AGE, method="cache"), atol=1e-4)
    assert torch.allclose(both["sex"], model.score(codes, SEX, method="cache"), atol=1e-4)
    assert model._check_packed(codes[:1], [AGE, SEX]) == "packed"


def test_loss_uses_only_answer_positions(model):
    codes = _codes(model)
    ex = [model.example(codes[0], [(AGE, 3)]), model.example(codes[1], [(SEX, 1), (AGE, 50)])]
    b = model.collate(ex)
    with torch.no_grad():
        fast = model(**b).loss
        full = model.lm(**b).loss  # transformers' own loss over all positions
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)
