"""fmrilm: resting-state fMRI as tokens a language model can read."""

__version__ = "0.1.0"
