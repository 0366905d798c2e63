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
          cost="cheap", cadence=Cadence(every=1))
def covariance_stats(batch: TokenBatch, state: dict, top_ratio: float = 0.002, band: tuple[float, float] = (1.0, 5.0)
                     ) -> dict:
    """Cov(logp, A) over all valid tokens: ``mean`` (the covariance), ``top_mean`` (mean of the top 0.2% cov_t),
    ``band_share`` (share of tokens with 1 < cov_t < 5), ``corr`` (Pearson), ``logp_mean``, ``n_tokens``.

    Flags instead of crashes: ``zero_adv_var`` = 1 when all advantages are equal (then ``mean`` = 0 exactly and
    ``corr`` NaN); ``nan_share`` = share of valid tokens whose log-prob or advantage was NaN/inf (left out).
    """
    mask = batch.mask.bool()
    adv = batch.row_broadcast(batch.advantages.to(torch.float64))
    lp = batch.logps.to(torch.float64)
    n_valid = int(mask.sum())
    finite = torch.isfinite(lp) & torch.isfinite(adv)
    nan_share = float((mask & ~finite).sum()) / n_valid if n_valid else 0.0
    mask = mask & finite
    n = int(mask.sum())
    out = {"n_tokens": float(n), "nan_share": nan_share, "zero_adv_var": 0.0}
    if n == 0:
        out.update({k: math.nan for k in ("mean", "top_mean", "band_share", "corr", "logp_mean")})
        return out
    lp = torch.where(mask, lp, torch.zeros_like(lp))
    adv = torch.where(mask, adv, torch.zeros_like(adv))
    prod = token_products(lp, adv, mask)
    a_valid = adv[mask]
    out["logp_mean"] = float(lp[mask].mean())
    if float(a_valid.max() - a_valid.min()) == 0.0:
        out.update({"mean": 0.0, "top_mean": 0.0, "band_share": 0.0, "corr": math.nan, "zero_adv_var": 1.0})
        return out
    p = prod[mask]
    out["mean"] = float(p.mean())
    k = max(1, int(n * top_ratio))
    out["top_mean"] = float(torch.topk(p, k).values.mean())
    out["band_share"] = float(band_mask(prod, mask, *band).sum()) / n
    sd_a = float(a_valid.std(unbiased=False))
    sd_l = float(lp[mask].std(unbiased=False))
    out["corr"] = out["mean"] / (sd_a * sd_l) if sd_a > 0 and sd_l > 0 else math.nan
    return out
