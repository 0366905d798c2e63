"""The one probe engine: :class:`Observatory`, a ``TrainerCallback`` that runs every registered probe.

What it owns, once for all probes (the way cockpit's quantities work: track -> should_compute -> compute -> save):

* **cadence** -- each probe's :class:`~rlscope.cadence.Cadence` (its declared default, or the user's) decides when it
  is due; the decision depends only on the step, so every rank makes the same one and collectives stay matched;
* **sources** -- the probes that are due ask their source (:mod:`rlscope.callbacks.sources`) for its view: armed
  before the step (``prepare``), collected after it (``collect``, a collective on every rank);
* **the step axis** -- results are stored at the run's step: the trainer's step plus ``step_offset`` (an RL phase
  after an N-step SFT warm start starts at N + 1);
* **publishing** -- :class:`~rlscope.callbacks.publish.Publisher`: the run store, the trainer's logs, W&B;
* **memory** -- each probe's ``state`` (restored from the store on a resumed run when the probe declares how),
  ``history`` (every result's scalars), ``last`` (the latest value of every metric), ``latest`` (the latest whole
  result of each probe);
* **end of run** -- probes with ``at_end`` run once more after the last step (unless they just ran);
* **its own timings** -- ``rlscope/engine/*`` (``seconds``, ``<source>_seconds``, ``<source>_comm_bytes``), one row
  per step: the sums over every pass of the engine at that step (see :meth:`Observatory._engine_add`).

Probe functions run on the main process, except those declared ``per_rank`` (the token probes), which run on every
rank with its share of the step and combine the shares exactly (:mod:`rlscope.probes.reduce`); only the main
process publishes. ``rlscope.attach(trainer, ...)`` is the usual way in; an
``Observatory`` can also be made directly, bound (``obs.bind(trainer)``) and added as a callback.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from rlscope.cadence import Cadence
from rlscope.callbacks.publish import LOG_STEP_KEY, Publisher, StepAxis
from rlscope.callbacks.sources import SOURCES, Context, RankViews, Source
from rlscope.common import reports_to_wandb
from rlscope.probes import PROBES, Probe
from rlscope.probes.reduce import PeerFailed
from rlscope.registry import UnknownName

DEFAULT_PROBES = ("entropy", "cov", "behavior")
CADENCE_KEYS = ("every", "at_start", "at_end", "cadence")


@dataclass
class ProbeRun:
    """One enabled probe: its declaration, cadence and options, and the trainer step it last ran at."""

    probe: Probe
    cadence: Cadence
    options: dict
    last_step: int | None = None


def _as_spec(probes) -> dict:
    if probes is None:
        return {name: True for name in DEFAULT_PROBES}
    if isinstance(probes, str):
        return {probes: True}
    if isinstance(probes, dict):
        return dict(probes)
    return {name: True for name in probes}


def plan(probes=None, every=None, options=None, sources=None) -> tuple[dict[str, ProbeRun], dict[str, dict]]:
    """Enabled probes and the options of the sources they need, from the written forms users give.

    ``probes``: names, or ``{name: spec}`` with spec True (declared defaults), False (off), a cadence (int or string,
    see :class:`Cadence`) or a dict mixing cadence keys (``every``, ``at_start``, ``at_end``), the probe's options and
    its source's options. ``every``: one cadence for all enabled probes, or ``{name: cadence}``. ``options``:
    ``{name: {option: value}}`` (probe or source options). ``sources``: ``{source: {option: value}}``.
    """
    spec = _as_spec(probes)
    every = {} if every is None else every
    if not isinstance(every, dict):
        every = {name: every for name in spec}
    options = dict(options or {})
    for what, given in (("cadence", every), ("options", options)):
        stray = sorted(set(given) - set(spec))
        if stray:
            raise KeyError(f"{what} given for probes that are not enabled: {stray}; enabled: {sorted(spec)}")
    runs: dict[str, ProbeRun] = {}
    source_opts: dict[str, dict] = defaultdict(dict)
    for name, value in spec.items():
        probe = PROBES.get(name)
        opts = dict(value) if isinstance(value, dict) else {}
        cad = Cadence.parse(None if isinstance(value, dict) else value, probe.cadence)
        opts.update(options.get(name, {}))
        cad_given = {k: opts.pop(k) for k in CADENCE_KEYS if k in opts}
        if "cadence" in cad_given:
            cad = Cadence.parse(cad_given.pop("cadence"), probe.cadence)
        if cad_given:
            cad = Cadence.parse(cad_given, cad)
        if name in every:
            cad = Cadence.parse(every[name], cad)
        if cad.off:
            continue
        source_cls = SOURCES.get(probe.source)
        probe_opts = {k: opts.pop(k) for k in list(opts) if k in probe.options}
        known = [*CADENCE_KEYS, *probe.options, *source_cls.options()]
        for key, val in opts.items():
            if key not in source_cls.options():
                raise UnknownName("option", key, known, where=f"of probe {name!r}")
            have = source_opts[probe.source]
            if key in have and have[key] != val:
                raise ValueError(f"source {probe.source!r}: option {key!r} given twice with different values "
                                 f"({have[key]!r}, {val!r})")
            have[key] = val
        if probe.cost == "heavy" and cad.every == 1:
            warnings.warn(f"rlscope: probe {name!r} is heavy and set to run every step; expect slower training "
                          f"(e.g. every: 50)", stacklevel=2)
        runs[name] = ProbeRun(probe, cad, probe_opts)
    for src, opts in (sources or {}).items():
        SOURCES.get(src)
        if src not in {r.probe.source for r in runs.values()}:
            raise ValueError(f"options given for source {src!r}, but none of its probes is enabled")
        source_opts[src].update(opts)
    for run in runs.values():
        source_opts.setdefault(run.probe.source, {})
    return runs, dict(source_opts)


def save_state(run_dir: Path, probe, state: dict, step: int) -> None:
    """The probe's ``persist`` entries of its state (``{key: {name: tensor or tuple of tensors}}``) after the probe
    ran at ``step``, as ``<run>/state/<probe>/step<N>.safetensors`` (written whole: a temporary file, then renamed)."""
    import os

    from safetensors.torch import save_file

    tensors = {}
    for key in probe.persist:
        for name, value in (state.get(key) or {}).items():
            parts = value if isinstance(value, (tuple, list)) else (value,)
            for i, t in enumerate(parts):
                if isinstance(t, torch.Tensor):
                    tensors[f"{key}\t{name}\t{i}"] = t.detach().to("cpu").contiguous()
    d = Path(run_dir) / "state" / probe.name
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".step{step:08d}.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, d / f"step{step:08d}.safetensors")


def load_state(run_dir: Path, probe, state: dict, step: int) -> None:
    """A resumed run's probe state: the ``persist`` entries saved by the last run of the probe at or before ``step``
    (later files are of steps the resume runs again)."""
    from safetensors.torch import load_file

    files = sorted(p for p in (Path(run_dir) / "state" / probe.name).glob("step*.safetensors")
                   if int(p.stem[4:]) <= step)
    if not files:
        return
    parts: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    for flat, tensor in load_file(str(files[-1])).items():
        key, name, i = flat.split("\t")
        parts[(key, name)][int(i)] = tensor
    for (key, name), items in parts.items():
        value = tuple(items[i] for i in sorted(items))
        state.setdefault(key, {})[name] = value if len(value) > 1 else value[0]


class Observatory(TrainerCallback):
    """The probe engine (see the module docstring).

    Args:
        probes, every, options, sources: which probes run, when, and with what options (see :func:`plan`); default
            the token probes (entropy, cov, behavior).
        run_dir / writer: the rlscope run store to write (a directory, or a :class:`rlscope.store.RunWriter`);
            None = no store (W&B and ``history`` only).
        step_offset: where this trainer's step 0 lies on the run's step axis.
        log_prefix: prefix of the trainer's own logs in the store (e.g. ``sft/`` for an SFT phase).
        wandb: log into the W&B run open in this process although the trainer does not report to W&B -- its own logs
            too, as ``train/<log_prefix><name>`` on rlscope's step (a recipe's SFT warm start).
    """

    def __init__(self, probes=None, *, every=None, options=None, sources=None, run_dir=None, writer=None,
                 step_offset: int = 0, log_prefix: str = "", wandb: bool = False):
        self.runs, source_opts = plan(probes, every, options, sources)
        self.sources: dict[str, Source] = {name: SOURCES.get(name).build(opts) for name, opts in source_opts.items()}
        for run in self.runs.values():
            self.sources[run.probe.source].check(run.probe.name, run.options)
        if writer is None and run_dir is not None:
            from rlscope.store import RunWriter

            writer = RunWriter(run_dir)
        self.writer = writer
        self.run_dir = Path(run_dir) if run_dir is not None else (writer.dir if writer is not None else None)
        self.publisher = Publisher(writer, log_prefix)
        self.step_offset = step_offset
        self.wandb = wandb  # log into the open W&B run even when the trainer does not report to W&B
        self.state: dict[str, dict] = defaultdict(dict)
        self.history: list[tuple[int, str, dict[str, float]]] = []
        self.last: dict[str, float] = {}
        self.latest: dict[str, tuple[int, dict]] = {}
        self.trainer = None
        self.alarms = None  # live alarms (rlscope.callbacks.alarms.Alarms), set by attach
        self.failed: dict[str, dict] = {}  # probe -> {step, error}: disabled on every rank after it raised
        self._engine_pending: tuple[int, int | None, dict[str, float]] | None = None  # (step, trainer step, sums)

    # -- wiring ------------------------------------------------------------------------------------------------
    def bind(self, trainer) -> "Observatory":
        """Bind to ``trainer`` (sources install their taps and hooks); add the engine as a callback afterwards."""
        if self.trainer is not None:
            raise RuntimeError("this Observatory is already bound to a trainer; make one per trainer")
        self.trainer = trainer
        own = reports_to_wandb(trainer.args.report_to)
        self.publisher.report_wandb = own or bool(self.wandb)
        self.publisher.trainer_logs_to_wandb = bool(self.wandb) and not own
        if own:
            StepAxis.install(trainer, self.step_offset)
        for source in self.sources.values():
            source.bind(trainer, self)
        return self

    @property
    def _by_source(self) -> dict[str, list[ProbeRun]]:
        out: dict[str, list[ProbeRun]] = defaultdict(list)
        for run in self.runs.values():
            out[run.probe.source].append(run)
        return out

    def _ctx(self, state, when: str, model, processing_class, trainer_step: int | None = None) -> Context:
        ts = state.global_step if trainer_step is None else trainer_step
        return Context(self.step_offset + ts, ts, when, model, processing_class, state.is_world_process_zero, self)

    # -- trainer events ----------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.trainer is None:
            raise RuntimeError("the Observatory is not bound to a trainer: use rlscope.attach(trainer, ...) (or "
                               "obs.bind(trainer) before trainer.add_callback(obs))")
        if state.is_world_process_zero:
            self.publisher.begin(self.step_offset + state.global_step)
        ctx = self._ctx(state, "start", model, processing_class)
        for source in self.sources.values():
            source.setup(ctx)
        if state.global_step > 0:  # resumed: the start has passed; the probes' memory comes from the store
            self._restore(state)
        else:
            self._run(ctx, lambda r: r.cadence.at_start)

    def on_step_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.is_world_process_zero:
            self._engine_flush()  # the previous step is over: its engine timings are final
        upcoming = state.global_step + 1
        ctx = self._ctx(state, "step", model, processing_class, trainer_step=upcoming)
        for name, runs in self._by_source.items():
            due = [r.probe for r in runs if r.cadence.due(upcoming) and r.probe.name not in self.failed]
            if due or self.sources[name].wants(upcoming):
                self.sources[name].prepare(ctx, due)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._run(self._ctx(state, "step", model, processing_class), lambda r: r.cadence.due(state.global_step))

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        gs = state.global_step
        self._run(self._ctx(state, "end", model, processing_class), lambda r: r.cadence.at_end and r.last_step != gs)
        if state.is_world_process_zero:
            self._engine_flush()  # the last step's timings: its step pass and this end pass, summed
            self.publisher.close()

    def on_save(self, args, state, control, **kwargs):
        """A checkpoint of this step is on disk: a run resumed from it does not run the step again, so its engine
        timings are written now -- unless training ends at this step, where the end pass adds its own to them."""
        if state.is_world_process_zero and not (control.should_training_stop or state.global_step >= state.max_steps):
            self._engine_flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs.pop(LOG_STEP_KEY, None)  # StepAxis's key was for the W&B callback only
        if state.is_world_process_zero:
            self.publisher.trainer_logs(self.step_offset + state.global_step, logs or {})
            self.publisher.flush()

    # -- running probes ----------------------------------------------------------------------------------------
    def _agree_on_failures(self) -> None:
        """Every rank learns which probes the main process disabled (probe functions run there only), before any
        rank collects for them: a collective on one rank alone would hang the others."""
        import torch.distributed as dist

        from rlscope.common import multi_rank

        if multi_rank():
            shared = [self.failed]
            dist.broadcast_object_list(shared, src=0)
            self.failed = shared[0]

    def _run(self, ctx: Context, is_due) -> None:
        t0 = time.perf_counter()
        engine: dict[str, float] = {}
        self._agree_on_failures()
        for name, runs in self._by_source.items():
            source = self.sources[name]
            due = [r for r in runs if is_due(r) and r.probe.name not in self.failed]
            if not due and not (ctx.when == "step" and source.wants(ctx.trainer_step)):
                continue
            t1 = time.perf_counter()
            view = source.collect(ctx, [r.probe for r in due])
            for r in due:
                r.last_step = ctx.trainer_step
            if view is None:
                continue
            comm = view.local.comm if isinstance(view, RankViews) and view.local is not None else None
            sent = comm.bytes if comm is not None else 0
            for r in due:
                per_rank = isinstance(view, RankViews) and r.probe.per_rank
                v = view.for_probe(r.probe) if isinstance(view, RankViews) else view
                if v is None or not (ctx.is_main or per_rank):
                    continue
                t2 = time.perf_counter()
                result = self._call(r, v, ctx, per_rank)
                if result is None or not ctx.is_main:
                    continue
                result["seconds"] = time.perf_counter() - t2
                scalars = self.publisher.probe_result(ctx.step, r.probe.name, result, ctx.trainer_step)
                self.history.append((ctx.step, r.probe.name, scalars))
                if r.probe.persist and self.run_dir is not None:
                    save_state(self.run_dir, r.probe, self.state[r.probe.name], ctx.step)
                self.last.update(scalars)
                self.latest[r.probe.name] = (ctx.step, result)
            if ctx.is_main:
                engine[f"{name}_seconds"] = time.perf_counter() - t1
                if comm is not None:
                    engine[f"{name}_comm_bytes"] = float(comm.bytes - sent)
        if engine:
            engine["seconds"] = time.perf_counter() - t0
            self._engine_add(ctx.step, ctx.trainer_step, engine)

    def _engine_add(self, step: int, trainer_step: int | None, values: dict[str, float]) -> None:
        """Add one pass's engine timings to those of ``step``; they are written once, when the step is over
        (:meth:`_engine_flush`: at the next step's begin, at a checkpoint before the last step, at the end of training,
        after :meth:`measure`).

        Two passes can meet at one step: the last step's pass and the end-of-run pass (a probe with ``at_end`` that
        was not due at the last step, e.g. pass@k every 3 in a 10-step run whose weights probe runs every 2). The
        store holds each (step, metric) once, so ``rlscope/engine/seconds`` at such a step is the sum of the passes:
        all the time the engine took at that step, which is what the per-step overhead is read for (likewise
        ``<source>_seconds`` and ``<source>_comm_bytes``: each source's time and bytes over the step's passes)."""
        if self._engine_pending is not None and self._engine_pending[0] != step:
            self._engine_flush()
        if self._engine_pending is None:
            self._engine_pending = (step, trainer_step, {})
        sums = self._engine_pending[2]
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value

    def _engine_flush(self) -> None:
        """Write the pending step's engine timings (one row per metric; main process)."""
        if self._engine_pending is None:
            return
        step, trainer_step, sums = self._engine_pending
        self._engine_pending = None
        self.last.update(self.publisher.probe_result(step, "engine", sums, trainer_step))

    def _call(self, r: ProbeRun, view, ctx: Context, per_rank: bool) -> dict | None:
        """One probe on ``view``; None when it failed (then disabled). A per-rank probe ends with
        ``comm.finish`` on every rank, so a raise on one rank ends it on all (none waits in a collective)."""
        try:
            result = dict(r.probe.fn(view, self.state[r.probe.name], **r.options))
            if per_rank and not view.comm.finish(ok=True):
                raise PeerFailed("it raised on another rank")
            return result
        except PeerFailed as exc:  # the rank that raised has warned with its traceback
            self._disable(r.probe.name, ctx, exc, quiet=True)
        except Exception as exc:  # noqa: BLE001 -- one probe's bug must not end a training run
            if per_rank:
                view.comm.finish(ok=False)
            self._disable(r.probe.name, ctx, exc)
        return None

    def _disable(self, name: str, ctx: Context, exc: Exception, quiet: bool = False) -> None:
        """A probe raised (on the main process, or on any rank for a per-rank probe): it is off from now on, on every
        rank (:meth:`_agree_on_failures` at the next step), with a warning, ``rlscope/<probe>/failed`` = 1 at this
        step and the error in ``failed``."""
        import traceback

        error = f"{type(exc).__name__}: {exc}"
        if ctx.is_main or name not in self.failed:
            self.failed[name] = {"step": ctx.step, "error": error}
        if not quiet:
            warnings.warn(f"rlscope: probe {name!r} raised at step {ctx.step} ({error}); it is disabled on all ranks "
                          f"for the rest of the run, training goes on\n{traceback.format_exc()}", stacklevel=2)
        if ctx.is_main:
            self.last.update(self.publisher.probe_result(ctx.step, name, {"failed": 1.0}, ctx.trainer_step))

    def _restore(self, state) -> None:
        """The main process rebuilds each probe's memory from the store; probes that run on every rank (``per_rank``)
        then get that memory on every rank too, or a rank would compute with its own fresh state (e.g. the entropy
        probe's first-step threshold) and the reduced result would mix two thresholds. Call it on every rank."""
        import torch.distributed as dist

        from rlscope.common import multi_rank

        if state.is_world_process_zero and self.writer is not None:
            from rlscope.store import RunReader

            reader = RunReader(self.writer.dir)
            for run in self.runs.values():
                if run.probe.restore is not None:
                    run.probe.restore(reader, self.state[run.probe.name])
                if run.probe.persist:
                    load_state(self.writer.dir, run.probe, self.state[run.probe.name],
                               self.step_offset + state.global_step)
        shared = sorted(r.probe.name for r in self.runs.values() if r.probe.per_rank and (r.probe.restore or r.probe.persist))
        if shared and multi_rank():
            box = [{n: self.state[n] for n in shared}]
            dist.broadcast_object_list(box, src=0)
            if not state.is_world_process_zero:  # on rank 0 the box holds the very dicts
                for n in shared:
                    self.state[n].clear()
                    self.state[n].update(box[0][n])

    def measure(self, model, tokenizer=None, step: int = 0, when: str = "step") -> dict[str, float]:
        """Run every enabled probe now, outside a training loop, on ``model`` (single process): e.g. pass@k or weight
        geometry of a loaded checkpoint. ``when="start"`` makes it the reference measurement (pass@k's base). Probes
        whose source needs a running trainer (tokens, gradients) cannot be measured this way. Returns the scalars."""
        blocked = sorted({r.probe.name for r in self.runs.values() if r.probe.source in ("tokens", "gradients")})
        if blocked:
            raise ValueError(f"probes {blocked} read a running trainer's step; measure() runs the others")
        if when not in ("start", "step", "end"):
            raise ValueError(f"measure: when must be 'start', 'step' or 'end', got {when!r}")
        ctx = Context(self.step_offset + step, step, when, model, tokenizer, True, self)
        if not getattr(self, "_measured_setup", False):
            for source in self.sources.values():
                if self.trainer is None:
                    source.bind(None, self)  # the sources measure() allows need no trainer
                source.setup(ctx)
            self._measured_setup = True
        before = len(self.history)
        self._run(ctx, lambda r: True)
        self._engine_flush()  # one measure() is one pass: its engine timings are written with it
        return {k: v for _, _, scalars in self.history[before:] for k, v in scalars.items()}

    # -- reading back ------------------------------------------------------------------------------------------
    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric measured in this process (main), e.g. ``rlscope/entropy/mean``."""
        pairs = [(step, s[name]) for step, _, s in self.history if name in s]
        return [p[0] for p in pairs], [p[1] for p in pairs]
