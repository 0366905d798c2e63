"""Direct W&B logging for callbacks that measure outside ``Trainer.log`` (pass@k, weights): queued until a W&B run
exists (``report_to wandb`` starts it in the trainer's own W&B callback), on rlscope's single step axis."""

from __future__ import annotations

LOG_STEP_KEY = "rlscope/step"  # the run's step, as callbacks put it into Trainer.log
STEP_KEY = f"train/{LOG_STEP_KEY}"  # the same key after transformers' WandbCallback prefixes it


class WandbQueue:
    """``put(step, payload_factory)``; ``flush()`` logs everything queued once ``wandb.run`` is up (main process).

    ``payload_factory(wandb) -> dict`` builds the payload (plots, tables) only when W&B is there to take it.
    """

    def __init__(self):
        self._items: list[tuple[float, object]] = []
        self._axis = False

    def put(self, step: float, payload_factory) -> None:
        self._items.append((step, payload_factory))
        self.flush()

    def flush(self) -> None:
        if not self._items:
            return
        try:
            import wandb
        except ImportError:
            self._items.clear()
            return
        if wandb.run is None:
            return
        if not self._axis:
            wandb.define_metric(STEP_KEY)
            wandb.define_metric("train/rlscope/*", step_metric=STEP_KEY)
            self._axis = True
        for step, factory in self._items:
            payload = factory(wandb)
            payload[STEP_KEY] = step
            wandb.log(payload)
        self._items.clear()
