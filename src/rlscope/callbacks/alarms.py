"""Live alarms: the health analysis's cheap detectors (:mod:`rlscope.analysis.analyses.health`, the same functions
``rlscope analyze`` runs) on the run's in-memory history, every ``every`` steps while it trains.

Each alarm fires once, when its detector first reaches ``fire_at`` (default ``warn``): a one-line warning naming the
metric, the evidence and what to try; ``rlscope/alarm/<name>`` (1 info, 2 warn, 3 crit) in the store, the trainer's
logs and W&B; ``wandb.alert`` when W&B is online. A detector named in ``stop_on`` stops training cleanly
(``control.should_training_stop``) and the reason goes to the run's ``meta.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import TrainerCallback

logger = logging.getLogger("rlscope.alarms")

# plateau is available (detectors=[..., "plateau"]) but not on by default: live, "no significant rise yet" is not
# evidence of a plateau (the demo's accuracy was flat for its first 70 RL steps, then rose); it needs a test that
# rules out a meaningful rise before it can warn mid-run.
DEFAULT_DETECTORS = ("entropy_collapse", "zero_advantage", "length", "clip_saturation", "reward_vs_heldout")
ADVICE = {
    "entropy_collapse": "raise exploration: clip-higher (epsilon_high), Clip-Cov / KL-Cov (cov_intervention), a "
                        "higher temperature, or a lower learning rate",
    "zero_advantage": "most groups carry no gradient: dynamic sampling (DAPO), more generations per prompt, or "
                      "prompts matched to the model's level",
    "length": "completions hit the cap or collapse: raise max_completion_length, use overlong shaping "
              "(overlong_buffer_len), check the reward for length hacking",
    "clip_saturation": "the update is mostly clipped: lower the learning rate or num_iterations; if one-sided, "
                       "clip-higher (epsilon_high)",
    "plateau": "performance stopped improving: stop here, make the task harder, or revisit the reward",
    "reward_vs_heldout": "the reward rises but held-out accuracy does not: check the reward function for exploits",
    "heldout_decline": "held-out accuracy is falling: keep the best checkpoint, lower the learning rate, add a KL "
                       "term or mix in SFT data (forgetting), or widen the training prompts (overfitting)",
}
SEVERITY = {"ok": 0, "info": 1, "warn": 2, "crit": 3}


@dataclass
class AlarmConfig:
    """``rlscope.attach(trainer, alarms=...)``: ``True`` for these defaults, ``False`` for none, or a dict of them."""

    every: int = 10  # check every N trainer steps
    min_steps: int = 10  # no check before this many RL steps have logged
    fire_at: str = "warn"  # the lowest severity that fires: info, warn or crit
    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    stop_on: tuple[str, ...] = ()  # detectors whose alarm stops training
    thresholds: dict = field(default_factory=dict)  # {detector: {threshold: value}}, see rlscope.analysis.findings.THRESHOLDS

    @classmethod
    def parse(cls, value) -> "AlarmConfig | None":
        from rlscope.analysis.analyses.health import DETECTORS
        from rlscope.analysis.findings import THRESHOLDS, thresholds
        from rlscope.registry import check_names

        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, AlarmConfig):
            cfg = value
        elif isinstance(value, dict):
            known = set(cls.__dataclass_fields__)
            check_names("alarms option", list(value), sorted(known), where="in alarms=")
            cfg = cls(**{k: tuple(v) if k in ("detectors", "stop_on") else v for k, v in value.items()})
        else:
            raise ValueError(f"alarms must be True, False or a dict of {sorted(cls.__dataclass_fields__)}, got "
                             f"{value!r}")
        check_names("health detector", [*cfg.detectors, *cfg.stop_on], sorted(DETECTORS), where="in alarms=")
        check_names("health detector with thresholds", list(cfg.thresholds), sorted(THRESHOLDS),
                    where="in alarms thresholds=")
        for name, th in cfg.thresholds.items():
            thresholds(name, th)  # unknown threshold names: an error naming the known ones
        if cfg.fire_at not in ("info", "warn", "crit"):
            raise ValueError(f"alarms fire_at must be info, warn or crit, got {cfg.fire_at!r}")
        if cfg.every < 1:
            raise ValueError(f"alarms every must be >= 1, got {cfg.every}")
        cfg.stop_on = tuple(cfg.stop_on)
        cfg.detectors = tuple(dict.fromkeys([*cfg.detectors, *cfg.stop_on]))  # a stop_on detector runs
        return cfg


class Alarms(TrainerCallback):
    """The live alarms of one trainer; the probe engine (``engine``) gives the step axis, its probe results and the
    store. ``fired``: ``{name: {"step", "severity", "message"}}``."""

    def __init__(self, engine, config: AlarmConfig):
        self.engine, self.config = engine, config
        self.records: list[tuple[int, str, float]] = []
        self.fired: dict[str, dict] = {}
        self.stopped: dict | None = None
        self._first_step: int | None = None
        self.announce = logger.warning  # how a fired alarm is shown (the console view prints it above its bar)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        step = self.engine.step_offset + state.global_step
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.records.append((step, key, float(value)))

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._first_step is None:
            self._first_step = state.global_step
        if state.global_step - self._first_step + 1 < self.config.min_steps or state.global_step % self.config.every:
            return
        for alarm in self.check(self.engine.step_offset + state.global_step):
            if alarm["name"] in self.config.stop_on and self.stopped is None:
                control.should_training_stop = True
                self.stopped = {"by": "rlscope alarm", "alarm": alarm["name"], "step": alarm["step"],
                                "severity": alarm["severity"], "evidence": alarm["evidence"]}
                if self.engine.writer is not None:
                    self.engine.writer.write_meta({"stopped": self.stopped})
                logger.warning("rlscope: stopping training at step %s (stop_on=%s)", alarm["step"], alarm["name"])

    def frame(self):
        """The run so far as the analyses see it: the trainer's logs and the probes' scalars."""
        from rlscope.analysis.frame import RunFrame

        rows = list(self.records)
        for step, _name, scalars in self.engine.history:
            rows += [(step, k, float(v)) for k, v in scalars.items() if isinstance(v, (int, float))]
        steps, names, values = zip(*rows) if rows else ((), (), ())
        return RunFrame.from_long("live", "live", list(steps), list(names), list(values))

    def check(self, step: int) -> list[dict]:
        """Run the detectors now; returns the alarms that fired at this check (each fires once per run)."""
        from rlscope.analysis.analyses.health import run_detectors

        checks, _ = run_detectors(self.frame(), [d for d in self.config.detectors if d not in self.fired],
                                  self.config.thresholds)
        new = []
        for name, finding in checks.items():
            level = finding["severity"]
            if SEVERITY[level] < SEVERITY[self.config.fire_at]:
                continue
            message = (f"rlscope alarm [{level.upper()}] {finding['title'].lower()} at step {step}: "
                       f"{'; '.join(finding['evidence'])}. Try: {ADVICE.get(name, 'see rlscope analyze')}")
            alarm = {"name": name, "step": step, "severity": level, "message": message,
                     "evidence": finding["evidence"]}
            self.fired[name] = alarm
            new.append(alarm)
            self.announce(message)
            self.engine.publisher.probe_result(step, "alarm", {name: float(SEVERITY[level])})
            self._wandb_alert(finding["title"], message, level)
        return new

    @staticmethod
    def _wandb_alert(title: str, text: str, level: str) -> None:
        import sys

        wandb = sys.modules.get("wandb")
        run = getattr(wandb, "run", None) if wandb is not None else None
        if run is None or getattr(run.settings, "mode", "offline") in ("offline", "disabled"):
            return
        try:
            wandb.alert(title=f"rlscope: {title}", text=text,
                        level=wandb.AlertLevel.ERROR if level == "crit" else wandb.AlertLevel.WARN)
        except Exception as e:  # an alert that cannot be sent must not stop training
            logger.warning("rlscope: wandb.alert failed: %s", e)
