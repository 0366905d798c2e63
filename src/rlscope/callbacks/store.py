"""The run-store writer: every ``Trainer.log`` call goes to ``metrics.jsonl`` on the main process."""

from __future__ import annotations

from transformers import TrainerCallback

from rlscope.store import RunWriter


class RunStoreCallback(TrainerCallback):
    """Writes every ``Trainer.log`` call into the run store (long format) at ``step_offset + global_step``.

    ``step_offset`` places a phase on the run's single step axis (the RL phase after an N-step SFT warm start logs at
    N+1, N+2, ...). On a resumed run the records after the checkpoint's step are dropped first, so no step is stored
    twice.
    """

    def __init__(self, writer: RunWriter, step_offset: int = 0):
        self.writer = writer
        self.step_offset = step_offset

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.writer.truncate_after(self.step_offset + state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            if "train_runtime" in logs:  # the end-of-training summary shares the last step: keep its names apart
                logs = {f"summary/{k}": v for k, v in logs.items()}
            self.writer.log_metrics(self.step_offset + state.global_step, logs)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.writer.close()
