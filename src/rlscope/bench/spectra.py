"""Synthetic weights for ``rlscope bench weights`` / ``bench lora`` and the tests: matrices with realistic spectra, an
RL-like update of W_0, and the matrices of a Qwen2.5-1.5B-shaped model."""

from __future__ import annotations

from rlscope.shapes import SHAPES


def _decaying_matrix(n: int, seed: int = 0, m: int | None = None):
    """An m x n matrix (default square) with 64 singular values 10/i over a small Gaussian bulk: the easy spectrum."""
    import math

    import torch

    m = n if m is None else m
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(m, 64, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(n, 64, generator=g))
    spectrum = 10.0 * torch.pow(torch.arange(1, 65, dtype=torch.float32), -1.0)
    return (q1 * spectrum) @ q2.T + 0.01 * torch.randn(m, n, generator=g) / math.sqrt(max(m, n))


def _spiked_matrix(m: int, n: int, tail_exp: float = 0.35, tail: int = 256, top: float = 6.0, seed: int = 0,
                   scale: float = 0.02, flat: bool = False):
    """A weight-like m x n matrix: a Marchenko-Pastur bulk (Gaussian entries) plus a heavy power-law tail of ``tail``
    spikes, sigma_i = top x bulk edge x i^-tail_exp -- the shape of trained weights' spectra (Martin & Mahoney 2021:
    ESD exponents 2-4, i.e. tail_exp 1/6 to 1/2); ``flat``: the bulk alone. Entries ~ ``scale``."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    big = max(m, n)
    w = torch.randn(m, n, generator=g) / math.sqrt(big)
    if not flat:
        r = min(tail, min(m, n) // 2)
        u = torch.randn(m, r, generator=g) / math.sqrt(m)
        v = torch.randn(n, r, generator=g) / math.sqrt(n)
        s = (1 + math.sqrt(min(m, n) / big)) * top * torch.arange(1, r + 1, dtype=torch.float32) ** -tail_exp
        w += (u * s) @ v.T
    return w * (scale * math.sqrt(big / (m + n)) * 2)


def _rl_update(w0, step: int, size: float, seed: int):
    """W_0 plus an RL-like update after ``step`` probe intervals (float32): a rank-1 part growing linearly (AlphaRL's
    nearly rank-1, linearly evolving update) and a random walk of full-rank noise, each half of an interval's
    ||dW||_F = ``size`` x ||W_0||_F."""
    import math

    import torch

    m, n = w0.shape
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(m, 1, generator=g), torch.randn(1, n, generator=g)
    walk = torch.zeros(m, n)
    for t in range(1, step + 1):
        walk += torch.randn(m, n, generator=torch.Generator().manual_seed(seed * 1000 + t))
    w = w0.float()
    return w + size * float(w.norm()) * (0.5 * step * (u @ v) + 0.5 * walk) / math.sqrt(m * n)


_Q15 = SHAPES["qwen2.5-1.5b"]  # the model shape bench weights and bench lora probe


def _model_shapes(layers: int, hidden: int, intermediate: int, kv_dim: int) -> dict:
    shapes = {"q_proj": (hidden, hidden), "k_proj": (kv_dim, hidden), "v_proj": (kv_dim, hidden),
              "o_proj": (hidden, hidden), "gate_proj": (intermediate, hidden), "up_proj": (intermediate, hidden),
              "down_proj": (hidden, intermediate)}
    out = {}
    for layer in range(layers):
        for i, (kind, shape) in enumerate(shapes.items()):
            part = "self_attn" if kind in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out[f"model.layers.{layer}.{part}.{kind}.weight"] = (shape, 7 * layer + i)
    return out


def _model_w0(name: str, shape, seed: int):
    """W_0 of one matrix of the synthetic model, bf16: heavier tails for q/k (as attention weights show)."""
    import torch

    exp = 0.5 if ("q_proj" in name or "k_proj" in name) else 0.35
    return _spiked_matrix(*shape, tail_exp=exp, seed=seed).to(torch.bfloat16)


def _model_wt(name: str, specs: dict, w0s: dict, step: int, size: float):
    import torch

    return _rl_update(w0s[name].cpu(), step, size, seed=specs[name][1]).to(torch.bfloat16)
