"""Weight geometry plumbing: the W_0 snapshot, parameter gathering (DDP / ZeRO-3), the split of the matrices across
ranks, offline checkpoints, rank-1 models.

The statistics themselves are the registered probe :func:`rlscope.probes.weights.weight_geometry` and its per-matrix
computation :func:`rlscope.probes.weight_matrix.matrix_results`; the live source (:mod:`rlscope.callbacks.sources.weights`,
each rank its share of the matrices) and :func:`offline_geometry` (saved checkpoints, one process) run the same
computation with the same per-matrix history, so both give the same numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch

from rlscope.common import is_partitioned
from rlscope.probes import scalars_of
from rlscope.probes.weight_matrix import DEFAULT_PATTERNS, select_matrices
from rlscope.probes.weights import WeightView, weight_geometry
from rlscope.topsvd import top_svd


def _safe_name(name: str) -> str:
    return name.replace("/", "_")


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2 ** 30


class Snapshot:
    """W_0 of the selected matrices: in CPU memory, or -- when larger than ``max_memory_bytes`` -- one safetensors file
    per matrix under ``directory``, read back memory-mapped one matrix at a time. Written to ``directory`` either way
    (when given), so a resumed run reuses its reference instead of taking a new one.
    """

    INDEX = "index.json"

    def __init__(self, directory: str | Path | None = None):
        self.dir = Path(directory) if directory is not None else None
        self.mem: dict[str, torch.Tensor] = {}
        self.names: list[str] = []
        self.on_disk = False

    @classmethod
    def exists(cls, directory) -> bool:
        return directory is not None and (Path(directory) / cls.INDEX).exists()

    @classmethod
    def load(cls, directory, keep=(), max_memory_bytes: int | None = None) -> "Snapshot":
        """The snapshot in ``directory``; the matrices named in ``keep`` are read into memory up to
        ``max_memory_bytes`` (default a quarter of RAM), the others are read from disk when asked for."""
        snap = cls(directory)
        index = json.loads((snap.dir / cls.INDEX).read_text())
        snap.names, snap.on_disk = index["names"], True
        budget = physical_memory_bytes() // 4 if max_memory_bytes is None else max_memory_bytes
        used = 0
        for name in keep:
            tensor = snap[name]
            used += tensor.numel() * tensor.element_size()
            if used > budget:
                snap.mem.clear()
                break
            snap.mem[name] = tensor
        return snap

    @classmethod
    def write_index(cls, directory, names: list[str]) -> None:
        """Mark the snapshot in ``directory`` whole (written last: a snapshot without it is taken again)."""
        from rlscope.store import atomic_write

        atomic_write(Path(directory) / cls.INDEX, json.dumps({"names": list(names), "format": 1}))

    @classmethod
    def take(cls, pairs, directory=None, max_memory_bytes: int | None = None, index: bool = True) -> "Snapshot":
        """``pairs``: iterable of (name, full tensor on CPU). ``index=False``: leave the index to the caller (ranks
        that each write their share of the matrices; the main process writes it once all are written)."""
        from safetensors.torch import save_file

        snap = cls(directory)
        budget = physical_memory_bytes() // 4 if max_memory_bytes is None else max_memory_bytes
        used = 0
        if snap.dir is not None:
            snap.dir.mkdir(parents=True, exist_ok=True)
        for name, tensor in pairs:
            tensor = tensor.detach().to("cpu").contiguous()
            snap.names.append(name)
            if snap.dir is not None:
                save_file({"w": tensor}, str(snap.dir / f"{_safe_name(name)}.safetensors"))
            used += tensor.numel() * tensor.element_size()
            if used <= budget:
                snap.mem[name] = tensor
                continue
            if snap.dir is None:
                raise MemoryError(f"W_0 snapshot needs {used / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB "
                                  f"in-memory budget, and no snapshot directory was given to spill to")
            snap.mem.clear()  # over budget (and stays so: `used` only grows): every matrix is read back from disk
            snap.on_disk = True
        if snap.dir is not None and index:
            cls.write_index(snap.dir, snap.names)  # last: W_0 is whole
        return snap

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.mem:
            return self.mem[name]
        if self.dir is None:
            raise KeyError(f"W_0 snapshot has no matrix {name!r}")
        from safetensors import safe_open

        with safe_open(str(self.dir / f"{_safe_name(name)}.safetensors"), framework="pt") as f:
            return f.get_tensor("w")


def full_parameters(model, names: list[str], materialize=True, device="cpu"
                    ) -> Iterator[tuple[str, torch.Tensor | None]]:
    """(name, full tensor) for each name: a copy on ``device`` (default the host); ``device=None``: where the
    parameter lives, read in place (no copy; a ZeRO-3 parameter's gathered tensor is cloned on its device, since the
    gather is released after). Under DeepSpeed ZeRO-3 each parameter is gathered on its own (``GatheredParameters``,
    a collective: call on every rank with the same names); ``materialize`` (a bool, or a predicate of the name)
    False takes part in the gathers without copying and yields None."""
    params = dict(model.named_parameters())
    for name in names:
        p = params[name]
        want = materialize(name) if callable(materialize) else materialize
        if is_partitioned(p):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                full = None
                if want:
                    full = p.data.detach().clone() if device is None else p.data.detach().to(device, copy=True)
        else:
            full = (p.detach() if device is None else p.detach().to(device, copy=True)) if want else None
        yield name, full


def compute_device(model, names: list[str], choice: str = "auto") -> torch.device:
    """Where the weights probe computes: ``auto`` -- where the selected parameters live (a GPU run computes on its GPU,
    W_t read in place; a ZeRO-3 shard's gathered matrix stays on the device); ``cpu`` -- on the host (today's CPU
    sweep, also for a GPU run that wants its device memory to itself); or a device name."""
    if choice != "auto":
        return torch.device(choice)
    params = dict(model.named_parameters())
    for name in names:
        if name in params:
            return params[name].device if params[name].device.type != "meta" else torch.device("cpu")
    return torch.device("cpu")


def device_budget(device: torch.device, fraction: float) -> int:
    """``fraction`` of the device's free memory (bytes); the host's: a quarter of RAM."""
    if device.type == "cuda":
        return int(fraction * torch.cuda.mem_get_info(device)[0])
    return physical_memory_bytes() // 4


class ResidentW0:
    """W_0 of this rank's matrices where the computation runs (:func:`compute_device`).

    On the host it is the snapshot itself (no copy). On a GPU the matrices are kept on the device up to ``budget``
    bytes (default 10% of its free memory: a 1.5B model's selected matrices in bf16 take 2.6 GB, ~2% of an H200); the
    others stay in pinned host memory and :meth:`stream` moves each to the device on a side stream while the
    previous matrix is computed (a 27 MB matrix crosses PCIe 5 in ~1 ms, the probe computes it in several).
    ``stage=True`` copies even when the device is the host -- the GPU code path, run by the tests on CPU.
    """

    def __init__(self, snapshot, names: list[str], device, budget: int | None = None, stage: bool | None = None):
        self.snapshot, self.device = snapshot, torch.device(device)
        self.stage = self.device.type != "cpu" if stage is None else stage
        self.resident: dict[str, torch.Tensor] = {}
        self.host: dict[str, torch.Tensor] = {}
        self.resident_bytes = 0
        if not self.stage:
            return
        budget = device_budget(self.device, 0.1) if budget is None else budget
        pin = self.device.type == "cuda"
        for name in names:
            t = snapshot[name]
            size = t.numel() * t.element_size()
            if self.resident_bytes + size <= budget:
                self.resident[name] = t.to(self.device, copy=True)
                self.resident_bytes += size
            elif name in getattr(snapshot, "mem", {}):  # in host memory: pinned once, copied asynchronously
                self.host[name] = t.pin_memory() if pin else t
                snapshot.mem[name] = self.host[name]

    def _issue(self, name: str, copy_stream):
        if not self.stage:
            return self.snapshot[name], None
        if name in self.resident:
            return self.resident[name], None
        src = self.host.get(name)
        if src is None:  # on disk: read back (memory-mapped), then copied
            src = self.snapshot[name]
        if copy_stream is None:
            return src.to(self.device, copy=True), None
        with torch.cuda.stream(copy_stream):
            out = src.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(copy_stream)
        return out, done

    def stream(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, W_0)`` of ``names`` in order, on the device; the next matrix's copy is issued before the current
        one is handed out, so that it overlaps the current one's computation."""
        names = list(names)
        copy_stream = torch.cuda.Stream(self.device) if self.stage and self.device.type == "cuda" else None
        pending = self._issue(names[0], copy_stream) if names else None
        for i, name in enumerate(names):
            tensor, done = pending
            if i + 1 < len(names):
                pending = self._issue(names[i + 1], copy_stream)
            if done is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(done)
                tensor.record_stream(current)
            yield name, tensor


def full_numel(param) -> int:
    """The number of entries of a parameter, also when ZeRO-3 holds only a shard of it here."""
    return int(getattr(param, "ds_numel", 0) or param.numel())


def split_matrices(sizes: list[int], world: int) -> list[int]:
    """The rank that computes each matrix: the largest first, each to the least loaded rank (ties to the lower rank)
    -- a deterministic function of the sizes, so every rank computes the same split."""
    load, owner = [0] * world, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += sizes[i]
    return owner


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A saved model's parameters by name (safetensors files of a ``save_pretrained`` directory)."""
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        from rlscope.errors import MissingInput

        raise MissingInput(f"no safetensors weights in {path} (a model directory written by save_pretrained, or a "
                           f".safetensors file)")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def offline_geometry(base: str | Path, checkpoints: list[str | Path], patterns=DEFAULT_PATTERNS, device="cpu",
                     **options) -> list[dict]:
    """The live probe's numbers for saved checkpoints, in order (the direction cosine and the warm starts chain from
    one to the next): per checkpoint ``{"checkpoint", "aggregate": {stat: value}, "per_matrix": {name: {stat:
    value}}}``. A checkpoint of a LoRA run (a PEFT adapter directory) is read as W_base + s B A over ``base`` (its
    adapted matrices; W_0 is ``base``, the adapters' usual start B = 0). ``device``: where to compute (``cuda``: each
    matrix moved there as it is computed). ``options``: the weights probe's (``k``, ``n_dw_sv``, ``exact_below``,
    ``abs_tol``, ``rel_tol``, ``max_passes``, ...)."""
    from rlscope.adapters import LoraWeight, is_adapter_dir, load_adapter

    w0 = load_state(base)
    names = select_matrices(list(w0), patterns)
    if not names:
        raise ValueError(f"no matrix of {base} matches {list(patterns)}; it has e.g. {list(w0)[:5]}")
    state: dict = {}
    out = []
    for ckpt in checkpoints:
        if is_adapter_dir(ckpt):
            lora = load_adapter(ckpt)
            adapted = [n for n in names if n in lora]
            if not adapted:
                raise KeyError(f"adapter {ckpt} adapts none of the selected matrices ({list(lora)[:3]} ...)")

            def pair(n, _lora=lora):
                a, b, s = _lora[n]
                base_w = w0[n].to(device)
                return (LoraWeight(base_w, torch.zeros_like(b, device=device), torch.zeros_like(a, device=device), s),
                        LoraWeight(base_w, b.to(device), a.to(device), s))

            view = WeightView((n, *pair(n)) for n in adapted)
        else:
            wt = load_state(ckpt)
            missing = [n for n in names if n not in wt]
            if missing:
                raise KeyError(f"checkpoint {ckpt} lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
            view = WeightView((n, w0[n].to(device), wt[n].to(device)) for n in names)
        result = weight_geometry(view, state, **options)
        per = {row["matrix"]: {key: v for key, v in row.items() if key != "matrix"} for row in result["per_matrix"].rows}
        out.append({"checkpoint": str(ckpt), "aggregate": scalars_of(result), "per_matrix": per})
    return out


def rank1_state(w0: dict[str, torch.Tensor], wf: dict[str, torch.Tensor], names: list[str],
                exact_below: int = 256) -> dict[str, torch.Tensor]:
    """W_0 + ||dW||_F u_1 v_1^T for each named matrix: dW's rank-1 part rescaled to the full update's norm (AlphaRL,
    Cai et al. 2025); every other parameter stays at W_0."""
    out = {}
    for n in names:
        a, b = w0[n].to(torch.float32), wf[n].to(torch.float32)
        dw = b - a
        fro = float(dw.norm())
        if fro == 0:
            out[n] = w0[n].clone()
            continue
        svd = top_svd(dw, 1, exact_below, tol=1e-4)
        out[n] = (a + fro * torch.outer(svd.U[:, 0].float(), svd.V[:, 0].float())).to(w0[n].dtype)
    return out


def rank1_recovery(base: str | Path, final: str | Path, task, patterns=DEFAULT_PATTERNS, n_samples: int = 8,
                   seed: int = 0, exact_below: int = 256) -> dict:
    """AlphaRL's experiment (Cai et al. 2025): evaluate W_0 + rank-1(dW) on the task's held-out split.

    Four models, greedy and sampled pass@1 each: ``base``, ``final``, ``selected`` (W_0 with the full update on the
    selected matrices only -- the ceiling of any approximation of those matrices) and ``rank1``. ``share`` = (rank1 -
    base) / (final - base), the share of the RL gain the rank-1 update keeps (NaN when there is no gain to keep).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlscope.evaluate import evaluate_task

    w0, wf = load_state(base), load_state(final)
    names = select_matrices(list(w0), patterns)
    if not names:
        raise ValueError(f"no matrix of {base} matches {list(patterns)}")
    tok_dir = final if (Path(final) / "tokenizer_config.json").exists() else base
    tok = AutoTokenizer.from_pretrained(str(tok_dir))

    def evaluate(path, overrides=None) -> dict:
        model = AutoModelForCausalLM.from_pretrained(str(path))
        if overrides:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for n, t in overrides.items():
                    params[n].copy_(t.to(params[n].dtype))
        res = evaluate_task(model, tok, task, n_samples=n_samples, seed=seed)
        return {"greedy": res.accuracy, "sampled": res.sampled_accuracy}

    out = {"base": evaluate(base), "final": evaluate(final),
           "selected": evaluate(base, {n: wf[n] for n in names}),
           "rank1": evaluate(base, rank1_state(w0, wf, names, exact_below))}
    for mode in ("greedy", "sampled"):
        gain = (out["final"][mode] or 0) - (out["base"][mode] or 0)
        out[f"share_{mode}"] = ((out["rank1"][mode] - out["base"][mode]) / gain) if gain > 0 else float("nan")
    out["matrices"] = len(names)
    return out
