"""The ``weights`` source: the selected matrices of the training model against W_0, for any ``transformers.Trainer``.

W_0 is snapshotted at the start of training, before the first update (in CPU memory, or memory-mapped safetensors
when large), into the run directory (``weights/w0``) so that a resumed run keeps its reference instead of taking a
new one.

The matrices are split across ranks (:func:`rlscope.weight_geometry.split_matrices`: by size, the same split on every
rank): each rank keeps W_0 of its share only, computes the per-matrix statistics of its share with the weights
probe's own per-matrix computation (:func:`rlscope.probes.weight_matrix.matrix_results`, keeping each matrix's warm starts
between probes, and in the run directory's ``weights/warm`` for a resume), and the results are gathered to the main
process, whose probe aggregates them. One process computes them all the same way, and offline
(:func:`rlscope.weight_geometry.offline_geometry`) the probe runs the same computation itself, so the numbers do not
depend on the number of processes. Under DDP each rank reads its share of
the (replicated) parameters with no collective; under DeepSpeed ZeRO-3 every rank takes part in the gather of every
parameter (``GatheredParameters``, one at a time) and the rank that owns it keeps a CPU copy: the copies are made in
chunks of bounded memory, each chunk computed after its gathers, so that ranks compute in parallel.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import torch

from rlscope.adapters import LoraMatrix, LoraWeight, base_weight, find_lora, oriented, plain_name
from rlscope.callbacks.sources import SOURCES, Source
from rlscope.common import model_is_partitioned, multi_rank
from rlscope.probes.weight_matrix import (DEFAULT_PATTERNS, MATRIX_OPTIONS, MatrixResult, matrix_results,
                                          select_matrices)
from rlscope.probes.weights import WeightView
from rlscope.topsvd import TopSVD
from rlscope.weight_geometry import (ResidentW0, Snapshot, compute_device, device_budget, full_numel, full_parameters,
                                     physical_memory_bytes, split_matrices)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _barrier() -> None:
    import torch.distributed as dist

    if multi_rank():
        dist.barrier()


@SOURCES.register("weights")
class WeightSource(Source):
    """Options: ``patterns`` (globs over parameter names; default q, k, v, o, gate, up, down of every layer),
    ``snapshot_dir`` (where W_0 is written; default the run's ``weights/w0``), ``max_memory_gb`` (per process: W_0 of
    the process's share kept in memory up to this, default a quarter of RAM divided by the processes on the node;
    beyond it, read back from disk one matrix at a time; the same budget bounds the ZeRO-3 copies of W_t),
    ``device`` (``auto``: compute where the weights live -- on a GPU run W_t is read in place and W_0 kept on the
    device; ``cpu``: the host sweep, for a GPU run that wants its memory), ``w0_device_fraction`` (on a GPU, W_0 is
    kept on the device up to this share of its free memory, the rest streamed from pinned host memory; the same
    budget bounds the ZeRO-3 copies of W_t there)."""

    name = "weights"

    def __init__(self, patterns=DEFAULT_PATTERNS, snapshot_dir=None, max_memory_gb: float | None = None,
                 device: str = "auto", w0_device_fraction: float = 0.1):
        if not 0 <= w0_device_fraction <= 1:
            raise ValueError(f"weights source: w0_device_fraction must be in [0, 1], got {w0_device_fraction}")
        self.device_choice, self.w0_fraction = device, float(w0_device_fraction)
        self.device = torch.device("cpu")  # where the probe computes (setup: compute_device)
        self.w0: ResidentW0 | None = None
        self.patterns = tuple(patterns)
        self.snapshot_dir = snapshot_dir
        self.max_memory = None if max_memory_gb is None else int(max_memory_gb * 2 ** 30)
        self.names: list[str] = []
        self.mine: list[str] = []  # the matrices this rank computes
        self.chunks: list[list[str]] = []  # ZeRO-3: consecutive names gathered before their share is computed
        self.snapshot: Snapshot | None = None
        self.cache: dict[str, dict] = {}  # per matrix: W_0's triplets, warm starts (this rank's share)
        self.options: dict[str, dict] = {}  # per probe on this source: its options (defaults filled in)
        self.warm_dir: Path | None = None  # where the warm starts are kept for a resume (the run's weights/warm)
        self._w0_saved: set[str] = set()

    def bind(self, trainer, engine) -> None:
        super().bind(trainer, engine)
        if engine is not None and engine.run_dir is not None:
            if self.snapshot_dir is None:
                self.snapshot_dir = Path(engine.run_dir) / "weights" / "w0"
            self.warm_dir = Path(engine.run_dir) / "weights" / "warm"

    def check(self, probe_name: str, options: dict) -> None:
        from rlscope.probes import get_probe

        self.options[probe_name] = {**get_probe(probe_name).options, **options}

    def _budget(self) -> int:
        if self.max_memory is not None:
            return self.max_memory
        return physical_memory_bytes() // 4 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    def _select(self, model) -> None:
        """The measured matrices by plain name: every adapted matrix (LoRA: W_base + s B A) and every trainable one
        matching the patterns; frozen matrices without an adapter are left out (they do not move)."""
        params = dict(model.named_parameters())
        self.lora = find_lora(model)
        adapter_parts = {p for lm in self.lora.values() for p in (lm.base, lm.a, lm.b)}
        self.param_of = {plain_name(n): n for n, p in params.items() if p.requires_grad and n not in adapter_parts}
        candidates = list(dict.fromkeys([*self.lora, *self.param_of]))
        self.names = select_matrices(candidates, self.patterns)
        if not self.names:
            frozen = select_matrices([plain_name(n) for n in params], self.patterns)
            why = (f"the {len(frozen)} matching ones are frozen and carry no adapter" if frozen
                   else f"the model has e.g. {list(params)[:6]}")
            raise ValueError(f"weights source: no trainable or adapted matrix matches {list(self.patterns)}: {why}")
        self.sizes = [full_numel(params[self.lora[n].base if n in self.lora else self.param_of[n]])
                      for n in self.names]

    def _parts(self, name: str) -> list[str]:
        """The parameters a matrix is read from: itself, or an adapter's base weight, A and B."""
        lm = self.lora.get(name)
        return [lm.base, lm.a, lm.b] if lm is not None else [self.param_of[name]]

    def _snapshot_keys(self, names: list[str]) -> list[str]:
        """What W_0 keeps of ``names``: a matrix; for an adapter its A_0 and B_0 (the base weight is frozen)."""
        return [k for n in names for k in ((f"{n}#lora_A", f"{n}#lora_B") if n in self.lora else (n,))]

    def _read(self, model, names: list[str], mine: set[str], where, bases: bool = True
              ) -> Iterator[tuple[str, object]]:
        """``(name, W_t)`` for the matrices of ``names`` in ``mine``: a tensor, or a :class:`LoraWeight` (base, B, A)
        for an adapted one (``bases`` False: its base left out, None). ``where``: the host (a copy) or None (in
        place). Under ZeRO-3 every rank joins the gather of every part of ``names``; otherwise a frozen base is read
        in place (dequantized when stored in 4/8 bits)."""
        partitioned = model_is_partitioned(model)
        flat = [(n, p) for n in names for p in self._parts(n)
                if partitioned or n in mine and (n not in self.lora or p != self.lora[n].base)]
        want = {p for n, p in flat if n in mine and (bases or n not in self.lora or p != self.lora[n].base)}
        got: dict[str, list] = {}
        parts = full_parameters(model, [p for _, p in flat], materialize=want.__contains__, device=where)
        for (n, _), (_, t) in zip(flat, parts):
            if n in mine:
                got.setdefault(n, []).append(t)
        for n in names:
            if n not in mine:
                continue
            lm: LoraMatrix | None = self.lora.get(n)
            if lm is None:
                yield n, got[n][0]
                continue
            if partitioned:
                base, a, b = got[n]
                base = None if base is None else oriented(lm, base)
            else:
                a, b = got[n]
                base = base_weight(lm) if bases else None
                base = base if base is None or where is None else base.to(where)
            dev = a.device if base is None else base.device
            yield n, LoraWeight(base, b.to(dev), a.to(dev), lm.scaling)

    def setup(self, ctx) -> None:
        self._select(ctx.model)
        world, rank = _world()
        sizes = self.sizes
        owner = split_matrices(sizes, world)
        self.mine = [n for n, r in zip(self.names, owner) if r == rank]
        self.device = compute_device(ctx.model, self.names, self.device_choice)
        budget = self._budget()
        device_budget_bytes = device_budget(self.device, self.w0_fraction) if self.device.type != "cpu" else None
        chunk_budget = budget if device_budget_bytes is None else device_budget_bytes
        self.chunks, chunk, share = [], [], [0] * world  # ZeRO-3 chunks: no rank holds more than the budget of W_t
        for name, size, r in zip(self.names, sizes, owner):
            if chunk and (share[r] + size) * 4 > chunk_budget:
                self.chunks.append(chunk)
                chunk, share = [], [0] * world
            chunk.append(name)
            share[r] += size
        if chunk:
            self.chunks.append(chunk)
        full_mine = [n for n in self.mine if n not in self.lora]
        if Snapshot.exists(self.snapshot_dir):  # a resumed run: the reference taken before its first update
            self.snapshot = Snapshot.load(self.snapshot_dir, keep=self._snapshot_keys(self.mine),
                                          max_memory_bytes=budget)
            missing = set(self._snapshot_keys(self.names)) - set(self.snapshot.names)
            if missing:
                raise ValueError(f"weights source: the stored W_0 in {self.snapshot_dir} lacks {sorted(missing)[:3]}")
            self._load_warm(ctx.step)
        else:
            t0 = time.perf_counter()
            mine = set(self.mine)

            def pairs():  # every rank joins every ZeRO-3 gather; each keeps its share (an adapter: A_0 and B_0)
                for n, t in self._read(ctx.model, self.names, mine, "cpu", bases=False):
                    if isinstance(t, LoraWeight):
                        yield from ((f"{n}#lora_A", t.A), (f"{n}#lora_B", t.B))
                    else:
                        yield n, t

            self.snapshot = Snapshot.take(pairs(), self.snapshot_dir, budget, index=False)
            _barrier()  # every rank's share is written before the index marks W_0 whole
            if ctx.is_main and _world()[1] == 0 and self.snapshot_dir is not None:
                Snapshot.write_index(self.snapshot_dir, self._snapshot_keys(self.names))
            self.snapshot_seconds = time.perf_counter() - t0
        self.w0 = ResidentW0(self.snapshot, full_mine, self.device, device_budget_bytes)
        self.lora0 = {n: (self.snapshot[f"{n}#lora_A"].to(self.device), self.snapshot[f"{n}#lora_B"].to(self.device))
                      for n in self.mine if n in self.lora}  # A_0, B_0: r x (in + out), kept where the probe computes

    def _compute(self, pairs, names: list[str], options: dict) -> list[MatrixResult]:
        """Each ``(name, W_t)`` of ``pairs`` (in the order of ``names``) against its W_0 on the compute device
        (:class:`ResidentW0`: the next one's copy overlaps this one's computation)."""
        out = []
        stream = self.w0.stream([n for n in names if n not in self.lora])
        for name, wt in pairs:
            try:
                if isinstance(wt, LoraWeight):
                    a0, b0 = self.lora0[name]
                    w0 = LoraWeight(wt.base, b0, a0, wt.scaling)  # the base is frozen: W_0's is W_t's
                else:
                    name0, w0 = next(stream)
                    assert name == name0, (name, name0)
                out.extend(matrix_results([(name, w0, wt)], self.cache, **options))
            except Exception as exc:  # noqa: BLE001 -- sent to the main process, whose probe raises it
                out.append(MatrixResult(name, error=f"{type(exc).__name__}: {exc}"))
        return out

    # -- warm starts kept across a resume ------------------------------------------------------------------------
    # W_0's triplets (computed once, the costly cold start) go to ``w0.<world>.<rank>.safetensors`` when first
    # computed; the warm-start bases of W_t and dW after each probe to ``step<N>.<world>.<rank>.safetensors`` (the
    # last KEEP_STEPS probes). A resumed run reads every rank's files, so a different number of processes finds its
    # share too, and takes the bases of its last probe at or before the resume step: its next probe starts where the
    # uninterrupted run's would have, and gives the same numbers.
    KEEP_STEPS = 3

    def _save_warm(self, step: int) -> None:
        from safetensors.torch import save_file

        if self.warm_dir is None:
            return
        world, rank = _world()
        self.warm_dir.mkdir(parents=True, exist_ok=True)
        new = [n for n in self.mine if n in self.cache and "svd0" in self.cache[n] and n not in self._w0_saved]
        if new:
            tensors, meta = {}, {}
            for n in new:
                c = self.cache[n]
                s0 = c["svd0"]
                for key in ("U", "S", "V", "basis"):
                    if getattr(s0, key) is not None:
                        tensors[f"{n}\t{key}"] = getattr(s0, key).detach().cpu().contiguous()
                meta[n] = {"bound": s0.bound, "rel_gap": s0.rel_gap, "passes": s0.passes, "certified": s0.certified,
                           "fro0": c.get("fro0")}
            _write(save_file, tensors, {"meta": json.dumps(meta)},
                   self.warm_dir / f"w0.{world}.{rank}.step{step:08d}.safetensors")
            self._w0_saved.update(new)
        tensors = {f"{n}\t{key}": self.cache[n][key].detach().cpu().contiguous() for n in self.mine
                   if n in self.cache for key in ("basis_t", "basis_dw", "lora_qa", "lora_qb") if self.cache[n].get(key) is not None}
        _write(save_file, tensors, {}, self.warm_dir / f"step{step:08d}.{world}.{rank}.safetensors")
        mine = sorted(self.warm_dir.glob(f"step*.{world}.{rank}.safetensors"))
        for old in mine[:-self.KEEP_STEPS]:
            old.unlink(missing_ok=True)

    def _load_warm(self, step: int) -> None:
        from safetensors import safe_open

        if self.warm_dir is None or not self.warm_dir.is_dir():
            return
        mine = set(self.mine)
        for path in sorted(self.warm_dir.glob("w0.*.safetensors")):
            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["meta"])
                keys = set(f.keys())
                for n, m in meta.items():
                    if n not in mine:
                        continue
                    get = (lambda key, _n=n: f.get_tensor(f"{_n}\t{key}").to(self.device) if f"{_n}\t{key}" in keys
                           else None)
                    self.cache.setdefault(n, {})["svd0"] = TopSVD(get("U"), get("S"), get("V"), m["bound"],
                                                                  m["rel_gap"], m["passes"], get("basis"),
                                                                  m["certified"])
                    if m.get("fro0") is not None:
                        self.cache[n]["fro0"] = m["fro0"]
                    self._w0_saved.add(n)
        files: dict[int, list[Path]] = {}
        for path in self.warm_dir.glob("step*.safetensors"):
            if int(path.name[4:12]) > step:  # of steps this run does again: not to be read by a later resume
                path.unlink(missing_ok=True)
            else:
                files.setdefault(int(path.name[4:12]), []).append(path)
        for path in files[max(files)] if files else ():
            with safe_open(str(path), "pt") as f:
                for flat in f.keys():
                    n, key = flat.split("\t")
                    if n in mine:  # warm starts live where the probe computes
                        self.cache.setdefault(n, {})[key] = f.get_tensor(flat).to(self.device)

    def collect(self, ctx, probes):
        due = [p for p in probes if p.name in self.options] or probes
        options = self.options.get(due[0].name, {}) if due else {}
        options = {k: v for k, v in options.items() if k in MATRIX_OPTIONS}
        mine = set(self.mine)
        results: list[MatrixResult] = []
        # on the host: copies (today's CPU sweep); on a GPU: W_t read in place (ZeRO-3: the gathered matrix stays there)
        where = "cpu" if self.device.type == "cpu" else None
        if model_is_partitioned(ctx.model):
            for chunk in self.chunks:  # gathers on every rank, then each rank computes its copies
                held = list(self._read(ctx.model, chunk, mine, where))
                results.extend(self._compute(held, [n for n, _ in held], options))
        else:
            results = self._compute(self._read(ctx.model, self.mine, mine, where), self.mine, options)
        self._save_warm(ctx.step)
        world, rank = _world()
        if world > 1:
            import torch.distributed as dist

            gathered = [None] * world if rank == 0 else None
            dist.gather_object(results, gathered, dst=0)
            if rank != 0:
                return None
            results = [r for part in gathered for r in part]
        order = {n: i for i, n in enumerate(self.names)}
        results.sort(key=lambda r: order[r.name])
        return WeightView(results=results, options=options)


def _write(save_file, tensors: dict, metadata: dict, path: Path) -> None:
    """A safetensors file written whole (a temporary file, then renamed): a crash leaves the previous one."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata or None)
    os.replace(tmp, path)
