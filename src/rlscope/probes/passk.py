"""pass@k: the unbiased estimator for every k = 1..n, vectorised over prompts, and the base/current crossover.

With n samples of a prompt of which c are correct, the probability that at least one of k samples drawn without
replacement is correct is pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", Codex; unbiased, unlike max-over-k or bootstrapped best-of-N). Computed in the numerically stable
product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), here in log space for all k at once. Yue et al. 2025 ("Does
Reinforcement Learning Really Incentivize Reasoning Capacity in LLMs Beyond the Base Model?") compare the curves of
the base and the RL model: RL wins at small k, the base model catches up and overtakes at large k; the smallest k at
which base >= current is the crossover.
"""

from __future__ import annotations

import numpy as np


def _check(n: int, counts: np.ndarray, ks: np.ndarray) -> None:
    if n < 1:
        raise ValueError(f"pass@k: n (samples per prompt) must be >= 1, got {n}")
    if counts.size and (counts.min() < 0 or counts.max() > n):
        bad = counts[(counts < 0) | (counts > n)][0]
        raise ValueError(f"pass@k: correct count c={bad} is outside 0..n (n={n})")
    if ks.size and (ks.min() < 1 or ks.max() > n):
        bad = ks[(ks < 1) | (ks > n)][0]
        raise ValueError(f"pass@k: k={bad} must be between 1 and n={n} (k > n samples cannot be drawn)")


def pass_at_k(n: int, counts, ks=None) -> np.ndarray:
    """Per-prompt pass@k, shape ``(len(counts), len(ks))``; ``ks`` defaults to all of 1..n.

    ``counts[p]`` is the number of correct samples among the ``n`` of prompt p. Errors name the problem for k > n,
    c > n or c < 0.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    ks = np.arange(1, n + 1) if ks is None else np.asarray(ks, dtype=np.int64).reshape(-1)
    _check(n, counts, ks)
    i = np.arange(1, n + 1, dtype=np.float64)  # the factors' denominators
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = 1.0 - ks[:, None] / i[None, :]  # (K, n): 1 - k/i
        logs = np.where(ratio > 0, np.log(np.where(ratio > 0, ratio, 1.0)), -np.inf)
    # suffix sums: S[k, j] = sum_{i=j+1}^{n} log(1 - k/i) for j = 0..n (S[:, n] = 0, the empty product)
    suffix = np.concatenate([np.cumsum(logs[:, ::-1], axis=1)[:, ::-1], np.zeros((len(ks), 1))], axis=1)
    prod = np.exp(suffix[:, n - counts])  # product over i = n-c+1 .. n -> column index n-c
    return (1.0 - prod).T


def pass_at_k_curve(n: int, counts) -> tuple[np.ndarray, np.ndarray]:
    """``(curve, per_prompt)``: mean pass@k over prompts for k = 1..n (shape (n,)), and the per-prompt matrix."""
    per_prompt = pass_at_k(n, counts)
    if per_prompt.shape[0] == 0:
        raise ValueError("pass@k: no prompts")
    return per_prompt.mean(axis=0), per_prompt


def crossover_k(base_curve, current_curve, atol: float = 1e-12) -> int | None:
    """Smallest k (1-based) at which the base model's pass@k >= the current model's; None if it never happens."""
    base, cur = np.asarray(base_curve, dtype=np.float64), np.asarray(current_curve, dtype=np.float64)
    if base.shape != cur.shape:
        raise ValueError(f"crossover: curves of different lengths ({base.size} vs {cur.size})")
    hits = np.nonzero(base >= cur - atol)[0]
    return int(hits[0]) + 1 if hits.size else None
