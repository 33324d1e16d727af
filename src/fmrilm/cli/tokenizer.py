"""``fmrilm tokenizer`` subcommands: train, evaluate, encode, reconstruct.

Wired into ``fmrilm.cli`` with ``add_parser(subparsers)``; ``run(args)`` executes one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fmrilm.cli import add_set_option, apply_sets

__all__ = ["add_parser", "run", "load_config"]


def load_config(
    path: str | None, overrides: list[str] | None = None, given: set[str] = frozenset()
) -> dict:
    """The YAML config at ``path`` (or an empty one) with ``--set`` overrides applied."""
    import yaml

    cfg: dict = {}
    if path:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    return apply_sets(cfg, overrides)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tokenizer",
        help="train / evaluate / use the fMRI tokenizer (VQ masked autoencoder)",
        description="Train, evaluate and apply the fMRI tokenizer.",
    )
    sub = p.add_subparsers(dest="tokenizer_command", required=True)

    t = sub.add_parser("train", help="train a tokenizer from a YAML config")
    t.add_argument("--config", default="configs/tokenizer.yaml", help="YAML config file")
    add_set_option(
        t, "override a config key, e.g. --set train.max_steps=100 --set model.align=false"
    )
    t.add_argument("--out-dir", default=None, help="run folder (overrides out_dir)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    t.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate on the test split after training (writes evaluation.json)",
    )

    e = sub.add_parser("evaluate", help="evaluate a trained tokenizer on a split")
    e.add_argument("--model", required=True, help="tokenizer folder (save_pretrained)")
    e.add_argument("--store", required=True)
    e.add_argument("--scheme", default=None, help="split scheme (default: the model's)")
    e.add_argument("--split", default="test")
    e.add_argument("--ratios", default="0.2,0.5,0.75")
    e.add_argument("--stride", type=int, default=80)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--lm", default=None, help="LM for the held-out text (default: the model's)")
    e.add_argument("--no-baselines", action="store_true")
    e.add_argument("--out", default=None, help="write the metrics as JSON here")

    c = sub.add_parser("encode", help="encode a store's scans into codes")
    c.add_argument("--model", required=True)
    c.add_argument("--store", required=True)
    c.add_argument("--scheme", default=None)
    c.add_argument("--split", default="all", help="train, val, test or all")
    c.add_argument("--out", required=True, help="output .npz: one (n_windows, R, P) array per scan")
    c.add_argument("--batch-size", type=int, default=32)

    r = sub.add_parser("reconstruct", help="reconstruct one scan for inspection")
    r.add_argument("--model", required=True)
    r.add_argument("--store", required=True)
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--scan-index", type=int)
    g.add_argument("--scan-id")
    r.add_argument("--scheme", default=None)
    r.add_argument("--mask-ratio", type=float, default=0.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, help="output .npz (original, reconstruction, hidden)")
    r.add_argument("--plot", default=None, help="optional PNG of a few ROIs")

    a = sub.add_parser(
        "realign",
        help="refit a trained tokenizer's projector and domain classifier on its frozen codebook",
    )
    a.add_argument("--model", required=True, help="trained tokenizer folder")
    a.add_argument("--out", required=True, help="folder for the realigned tokenizer")
    a.add_argument("--lm", default=None, help="LM to align with (default: the model's)")
    a.add_argument("--steps", type=int, default=2000)
    a.add_argument("--cycle-weight", type=float, default=1.0, help="0: adversarial loss only")
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run, run=run, command_group="tokenizer")
    return p


def run(args) -> int:
    cmd = args.tokenizer_command
    if cmd == "train":
        return _train(args)
    if cmd == "evaluate":
        return _evaluate(args)
    if cmd == "encode":
        return _encode(args)
    if cmd == "reconstruct":
        return _reconstruct(args)
    if cmd == "realign":
        return _realign(args)
    raise SystemExit(f"unknown tokenizer command {cmd}")


# ----------------------------------------------------------------------------- commands
def _train(args) -> int:
    from fmrilm.tokenizer.training import train

    cfg = load_config(args.config, args.overrides, {"out_dir"} if args.out_dir else set())
    if args.out_dir:
        cfg["out_dir"] = args.out_dir
    res = train(cfg, resume=args.resume)
    print(
        json.dumps(
            {
                k: v
                for k, v in res.items()
                if k in ("out_dir", "model_dir", "global_step", "train_seconds", "resumed_from")
            }
        )
    )
    if args.evaluate:
        from fmrilm.tokenizer.training import DEFAULT_CONFIG, merge_config

        full = merge_config(DEFAULT_CONFIG, cfg)
        ns = argparse.Namespace(
            model=res["model_dir"],
            store=full["data"]["store"],
            scheme=full["data"]["scheme"],
            split="test",
            ratios="0.2,0.5,0.75",
            stride=full["data"]["stride"],
            batch_size=32,
            seed=0,
            lm=None,
            no_baselines=False,
            out=str(Path(res["out_dir"]) / "evaluation.json"),
        )
        _evaluate(ns)
    return 0


def _model_scheme(model, scheme):
    if scheme:
        return scheme
    return (model.scaler_stats or {}).get("scheme", "site_stratified")


def evaluate_model_on_store(
    model,
    store_path: str,
    scheme: str,
    split: str = "test",
    ratios=(0.2, 0.5, 0.75),
    stride: int = 80,
    batch_size: int = 32,
    seed: int = 0,
    lm: str | None = None,
    baselines: bool = True,
    text_domain=None,
) -> dict:
    """Full evaluation of a tokenizer on a store split, with the baselines on the same masks."""
    from fmrilm.tokenizer.evaluation import evaluate_tokenizer, fit_baseline_conditional
    from fmrilm.tokenizer.training import WindowDataModule

    dm = WindowDataModule(
        store=store_path,
        scheme=scheme,
        window_length=model.config.window_length,
        stride=stride,
        batch_size=batch_size,
    )
    gc, ridges = None, None
    if baselines:
        gc, ridges = fit_baseline_conditional(
            dm.eval_dataloader("train", 64),
            dm.eval_dataloader("val", 64),
            ratios=ratios,
            patch_length=model.config.patch_length,
            seed=seed,
        )
    if text_domain is None and model.config.align:
        name = lm or model.config.lm_name
        if name:
            from fmrilm.tokenizer.text_domain import build_text_domain

            text_domain = build_text_domain(name)
    res = evaluate_tokenizer(
        model,
        dm.eval_dataloader(split, batch_size),
        baseline=gc,
        baseline_ridges=ridges,
        ratios=ratios,
        seed=seed,
        text_domain=text_domain,
    )
    res.update({"split": split, "scheme": scheme, "store": str(store_path)})
    return res


def _evaluate(args) -> int:
    from fmrilm.tokenizer import FMRITokenizer

    model = FMRITokenizer.from_pretrained(args.model)
    ratios = tuple(float(r) for r in args.ratios.split(","))
    res = evaluate_model_on_store(
        model,
        args.store,
        _model_scheme(model, args.scheme),
        args.split,
        ratios,
        args.stride,
        args.batch_size,
        args.seed,
        args.lm,
        not args.no_baselines,
    )
    short = {
        k: res.get(k)
        for k in (
            "n_windows",
            "r2_codes",
            "r2_masked_by_ratio",
            "r2_gaussian_conditional_by_ratio",
            "r2_linear_interpolation_by_ratio",
            "r2_zero_by_ratio",
            "codebook_usage",
            "perplexity",
            "discriminator_accuracy",
        )
    }
    print(json.dumps(short, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


def _encode(args) -> int:
    import numpy as np
    import torch

    from fmrilm.data import open_store
    from fmrilm.tokenizer import FMRITokenizer

    model = FMRITokenizer.from_pretrained(args.model)
    store = open_store(args.store)
    scheme = _model_scheme(model, args.scheme)
    if args.split == "all":
        rows = np.arange(len(store))
    else:
        rows = np.asarray(store.split_indices(scheme)[args.split])
    sc = store.scaler(scheme)
    table = store.table
    L = model.config.window_length
    pl = model.config.patch_length
    out = {}
    for i in rows:
        raw = np.asarray(store.timeseries(int(i)), dtype=np.float32)
        x = np.asarray(sc.transform(raw), dtype=np.float32)
        rm = np.asarray(store.roi_mask(int(i)), dtype=bool)
        x[:, ~rm] = 0.0
        t = x.shape[0]
        if t >= L:
            starts = list(range(0, t - L + 1, L))
            wins = np.stack([x[s : s + L] for s in starts])
        else:
            tl = (t // pl) * pl
            if tl == 0:
                continue
            wins = x[None, :tl]
        codes = []
        for j in range(0, len(wins), args.batch_size):
            xb = torch.from_numpy(wins[j : j + args.batch_size])
            rmb = torch.from_numpy(rm)[None].expand(xb.shape[0], -1)
            codes.append(model.encode(xb, rmb).numpy().astype(np.int32))
        out[str(table["scan_id"].iloc[int(i)])] = np.concatenate(codes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(json.dumps({"scans": len(out), "out": args.out}))
    return 0


def _reconstruct(args) -> int:
    import numpy as np
    import torch
    from einops import rearrange

    from fmrilm.baselines.reconstruction import masked_r2
    from fmrilm.data import open_store
    from fmrilm.tokenizer import FMRITokenizer, random_token_mask

    model = FMRITokenizer.from_pretrained(args.model)
    store = open_store(args.store)
    scheme = _model_scheme(model, args.scheme)
    table = store.table
    if args.scan_id is not None:
        hits = np.flatnonzero(table["scan_id"].to_numpy() == args.scan_id)
        if not len(hits):
            print(f"scan {args.scan_id} not in store", file=sys.stderr)
            return 2
        i = int(hits[0])
    else:
        i = int(args.scan_index)
    sc = store.scaler(scheme)
    x = np.asarray(sc.transform(np.asarray(store.timeseries(i), dtype=np.float32)), np.float32)
    rm = np.asarray(store.roi_mask(i), dtype=bool)
    x[:, ~rm] = 0.0
    pl = model.config.patch_length
    tl = (x.shape[0] // pl) * pl
    xt = torch.from_numpy(x[:tl])[None]
    rmt = torch.from_numpy(rm)[None]
    p = tl // pl
    g = torch.Generator().manual_seed(args.seed)
    hidden = random_token_mask(1, x.shape[1], p, args.mask_ratio, g)
    with torch.no_grad():
        if args.mask_ratio > 0:
            pred = model(xt, hidden, rmt)["pred"][0].numpy()
        else:
            pred = model.decode(model.encode(xt, rmt))[0].numpy()
    hid_t = rearrange(hidden, "b r p -> b p r").repeat_interleave(pl, 1)[0].numpy()
    sel = (hid_t if args.mask_ratio > 0 else np.ones_like(hid_t)) & rm[None, :]
    r2 = masked_r2(x[:tl][sel], pred[sel])
    np.savez_compressed(
        args.out, original=x[:tl], reconstruction=pred, hidden=hid_t, roi_mask=rm, r2=r2
    )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rois = np.flatnonzero(rm)[:4]
        fig, axes = plt.subplots(len(rois), 1, figsize=(10, 2 * len(rois)), sharex=True)
        for ax, roi in zip(np.atleast_1d(axes), rois, strict=False):
            ax.plot(x[:tl, roi], label="original", lw=1)
            ax.plot(pred[:, roi], label="reconstruction", lw=1)
            h = hid_t[:, roi]
            ax.fill_between(
                np.arange(tl),
                0,
                1,
                where=h,
                alpha=0.15,
                transform=ax.get_xaxis_transform(),
                label="hidden",
            )
            ax.set_ylabel(f"ROI {roi + 1}")
        np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    print(
        json.dumps(
            {
                "scan_index": i,
                "scan_id": str(table["scan_id"].iloc[i]),
                "r2": r2,
                "mask_ratio": args.mask_ratio,
                "out": args.out,
            }
        )
    )
    return 0


def _realign(args) -> int:
    from fmrilm.tokenizer import FMRITokenizer
    from fmrilm.tokenizer.alignment import RealignConfig, realign
    from fmrilm.tokenizer.text_domain import build_text_domain

    model = FMRITokenizer.from_pretrained(args.model)
    lm_name = args.lm or model.config.lm_name
    if not lm_name:
        print(f"{args.model} records no LM; pass --lm", file=sys.stderr)
        return 2
    cfg = RealignConfig(
        steps=args.steps, cycle_weight=args.cycle_weight, lr=args.lr, seed=args.seed
    )
    new, res = realign(model, build_text_domain(lm_name), cfg, progress=True)
    new.config.lm_name = lm_name
    new.config.extra["realigned"] = {"from": str(args.model), **res}
    new.save_pretrained(args.out)
    d = res["discriminator"]
    print(
        f"realigned {args.model} with {lm_name} -> {args.out}: domain classifier "
        f"{d['accuracy']:.3f} on held-out text, codebook recovered with R^2 {res['cycle_r2']:.3f}"
    )
    return 0
