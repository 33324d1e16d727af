"""The LLaVA-style prefix path on a tiny causal LM built from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmrilm.study.prefix import (
    LoraSettings,
    NumericTask,
    PrefixLM,
    PrefixProjector,
    default_prompt_template,
    format_number,
    task_predictions,
    train_prefix_lm,
    trainable_parameters,
)
from tests.study.tiny_models import tiny_causal_lm


@pytest.fixture
def model():
    lm, tok = tiny_causal_lm()
    torch.manual_seed(0)
    return PrefixLM(lm, tok, feature_dim=16, n_prefix=3, lora=LoraSettings(r=4))


def test_projector_shape():
    p = PrefixProjector(16, 32, n_prefix=5)
    assert p(torch.randn(4, 16)).shape == (4, 5, 32)
    with pytest.raises(ValueError):
        p(torch.randn(16))


def test_prompt_template_is_the_shared_vocabulary_lms():
    lm_model = pytest.importorskip("fmrilm.lm.model")
    assert default_prompt_template() == lm_model.PROMPT_TEMPLATE


def test_only_projector_and_lora_train(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("projector" in n or "lora_" in n for n in trainable)
    assert any("lora_" in n for n in trainable)
    n_proj = sum(p.numel() for p in model.projector.parameters())
    assert trainable_parameters(model) > n_proj


def test_labels_cover_answer_tokens_only(model):
    prefix = model.projector(torch.randn(2, 16))
    inputs, mask, labels, spans = model._assemble(prefix, ["How old?", "Age?"], [" 24", " 7"])
    tok = model.tokenizer
    q0 = tok(model.prompt_template.format(question="How old?"), add_special_tokens=False)
    start = 1 + 3 + len(q0["input_ids"])  # BOS, 3 prefix vectors, the prompt
    answer = tok(" 24", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert spans[0] == (start, start + 4)  # " ", "2", "4", EOS
    assert labels[0, start : start + len(answer)].tolist() == answer
    assert (labels[0, :start] == -100).all() and (labels[0, start + len(answer) :] == -100).all()
    assert mask[1].sum() < mask[0].sum() and (labels[1][mask[1] == 0] == -100).all()
    # the prefix vectors sit right after BOS
    torch.testing.assert_close(inputs[0, 1:4], prefix[0])


def test_scores_match_the_training_loss(model):
    feats = torch.randn(1, 16)
    model.eval()
    with torch.no_grad():
        loss = model(feats, ["How old?"], [" 31"])
    logp = model.answer_logprobs(feats, ["How old?"], [" 31", " 5"])
    n_tokens = len(model.tokenizer(" 31", add_special_tokens=False)["input_ids"]) + 1
    torch.testing.assert_close(logp[0, 0], -loss * n_tokens, rtol=1e-4, atol=1e-4)


def test_training_lowers_the_loss_and_scoring_is_a_distribution(model):
    torch.manual_seed(0)
    feats = torch.randn(8, 16)
    ages = [20 + 2 * i for i in range(8)]
    q = ["How old is this participant, in years?"] * 8
    answers = [" " + format_number(a) for a in ages]
    with torch.no_grad():
        before = float(model(feats, q, answers))
    hist = train_prefix_lm(model, feats, q, answers, steps=25, batch_size=8, lr=2e-2, seed=0)
    assert hist["steps"] == 25 and len(hist["losses"]) == 25
    with torch.no_grad():
        after = float(model(feats, q, answers))
    assert after < before - 0.3
    out = model.predict_numeric(feats[:3], q[0], range(18, 40))
    assert out["probs"].shape == (3, 22)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0)
    assert ((out["expected"] >= 18) & (out["expected"] <= 39)).all()
    assert out["parse_failures"] == 0


def test_budget_stops_training_early(model):
    feats = torch.randn(4, 16)
    hist = train_prefix_lm(
        model, feats, ["q"] * 4, [" 1"] * 4, steps=1000, batch_size=2, max_seconds=0.0
    )
    assert hist["steps"] == 1 and hist["stopped_by_budget"]


def test_predict_task_classification(model):
    class Task:
        name, kind, question = "sex", "classification", "What is the sex of this participant?"
        answers, values = ["female", "male"], None

    out = model.predict_task(torch.randn(2, 16), Task())
    assert out["probs"].shape == (2, 2) and set(out["label"]) <= {"female", "male"}


def test_task_predictions_and_numeric_task():
    task = NumericTask("age", "How old?", [10, 10.2, 11, 12])
    assert task.values == [10.0, 11.0, 12.0] and task.answers == ["10", "11", "12"]
    out = task_predictions(np.log([[0.5, 0.5, 1e-12], [1e-12, 1e-12, 1.0]]), task)
    np.testing.assert_allclose(out["expected"], [10.5, 12.0], atol=1e-6)
    assert out["parse_failures"] == 0
    bad = task_predictions(np.array([[np.nan, 0.0, 0.0]]), task)
    assert bad["parse_failures"] == 1


def test_rejects_bad_inputs(model):
    with pytest.raises(ValueError, match="same length"):
        model(torch.randn(2, 16), ["q"], [" 1", " 2"])
    lm, tok = tiny_causal_lm()
    with pytest.raises(ValueError, match="question"):
        PrefixLM(lm, tok, 16, prompt_template="no placeholder")


def test_cached_scoring_equals_full_sequences(model):
    for name, p in model.named_parameters():
        if "lora_B" in name:  # make the adapters matter
            torch.nn.init.normal_(p, std=0.1)
    feats = torch.randn(3, 16)
    questions = ["How old?", "How old?", "A longer, different question?"]
    cands = [" 5", " 31", " 100", " 7"]  # different lengths
    model.train()
    cached = model.answer_logprobs(feats, questions, cands, chunk_size=5)
    assert model.training  # the mode is restored after scoring
    full = model.answer_logprobs(feats, questions, cands, use_cache=False)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
