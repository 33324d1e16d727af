"""fMRI tokenizer benchmark: throughput, MFU, peak RSS, and quality after a fixed CPU budget.

    python -m benchmarks.tokenizer --aligned-run RUN_DIR --unaligned-run RUN_DIR \
        [--store /tmp/fmrilm_abide_store] [--config configs/tokenizer.yaml]

- throughput: training steps (forward + backward + AdamW, mask ratio 0.2) and ``encode`` on
  random 200 ROI x 160 point windows at batch 16 and 64, median of a few timed repetitions after
  a warm-up, with the headline model configuration;
- MFU: model FLOPs per window (``torch.utils.flop_counter.FlopCounterMode``: matmuls,
  attention, convolutions) times windows/s, divided by the dense float32 matmul FLOP/s that torch
  reaches in the same process (2048 x 2048 x 2048 ``torch.mm``, best of 5); the quantizer's
  share of the counted FLOPs is recorded beside them;
- peak RSS: this process's peak resident set size after the batch-64 training steps, and the
  training runs' own peak (``train_summary.json``) when recorded;
- quality: each run folder's ``evaluation.json`` (written by ``fmrilm tokenizer evaluate``; it is
  computed here when missing) and ``train_summary.json`` (training seconds = the CPU budget).

Writes ``benchmarks/results/tokenizer.json`` and appends one line to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import REPO, peak_rss_mb, write_result


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _train_config(config_path: Path) -> dict:
    """The ``train`` section that ``fmrilm tokenizer train`` would use with this config."""
    import yaml

    from fmrilm.tokenizer.training import DEFAULT_CONFIG, merge_config

    return merge_config(DEFAULT_CONFIG, yaml.safe_load(config_path.read_text()))["train"]


def _model_config(config_path: Path) -> dict:
    import yaml

    cfg = yaml.safe_load(config_path.read_text())
    m = dict(cfg.get("model", {}))
    m.setdefault("window_length", cfg.get("data", {}).get("window_length", 160))
    m["lm_dim"] = 576
    return m


def _quantizer_flops(model, x, hidden) -> float:
    """FLOPs of the quantizer alone on ``x``, in the model's current mode (training: the
    library's distances, one-hot lookup and EMA sums; evaluation: the nearest-code search)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        z = model.encode_continuous(x, hidden)
        with FlopCounterMode(display=False) as fc:
            model.quantize(z, None if hidden is None else ~hidden)
    return float(fc.get_total_flops())


def _median_seconds(reps: int, fn, *args) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _library_encode(model, x):
    """``model.encode`` with the codes taken by ``VectorQuantize`` itself (its evaluation path)."""
    import torch
    from einops import rearrange

    with torch.no_grad():
        z = model.encode_continuous(x)
        _, idx, _ = model.quantizer(rearrange(z, "b r p c -> b (r p) c"))
    return idx


def throughput(model_cfg: dict, batches=(16, 64), reps: int = 3) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fmrilm.tokenizer import FMRITokenizer, TokenizerConfig, random_token_mask

    torch.manual_seed(0)
    cfg = TokenizerConfig.from_dict(model_cfg)
    model = FMRITokenizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    r, L, p = cfg.n_rois, cfg.window_length, cfg.n_patches
    out: dict = {"train": {}, "encode": {}}

    def train_step(x, hidden):
        res = model(x, hidden)
        loss = ((res["pred"] - x) ** 2).mean() + res["commit_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for b in batches:
        x = torch.randn(b, L, r)
        g = torch.Generator().manual_seed(b)
        hidden = random_token_mask(b, r, p, 0.2, g)
        model.train()
        train_step(x, hidden)  # warm-up (k-means init on the first call)
        with FlopCounterMode(display=False) as fc:
            train_step(x, hidden)
        train_flops = fc.get_total_flops() / b
        dt = _median_seconds(reps, train_step, x, hidden)
        out["train"][b] = {
            "windows_per_s": b / dt,
            "flops_per_window": train_flops,
            "quantizer_flops_per_window": _quantizer_flops(model, x, hidden) / b,
            "step_s": dt,
        }
        model.eval()
        model.encode(x)
        with FlopCounterMode(display=False) as fc:
            model.encode(x)
        enc_flops = fc.get_total_flops() / b
        dt = _median_seconds(reps, model.encode, x)
        out["encode"][b] = {
            "windows_per_s": b / dt,
            "flops_per_window": enc_flops,
            "quantizer_flops_per_window": _quantizer_flops(model, x, None) / b,
            "batch_s": dt,
            # the same codes through VectorQuantize's own evaluation path, for the ratio
            "windows_per_s_library_quantizer": b / _median_seconds(reps, _library_encode, model, x),
        }
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _budget(summary: dict | None) -> float | None:
    """Training seconds of a run, including the part before a ``--resume`` when recorded."""
    if summary is None or summary.get("train_seconds") is None:
        return None
    return float(summary["train_seconds"]) + float(summary.get("train_seconds_before_resume", 0))


def _load_or_evaluate(run: Path, store: str) -> dict:
    ev = run / "evaluation.json"
    if not ev.exists():
        from fmrilm.cli.tokenizer import evaluate_model_on_store
        from fmrilm.tokenizer import FMRITokenizer

        model = FMRITokenizer.from_pretrained(run / "model")
        scheme = (model.scaler_stats or {}).get("scheme", "site_stratified")
        res = evaluate_model_on_store(model, store, scheme, "test")
        ev.write_text(json.dumps(res, indent=2))
    return json.loads(ev.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aligned-run", type=Path, required=True)
    ap.add_argument("--unaligned-run", type=Path, default=None)
    ap.add_argument("--store", default="/tmp/fmrilm_abide_store")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "tokenizer.yaml")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--notes",
        default="the aligned and unaligned runs trained concurrently, one thread each, for the "
        "same budget",
        help="how the runs were made and what else shared the machine (recorded as is)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only (for checking)")
    args = ap.parse_args(argv)

    # as training does (train.keep_freed_memory, on by default): see fmrilm.memory
    keep_freed_memory = bool(_train_config(args.config)["keep_freed_memory"])
    if keep_freed_memory:
        from fmrilm.memory import keep_freed_memory_for_reuse

        keep_freed_memory = keep_freed_memory_for_reuse()
    load_before = os.getloadavg()
    gflops = matmul_gflops()
    tp = throughput(_model_config(args.config), reps=args.reps)
    gflops_after = matmul_gflops()
    load_after = os.getloadavg()
    dense = max(gflops, gflops_after)

    def mfu(kind, b):
        e = tp[kind][b]
        return e["windows_per_s"] * e["flops_per_window"] / (dense * 1e9)

    al = _load_or_evaluate(args.aligned_run, args.store)
    al_sum = json.loads((args.aligned_run / "train_summary.json").read_text())
    un, un_sum = None, None
    if args.unaligned_run is not None:
        un = _load_or_evaluate(args.unaligned_run, args.store)
        un_sum = json.loads((args.unaligned_run / "train_summary.json").read_text())
    resolved = json.loads((args.aligned_run / "config.resolved.json").read_text())
    ratios = ("0.2", "0.5", "0.75")
    result = {
        "mask_ratio": 0.2,
        "r2_masked_aligned": al["r2_masked_by_ratio"]["0.2"],
        "r2_masked_unaligned": None if un is None else un["r2_masked_by_ratio"]["0.2"],
        "r2_codes_aligned": al["r2_codes"],
        "r2_codes_unaligned": None if un is None else un["r2_codes"],
        "r2_masked_by_ratio": {r: al["r2_masked_by_ratio"][r] for r in ratios},
        "r2_masked_by_ratio_unaligned": None
        if un is None
        else {r: un["r2_masked_by_ratio"][r] for r in ratios},
        "r2_gaussian_conditional_by_ratio": {
            r: al["r2_gaussian_conditional_by_ratio"][r] for r in ratios
        },
        "r2_window_adaptive_conditional_by_ratio": al.get(
            "r2_window_adaptive_conditional_by_ratio"
        ),
        "r2_linear_interpolation_by_ratio": al.get("r2_linear_interpolation_by_ratio"),
        "r2_zero_by_ratio": al.get("r2_zero_by_ratio"),
        "discriminator_accuracy": al.get("discriminator_accuracy"),
        "discriminator_accuracy_fmri": al.get("discriminator_accuracy_fmri"),
        "discriminator_accuracy_text": al.get("discriminator_accuracy_text"),
        "codebook_usage": al["codebook_usage"],
        "perplexity": al["perplexity"],
        "codebook_usage_unaligned": None if un is None else un["codebook_usage"],
        "perplexity_unaligned": None if un is None else un["perplexity"],
        "mse_masked_aligned": al["masked"]["0.2"]["model"]["mse"],
        "pearson_r_masked_aligned": al["masked"]["0.2"]["model"]["pearson_r"],
        "test_windows": al["n_windows"],
        "train_windows_per_s": {str(b): tp["train"][b]["windows_per_s"] for b in tp["train"]},
        "encode_windows_per_s": {str(b): tp["encode"][b]["windows_per_s"] for b in tp["encode"]},
        "encode_windows_per_s_library_quantizer": {
            str(b): tp["encode"][b]["windows_per_s_library_quantizer"] for b in tp["encode"]
        },
        "train_gflop_per_window": {
            str(b): tp["train"][b]["flops_per_window"] / 1e9 for b in tp["train"]
        },
        "encode_gflop_per_window": {
            str(b): tp["encode"][b]["flops_per_window"] / 1e9 for b in tp["encode"]
        },
        # the quantizer's share of the counts above (in training it includes the library's
        # one-hot products: the code lookup and the EMA sums as matmuls over all codes)
        "train_gflop_per_window_quantizer": {
            str(b): tp["train"][b]["quantizer_flops_per_window"] / 1e9 for b in tp["train"]
        },
        "encode_gflop_per_window_quantizer": {
            str(b): tp["encode"][b]["quantizer_flops_per_window"] / 1e9 for b in tp["encode"]
        },
        "train_mfu": {str(b): mfu("train", b) for b in tp["train"]},
        "encode_mfu": {str(b): mfu("encode", b) for b in tp["encode"]},
        "matmul_gflops": dense,
        "keep_freed_memory": keep_freed_memory,
        "matmul_gflops_before_after": [gflops, gflops_after],
        "peak_rss_mb": tp["peak_rss_mb"],
        "peak_rss_mb_training_run": al_sum.get("peak_rss_mb"),
        "budget_seconds": _budget(al_sum),
        "budget_seconds_unaligned": _budget(un_sum),
        "train_steps": al_sum.get("global_step"),
        "train_steps_unaligned": None if un_sum is None else un_sum.get("global_step"),
        "conditional_fit": al_sum.get("conditional"),
        "config": resolved,
        # the 1-minute load average around the throughput measurement: other work on the
        # same cores lowers windows/s and MFU
        "load_average_1min_before_after": [load_before[0], load_after[0]],
        "notes": args.notes,
    }
    tr = result["train_windows_per_s"]
    en = result["encode_windows_per_s"]
    summary = (
        f"masked R^2 @0.2 aligned {result['r2_masked_aligned']:.3f}"
        + (f" / unaligned {result['r2_masked_unaligned']:.3f}" if un is not None else "")
        + f" (Gaussian conditional {result['r2_gaussian_conditional_by_ratio']['0.2']:.3f}); "
        f"codes R^2 {result['r2_codes_aligned']:.3f}; usage {result['codebook_usage']:.2f}, "
        f"perplexity {result['perplexity']:.0f}; disc acc "
        f"{(result['discriminator_accuracy'] or float('nan')):.3f}; budget "
        f"{(result['budget_seconds'] or 0) / 60:.1f} min, {result['train_steps']} steps; train "
        f"{tr['16']:.1f}/{tr['64']:.1f} win/s, encode {en['16']:.1f}/{en['64']:.1f} win/s "
        f"(batch 16/64); MFU train {result['train_mfu']['64']:.2f}, encode "
        f"{result['encode_mfu']['64']:.2f} of {dense:.0f} GFLOP/s; peak RSS "
        f"{result['peak_rss_mb']:.0f} MiB"
    )
    if args.no_write:
        print(json.dumps({"summary": summary, "result": result}, default=str)[:4000])
        return
    path = write_result("tokenizer", result, summary)
    print(json.dumps({"result": str(path), "summary": summary}))


if __name__ == "__main__":
    main()
