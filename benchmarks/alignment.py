"""How well do fMRI code embeddings pass for text-token embeddings? One row per tokenizer.

    python -m benchmarks.alignment --run full=runs/tokenizer_site_stratified/model \
        --run subspace=runs/tokenizer_subspace/model [--store /tmp/fmrilm_abide_store]

For each tokenizer, on the codes of its scheme's test windows (code vectors of up to 4,096
tokens drawn uniformly) against 4,096 held-out text tokens (drawn by frequency from the held-out
Human Phenotype Ontology text, embedded by the LM the tokenizer was aligned to):

- ``own_discriminator_accuracy``: the tokenizer's own domain classifier, in the space it was
  trained in (the LM space, or the text's principal subspace with ``align_dim``), balanced over
  the two sides (0.5 = cannot tell them apart);
- ``probe_accuracy_align_space`` / ``probe_accuracy_lm_space``: a fresh logistic regression,
  5-fold cross-validated balanced accuracy, in the classifier's space and in the LM's
  input-embedding space (what the LM actually reads). A fresh probe is the honest check: an
  adversary that lost the game can still be beaten by a new one;
- ``probe_mlp_accuracy_align_space`` / ``probe_mlp_accuracy_lm_space``: the same with a fresh
  one-hidden-layer perceptron (256 units, early stopping), a classifier as flexible as the
  tokenizer's own;
- ``moment_matched``: the same probes on the codes written by a closed-form map instead of the
  projector, one that gives the code vectors the mean and covariance of the training text's
  embeddings in the text's top principal subspace (:func:`fmrilm.lm.vocab.subspace_rows` fitted
  on frequency-sampled training text; the LM's ``init: subspace`` is the same map fitted on its
  embedding table). It is invertible on the codebook, so it keeps everything the codes carry;
  a linear probe sees matched first and second moments.

Writes ``benchmarks/results/alignment.json`` and one line in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import named_paths, write_result

N_TOKENS = 4096


def _probe(a, b, seed: int, kind: str = "linear") -> float:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([a, b])
    y = np.r_[np.ones(len(a)), np.zeros(len(b))]
    if kind == "linear":
        head = LogisticRegression(max_iter=2000)
    else:
        head = MLPClassifier((256,), max_iter=200, early_stopping=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), head)
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=cv, scoring="balanced_accuracy").mean())


def measure(model_dir: Path, store: Path, seed: int = 0) -> dict:
    import torch

    from fmrilm.lm.vocab import subspace_rows
    from fmrilm.tokenizer import FMRITokenizer
    from fmrilm.tokenizer.model import domain_accuracy
    from fmrilm.tokenizer.text_domain import build_text_domain
    from fmrilm.tokenizer.training import WindowDataModule

    model = FMRITokenizer.from_pretrained(model_dir)
    scheme = (model.scaler_stats or {}).get("scheme", "site_stratified")
    dm = WindowDataModule(str(store), scheme, model.config.window_length, 80, batch_size=32)
    codes = []
    with torch.no_grad():
        for b in dm.eval_dataloader("test"):
            c = model.encode(b["window"].float(), b["roi_mask"].bool())
            codes.append(c[c >= 0])
    codes = torch.cat(codes)
    g = torch.Generator().manual_seed(seed)
    codes = codes[torch.randperm(len(codes), generator=g)[:N_TOKENS]]
    domain = build_text_domain(model.config.lm_name)
    text = domain.sample(N_TOKENS, "heldout", g)
    with torch.no_grad():
        vecs = model.code_vectors(codes)
        fa, ta = model.align_features(vecs), model.text_features(text)
        own = domain_accuracy(model.discriminator(fa), model.discriminator(ta))["accuracy"]
        lm = model.to_lm_space(vecs)
        k = model.config.codebook_size
        train_text = domain.sample(20_000, "train", g)
        matched = subspace_rows(model.code_vectors(torch.arange(k)), train_text)[codes]
        # the same in the coordinates of the text's principal subspace that the map writes in
        t_mean = train_text.mean(0)
        basis = torch.linalg.svd(train_text - t_mean, full_matrices=False)[2][: vecs.shape[1]]
        mm_coords = ((matched - t_mean) @ basis.T).numpy()
        text_coords = ((text - t_mean) @ basis.T).numpy()
    mm = matched.numpy()
    return {
        "model": str(model_dir),
        "scheme": scheme,
        "align_dim": model.config.align_dim,
        "align_space_dim": int(fa.shape[1]),
        "n_code_tokens": int(len(codes)),
        "n_distinct_codes": int(codes.unique().numel()),
        "own_discriminator_accuracy": own,
        "probe_accuracy_align_space": _probe(fa.numpy(), ta.numpy(), seed),
        "probe_accuracy_lm_space": _probe(lm.numpy(), text.numpy(), seed),
        "probe_mlp_accuracy_align_space": _probe(fa.numpy(), ta.numpy(), seed, "mlp"),
        "probe_mlp_accuracy_lm_space": _probe(lm.numpy(), text.numpy(), seed, "mlp"),
        "moment_matched": {
            "subspace_dim": int(mm_coords.shape[1]),
            "probe_accuracy_subspace": _probe(mm_coords, text_coords, seed),
            "probe_mlp_accuracy_subspace": _probe(mm_coords, text_coords, seed, "mlp"),
            "probe_accuracy_lm_space": _probe(mm, text.numpy(), seed),
            "probe_mlp_accuracy_lm_space": _probe(mm, text.numpy(), seed, "mlp"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=MODEL_DIR")
    ap.add_argument("--store", type=Path, default=Path("/tmp/fmrilm_abide_store"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--result-name", default="alignment", help="results file (benchmarks/results/NAME.json)"
    )
    args = ap.parse_args(argv)
    runs = {}
    for name, path in named_paths(args.run, "--run").items():
        runs[name] = measure(path, args.store, args.seed)
        print(name, runs[name])
    line = "; ".join(
        f"{n}: own classifier {r['own_discriminator_accuracy']:.3f}, fresh probe "
        f"{r['probe_accuracy_align_space']:.3f} ({r['align_space_dim']}-d) / "
        f"{r['probe_accuracy_lm_space']:.3f} (LM space), fresh MLP "
        f"{r['probe_mlp_accuracy_align_space']:.3f} / {r['probe_mlp_accuracy_lm_space']:.3f}; "
        f"moment-matched map: linear {r['moment_matched']['probe_accuracy_subspace']:.3f} "
        f"({r['moment_matched']['subspace_dim']}-d) / "
        f"{r['moment_matched']['probe_accuracy_lm_space']:.3f} (LM space), MLP "
        f"{r['moment_matched']['probe_mlp_accuracy_subspace']:.3f} / "
        f"{r['moment_matched']['probe_mlp_accuracy_lm_space']:.3f}"
        for n, r in runs.items()
    )
    write_result(args.result_name, {"runs": runs, "n_tokens": N_TOKENS}, line)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
