"""The VLM arm's code on a tiny LLaVA (CLIP vision tower + Llama text model) built from a config
and saved to a folder with a processor we construct, loaded back through the Auto classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmrilm.study.prefix import LoraSettings, NumericTask, trainable_parameters
from fmrilm.study.vlm import (
    build_vlm_batch,
    load_vlm,
    train_vlm,
    vlm_available,
    vlm_predict_numeric,
    vlm_predict_task,
    vlm_prompt,
)
from tests.study.tiny_models import save_tiny_llava

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("vlm") / "tiny-llava")


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(4)]


def test_available(tiny_vlm_dir, tmp_path):
    ok, where = vlm_available(tiny_vlm_dir)
    assert ok and where == str(tiny_vlm_dir)
    ok, reason = vlm_available("no-such-org/no-such-vlm-for-fmrilm")
    assert not ok and "not available offline" in reason
    ok, reason = vlm_available(tmp_path)
    assert not ok and "config.json" in reason


def test_load_through_auto_classes_with_lora(tiny_vlm_dir):
    model, processor = load_vlm(tiny_vlm_dir, lora=LoraSettings(r=4))
    assert type(processor).__name__ == "LlavaProcessor"
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all("language_model" in n for n in names)  # the vision tower is left as pretrained
    assert trainable_parameters(model) == 2 * 2 * (4 * 32 + 4 * 32)  # 2 layers x q,v x (A+B)
    assert next(model.parameters()).dtype == torch.float32  # bf16 only on GPU


def test_batch_labels_cover_the_answer_only(tiny_vlm_dir, images):
    _, processor = load_vlm(tiny_vlm_dir)
    prompt = vlm_prompt(processor, "How old?")
    assert prompt.startswith("<image>\n") and "Question: How old?" in prompt
    batch = build_vlm_batch(
        processor, images[:2], ["How old?", "How old, in years?"], [" 24", " 7"]
    )
    assert batch["pixel_values"].shape[0] == 2
    tok = processor.tokenizer
    for i, answer in enumerate([" 24", " 7"]):
        start, end = batch["answer_spans"][i]
        expected = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert batch["labels"][i, start:end].tolist() == expected
        assert (batch["labels"][i, :start] == -100).all()
        assert (batch["labels"][i, end:] == -100).all()
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"][0] == image_id).sum() == 16  # (32 / 8) ** 2 patches


def test_one_training_step_and_one_answer(tiny_vlm_dir, images):
    model, processor = load_vlm(tiny_vlm_dir, lora=LoraSettings(r=4))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    hist = train_vlm(
        model,
        processor,
        images,
        ["How old?"] * 4,
        [" 24", " 7", " 30", " 12"],
        steps=1,
        batch_size=2,
        lr=1e-2,
    )
    assert hist["steps"] == 1 and np.isfinite(hist["losses"][0])
    changed = [
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert changed
    out = vlm_predict_numeric(model, processor, images[:1], "How old?", range(6, 12))
    assert out["probs"].shape == (1, 6) and 6 <= out["expected"][0] <= 11
    np.testing.assert_allclose(out["probs"].sum(), 1.0)


def test_predict_task_matches_loss(tiny_vlm_dir, images):
    model, processor = load_vlm(tiny_vlm_dir)
    model.eval()
    task = NumericTask("age", "How old?", [8, 9])
    out = vlm_predict_task(model, processor, images[:1], task)
    batch = build_vlm_batch(processor, images[:1], ["How old?"], [" 8"])
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if k != "answer_spans"}).loss
    torch.testing.assert_close(
        torch.tensor(out["logp"][0, 0]), -loss * 3, rtol=1e-4, atol=1e-4
    )  # " ", "8", EOS


def test_gpu_settings_bf16_and_gradient_checkpointing_on_cpu(tiny_vlm_dir, images):
    """The settings used on a GPU (bf16, gradient checkpointing) run one step here too."""
    model, processor = load_vlm(
        tiny_vlm_dir, lora=LoraSettings(r=4), dtype=torch.bfloat16, gradient_checkpointing=True
    )
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.get_base_model().is_gradient_checkpointing
    hist = train_vlm(
        model, processor, images[:2], ["How old?"] * 2, [" 24", " 7"], steps=1, batch_size=2
    )
    assert np.isfinite(hist["losses"][0])
