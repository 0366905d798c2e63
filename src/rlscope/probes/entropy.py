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

import numpy as np
import torch

from rlscope.cadence import Cadence
from rlscope.common import masked_mean
from rlscope.probes import Histogram, register
from rlscope.probes.batch import TokenBatch, quantile_sorted, valid_finite

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
          cost="cheap", cadence=Cadence(every=1), restore=restore_first_threshold)
def entropy_stats(batch: TokenBatch, state: dict, top_share: float = 0.2, hist_bins: int = 32) -> dict:
    """Token entropy: mean, percentiles, top-20% mean and entropy share, drift above the first step's p80, by correctness.

    Outputs: ``mean``, ``p10``/``p50``/``p90``/``p99`` (linear interpolation), ``top20_mean`` (mean of the
    ceil(0.2 N) highest-entropy tokens), ``top20_share`` (their share of the summed entropy), ``p80`` (this step's
    80th percentile), ``above_first_p80_share`` (share of tokens above the p80 of the first probed step),
    ``correct_mean`` / ``wrong_mean`` (token-weighted, NaN when there is no such completion), ``n_tokens``,
    ``nan_share`` (valid tokens whose entropy was NaN/inf: flagged and left out), ``hist`` (a histogram, W&B only).
    """
    if not 0 < top_share <= 1:
        raise ValueError(f"entropy probe: top_share must be in (0, 1], got {top_share}")
    vals, nan_share = valid_finite(batch.entropies, batch.mask)
    n = vals.numel()
    pct = int(round(100 * (1 - top_share)))
    out: dict = {"n_tokens": float(n), "nan_share": nan_share}
    if n == 0:
        out.update({k: math.nan for k in ("mean", *(f"p{p}" for p in PERCENTILES), f"top{100 - pct}_mean",
                                          f"top{100 - pct}_share", f"p{pct}", f"above_first_p{pct}_share",
                                          "correct_mean", "wrong_mean")})
        return out
    s = torch.sort(vals).values
    out["mean"] = float(vals.mean())
    for p in PERCENTILES:
        out[f"p{p}"] = quantile_sorted(s, p / 100)
    k = max(1, math.ceil(top_share * n))
    top = s[-k:]
    total = float(vals.sum())
    out[f"top{100 - pct}_mean"] = float(top.mean())
    out[f"top{100 - pct}_share"] = float(top.sum()) / total if total > 0 else math.nan
    thr = quantile_sorted(s, pct / 100)
    out[f"p{pct}"] = thr
    first = state.setdefault(f"first_p{pct}", thr)
    out[f"above_first_p{pct}_share"] = float((vals > first).to(torch.float64).mean())
    if batch.correct is not None:
        c = batch.row_broadcast(batch.correct.bool())
        out["correct_mean"] = masked_mean(batch.entropies, batch.mask & c)
        out["wrong_mean"] = masked_mean(batch.entropies, batch.mask & ~c)
    else:
        out["correct_mean"] = out["wrong_mean"] = math.nan
    counts, edges = np.histogram(vals.cpu().numpy(), bins=hist_bins)
    out["hist"] = Histogram(counts.tolist(), edges.tolist())
    return out
