"""Clinical questions as text: task specifications, question templates and answer sets.

A task is one target column (``age``, ``sex``, ``diagnosis`` or any column / phenotype key of
the store) with a question template and a **closed set of answers**:

* classification: the labels (``female``/``male``, ``control``/``autism``, or the training
  split's distinct values);
* regression: a fixed grid of numbers (integers from the training minimum to maximum when the
  training values are integers, e.g. ages 6..64; otherwise ``grid_size`` evenly spaced values
  with a sensible number of decimals). A training answer is the grid value nearest to the truth;
  the prediction is the expectation over the grid under the model's renormalised probabilities,
  so it can fall between grid points and is always a number inside the grid's range.

Because answers are scored, never generated and parsed, an answer can always be read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["TaskSpec", "QUESTIONS", "build_tasks", "task_labels"]

QUESTIONS = {
    "age": "How old is this participant, in years?",
    "sex": "What is the sex of this participant?",
    "diagnosis": "Does this participant have autism, or are they a control?",
}
DEFAULT_GRID_SIZE = 41


@dataclass
class TaskSpec:
    """One question and its closed answer set.

    Attributes
    ----------
    name : str
        Target (store column or phenotype key).
    kind : {"regression", "classification"}
    question : str
        Question text.
    answers : list of str
        Answer texts, in order; for classification the labels (last = positive class).
    values : list of float or None
        Regression only: the number each answer stands for.
    """

    name: str
    kind: str
    question: str
    answers: list[str]
    values: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("regression", "classification"):
            raise ValueError(f"task kind must be regression or classification, got {self.kind!r}")
        if len(self.answers) < 2:
            raise ValueError(f"task {self.name!r} needs at least two answers")
        if len(set(self.answers)) != len(self.answers):
            raise ValueError(f"task {self.name!r} has duplicate answers")
        if self.kind == "regression":
            if self.values is None or len(self.values) != len(self.answers):
                raise ValueError(f"regression task {self.name!r} needs one value per answer")

    def answer_index(self, value: Any) -> int:
        """Index of the answer for a true value (-1 when the value is missing / unknown)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return -1
        if self.kind == "classification":
            text = str(value)
            return self.answers.index(text) if text in self.answers else -1
        try:
            v = float(value)
        except (TypeError, ValueError):
            return -1
        if not math.isfinite(v):
            return -1
        return int(np.argmin(np.abs(np.asarray(self.values) - v)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        return cls(**d)


def _format_number(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}" if decimals > 0 else str(int(round(x)))


def numeric_grid(values: np.ndarray, grid_size: int = DEFAULT_GRID_SIZE) -> tuple[list[float], int]:
    """Answer grid for training values: ``(grid, decimals)``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        raise ValueError("no finite values to build a numeric grid from")
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        hi = lo + 1.0
    integer = np.allclose(v, np.round(v))
    # integers (e.g. IQ) or ages: one answer per integer when that stays small enough
    if (integer or hi - lo >= 10) and math.ceil(hi) - math.floor(lo) + 1 <= 2 * grid_size:
        grid = np.arange(math.floor(lo), math.ceil(hi) + 1, dtype=float)
        return grid.tolist(), 0
    step = (hi - lo) / (grid_size - 1)
    decimals = max(0, -int(math.floor(math.log10(step))) + 1) if step < 1 else 0
    grid = np.unique(np.round(np.linspace(lo, hi, grid_size), decimals))
    return grid.tolist(), decimals


def task_labels(name: str, values: Any) -> list[str]:
    """Labels of a categorical target: the standard order for sex/diagnosis, else sorted."""
    known = {"sex": ["female", "male"], "diagnosis": ["control", "autism"]}
    present = sorted({str(v) for v in values if v is not None and not pd.isna(v)})
    if name in known:
        return known[name] + [p for p in present if p not in known[name]]
    return present


def build_tasks(
    table: pd.DataFrame,
    train_rows: np.ndarray,
    names: list[str],
    *,
    kinds: dict[str, str] | None = None,
    questions: dict[str, str] | None = None,
    grid_size: int = DEFAULT_GRID_SIZE,
) -> list[TaskSpec]:
    """Task specifications for target ``names``, fitted on the training rows only.

    Parameters
    ----------
    table : DataFrame
        Store table (``store.table``).
    train_rows : array of int
        Rows whose values define the answer sets (labels seen, numeric range).
    names : list of str
        Targets: standard columns or ``phenotypes`` keys.
    kinds : dict, optional
        Target -> ``"regression"``/``"classification"`` (default: inferred).
    questions : dict, optional
        Target -> question text (default: :data:`QUESTIONS` or "What is this participant's X?").
    grid_size : int
        Maximum grid size for non-integer numeric targets.

    Returns
    -------
    list of TaskSpec
    """
    from fmrilm.baselines.clinical import infer_task, target_values

    kinds, questions = dict(kinds or {}), dict(questions or {})
    tasks = []
    for name in names:
        try:
            col = target_values(table, name).to_numpy(dtype=object)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        train = [v for v in col[np.asarray(train_rows)] if v is not None and not pd.isna(v)]
        if not train:
            raise ValueError(f"target {name!r} has no value in the training split")
        kind = kinds.get(name) or infer_task(np.asarray(train, dtype=object))
        question = questions.get(name) or QUESTIONS.get(
            name, f"What is this participant's {name.replace('_', ' ')}?"
        )
        if kind == "classification":
            labels = task_labels(name, train)
            tasks.append(TaskSpec(name, kind, question, labels))
        else:
            grid, decimals = numeric_grid(np.asarray(train, dtype=float), grid_size)
            answers = [_format_number(g, decimals) for g in grid]
            tasks.append(
                TaskSpec(
                    name, kind, question, answers, [float(g) for g in grid], {"decimals": decimals}
                )
            )
    return tasks
