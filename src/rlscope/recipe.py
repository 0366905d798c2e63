"""Recipes: YAML files read with TRL's ``TrlParser`` into three dataclasses (run, DAPO/GRPO training, model).

A recipe key that no dataclass knows is an error naming the key (with the closest known key), never ignored.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from trl import ModelConfig, TrlParser

from rlscope.trainers.dapo import DAPOConfig

WARM_START = "warm_start"


def schedule_names() -> tuple[str, ...]:
    from rlscope.trainers.schedules import SCHEDULES as INTERLEAVE

    return ("rl", WARM_START, *INTERLEAVE)


@dataclass
class RunArguments:
    """What rlscope adds to a recipe: the task, the run directory, the SFT warm start, held-out evaluation."""

    task: str = field(default="chainsum", metadata={"help": "Task name: chainsum, gsm8k, math."})
    task_config: dict | str | None = field(default=None, metadata={
        "help": "Task options (a YAML mapping, or JSON on the command line), e.g. {seed: 0, n_heldout: 64}."})
    runs_dir: str = field(default="runs", metadata={"help": "Parent directory of run directories."})
    schedule: str = field(default="rl", metadata={
        "help": "SFT-RL schedule: 'rl' (RL only), 'warm_start' (an SFT phase of `sft_steps` with TRL's SFTTrainer, "
                "then RL from that checkpoint), or an interleaving schedule run inside one trainer: sft_then_rl, "
                "alternate, heat_on_low_accuracy, relift, hpt_mix, chord_token_weight (see "
                "rlscope.trainers.schedules; parameters in `schedule_config`)."})
    schedule_config: dict | str | None = field(default=None, metadata={
        "help": "Parameters of the interleaving schedule (a YAML mapping, or JSON), e.g. {buffer_size: 8}."})
    interleave_sft_batch_size: int = field(default=16, metadata={
        "help": "Demonstrations per SFT (micro-)batch inside the interleaving trainer."})
    sft_steps: int = field(default=0, metadata={"help": "SFT warm-start steps (schedule warm_start)."})
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "SFT learning rate."})
    sft_batch_size: int = field(default=64, metadata={"help": "SFT batch size per device."})
    eval_heldout: bool = field(default=True, metadata={
        "help": "Greedy held-out accuracy before and after RL (main process)."})
    eval_samples: int = field(default=8, metadata={
        "help": "Held-out sampled pass@1: samples per prompt at temperature 1 (0 = greedy only)."})
    rollout_log_every: int = field(default=1, metadata={"help": "Store rollouts every N steps (0 = never)."})
    observatory: bool = field(default=True, metadata={
        "help": "Token probes live (entropy, Cov(logp, A), behaviour) as rlscope/<family>/<stat>."})
    observatory_probes: list[str] = field(default_factory=lambda: ["entropy", "cov", "behavior"], metadata={
        "help": "Probe families the observatory runs."})
    observatory_every: int = field(default=1, metadata={"help": "Probe cadence in optimizer steps."})
    observatory_table_every: int = field(default=50, metadata={
        "help": "W&B rollouts Table every N steps (0 = never)."})
    passk_n: int = field(default=0, metadata={
        "help": "pass@k during training: samples per held-out prompt (0 = off). The base curve is measured before "
                "the first update."})
    passk_every: int = field(default=0, metadata={
        "help": "pass@k cadence in optimizer steps (0 = only before the first update and at the end)."})
    passk_temperature: float = field(default=1.0, metadata={"help": "pass@k sampling temperature."})
    passk_top_p: float = field(default=1.0, metadata={"help": "pass@k nucleus sampling top_p."})
    passk_max_prompts: int | None = field(default=None, metadata={
        "help": "pass@k on the first N held-out prompts (default: all)."})
    weights_every: int = field(default=0, metadata={
        "help": "Weight-update geometry (singular-subspace angles, singular-value change, rank-1 energy of W_t - W_0) "
                "every N optimizer steps and at the end (0 = off)."})
    weights_k: int = field(default=16, metadata={"help": "Weight geometry: top-k singular subspaces compared."})
    observatory_dump_every: int = field(default=0, metadata={
        "help": "Save each rank's per-token tensors every N steps under runs/<name>/tokens/ for offline "
                "recomputation (0 = never)."})

    def __post_init__(self):
        if isinstance(self.task_config, str):
            try:
                self.task_config = json.loads(self.task_config) if self.task_config.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"task_config must be a mapping (YAML) or JSON, got {self.task_config!r}") from exc
        self.task_config = dict(self.task_config or {})
        if isinstance(self.schedule_config, str):
            try:
                self.schedule_config = json.loads(self.schedule_config) if self.schedule_config.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"schedule_config must be a mapping (YAML) or JSON, got {self.schedule_config!r}") \
                    from exc
        self.schedule_config = dict(self.schedule_config or {})
        names = schedule_names()
        if self.schedule not in names:
            close = difflib.get_close_matches(self.schedule, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown schedule {self.schedule!r}; known: {list(names)}{hint}")
        if self.schedule == WARM_START and self.sft_steps <= 0:
            raise ValueError("schedule warm_start needs sft_steps > 0")
        if self.schedule in ("rl", WARM_START) and self.schedule_config:
            raise ValueError(f"schedule_config is for the interleaving schedules, not {self.schedule!r}")
        if self.schedule not in ("rl", WARM_START):
            from rlscope.trainers.schedules import get_schedule

            get_schedule(self.schedule, **self.schedule_config)  # unknown parameters are named here


DATACLASSES = (RunArguments, DAPOConfig, ModelConfig)


def known_keys() -> set[str]:
    return {f.name for dc in DATACLASSES for f in fields(dc)}


def parse_recipe(argv: list[str] | None = None) -> tuple[RunArguments, DAPOConfig, ModelConfig]:
    """Parse ``--config RECIPE.yaml`` plus command-line overrides (``--learning_rate 1e-5``)."""
    import yaml

    argv = list(argv or [])
    if "--config" in argv:
        path = Path(argv[argv.index("--config") + 1])
        if not path.exists():
            raise FileNotFoundError(f"recipe {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"recipe {path} must be a YAML mapping")
        unknown = sorted(set(data) - known_keys() - {"env"})
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known_keys(), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"recipe {path}: unknown key(s) {', '.join(hints)}")
    parser = TrlParser(DATACLASSES, allow_abbrev=False)  # "--learning_rat" must not pass as "--learning_rate"
    return tuple(parser.parse_args_and_config(argv))
