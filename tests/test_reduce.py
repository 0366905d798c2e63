"""Exact reductions across ranks (rlscope.probes.reduce) and the per-rank token probes built on them: against a sort /
numpy on all values, and against the same probe on the concatenated batch, with many simulated ranks (threads) and
two real processes (gloo)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rlscope.probes import Histogram, get_probe
from rlscope.probes.batch import TokenBatch, concat, data_of
from rlscope.probes.reduce import (LocalComm, PeerFailed, SimulatedGroup, histogram, histogram_edges, order_statistics,
                                   quantiles)
from test_probes import random_batch

# outputs that are counts or order statistics: equal exactly; the rest are float64 sums: equal to rounding
EXACT = {"entropy": {"n_tokens", "nan_share", "p10", "p50", "p90", "p99", "p80", "above_first_p80_share"},
         "cov": {"n_tokens", "nan_share", "zero_adv_var", "band_share"},
         "behavior": {"n_completions", "empty_share", "clipped_share", "reflection_share"}}


def shards(values: torch.Tensor, world: int, seed: int) -> list[torch.Tensor]:
    """Uneven contiguous pieces of ``values``, some possibly empty."""
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randint(0, values.numel() + 1, (world - 1,), generator=g).tolist())
    bounds = [0, *cuts, values.numel()]
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def awkward_values(n: int, dtype, seed: int) -> torch.Tensor:
    """Ties, negatives, both zeros, tiny and huge magnitudes."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=torch.float64) * torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 4)
    v[: n // 5] = torch.randint(-3, 4, (n // 5,), generator=g).to(torch.float64)  # many ties
    v[n // 5: n // 5 + 3] = torch.tensor([0.0, -0.0, 1e-30])
    v = v[torch.randperm(n, generator=g)]
    v = v.to(dtype)
    return v[torch.isfinite(v)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("world", [2, 3, 8, 64])
def test_order_statistics_equal_a_sort(dtype, world):
    values = awkward_values(3000, dtype, seed=world)
    n = values.numel()
    ranks = [0, 1, n // 7, n // 2, n // 2 + 1, n - 2, n - 1]
    expected = [float(torch.sort(values).values[r]) for r in ranks]
    parts = shards(values, world, seed=world)
    group = SimulatedGroup(world, timeout=60)
    results = group.run(lambda comm, part: order_statistics(comm, part, ranks), [(p,) for p in parts])
    for got in results:  # every rank has the answer
        assert got == expected


def test_quantiles_and_histogram_equal_numpy():
    values = awkward_values(5000, torch.float64, seed=0)
    values = values[values.abs() < 1e6]
    qs = [0.1, 0.5, 0.8, 0.9, 0.99]
    parts = shards(values, 5, seed=1)
    edges = histogram_edges(float(values.min()), float(values.max()), 32)

    def rank_fn(comm, part):
        return quantiles(comm, part, values.numel(), qs), histogram(comm, part, edges)

    by_sort = quantiles(LocalComm(), values, values.numel(), qs)[0]  # one process: a sort
    counts, np_edges = np.histogram(values.numpy(), bins=32)
    for (got_q, _), got_h in SimulatedGroup(5, timeout=60).run(rank_fn, [(p,) for p in parts]):
        assert got_q == by_sort  # selection finds the very order statistics a sort does, bit for bit
        assert got_q == pytest.approx(np.quantile(values.numpy(), qs), rel=1e-14)
        assert got_h == counts.tolist()
    assert edges.tolist() == np_edges.tolist()
    # all values equal: numpy's widened range
    same = torch.full((10,), 2.5, dtype=torch.float64)
    c, e = np.histogram(same.numpy(), bins=4)
    assert histogram(LocalComm(), same, histogram_edges(2.5, 2.5, 4)) == c.tolist()
    assert histogram_edges(2.5, 2.5, 4).tolist() == e.tolist()


def split_batch(batch: TokenBatch, world: int, seed: int) -> list[TokenBatch]:
    """Rows dealt unevenly to ``world`` ranks (a rank may get none), each trimmed to its own widest row."""
    g = torch.Generator().manual_seed(seed)
    owner = torch.randint(0, world, (batch.n_rows,), generator=g)
    out = []
    for r in range(world):
        idx = (owner == r).nonzero(as_tuple=True)[0]
        d = {k: v[idx] for k, v in data_of(batch).items() if k != "length"}
        width = int(d["mask"].sum(1).max()) if idx.numel() else 0
        for k in ("logps", "entropies", "mask", "completion_ids"):
            if k in d:
                d[k] = d[k][:, :max(width, 1)]
        out.append(TokenBatch(**d))
    return out


def step_batch(seed: int, n: int = 60, t: int = 30, nan: bool = True) -> TokenBatch:
    b = random_batch(seed, n=n, t=t, empty_rows=3)
    b.entropies = b.entropies.to(torch.float32)  # as TRL hands them
    g = torch.Generator().manual_seed(seed)
    b.has_eos = torch.rand(n, generator=g) > 0.3
    b.reflections = torch.randint(0, 3, (n,), generator=g).to(torch.float64)
    b.repetition = torch.rand(n, dtype=torch.float64, generator=g)
    if nan:
        b.entropies[5, 0] = math.nan
        b.logps[7, 1] = math.inf
    return b


def per_rank_results(parts: list[TokenBatch], names=("entropy", "cov", "behavior"), first=None) -> list[dict]:
    def rank_fn(comm, part):
        part.comm = comm
        out = {}
        for name in names:
            state = {} if first is None else dict(first)
            res = get_probe(name).fn(part, state)
            assert comm.finish(ok=True)
            out.update({f"{name}/{k}": v for k, v in res.items()})
        return out

    return SimulatedGroup(len(parts), timeout=120).run(rank_fn, [(p,) for p in parts])


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        if isinstance(w, Histogram):
            assert (g.counts, g.edges) == (w.counts, w.edges), key
        elif math.isnan(w):
            assert math.isnan(g), key
        elif key.split("/", 1)[1] in EXACT[key.split("/")[0]]:
            assert g == w, key
        else:
            assert g == pytest.approx(w, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("world", [2, 5, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_per_rank_token_probes_equal_the_gathered_batch(world, seed):
    batch = step_batch(seed)
    parts = split_batch(batch, world, seed)
    whole = concat(parts)  # what the gather path hands the main process
    want = {}
    for name in ("entropy", "cov", "behavior"):
        want.update({f"{name}/{k}": v for k, v in get_probe(name).fn(whole, {}).items()})
    for got in per_rank_results(parts):
        assert_same(got, want)
    # a drift threshold from an earlier step is applied the same way
    later = per_rank_results(split_batch(step_batch(seed + 10), world, seed), ("entropy",), {"first_p80": 1.2})
    ref = get_probe("entropy").fn(concat(split_batch(step_batch(seed + 10), world, seed)), {"first_p80": 1.2})
    assert later[0]["entropy/above_first_p80_share"] == ref["above_first_p80_share"]


def test_bytes_do_not_grow_with_the_tokens():
    """What a rank sends is a fixed number of sums and selection histograms: 100x the tokens, about the same bytes."""
    def sent(n_rows, t):
        def rank_fn(comm, part):
            part.comm = comm
            for name in ("entropy", "cov", "behavior"):
                get_probe(name).fn(part, {})
            return comm.bytes
        parts = split_batch(step_batch(4, n=n_rows, t=t), 4, 4)
        return SimulatedGroup(4, timeout=120).run(rank_fn, [(p,) for p in parts])

    small, large = sent(40, 50), sent(400, 500)  # ~1.7k vs ~170k tokens per step
    assert max(large) < 1.5 * max(small) and max(large) < 64_000


def test_per_rank_probes_on_awkward_steps():
    """All advantages equal, every entropy NaN on one rank, a rank with no valid token: flags, no crash, same as
    the gathered batch."""
    b = step_batch(3, nan=False)
    b.advantages = torch.full_like(b.advantages, 0.5)
    parts = split_batch(b, 4, 3)
    parts[1].entropies = torch.full_like(parts[1].entropies, math.nan)
    parts[2].mask = torch.zeros_like(parts[2].mask)
    whole = concat(parts)
    want = {}
    for name in ("entropy", "cov", "behavior"):
        want.update({f"{name}/{k}": v for k, v in get_probe(name).fn(whole, {}).items()})
    assert want["cov/zero_adv_var"] == 1.0 and want["entropy/nan_share"] > 0
    for got in per_rank_results(parts):
        assert_same(got, want)
    # nothing valid anywhere
    for p in parts:
        p.mask = torch.zeros_like(p.mask)
    for got in per_rank_results(parts, ("entropy", "cov")):
        assert got["entropy/n_tokens"] == 0 and math.isnan(got["entropy/p50"]) and math.isnan(got["cov/mean"])


def test_a_probe_raising_on_one_rank_ends_on_every_rank():
    """The header of every collective carries failure: the other ranks stop with PeerFailed instead of waiting."""
    from rlscope.probes.reduce import sums

    def probe(comm, fail_at):
        try:
            for i in range(4):
                if i == fail_at:
                    raise ZeroDivisionError("planted")
                sums(comm, [1.0])
            return "ok" if comm.finish(ok=True) else "peer failed at the end"
        except PeerFailed:
            return "peer failed"
        except ZeroDivisionError:
            comm.finish(ok=False)
            return "raised"

    for fail_at in (0, 2, 4):  # before any collective, between two, after the last
        got = SimulatedGroup(3, timeout=20).run(probe, [(None,), (fail_at if fail_at < 4 else None,), (None,)])
        if fail_at == 4:
            assert got == ["ok"] * 3
        else:
            assert got[1] == "raised" and got[0] == got[2] and got[0].startswith("peer failed")
    # the raise after the last collective: the others learn it in finish()
    def late(comm, fail):
        sums(comm, [1.0])
        ok = not fail
        return comm.finish(ok=ok)

    assert SimulatedGroup(3, timeout=20).run(late, [(False,), (True,), (False,)]) == [False] * 3


def test_an_uncaught_exception_on_one_simulated_rank_ends_the_group_at_once_with_that_exception():
    """A rank whose function raises outside the failure protocol breaks the others' next collective (they do not wait
    for the barrier's timeout), and ``run`` raises that rank's own exception, not the others' broken barrier."""
    import time

    from rlscope.probes.reduce import sums

    def fn(comm, bad):
        if bad:
            raise KeyError("planted")
        return sums(comm, [1.0])

    t0 = time.perf_counter()
    with pytest.raises(KeyError, match="planted"):
        SimulatedGroup(3, timeout=300).run(fn, [(False,), (True,), (False,)])
    assert time.perf_counter() - t0 < 30


def _gloo_worker(rank: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    import json

    import torch.distributed as dist

    from rlscope.probes.reduce import TorchComm

    dist.init_process_group("gloo", rank=rank, world_size=2)
    parts = split_batch(step_batch(7), 2, 7)
    part = parts[rank]
    part.comm = TorchComm()
    res = {}
    for name in ("entropy", "cov", "behavior"):
        r = get_probe(name).fn(part, {})
        assert part.comm.finish(ok=True)
        res.update({f"{name}/{k}": (v.counts if isinstance(v, Histogram) else v) for k, v in r.items()})
    res["bytes"] = part.comm.bytes
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()


def test_two_real_processes_equal_the_gathered_batch(tmp_path):
    import json

    import torch.multiprocessing as mp

    from helpers import _free_port

    mp.spawn(_gloo_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    whole = concat(split_batch(step_batch(7), 2, 7))
    want = {}
    for name in ("entropy", "cov", "behavior"):
        want.update({f"{name}/{k}": v for k, v in get_probe(name).fn(whole, {}).items()})
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.pop("bytes") < 64_000  # headers, sums and selection rounds: not the tokens
        got["entropy/hist"] = Histogram(got["entropy/hist"], want["entropy/hist"].edges)
        got = {k: (math.nan if v is None else v) for k, v in got.items()}
        assert_same(got, want)
