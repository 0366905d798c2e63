"""Clip-Cov and KL-Cov per-token policy losses (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for
Reasoning Language Models"), as verl implements them (``compute_policy_loss_clip_cov`` / ``_kl_cov``).

Both act on the tokens with the largest cov_t = (A_t - mean A)(logp_t - mean logp) of the micro-batch (the selector
of :mod:`rlscope.probes.covariance`, shared with the covariance probe):

* Clip-Cov: the PPO clipped loss max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)); among the tokens not already clipped
  whose cov_t lies in (lb, ub), ``max(1, int(ratio * n_valid))`` chosen at random get no gradient (their loss is
  multiplied by 0);
* KL-Cov: the unclipped -A r, plus ``coef * |logp - logp_old|`` on the ``max(1, int(ratio * n_valid))`` tokens with
  the largest cov_t.

Both return the per-token loss (before aggregation) and the boolean mask of the tokens they acted on.
"""

from __future__ import annotations

import torch

from rlscope.probes.covariance import band_mask, random_subset, token_products, top_mask


def clip_cov_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  eps_low: float, eps_high: float, ratio: float = 2e-4, lb: float = 1.0, ub: float = 5.0,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    adv = advantages.reshape(advantages.shape[0], -1)
    r = torch.exp(logps - old_logps)
    pg1 = -adv * r
    pg2 = -adv * torch.clamp(r, 1 - eps_low, 1 + eps_high)
    clipped = (pg2 > pg1) & mask.bool()
    products = token_products(logps.detach(), adv.detach(), mask)
    candidates = band_mask(products, mask, lb, ub) & ~clipped
    selected = random_subset(candidates, max(int(ratio * int(mask.sum())), 1), generator)
    return torch.maximum(pg1, pg2) * (~selected).to(pg1.dtype), selected


def kl_cov_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                ratio: float = 2e-3, coef: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    adv = advantages.reshape(advantages.shape[0], -1)
    log_ratio = logps - old_logps
    pg1 = -adv * torch.exp(log_ratio)
    selected = top_mask(token_products(logps.detach(), adv.detach(), mask), mask, ratio)
    return torch.where(selected, pg1 + coef * log_ratio.abs(), pg1), selected
