"""Shared-vocabulary language model: a causal LM fine-tuned on fMRI tokens to answer clinical
questions (age, sex, diagnosis, any phenotype) by scoring closed answer sets."""

from fmrilm.lm.config import LMConfig
from fmrilm.lm.layouts import LAYOUTS, TokenLayout, compute_budget
from fmrilm.lm.model import PROMPT_TEMPLATE, FMRILanguageModel
from fmrilm.lm.tasks import QUESTIONS, TaskSpec, build_tasks
from fmrilm.lm.vocab import (
    DELIMITERS,
    CodebookTokenizer,
    FMRIVocabulary,
    code_token,
    codebook_embeddings,
    codebook_vectors,
    extend_vocabulary,
    load_causal_lm,
)

__all__ = [
    "DELIMITERS",
    "LAYOUTS",
    "PROMPT_TEMPLATE",
    "QUESTIONS",
    "CodebookTokenizer",
    "FMRILanguageModel",
    "FMRIVocabulary",
    "LMConfig",
    "TaskSpec",
    "TokenLayout",
    "build_tasks",
    "code_token",
    "codebook_embeddings",
    "codebook_vectors",
    "compute_budget",
    "extend_vocabulary",
    "load_causal_lm",
]
