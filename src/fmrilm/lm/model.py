"""The fMRI language model: a causal LM that reads fMRI code tokens and answers questions.

Read top to bottom:

1. **Build** (:meth:`FMRILanguageModel.build`): load any causal LM (hub id, folder, GGUF, the
   ``smollm2`` alias), add ``<fmri_k>`` and delimiter tokens, initialise their rows from the fMRI
   tokenizer's codebook projected into the LM's embedding space (or randomly, the ablation), then
   wrap it in LoRA (``peft``; the new token rows trainable through ``trainable_token_indices``,
   every old row frozen) or leave every weight trainable (full fine-tuning).
2. **Sequences** (:meth:`~FMRILanguageModel.example`): ``[bos] <fmri> ... </fmri>`` (the window's
   codes in the chosen layout; the ``summary`` layout's positions get their input vectors from
   :class:`~fmrilm.lm.summary.CodeSummary`, which pools every code token's embedding row per
   ROI) then, for each question, ``"\\nQuestion: ...\\nAnswer:"`` and the
   answer ``" text" <eos>``. Labels are -100 everywhere except the answer tokens and their eos,
   so the loss is on answers only.
3. **Scoring** (:meth:`~FMRILanguageModel.score`): the log-likelihood of every allowed answer
   (tokens + eos) after the prompt. The prompt runs once, its key/value cache is repeated for
   the candidates. Classification reads probabilities from these; regression takes the
   expectation over the numeric grid. Nothing is generated or parsed.
4. **Persistence**: ``save_pretrained`` writes the config (tasks included), the extended
   tokenizer, the trainable weights (LoRA + new rows) or the full model, and a copy of the fMRI
   tokenizer; ``from_pretrained`` rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fmrilm.lm.config import LMConfig
from fmrilm.lm.layouts import TokenLayout
from fmrilm.lm.summary import CodeSummary, decoded_connectivity, valid_patches
from fmrilm.lm.tasks import TaskSpec
from fmrilm.lm.vocab import (
    FMRIVocabulary,
    codebook_embeddings,
    codebook_vectors,
    extend_vocabulary,
    load_causal_lm,
)

__all__ = ["FMRILanguageModel", "PROMPT_TEMPLATE"]

PROMPT_TEMPLATE = "\nQuestion: {question}\nAnswer:"
FORMAT = "fmrilm-lm"
FORMAT_VERSION = 1
# candidates x answer tokens x vocabulary floats held at once while scoring
_SCORE_CHUNK = 40_000_000


def _layout(config: LMConfig) -> TokenLayout:
    """The token layout a model's config describes."""
    return TokenLayout(
        config.layout,
        config.n_rois,
        config.n_patches,
        rois=tuple(config.layout_rois) if config.layout_rois else None,
        patch_stride=config.patch_stride,
        compact_rois=config.compact_rois,
        summary_tokens=config.summary_tokens,
    )


class FMRILanguageModel(nn.Module):
    """A causal LM with fMRI tokens, LoRA or fully fine-tuned, answering clinical questions.

    Parameters
    ----------
    config : LMConfig
    lm : transformers.PreTrainedModel or peft.PeftModel
        The (wrapped) causal LM with the extended vocabulary.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its extended tokenizer.
    vocab : FMRIVocabulary
    fmri_tokenizer : object, optional
        Turns windows into codes (``encode``); needed only to answer from raw windows.
    """

    def __init__(self, config: LMConfig, lm, tokenizer, vocab: FMRIVocabulary, fmri_tokenizer=None):
        super().__init__()
        config.validate()
        self.config = config
        self.lm = lm
        self.tokenizer = tokenizer
        self.vocab = vocab
        # not a registered submodule: the LM's parameters, checkpoints and optimizer exclude it
        object.__setattr__(self, "fmri_tokenizer", fmri_tokenizer)
        self.layout = _layout(config)
        self.summary: CodeSummary | None = None
        if config.layout == "summary":
            width = int(self.base_model.get_input_embeddings().weight.shape[1])
            with torch.random.fork_rng(devices=[]):  # the same seed, the same initial summary
                torch.manual_seed(config.seed)
                self.summary = CodeSummary(
                    config.n_rois,
                    width,
                    config.summary_tokens,
                    config.summary_roi_dim,
                    config.summary_roi_dropout,
                    config.summary_connectivity_dim,
                    config.summary_connectivity_components,
                )
        self.tasks = [TaskSpec.from_dict(t) for t in config.tasks]
        self._text_cache: dict[Any, Any] = {}  # text ids and answer tries

    # ====================================================================== 1. build
    @classmethod
    def build(
        cls,
        config: LMConfig,
        fmri_tokenizer=None,
        *,
        lm=None,
        tokenizer=None,
        code_vectors: torch.Tensor | None = None,
    ) -> FMRILanguageModel:
        """Load the base LM, extend its vocabulary, initialise the new rows, add LoRA.

        Parameters
        ----------
        config : LMConfig
        fmri_tokenizer : object, optional
            Source of the codebook vectors for ``init="codebook"`` (see
            :func:`fmrilm.lm.vocab.codebook_embeddings`) and of ``encode``.
        lm, tokenizer : optional
            An already loaded base LM and tokenizer (default: ``config.base_model``).
        code_vectors : Tensor, optional
            The codebook (overrides ``fmri_tokenizer``'s): ``(K, d_lm)`` in the LM space for
            ``init="codebook"``, ``(K, d_code)`` in the code space for ``init="subspace"``.
        """
        config.validate()
        if lm is None or tokenizer is None:
            lm, tokenizer = load_causal_lm(config.base_model, config.gguf_file)
        if config.init != "random" and code_vectors is None:
            if fmri_tokenizer is None:
                raise ValueError(f"init={config.init!r} needs an fMRI tokenizer (or code_vectors)")
            if config.init == "subspace":
                code_vectors = codebook_vectors(fmri_tokenizer)
            else:
                code_vectors = codebook_embeddings(fmri_tokenizer)
        vocab = extend_vocabulary(
            lm,
            tokenizer,
            config.codebook_size,
            init=config.init,
            code_vectors=code_vectors,
            seed=config.seed,
        )
        lm = cls._wrap(lm, config, vocab)
        return cls(config, lm, tokenizer, vocab, fmri_tokenizer)

    @staticmethod
    def _wrap(lm, config: LMConfig, vocab: FMRIVocabulary):
        """LoRA with trainable new token rows, or every parameter trainable."""
        if config.finetune == "full":
            for p in lm.parameters():
                p.requires_grad_(True)
            return lm
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
        targets = [t for t in config.lora_target_modules if t in names] or None
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
            trainable_token_indices=vocab.new_ids,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(lm, lora)

    @property
    def base_model(self):
        """The underlying transformers model (below the peft wrapper)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def weights(self) -> dict[str, nn.Parameter]:
        """Every weight by the name ``trainable.safetensors`` uses: the LM's, then ``summary.*``."""
        out = dict(self.lm.named_parameters())
        if self.summary is not None:
            out.update({f"summary.{n}": p for n, p in self.summary.named_parameters()})
        return out

    def set_window_length(self, window_length: int) -> FMRILanguageModel:
        """Answer from windows of ``window_length`` points from now on (summary layout only).

        The summary pools each ROI over the window's patches and correlates the decoded signal
        over its time points, so it reads any number of patches: a model trained on the
        tokenizer's windows can answer from whole scans (``window_length`` 320 on ABIDE). The
        stride and the shortest window stay as they were; the weights do not change.
        """
        cfg = self.config
        patch = cfg.patch_length
        if self.summary is None:
            raise ValueError(
                f"only the summary layout reads windows of another length, not {cfg.layout!r}"
            )
        if window_length < patch or window_length % patch:
            raise ValueError(
                f"window_length must be a multiple of the {patch}-point patch, got {window_length}"
            )
        if cfg.min_window_length is not None and window_length < cfg.min_window_length:
            raise ValueError(
                f"window_length {window_length} is below min_window_length={cfg.min_window_length}"
            )
        cfg.window_length, cfg.n_patches = int(window_length), int(window_length) // patch
        self.layout = _layout(cfg)
        return self

    @torch.no_grad()
    def fit_summary_components(self, codes: torch.Tensor, batch_size: int = 64) -> None:
        """Fit the summary's connectivity components on training windows' ``codes`` (N, R, P).

        Each window's connectivity is that of the signal the fMRI tokenizer decodes from its
        codes, as when answering (:func:`~fmrilm.lm.summary.decoded_connectivity`).
        """
        if self.summary is None or not self.summary.connectivity_components:
            raise ValueError("the model has no summary connectivity components to fit")
        if self.fmri_tokenizer is None:
            raise ValueError("fitting the connectivity components needs the fMRI tokenizer")
        codes = torch.as_tensor(codes).long()
        z = torch.cat(
            [decoded_connectivity(self.fmri_tokenizer, c) for c in codes.split(batch_size)]
        )
        self.summary.fit_connectivity_components(z)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable weights by name: the LM's (LoRA + new rows, or all) and ``summary.*``."""
        return {n: p for n, p in self.weights().items() if p.requires_grad}

    def n_parameters(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        return {
            "total": total,
            "trainable": sum(p.numel() for p in self.trainable_parameters().values()),
        }

    def describe(self) -> dict[str, Any]:
        """What an evaluation records about the model."""
        return {
            "layout": self.layout.describe(),
            "init": self.config.init,
            "finetune": self.config.finetune,
            "base_model": self.config.base_model,
            "parameters": self.n_parameters(),
        }

    @property
    def train_summary(self) -> dict[str, Any] | None:
        """The training record saved with the model (steps, seconds, throughput), if any."""
        return self.config.extra.get("train_summary")

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"this model has no task {name!r}; tasks: {[t.name for t in self.tasks]}")

    # ================================================================== 2. sequences
    def _text_ids(self, text: str) -> list[int]:
        if text not in self._text_cache:
            self._text_cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._text_cache[text]

    @property
    def _eos(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the LM's tokenizer has no eos token; answers need an end marker")
        return int(eos)

    def prompt_ids(self, window_ids: torch.Tensor, task: TaskSpec) -> list[int]:
        """``[bos] window tokens question`` as a list of ids."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        q = self._text_ids(PROMPT_TEMPLATE.format(question=task.question))
        return bos + window_ids.tolist() + q

    def answer_ids(self, task: TaskSpec, index: int) -> list[int]:
        """Tokens of answer ``index`` of ``task``: ``" text"`` then eos."""
        return self._text_ids(" " + task.answers[index]) + [self._eos]

    def example(
        self, codes: torch.Tensor, qa: list[tuple[TaskSpec, int]]
    ) -> tuple[list[int], list[int]]:
        """Input ids and labels of one training sequence.

        Parameters
        ----------
        codes : LongTensor of shape (R, P)
        qa : list of (TaskSpec, answer index)
            Questions asked after the window, in order.

        Returns
        -------
        input_ids, labels : list of int
            ``labels`` is -100 except on answer tokens (and their eos).
        """
        if not qa:
            raise ValueError("an example needs at least one question")
        ids = self.prompt_ids(self.layout.token_ids(codes, self.vocab), qa[0][0])
        labels = [-100] * len(ids)
        for i, (task, a) in enumerate(qa):
            if i > 0:
                q = self._text_ids(PROMPT_TEMPLATE.format(question=task.question))
                ids += q
                labels += [-100] * len(q)
            ans = self.answer_ids(task, a)
            ids += ans
            labels += ans
        return ids, labels

    def collate(self, examples: list[tuple]) -> dict[str, torch.Tensor]:
        """Right-pad examples into ``input_ids``, ``attention_mask`` and ``labels``.

        Examples are ``(input_ids, labels)`` or ``(input_ids, labels, codes)``; the codes (each
        ``(R, P)``) are stacked into ``codes``, which the summary layout needs.
        """
        n = max(len(e[0]) for e in examples)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._eos
        input_ids = torch.full((len(examples), n), int(pad), dtype=torch.long)
        labels = torch.full((len(examples), n), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for i, (ids, lab, *_) in enumerate(examples):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        if all(len(e) > 2 for e in examples):
            batch["codes"] = torch.stack([torch.as_tensor(e[2]) for e in examples])
        return batch

    def lm_inputs(self, input_ids: torch.Tensor, codes: torch.Tensor | None = None) -> dict:
        """What the LM reads: ``input_ids``, or ``inputs_embeds`` with the summary written in.

        Parameters
        ----------
        input_ids : LongTensor of shape (B, T)
        codes : LongTensor of shape (B, R, P), optional
            The windows' codes; required by the summary layout, ignored by the others.
        """
        if self.summary is None:
            return {"input_ids": input_ids}
        if codes is None:
            raise ValueError("the summary layout needs the windows' codes (codes=...)")
        slots = input_ids == self.vocab.roi_sep_id
        n = self.layout.summary_tokens
        if not bool((slots.sum(1) == n).all()):
            raise ValueError(f"each sequence must hold exactly {n} summary positions")
        embed = self.lm.get_input_embeddings()
        # the code rows, centred on their mean: the rows share a large common part (with
        # init="subspace", the text rows' mean), which would otherwise dominate the pooled
        # features and the projector's LayerNorm
        table = embed(self.vocab.code_ids.to(input_ids.device))  # (K, D)
        table = table - table.mean(0)
        codes = codes.long().to(input_ids.device)
        connectivity = None
        if self.summary.reads_connectivity:
            if self.fmri_tokenizer is None:
                raise ValueError(
                    "the summary's connectivity branches need the fMRI tokenizer (to decode "
                    "the codes)"
                )
            connectivity = decoded_connectivity(self.fmri_tokenizer, codes)
        # a short window's missing patches (PAD_CODE) are read as row 0 and left out of the mean
        n_patches = valid_patches(codes)
        summary = self.summary(table[codes.clamp_min(0)], connectivity, n_patches)  # (B, n, D)
        inputs = embed(input_ids)
        return {"inputs_embeds": inputs.masked_scatter(slots[..., None], summary.to(inputs.dtype))}

    def forward(self, input_ids, attention_mask=None, labels=None, codes=None):
        """Loss on the answer tokens (``labels`` != -100), or the LM output without labels.

        The output head (``d x vocabulary``, a fifth of SmolLM2's forward cost) runs only at the
        positions that predict an answer token (``logits_to_keep``), when the model supports it.
        Returns an object with ``loss`` (mean cross-entropy over answer tokens) and ``logits``
        (at the kept positions). ``codes`` (B, R, P) are needed by the summary layout.
        """
        inputs = self.lm_inputs(input_ids, codes)
        if labels is None or not self._supports("logits_to_keep"):
            return self.lm(**inputs, attention_mask=attention_mask, labels=labels)
        target = labels[:, 1:]
        keep = torch.nonzero((target != -100).any(0)).flatten()
        if len(keep) == 0:
            raise ValueError("no answer token in the batch (every label is -100)")
        out = self.lm(**inputs, attention_mask=attention_mask, logits_to_keep=keep)
        logits = out.logits.float()
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target[:, keep].reshape(-1), ignore_index=-100
        )
        out.loss = loss
        return out

    def _supports(self, name: str) -> bool:
        import inspect

        return name in inspect.signature(self.base_model.forward).parameters

    # ==================================================================== 3. scoring
    @torch.no_grad()
    def score(
        self, codes: torch.Tensor, task: TaskSpec | str, batch_size: int = 8, method: str = "auto"
    ) -> torch.Tensor:
        """Log-likelihood of every allowed answer of ``task`` for each window.

        Parameters
        ----------
        codes : LongTensor of shape (B, R, P)
        task : TaskSpec or str
        batch_size : int
            Windows per forward pass.
        method : {"auto", "packed", "cache"}
            See :meth:`score_tasks`.

        Returns
        -------
        Tensor of shape (B, n_answers), float32
            ``log p(answer tokens, eos | window, question)`` (not renormalised).
        """
        task = self.task(task) if isinstance(task, str) else task
        return self.score_tasks(codes, [task], batch_size=batch_size, method=method)[task.name]

    @torch.no_grad()
    def score_tasks(
        self,
        codes: torch.Tensor,
        tasks: list[TaskSpec | str] | None = None,
        batch_size: int = 8,
        method: str = "auto",
    ) -> dict[str, torch.Tensor]:
        """Answer log-likelihoods of several tasks at once: ``{name: (B, n_answers)}``.

        ``method="packed"`` runs one forward pass per window batch over one sequence: the
        window, then for each task its question followed by the prefix tree (trie) of all its
        answers. A 4-D attention mask lets every question see only the window, and every trie
        node only the window, its question and its ancestors, so the window is read once for all
        tasks and shared answer prefixes (the "2" of 20..29) are computed once.
        ``method="cache"`` repeats each prompt's key/value cache for every answer (any model).
        ``method="auto"`` checks once per model that both agree, then uses ``packed``.
        """
        tasks = [self.task(t) if isinstance(t, str) else t for t in (tasks or self.tasks)]
        if len(codes) == 0:
            return {t.name: torch.zeros(0, len(t.answers)) for t in tasks}
        # eval mode for every part that reads the window (LM dropout, the summary's ROI dropout)
        was = self.training
        self.eval()
        try:
            if method == "auto":
                method = self._check_packed(codes[:1], tasks)
            parts: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
            for i in range(0, len(codes), batch_size):
                c = codes[i : i + batch_size]
                if method == "packed":
                    res = self._score_packed(c, tasks)
                else:
                    res = {t.name: self._score_cached(c, t) for t in tasks}
                for k, v in res.items():
                    parts[k].append(v)
        finally:
            self.train(was)
        return {
            t.name: torch.cat(parts[t.name]) if parts[t.name] else torch.zeros(0, len(t.answers))
            for t in tasks
        }

    def _check_packed(self, codes: torch.Tensor, tasks: list[TaskSpec]) -> str:
        if getattr(self, "_packed_ok", None) is None:
            # a few answers per task exercise the same masks at a fraction of the cost
            tasks = [_answer_subset(t) for t in tasks]
            # outside the try: an error here is the input's or the model's, not the masks'
            cached = {t.name: self._score_cached(codes, t) for t in tasks}
            try:
                a = self._score_packed(codes, tasks)
                ok = all(
                    torch.allclose(a[t.name], cached[t.name], atol=1e-3, rtol=1e-4) for t in tasks
                )
                reason = "packed and cached log-likelihoods differ"
            except Exception as e:  # noqa: BLE001 - any model that rejects 4-D masks
                ok, reason = False, f"{type(e).__name__}: {e}"
            if not ok:
                import warnings

                warnings.warn(
                    f"answers are scored with repeated key/value caches (slower): this LM "
                    f"does not support packed scoring with 4-D attention masks ({reason})",
                    stacklevel=3,
                )
            object.__setattr__(self, "_packed_ok", ok)
        return "packed" if self._packed_ok else "cache"

    def _answer_trie(self, task: TaskSpec) -> dict:
        """Prefix tree of the answers' tokens: nodes, their mask and the gather plan."""
        key = ("trie", task.name, tuple(task.answers))
        if key in self._text_cache:
            return self._text_cache[key]
        cands = [self.answer_ids(task, j) for j in range(len(task.answers))]
        nodes: dict[tuple, int] = {}
        tok, depth, parent = [], [], []
        for c in cands:
            for i in range(1, len(c)):
                pre = tuple(c[:i])
                if pre not in nodes:
                    nodes[pre] = len(tok)
                    tok.append(c[i - 1])
                    depth.append(i - 1)
                    parent.append(nodes.get(pre[:-1], -1))
        n = len(tok)
        anc = torch.zeros(n, n, dtype=torch.bool)
        for k in range(n):
            j = k
            while j != -1:
                anc[k, j] = True
                j = parent[j]
        rows, toks, owner = [], [], []
        for j, c in enumerate(cands):
            for i in range(len(c)):
                rows.append(0 if i == 0 else 1 + nodes[tuple(c[:i])])
                toks.append(c[i])
                owner.append(j)
        plan = {
            "tokens": torch.tensor(tok, dtype=torch.long),
            "depth": torch.tensor(depth, dtype=torch.long),
            "ancestors": anc,
            "rows": torch.tensor(rows, dtype=torch.long),
            "targets": torch.tensor(toks, dtype=torch.long),
            "owner": torch.tensor(owner, dtype=torch.long),
            "n_answers": len(cands),
        }
        self._text_cache[key] = plan
        return plan

    def _score_packed(self, codes: torch.Tensor, tasks: list[TaskSpec]) -> dict[str, torch.Tensor]:
        device = next(self.lm.parameters()).device
        window_ids = self.layout.token_ids(codes.to(device), self.vocab)
        b = window_ids.shape[0]
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        prefix = torch.cat(
            [torch.tensor(bos, dtype=torch.long, device=device).expand(b, len(bos)), window_ids], 1
        )
        t0 = prefix.shape[1]
        pieces, pos, blocks, keep = [prefix], [torch.arange(t0)], [], []
        cur = t0
        for task in tasks:
            q = torch.tensor(self._text_ids(PROMPT_TEMPLATE.format(question=task.question)))
            plan = self._answer_trie(task)
            lq, n = len(q), len(plan["tokens"])
            pieces += [q.to(device).expand(b, lq), plan["tokens"].to(device).expand(b, n)]
            pos += [t0 + torch.arange(lq), t0 + lq + plan["depth"]]
            blocks.append((cur, lq, n, plan))
            keep += list(range(cur + lq - 1, cur + lq + n))  # question end, then the nodes
            cur += lq + n
        mask = torch.zeros(cur, cur, dtype=torch.bool)
        mask[:t0, :t0] = torch.tril(torch.ones(t0, t0, dtype=torch.bool))
        for s, lq, n, plan in blocks:
            mask[s : s + lq + n, :t0] = True
            mask[s : s + lq, s : s + lq] = torch.tril(torch.ones(lq, lq, dtype=torch.bool))
            mask[s + lq : s + lq + n, s : s + lq] = True
            mask[s + lq : s + lq + n, s + lq : s + lq + n] = plan["ancestors"]
        out = self.lm(
            **self.lm_inputs(torch.cat(pieces, 1), codes),
            attention_mask=mask.to(device)[None, None].expand(b, 1, cur, cur),
            position_ids=torch.cat(pos).to(device).expand(b, cur),
            logits_to_keep=torch.tensor(keep, device=device),
        )
        lp = F.log_softmax(out.logits.float(), dim=-1)  # (B, kept, V)
        results, offset = {}, 0
        for (_, _, n, plan), task in zip(blocks, tasks, strict=True):
            vals = lp[:, offset + plan["rows"].to(device), plan["targets"].to(device)]
            scores = torch.zeros(b, plan["n_answers"], device=device, dtype=vals.dtype)
            scores.index_add_(1, plan["owner"].to(device), vals)
            results[task.name] = scores.cpu()
            offset += 1 + n
        return results

    def _score_cached(self, codes: torch.Tensor, task: TaskSpec) -> torch.Tensor:
        device = next(self.lm.parameters()).device
        window_ids = self.layout.token_ids(codes.to(device), self.vocab)
        prompts = torch.tensor([self.prompt_ids(w, task) for w in window_ids.cpu()], device=device)
        b = prompts.shape[0]
        cands = [self.answer_ids(task, j) for j in range(len(task.answers))]
        m, lc = len(cands), max(len(c) for c in cands)
        pad = int(
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._eos
        )
        cand = torch.full((m, lc), pad, dtype=torch.long, device=device)
        valid = torch.zeros((m, lc), dtype=torch.bool, device=device)
        for j, c in enumerate(cands):
            cand[j, : len(c)] = torch.tensor(c)
            valid[j, : len(c)] = True
        out = self.lm(**self.lm_inputs(prompts, codes), use_cache=True)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
        scores = first[:, cand[:, 0]]  # (B, m): log p(first answer token)
        if lc > 1:
            # right-padded candidates never see their padding (causal), so no mask is needed
            chunk = max(1, _SCORE_CHUNK // max(1, b * lc * first.shape[-1]))
            rest = []
            for s in range(0, m, chunk):
                c = cand[s : s + chunk]
                cache_k = _repeat_cache(cache, len(c))
                logits = self.lm(
                    input_ids=c.repeat(b, 1)[:, :-1], use_cache=True, **{self._cache_kw: cache_k}
                ).logits.float()
                lp = F.log_softmax(logits, dim=-1)  # (B*k, lc-1, V)
                tok = torch.gather(lp, 2, c.repeat(b, 1)[:, 1:, None])[..., 0]
                tok = tok * valid[s : s + chunk, 1:].repeat(b, 1)
                rest.append(tok.sum(1).reshape(b, len(c)))
            scores = scores + torch.cat(rest, dim=1)
        return scores.float().cpu()

    @property
    def _cache_kw(self) -> str:
        import inspect

        params = inspect.signature(self.base_model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @staticmethod
    def answer_distribution(scores: torch.Tensor) -> torch.Tensor:
        """Probabilities over the answer set, per window: softmax of the log-likelihoods."""
        return torch.softmax(scores.double(), dim=-1).float()

    def aggregate(self, scores: torch.Tensor, task: TaskSpec | str) -> dict[str, Any]:
        """Answer for a scan from its windows' answer log-likelihoods ``(W, n_answers)``.

        Classification: the per-window log-probabilities (renormalised over the answers) are
        summed over windows, then renormalised: ``probabilities`` per label and ``answer``.
        Regression: the mean over windows of each window's expectation over the grid
        (``value``), the mixture of the windows' grid distributions for a 90% interval
        (``interval``). Windows with non-finite scores are dropped and counted
        (``n_failed_windows``); ``parse_failure`` is True when no window is left.
        """
        task = self.task(task) if isinstance(task, str) else task
        finite = torch.isfinite(scores).all(dim=1)
        s = scores[finite].double()
        out: dict[str, Any] = {
            "task": task.name,
            "n_windows": int(len(scores)),
            "n_failed_windows": int((~finite).sum()),
            "parse_failure": bool(len(s) == 0),
        }
        if len(s) == 0:
            return out
        logp = torch.log_softmax(s, dim=-1)
        if task.kind == "classification":
            total = torch.log_softmax(logp.sum(0), dim=-1)
            probs = total.exp()
            out["probabilities"] = {a: float(p) for a, p in zip(task.answers, probs, strict=True)}
            out["answer"] = task.answers[int(probs.argmax())]
            out["probability"] = float(probs.max())
            return out
        grid = torch.tensor(task.values, dtype=torch.float64)
        p = logp.exp()
        per_window = (p * grid).sum(1)
        mix = p.mean(0)
        cdf = torch.cumsum(mix, 0)
        lo = grid[
            int(
                torch.searchsorted(cdf, torch.tensor(0.05, dtype=torch.float64)).clamp_max(
                    len(grid) - 1
                )
            )
        ]
        hi = grid[
            int(
                torch.searchsorted(cdf, torch.tensor(0.95, dtype=torch.float64)).clamp_max(
                    len(grid) - 1
                )
            )
        ]
        value = float(per_window.mean())
        out["value"] = value
        out["answer"] = f"{value:.1f}"
        out["interval"] = [float(lo), float(hi)]
        out["window_values"] = per_window.tolist()
        if not (grid.min() - 1e-6 <= value <= grid.max() + 1e-6):
            out["parse_failure"] = True  # cannot happen: an expectation stays inside the grid
        return out

    # ================================================================ 4. persistence
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model to ``folder``.

        Files: ``lm_config.json`` (:class:`LMConfig`, tasks included), ``tokenizer/`` (the
        extended text tokenizer), ``trainable.safetensors`` (LoRA + new token rows) or
        ``model/`` (full fine-tuning; the summary layout's weights then go to
        ``summary.safetensors``), and ``fmri_tokenizer/`` when the fMRI tokenizer can save itself.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        cfg["tasks"] = [t.to_dict() for t in self.tasks]
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg}
        (folder / "lm_config.json").write_text(json.dumps(meta, indent=2, default=str))
        self.tokenizer.save_pretrained(folder / "tokenizer")
        if self.config.finetune == "full":
            self.base_model.save_pretrained(folder / "model")
            if self.summary is not None:
                state = {
                    n: p.detach().contiguous().cpu() for n, p in self.summary.state_dict().items()
                }
                save_file(state, str(folder / "summary.safetensors"))
        else:
            state = {
                n: p.detach().contiguous().cpu() for n, p in self.trainable_parameters().items()
            }
            save_file(state, str(folder / "trainable.safetensors"))
            buffers = self._summary_buffers()
            if buffers:  # fitted statistics (connectivity components), not trained weights
                save_file(buffers, str(folder / "summary_buffers.safetensors"))
        if self.fmri_tokenizer is not None and hasattr(self.fmri_tokenizer, "save_pretrained"):
            self.fmri_tokenizer.save_pretrained(folder / "fmri_tokenizer")
        return folder

    def _summary_buffers(self) -> dict[str, torch.Tensor]:
        if self.summary is None:
            return {}
        return {n: b.detach().contiguous().cpu() for n, b in self.summary.named_buffers()}

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, fmri_tokenizer=None, *, base_lm=None, base_tokenizer=None
    ) -> FMRILanguageModel:
        """Load a model written by :meth:`save_pretrained`.

        Parameters
        ----------
        folder : str or Path
        fmri_tokenizer : object, optional
            Default: ``folder/fmri_tokenizer`` through ``FMRITokenizer.from_pretrained`` when it
            exists.
        base_lm, base_tokenizer : optional
            The base LM already loaded (LoRA models only; default: ``config.base_model``).
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_file = folder / "lm_config.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{folder} is not an fmrilm LM folder (no lm_config.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: unknown format {meta.get('format')!r}")
        config = LMConfig.from_dict(meta["config"])
        if fmri_tokenizer is None and (folder / "fmri_tokenizer").is_dir():
            from fmrilm.tokenizer import FMRITokenizer

            fmri_tokenizer = FMRITokenizer.from_pretrained(folder / "fmri_tokenizer")
        if config.finetune == "full":
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
            lm = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
            vocab = FMRIVocabulary.from_tokenizer(tokenizer, config.codebook_size)
            model = cls(config, lm, tokenizer, vocab, fmri_tokenizer)
            if model.summary is not None:
                model.summary.load_state_dict(load_file(str(folder / "summary.safetensors")))
            return model
        if base_lm is None or base_tokenizer is None:
            base_lm, base_tokenizer = load_causal_lm(config.base_model, config.gguf_file)
        # rows are overwritten by the saved trainable rows: a random init avoids the codebook
        vocab = extend_vocabulary(
            base_lm, base_tokenizer, config.codebook_size, init="random", seed=config.seed
        )
        model = cls(
            config, cls._wrap(base_lm, config, vocab), base_tokenizer, vocab, fmri_tokenizer
        )
        state = load_file(str(folder / "trainable.safetensors"))
        own = model.weights()
        missing = [k for k in state if k not in own]
        if missing:
            raise ValueError(f"{folder}: saved weights do not fit the rebuilt model: {missing[:3]}")
        expected = {n for n, p in own.items() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(
                f"{folder}: trainable weights differ from the rebuilt model's "
                f"({len(state)} saved, {len(expected)} expected)"
            )
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)
        buffers = dict(model.summary.named_buffers()) if model.summary is not None else {}
        if buffers:
            path = folder / "summary_buffers.safetensors"
            if not path.exists():
                raise FileNotFoundError(f"{folder}: the summary's fitted statistics ({path.name})")
            saved = load_file(str(path))
            if set(saved) != set(buffers):
                raise ValueError(
                    f"{path}: holds {sorted(saved)}, the rebuilt summary has {sorted(buffers)}"
                )
            with torch.no_grad():
                for k, v in saved.items():
                    buffers[k].copy_(v)
        return model


def _answer_subset(task: TaskSpec) -> TaskSpec:
    """The task with at most 5 of its answers (first, middle pair with a shared prefix, last)."""
    n = len(task.answers)
    idx = sorted({0, 1, n // 2, min(n - 1, n // 2 + 1), n - 1})
    values = [task.values[i] for i in idx] if task.values else None
    return TaskSpec(task.name, task.kind, task.question, [task.answers[i] for i in idx], values)


def _repeat_cache(cache, k: int):
    """A copy of a key/value cache with every batch entry repeated ``k`` times (interleaved)."""
    import copy

    c = copy.deepcopy(cache)
    if k > 1:
        c.batch_repeat_interleave(k)
    return c
