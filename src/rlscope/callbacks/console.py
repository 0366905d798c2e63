"""The console during a run: one progress bar with a few chosen numbers and the alarms as they fire, instead of
transformers' dict of every logged metric per step (which stays in the run store and W&B).

``RunArguments.console``: ``compact`` (this view), ``dicts`` (transformers' own printing), ``none`` (silent).
"""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

CONSOLE_MODES = ("compact", "dicts", "none")
# (label, names to try in order): the trainer's logs first, then the probes' latest scalars
SHOWN = [
    ("reward", ("reward",)),
    ("held-out", ("rlscope/passk/pass@1", "heldout/accuracy")),
    ("entropy", ("rlscope/entropy/mean", "entropy")),
    ("len", ("completions/mean_length", "rlscope/behavior/length_mean")),
    ("cov", ("rlscope/cov/mean",)),
    ("kept", ("rlscope/dynamic_sampling/kept_group_share",)),
    ("loss", ("loss",)),
]


def install_console(trainer, mode: str, engine=None, desc: str = "RL") -> "ConsoleView | None":
    """Set the trainer's console to ``mode``: remove transformers' printers unless ``dicts``; add the compact view
    for ``compact`` (its alarms, when ``engine`` has them, print through the bar)."""
    if mode not in CONSOLE_MODES:
        raise ValueError(f"console must be one of {', '.join(CONSOLE_MODES)}, got {mode!r}")
    if mode == "dicts":
        return None
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if mode == "none":
        return None
    view = ConsoleView(engine, desc)
    trainer.add_callback(view)
    if engine is not None and getattr(engine, "alarms", None) is not None:
        engine.alarms.announce = view.write
    return view


class ConsoleView(TrainerCallback):
    def __init__(self, engine=None, desc: str = "RL"):
        self.engine, self.desc = engine, desc
        self.bar = None
        self.values: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, dynamic_ncols=True,
                            unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs or "train_runtime" in logs:
            return
        latest = dict(getattr(self.engine, "last", None) or {})
        latest.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        for label, names in SHOWN:
            value = next((latest[n] for n in names if n in latest), None)
            if value is not None:
                self.values[label] = float(value)
        self.bar.set_postfix_str("  ".join(f"{k} {v:.3g}" for k, v in self.values.items()), refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write(self, message: str) -> None:
        """A line above the bar (an alarm as it fires)."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)
