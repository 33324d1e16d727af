"""The VLM arm: any Hugging Face vision-language model reading rendered fMRI, LoRA-tuned on answers.

The model and its processor load through ``AutoModelForImageTextToText`` / ``AutoProcessor`` from a
hub id or a local folder (LLaVA, Llama 3.2 Vision, Qwen2-VL / Qwen2.5-VL, SmolVLM / Idefics3 ...).
The image goes through the VLM's *own* image processor, pretrained vision tower and projector; LoRA
adapters are put on the attention projections of the language model only (the vision tower is
left as pretrained). On a GPU the model loads in bfloat16 with gradient checkpointing.

A training example is one image plus a chat turn: ``[image] question`` from the user, then the
answer; the loss covers the answer tokens and the closing EOS only. Numeric answers are scored
over a grid of integers (expectation over renormalised probabilities), as in
:mod:`fmrilm.study.prefix`, so there are no unparseable answers.

Real VLM weights cannot be downloaded on an offline machine: :func:`vlm_available` says so, and the
study lists the arm as "not run" with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmrilm.study.prefix import (
    LoraSettings,
    NumericTask,
    default_prompt_template,
    task_predictions,
    train_steps,
)

__all__ = [
    "vlm_available",
    "load_vlm",
    "apply_vlm_lora",
    "vlm_prompt",
    "build_vlm_batch",
    "vlm_answer_logprobs",
    "vlm_predict_task",
    "vlm_predict_numeric",
    "train_vlm",
]

# Names under which VLMs keep their language model (LLaVA/Qwen2-VL/Mllama: language_model;
# Idefics3/SmolVLM: text_model).
_LM_SCOPES = ("language_model", "text_model")


def vlm_available(model: str | Path) -> tuple[bool, str]:
    """Whether a VLM's files can be loaded here without a network.

    Parameters
    ----------
    model : str or Path
        Local folder or hub id.

    Returns
    -------
    (bool, str)
        ``(True, where)`` or ``(False, reason)``.
    """
    path = Path(model)
    if path.is_dir():
        if (path / "config.json").is_file():
            return True, str(path)
        return False, f"{path} has no config.json"
    try:
        from huggingface_hub import snapshot_download

        where = snapshot_download(str(model), local_files_only=True)
        return True, where
    except Exception as err:  # noqa: BLE001 - any failure means "not here"
        return False, (
            f"weights of {model!r} are not available offline (not a local folder, not in the "
            f"Hugging Face cache: {type(err).__name__})"
        )


def apply_vlm_lora(
    model: torch.nn.Module, settings: LoraSettings, modules_to_save: Sequence[str] | None = None
) -> torch.nn.Module:
    """LoRA on the language model's ``settings.target_modules`` only (not the vision tower).

    Parameters
    ----------
    model : transformers.PreTrainedModel
    settings : LoraSettings
    modules_to_save : sequence of str, optional
        Module names trained in full besides the adapters (e.g. ``["multi_modal_projector"]``).

    Returns
    -------
    peft.PeftModel
    """
    from peft import LoraConfig, get_peft_model

    targets = "|".join(settings.target_modules)
    scopes = "|".join(_LM_SCOPES)
    regex = rf".*({scopes}).*\.({targets})$"
    if not any(re.fullmatch(regex, name) for name, _ in model.named_modules()):
        raise ValueError(
            f"no module of the language model matches {settings.target_modules}; set "
            "LoraSettings.target_modules for this architecture"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=regex,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        bias="none",
    )
    return get_peft_model(model, config)


def load_vlm(
    model: str | Path,
    *,
    lora: LoraSettings | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    gradient_checkpointing: bool | None = None,
    modules_to_save: Sequence[str] | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Load a VLM and its processor, optionally with LoRA on its language model.

    Parameters
    ----------
    model : str or Path
        Hub id or local folder.
    lora : LoraSettings, optional
        LoRA adapters on the language model; None returns the plain model.
    dtype : torch.dtype, optional
        Default: bfloat16 on CUDA, float32 otherwise.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    gradient_checkpointing : bool, optional
        Default: on with CUDA.
    modules_to_save : sequence of str, optional
        See :func:`apply_vlm_lora`.
    trust_remote_code : bool, default=False

    Returns
    -------
    (model, processor)
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cuda = torch.cuda.is_available()
    device = torch.device(device or ("cuda" if cuda else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if gradient_checkpointing is None:
        gradient_checkpointing = device.type == "cuda"
    processor = AutoProcessor.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    net = AutoModelForImageTextToText.from_pretrained(
        str(model), dtype=dtype, trust_remote_code=trust_remote_code
    ).to(device)
    if gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        net.enable_input_require_grads()
    if lora is not None:
        for p in net.parameters():
            p.requires_grad_(False)
        net = apply_vlm_lora(net, lora, modules_to_save)
    return net, processor


def vlm_prompt(processor, question: str, prompt_template: str | None = None) -> str:
    """The text of one user turn holding an image and a question, ready for the answer.

    Uses the processor's chat template when it has one, else ``"<image>\\n" + prompt``;
    ``prompt_template`` defaults to :func:`fmrilm.study.prefix.default_prompt_template`.
    """
    text = (prompt_template or default_prompt_template()).format(question=question)
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", None) or "<image>"
    return f"{image_token}\n{text}"


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def build_vlm_batch(
    processor,
    images: Sequence[np.ndarray],
    questions: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    prompt_template: str | None = None,
) -> dict[str, torch.Tensor]:
    """Processor inputs for (image, question[, answer]) triples, with answer-only ``labels``.

    Parameters
    ----------
    processor : transformers.ProcessorMixin
    images : sequence of (H, W, 3) uint8 arrays (or PIL images)
    questions : sequence of str
    answers : sequence of str, optional
        Answers (e.g. ``" 24"``); each is followed by the EOS token. Without answers the batch is
        a prompt for scoring or generation and has no ``labels``.
    prompt_template : str

    Returns
    -------
    dict
        The processor's tensors (``input_ids``, ``attention_mask``, ``pixel_values`` ...), right
        padded, plus ``labels`` (-100 everywhere but the answer tokens and EOS) when answers are
        given, and ``answer_spans`` (list of (start, end)).
    """
    if len(images) != len(questions) or (answers is not None and len(answers) != len(images)):
        raise ValueError("images, questions and answers must have the same length")
    tok = _tokenizer(processor)
    eos = tok.eos_token or ""
    prompts = [vlm_prompt(processor, q, prompt_template) for q in questions]
    texts = (
        prompts if answers is None else [p + a + eos for p, a in zip(prompts, answers, strict=True)]
    )
    old_side = tok.padding_side
    tok.padding_side = "right"
    try:
        batch = processor(
            images=[[np.asarray(im)] for im in images],
            text=texts,
            padding=True,
            return_tensors="pt",
        )
    finally:
        tok.padding_side = old_side
    batch = dict(batch)
    if answers is None:
        return batch
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, -100)
    spans = []
    for i, a in enumerate(answers):
        target = tok(a + eos, add_special_tokens=False)["input_ids"]
        end = int(mask[i].sum())
        start = end - len(target)
        if ids[i, start:end].tolist() != list(target):
            raise ValueError(
                f"the answer {a!r} does not tokenize the same alone and after its prompt; "
                "use answers that start with a space"
            )
        labels[i, start:end] = ids[i, start:end]
        spans.append((start, end))
    batch["labels"] = labels
    batch["answer_spans"] = spans
    return batch


def _model_inputs(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict:
    out = {}
    for k, v in batch.items():
        if k == "answer_spans" or not isinstance(v, torch.Tensor):
            continue
        v = v.to(device)
        if v.is_floating_point():
            v = v.to(dtype)
        out[k] = v
    return out


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


@torch.no_grad()
def vlm_answer_logprobs(
    model: torch.nn.Module,
    processor,
    images: Sequence[np.ndarray],
    questions: Sequence[str],
    candidates: Sequence[str],
    *,
    prompt_template: str | None = None,
    chunk_size: int = 16,
) -> torch.Tensor:
    """Summed log-probability of each candidate answer (with EOS), for every image.

    Returns
    -------
    torch.Tensor
        (B, C) float32.
    """
    device = next(model.parameters()).device
    dtype = _float_dtype(model)
    out = torch.empty(len(images), len(candidates))
    model.eval()
    for b, (image, question) in enumerate(zip(images, questions, strict=True)):
        for s in range(0, len(candidates), chunk_size):
            cands = list(candidates[s : s + chunk_size])
            batch = build_vlm_batch(
                processor,
                [image] * len(cands),
                [question] * len(cands),
                cands,
                prompt_template=prompt_template,
            )
            logits = model(**{**_model_inputs(batch, device, dtype), "labels": None}).logits
            logp = torch.log_softmax(logits.float()[:, :-1], dim=-1)
            target = batch["labels"][:, 1:].to(device)
            valid = target != -100
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out[b, s : s + len(cands)] = (picked * valid).sum(dim=1).cpu()
    return out


def vlm_predict_task(
    model: torch.nn.Module,
    processor,
    images: Sequence[np.ndarray],
    task,
    *,
    prompt_template: str | None = None,
    chunk_size: int = 16,
) -> dict[str, np.ndarray]:
    """Answer ``task.question`` about every image by scoring the task's closed answer set.

    Parameters
    ----------
    task : fmrilm.lm.TaskSpec or fmrilm.study.prefix.NumericTask

    Returns
    -------
    dict
        See :func:`fmrilm.study.prefix.task_predictions`, plus ``logp``.
    """
    logp = vlm_answer_logprobs(
        model,
        processor,
        images,
        [task.question] * len(images),
        [" " + a for a in task.answers],
        prompt_template=prompt_template,
        chunk_size=chunk_size,
    )
    return {**task_predictions(logp, task), "logp": logp.numpy()}


def vlm_predict_numeric(
    model: torch.nn.Module,
    processor,
    images: Sequence[np.ndarray],
    question: str,
    grid: Sequence[float],
    *,
    prompt_template: str | None = None,
    chunk_size: int = 16,
) -> dict[str, np.ndarray]:
    """Expected numeric answer over a grid of integers (renormalised probabilities)."""
    task = NumericTask("numeric", question, list(grid))
    out = vlm_predict_task(
        model, processor, images, task, prompt_template=prompt_template, chunk_size=chunk_size
    )
    return {**out, "grid": np.asarray(task.values)}


def train_vlm(
    model: torch.nn.Module,
    processor,
    images: Sequence[np.ndarray],
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    steps: int = 100,
    batch_size: int = 4,
    lr: float = 1e-4,
    max_seconds: float | None = None,
    seed: int = 0,
    prompt_template: str | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune the trainable parameters (LoRA adapters) on answer tokens with AdamW.

    Returns
    -------
    dict
        ``steps``, ``losses``, ``seconds``, ``stopped_by_budget``.
    """
    n = len(images)
    if n == 0 or len(questions) != n or len(answers) != n:
        raise ValueError("need N >= 1 images with as many questions and answers")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (load it with lora=...)")
    device = next(model.parameters()).device
    dtype = _float_dtype(model)

    def batch_loss(idx: list[int]) -> torch.Tensor:
        batch = build_vlm_batch(
            processor,
            [images[i] for i in idx],
            [questions[i] for i in idx],
            [answers[i] for i in idx],
            prompt_template=prompt_template,
        )
        return model(**_model_inputs(batch, device, dtype)).loss

    return train_steps(
        model,
        params,
        n,
        batch_loss,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.01,  # torch's AdamW default, which this loop has always used
        max_seconds=max_seconds,
        seed=seed,
        progress=progress,
    )
