"""The task interface: splits as rows, prompt rendering, a verifier, and TRL-ready reward functions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

from rlscope.common import keyword_options


class Task(ABC):
    """A verifiable task. ``rows(split)`` gives plain dict rows; ``reward_funcs()`` are TRL reward functions
    (``f(completions, **columns) -> list[float]``) reading the columns named in ``reward_columns``."""

    name: str = "task"
    max_completion_length: int = 64
    reward_columns: tuple[str, ...] = ()
    conversational: bool = False
    extra_options: tuple[str, ...] = ()  # options taken through **kwargs of __init__

    @classmethod
    def option_names(cls) -> list[str]:
        """The options a task of this class accepts (its constructor's keywords and ``extra_options``)."""
        return sorted({*keyword_options(cls.__init__, skip=1), *cls.extra_options})

    @abstractmethod
    def rows(self, split: str) -> list[dict]:
        ...

    @abstractmethod
    def score(self, completion: str, row: dict) -> float:
        """Reward of one completion text for one row (1.0 correct, 0.0 wrong)."""

    def render_prompt(self, row: dict, tokenizer) -> str:
        """The prompt as text ready for ``generate`` (chat template applied when the task is conversational)."""
        if self.conversational:
            return tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        return row["prompt"]

    def demonstration(self, row: dict) -> str | None:
        """A reference completion for a training row (the SFT target of interleaving schedules), or None.

        Default: the row's ``completion`` column when it has one (a gold *answer* is not a demonstration)."""
        value = row.get("completion")
        return value if isinstance(value, str) and value else None

    def reward_funcs(self) -> list[Callable]:
        task = self

        def correctness_reward(completions, **columns):
            missing = [c for c in task.reward_columns if c not in columns]
            if missing:
                raise KeyError(f"task {task.name!r}: the dataset has no column(s) {missing} needed by its reward")
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            rows = [{k: columns[k][i] for k in task.reward_columns} for i in range(len(texts))]
            return [task.score(t, r) for t, r in zip(texts, rows)]

        correctness_reward.__name__ = f"{self.name}_correct"
        return [correctness_reward]

    def dataset(self, split: str):
        """The split as a ``datasets.Dataset``."""
        from datasets import Dataset

        rows = self.rows(split)
        if not rows:
            raise ValueError(f"task {self.name!r}: split {split!r} is empty")
        return Dataset.from_list(rows)

    def check_columns(self, dataset, split: str, extra: tuple[str, ...] = ()) -> None:
        """Raise a clear error when ``dataset`` lacks a column the trainer or the reward needs."""
        need = ("prompt",) + tuple(self.reward_columns) + tuple(extra)
        missing = [c for c in need if c not in dataset.column_names]
        if missing:
            from rlscope.errors import UsageError

            raise UsageError(f"task {self.name!r}, split {split!r}: the dataset has no column(s) {missing} (it has "
                             f"{dataset.column_names}); the trainer and the reward need {list(need)}")
