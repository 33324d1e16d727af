"""Tiny causal LMs and a fake fMRI tokenizer for the LM tests (built in seconds, offline)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

WORDS = (
    "question answer what is how old the this participant in years of sex male female does "
    "have autism or are they a control ? , : . \n"
).split(" ")


def make_text_tokenizer(folder: Path):
    """A word-level tokenizer with single digits, saved to ``folder`` and reloaded from it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in [w for w in WORDS if w] + [str(d) for d in range(10)] + ["\n", "?", ":", "."]:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def make_tiny_lm(folder: Path, *, hidden: int = 32, layers: int = 2, tied: bool = True) -> Path:
    """A random 2-layer Llama with the word-level tokenizer, saved as a local folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_text_tokenizer(folder)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def tiny_config(tiny_lm_dir: Path, tasks, **overrides):
    """``LMConfig`` of the tiny LM for 6 ROIs x 4 patches and 8 codes (LoRA r=2)."""
    from fmrilm.lm import LMConfig

    kw = dict(
        base_model=str(tiny_lm_dir),
        codebook_size=8,
        n_rois=6,
        n_patches=4,
        window_length=16,
        stride=8,
        layout="roi_major",
        tasks=[t.to_dict() for t in tasks],
        lora_r=2,
    )
    return LMConfig(**{**kw, **overrides})


class FakeFMRITokenizer(nn.Module):
    """Implements the tokenizer protocol: codes from the sign pattern of patch means."""

    def __init__(
        self, n_rois: int = 6, patch_length: int = 4, codebook_size: int = 8, d_lm: int = 32
    ):
        super().__init__()
        self.config = SimpleNamespace(
            codebook_size=codebook_size, n_rois=n_rois, patch_length=patch_length
        )
        g = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(codebook_size, d_lm, generator=g))

    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        b, length, r = windows.shape
        p = length // self.config.patch_length
        x = windows[:, : p * self.config.patch_length].reshape(b, p, self.config.patch_length, r)
        m = x.mean(2).transpose(1, 2)  # (B, R, P)
        k = self.config.codebook_size
        return ((m * 2).round().clamp(-(k // 2), k // 2 - 1) + k // 2).long()

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table[codes]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Windows (B, P * patch_length, R): each patch's level back, plus a fixed ROI ripple."""
        b, r, p = codes.shape
        level = (codes.float() - self.config.codebook_size // 2) / 2
        x = level.repeat_interleave(self.config.patch_length, dim=2).transpose(1, 2)
        t = torch.arange(x.shape[1], dtype=torch.float32)[:, None]
        return x + 0.1 * torch.sin(t * torch.arange(1, r + 1, dtype=torch.float32) / 3)

    def code_embeddings_for_lm(self) -> torch.Tensor:
        return self.table.detach()


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    """Every test here runs with one torch thread (``tests/conftest.py``)."""


def make_tiny_fmri_tokenizer(folder: Path) -> Path:
    """A real (untrained) ``FMRITokenizer`` for 200 ROIs x 160 points, saved to ``folder``."""
    from fmrilm.tokenizer import FMRITokenizer, TokenizerConfig

    cfg = TokenizerConfig(
        n_rois=200,
        window_length=160,
        patch_length=20,
        d_model=16,
        n_heads=2,
        encoder_layers=1,
        decoder_layers=1,
        codebook_size=16,
        code_dim=8,
        kmeans_init=False,
        lm_dim=32,
        projector_hidden=16,
        discriminator_hidden=16,
    )
    FMRITokenizer(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def fmri_tokenizer_dir(tmp_path_factory) -> Path:
    return make_tiny_fmri_tokenizer(tmp_path_factory.mktemp("fmri_tok") / "tok")


@pytest.fixture
def fake_tokenizer() -> FakeFMRITokenizer:
    return FakeFMRITokenizer()
