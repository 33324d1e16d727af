"""FMRITokenizer: shapes, masking, gradient reversal, quantizer, persistence."""

from __future__ import annotations

import math

import pytest
import torch

from fmrilm.tokenizer import (
    FMRITokenizer,
    TokenizerConfig,
    dann_lambda,
    grad_reverse,
    patchify,
    random_token_mask,
    unpatchify,
)

from .conftest import LM_DIM, N_ROIS, PATCH, WINDOW

P = WINDOW // PATCH


def test_shapes(tiny_config, windows):
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_config)
    b = windows.shape[0]
    hidden = random_token_mask(b, N_ROIS, P, 0.5, torch.Generator().manual_seed(0))
    out = m(windows, hidden)
    assert out["pred"].shape == windows.shape
    assert out["codes"].shape == (b, N_ROIS, P)
    assert out["zq"].shape == (b, N_ROIS, P, tiny_config.code_dim)
    codes = m.encode(windows)
    assert codes.shape == (b, N_ROIS, P) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < tiny_config.codebook_size
    assert m.decode(codes).shape == windows.shape
    assert m.embed_codes(codes).shape == (b, N_ROIS, P, LM_DIM)
    assert m.codebook_lm_embeddings().shape == (tiny_config.codebook_size, LM_DIM)
    # longer windows (more patches) are accepted up to max_patches
    longer = torch.randn(2, WINDOW * 2, N_ROIS)
    assert m.encode(longer).shape == (2, N_ROIS, 2 * P)


def test_patchify_roundtrip(windows):
    p = patchify(windows, PATCH)
    assert p.shape == (windows.shape[0], N_ROIS, P, PATCH)
    assert torch.equal(p[0, 3, 1], windows[0, PATCH : 2 * PATCH, 3])
    assert torch.equal(unpatchify(p), windows)


def test_random_token_mask_exact_count():
    g = torch.Generator().manual_seed(0)
    for ratio in (0.0, 0.2, 0.5, 0.75):
        h = random_token_mask(5, N_ROIS, P, ratio, g)
        assert h.shape == (5, N_ROIS, P) and h.dtype == torch.bool
        assert (h.view(5, -1).sum(1) == round(ratio * N_ROIS * P)).all()
    a = random_token_mask(3, N_ROIS, P, 0.5, torch.Generator().manual_seed(1))
    b = random_token_mask(3, N_ROIS, P, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_hidden_values_do_not_leak(tiny_config, windows):
    """Predictions depend on visible values only: changing hidden values changes nothing."""
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_config)
    m(windows, random_token_mask(windows.shape[0], N_ROIS, P, 0.5))  # k-means init
    m.eval()
    hidden = random_token_mask(windows.shape[0], N_ROIS, P, 0.5, torch.Generator().manual_seed(2))
    hid_t = hidden.permute(0, 2, 1).repeat_interleave(PATCH, 1)
    changed = torch.where(hid_t, torch.randn_like(windows) * 5, windows)
    with torch.no_grad():
        a = m(windows, hidden)["pred"]
        b = m(changed, hidden)["pred"]
    torch.testing.assert_close(a, b)


def test_residual_decoder_starts_at_conditional(tiny_config, windows):
    """With the zero-initialised head, hidden predictions equal the Gaussian conditional."""
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_config)
    cov = torch.cov(windows.reshape(-1, N_ROIS).T)
    m.set_conditional(windows.reshape(-1, N_ROIS).mean(0), cov, 0.05)
    m.eval()
    hidden = random_token_mask(windows.shape[0], N_ROIS, P, 0.3, torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = m(windows, hidden)
    hid_t = hidden.permute(0, 2, 1).repeat_interleave(PATCH, 1)
    cond = m.conditional(windows, ~hid_t)
    torch.testing.assert_close(out["pred"][hid_t], cond[hid_t])


def test_gradient_reversal_flips_sign():
    x = torch.randn(4, 3, requires_grad=True)
    (grad_reverse(x, 0.7) * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.7 * torch.arange(3.0).expand(4, 3))
    y = torch.randn(4, 3, requires_grad=True)
    out = grad_reverse(y, 1.0)
    torch.testing.assert_close(out, y)  # identity forward


def test_dann_schedule():
    assert dann_lambda(0.0) == 0.0
    assert math.isclose(dann_lambda(1.0), 2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.1) < dann_lambda(0.5) < dann_lambda(1.0) < 1.0


def test_quantizer_behaviour(tiny_config, windows):
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_config)
    vq = m.quantizer
    assert not bool(vq._codebook.initted)
    m.train()
    out = m(windows)
    assert bool(vq._codebook.initted)  # k-means initialisation on the first batch
    cb = vq.codebook.clone()
    torch.testing.assert_close(cb.norm(dim=-1), torch.ones(cb.shape[0]), atol=1e-4, rtol=0)
    assert out["commit_loss"].item() >= 0
    m(windows * 2 + 1)
    assert not torch.equal(cb, vq.codebook)  # EMA update in training
    m.eval()
    cb2 = vq.codebook.clone()
    with torch.no_grad():
        m(windows)
    assert torch.equal(cb2, vq.codebook)  # frozen in eval
    # quantized vectors are codebook entries
    codes = m.encode(windows)
    torch.testing.assert_close(m.code_vectors(codes), vq.codebook[codes])


def test_evaluation_quantize_matches_the_library(tiny_config, windows):
    """The inference path (``nearest_codes``) gives VectorQuantize's own evaluation outputs."""
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_config)
    m.train()
    for _ in range(3):
        m(windows, random_token_mask(windows.shape[0], N_ROIS, P, 0.2))
    m.eval()
    with torch.no_grad():
        z = m.encode_continuous(windows)
        valid = ~random_token_mask(windows.shape[0], N_ROIS, P, 0.3)
        for v in (None, valid):
            zq, idx, commit = m.quantize(z, v)
            flat = z.reshape(z.shape[0], -1, z.shape[-1])
            mask = None if v is None else v.reshape(v.shape[0], -1)
            lib_zq, lib_idx, lib_commit = m.quantizer(flat, mask=mask)
            assert torch.equal(idx.reshape(lib_idx.shape), lib_idx)
            torch.testing.assert_close(zq.reshape(lib_zq.shape), lib_zq)
            assert float(commit) == float(lib_commit.sum()) == 0.0
        if valid is not None:
            assert bool((idx[~valid] == -1).all()) and bool((zq[~valid] == 0).all())
        # chunking does not change the answer
        flat = z.reshape(-1, z.shape[-1])
        assert torch.equal(m.nearest_codes(flat, chunk_tokens=7), m.nearest_codes(flat))


def test_untrained_codebook_is_initialised_by_the_library_in_evaluation(tiny_config, windows):
    m = FMRITokenizer(tiny_config)
    m.eval()
    m.encode(windows)
    assert bool(m.quantizer._codebook.initted)


def test_dead_codes_are_replaced(tiny_config, windows):
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_config)
    m.train()
    m(windows)
    cs = m.quantizer._codebook.cluster_size
    cs[0, :5] = 0.0  # kill five codes
    m(windows)
    assert bool((m.quantizer._codebook.cluster_size[0, :5] > 0).all())


def test_save_load_roundtrip(tmp_path, tiny_config, windows):
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_config)
    m.train()
    for _ in range(2):
        m(windows, random_token_mask(windows.shape[0], N_ROIS, P, 0.2))
    m.scaler_stats = {"scheme": "s", "median": [0.0] * N_ROIS, "iqr": [1.0] * N_ROIS}
    m.config.lm_name = "tiny-lm"
    m.save_pretrained(tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "scaler.json",
    }
    m2 = FMRITokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(m.encode(windows), m2.encode(windows))
    codes = m.encode(windows)
    torch.testing.assert_close(m.decode(codes), m2.decode(codes))
    torch.testing.assert_close(m.embed_codes(codes), m2.embed_codes(codes))
    assert m2.config.lm_name == "tiny-lm" and m2.scaler_stats["scheme"] == "s"
    torch.testing.assert_close(m2.scale(torch.ones(2, N_ROIS)), torch.ones(2, N_ROIS))


def test_config_validation():
    with pytest.raises(ValueError):
        TokenizerConfig(window_length=30, patch_length=8).validate()
    with pytest.raises(ValueError):
        TokenizerConfig.from_dict({"nope": 1})
