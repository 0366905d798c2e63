"""The ``weights`` source: the selected matrices of the training model against W_0, for any ``transformers.Trainer``.

W_0 is snapshotted at the start of training, before the first update (in CPU memory, or memory-mapped safetensors
when large), into the run directory (``weights/w0``) so that a resumed run keeps its reference instead of taking a
new one. Under DDP only the main process reads the (replicated) parameters, with no collective; under DeepSpeed ZeRO-3
each parameter is gathered on its own (``GatheredParameters``) on every rank, one at a time, while the main process
computes: the view it returns streams the matrices, and the other ranks take part in the same gathers in the same
order inside :meth:`WeightSource.collect`.
"""

from __future__ import annotations

import time
from pathlib import Path

from rlscope.callbacks.sources import SOURCES, Source
from rlscope.common import model_is_partitioned
from rlscope.probes.weights import DEFAULT_PATTERNS, WeightView, select_matrices
from rlscope.weight_geometry import Snapshot, full_parameters


@SOURCES.register("weights")
class WeightSource(Source):
    """Options: ``patterns`` (globs over parameter names; default q, k, v, o, gate, up, down of every layer),
    ``snapshot_dir`` (where W_0 is written; default the run's ``weights/w0``), ``max_memory_gb`` (W_0 kept in memory up
    to this, default a quarter of RAM; beyond it, read back from disk one matrix at a time)."""

    name = "weights"

    def __init__(self, patterns=DEFAULT_PATTERNS, snapshot_dir=None, max_memory_gb: float | None = None):
        self.patterns = tuple(patterns)
        self.snapshot_dir = snapshot_dir
        self.max_memory = None if max_memory_gb is None else int(max_memory_gb * 2 ** 30)
        self.names: list[str] = []
        self.snapshot: Snapshot | None = None

    def bind(self, trainer, engine) -> None:
        super().bind(trainer, engine)
        if self.snapshot_dir is None and engine.run_dir is not None:
            self.snapshot_dir = Path(engine.run_dir) / "weights" / "w0"

    def setup(self, ctx) -> None:
        all_names = [n for n, _ in ctx.model.named_parameters()]
        self.names = select_matrices(all_names, self.patterns)
        if not self.names:
            raise ValueError(f"weights source: no parameter matches {list(self.patterns)}; the model has e.g. "
                             f"{all_names[:6]}")
        if Snapshot.exists(self.snapshot_dir):  # a resumed run: the reference taken before its first update
            self.snapshot = Snapshot.load(self.snapshot_dir) if ctx.is_main else None
            missing = set(self.names) - set(self.snapshot.names) if self.snapshot is not None else set()
            if missing:
                raise ValueError(f"weights source: the stored W_0 in {self.snapshot_dir} lacks {sorted(missing)[:3]}")
            return
        t0 = time.perf_counter()
        pairs = full_parameters(ctx.model, self.names, materialize=ctx.is_main)
        if ctx.is_main:
            self.snapshot = Snapshot.take(pairs, self.snapshot_dir, self.max_memory)
            self.snapshot_seconds = time.perf_counter() - t0
        else:
            for _ in pairs:  # take part in the ZeRO-3 gathers
                pass

    def collect(self, ctx, probes):
        if not ctx.is_main:
            if model_is_partitioned(ctx.model):
                for _ in full_parameters(ctx.model, self.names, materialize=False):
                    pass
            return None
        snapshot = self.snapshot

        def matrices():
            for name, wt in full_parameters(ctx.model, self.names):
                yield name, snapshot[name], wt

        return WeightView(matrices())
