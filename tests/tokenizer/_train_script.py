"""Run a tiny synthetic training (used by the kill-and-resume test in a subprocess).

usage: python _train_script.py OUT_DIR MAX_STEPS DELAY_SECONDS [--resume]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import synthetic_datasets, tiny_train_config  # noqa: E402
from fmrilm.tokenizer.text_domain import random_text_domain  # noqa: E402
from fmrilm.tokenizer.training import StepDelayCallback, train  # noqa: E402

if __name__ == "__main__":
    out, steps, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    cb = [StepDelayCallback(delay)] if delay > 0 else []
    train(
        tiny_train_config(out, max_steps=steps),
        resume="--resume" in sys.argv,
        extra_callbacks=cb,
        datasets=synthetic_datasets(),
        text_domain=random_text_domain(vocab=64, dim=16),
    )
