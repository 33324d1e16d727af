"""The summary layout: every code token's embedding row, pooled per ROI, as a few LM inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import reduce

from fmrilm.lm import LAYOUTS, FMRILanguageModel, LMConfig, TaskSpec, TokenLayout
from fmrilm.lm.summary import CodeSummary, decoded_connectivity

from .conftest import FakeFMRITokenizer, tiny_config

SEX = TaskSpec("sex", "classification", "what is the sex of this participant ?", ["female", "male"])
AGE = TaskSpec(
    "age", "regression", "how old is this participant ?", [str(a) for a in range(5, 26)],
    [float(a) for a in range(5, 26)],
)  # fmt: skip


def _model(tiny_lm_dir, finetune="lora", n_tokens=3, seed=0, **kw):
    cfg = tiny_config(
        tiny_lm_dir,
        [SEX, AGE],
        layout="summary",
        summary_tokens=n_tokens,
        summary_roi_dim=4,
        finetune=finetune,
        seed=seed,
        **kw,
    )
    return FMRILanguageModel.build(cfg, FakeFMRITokenizer())


def _codes(n, seed=0):
    return torch.randint(0, 8, (n, 6, 4), generator=torch.Generator().manual_seed(seed))


def test_layout_is_placeholders_between_delimiters(tiny_lm_dir):
    m = _model(tiny_lm_dir)
    ids = m.layout.token_ids(_codes(2), m.vocab)
    v = m.vocab
    assert ids.shape == (2, 5) and m.layout.n_tokens == 5
    assert (ids[:, 0] == v.open_id).all() and (ids[:, -1] == v.close_id).all()
    assert (ids[:, 1:-1] == v.roi_sep_id).all()
    assert m.layout.describe()["summary_tokens"] == 3
    with pytest.raises(ValueError, match="every ROI"):
        TokenLayout("summary", 6, 4, rois=(0, 1))
    with pytest.raises(ValueError, match="summary_tokens"):
        LMConfig(layout="summary", summary_tokens=0).validate()


def test_cli_layout_choices_match_the_package():
    from fmrilm.cli.lm import LAYOUT_CHOICES

    assert tuple(LAYOUT_CHOICES) == tuple(LAYOUTS)


def test_summary_vectors_replace_the_placeholders(tiny_lm_dir):
    m = _model(tiny_lm_dir)
    codes = _codes(2)
    ids, labels = m.example(codes[0], [(SEX, 1)])
    batch = m.collate([(ids, labels, codes[0]), (*m.example(codes[1], [(SEX, 0)]), codes[1])])
    inputs = m.lm_inputs(batch["input_ids"], batch["codes"])["inputs_embeds"]
    embed = m.lm.get_input_embeddings()
    with torch.no_grad():
        plain = embed(batch["input_ids"])
        table = embed(m.vocab.code_ids)  # (K, D): the shared vocabulary's rows, centred
        rows = (table - table.mean(0))[codes]  # (B, R, P, D)
        per_roi = reduce(rows, "b r p d -> b r d", "mean")
        expected = m.summary.projector(m.summary.reduce_roi(per_roi).flatten(1))
    slots = batch["input_ids"] == m.vocab.roi_sep_id
    assert torch.allclose(inputs[slots].reshape(2, 3, -1), expected, atol=1e-6)
    assert torch.equal(inputs[~slots], plain[~slots])  # everything else is the token's own row
    # a different window gives a different summary
    other = m.lm_inputs(batch["input_ids"], _codes(2, seed=1))["inputs_embeds"]
    assert not torch.allclose(other[slots], inputs[slots])
    with pytest.raises(ValueError, match="needs the windows' codes"):
        m.lm_inputs(batch["input_ids"])
    with pytest.raises(ValueError, match="exactly 3 summary positions"):
        m.lm_inputs(batch["input_ids"][:, 3:], batch["codes"])  # one slot cut off


def test_a_step_trains_the_summary_and_code_rows_not_the_old_rows(tiny_lm_dir):
    m = _model(tiny_lm_dir)
    codes = _codes(4)
    batch = m.collate([(*m.example(c, [(SEX, i % 2)]), c) for i, c in enumerate(codes)])
    params = m.trainable_parameters()
    assert any(n.startswith("summary.") for n in params)
    before = {n: p.detach().clone() for n, p in params.items()}
    old_rows = m.base_model.get_input_embeddings().weight.detach().clone()
    opt = torch.optim.SGD(list(params.values()), lr=0.5)
    m(**batch).loss.backward()
    opt.step()
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert {n for n in changed if n.startswith("summary.")} == {
        n for n in params if n.startswith("summary.")
    }
    assert any("trainable_tokens" in n for n in changed), "the fMRI rows receive no gradient"
    emb = m.lm.get_input_embeddings()
    new = set(m.vocab.new_ids)
    keep = torch.tensor([i for i in range(old_rows.shape[0]) if i not in new])
    with torch.no_grad():
        now = emb(keep)
    assert torch.equal(now, old_rows[keep])


def test_packed_and_cached_scoring_agree(tiny_lm_dir):
    m = _model(tiny_lm_dir)
    codes = _codes(3, seed=2)
    for task in (SEX, AGE):
        packed = m.score(codes, task, method="packed")
        cached = m.score(codes, task, method="cache")
        assert torch.allclose(packed, cached, atol=1e-4)
    # and both equal a plain forward pass over prompt + answer
    ids = m.prompt_ids(m.layout.token_ids(codes[0], m.vocab), SEX)
    a = m.answer_ids(SEX, 1)
    with torch.no_grad():
        inp = m.lm_inputs(torch.tensor([ids + a]), codes[:1])
        lp = F.log_softmax(m.lm(**inp).logits[0], -1)
    ref = sum(lp[len(ids) - 1 + i, a[i]].item() for i in range(len(a)))
    assert m.score(codes[:1], SEX)[0, 1].item() == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_save_load_round_trip(tiny_lm_dir, tmp_path, finetune):
    m = _model(tiny_lm_dir, finetune)
    with torch.no_grad():
        for p in m.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    codes = _codes(2, seed=3)
    m.save_pretrained(tmp_path / "m")
    m2 = FMRILanguageModel.from_pretrained(tmp_path / "m", FakeFMRITokenizer())
    assert m2.layout == m.layout and m2.summary is not None
    for task in (SEX, AGE):
        assert torch.allclose(m.score(codes, task), m2.score(codes, task), atol=1e-5)


def test_same_seed_same_summary(tiny_lm_dir):
    a, b = _model(tiny_lm_dir, seed=4), _model(tiny_lm_dir, seed=4)
    pairs = zip(a.summary.named_parameters(), b.summary.named_parameters(), strict=True)
    for (n, p), (_, q) in pairs:
        assert torch.equal(p, q), n
    assert not torch.equal(_model(tiny_lm_dir, seed=5).summary.reduce_roi.weight,
                           a.summary.reduce_roi.weight)  # fmt: skip


def test_learns_a_planted_roi_signal(tiny_lm_dir):
    """The class is ROI 2's mean code (< 3.5 female, male above); every other code is noise.

    The random tiny LM knows no language, so it is fully fine-tuned (LoRA on a random model
    barely moves); what is tested is that the summary carries one ROI's codes to the answer.
    """
    torch.manual_seed(0)
    m = _model(tiny_lm_dir, "full")
    codes = _codes(96, seed=7)
    y = (codes[:, 2, :].float().mean(1) >= 3.5).long()
    train, test = slice(0, 64), slice(64, 96)
    opt = torch.optim.AdamW(list(m.trainable_parameters().values()), lr=1e-3)
    m.train()
    for step in range(240):
        idx = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(step))
        c, lab = codes[train][idx], y[train][idx]
        batch = m.collate([(*m.example(c[i], [(SEX, int(lab[i]))]), c[i]) for i in range(16)])
        m(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    pred = m.score(codes[test], SEX).argmax(1)
    assert (pred == y[test]).float().mean() >= 0.8


def test_code_summary_checks_its_input():
    s = CodeSummary(n_rois=5, embed_dim=8, n_tokens=2, roi_dim=3)
    assert s(torch.randn(4, 5, 7, 8)).shape == (4, 2, 8)
    with pytest.raises(ValueError, match=r"\(B, 5, P, D\)"):
        s(torch.randn(4, 6, 7, 8))


def test_roi_dropout_drops_whole_rois_in_training_only():
    torch.manual_seed(0)
    summary = CodeSummary(n_rois=50, embed_dim=8, n_tokens=2, roi_dim=3, roi_dropout=0.5)
    rows = torch.randn(4, 50, 5, 8)
    seen = {}
    summary.projector.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    summary.train()
    summary(rows)
    reduced = seen["x"].reshape(4, 50, 3)
    dropped = (reduced == 0).all(dim=-1)  # a dropped ROI is zero in all its numbers
    partly = ((reduced == 0).any(dim=-1) & ~dropped).any()
    assert 0.2 < dropped.float().mean() < 0.8 and not partly
    kept = summary.reduce_roi(reduce(rows, "b r p d -> b r d", "mean"))
    assert torch.allclose(reduced[~dropped], 2 * kept[~dropped], atol=1e-6)  # scaled by 1/(1-p)
    summary.eval()
    summary(rows)
    assert torch.allclose(seen["x"].reshape(4, 50, 3), kept, atol=1e-6)
    with pytest.raises(ValueError, match="roi_dropout"):
        CodeSummary(n_rois=2, embed_dim=8, roi_dropout=1.0)
    with pytest.raises(ValueError, match="summary_roi_dropout"):
        LMConfig(summary_roi_dropout=-0.1).validate()


def test_scoring_turns_roi_dropout_off(tiny_lm_dir):
    m = _model(tiny_lm_dir, summary_roi_dropout=0.5)
    m.train()  # as after building or loading: scoring must not drop ROIs anyway
    codes = _codes(4, seed=3)
    first = m.score(codes, SEX)
    assert torch.equal(first, m.score(codes, SEX))  # no random ROIs dropped
    assert m.training and m.summary.training  # the caller's mode is restored
    m.eval()
    assert torch.allclose(first, m.score(codes, SEX), atol=1e-6)


def test_decoded_connectivity_is_the_fisher_z_correlation_of_the_decoded_codes(fake_tokenizer):
    codes = _codes(3, seed=2)
    z = decoded_connectivity(fake_tokenizer, codes)
    assert z.shape == (3, 6, 6) and not z.requires_grad
    for b in range(3):
        windows = fake_tokenizer.decode(codes[b : b + 1])[0].double()
        corr = torch.corrcoef(windows.T).clamp(-0.999, 0.999)
        expected = torch.atanh(corr) * (1 - torch.eye(6, dtype=torch.float64))
        assert torch.allclose(z[b].double(), expected, atol=1e-4)
    with pytest.raises(ValueError, match="decode"):
        decoded_connectivity(object(), codes)


def test_connectivity_branch_reads_the_connectivity_and_checks_it():
    torch.manual_seed(0)
    summary = CodeSummary(n_rois=5, embed_dim=8, n_tokens=2, roi_dim=3, connectivity_dim=2)
    assert summary.projector.norm.normalized_shape == (5 * (3 + 2),)
    rows, conn = torch.randn(4, 5, 7, 8), torch.randn(4, 5, 5)
    out = summary(rows, conn)
    assert out.shape == (4, 2, 8)
    assert not torch.allclose(out, summary(rows, conn.flip(0)))  # the output depends on it
    out.sum().backward()
    assert summary.reduce_connectivity.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"connectivity must be \(B, R, R\)"):
        summary(rows)
    with pytest.raises(ValueError, match=r"connectivity must be \(B, R, R\)"):
        summary(rows, torch.randn(4, 5, 4))
    with pytest.raises(ValueError, match="connectivity_dim"):
        CodeSummary(n_rois=5, embed_dim=8, connectivity_dim=-1)
    with pytest.raises(ValueError, match="summary_connectivity_dim"):
        LMConfig(summary_connectivity_dim=-1).validate()
    off = CodeSummary(n_rois=5, embed_dim=8, n_tokens=2, roi_dim=3)
    assert off.reduce_connectivity is None and off.projector.norm.normalized_shape == (15,)


def test_connectivity_model_trains_saves_and_needs_its_tokenizer(tiny_lm_dir, tmp_path):
    m = _model(tiny_lm_dir, summary_connectivity_dim=2)
    codes = _codes(4, seed=1)
    batch = m.collate([(*m.example(codes[i], [(SEX, i % 2)]), codes[i]) for i in range(4)])
    m(**batch).loss.backward()
    assert m.summary.reduce_connectivity.weight.grad.abs().sum() > 0
    before = m.score(codes, SEX)
    loaded = FMRILanguageModel.from_pretrained(
        m.save_pretrained(tmp_path / "m"), fmri_tokenizer=FakeFMRITokenizer()
    )
    assert loaded.config.summary_connectivity_dim == 2
    assert torch.allclose(before, loaded.score(codes, SEX), atol=1e-5)
    object.__setattr__(loaded, "fmri_tokenizer", None)
    with pytest.raises(ValueError, match="need the fMRI tokenizer"):
        loaded.score(codes, SEX)


def test_a_padded_short_window_is_read_from_its_own_patches(tiny_lm_dir, fake_tokenizer):
    """PAD_CODE patches change neither the pooled rows nor the decoded connectivity."""
    from fmrilm.lm.summary import PAD_CODE, valid_patches

    codes = _codes(3, seed=4)
    padded = codes.clone()
    padded[1, :, 2:] = PAD_CODE  # the second window has 2 of 4 patches
    assert valid_patches(padded).tolist() == [4, 2, 4]
    z = decoded_connectivity(fake_tokenizer, padded)
    torch.testing.assert_close(z[1], decoded_connectivity(fake_tokenizer, codes[1:2, :, :2])[0])
    torch.testing.assert_close(z[[0, 2]], decoded_connectivity(fake_tokenizer, codes[[0, 2]]))

    summary = CodeSummary(n_rois=6, embed_dim=5, n_tokens=2, roi_dim=3)
    rows = torch.randn(3, 6, 4, 5)
    out = summary(rows, n_patches=torch.tensor([4, 2, 4]))
    torch.testing.assert_close(out[1], summary(rows[1:2, :, :2])[0])
    torch.testing.assert_close(out[[0, 2]], summary(rows[[0, 2]]))

    model = _model(tiny_lm_dir, summary_connectivity_dim=2)
    ids = model.layout.token_ids(padded, model.vocab)
    alone = model.lm_inputs(ids[1:2], codes[1:2, :, :2])  # the window without its padding
    both = model.lm_inputs(ids, padded)
    torch.testing.assert_close(both["inputs_embeds"][1], alone["inputs_embeds"][0])


@pytest.mark.parametrize(
    "where", [(0, slice(0, 3), slice(2, 4)), (0, slice(None), slice(0, 1)), (0, slice(None), ...)]
)
def test_padding_must_fill_whole_trailing_patches(where):
    from fmrilm.lm.summary import PAD_CODE, valid_patches

    codes = _codes(2)
    codes[where] = PAD_CODE  # some ROIs only / a leading patch / every patch
    with pytest.raises(ValueError, match="padd"):
        valid_patches(codes)


def test_token_layouts_refuse_padded_codes(tiny_lm_dir):
    from fmrilm.lm.summary import PAD_CODE

    codes = _codes(1)
    codes[..., 3] = PAD_CODE
    layout = TokenLayout("roi_major", n_rois=6, n_patches=4)
    model = _model(tiny_lm_dir)
    with pytest.raises(ValueError, match="summary layout only"):
        layout.token_ids(codes, model.vocab)
    with pytest.raises(ValueError, match="only the summary layout"):
        LMConfig(layout="compact", window_length=160, min_window_length=60).validate()


def test_tokenizer_chunks_cover_a_long_window_with_the_tokenizers_own_windows(fake_tokenizer):
    from fmrilm.lm.summary import tokenizer_chunks

    assert tokenizer_chunks(fake_tokenizer, 5) == [(0, 5)]  # no window length: one piece
    fake_tokenizer.config.window_length = 8  # 2 patches of 4 points
    assert tokenizer_chunks(fake_tokenizer, 5) == [(0, 2), (2, 4), (4, 5)]
    assert tokenizer_chunks(fake_tokenizer, 2) == [(0, 2)]


def test_a_window_longer_than_the_tokenizers_is_read_as_consecutive_tokenizer_windows(
    fmri_tokenizer_dir,
):
    """A 300-point window of a 160-point tokenizer: codes and decoded connectivity of its two
    pieces (160 + 140 points), never the tokenizer's untrained positions beyond its window."""
    from fmrilm.lm.summary import PAD_CODE
    from fmrilm.lm.training import encode_window_list
    from fmrilm.tokenizer import FMRITokenizer

    tok = FMRITokenizer.from_pretrained(fmri_tokenizer_dir)
    with torch.no_grad():  # the untrained output head is zero: give the decoded signal variance
        tok.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    codes = torch.from_numpy(encode_window_list(tok, [x], n_patches=16)).long()
    first, second = tok.encode(x[None, :160]), tok.encode(x[None, 160:])
    torch.testing.assert_close(codes[0, :, :8], first[0])
    torch.testing.assert_close(codes[0, :, 8:15], second[0])
    assert bool((codes[0, :, 15] == PAD_CODE).all())
    assert not torch.equal(codes[0, :, :15], tok.encode(x[None])[0])  # the unchunked read differs

    signal = torch.cat([tok.decode(first), tok.decode(second)], dim=1)[0].double()
    corr = torch.corrcoef(signal.T).clamp(-0.999, 0.999)
    expected = torch.atanh(corr) * (1 - torch.eye(200, dtype=torch.float64))
    z = decoded_connectivity(tok, codes)
    assert torch.allclose(z[0].double(), expected, atol=1e-4)
    with pytest.raises(ValueError, match="more than 14"):
        encode_window_list(tok, [x], n_patches=14)


def _planted_connectivity(n, r=6, seed=0):
    """Symmetric (n, r, r) matrices whose pairs vary along two planted directions plus noise."""
    g = torch.Generator().manual_seed(seed)
    iu = torch.triu_indices(r, r, 1)
    dirs = torch.linalg.qr(torch.randn(len(iu[0]), 2, generator=g))[0].T  # (2, pairs)
    x = torch.randn(n, 2, generator=g) * torch.tensor([3.0, 2.0]) @ dirs
    x = x + 0.05 * torch.randn(n, len(iu[0]), generator=g) + 0.5
    z = torch.zeros(n, r, r)
    z[:, iu[0], iu[1]] = x
    return z + z.transpose(1, 2), dirs


def test_connectivity_components_are_the_training_windows_principal_directions():
    from sklearn.decomposition import PCA

    z, planted = _planted_connectivity(200)
    summary = CodeSummary(n_rois=6, embed_dim=8, n_tokens=2, roi_dim=3, connectivity_components=2)
    assert summary.projector.norm.normalized_shape == (6 * 3 + 2,)
    rows = torch.randn(200, 6, 4, 8)
    with pytest.raises(RuntimeError, match="not fitted"):
        summary(rows[:2], z[:2])
    summary.fit_connectivity_components(z)
    iu = torch.triu_indices(6, 6, 1)
    pca = PCA(2).fit(z[:, iu[0], iu[1]].double().numpy())
    # the same directions as scikit-learn's PCA, up to sign, and they recover the planted ones
    cos = (summary.components.double() @ torch.from_numpy(pca.components_).T).abs()
    torch.testing.assert_close(cos, torch.eye(2, dtype=cos.dtype), atol=1e-6, rtol=0)
    assert torch.linalg.svdvals(summary.components.float() @ planted.T).min() > 0.99  # span
    scores = summary.connectivity_scores(z)
    torch.testing.assert_close(scores.std(0), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    # the scores reach the projector: changing a window's connectivity changes its summary
    out = summary(rows[:3], z[:3])
    assert not torch.allclose(out, summary(rows[:3], z[[1, 2, 0]]))
    out.sum().backward()
    assert summary.projector.mlp[0].weight.grad[:, -2:].abs().sum() > 0


def test_connectivity_components_refuse_what_they_cannot_fit():
    z, _ = _planted_connectivity(10)
    summary = CodeSummary(n_rois=6, embed_dim=8, connectivity_components=3)
    with pytest.raises(ValueError, match="more than 3 windows"):
        summary.fit_connectivity_components(z[:3])
    with pytest.raises(ValueError, match=r"\(N, 6, 6\)"):
        summary.fit_connectivity_components(z[:, :5, :5])
    bad = z.clone()
    bad[0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        summary.fit_connectivity_components(bad)
    with pytest.raises(ValueError, match=r"connectivity must be \(B, R, R\)"):
        summary(torch.randn(2, 6, 4, 8))
    with pytest.raises(ValueError, match="connectivity_components must be in"):
        CodeSummary(n_rois=6, embed_dim=8, connectivity_components=16)  # 15 ROI pairs
    with pytest.raises(ValueError, match="no connectivity components"):
        CodeSummary(n_rois=6, embed_dim=8).fit_connectivity_components(z)
    with pytest.raises(ValueError, match="summary_connectivity_components"):
        LMConfig(n_rois=6, summary_connectivity_components=-1).validate()


def test_model_with_connectivity_components_fits_saves_and_loads_them(tiny_lm_dir, tmp_path):
    m = _model(tiny_lm_dir, summary_connectivity_components=3)
    codes = _codes(12, seed=2)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.score(codes[:2], SEX)
    # that error is the model's, not a sign that the LM cannot score packed answers
    assert getattr(m, "_packed_ok", None) is None
    m.fit_summary_components(codes, batch_size=5)
    expected = decoded_connectivity(FakeFMRITokenizer(), codes)
    ref = CodeSummary(n_rois=6, embed_dim=8, connectivity_components=3)
    ref.fit_connectivity_components(expected)
    torch.testing.assert_close(m.summary.components, ref.components)
    before = m.score(codes[:4], SEX)
    assert m._packed_ok
    folder = m.save_pretrained(tmp_path / "m")
    assert (folder / "summary_buffers.safetensors").exists()
    loaded = FMRILanguageModel.from_pretrained(folder, fmri_tokenizer=FakeFMRITokenizer())
    assert loaded.config.summary_connectivity_components == 3
    torch.testing.assert_close(loaded.score(codes[:4], SEX), before, atol=1e-5, rtol=0)
    (folder / "summary_buffers.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="summary_buffers"):
        FMRILanguageModel.from_pretrained(folder, fmri_tokenizer=FakeFMRITokenizer())
    with pytest.raises(ValueError, match="no summary connectivity components"):
        _model(tiny_lm_dir).fit_summary_components(codes)
    # a model without components writes no such file
    assert not (
        _model(tiny_lm_dir).save_pretrained(tmp_path / "plain") / "summary_buffers.safetensors"
    ).exists()
