"""``rlscope.attach(trainer, ...)``: add rlscope to a trainer the user already has, in one line -- and the way rlscope's
own recipes attach it too."""

from __future__ import annotations

from rlscope.callbacks.engine import DEFAULT_PROBES, Observatory
from rlscope.callbacks.sources import SOURCES
from rlscope.probes import PROBES
from rlscope.registry import UnknownName


def attach(trainer, run_dir=None, *, probes=None, step_offset: int = 0, log_prefix: str = "", alarms=None,
           wandb: bool = False, nonfinite: str = "flag", **families) -> Observatory:
    """Attach the probe engine to ``trainer`` (a ``transformers.Trainer``: TRL's GRPOTrainer, SFTTrainer, a plain
    Trainer) and return it.

    * ``probes``: the probes to run, names or ``{name: spec}`` (see :func:`rlscope.callbacks.engine.plan`); default:
      the token probes (entropy, cov, behavior) on a ``trl.GRPOTrainer``, none on other trainers.
    * ``**families``: per probe, add or configure it: ``passk={"task": "chainsum", "n": 16, "every": 50}``,
      ``weights={"every": 50, "k": 16}``, ``grad=True``, ``cov=5`` (a cadence), ``entropy=False`` (off); per source,
      its options: ``tokens={"dump_every": 10}``. ``rlscope probes`` lists every probe with its options.
    * ``run_dir``: write every trainer log (TRL's metrics and rlscope's) and every probe result to an rlscope run
      store at the run's step (``step_offset`` + the trainer's step); ``log_prefix`` prefixes the trainer's own logs.
    * ``alarms``: live alarms (:mod:`rlscope.callbacks.alarms`): ``True``, ``False`` or a dict of
      :class:`~rlscope.callbacks.alarms.AlarmConfig` fields (``every``, ``fire_at``, ``detectors``, ``stop_on``,
      ``thresholds``); default: on for a ``trl.GRPOTrainer``. The engine's ``alarms`` attribute holds them.
    * ``nonfinite``: what a step with NaN/inf gradients does (:mod:`rlscope.callbacks.guard`): ``flag`` (count and
      log it, the default: attaching observes), ``skip_step`` (keep it out of the weights) or ``stop``; the engine's
      ``guard`` attribute holds it.
    * W&B: with ``report_to`` including ``wandb``, rlscope's results go into the trainer's W&B run on the axis
      ``train/rlscope/step`` (every trainer row carries it too); ``wandb=True`` logs into the W&B run already open in
      this process (``wandb.init``) even when the trainer reports elsewhere, the trainer's own logs included.
    """
    from rlscope.callbacks.alarms import AlarmConfig, Alarms

    from trl import GRPOTrainer

    if probes is None:
        probes = DEFAULT_PROBES if isinstance(trainer, GRPOTrainer) else ()
    spec = {name: True for name in probes} if not isinstance(probes, dict) else dict(probes)
    sources: dict[str, dict] = {}
    for name, value in families.items():
        if name in PROBES:
            spec[name] = value
        elif name in SOURCES:
            sources[name] = dict(value)
        else:
            raise UnknownName("probe or source", name, [*PROBES.names(), *SOURCES.names()],
                              plural="probes and sources")
    obs = Observatory(spec, sources=sources, run_dir=run_dir, step_offset=step_offset, log_prefix=log_prefix,
                      wandb=wandb)
    config = AlarmConfig.parse(isinstance(trainer, GRPOTrainer) if alarms is None else alarms)
    from rlscope.callbacks.guard import NonFiniteGuard

    obs.guard = NonFiniteGuard(nonfinite, step_offset=step_offset)
    obs.bind(trainer)
    trainer.add_callback(obs.guard)  # before the engine: its counts join the logs the engine stores
    trainer.add_callback(obs)
    obs.alarms = Alarms(obs, config) if config is not None else None
    if obs.alarms is not None:
        trainer.add_callback(obs.alarms)
    if obs.writer is not None and trainer.accelerator.is_main_process:
        obs.writer.write_meta({"attached_to": type(trainer).__name__, "world_size": trainer.accelerator.num_processes,
                               "seed": trainer.args.seed, "probes": {n: str(r.cadence) for n, r in obs.runs.items()},
                               "status": "running"})
    return obs
