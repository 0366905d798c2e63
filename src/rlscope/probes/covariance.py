"""Token covariance between log-probability and advantage, and the token selectors of Clip-Cov / KL-Cov.

Cui et al. 2025 ("The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models") show that under
policy gradient the change of policy entropy is driven by -Cov(log pi(a|s), A(s, a)): confident tokens with positive
advantage lower the entropy. Over the valid completion tokens t of a batch (all ranks),

    cov_t = (A_t - mean(A)) * (logp_t - mean(logp)),   Cov = mean_t cov_t,

with A_t the sequence advantage broadcast to its tokens and logp_t the current policy's log-prob (the means are
token-weighted). Their interventions act on the tokens with the largest cov_t: Clip-Cov detaches the gradient of a
random ``clip_cov_ratio`` share of the tokens whose cov_t lies in (lb, ub); KL-Cov adds k * |logp - logp_old| to the
top ``kl_cov_ratio`` share. :func:`token_products`, :func:`band_mask` and :func:`top_mask` are the one selector used
by the probe and by those losses (:mod:`rlscope.trainers.dapo`).
"""

from __future__ import annotations

import math

import torch

from rlscope.cadence import Cadence
from rlscope.probes import register
from rlscope.probes.batch import TokenBatch
from rlscope.probes.reduce import extrema, order_statistics, sums, top_sum


def token_products(logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """cov_t for every token of ``(N, T)`` ``logps`` (0 outside ``mask``); ``advantages`` is (N,), (N, 1) or (N, T).

    Means are over the valid tokens of the tensors given (a micro-batch in the losses, the whole step in the probe).
    """
    mask = mask.bool()
    adv = advantages.reshape(advantages.shape[0], -1).expand_as(logps).to(logps.dtype)
    n = mask.sum().clamp(min=1)
    m_adv = (adv * mask).sum() / n
    m_lp = (logps * mask).sum() / n
    return torch.where(mask, (adv - m_adv) * (logps - m_lp), torch.zeros_like(logps))


def band_mask(products: torch.Tensor, mask: torch.Tensor, lb: float = 1.0, ub: float = 5.0) -> torch.Tensor:
    """Valid tokens with ``lb < cov_t < ub`` (the Clip-Cov band)."""
    return mask.bool() & (products > lb) & (products < ub)


def top_mask(products: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """The ``max(1, int(ratio * n_valid))`` valid tokens with the largest cov_t (KL-Cov's selection; ties by index)."""
    mask = mask.bool()
    n = int(mask.sum())
    out = torch.zeros_like(mask)
    if n == 0:
        return out
    k = max(1, int(n * ratio))
    flat = torch.where(mask, products, torch.full_like(products, -math.inf)).reshape(-1)
    idx = torch.topk(flat, k, largest=True).indices
    out.view(-1)[idx] = True
    return out


def random_subset(candidates: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``min(count, n_candidates)`` of the True positions of ``candidates``, uniformly at random (Clip-Cov)."""
    idx = candidates.reshape(-1).nonzero(as_tuple=True)[0]
    out = torch.zeros_like(candidates, dtype=torch.bool)
    if idx.numel() == 0 or count <= 0:
        return out
    perm = torch.randperm(idx.numel(), generator=generator)[:count].to(idx.device)
    out.view(-1)[idx[perm]] = True
    return out


@register("cov", source="tokens", inputs=("logps", "advantages", "mask"),
          outputs=("mean", "top_mean", "band_share", "corr", "logp_mean", "n_tokens", "nan_share", "zero_adv_var"),
          cost="cheap", cadence=Cadence(every=1), per_rank=True)
def covariance_stats(batch: TokenBatch, state: dict, top_ratio: float = 0.002, band: tuple[float, float] = (1.0, 5.0)
                     ) -> dict:
    """Cov(logp, A) over all valid tokens: ``mean`` (the covariance), ``top_mean`` (mean of the top 0.2% cov_t),
    ``band_share`` (share of tokens with 1 < cov_t < 5), ``corr`` (Pearson), ``logp_mean``, ``n_tokens``.

    Flags instead of crashes: ``zero_adv_var`` = 1 when all advantages are equal (then ``mean`` = 0 exactly and
    ``corr`` NaN); ``nan_share`` = share of valid tokens whose log-prob or advantage was NaN/inf (left out).

    Per rank, in two passes (:mod:`rlscope.probes.reduce`): the token-weighted means and the advantages' range, then
    cov_t against those means -- its sum, band count, centred sums of squares -- and the top 0.2% by exact selection.
    """
    comm = batch.comm
    mask = batch.mask.bool()
    adv = batch.row_broadcast(batch.advantages.to(torch.float64))
    lp = batch.logps.to(torch.float64)
    n_valid_local = int(mask.sum())
    finite = torch.isfinite(lp) & torch.isfinite(adv)
    mask = mask & finite
    lp_v, adv_v = lp[mask], adv[mask]
    empty = lp_v.numel() == 0
    n_valid, n, sum_lp, sum_adv = sums(comm, [n_valid_local, lp_v.numel(), float(lp_v.sum()), float(adv_v.sum())])
    (a_lo,), (a_hi,) = extrema(comm, [math.inf if empty else float(adv_v.min())],
                               [-math.inf if empty else float(adv_v.max())])
    n = int(n)
    out = {"n_tokens": float(n), "nan_share": (n_valid - n) / n_valid if n_valid else 0.0, "zero_adv_var": 0.0}
    if n == 0:
        out.update({k: math.nan for k in ("mean", "top_mean", "band_share", "corr", "logp_mean")})
        return out
    m_lp, m_adv = sum_lp / n, sum_adv / n
    out["logp_mean"] = m_lp
    if a_hi - a_lo == 0.0:
        out.update({"mean": 0.0, "top_mean": 0.0, "band_share": 0.0, "corr": math.nan, "zero_adv_var": 1.0})
        return out
    da, dl = adv_v - m_adv, lp_v - m_lp
    p = da * dl  # cov_t of this rank's valid tokens (token_products with the step's means)
    lb, ub = band
    sum_p, in_band, ss_a, ss_l = sums(comm, [float(p.sum()), float(((p > lb) & (p < ub)).sum()),
                                             float((da * da).sum()), float((dl * dl).sum())])
    out["mean"] = sum_p / n
    k = max(1, int(n * top_ratio))
    (kth,) = order_statistics(comm, p, [n - k], n)
    top, _ = top_sum(comm, p, k, kth)
    out["top_mean"] = top / k
    out["band_share"] = in_band / n
    sd_a, sd_l = math.sqrt(ss_a / n), math.sqrt(ss_l / n)
    out["corr"] = out["mean"] / (sd_a * sd_l) if sd_a > 0 and sd_l > 0 else math.nan
    return out
