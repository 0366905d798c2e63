"""Policy entropy over completion tokens: level, spread, the high-entropy "forking" minority, correct vs wrong.

H_t = -sum_v p_v log p_v at each completion token (TRL's fused LM head returns it). Entropy collapse is the central
failure mode of RL post-training (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
Language Models"); Wang et al. 2025 ("Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RLVR")
show that the ~20% highest-entropy "forking" tokens carry the learning signal, hence the top-20% statistics and the
share of tokens above the 80th-percentile threshold *fixed at the first probed step* (its drift shows collapse or
spread in the forking minority itself).
"""

from __future__ import annotations

import math

import torch

from rlscope.cadence import Cadence
from rlscope.probes import Histogram, register
from rlscope.probes.batch import TokenBatch
from rlscope.probes.reduce import extrema, histogram, histogram_edges, quantiles, sums, top_sum

PERCENTILES = (10, 50, 90, 99)


def restore_first_threshold(reader, state: dict) -> None:
    """A resumed run keeps the threshold of its first probed step: the first stored ``rlscope/entropy/p80``."""
    for rec in reader.records("metrics"):
        if rec["name"] == "rlscope/entropy/p80" and rec["value"] is not None:
            state.setdefault("first_p80", rec["value"])
            return


@register("entropy", source="tokens", inputs=("entropies", "mask", "correct"),
          outputs=("mean", "p10", "p50", "p90", "p99", "top20_mean", "top20_share", "p80", "above_first_p80_share",
                   "correct_mean", "wrong_mean", "n_tokens", "nan_share"), extras=("hist",),
          cost="cheap", cadence=Cadence(every=1), restore=restore_first_threshold, per_rank=True)
def entropy_stats(batch: TokenBatch, state: dict, top_share: float = 0.2, hist_bins: int = 32) -> dict:
    """Token entropy: mean, percentiles, top-20% mean and entropy share, drift above the first step's p80, by correctness.

    Outputs: ``mean``, ``p10``/``p50``/``p90``/``p99`` (linear interpolation), ``top20_mean`` (mean of the
    ceil(0.2 N) highest-entropy tokens), ``top20_share`` (their share of the summed entropy), ``p80`` (this step's
    80th percentile), ``above_first_p80_share`` (share of tokens above the p80 of the first probed step),
    ``correct_mean`` / ``wrong_mean`` (token-weighted, NaN when there is no such completion), ``n_tokens``,
    ``nan_share`` (valid tokens whose entropy was NaN/inf: flagged and left out), ``hist`` (a histogram, W&B only).

    Per rank: sums, counts and the range in one collective, every percentile and the top-share threshold by one
    exact selection (:mod:`rlscope.probes.reduce`), then the top sum and the drift count, then the histogram.
    """
    if not 0 < top_share <= 1:
        raise ValueError(f"entropy probe: top_share must be in (0, 1], got {top_share}")
    comm = batch.comm
    mask = batch.mask.bool()
    raw = batch.entropies[mask]
    finite = torch.isfinite(raw)
    vals = raw[finite]  # selection runs on the tensor's own dtype (fewer rounds); sums in float64
    v64 = vals.to(torch.float64)
    if batch.correct is not None:
        c = batch.row_broadcast(batch.correct.bool())[mask][finite]
        by_correct = [float(v64[c].sum()), float(c.sum()), float(v64[~c].sum()), float((~c).sum())]
    else:
        by_correct = [math.nan, 0.0, math.nan, 0.0]
    n_valid, n, total, *split = sums(comm, [raw.numel(), vals.numel(), float(v64.sum()), *by_correct])
    (lo,), (hi,) = extrema(comm, [float(v64.min()) if vals.numel() else math.inf],
                           [float(v64.max()) if vals.numel() else -math.inf])
    n = int(n)
    pct = int(round(100 * (1 - top_share)))
    out: dict = {"n_tokens": float(n), "nan_share": 1.0 - n / n_valid if n_valid else 0.0}
    if n == 0:
        out.update({k: math.nan for k in ("mean", *(f"p{p}" for p in PERCENTILES), f"top{100 - pct}_mean",
                                          f"top{100 - pct}_share", f"p{pct}", f"above_first_p{pct}_share",
                                          "correct_mean", "wrong_mean")})
        return out
    out["mean"] = total / n
    k = max(1, math.ceil(top_share * n))
    qs, (kth,) = quantiles(comm, vals, n, [p / 100 for p in (*PERCENTILES, pct)], extra_ranks=[n - k])
    for p, value in zip(PERCENTILES, qs):
        out[f"p{p}"] = value
    thr = qs[-1]
    out[f"p{pct}"] = thr
    first = state.setdefault(f"first_p{pct}", thr)
    top, (above_first,) = top_sum(comm, v64, k, kth, more=[float((v64 > first).sum())])
    out[f"top{100 - pct}_mean"] = top / k
    out[f"top{100 - pct}_share"] = top / total if total > 0 else math.nan
    out[f"above_first_p{pct}_share"] = above_first / n
    out["correct_mean"] = split[0] / split[1] if split[1] else math.nan
    out["wrong_mean"] = split[2] / split[3] if split[3] else math.nan
    edges = histogram_edges(lo, hi, hist_bins)
    out["hist"] = Histogram(histogram(comm, v64, edges, n), edges.tolist())
    return out
