"""``rlscope.attach(trainer, ...)``: add rlscope to a trainer the user already has, in one line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Attachment:
    """What :func:`attach` added: the token observatory (GRPO trainers), the pass@k callback, the run-store writer."""

    observatory: object | None = None
    passk: object | None = None
    weights: object | None = None
    writer: object | None = None


def attach(trainer, run_dir=None, observatory: bool | None = None, passk: dict | None = None,
           weights: dict | bool | None = None, step_offset: int = 0, **observatory_kwargs) -> Attachment:
    """Attach rlscope to ``trainer`` (a ``transformers.Trainer``, e.g. TRL's GRPOTrainer or SFTTrainer).

    * ``observatory`` (default: on for ``trl.GRPOTrainer`` and subclasses): token probes every step, see
      :class:`~rlscope.callbacks.observatory.Observatory`; ``observatory_kwargs`` go to it. It is placed first among
      the trainer's callbacks so that W&B and the run store see its metrics.
    * ``passk``: options of :class:`~rlscope.callbacks.passk.PassKCallback`, e.g. ``{"task": "chainsum", "n": 16,
      "every": 50}``; the base model's curve is measured before the first update.
    * ``weights``: ``True`` or options of :class:`~rlscope.callbacks.weights.WeightsCallback`, e.g. ``{"every": 50,
      "k": 16}``: weight-update geometry against W_0 (snapshotted before the first update, under ``run_dir``/weights/w0).
    * ``run_dir``: write every trainer log (TRL's metrics and rlscope's) and the pass@k curves to an rlscope run store.
    """
    from trl import GRPOTrainer

    from rlscope.callbacks.store import RunStoreCallback
    from rlscope.store import RunWriter

    is_grpo = isinstance(trainer, GRPOTrainer)
    if observatory is None:
        observatory = is_grpo
    if observatory and not is_grpo:
        raise TypeError(f"the token observatory taps TRL's GRPOTrainer; {type(trainer).__name__} is not one "
                        f"(use observatory=False, e.g. with passk=... for an SFTTrainer)")
    if observatory_kwargs and not observatory:
        raise TypeError(f"observatory options given but the observatory is off: {sorted(observatory_kwargs)}")
    out = Attachment()
    if run_dir is not None:
        out.writer = RunWriter(run_dir)
        if trainer.accelerator.is_main_process:
            out.writer.write_meta({"attached_to": type(trainer).__name__,
                                   "world_size": trainer.accelerator.num_processes, "seed": trainer.args.seed,
                                   "status": "running"})
        trainer.add_callback(RunStoreCallback(out.writer, step_offset=step_offset))
    if observatory:
        from rlscope.callbacks.observatory import Observatory

        out.observatory = Observatory(step_offset=step_offset, **observatory_kwargs).bind(trainer)
        trainer.callback_handler.callbacks.insert(0, out.observatory)
    if passk:
        from rlscope.callbacks.passk import PassKCallback

        out.passk = PassKCallback(writer=out.writer, step_offset=step_offset, **passk)
        trainer.add_callback(out.passk)
    if weights:
        from pathlib import Path

        from rlscope.callbacks.weights import WeightsCallback

        opts = dict(weights) if isinstance(weights, dict) else {}
        if run_dir is not None:
            opts.setdefault("snapshot_dir", Path(run_dir) / "weights" / "w0")
        out.weights = WeightsCallback(writer=out.writer, step_offset=step_offset, **opts)
        trainer.add_callback(out.weights)
    return out
