"""Tiny models built from configs for the study tests: a character-level tokenizer, a Llama causal
LM and a LLaVA VLM (CLIP vision tower + Llama text model) with its processor."""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}"
)


def char_tokenizer(extra_special: tuple[str, ...] = ()):
    """A character-level fast tokenizer: every printable ASCII character is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", *extra_special]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for c in string.ascii_letters + string.digits + string.punctuation + " \n":
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=list(extra_special) or None,
    )


def _llama_config(vocab_size: int, hidden: int = 32):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def tiny_causal_lm(seed: int = 0):
    """(model, tokenizer): a 2-layer Llama with hidden size 32 over the character tokenizer."""
    from transformers import LlamaForCausalLM

    tok = char_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(_llama_config(len(tok)))
    return model.eval(), tok


def save_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """Write a tiny LLaVA (CLIP vision 32 px, patch 8; Llama text) and its processor to ``folder``."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = char_tokenizer(("<image>",))
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(len(tok)),
        image_token_index=image_token_id,
        image_seq_length=16,
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_causal_lm(folder: Path, seed: int = 0) -> Path:
    """Write the tiny Llama and its tokenizer to ``folder`` (loadable by ``AutoModelForCausalLM``)."""
    model, tok = tiny_causal_lm(seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_fmri_tokenizer(folder: Path, n_rois: int, window_length: int, seed: int = 0) -> Path:
    """Write an untrained, tiny fMRI tokenizer (fmrilm.tokenizer) to ``folder``."""
    from fmrilm.tokenizer import FMRITokenizer, TokenizerConfig

    config = TokenizerConfig(
        n_rois=n_rois,
        window_length=window_length,
        patch_length=16,
        d_model=16,
        n_heads=2,
        encoder_layers=1,
        decoder_layers=1,
        codebook_size=16,
        code_dim=4,
        align=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FMRITokenizer(config)
    model.save_pretrained(folder)
    return Path(folder)
