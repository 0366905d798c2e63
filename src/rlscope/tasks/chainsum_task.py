"""``chainsum`` as a :class:`~rlscope.tasks.base.Task` (the generator and verifier live in ``chainsum``)."""

from __future__ import annotations

from dataclasses import fields
from functools import cached_property

from rlscope.tasks import TASKS, chainsum
from rlscope.registry import check_names
from rlscope.tasks.base import Task


@TASKS.register("chainsum")
class ChainSumTask(Task):
    name = "chainsum"
    reward_columns = ("answer",)
    extra_options = tuple(f.name for f in fields(chainsum.ChainSumSpec))  # the generator's spec

    def __init__(self, seed: int = 0, n_train: int = 20000, n_sft: int = 20000, n_heldout: int = 64,
                 max_completion_length: int = 96, **spec):
        self.seed, self.n_train, self.n_sft, self.n_heldout = seed, n_train, n_sft, n_heldout
        self.max_completion_length = max_completion_length
        self.spec = chainsum.ChainSumSpec(**spec)
        check_names("chainsum scratchpad form", [self.spec.scratch], ["rewrite", "running"], where="in task_config")

    @cached_property
    def _splits(self):
        return chainsum.build_splits(self.seed, self.n_train, self.n_sft, self.n_heldout, spec=self.spec)

    def rows(self, split: str) -> list[dict]:
        if split not in self._splits:
            raise ValueError(f"task 'chainsum' has splits {sorted(self._splits)}, not {split!r}")
        return self._splits[split]

    def demonstration(self, row: dict) -> str | None:
        """The scratchpad solution of the row's chain (deterministic: no slip)."""
        import random

        return chainsum.demonstration(chainsum.terms_of(row["prompt"]), "scratch", random.Random(0),
                                      self.spec.modulus, self.spec.scratch, self.spec.keyed)

    def score(self, completion: str, row: dict) -> float:
        return chainsum.reward(completion, row["answer"])
