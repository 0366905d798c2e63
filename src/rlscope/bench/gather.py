"""``rlscope bench gather``: the token probes of one step, exact reductions vs gathering every token to the main
process (2 real gloo processes and simulated ranks); the synthetic token step (also used by ``bench overhead``)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rlscope.bench.common import _free_port


def synthetic_step(tokens: int, seed: int, width: int = 1024, group: int = 16):
    """A synthetic step of about ``tokens`` valid completion tokens (rows of random length up to ``width``) with the
    dtypes TRL hands over: float32 entropies and log-probs, int64 ids, per-row float32 group-normalized advantages,
    correctness, EOS, behaviour features -- what the entropy, cov and behavior probes read."""
    import torch

    from rlscope.probes.batch import TokenBatch

    g = torch.Generator().manual_seed(seed)
    rows = max(group, -(-tokens * 2 // width) // group * group)  # mean length ~ width / 2
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    lengths = (lengths.to(torch.float64) * tokens / lengths.sum()).round().clamp(1, width).to(torch.int64)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    ent = (torch.rand(rows, width, generator=g) ** 3 * 4).to(torch.float32)
    rewards = (torch.rand(rows, generator=g) > 0.6).to(torch.float32)
    r = rewards.view(-1, group)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)
    return TokenBatch(entropies=ent, logps=-(ent * torch.rand(rows, width, generator=g)).to(torch.float32), mask=mask,
                      advantages=adv, correct=rewards > 0.5, has_eos=lengths < width,
                      reflections=torch.randint(0, 3, (rows,), generator=g).to(torch.float64),
                      repetition=torch.rand(rows, generator=g, dtype=torch.float64))


_GATHER_PROBES = ("entropy", "cov", "behavior")


def _probe_all(batch) -> dict:
    from rlscope.probes import Histogram, get_probe

    out = {}
    for name in _GATHER_PROBES:
        res = get_probe(name).fn(batch, {})
        if not batch.comm.finish(ok=True):
            raise RuntimeError("a rank failed")
        out.update({f"{name}/{k}": (v.counts if isinstance(v, Histogram) else v) for k, v in res.items()})
    return out


def _gathered_bytes(parts) -> int:
    """Payload each rank contributes to the gather path's all-gathers (the fields the three probes read, padded to
    the widest rank and the most rows, as ``gather_batch`` sends them)."""
    from rlscope.probes import get_probe

    names = {"mask"}.union(*(get_probe(n).inputs for n in _GATHER_PROBES)) - {"length"}
    rows = max(p.n_rows for p in parts)
    width = max(p.mask.shape[1] for p in parts)
    total = 0
    for name in names:
        t = getattr(parts[0], name)
        if t is None:
            continue
        total += rows * (width if t.dim() == 2 else 1) * t.element_size()  # bool travels as uint8: 1 byte too
    return total


def _compare(exact: dict, gathered: dict) -> tuple[bool, float]:
    """(identical, max relative difference of the float64 sums): order statistics and counts must be equal."""
    import math

    worst, same = 0.0, True
    for key, want in gathered.items():
        got = exact[key]
        if isinstance(want, list):
            same &= got == want
        elif isinstance(want, float) and math.isnan(want):
            same &= isinstance(got, float) and math.isnan(got)
        elif got != want:
            rel = abs(got - want) / max(abs(want), 1e-300)
            worst = max(worst, rel)
            same &= rel < 1e-12
    return same, worst


def _ring(payload_per_rank: float, world: int, kind: str) -> float:
    """Bytes each rank receives under the ring algorithms: all-reduce 2(W-1)/W x payload; all-gather (W-1) x it."""
    return payload_per_rank * (2 * (world - 1) / world if kind == "all_reduce" else world - 1)


def _simulated(world: int, tokens: int) -> dict:
    import statistics

    import torch

    from rlscope.probes.batch import concat
    from rlscope.probes.reduce import SimulatedGroup

    parts = [synthetic_step(tokens, seed=r) for r in range(world)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each simulated rank is one thread: its CPU time is its compute
    try:
        def rank_fn(comm, part):
            part.comm = comm
            t0 = time.thread_time()
            res = _probe_all(part)
            return res, time.thread_time() - t0, comm.bytes, comm.calls

        ranks = SimulatedGroup(world).run(rank_fn, [(p,) for p in parts])
        t0 = time.perf_counter()
        whole = concat(parts)  # what gather_batch leaves on the main process
        gathered = _probe_all(whole)
        gather_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    same, worst = _compare(ranks[0][0], gathered)
    same &= all(r[0] == ranks[0][0] for r in ranks)
    per_rank = statistics.median(r[1] for r in ranks)
    payload = max(r[2] for r in ranks)
    gather_payload = _gathered_bytes(parts)
    ex, ga = _ring(payload, world, "all_reduce"), _ring(gather_payload, world, "all_gather")
    return {"world_size": world, "simulated": True, "tokens_per_rank": int(whole.mask.sum()) // world,
            "exact_bytes_per_rank": round(ex), "gather_bytes_per_rank": round(ga), "bytes_ratio": round(ga / ex, 1),
            "exact_collectives": ranks[0][3], "exact_seconds_per_rank": round(per_rank, 3),
            "exact_seconds_per_million_tokens": round(per_rank / (tokens / 1e6), 3),
            "gather_main_seconds": round(gather_seconds, 3), "identical": bool(same),
            "max_rel_diff_sums": float(f"{worst:.3g}")}


def _two_rank_worker(rank: int, port: int, tokens: int, out: str):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    import torch
    from accelerate import Accelerator

    from rlscope.callbacks.sources.tokens import gather_batch
    from rlscope.probes import get_probe
    from rlscope.probes.reduce import TorchComm

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    part = synthetic_step(tokens, seed=rank)
    names = {"mask"}.union(*(get_probe(n).inputs for n in _GATHER_PROBES))
    for _ in range(2):  # the second round is timed (the first warms up both paths)
        acc.wait_for_everyone()
        t0 = time.perf_counter()
        part.comm = TorchComm()
        exact = _probe_all(part)
        acc.wait_for_everyone()
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        whole = gather_batch(part, acc, names)
        gathered = _probe_all(whole) if rank == 0 else None
        acc.wait_for_everyone()
        t_gather = time.perf_counter() - t0
    if rank == 0:
        same, worst = _compare(exact, gathered)
        Path(out).write_text(json.dumps({"exact_seconds": t_exact, "gather_seconds": t_gather, "identical": same,
                                         "max_rel_diff_sums": worst, "bytes": part.comm.bytes,
                                         "calls": part.comm.calls,
                                         "gather_payload": _gathered_bytes([synthetic_step(tokens, seed=r)
                                                                            for r in range(2)])}))
    torch.distributed.destroy_process_group()


def _real_two(tokens: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "two.json"
        mp.spawn(_two_rank_worker, args=(_free_port(), tokens, str(out)), nprocs=2, join=True)
        r = json.loads(out.read_text())
    ex, ga = _ring(r["bytes"], 2, "all_reduce"), _ring(r["gather_payload"], 2, "all_gather")
    return {"world_size": 2, "simulated": False, "tokens_per_rank": tokens, "exact_bytes_per_rank": round(ex),
            "gather_bytes_per_rank": round(ga), "bytes_ratio": round(ga / ex, 1), "exact_collectives": r["calls"],
            "exact_seconds": round(r["exact_seconds"], 3), "gather_seconds": round(r["gather_seconds"], 3),
            "identical": bool(r["identical"]), "max_rel_diff_sums": float(f"{r['max_rel_diff_sums']:.3g}")}


def bench_gather(tokens: int = 1_000_000, worlds=(8, 64)) -> dict:
    """The token probes (entropy, cov, behavior) of one step, exact reductions vs gathering every token to the main
    process: bytes each rank receives (ring all-reduce / all-gather model, payloads measured), seconds, and whether
    the results are identical (counts and order statistics equal; float64 sums within 1e-12). At 2 real processes
    (gloo, wall seconds on the main process including the collectives) and at ``worlds`` simulated ranks (threads of
    this process, one intra-op thread each: per-rank compute as thread CPU time; the gather path as the main
    process's compute on the concatenated batch, network not included), ``tokens`` valid tokens per rank."""
    results = [_real_two(tokens)] + [_simulated(w, tokens) for w in worlds]
    largest = results[-1]
    return {"bench": "gather", "tokens_per_rank": tokens, "results": results,
            "bytes_ratio_at_largest": largest["bytes_ratio"], "world_size_largest": largest["world_size"],
            "identical": all(r["identical"] for r in results),
            "observatory_seconds_per_million_tokens": largest["exact_seconds_per_million_tokens"]}
