"""Run by test_training.py in a subprocess that is killed with SIGKILL mid-training."""

import sys
import time

sys.path.insert(0, sys.argv[4])  # tests/lm, for the fake tokenizer
from lightning.pytorch.callbacks import Callback  # noqa: E402

from conftest import FakeFMRITokenizer  # noqa: E402
from fmrilm.lm.training import train  # noqa: E402


class Slow(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(0.5)  # leave the test time to kill us between checkpoints


tok = FakeFMRITokenizer(n_rois=200, patch_length=20, codebook_size=8, d_lm=32)
tok.config.window_length = 160
cfg = {
    "base_model": sys.argv[1],
    "store": sys.argv[2],
    "out_dir": sys.argv[3],
    "targets": ["age", "sex"],
    "model": {"lora_r": 2, "compact_rois": 8},
    "train": {"max_steps": 12, "batch_size": 2, "checkpoint_every_n_steps": 2, "warmup_steps": 1},
}
train(cfg, fmri_tokenizer=tok, extra_callbacks=[Slow()])
