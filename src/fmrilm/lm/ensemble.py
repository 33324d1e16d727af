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

A member may answer only some of the tasks (``answers``; on the command line ``TASK=FOLDER``):
each task is then the mixture of the members that answer it. This is how a run's step
checkpoints chosen on validation serve, one step per task (``benchmarks/lm_checkpoints.py``):
a multi-task model grows over-confident on sex and diagnosis long before age stops improving.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from fmrilm.lm.model import FMRILanguageModel
from fmrilm.lm.tasks import TaskSpec

__all__ = ["LMEnsemble", "load_models", "parse_member"]


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
    answers : list of (list of str or None), optional
        For each member, the tasks it answers (None: all). Every task needs at least one member.
        Default: every member answers every task.
    """

    def __init__(
        self, members: list[FMRILanguageModel], answers: list[list[str] | None] | None = None
    ):
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
        names = [t.name for t in first.tasks]
        answers = list(answers) if answers is not None else [None] * len(members)
        if len(answers) != len(members):
            raise ValueError(f"answers has {len(answers)} entries for {len(members)} members")
        self.answers = [list(names) if a is None else list(a) for a in answers]
        for i, a in enumerate(self.answers):
            unknown = sorted(set(a) - set(names))
            if unknown or not a:
                raise ValueError(
                    f"ensemble member {i} is to answer {unknown or 'no task'}; tasks: {names}"
                )
        unanswered = [n for n in names if not any(n in a for a in self.answers)]
        if unanswered:
            raise ValueError(f"no ensemble member answers {unanswered}")
        self.members = members
        self.sources: list[str] | None = None  # member folders, when loaded from them

    def members_of(self, task: str) -> list[int]:
        """Indices of the members that answer ``task``."""
        return [i for i, a in enumerate(self.answers) if task in a]

    @classmethod
    def from_pretrained(
        cls, folders: list[str | Path], answers: list[list[str] | None] | None = None
    ) -> LMEnsemble:
        """Load each member with :meth:`FMRILanguageModel.from_pretrained`."""
        ensemble = cls([FMRILanguageModel.from_pretrained(f) for f in folders], answers)
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
                {**m.describe(), "source": src, "answers": a}
                for m, src, a in zip(self.members, sources, self.answers, strict=True)
            ]
        }

    @property
    def train_summary(self) -> dict[str, Any]:
        """The members' training records; ``train_seconds`` is the sum over their training runs
        (all were trained; checkpoints of one run, same ``run_dir``, count that run once)."""
        members = [m.train_summary or {} for m in self.members]
        steps = {s.get("global_step") for s in members}
        runs = {s.get("run_dir") or f"member {i}": s for i, s in enumerate(members)}
        return {
            "train_seconds": sum(float(s.get("train_seconds") or 0.0) for s in runs.values()),
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
        """Log of the mean of the answering members' distributions, ``{name: (B, n_answers)}``.

        A window that one member cannot score (non-finite) is non-finite in the ensemble too,
        so :meth:`aggregate` drops and counts it rather than answering from fewer members.
        """
        names = [t if isinstance(t, str) else t.name for t in (tasks or self.tasks)]
        per_member = {}
        for i, m in enumerate(self.members):
            mine = [n for n in names if n in self.answers[i]]
            if mine:
                per_member[i] = m.score_tasks(codes, mine, batch_size=batch_size, method=method)
        out = {}
        for name in names:
            scores = [per_member[i][name] for i in self.members_of(name)]
            logp = torch.stack([torch.log_softmax(s.double(), dim=-1) for s in scores])
            mixed = torch.logsumexp(logp, dim=0) - math.log(len(scores))
            finite = torch.stack([torch.isfinite(s).all(-1) for s in scores]).all(0)
            mixed[~finite] = float("nan")
            out[name] = mixed.float()
        return out

    def aggregate(self, scores: torch.Tensor, task: TaskSpec | str) -> dict[str, Any]:
        """A scan's answer from its windows' ensemble scores (as for one model)."""
        return self.members[0].aggregate(scores, task)


def parse_member(spec: str | Path) -> tuple[Path, list[str] | None]:
    """``FOLDER`` (answers every task) or ``TASK[,TASK...]=FOLDER`` -> ``(folder, tasks)``."""
    if Path(spec).exists():
        return Path(spec), None
    head, sep, tail = str(spec).partition("=")
    if sep and head and tail:
        tasks = [t.strip() for t in head.split(",") if t.strip()]
        if not Path(tail).exists():
            raise FileNotFoundError(f"model folder {tail!r} (of {str(spec)!r}) does not exist")
        return Path(tail), tasks
    raise FileNotFoundError(f"model folder {str(spec)!r} does not exist")


def load_models(specs: list[str | Path]) -> FMRILanguageModel | LMEnsemble:
    """One folder: its :class:`FMRILanguageModel`; several: their :class:`LMEnsemble`.

    Each spec is a model folder, or ``TASK[,TASK...]=FOLDER`` for a member that answers only
    those tasks; the same folder named for several tasks is loaded once.
    """
    if not specs:
        raise ValueError("no model folder given")
    folders: list[Path] = []
    answers: list[list[str] | None] = []
    for spec in specs:
        folder, tasks = parse_member(spec)
        same = [k for k, f in enumerate(folders) if f == folder and answers[k] is not None]
        if tasks is not None and same:  # age=A sex=A: one member A answering both
            answers[same[0]] = answers[same[0]] + tasks
            continue
        folders.append(folder)
        answers.append(tasks)
    if len(folders) == 1 and answers[0] is None:
        return FMRILanguageModel.from_pretrained(folders[0])
    if len(folders) == 1:
        raise ValueError(
            f"{folders[0]} is the only model: name it without TASK= to answer every task"
        )
    return LMEnsemble.from_pretrained(folders, answers)
