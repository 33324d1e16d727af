"""LLaVA-style soft prefix: pooled encoder features -> a few vectors in a causal LM's input space.

A :class:`PrefixProjector` (two-layer MLP, as in LLaVA-1.5) maps one pooled feature vector per
example (an image encoder's, or the fMRI tokenizer's encoder's) to ``n_prefix`` vectors of the
language model's embedding width. :class:`PrefixLM` feeds

``[BOS] [prefix_1 .. prefix_n] [question prompt tokens] [answer tokens] [EOS]``

with the prompt template and closed answer sets of the shared-vocabulary LM
(``fmrilm.lm.PROMPT_TEMPLATE``, ``fmrilm.lm.TaskSpec``), so every arm asks the same question.

to the causal LM through ``inputs_embeds``; the loss covers the answer tokens and the final EOS
only. The LM itself is frozen and adapted with LoRA through peft (or frozen entirely with
``lora=None``); the projector is trained.

Answers are *scored*, never parsed: :meth:`PrefixLM.predict_task` computes the log-probability
of every answer of the task's closed set (for age, every integer age of the training range)
followed by EOS, renormalises over the set and returns the expectation (regression) or the most
probable label. No answer can be unparseable; ``parse_failures`` counts non-finite scores (0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat
from torch import nn

from fmrilm.lm.summary import PrefixProjector

__all__ = [
    "DEFAULT_PROMPT",
    "LoraSettings",
    "NumericTask",
    "default_prompt_template",
    "task_predictions",
    "PrefixProjector",
    "PrefixLM",
    "apply_lora",
    "format_number",
    "trainable_parameters",
    "train_prefix_lm",
]

#: Question template used when :mod:`fmrilm.lm` cannot be imported; the study otherwise takes
#: ``fmrilm.lm.PROMPT_TEMPLATE`` so that every arm asks the same question the same way.
DEFAULT_PROMPT = "\nQuestion: {question}\nAnswer:"


def default_prompt_template() -> str:
    """The shared-vocabulary LM's prompt template (``fmrilm.lm.PROMPT_TEMPLATE``) if available."""
    try:
        from fmrilm.lm.model import PROMPT_TEMPLATE
    except Exception:  # noqa: BLE001 - absent or broken LM stage
        return DEFAULT_PROMPT
    return PROMPT_TEMPLATE


def task_predictions(logp: torch.Tensor | np.ndarray, task) -> dict[str, np.ndarray]:
    """Predictions from answer log-likelihoods over a task's closed answer set.

    Parameters
    ----------
    logp : array (B, n_answers)
        ``log p(answer tokens, EOS | input, question)`` per answer (not renormalised).
    task : fmrilm.lm.TaskSpec or any object with ``kind``, ``answers`` and ``values``

    Returns
    -------
    dict
        ``probs`` (B, n_answers) renormalised over the answers; regression: ``expected`` (B,)
        expectation of ``task.values`` and ``mode`` (B,); classification: ``label`` (B,) the most
        probable answer. ``parse_failures``: rows whose scores were not finite (0 in practice).
    """
    s = torch.as_tensor(np.asarray(logp, dtype=np.float64))
    finite = torch.isfinite(s).all(dim=1)
    probs = torch.softmax(torch.where(torch.isfinite(s), s, torch.zeros_like(s)), dim=-1).numpy()
    out: dict[str, Any] = {"probs": probs, "parse_failures": int((~finite).sum())}
    if task.kind == "regression":
        values = np.asarray(task.values, dtype=float)
        out["expected"] = probs @ values
        out["mode"] = values[probs.argmax(axis=1)]
    else:
        out["label"] = np.asarray(task.answers, dtype=object)[probs.argmax(axis=1)]
    return out


@dataclass
class NumericTask:
    """A minimal numeric task (the shape of ``fmrilm.lm.TaskSpec`` for regression).

    Use ``fmrilm.lm.build_tasks`` on a store; this is for a bare grid of integers.
    """

    name: str
    question: str
    values: list[float]
    kind: str = "regression"
    answers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = [float(v) for v in np.unique(np.rint(np.asarray(self.values, dtype=float)))]
        if len(self.values) < 2:
            raise ValueError("a numeric grid needs at least two values")
        self.answers = [format_number(v) for v in self.values]


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (passed to ``peft.LoraConfig``).

    Attributes
    ----------
    r : int
    alpha : float
    dropout : float
    target_modules : list of str
        Module names adapted (``q_proj``/``v_proj`` fit Llama, Qwen, Gemma, SmolLM; GPT-2 uses
        ``c_attn``).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters; only the adapters are trainable afterwards.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    settings : LoraSettings

    Returns
    -------
    peft.PeftModel
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    return get_peft_model(model, config)


def trainable_parameters(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared tensors counted once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def format_number(value: float) -> str:
    """How a numeric answer is written: the rounded integer, e.g. ``23.6 -> "24"``."""
    return str(int(round(float(value))))


class PrefixLM(nn.Module):
    """A causal LM reading a projected soft prefix, trained on answer tokens only.

    Parameters
    ----------
    lm : transformers.PreTrainedModel
        Any causal LM (``AutoModelForCausalLM``); its weights are frozen.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer; needs an EOS token.
    feature_dim : int
        Width of the pooled features fed to :meth:`forward`.
    n_prefix : int, default=4
    lora : LoraSettings or None, default=None
        LoRA adapters on the LM (the study passes ``LoraSettings(r=8)``); None keeps the LM
        frozen and only the projector trains.
    prompt_template : str, optional
        Must contain ``{question}``; default :func:`default_prompt_template`.
    projector_hidden : int, optional
    """

    def __init__(
        self,
        lm: nn.Module,
        tokenizer,
        feature_dim: int,
        *,
        n_prefix: int = 4,
        lora: LoraSettings | None = None,
        prompt_template: str | None = None,
        projector_hidden: int | None = None,
    ):
        super().__init__()
        prompt_template = prompt_template or default_prompt_template()
        if "{question}" not in prompt_template:
            raise ValueError("prompt_template must contain '{question}'")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; numeric scoring needs one")
        for p in lm.parameters():
            p.requires_grad_(False)
        self.lora_settings = lora
        self.lm = apply_lora(lm, lora) if lora is not None else lm
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        embed_dim = self.lm.get_input_embeddings().weight.shape[1]
        self.projector = PrefixProjector(feature_dim, embed_dim, n_prefix, projector_hidden)
        self.feature_dim, self.n_prefix = feature_dim, n_prefix

    # ------------------------------------------------------------------ sequences

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [] if bos is None else [int(bos)]

    def _assemble(
        self, prefix: torch.Tensor, questions: Sequence[str], answers: Sequence[str] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Build right-padded ``inputs_embeds``, ``attention_mask``, ``labels`` and answer spans."""
        embed = self.lm.get_input_embeddings()
        eos = int(self.tokenizer.eos_token_id)
        bos = self._bos()
        rows, labels, spans = [], [], []
        for i, question in enumerate(questions):
            q = self._ids(self.prompt_template.format(question=question))
            a = [] if answers is None else self._ids(answers[i]) + [eos]
            head = torch.tensor(bos, dtype=torch.long, device=self.device)
            tail = torch.tensor(q + a, dtype=torch.long, device=self.device)
            parts = [embed(head)] if bos else []
            parts += [prefix[i].to(embed.weight.dtype), embed(tail)]
            rows.append(torch.cat(parts))
            start = len(bos) + self.n_prefix + len(q)
            lab = torch.full((rows[-1].shape[0],), -100, dtype=torch.long)
            if a:
                lab[start:] = torch.tensor(a)
            labels.append(lab)
            spans.append((start, start + len(a)))
        length = max(r.shape[0] for r in rows)
        d = rows[0].shape[1]
        inputs = rows[0].new_zeros((len(rows), length, d))
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        lab = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, (r, la) in enumerate(zip(rows, labels, strict=True)):
            inputs[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
            lab[i, : r.shape[0]] = la
        return inputs, mask.to(self.device), lab.to(self.device), spans

    # ------------------------------------------------------------------ training

    def forward(
        self, features: torch.Tensor, questions: Sequence[str], answers: Sequence[str]
    ) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens (and their EOS).

        Parameters
        ----------
        features : torch.Tensor (B, feature_dim)
        questions : sequence of B questions (inserted into ``prompt_template``)
        answers : sequence of B answer strings, each with its leading space (``" 24"``); an EOS
            token is appended.

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        if len(questions) != features.shape[0] or len(answers) != features.shape[0]:
            raise ValueError("features, questions and answers must have the same length")
        prefix = self.projector(features.to(self.device))
        inputs, mask, labels, _ = self._assemble(prefix, questions, answers)
        out = self.lm(inputs_embeds=inputs, attention_mask=mask, labels=labels)
        return out.loss

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def answer_logprobs(
        self,
        features: torch.Tensor,
        questions: Sequence[str],
        candidates: Sequence[str],
        *,
        chunk_size: int = 64,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Log-probability of every candidate answer (its tokens and a final EOS).

        With ``use_cache`` the shared part ``[BOS][prefix][prompt]`` runs once per example and
        its key/value cache is reused by every candidate (examples are grouped by question, so
        the heads of a group have equal lengths and need no padding); otherwise every
        (example, candidate) sequence runs in full. Both give the same scores.

        Parameters
        ----------
        features : torch.Tensor (B, feature_dim)
        questions : sequence of B str
        candidates : sequence of C str
            Answers with their leading space (``" 24"``); EOS is appended to each.
        chunk_size : int, default=64
            Sequences (examples x candidates) per LM forward pass.
        use_cache : bool, default=True

        Returns
        -------
        torch.Tensor
            (B, C) summed log-probabilities.
        """
        if len(questions) != features.shape[0]:
            raise ValueError("features and questions must have the same length")
        if len(candidates) == 0:
            raise ValueError("candidates is empty")
        was_training = self.training
        self.eval()
        try:
            prefix = self.projector(features.to(self.device))
            if use_cache:
                return self._logprobs_cached(prefix, questions, candidates, chunk_size)
            return self._logprobs_full(prefix, questions, candidates, chunk_size)
        finally:
            self.train(was_training)

    def _logprobs_full(self, prefix, questions, candidates, chunk_size) -> torch.Tensor:
        b, c = prefix.shape[0], len(candidates)
        prefix_all = repeat(prefix, "b n d -> (b c) n d", c=c)
        questions_all = [q for q in questions for _ in range(c)]
        answers_all = list(candidates) * b
        scores = torch.empty(b * c)
        for s in range(0, b * c, chunk_size):
            sl = slice(s, s + chunk_size)
            inputs, mask, labels, _ = self._assemble(
                prefix_all[sl], questions_all[sl], answers_all[sl]
            )
            logits = self.lm(inputs_embeds=inputs, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = labels[:, 1:]
            valid = target != -100
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            scores[sl] = (picked * valid).sum(dim=1).cpu()
        return rearrange(scores, "(b c) -> b c", b=b)

    @property
    def _cache_kw(self) -> str:
        """``cache`` (transformers >= 5.x) or ``past_key_values``, whichever forward takes."""
        import inspect

        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return (
            "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        )

    def _logprobs_cached(self, prefix, questions, candidates, chunk_size) -> torch.Tensor:
        import copy

        eos = int(self.tokenizer.eos_token_id)
        cand = [self._ids(a) + [eos] for a in candidates]
        c, lc = len(cand), max(len(x) for x in cand)
        pad = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos)
        ids = torch.full((c, lc), pad, dtype=torch.long, device=self.device)
        valid = torch.zeros((c, lc), dtype=torch.bool, device=self.device)
        for j, x in enumerate(cand):
            ids[j, : len(x)] = torch.tensor(x)
            valid[j, : len(x)] = True
        out = torch.empty(prefix.shape[0], c)
        for question in dict.fromkeys(questions):
            rows = [i for i, q in enumerate(questions) if q == question]
            head, mask, _, _ = self._assemble(prefix[rows], [question] * len(rows), None)
            res = self.lm(inputs_embeds=head, attention_mask=mask, use_cache=True)
            cache = getattr(res, "cache", None) or res.past_key_values
            first = torch.log_softmax(res.logits[:, -1].float(), dim=-1)  # (b, V)
            scores = first[:, ids[:, 0]]  # (b, C): log p(first answer token)
            b, h = len(rows), head.shape[1]
            if lc > 1:
                k_max = max(1, chunk_size // b)
                rest = []
                for s in range(0, c, k_max):
                    chunk, ok = ids[s : s + k_max], valid[s : s + k_max]
                    k = chunk.shape[0]
                    cache_k = copy.deepcopy(cache)
                    if k > 1:
                        cache_k.batch_repeat_interleave(k)
                    inp = chunk.repeat(b, 1)  # row i*k + m is candidate m of example i
                    att = torch.ones((b * k, h + lc - 1), dtype=torch.long, device=self.device)
                    logits = self.lm(
                        input_ids=inp[:, :-1], attention_mask=att, **{self._cache_kw: cache_k}
                    ).logits.float()
                    lp = torch.log_softmax(logits, dim=-1)
                    tok = lp.gather(-1, inp[:, 1:, None])[..., 0] * ok.repeat(b, 1)[:, 1:]
                    rest.append(rearrange(tok.sum(1), "(b k) -> b k", b=b))
                scores = scores + torch.cat(rest, dim=1)
            out[rows] = scores.cpu()
        return out

    def predict_task(
        self, features: torch.Tensor, task, *, chunk_size: int = 64
    ) -> dict[str, np.ndarray]:
        """Answer ``task.question`` for every example by scoring its closed answer set.

        Parameters
        ----------
        features : torch.Tensor (B, feature_dim)
        task : fmrilm.lm.TaskSpec or NumericTask
        chunk_size : int, default=64

        Returns
        -------
        dict
            See :func:`task_predictions` (``expected`` for regression, ``label`` otherwise),
            plus ``logp`` (B, n_answers).
        """
        cands = [" " + a for a in task.answers]
        logp = self.answer_logprobs(
            features, [task.question] * features.shape[0], cands, chunk_size=chunk_size
        )
        return {**task_predictions(logp, task), "logp": logp.numpy()}

    def predict_numeric(
        self,
        features: torch.Tensor,
        question: str,
        grid: Sequence[float],
        *,
        chunk_size: int = 64,
    ) -> dict[str, np.ndarray]:
        """Expected value over a grid of integers, from renormalised answer probabilities.

        Parameters
        ----------
        features : torch.Tensor (B, feature_dim)
        question : str
        grid : sequence of numbers
            Candidate answers (rounded to integers, duplicates dropped).

        Returns
        -------
        dict
            ``expected`` (B,), ``mode`` (B,), ``probs`` (B, G), ``grid`` (G,), ``logp``.
        """
        task = NumericTask("numeric", question, list(grid))
        return {
            **self.predict_task(features, task, chunk_size=chunk_size),
            "grid": np.asarray(task.values),
        }


def train_prefix_lm(
    model: PrefixLM,
    features: torch.Tensor,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    steps: int = 100,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    max_seconds: float | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train the projector and the LoRA adapters with AdamW on random minibatches.

    Parameters
    ----------
    model : PrefixLM
    features : torch.Tensor (N, feature_dim)
        Precomputed pooled features of the training examples (frozen encoder).
    questions, answers : sequences of N str
        Answers with their leading space (``" 24"``).
    steps : int, default=100
    batch_size : int, default=8
    lr, weight_decay : float
    max_seconds : float, optional
        Stop early after this much wall time (the budget of an arm).
    seed : int, default=0
    progress : callable(step, loss), optional
        Called after every step.

    Returns
    -------
    dict
        ``steps`` done, ``losses`` (list), ``seconds``, ``stopped_by_budget`` (bool).
    """
    n = features.shape[0]
    if n == 0 or len(questions) != n or len(answers) != n:
        raise ValueError("need N >= 1 examples with as many questions and answers as features")
    params = [p for p in model.parameters() if p.requires_grad]
    return train_steps(
        model,
        params,
        n,
        lambda idx: model(features[idx], [questions[i] for i in idx], [answers[i] for i in idx]),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        max_seconds=max_seconds,
        seed=seed,
        progress=progress,
    )


def train_steps(
    model: nn.Module,
    params: list[torch.Tensor],
    n: int,
    batch_loss: Callable[[list[int]], torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    max_seconds: float | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> dict:
    """AdamW on ``params`` over random batches of example indices in ``range(n)``.

    ``batch_loss(indices)`` returns the loss of one batch. Gradients are clipped at norm 1; a
    non-finite loss stops with an error naming the step; ``max_seconds`` stops early.

    Returns
    -------
    dict
        ``steps`` done, ``losses`` (list), ``seconds``, ``stopped_by_budget`` (bool).
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses, start, stopped, step = [], time.perf_counter(), False, 0
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen).tolist()
        loss = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite training loss at step {step}")
        losses.append(value)
        if progress is not None:
            progress(step, value)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            stopped = step < steps
            break
    model.eval()
    return {
        "steps": step,
        "losses": losses,
        "seconds": time.perf_counter() - start,
        "stopped_by_budget": stopped,
    }
