"""Real-model tasks: GSM8K and MATH, loaded with ``datasets`` and verified with math-verify
(through ``trl.rewards.accuracy_reward``, as the Qwen2.5-Math recipes use).

On a GPU machine with hub access they load ``openai/gsm8k`` / ``DigitalLearningGmbH/MATH-lighteval``; here (no hub)
the tests point ``dataset_path`` at small local files in the same format, so the loading and reward code that the
real recipes run is the code that is tested.
"""

from __future__ import annotations

from functools import cached_property

from rlscope.errors import UsageError
from rlscope.tasks import TASKS
from rlscope.tasks.base import Task

SYSTEM_PROMPT = ("Please reason step by step, and put your final answer within \\boxed{}.")


def _load(hub_id: str, config: str | None, dataset_path: str | None, split: str):
    from datasets import load_dataset

    if dataset_path:
        from pathlib import Path

        if not Path(dataset_path).is_file():
            raise UsageError(f"task_config dataset_path {dataset_path}: no such file (a local .jsonl, .json or "
                             f".parquet file with the task's columns)")
        kind = "parquet" if str(dataset_path).endswith(".parquet") else "json"
        return load_dataset(kind, data_files={split: str(dataset_path)}, split=split)
    try:
        return load_dataset(hub_id, config, split=split)
    except (ConnectionError, FileNotFoundError, OSError) as exc:
        raise UsageError(f"dataset {hub_id} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                         f"without the hub (rlscope sets HF_HUB_OFFLINE=1 unless told otherwise) point "
                         f"task_config.dataset_path at a local copy") from exc


class _MathTask(Task):
    conversational = True
    reward_columns = ("solution",)
    hub_id: str = ""
    hub_config: str | None = None
    question_column: str = ""

    def __init__(self, dataset_path: str | None = None, heldout_path: str | None = None, n_heldout: int = 500,
                 max_completion_length: int = 1024, seed: int = 0):
        self.dataset_path, self.heldout_path = dataset_path, heldout_path
        self.n_heldout, self.max_completion_length, self.seed = n_heldout, max_completion_length, seed

    def solution_of(self, row: dict) -> str:
        raise NotImplementedError

    def _convert(self, ds, split):
        for col in (self.question_column,) + self.source_columns:
            if col not in ds.column_names:
                raise UsageError(f"task {self.name!r}, split {split!r}: the dataset has no {col!r} column (it has "
                                 f"{ds.column_names}); the task reads {self.question_column!r} and "
                                 f"{list(self.source_columns)}: rename the column in the file")
        return [{"prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                            {"role": "user", "content": r[self.question_column]}],
                 "solution": self.solution_of(r)} for r in ds]

    @cached_property
    def _train(self):
        return self._convert(_load(self.hub_id, self.hub_config, self.dataset_path, "train"), "train")

    @cached_property
    def _heldout(self):
        ds = _load(self.hub_id, self.hub_config, self.heldout_path or self.dataset_path,
                   "test" if self.heldout_path or not self.dataset_path else "train")
        return self._convert(ds, "heldout")[: self.n_heldout]

    def rows(self, split: str) -> list[dict]:
        if split == "train":
            return self._train
        if split == "heldout":
            return self._heldout
        raise ValueError(f"task {self.name!r} has splits ['heldout', 'train'], not {split!r}")

    def score(self, completion: str, row: dict) -> float:
        from trl.rewards import accuracy_reward

        value = accuracy_reward([[{"role": "assistant", "content": completion}]], [row["solution"]])[0]
        return float(value or 0.0)

    def reward_funcs(self):
        from trl.rewards import accuracy_reward

        return [accuracy_reward]


@TASKS.register("gsm8k")
class GSM8KTask(_MathTask):
    """GSM8K (Cobbe et al. 2021): the gold answer is the number after ``####``."""

    name = "gsm8k"
    hub_id, hub_config, question_column = "openai/gsm8k", "main", "question"
    source_columns = ("answer",)

    def solution_of(self, row):
        return "$" + row["answer"].split("####")[-1].strip().replace(",", "") + "$"


@TASKS.register("math")
class MATHTask(_MathTask):
    """MATH (Hendrycks et al. 2021): the gold solution carries its answer in ``\\boxed{}``."""

    name = "math"
    hub_id, hub_config, question_column = "DigitalLearningGmbH/MATH-lighteval", None, "problem"
    source_columns = ("solution",)

    def solution_of(self, row):
        return row["solution"]
