"""fMRI tokenizer: discrete codes for fMRI windows, aligned with a language model's embeddings.

```python
from fmrilm.tokenizer import FMRITokenizer
tok = FMRITokenizer.from_pretrained("runs/tokenizer_aligned/model")
codes = tok.encode(windows)          # (B, L, R) scaled windows -> (B, R, L / patch_length) int64
signal = tok.decode(codes)           # codes alone -> (B, L, R)
vectors = tok.embed_codes(codes)     # -> (B, R, P, d_lm), in the LM's input-embedding space
out = tok(windows, hidden, roi_mask) # masked reconstruction, hidden: (B, R, P) bool
```
Training: ``fmrilm.tokenizer.training.train(config)`` or ``fmrilm tokenizer train``.
"""

from fmrilm.tokenizer.config import TokenizerConfig
from fmrilm.tokenizer.model import (
    FMRITokenizer,
    GradientReversal,
    dann_lambda,
    grad_reverse,
    patchify,
    random_token_mask,
    unpatchify,
)

__all__ = [
    "FMRITokenizer",
    "TokenizerConfig",
    "GradientReversal",
    "dann_lambda",
    "grad_reverse",
    "patchify",
    "random_token_mask",
    "unpatchify",
]
