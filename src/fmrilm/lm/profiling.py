"""Timing of training steps and answer scoring for a given LM and layout (random codes).

``python -m fmrilm.lm.profiling --base-model smollm2 --layout compact --batch-size 8`` prints JSON:
seconds per AdamW step, tokens/s, windows/s, seconds per window to answer every task, and the
FLOP budget of :func:`fmrilm.lm.layouts.compute_budget` with the FLOP/s it implies.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from fmrilm.lm.config import LMConfig
from fmrilm.lm.layouts import LAYOUTS, compute_budget
from fmrilm.lm.model import FMRILanguageModel
from fmrilm.lm.tasks import QUESTIONS, TaskSpec

__all__ = ["default_tasks", "measure", "main"]


def default_tasks() -> list[TaskSpec]:
    """Age (integers 6..64), sex and diagnosis, as on ABIDE."""
    ages = list(range(6, 65))
    return [
        TaskSpec(
            "age", "regression", QUESTIONS["age"], [str(a) for a in ages], [float(a) for a in ages]
        ),
        TaskSpec("sex", "classification", QUESTIONS["sex"], ["female", "male"]),
        TaskSpec("diagnosis", "classification", QUESTIONS["diagnosis"], ["control", "autism"]),
    ]


def measure(
    model: FMRILanguageModel,
    *,
    batch_size: int = 8,
    steps: int = 3,
    score_windows: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``steps`` training steps (the first is warm-up) and scoring of every task.

    Returns
    -------
    dict
        ``step_seconds`` (best of the steps after the first), ``tokens_per_step``,
        ``tokens_per_second``, ``windows_per_second``, ``score_seconds_per_window`` (all tasks),
        ``budget`` and ``train_gflops_per_second`` (LoRA or full estimate / step time).
    """
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(
        0, cfg.codebook_size, (batch_size, cfg.n_rois, cfg.n_patches), generator=g
    )
    tasks = model.tasks
    q = max(1, min(cfg.questions_per_example, len(tasks)))
    examples = [
        (*model.example(codes[i], [(tasks[(i + k) % len(tasks)], 0) for k in range(q)]), codes[i])
        for i in range(batch_size)
    ]
    batch = model.collate(examples)
    device = next(model.lm.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for _ in range(max(2, steps)):
        t = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step = min(times[1:])
    tokens = int(batch["attention_mask"].sum())
    model.eval()
    sc = codes[: max(1, min(score_windows, batch_size))]
    model.score_tasks(sc[:1])  # warm-up and the packed-scoring check
    t = time.perf_counter()
    model.score_tasks(sc, batch_size=len(sc))
    score = (time.perf_counter() - t) / len(sc)
    n = model.n_parameters()
    base = model.base_model.config
    budget = compute_budget(
        model.layout,
        n_params=n["total"],
        n_layers=int(getattr(base, "num_hidden_layers", 0) or 0),
        d_model=int(getattr(base, "hidden_size", 0) or 0),
        text_tokens=max(0, tokens // batch_size - model.layout.n_tokens),
        batch_size=batch_size,
        trainable_fraction=n["trainable"] / max(1, n["total"]),
    )
    key = "train_flops_per_step_full" if cfg.finetune == "full" else "train_flops_per_step_lora"
    return {
        "layout": model.layout.describe(),
        "finetune": cfg.finetune,
        "parameters": n,
        "batch_size": batch_size,
        "tokens_per_step": tokens,
        "step_seconds": step,
        "tokens_per_second": tokens / step,
        "windows_per_second": batch_size / step,
        "score_seconds_per_window": score,
        "packed_scoring": bool(getattr(model, "_packed_ok", False)),
        "budget": budget,
        "train_gflops_per_second": budget[key] / step / 1e9,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-model", default="smollm2")
    p.add_argument("--layout", default="compact", choices=LAYOUTS)
    p.add_argument("--finetune", default="lora", choices=("lora", "full"))
    p.add_argument("--codebook-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--questions-per-example", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = LMConfig(
        base_model=args.base_model,
        codebook_size=args.codebook_size,
        layout=args.layout,
        init="random",
        finetune=args.finetune,
        questions_per_example=args.questions_per_example,
        tasks=[t.to_dict() for t in default_tasks()],
    )
    model = FMRILanguageModel.build(cfg)
    model.to(args.device)
    print(json.dumps(measure(model, batch_size=args.batch_size, steps=args.steps), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
