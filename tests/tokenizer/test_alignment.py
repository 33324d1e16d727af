"""Realigning a trained tokenizer on its frozen codebook (fmrilm.tokenizer.alignment)."""

from __future__ import annotations

import pytest
import torch

from fmrilm.tokenizer import FMRITokenizer, random_token_mask
from fmrilm.tokenizer.alignment import RealignConfig, cycle_loss, realign
from fmrilm.tokenizer.text_domain import random_text_domain

from .conftest import LM_DIM, PATCH, WINDOW


@pytest.fixture
def model(tiny_config, windows):
    torch.manual_seed(0)
    m = FMRITokenizer(tiny_config)
    x = torch.as_tensor(windows[:16]).float()
    hidden = random_token_mask(len(x), x.shape[2], WINDOW // PATCH, 0.0, torch.Generator())
    m.train()
    m(x, hidden, torch.ones(len(x), x.shape[2], dtype=torch.bool))  # k-means initialises codes
    return m.eval()


def _alignment_free_state(m):
    return {
        k: v.clone()
        for k, v in m.state_dict().items()
        if not k.startswith(("projector.", "discriminator."))
    }


def test_cycle_loss_is_one_minus_r2():
    v = torch.randn(50, 4)
    exact = torch.nn.Linear(4, 4)
    with torch.no_grad():
        exact.weight.copy_(torch.eye(4))
        exact.bias.zero_()
    assert cycle_loss(exact, v, v).item() == pytest.approx(0.0, abs=1e-6)
    mean_only = torch.nn.Linear(4, 4)
    with torch.no_grad():
        mean_only.weight.zero_()
        mean_only.bias.copy_(v.mean(0))
    assert cycle_loss(mean_only, v, v).item() == pytest.approx(1.0, rel=1e-5)


def test_realign_changes_only_the_alignment_and_the_cycle_keeps_codes_apart(model):
    before = _alignment_free_state(model)
    projector_before = [p.clone() for p in model.projector.parameters()]
    domain = random_text_domain(vocab=64, dim=LM_DIM)
    plain, res0 = realign(model, domain, RealignConfig(steps=200, batch_size=64, cycle_weight=0))
    cyc, res1 = realign(model, domain, RealignConfig(steps=200, batch_size=64, cycle_weight=3))
    for new in (plain, cyc):
        after = _alignment_free_state(new)
        assert after.keys() == before.keys()
        for k in before:  # codes, encoder, decoder: untouched
            assert torch.equal(after[k], before[k]), k
    for p, q in zip(model.projector.parameters(), projector_before, strict=True):
        assert torch.equal(p, q)  # the input model is left as it was
    assert any(
        not torch.equal(p, q)
        for p, q in zip(cyc.projector.parameters(), projector_before, strict=True)
    )
    assert res1["cycle_r2"] > 0.8, res1["cycle_r2"]
    assert res1["cycle_r2"] > res0["cycle_r2"] + 0.05, (res0["cycle_r2"], res1["cycle_r2"])
    for res in (res0, res1):
        assert 0.0 <= res["discriminator"]["accuracy"] <= 1.0
        assert res["history"][-1]["step"] == 199


def test_realign_refuses_what_it_cannot_align(model, tiny_config):
    with pytest.raises(ValueError, match="wide"):
        realign(model, random_text_domain(vocab=64, dim=LM_DIM + 1), RealignConfig(steps=1))
    with pytest.raises(ValueError, match="code_weights"):
        realign(model, random_text_domain(dim=LM_DIM), code_weights=torch.ones(3))
    with pytest.raises(ValueError, match="code_weights"):
        realign(model, random_text_domain(dim=LM_DIM), code_weights=-torch.ones(32))
    with pytest.raises(ValueError, match="sum to zero"):
        realign(model, random_text_domain(dim=LM_DIM), code_weights=torch.zeros(32))
    with pytest.raises(ValueError, match="cycle_weight"):
        realign(model, random_text_domain(dim=LM_DIM), RealignConfig(cycle_weight=-1))
    with pytest.raises(ValueError, match="steps"):
        realign(model, random_text_domain(dim=LM_DIM), RealignConfig(steps=0))
    tiny_config.align = False
    with pytest.raises(ValueError, match="without alignment"):
        realign(FMRITokenizer(tiny_config), random_text_domain(dim=LM_DIM))


def test_cli_realign_needs_an_lm(model, tmp_path, capsys):
    import argparse

    from fmrilm.cli.tokenizer import add_parser

    folder = model.save_pretrained(tmp_path / "tok")  # the tiny config records no LM
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["tokenizer", "realign", "--model", str(folder), "--out", "o"])
    assert args.run(args) == 2
    assert "records no LM; pass --lm" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
