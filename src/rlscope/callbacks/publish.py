"""Where everything the engine measures goes: the run store, the trainer's logs, W&B -- one place, one step axis.

* Probe results (main process): scalars to ``metrics.jsonl`` at the probe's exact step as ``rlscope/<probe>/<stat>``;
  :class:`~rlscope.probes.Records` to their stream (``passk.jsonl``, ``weights.jsonl``); all of it to W&B on rlscope's
  step axis ``train/rlscope/step`` (histograms, curves and tables as W&B media).
* The trainer's own logs (every ``Trainer.log``: TRL's metrics, rlscope's trainer metrics) to ``metrics.jsonl`` at the
  run's step; the end-of-training summary under ``summary/``; a phase prefix (``sft/``) when given.
* W&B payloads wait in a queue until a W&B run exists (``report_to wandb`` starts it in the trainer's W&B callback;
  rlscope's recipes start it themselves). rlscope's step is W&B's default x-axis (``*`` -> ``train/rlscope/step``),
  and every row carries it: the trainer's own rows get it from :class:`StepAxis`, which runs just before
  transformers' ``WandbCallback``; a trainer without a W&B callback of its own (the recipe's SFT warm start) has its
  logs sent by the publisher, under ``train/<prefix><name>``.
"""

from __future__ import annotations

import math
import sys

from transformers import TrainerCallback

from rlscope.probes import Curves, Histogram, Records, Table

LOG_STEP_KEY = "rlscope/step"  # the run's step, as rlscope logs it
STEP_KEY = f"train/{LOG_STEP_KEY}"  # the W&B key (transformers' W&B callback prefixes trainer metrics with train/)
TRAINER_STEP_KEY = "train/global_step"  # the trainer's own step (transformers' W&B axis), logged beside it


class WandbQueue:
    """``put(step, payload_factory)``; ``flush()`` logs everything queued once ``wandb.run`` is up (main process).

    ``payload_factory(wandb) -> dict`` builds the payload (plots, tables) only when W&B is there to take it.
    """

    def __init__(self):
        self._items: list[tuple[float, object]] = []
        self._axis = False

    def put(self, step: float, payload_factory, trainer_step: int | None = None) -> None:
        self._items.append((step, payload_factory, trainer_step))
        self.flush()

    def flush(self) -> None:
        if "wandb" not in sys.modules and not self._items:
            return
        try:
            import wandb
        except ImportError:
            self._items.clear()
            return
        if wandb.run is None:
            return
        if not self._axis:  # after transformers' W&B callback made train/global_step the axis of everything
            wandb.define_metric(STEP_KEY)
            wandb.define_metric("*", step_metric=STEP_KEY, step_sync=True)
            self._axis = True
        for step, factory, trainer_step in self._items:
            payload = factory(wandb)
            payload[STEP_KEY] = step
            if trainer_step is not None:  # both axes in one row: readers recover the run's offset from it
                payload[TRAINER_STEP_KEY] = trainer_step
            wandb.log(payload)
        self._items.clear()


def to_wandb(wandb, key: str, value) -> dict:
    """W&B objects for one output under ``train/<key>``."""
    if isinstance(value, Histogram):
        return {f"train/{key}": wandb.Histogram(np_histogram=(value.counts, value.edges))}
    if isinstance(value, Curves):
        return {f"train/{key}": wandb.plot.line_series(xs=list(value.x), ys=[list(v) for v in value.series.values()],
                                                       keys=list(value.series), title=value.title,
                                                       xname=value.xname)}
    if isinstance(value, Table):
        return {f"train/{key}": wandb.Table(columns=list(value.columns), data=[list(r) for r in value.rows])}
    if isinstance(value, float) and math.isfinite(value):
        return {f"train/{key}": value}
    return {}


class StepAxis(TrainerCallback):
    """A trainer callback placed just before transformers' ``WandbCallback``: it adds rlscope's step to every
    ``Trainer.log`` so the trainer's own W&B rows carry the run's axis (after an SFT warm start the trainer's step is
    offset from it); the engine removes the key again before anything else sees the logs."""

    def __init__(self, step_offset: int = 0):
        self.step_offset = step_offset

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs[LOG_STEP_KEY] = self.step_offset + state.global_step

    @staticmethod
    def install(trainer, step_offset: int) -> None:
        """Insert before the trainer's ``WandbCallback`` (nothing to do when it has none)."""
        from transformers.integrations import WandbCallback

        callbacks = trainer.callback_handler.callbacks
        at = next((i for i, c in enumerate(callbacks) if isinstance(c, WandbCallback)), None)
        if at is not None:
            callbacks.insert(at, StepAxis(step_offset))


class Publisher:
    """Writes to ``writer`` (a :class:`rlscope.store.RunWriter`, or None) and W&B; call on the main process only.

    ``report_wandb``: send probe results to W&B; ``trainer_logs_to_wandb``: send the trainer's own logs too (for a
    trainer that reports to no W&B run itself)."""

    def __init__(self, writer=None, log_prefix: str = ""):
        self.writer, self.log_prefix = writer, log_prefix
        self.report_wandb = False
        self.trainer_logs_to_wandb = False
        self._wandb = WandbQueue()

    def begin(self, step: int) -> None:
        """Training starts (or resumes) at ``step``: records of later steps are dropped (they run again); W&B's axis
        is defined now, before the trainer's first rows."""
        if self.writer is not None:
            self.writer.truncate_after(step)
        if self.report_wandb:
            self._wandb.flush()

    def probe_result(self, step: int, name: str, result: dict, trainer_step: int | None = None) -> dict[str, float]:
        """Publish one probe's result at ``step`` (the run's step; ``trainer_step``: the trainer's, for W&B); returns
        its scalars by full metric name."""
        scalars, media = {}, {}
        for key, value in result.items():
            full = f"rlscope/{name}/{key}"
            if isinstance(value, Records):
                if self.writer is not None:
                    self.writer.log_records(value.stream, step, value.rows)
            elif isinstance(value, (Histogram, Curves, Table)):
                media[full] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                scalars[full] = float(value)
            else:
                raise TypeError(f"probe {name!r} returned {key!r} as {type(value).__name__}: a probe returns floats, "
                                f"Histogram, Curves, Table or Records")
        if self.writer is not None:
            self.writer.log_metrics(step, scalars)
        self._to_wandb(step, {**scalars, **media}, trainer_step)
        return scalars

    def media(self, step: int, key: str, value, trainer_step: int | None = None) -> None:
        """A W&B-only output (e.g. the rollouts Table) at ``step``."""
        self._to_wandb(step, {key: value}, trainer_step)

    def _to_wandb(self, step: int, items: dict, trainer_step: int | None = None) -> None:
        if not self.report_wandb or not items:
            return

        def payload(wandb, items=items):
            out = {}
            for key, value in items.items():
                out.update(to_wandb(wandb, key, value))
            return out

        self._wandb.put(step, payload, trainer_step)

    def trainer_logs(self, step: int, logs: dict) -> None:
        """One ``Trainer.log`` call (the end-of-training summary shares the last step: its names go under summary/)."""
        if not logs:
            return
        prefix = self.log_prefix + ("summary/" if "train_runtime" in logs else "")
        named = {f"{prefix}{k}": v for k, v in logs.items()}
        if self.writer is not None:
            self.writer.log_metrics(step, named)
        if self.trainer_logs_to_wandb:
            self._to_wandb(step, {k: float(v) for k, v in named.items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def flush(self) -> None:
        if self.report_wandb:
            self._wandb.flush()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
