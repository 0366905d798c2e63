"""Weight-update geometry, live: every N steps the selected matrices of the training model against W_0.

Works with any ``transformers.Trainer`` (TRL GRPOTrainer, SFTTrainer, a plain Trainer): it needs only the model the
trainer hands to callbacks. W_0 is snapshotted before the first update (kept in CPU memory, or as memory-mapped
safetensors when large; stored in the run so a resumed run keeps its reference). Under DDP the probe runs once, on
the main process, with no collective; under DeepSpeed ZeRO-3 each parameter is gathered on its own on every rank
(``GatheredParameters``) and only the main process computes. Results: ``rlscope/weights/<stat>`` (all matrices),
``rlscope/weights/kind/<q|k|v|o|gate|up|down>/<stat>``, ``rlscope/weights/layer/<i>/<stat>`` in the run store and W&B;
per-matrix values in ``weights.jsonl``.
"""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback

from rlscope.callbacks.wandb_log import WandbQueue
from rlscope.probes.weights import DEFAULT_PATTERNS, aggregate, select_matrices
from rlscope.weight_geometry import GeometryTracker, Snapshot, full_parameters, is_zero3_param


class WeightsCallback(TrainerCallback):
    """Args: ``every`` N optimizer steps (0 = only at the end), ``patterns`` (globs over parameter names; default q,
    k, v, o, gate, up, down of every layer), ``k`` (top-k subspaces), ``n_dw_sv`` (top singular values of dW logged),
    ``exact_below`` (exact SVD when min(m, n) <= this, randomized above), ``snapshot_dir`` (where W_0 is written; the
    run's ``weights/w0``), ``max_memory_gb`` (W_0 kept in memory up to this, default a quarter of RAM), ``writer``
    (RunWriter), ``step_offset``."""

    def __init__(self, every: int = 50, patterns=DEFAULT_PATTERNS, k: int = 16, n_dw_sv: int = 4,
                 exact_below: int = 1024, snapshot_dir=None, max_memory_gb: float | None = None, writer=None,
                 step_offset: int = 0, at_end: bool = True):
        if k < 1:
            raise ValueError(f"weights callback: k must be >= 1, got {k}")
        self.every, self.patterns, self.k, self.n_dw_sv, self.exact_below = every, tuple(patterns), k, n_dw_sv, exact_below
        self.snapshot_dir = snapshot_dir
        self.max_memory = None if max_memory_gb is None else int(max_memory_gb * 2 ** 30)
        self.writer, self.step_offset, self.at_end = writer, step_offset, at_end
        self.names: list[str] = []
        self.tracker: GeometryTracker | None = None
        self.last: dict[str, float] = {}
        self.history: list[tuple[int, dict[str, float]]] = []
        self._last_step = None
        self._wandb = WandbQueue()

    def _collective(self, model) -> bool:
        return any(is_zero3_param(p) for p in model.parameters())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        all_names = [n for n, _ in model.named_parameters()]
        self.names = select_matrices(all_names, self.patterns)
        if not self.names:
            raise ValueError(f"weights callback: no parameter matches {list(self.patterns)}; the model has e.g. "
                             f"{all_names[:6]}")
        main = state.is_world_process_zero
        if Snapshot.exists(self.snapshot_dir):
            snap = Snapshot.load(self.snapshot_dir)  # resumed run: the reference taken before its first update
            missing = set(self.names) - set(snap.names)
            if missing:
                raise ValueError(f"weights callback: the stored W_0 in {self.snapshot_dir} lacks {sorted(missing)[:3]}")
        else:
            t0 = time.perf_counter()
            pairs = full_parameters(model, self.names, materialize=main)
            if main:
                snap = Snapshot.take(pairs, self.snapshot_dir, self.max_memory)
                self.snapshot_seconds = time.perf_counter() - t0
            else:
                for _ in pairs:  # take part in the ZeRO-3 gathers
                    pass
                snap = None
        self.tracker = GeometryTracker(snap, self.k, self.n_dw_sv, self.exact_below) if main else None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._probe(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.at_end and self._last_step != state.global_step:
            self._probe(model, state)

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._wandb.flush()

    def _probe(self, model, state) -> None:
        main = state.is_world_process_zero
        self._last_step = state.global_step
        if not main and not self._collective(model):
            return  # DDP: replicated parameters, the main process alone computes
        t0 = time.perf_counter()
        per = {}
        for name, full in full_parameters(model, self.names, materialize=main):
            if main:
                per[name] = self.tracker.probe_one(name, full)
        if not main:
            return
        step = self.step_offset + state.global_step
        scalars = {f"rlscope/weights/{k}": v for k, v in aggregate(per).items()}
        scalars["rlscope/weights/seconds"] = time.perf_counter() - t0
        scalars["rlscope/weights/n_matrices"] = float(len(per))
        self.last = scalars
        self.history.append((step, scalars))
        if self.writer is not None:
            self.writer.log_metrics(step, scalars)
            self.writer.log_weights(step, per)
        finite = {f"train/{k}": v for k, v in scalars.items() if not (isinstance(v, float) and math.isnan(v))}
        self._wandb.put(step, lambda wandb, p=finite: dict(p))
