"""Recipes: YAML files read with TRL's ``TrlParser`` into three dataclasses (run, DAPO/GRPO training, model).

A recipe key that no dataclass knows is an error naming the key (with the closest known key), never ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from trl import ModelConfig, TrlParser

from rlscope.errors import UsageError
from rlscope.registry import UnknownName, check_names
from rlscope.trainers.dapo import DAPOConfig

WARM_START = "warm_start"
DEFAULT_PROBES = ["entropy", "cov", "behavior"]


def schedule_names() -> list[str]:
    from rlscope.trainers.schedules import SCHEDULES

    return ["rl", WARM_START, *SCHEDULES.names()]


def _mapping(value, name: str) -> dict:
    """A mapping field given in YAML (a dict) or on the command line (JSON)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise UsageError(f"{name} must be a mapping (YAML) or JSON, got {value!r}") from exc
    if value is not None and not isinstance(value, dict):
        raise UsageError(f"{name} must be a mapping, got {value!r}")
    return dict(value or {})


@dataclass
class RunArguments:
    r"""What rlscope adds to a recipe (every field is a recipe key and a command-line flag).

    > Parameters that control the task and the run directory

    task, task_config, runs_dir, overwrite, num_processes

    > Parameters that control how SFT and RL share the run

    schedule, schedule_config, interleave_sft_batch_size, sft_steps, sft_learning_rate, sft_batch_size

    > Parameters that control held-out evaluation, the run store and the analysis at the end

    eval_heldout, eval_samples, rollout_log_every, analyze, nonfinite

    > Parameters that control the probes (``rlscope probes`` lists them, their options and default cadences)

    probes, probe_every, probe_options

    > Parameters that control the live alarms and the console

    alarms, console
    """

    # Parameters that control the task and the run directory
    task: str = field(default="chainsum", metadata={"help": "Task name: chainsum, gsm8k, math."})
    task_config: dict | str | None = field(default=None, metadata={
        "help": "Task options (a YAML mapping, or JSON on the command line), e.g. {seed: 0, n_heldout: 64}."})
    runs_dir: str = field(default="runs", metadata={"help": "Parent directory of run directories."})
    overwrite: bool = field(default=False, metadata={
        "help": "Start over in a run directory that holds an earlier run (its files are removed first). Without it "
                "such a run is refused (its steps would be stored twice) unless it resumes (resume_from_checkpoint)."})
    num_processes: int | None = field(default=None, metadata={
        "help": "The number of processes the recipe is written for (its launch line; its batch sizes assume it): "
                "launching with another number is an error naming both. Unset: any."})

    # Parameters that control how SFT and RL share the run
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

    # Parameters that control held-out evaluation, the run store and the analysis at the end
    eval_heldout: bool = field(default=True, metadata={
        "help": "Greedy held-out accuracy before and after RL (main process)."})
    eval_samples: int = field(default=8, metadata={
        "help": "Held-out sampled pass@1: samples per prompt at temperature 1 (0 = greedy only)."})
    rollout_log_every: int = field(default=1, metadata={"help": "Store rollouts every N steps (0 = never)."})
    analyze: bool = field(default=True, metadata={
        "help": "At the end of the run: every analysis (`rlscope analyze`, to analysis/analysis.json) and the HTML "
                "report (analysis/report.html); with report_to wandb, both go into the run's W&B run too (verdicts "
                "and numbers in its summary, the figures as images, the report as an HTML panel and an artifact)."})

    nonfinite: str = field(default="skip_step", metadata={
        "help": "A step whose gradients hold NaN/inf (rlscope.callbacks.guard): 'skip_step' (keep it out of the "
                "weights and train on), 'stop' (skip it and stop), or 'flag' (count it and let the update through). "
                "Counted in rlscope/nonfinite/steps either way."})

    # Parameters that control the probes
    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES), metadata={
        "help": "Probes that run, with their declared cadence (`rlscope probes` lists them): e.g. entropy cov "
                "behavior passk weights grad; `none` for no probes. A probe named in probe_every or probe_options "
                "runs too."})
    probe_every: dict | str | None = field(default=None, metadata={
        "help": "Cadence per probe (a YAML mapping, or JSON): N (every N optimizer steps, keeping the probe's "
                "declared start/end runs), 'off', or parts like '50+end', 'start,end'; e.g. {passk: 50, weights: 25}."})
    probe_options: dict | str | None = field(default=None, metadata={
        "help": "Options per probe or source (a YAML mapping, or JSON), e.g. {passk: {n: 16, max_prompts: 64}, "
                "weights: {k: 16}, tokens: {dump_every: 1, table_every: 50}}. pass@k samples from the run's task "
                "and seed unless told otherwise."})

    # Parameters that control the live alarms and the console
    alarms: dict | str | None = field(default=None, metadata={
        "help": "Live alarms (rlscope.callbacks.alarms): 'true' (the default: entropy collapse, zero-advantage "
                "groups, length, clip saturation, reward vs held-out, checked every 10 steps, firing at "
                "warn; plateau on request), 'false', or a mapping of their options (YAML, or JSON), e.g. {every: 5, stop_on: "
                "[entropy_collapse], thresholds: {entropy_collapse: {floor_share: 0.2}}}."})

    console: str = field(default="compact", metadata={
        "help": "What the console shows while training: 'compact' (a progress bar with reward, held-out accuracy, "
                "entropy, length, Cov(logp, A), kept-group share, and alarms as they fire), 'dicts' (transformers' "
                "dict of every logged metric per step), or 'none'. Every metric is in the run store either way."})

    def __post_init__(self):
        from rlscope.callbacks.console import CONSOLE_MODES

        check_names("console mode", [self.console], CONSOLE_MODES)
        from rlscope.callbacks.guard import MODES

        check_names("nonfinite mode", [self.nonfinite], MODES)
        if self.alarms is None or isinstance(self.alarms, bool):  # YAML true / false
            self.alarms = self.alarms is not False
        elif isinstance(self.alarms, str) and self.alarms.strip().lower() in ("true", "false", "none", "off", "on"):
            self.alarms = self.alarms.strip().lower() in ("true", "on")
        else:
            self.alarms = _mapping(self.alarms, "alarms")
        from rlscope.callbacks.alarms import AlarmConfig

        AlarmConfig.parse(self.alarms)  # unknown options, detectors and thresholds are named here
        self.task_config = _mapping(self.task_config, "task_config")
        from rlscope.tasks import TASKS

        task_cls = TASKS.get(self.task)  # an unknown task, or task option, is named here, before any work
        check_names("option", sorted(self.task_config), task_cls.option_names(), where=f"of task {self.task!r}")
        self.schedule_config = _mapping(self.schedule_config, "schedule_config")
        self.probe_every = _mapping(self.probe_every, "probe_every")
        self.probe_options = _mapping(self.probe_options, "probe_options")
        check_names("schedule", [self.schedule], schedule_names())
        if self.schedule == WARM_START and self.sft_steps <= 0:
            raise UsageError("schedule warm_start needs sft_steps > 0 (the SFT phase's length), e.g. sft_steps: 300")
        if self.schedule in ("rl", WARM_START) and self.schedule_config:
            raise UsageError(f"schedule_config is for the interleaving schedules, not {self.schedule!r}: remove it or "
                             f"pick one of {', '.join(schedule_names()[2:])}")
        if self.schedule not in ("rl", WARM_START):
            from rlscope.trainers.schedules import get_schedule

            get_schedule(self.schedule, **self.schedule_config)  # unknown parameters are named here
        if self.probes in (["none"], ["None"], "none"):
            self.probes = []
        from rlscope.callbacks.engine import plan

        spec, sources = self.probe_spec()
        plan(spec, sources=sources)  # unknown probes, options and cadences are named here

    def probe_spec(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """``(probes, sources)`` for :func:`rlscope.attach`: ``{probe: {cadence, options}}`` and ``{source: options}``."""
        from rlscope.callbacks.sources import SOURCES
        from rlscope.probes import PROBES

        names = list(dict.fromkeys([*self.probes, *self.probe_every,
                                    *(k for k in self.probe_options if k in PROBES)]))
        check_names("probe", names, PROBES.names())
        spec = {name: dict(self.probe_options.get(name, {})) for name in names}
        for name, cadence in self.probe_every.items():
            spec[name]["cadence"] = cadence
        sources = {}
        for name, opts in self.probe_options.items():
            if name not in PROBES:
                check_names("probe or source", [name], [*PROBES.names(), *SOURCES.names()],
                            where="in probe_options", plural="probes and sources")
                sources[name] = dict(opts)
        return spec, sources


DATACLASSES = (RunArguments, DAPOConfig, ModelConfig)


def known_keys() -> set[str]:
    return {f.name for dc in DATACLASSES for f in fields(dc)}


class _RecipeParser(TrlParser):
    """TrlParser whose argparse errors (a bad type, a missing value) are one :class:`UsageError` naming the key,
    instead of the usage of every flag of three dataclasses and ``SystemExit``."""

    def error(self, message: str):
        import re

        m = re.match(r"argument --([\w-]+)(?:/--[\w-]+)*: invalid (\w+) value: (.*)", message)
        if m:
            key, kind, value = m.groups()
            raise UsageError(f"{key.replace('-', '_')}: {value} is not a valid {kind} (a recipe key or a flag)")
        raise UsageError(f"{message} (recipe keys and flags: `rlscope train --help`)")


def _check_flags(argv: list[str]) -> None:
    """Every ``--flag`` is a recipe key (a misspelt one is named, with the closest key)."""
    known = known_keys() | {"config"}
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name = token[2:].split("=", 1)[0].replace("-", "_")
            if name not in known:
                raise UnknownName("flag", f"--{name}", [f"--{k}" for k in known], where="on the command line",
                                  listing="`rlscope train --help` lists them")


def _read_recipe_file(path: Path) -> dict:
    import yaml

    if not path.is_file():
        from rlscope.paths import recipes_dir

        try:
            shipped = recipes_dir()
            listing = f"; the recipes that ship with rlscope: {', '.join(sorted(p.name for p in shipped.glob('*.yaml')))} in {shipped}"
        except FileNotFoundError:
            listing = ""
        raise UsageError(f"recipe {path} does not exist{listing}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"recipe {path} is not valid YAML: {problem}{at}") from None
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} must be a YAML mapping of recipe keys (key: value lines), "
                         f"not a {type(data).__name__}")
    for key in sorted(set(data) - known_keys() - {"env"}):
        raise UnknownName("recipe key", key, known_keys(), where=f"in {path}",
                          listing="`rlscope train --help` lists them")
    return data


def parse_recipe(argv: list[str] | None = None) -> tuple[RunArguments, DAPOConfig, ModelConfig]:
    """Parse ``--config RECIPE.yaml`` plus command-line overrides (``--learning_rate 1e-5``). Every mistake -- a
    missing or malformed recipe, an unknown key or flag, a bad value -- is one :class:`UsageError` naming it."""
    argv = list(argv or [])
    where = "on the command line"
    if "--config" in argv:
        if argv.index("--config") + 1 >= len(argv):
            raise UsageError("--config needs a recipe path, e.g. --config recipes/tiny_dapo.yaml")
        from rlscope.paths import resolve_config

        at = argv.index("--config") + 1
        path = resolve_config(argv[at])  # a file, or a shipped recipe's name (from a wheel, in any directory)
        argv[at] = str(path)
        _read_recipe_file(path)
        where = f"in recipe {path} or on the command line"
    _check_flags(argv)
    parser = _RecipeParser(DATACLASSES, allow_abbrev=False)  # "--learning_rat" must not pass as "--learning_rate"
    try:
        return tuple(parser.parse_args_and_config(argv))
    except UsageError:
        raise
    except ValueError as exc:  # a dataclass's own check (TRL's, transformers'): what was given does not fit together
        message = str(exc)
        if "bf16/gpu" in message:
            message = ("bf16 is on (TRL's default) but this machine has no GPU: add `bf16: false` (or `use_cpu: "
                       "true`) to the recipe, or `--bf16 false` to the command line")
        raise UsageError(f"{message} ({where})") from exc
