"""Exact statistics across ranks without gathering the tokens: sums, extrema, order statistics, top-k sums, histograms.

A token probe declared ``per_rank`` runs on every rank with that rank's share of the step (a
:class:`~rlscope.probes.batch.TokenBatch` whose ``comm`` joins the ranks). It combines the shares through the
functions here, whose communication does not grow with the number of tokens:

* :func:`sums` -- float64 sums and counts, one all-reduce (counts exact below 2^53; sums to float64 rounding);
* :func:`extrema` -- global minima and maxima, one all-reduce;
* :func:`order_statistics` -- the exact k-th smallest values by radix selection on the floats' bits (Knuth, TAOCP
  vol. 3 §5.2.5; the distributed form of e.g. Alabi et al. 2012, "Fast k-Selection Algorithms for Graphics Processing
  Units"): a value's bits, turned into an integer key with the same order, are found 8 at a time; each round
  all-reduces one 256-bin count of the next 8 bits among the values whose higher bits match what is known so far,
  one histogram per distinct prefix -- so width/8 rounds of a few KB, whatever the number of tokens;
* :func:`quantiles` -- linear-interpolation quantiles (numpy's default) from two order statistics each;
* :func:`top_sum` -- the sum of the k largest values: the k-th largest t by selection, then sum(v > t) plus
  (k - count(v > t)) copies of t (ties at t counted exactly);
* :func:`histogram` -- ``numpy.histogram(values, bins)`` of all ranks' values: global range, then all-reduced counts.

A :class:`Comm` is what joins the ranks: :class:`LocalComm` (one process, or a batch that already holds every rank's
tokens: the gather path and offline recomputation), :class:`TorchComm` (``torch.distributed``, e.g. under accelerate)
and :class:`SimulatedGroup` (many ranks as threads of one process, for tests and ``rlscope bench gather``). Every
collective first agrees on a one-number header saying whether some rank's probe has failed, so a probe that raises on
one rank ends on all of them (:class:`PeerFailed`) instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import math
import threading

import torch

_OPS = ("sum", "max")


class PeerFailed(RuntimeError):
    """Another rank's probe raised: this rank's copy stops too (raised inside a collective)."""


class Comm:
    """How a per-rank probe's ranks combine their shares (see the module docstring).

    Subclasses implement :meth:`_all_reduce` (``op`` "sum" or "max" over the ranks, the result on every rank). The
    counters say what this rank contributed: ``calls`` collectives, ``bytes`` of payload (headers included).
    """

    rank = 0
    world_size = 1

    def __init__(self):
        self.calls = 0
        self.bytes = 0

    def _all_reduce(self, x: torch.Tensor, op: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _raw(self, x: torch.Tensor, op: str) -> torch.Tensor:
        self.calls += 1
        self.bytes += x.numel() * x.element_size()
        return self._all_reduce(x, op)

    def _header(self, failed: bool) -> bool:
        """One collective: whether any rank reports a failure."""
        if self.world_size == 1:
            return failed
        return bool(self._raw(torch.tensor([1.0 if failed else 0.0], dtype=torch.float64), "max")[0] > 0)

    def all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``x`` (float64 or int64) reduced over the ranks; raises :class:`PeerFailed` when another rank's probe
        failed."""
        if op not in _OPS:
            raise ValueError(f"all_reduce: op must be one of {_OPS}, got {op!r}")
        if self.world_size == 1:
            return x
        if self._header(False):
            raise PeerFailed("a probe raised on another rank")
        return self._raw(x.contiguous(), op)

    def finish(self, ok: bool) -> bool:
        """End one probe's run on this rank (every rank calls it once, unless :class:`PeerFailed` was raised): True
        when every rank's copy finished without error."""
        return not self._header(not ok)


class LocalComm(Comm):
    """One rank: the view holds every token there is (one process, the gather path, offline recomputation)."""

    def _all_reduce(self, x, op):
        return x


class TorchComm(Comm):
    """The ranks of the default ``torch.distributed`` process group; payloads travel on ``device`` (CUDA for NCCL)."""

    def __init__(self, device=None):
        import torch.distributed as dist

        super().__init__()
        self.dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(device) if device is not None else None

    def _all_reduce(self, x, op):
        src = x.device
        y = x.to(self.device, copy=True) if self.device is not None else x.clone()
        self.dist.all_reduce(y, op=self.dist.ReduceOp.SUM if op == "sum" else self.dist.ReduceOp.MAX)
        return y.to(src)


class SimulatedGroup:
    """``world_size`` ranks as threads of this process (tests, ``rlscope bench gather``): :meth:`run` calls
    ``fn(comm, *args)`` on each rank's arguments, one thread per rank, and returns the results in rank order (an
    exception on any rank breaks the others' next collective; the first rank's own exception is raised after all
    threads ended). Sums are taken in rank order in float64."""

    def __init__(self, world_size: int, timeout: float = 600.0):
        if world_size < 1:
            raise ValueError(f"SimulatedGroup: world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=timeout)
        self.slots: list = [None] * world_size
        self.result = None

    def comm(self, rank: int) -> "ThreadComm":
        return ThreadComm(self, rank)

    def run(self, fn, per_rank_args: list[tuple]) -> list:
        if len(per_rank_args) != self.world_size:
            raise ValueError(f"SimulatedGroup.run: {len(per_rank_args)} argument tuples for {self.world_size} ranks")
        results: list = [None] * self.world_size
        errors: list = [None] * self.world_size

        def body(rank):
            try:
                results[rank] = fn(self.comm(rank), *per_rank_args[rank])
            except BaseException as exc:  # noqa: BLE001 -- re-raised below, after every thread ended
                errors[rank] = exc
                self.barrier.abort()  # the other ranks stop at their next collective instead of at the timeout

        threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cause = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
        if cause or any(errors):
            raise (cause or [e for e in errors if e is not None])[0]
        return results


class ThreadComm(Comm):
    """One rank of a :class:`SimulatedGroup`."""

    def __init__(self, group: SimulatedGroup, rank: int):
        super().__init__()
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def _all_reduce(self, x, op):
        g = self.group
        g.slots[self.rank] = x
        if g.barrier.wait() == 0:  # one thread combines
            stacked = torch.stack([s.to(x.device) for s in g.slots])
            g.result = stacked.sum(0) if op == "sum" else stacked.max(0).values
        g.barrier.wait()
        out = g.result.clone()
        g.barrier.wait()  # nobody writes the next collective's slot before everyone has read this result
        return out


# -- statistics -----------------------------------------------------------------------------------------------------


def sums(comm: Comm, values) -> list[float]:
    """Float64 sums over the ranks of the numbers in ``values`` (one collective)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return comm.all_reduce(t, "sum").tolist()


def extrema(comm: Comm, minima, maxima) -> tuple[list[float], list[float]]:
    """Global minima and maxima (one collective); a rank without values passes +inf / -inf."""
    lo, hi = [float(v) for v in minima], [float(v) for v in maxima]
    t = comm.all_reduce(torch.tensor([-v for v in lo] + hi, dtype=torch.float64), "max").tolist()
    return [-v for v in t[:len(lo)]], t[len(lo):]


_INT = {torch.float64: (torch.int64, 64), torch.float32: (torch.int32, 32), torch.float16: (torch.int16, 16),
        torch.bfloat16: (torch.int16, 16)}


def _ordered_keys(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Non-negative-ordered int64 keys of float ``values`` (1-D, no NaN): a < b  <=>  key(a) < key(b) as unsigned
    ``width``-bit integers (-0.0 sorts just below +0.0; both are 0.0)."""
    if values.dtype not in _INT:
        raise TypeError(f"order statistics: float values expected, got {values.dtype}")
    itype, width = _INT[values.dtype]
    b = values.contiguous().view(itype).to(torch.int64)  # sign-extended
    low = (1 << (width - 1)) - 1
    key = torch.where(b < 0, b ^ low, b)  # negatives: larger magnitude -> smaller key (signed order = float order)
    if width == 64:
        return key ^ torch.iinfo(torch.int64).min, width  # flip the sign bit: the unsigned bit pattern
    return key + (1 << (width - 1)), width


def _value_of(unsigned: int, width: int, dtype: torch.dtype) -> float:
    key = unsigned - (1 << (width - 1))  # back to the signed key
    bits = key ^ ((1 << (width - 1)) - 1) if key < 0 else key
    itype = _INT[dtype][0]
    return float(torch.tensor([bits], dtype=itype).view(dtype)[0])


def order_statistics(comm: Comm, values: torch.Tensor, ranks: list[int], n: int | None = None) -> list[float]:
    """The ``ranks``-th smallest (0-based, over every rank's ``values``) of finite float ``values`` (this rank's
    share, 1-D), exactly. Each rank must be in 0..N-1 for the global count N (e.g. from :func:`sums`); given as
    ``n`` (the same on every rank), counts travel as int32 when they fit. One process: a sort. Several: radix
    selection, width/8 collectives (see the module docstring)."""
    ranks = [int(r) for r in ranks]
    if not ranks:
        return []
    values = values.reshape(-1)
    if comm.world_size == 1:
        s = torch.sort(values).values
        if max(ranks) >= s.numel() or min(ranks) < 0:
            raise ValueError(f"order statistics: rank {max(ranks)} of {s.numel()} values")
        return [float(s[r]) for r in ranks]
    keys, width = _ordered_keys(values)
    count_type = torch.int32 if n is not None and n < 2 ** 31 else torch.int64
    prefixes = [0] * len(ranks)
    remaining = list(ranks)
    candidates = {0: keys}  # prefix (the bits known so far) -> this rank's keys that share it
    for shift in range(width - 8, -1, -8):
        distinct = sorted(set(prefixes))
        local = torch.stack([torch.bincount((candidates[p] >> shift) & 0xFF, minlength=256) for p in distinct])
        cum = comm.all_reduce(local.to(count_type), "sum").to(torch.int64).cumsum(dim=1).cpu()
        nxt = {}
        for i, (p, r) in enumerate(zip(prefixes, remaining)):
            row = cum[distinct.index(p)]
            if r >= int(row[-1]) or r < 0:
                raise ValueError(f"order statistics: rank {ranks[i]} is outside the {int(cum[0, -1])} values")
            d = int(torch.searchsorted(row, torch.tensor([r]), right=True)[0])
            remaining[i] = r - (int(row[d - 1]) if d else 0)
            prefixes[i] = (p << 8) | d
            if prefixes[i] not in nxt:
                c = candidates[p]
                nxt[prefixes[i]] = c[((c >> shift) & 0xFF) == d]
        candidates = nxt
    return [_value_of(p, width, values.dtype) for p in prefixes]


def quantile_ranks(n: int, q: float) -> tuple[int, int, float]:
    """(lo, hi, frac) of the linear-interpolation quantile q of n sorted values (numpy's default method)."""
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    return lo, min(lo + 1, n - 1), pos - lo


def interpolate(lo_value: float, hi_value: float, frac: float) -> float:
    """The quantile from its two order statistics: lo * (1 - frac) + hi * frac."""
    return lo_value * (1 - frac) + hi_value * frac


def quantiles(comm: Comm, values: torch.Tensor, n: int, qs, extra_ranks=()) -> tuple[list[float], list[float]]:
    """Quantiles ``qs`` of all ranks' ``values`` (n in total), and the order statistics at ``extra_ranks``, from one
    selection; NaN quantiles when n == 0."""
    qs, extra_ranks = list(qs), list(extra_ranks)
    if n == 0:
        return [math.nan] * len(qs), [math.nan] * len(extra_ranks)
    spans = [quantile_ranks(n, q) for q in qs]
    wanted = sorted({r for lo, hi, _ in spans for r in (lo, hi)} | set(extra_ranks))
    found = dict(zip(wanted, order_statistics(comm, values, wanted, n)))
    return ([interpolate(found[lo], found[hi], f) for lo, hi, f in spans], [found[r] for r in extra_ranks])


def top_sum(comm: Comm, values: torch.Tensor, k: int, kth_largest: float, more=()) -> tuple[float, list[float]]:
    """Sum of the k largest of all ranks' ``values`` given the k-th largest (from :func:`order_statistics`); one
    collective, which also sums the local numbers ``more`` (returned)."""
    v = values.to(torch.float64)
    above = v > kth_largest
    out = sums(comm, [float(v[above].sum()), float(above.sum()), *more])
    return out[0] + (k - out[1]) * kth_largest, out[2:]


def histogram_edges(lo: float, hi: float, bins: int) -> torch.Tensor:
    """``numpy.histogram``'s edges for ``bins`` equal bins over [lo, hi] (widened by 0.5 each side when lo == hi)."""
    import numpy as np

    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return torch.from_numpy(np.linspace(lo, hi, bins + 1, endpoint=True))


def histogram(comm: Comm, values: torch.Tensor, edges: torch.Tensor, n: int | None = None) -> list[int]:
    """Counts of all ranks' ``values`` in the bins of ``edges`` (numpy's rule: [e_i, e_i+1), the last bin closed;
    values outside are not counted); one collective (int32 counts when the global count ``n`` is given and fits)."""
    v = values.to(torch.float64).reshape(-1)
    e = edges.to(v.device, torch.float64)
    bins = e.numel() - 1
    inside = (v >= e[0]) & (v <= e[-1])
    idx = (torch.searchsorted(e, v[inside], right=True) - 1).clamp(max=bins - 1)
    local = torch.bincount(idx, minlength=bins).to(torch.int32 if n is not None and n < 2 ** 31 else torch.int64)
    return comm.all_reduce(local, "sum").tolist()
