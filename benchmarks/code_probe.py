"""Is there age / sex / diagnosis information in the fMRI codes at all? Linear probes on them.

    python -m benchmarks.code_probe --tokenizer runs/tokenizer_site_stratified/model \
        [--store /tmp/fmrilm_abide_store] [--scheme site_stratified]

Separates "the tokens carry no signal" from "the LM did not learn to read them". For every scan
of the scheme with at least one window, the codes of all its windows (stride 80) become features
two ways: a normalised histogram over the codebook (which codes, wherever they sit), and each
ROI's code vector averaged over patches and windows (which code at which ROI, as the LM's token
positions show it); each for all 200 ROIs and for the 16 ROIs the compact LM layout reads. With
``--lm`` (default ``smollm2``) also each ROI's mean *row* in the LM's embedding space, as the
shared vocabulary's two initialisations write the rows (``codebook``: the tokenizer's alignment
projector; ``subspace``: the codebook written in the text rows' principal subspace). Ridge (age)
and logistic regression (sex, diagnosis), regularisation by cross-validation on the training
split only (ridge penalties 0.1 to 1e7: the LM rows give 115,200 features per scan), are scored
on the test split with the same metrics and bootstrap CIs as the LM
(``fmrilm.evaluation.metrics``).

Writes ``benchmarks/results/code_probe.json`` and one line in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import comma_list, write_result


def histograms(codes: np.ndarray, scans: np.ndarray, rows: np.ndarray, rois, k: int):
    """One normalised code histogram per scan in ``rows`` over the ROIs ``rois``."""
    out = np.zeros((len(rows), k))
    pos = {int(r): i for i, r in enumerate(rows)}
    sub = codes[:, rois, :].reshape(len(codes), -1)
    for c, s in zip(sub, scans, strict=True):
        np.add.at(out[pos[int(s)]], c[c >= 0], 1.0)
    return out / np.maximum(out.sum(1, keepdims=True), 1.0)


def roi_code_vectors(table, codes: np.ndarray, scans: np.ndarray, rows: np.ndarray, rois):
    """Per scan, each ROI's code vector averaged over patches and windows: (n, len(rois) * d).

    ``table`` (K, d) holds one vector per code: the tokenizer's codebook, or the LM's embedding
    rows of the code tokens. Keeps which ROI a code sits at, as the LM's token positions do,
    unlike a histogram."""
    import torch

    pos = {int(r): i for i, r in enumerate(rows)}
    table = torch.as_tensor(table, dtype=torch.float32)
    d = table.shape[1]
    out = np.zeros((len(rows), len(rois), d))
    counts = np.zeros(len(rows))
    with torch.no_grad():
        for s in range(0, len(codes), 64):
            c = torch.from_numpy(codes[s : s + 64][:, rois, :].astype(np.int64))
            v = table[c].mean(2).numpy()  # (b, rois, d)
            for vi, sc in zip(v, scans[s : s + 64], strict=True):
                out[pos[int(sc)]] += vi
                counts[pos[int(sc)]] += 1
    return (out / np.maximum(counts, 1)[:, None, None]).reshape(len(rows), -1)


def decoded_connectivity_features(tok, codes: np.ndarray, scans: np.ndarray, rows: np.ndarray):
    """Per scan, the upper triangle of the mean decoded-signal connectivity over its windows."""
    import torch

    from fmrilm.lm.summary import decoded_connectivity

    pos = {int(r): i for i, r in enumerate(rows)}
    n_rois = codes.shape[1]
    iu = np.triu_indices(n_rois, 1)
    out = np.zeros((len(rows), len(iu[0])))
    counts = np.zeros(len(rows))
    for s in range(0, len(codes), 64):
        z = decoded_connectivity(tok, torch.from_numpy(codes[s : s + 64].astype(np.int64)))
        for zi, sc in zip(z.numpy()[:, iu[0], iu[1]], scans[s : s + 64], strict=True):
            out[pos[int(sc)]] += zi
            counts[pos[int(sc)]] += 1
    return out / np.maximum(counts, 1)[:, None]


def probe(xtr, xte, table, train_rows, test_rows, n_bootstrap: int) -> dict:
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fmrilm.evaluation.metrics import classification_metrics, regression_metrics

    res = {}
    age_tr = table.loc[train_rows, "age"].to_numpy(float)
    age_te = table.loc[test_rows, "age"].to_numpy(float)
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 7, 17)))
    ridge.fit(xtr, age_tr)
    m = regression_metrics(age_te, ridge.predict(xte), n_bootstrap=n_bootstrap)
    res["age"] = {k: m["metrics"][k] for k in ("mae", "pearson_r", "r2", "predicted_std_ratio")}
    for target in ("sex", "diagnosis"):
        ytr = table.loc[train_rows, target].astype(str).to_numpy()
        yte = table.loc[test_rows, target].astype(str).to_numpy()
        clf = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(Cs=np.logspace(-4, 1, 6), max_iter=3000, class_weight="balanced"),
        )
        clf.fit(xtr, ytr)
        labels = list(clf.classes_)
        m = classification_metrics(
            yte, clf.predict_proba(xte), labels=labels, n_bootstrap=n_bootstrap
        )
        res[target] = dict(m["metrics"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    ap.add_argument("--scheme", default="site_stratified")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument(
        "--lm",
        default="smollm2",
        help="also probe the code tokens' rows in this LM's embedding space, as each vocabulary "
        "initialisation writes them (codebook, subspace); 'none' to skip",
    )
    ap.add_argument(
        "--only",
        type=comma_list,
        default=None,
        help="comma-separated subset of the feature sets (default: all)",
    )
    ap.add_argument(
        "--result-name", default="code_probe", help="results file (benchmarks/results/NAME.json)"
    )
    args = ap.parse_args(argv)

    import torch

    from fmrilm.data import open_store
    from fmrilm.lm.layouts import TokenLayout
    from fmrilm.lm.training import encode_windows, load_fmri_tokenizer

    store = open_store(args.store)
    tok = load_fmri_tokenizer(args.tokenizer)
    table = store.table.reset_index(drop=True)
    cfg = tok.config
    enc = {
        split: encode_windows(
            store, tok, split=split, scheme=args.scheme, window_length=cfg.window_length, stride=80
        )
        for split in ("train", "test")
    }
    compact = TokenLayout("compact", cfg.n_rois, cfg.n_patches).roi_index
    results = {}
    all_rois = np.arange(cfg.n_rois)
    tables = {"roi_code_vectors": tok.code_vectors(torch.arange(cfg.codebook_size)).detach()}
    sets = [
        (f"{kind}_{label}", kind, rois)
        for kind in ("code_histogram", "roi_code_vectors")
        for label, rois in (("all_200_rois", all_rois), ("compact_16_rois", compact))
    ]
    sets.append(("decoded_connectivity", "decoded_connectivity", all_rois))
    if args.lm != "none":
        # the rows the shared vocabulary starts from (fmrilm.lm.vocab.extend_vocabulary)
        from fmrilm.lm.vocab import (
            codebook_embeddings,
            codebook_vectors,
            load_causal_lm,
            subspace_rows,
        )

        lm, _ = load_causal_lm(args.lm)
        text = lm.get_input_embeddings().weight.detach().float()
        projected = codebook_embeddings(tok)
        scale = text.norm(dim=1).mean() / projected.norm(dim=1).mean()
        tables["lm_rows_init_codebook"] = projected * scale
        tables["lm_rows_init_subspace"] = subspace_rows(codebook_vectors(tok), text)
        del lm
        sets += [(f"{k}_all_200_rois", k, all_rois) for k in tables if k.startswith("lm_rows")]
    if args.only:
        unknown = sorted(set(args.only) - {name for name, _, _ in sets})
        if unknown:
            raise SystemExit(f"unknown feature sets {unknown}; known: {[n for n, _, _ in sets]}")
        sets = [s for s in sets if s[0] in args.only]
    for name, kind, rois in sets:
        feats = {}
        for split, e in enc.items():
            rows = np.unique(e["scan_index"])
            if kind == "code_histogram":
                x = histograms(e["codes"], e["scan_index"], rows, rois, cfg.codebook_size)
            elif kind == "decoded_connectivity":
                x = decoded_connectivity_features(tok, e["codes"], e["scan_index"], rows)
            else:
                x = roi_code_vectors(tables[kind], e["codes"], e["scan_index"], rows, rois)
            feats[split] = (rows, x)
        (tr_rows, xtr), (te_rows, xte) = feats["train"], feats["test"]
        results[name] = probe(xtr, xte, table, tr_rows, te_rows, args.bootstrap)
        results[name]["n_train_scans"], results[name]["n_test_scans"] = len(tr_rows), len(te_rows)
        print(name, results[name])

    def v(name, t, k):
        return results[name][t][k]["value"]

    line = (
        "; ".join(
            f"{n}: age MAE {v(n, 'age', 'mae'):.2f}, sex AUC {v(n, 'sex', 'roc_auc'):.2f}, "
            f"dx AUC {v(n, 'diagnosis', 'roc_auc'):.2f}"
            for n in results
        )
        + f" ({args.scheme} test, {results[sets[0][0]]['n_test_scans']} scans)"
    )
    write_result(
        args.result_name, {"scheme": args.scheme, "tokenizer": str(args.tokenizer), **results}, line
    )
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
