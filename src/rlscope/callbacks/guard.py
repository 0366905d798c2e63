"""Non-finite gradients: a step whose gradient holds NaN or inf is seen, counted and -- per the ``nonfinite`` option --
kept out of the weights.

One NaN in the logits of one step makes the loss NaN, every gradient NaN after clipping (the global norm is NaN), and
after the optimizer step every weight NaN: the rest of the run trains a broken model while its metrics quietly turn
into NaN. The guard looks at the gradients where the Trainer is about to step (``on_pre_optimizer_step``, after the
clipping; under DDP the gradients are already all-reduced, so every rank decides the same):

* ``flag``: count and log it, change nothing (what ``rlscope.attach`` does by default: it observes);
* ``skip_step`` (rlscope's recipes): drop the step's gradients so the optimizer leaves the weights and its moments as
  they were (the learning-rate schedule still advances), and train on;
* ``stop``: skip it, and stop training at the end of the step (``meta.json``: ``stopped``).

Logged with the trainer's metrics: ``rlscope/nonfinite/steps`` (steps with a non-finite gradient since the last log),
``rlscope/nonfinite/params`` (how many parameters had one, at the last such step), ``rlscope/nonfinite/total``; and
the logged ``loss`` of such a log is NaN (the Trainer's ``logging_nan_inf_filter`` would put the average of earlier
losses there: a number nobody computed).
DeepSpeed steps inside its engine (no callback event before the update; it has its own overflow check for fp16), so
the guard does not act there.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

MODES = ("flag", "skip_step", "stop")
log = logging.getLogger("rlscope")


class NonFiniteGuard(TrainerCallback):
    def __init__(self, mode: str = "flag", step_offset: int = 0):
        from rlscope.registry import check_names

        check_names("nonfinite mode", [mode], MODES)
        self.mode, self.step_offset = mode, step_offset
        self.since_log, self.total, self.params = 0, 0, 0
        self.stopped_at: int | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return control
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True))):
            return control  # a finite global norm: every gradient is finite (one fused pass, ~8x faster per step)
        bad = sum(1 for g in grads if not torch.isfinite(g).all())  # the count (a norm that overflowed counts none)
        if not bad:
            return control
        step = self.step_offset + state.global_step + 1
        self.since_log += 1
        self.total += 1
        self.params = bad
        acted = {"flag": "the update goes ahead (nonfinite: flag)",
                 "skip_step": "the update is skipped (nonfinite: skip_step)",
                 "stop": "the update is skipped and training stops (nonfinite: stop)"}[self.mode]
        if state.is_world_process_zero:
            log.warning("rlscope: step %d: %d parameters have NaN/inf gradients; %s", step, bad, acted)
        if self.mode in ("skip_step", "stop"):
            for p in model.parameters():
                p.grad = None  # the optimizer skips parameters without a gradient: weights and moments unchanged
        if self.mode == "stop":
            control.should_training_stop = True
            self.stopped_at = step
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            if self.since_log and "loss" in logs:  # the Trainer's logging_nan_inf_filter would log a made-up loss
                logs["loss"] = float("nan")
            logs["rlscope/nonfinite/steps"] = float(self.since_log)
            logs["rlscope/nonfinite/total"] = float(self.total)
            logs["rlscope/nonfinite/params"] = float(self.params if self.since_log else 0)
            self.since_log = 0
