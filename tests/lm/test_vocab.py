"""Vocabulary extension: ids, tied weights, initialisation, LoRA trainability."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fmrilm.lm import DELIMITERS, FMRIVocabulary, LMConfig, code_token, extend_vocabulary
from fmrilm.lm.model import FMRILanguageModel


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_ids_are_new_single_tokens(tiny_lm_dir):
    model, tok = _load(tiny_lm_dir)
    n_old = len(tok)
    vocab = extend_vocabulary(model, tok, 8, init="random")
    assert vocab.code_ids.tolist() == list(range(n_old, n_old + 8))
    assert sorted(vocab.new_ids) == list(range(n_old, n_old + 12))
    assert len(tok) == n_old + 12
    assert model.get_input_embeddings().weight.shape[0] == n_old + 12
    assert model.config.vocab_size == n_old + 12
    # a string of fMRI tokens is tokenized into exactly those ids
    text = code_token(3) + code_token(7) + DELIMITERS[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == [vocab.code_ids[3].item(), vocab.code_ids[7].item(), vocab.open_id]
    # the lookup from a saved tokenizer gives the same ids
    assert FMRIVocabulary.from_tokenizer(tok, 8).new_ids == vocab.new_ids
    with pytest.raises(ValueError, match="already"):
        extend_vocabulary(model, tok, 8, init="random")


def test_tied_weights_stay_tied(tiny_lm_dir):
    model, tok = _load(tiny_lm_dir)
    extend_vocabulary(model, tok, 8, init="random")
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.data_ptr() == head.data_ptr()
    assert emb.shape == head.shape


def test_codebook_init_is_projected_codebook_with_matched_norm(tiny_lm_dir, fake_tokenizer):
    model, tok = _load(tiny_lm_dir)
    old = model.get_input_embeddings().weight.detach().clone()
    target = old.norm(dim=1).mean()
    cv = fake_tokenizer.code_embeddings_for_lm()
    vocab = extend_vocabulary(model, tok, 8, init="codebook", code_vectors=cv)
    w = model.get_input_embeddings().weight.detach()
    rows = w[vocab.code_ids]
    cos = torch.nn.functional.cosine_similarity(rows, cv, dim=1)
    assert torch.allclose(cos, torch.ones(8), atol=1e-5)
    assert rows.norm(dim=1).mean() == pytest.approx(float(target), rel=1e-4)
    assert torch.equal(w[: len(old)], old)  # old rows untouched
    # random ablation: same mean norm, unrelated directions
    model2, tok2 = _load(tiny_lm_dir)
    v2 = extend_vocabulary(model2, tok2, 8, init="random", seed=1)
    r2 = model2.get_input_embeddings().weight.detach()[v2.code_ids]
    assert r2.norm(dim=1).mean() == pytest.approx(float(target), rel=1e-4)
    assert not torch.allclose(r2, rows)


def test_codebook_init_checks_width(tiny_lm_dir):
    model, tok = _load(tiny_lm_dir)
    with pytest.raises(ValueError, match="shape"):
        extend_vocabulary(model, tok, 8, init="codebook", code_vectors=torch.zeros(8, 5))


def _config(tiny_lm_dir, **kw):
    from fmrilm.lm import TaskSpec

    from .conftest import tiny_config

    sex = TaskSpec("sex", "classification", "what is the sex ?", ["female", "male"])
    return tiny_config(tiny_lm_dir, [sex], **kw)


def test_lora_new_rows_trainable_old_rows_frozen(tiny_lm_dir, fake_tokenizer):
    m = FMRILanguageModel.build(_config(tiny_lm_dir), fake_tokenizer)
    base_emb = m.base_model.get_input_embeddings()
    base_weight = base_emb.token_adapter.base_layer.weight
    assert not base_weight.requires_grad
    trainable = m.trainable_parameters()
    assert any("trainable_tokens_delta" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)
    assert all("trainable_tokens_delta" in n or "lora_" in n for n in trainable)
    n_new = len(m.vocab.new_ids)
    delta = next(p for n, p in trainable.items() if "trainable_tokens_delta" in n)
    assert delta.shape[0] == n_new
    before = base_emb.token_adapter.get_merged_weights(["default"]).detach().clone()
    opt = torch.optim.SGD(list(trainable.values()), lr=1.0)
    codes = fake_tokenizer.encode(torch.randn(2, 16, 6))
    batch = m.collate([m.example(codes[i], [(m.tasks[0], i)]) for i in range(2)])
    m(**batch).loss.backward()
    opt.step()
    after = base_emb.token_adapter.get_merged_weights(["default"]).detach()
    new = torch.tensor(m.vocab.new_ids)
    old = torch.tensor([i for i in range(len(before)) if i not in set(m.vocab.new_ids)])
    assert torch.equal(after[old], before[old])
    assert not torch.allclose(after[new], before[new])
    # the tied output head sees the same updated rows
    logits_w = m.base_model.get_output_embeddings().token_adapter.get_merged_weights(["default"])
    assert torch.allclose(logits_w, after)


def test_full_finetune_trains_everything(tiny_lm_dir, fake_tokenizer):
    m = FMRILanguageModel.build(_config(tiny_lm_dir, finetune="full"), fake_tokenizer)
    n = m.n_parameters()
    assert n["trainable"] == n["total"]


def test_subspace_rows_are_a_linear_injective_map_into_the_text_subspace():
    from fmrilm.lm.vocab import subspace_rows

    g = torch.Generator().manual_seed(0)
    # text rows with a clear 5-direction principal subspace plus small noise, away from 0
    axes = torch.linalg.qr(torch.randn(40, 5, generator=g))[0].T  # (5, 40) orthonormal
    text = 3.0 + (torch.randn(500, 5, generator=g) * torch.tensor([5.0, 4, 3, 2, 1])) @ axes
    text = text + 0.01 * torch.randn(500, 40, generator=g)
    codes = torch.randn(64, 3, generator=g) @ torch.randn(3, 3, generator=g)  # (K, d_code=3)
    rows = subspace_rows(codes, text)
    assert rows.shape == (64, 40)
    # the rows' mean is the text mean, and they lie in the text's top-3 principal subspace
    assert torch.allclose(rows.mean(0), text.mean(0), atol=1e-4)
    centred = rows - text.mean(0)
    top3 = torch.linalg.svd(text - text.mean(0), full_matrices=False)[2][:3]
    assert torch.allclose(centred @ top3.T @ top3, centred, atol=1e-4)
    # spread: the text's standard deviations along those axes (5, 4, 3), not the codebook's
    sd = (centred @ top3.T).std(0)
    assert torch.allclose(sd, torch.tensor([5.0, 4.0, 3.0]), rtol=0.1)
    # linear and injective: the centred codebook is recovered exactly from the rows
    c = codes - codes.mean(0)
    fit = torch.linalg.lstsq(centred.double(), c.double()).solution
    assert torch.allclose((centred.double() @ fit).float(), c, atol=1e-4)
    with pytest.raises(ValueError, match="at least 2 rows"):
        subspace_rows(codes[:1], text)


def test_subspace_init_builds_from_a_real_tokenizers_code_space(tiny_lm_dir, fmri_tokenizer_dir):
    from fmrilm.lm.vocab import codebook_vectors, subspace_rows
    from fmrilm.tokenizer import FMRITokenizer

    tok_model = FMRITokenizer.from_pretrained(fmri_tokenizer_dir)
    cv = codebook_vectors(tok_model)
    assert cv.shape == (16, 8)  # the code space (code_dim 8), not the LM space (32)
    base, base_tok = _load(tiny_lm_dir)
    text = base.get_input_embeddings().weight.detach().float().clone()
    cfg = LMConfig(
        base_model=str(tiny_lm_dir), codebook_size=16, n_rois=200, n_patches=8,
        layout="compact", init="subspace", lora_r=2,
    )  # fmt: skip
    m = FMRILanguageModel.build(cfg, tok_model, lm=base, tokenizer=base_tok)
    with torch.no_grad():
        rows = m.lm.get_input_embeddings()(m.vocab.code_ids)
    assert torch.allclose(rows, subspace_rows(cv, text), atol=1e-5)
    with pytest.raises(ValueError, match="init must be"):
        LMConfig(init="projected").validate()


def test_subspace_init_checks_its_codebook(tiny_lm_dir):
    model, tok = _load(tiny_lm_dir)
    with pytest.raises(ValueError, match="needs code_vectors"):
        extend_vocabulary(model, tok, 8, init="subspace")
    with pytest.raises(ValueError, match=r"expected \(8, width\)"):
        extend_vocabulary(model, tok, 8, init="subspace", code_vectors=torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        bad = torch.randn(8, 3)
        bad[0, 0] = float("nan")
        extend_vocabulary(model, tok, 8, init="subspace", code_vectors=bad)
