"""Token layouts: counts, order, delimiters; the compute budget."""

from __future__ import annotations

import pytest
import torch

from fmrilm.lm import FMRIVocabulary, TokenLayout, compute_budget

K = 10
VOCAB = FMRIVocabulary(
    torch.arange(100, 100 + K), open_id=1, close_id=2, roi_sep_id=3, time_sep_id=4
)


@pytest.mark.parametrize(
    "kind, expected",
    [("roi_major", 200 * 9 + 2), ("time_major", 8 * 201 + 2), ("compact", 16 * 9 + 2)],
)
def test_token_counts_200_rois_8_patches(kind, expected):
    layout = TokenLayout(kind, 200, 8)
    assert layout.n_tokens == expected
    codes = torch.randint(0, K, (3, 200, 8))
    assert layout.token_ids(codes, VOCAB).shape == (3, expected)


def test_roi_and_time_major_order():
    codes = torch.tensor([[0, 1, 2], [3, 4, 5]])  # (R=2, P=3)
    roi = TokenLayout("roi_major", 2, 3).token_ids(codes, VOCAB).tolist()
    assert roi == [1, 3, 100, 101, 102, 3, 103, 104, 105, 2]
    time = TokenLayout("time_major", 2, 3).token_ids(codes, VOCAB).tolist()
    assert time == [1, 4, 100, 103, 4, 101, 104, 4, 102, 105, 2]


def test_compact_subset_and_patch_stride():
    layout = TokenLayout("compact", 200, 8, compact_rois=16, patch_stride=2)
    assert len(layout.roi_index) == 16 and layout.roi_index[0] == 0 and layout.roi_index[-1] == 199
    assert layout.n_tokens == 16 * 5 + 2
    chosen = TokenLayout("roi_major", 4, 2, rois=(3, 1))
    codes = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]])
    assert chosen.token_ids(codes, VOCAB).tolist() == [1, 3, 103, 103, 3, 101, 101, 2]


def test_bad_codes_raise():
    layout = TokenLayout("roi_major", 2, 3)
    with pytest.raises(ValueError, match="shape"):
        layout.token_ids(torch.zeros(2, 4, dtype=torch.long), VOCAB)
    with pytest.raises(ValueError, match="outside"):
        layout.token_ids(torch.full((2, 3), K), VOCAB)
    with pytest.raises(ValueError, match="unknown layout"):
        TokenLayout("diagonal", 2, 3)


def test_budget_smollm2_compact():
    # SmolLM2-135M: 134.5M parameters, 30 layers, width 576
    b = compute_budget(
        TokenLayout("compact", 200, 8),
        n_params=134_515_008,
        n_layers=30,
        d_model=576,
        text_tokens=20,
        batch_size=8,
    )
    assert b["tokens_per_window"] == 146
    assert b["tokens_per_example"] == 166
    # ~2N per token forward dominates: 166 tokens * 269 MFLOP ~= 45 GFLOP per example
    assert 4.4e10 < b["forward_flops_per_example"] < 4.7e10
    assert b["train_flops_per_step_full"] == pytest.approx(3 * 8 * b["forward_flops_per_example"])
    full = compute_budget(
        TokenLayout("roi_major", 200, 8), n_params=134_515_008, n_layers=30, d_model=576
    )
    assert full["tokens_per_window"] == 1802
    assert full["forward_flops_per_example"] > 10 * b["forward_flops_per_example"]


def test_profiling_measures_a_tiny_model(tiny_lm_dir):
    from fmrilm.lm import FMRILanguageModel, LMConfig
    from fmrilm.lm.profiling import default_tasks, measure

    cfg = LMConfig(
        base_model=str(tiny_lm_dir),
        codebook_size=8,
        n_rois=20,
        n_patches=4,
        compact_rois=4,
        init="random",
        tasks=[t.to_dict() for t in default_tasks()],
        lora_r=2,
    )
    res = measure(FMRILanguageModel.build(cfg), batch_size=2, steps=2, score_windows=2)
    assert res["tokens_per_step"] > 2 * (4 * 5 + 2)
    assert res["step_seconds"] > 0 and res["score_seconds_per_window"] > 0
    assert res["budget"]["tokens_per_window"] == 4 * 5 + 2
