"""Several trained fMRI language models answering as one.

:class:`LMEnsemble` stands wherever an :class:`~fmrilm.lm.model.FMRILanguageModel` is asked
questions (``fmrilm.lm.evaluation.evaluate``, ``answer_scan``, ``fmrilm lm evaluate`` and
``fmrilm lm predict`` with several model folders). Each window's answer distribution is the
mean of the members' distributions (an equal-weight mixture); the windows of a scan are then
aggregated exactly as for one model (:meth:`FMRILanguageModel.aggregate`): a number is the
mean of the windows' expectations, so the ensemble's number is the mean of its members'
numbers, and its 90% interval comes from the mixture of every member's window distributions.

Why: the models memorise their ~1,200 training windows, and models that differ in their
read-out or regularisation memorise differently; averaging their answers cancels part of what
each one memorised.

The members must read the same codes (identical fMRI tokenizer weights and windows) and answer
the same questions with the same answer grids, and must have been trained on the same split
scheme; anything else raises.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from fmrilm.lm.model import FMRILanguageModel
from fmrilm.lm.tasks import TaskSpec

__all__ = ["LMEnsemble", "load_models"]


def _same_weights(a, b) -> bool:
    if a is None or b is None:
        return a is b
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class LMEnsemble:
    """Equal-weight ensemble of fMRI language models trained on the same split scheme.

    Parameters
    ----------
    members : list of FMRILanguageModel
        At least two models with the same tasks (names, kinds, answers), windows (length,
        stride, shortest window), split scheme and fMRI tokenizer weights.
    """

    def __init__(self, members: list[FMRILanguageModel]):
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], start=1):
            for key in ("scheme", "window_length", "stride", "min_window_length", "n_rois"):
                if getattr(m.config, key) != getattr(first.config, key):
                    raise ValueError(
                        f"ensemble member {i} has {key}={getattr(m.config, key)!r}, "
                        f"member 0 has {getattr(first.config, key)!r}"
                    )
            if [t.to_dict() for t in m.tasks] != [t.to_dict() for t in first.tasks]:
                raise ValueError(f"ensemble member {i} answers other tasks than member 0")
            if not _same_weights(m.fmri_tokenizer, first.fmri_tokenizer):
                raise ValueError(
                    f"ensemble member {i} has another fMRI tokenizer than member 0: the members "
                    "must read the same codes"
                )
        self.members = members
        self.sources: list[str] | None = None  # member folders, when loaded from them

    @classmethod
    def from_pretrained(cls, folders: list[str | Path]) -> LMEnsemble:
        """Load each member with :meth:`FMRILanguageModel.from_pretrained`."""
        ensemble = cls([FMRILanguageModel.from_pretrained(f) for f in folders])
        ensemble.sources = [str(f) for f in folders]
        return ensemble

    # the attributes the evaluation and answering code read from one model
    @property
    def config(self):
        return self.members[0].config

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.members[0].tasks

    @property
    def fmri_tokenizer(self):
        return self.members[0].fmri_tokenizer

    def task(self, name: str) -> TaskSpec:
        return self.members[0].task(name)

    def describe(self) -> dict[str, Any]:
        """What an evaluation records about the model: one entry per member."""
        sources = self.sources or [None] * len(self.members)
        return {
            "ensemble": [
                {**m.describe(), "source": src}
                for m, src in zip(self.members, sources, strict=True)
            ]
        }

    @property
    def train_summary(self) -> dict[str, Any]:
        """The members' training records; ``train_seconds`` is their sum (all were trained)."""
        members = [m.train_summary or {} for m in self.members]
        steps = {s.get("global_step") for s in members}
        return {
            "train_seconds": sum(float(s.get("train_seconds") or 0.0) for s in members),
            "global_step": steps.pop() if len(steps) == 1 else None,
            "members": members,
        }

    @torch.no_grad()
    def score_tasks(
        self,
        codes: torch.Tensor,
        tasks: list[TaskSpec | str] | None = None,
        batch_size: int = 8,
        method: str = "auto",
    ) -> dict[str, torch.Tensor]:
        """Log of the mean of the members' answer distributions, ``{name: (B, n_answers)}``.

        A window that one member cannot score (non-finite) is non-finite in the ensemble too,
        so :meth:`aggregate` drops and counts it rather than answering from fewer members.
        """
        per_member = [
            m.score_tasks(codes, tasks, batch_size=batch_size, method=method) for m in self.members
        ]
        out = {}
        for name in per_member[0]:
            logp = torch.stack([torch.log_softmax(s[name].double(), dim=-1) for s in per_member])
            mixed = torch.logsumexp(logp, dim=0) - math.log(len(self.members))
            finite = torch.stack([torch.isfinite(s[name]).all(-1) for s in per_member]).all(0)
            mixed[~finite] = float("nan")
            out[name] = mixed.float()
        return out

    def aggregate(self, scores: torch.Tensor, task: TaskSpec | str) -> dict[str, Any]:
        """A scan's answer from its windows' ensemble scores (as for one model)."""
        return self.members[0].aggregate(scores, task)


def load_models(folders: list[str | Path]) -> FMRILanguageModel | LMEnsemble:
    """One folder: its :class:`FMRILanguageModel`; several: their :class:`LMEnsemble`."""
    if not folders:
        raise ValueError("no model folder given")
    for f in folders:
        if not Path(f).exists():
            raise FileNotFoundError(f"model folder {str(f)!r} does not exist")
    if len(folders) == 1:
        return FMRILanguageModel.from_pretrained(folders[0])
    return LMEnsemble.from_pretrained(folders)
