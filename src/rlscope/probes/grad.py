"""Gradient and update size per optimizer step: the global gradient norm, per matrix kind and per layer, and the
update-to-weight ratio ||dW_step|| / ||W||.

Sparse verifiable rewards give high-variance policy gradients (Li and Ng 2025, in the survey's section on
hallucination), and RL post-training moves the weights by small, sparse updates (Mukherjee et al. 2025,
"Reinforcement Learning Finetunes Small Subnetworks in Large Language Models"); where in the network the gradient and
the update concentrate -- which layers, attention or MLP -- is what this probe shows step by step.

Per parameter p of an optimizer step (all trainable parameters, summed over every rank's shard in float64 by the
``gradients`` source, :mod:`rlscope.callbacks.sources.gradients`):

* ``grad_sq[p]`` = ||g_p||^2 of the synchronized gradient *before* clipping (so ``norm`` equals the trainer's own
  ``grad_norm``);
* ``update_sq[p]`` = ||W_p(after) - W_p(before)||^2, the update the optimizer applied;
* ``weight_sq[p]`` = ||W_p(before)||^2.

Groups: ``kind/<k>`` -- q, k, v, o, gate, up, down, and other modules by name (embed_tokens, input_layernorm, ...);
``layer/<i>`` -- the parameters of decoder layer i. A norm is the square root of the group's summed squares; a ratio
is sqrt(sum update_sq) / sqrt(sum weight_sq) over the group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlscope.cadence import Cadence
from rlscope.probes import register
from rlscope.probes.weight_matrix import kind_of, layer_of


@dataclass
class GradView:
    """Per-parameter squared norms of one optimizer step (float64, shape (P,), aligned with ``names``)."""

    names: list[str]
    grad_sq: torch.Tensor
    update_sq: torch.Tensor
    weight_sq: torch.Tensor


def _groups(names: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {"": list(range(len(names)))}
    for i, name in enumerate(names):
        groups.setdefault(f"kind/{kind_of(name)}/", []).append(i)
        layer = layer_of(name)
        if layer is not None:
            groups.setdefault(f"layer/{layer}/", []).append(i)
    return groups


def _ratio(update_sq: float, weight_sq: float) -> float:
    return math.sqrt(update_sq / weight_sq) if weight_sq > 0 else math.nan


@register("grad", source="gradients", inputs=("names", "grad_sq", "update_sq", "weight_sq"),
          outputs=("norm", "kind/<kind>/norm", "layer/<i>/norm", "update_ratio", "kind/<kind>/update_ratio",
                   "layer/<i>/update_ratio", "update_ratio_max", "nonfinite_share", "n_params"),
          cost="medium", cadence=Cadence(every=1))
def grad_stats(view: GradView, state: dict) -> dict:
    """Gradient norm (before clipping) and update-to-weight ratio, globally, per matrix kind and per layer.

    Outputs: ``norm``, ``kind/<k>/norm``, ``layer/<i>/norm``; ``update_ratio``, ``kind/<k>/update_ratio``,
    ``layer/<i>/update_ratio``; ``update_ratio_max`` (the largest of any single parameter); ``nonfinite_share``
    (share of parameters whose gradient had NaN/inf: flagged, and their norms are NaN, never a silent number);
    ``n_params`` (parameter tensors counted).
    """
    g = view.grad_sq.to(torch.float64)
    u = view.update_sq.to(torch.float64)
    w = view.weight_sq.to(torch.float64)
    out: dict = {"n_params": float(len(view.names)),
                 "nonfinite_share": float((~torch.isfinite(g)).to(torch.float64).mean()) if g.numel() else 0.0}
    for prefix, idx in _groups(view.names).items():
        ix = torch.tensor(idx, dtype=torch.long)
        out[f"{prefix}norm"] = math.sqrt(float(g[ix].sum()))  # NaN propagates: a non-finite gradient is not hidden
        out[f"{prefix}update_ratio"] = _ratio(float(u[ix].sum()), float(w[ix].sum()))
    per = [_ratio(float(a), float(b)) for a, b in zip(u, w)]
    finite = [r for r in per if not math.isnan(r)]
    out["update_ratio_max"] = max(finite) if finite else math.nan
    return out
