"""pass@k: the unbiased estimator for every k = 1..n, vectorised over prompts, and the base/current crossover.

With n samples of a prompt of which c are correct, the probability that at least one of k samples drawn without
replacement is correct is pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", Codex; unbiased, unlike max-over-k or bootstrapped best-of-N). Computed in the numerically stable
product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), here in log space for all k at once. Yue et al. 2025 ("Does
Reinforcement Learning Really Incentivize Reasoning Capacity in LLMs Beyond the Base Model?") compare the curves of
the base and the RL model: RL wins at small k, the base model catches up and overtakes at large k; the smallest k at
which base >= current is the crossover.

The registered probe ``passk`` (source ``samples``) reads the correct-sample counts of one evaluation
(:class:`SampleCounts`, produced live by :mod:`rlscope.callbacks.sources.samples` and offline by ``rlscope passk``):
the evaluation before the first update is the *base* curve, remembered in the probe's state (and restored from the
run store on resume); every later one is compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlscope.cadence import Cadence
from rlscope.probes import Curves, Records, Table, register


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


@dataclass
class SampleCounts:
    """One pass@k evaluation: ``n`` samples per prompt, ``counts[p]`` of them correct (prompts in the split's order).
    ``kind``: "base" (before the first update: the reference) or "current"; ``seconds``: the evaluation's time."""

    n: int
    counts: list[int]
    kind: str = "current"
    seconds: float = 0.0


def default_ks(n: int) -> list[int]:
    """The k of the logged scalars: powers of two up to n."""
    return [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if k <= n]


def restore_base(reader, state: dict) -> None:
    """A resumed run keeps its base curves (one per n) from ``passk.jsonl``."""
    for rec in reader.records("passk"):
        if rec.get("kind") == "base":
            state.setdefault("bases", {}).setdefault(int(rec["n"]), rec)


@register("passk", source="samples", inputs=("n", "counts", "kind", "seconds"),
          outputs=("pass@<k>", "base_pass@<k>", "crossover_k", "crossover_found", "prompts"),
          extras=("curve", "table", "record"),
          cost="heavy", cadence=Cadence(every=50, at_start=True, at_end=True), restore=restore_base)
def passk_stats(view: SampleCounts, state: dict, ks: list[int] | None = None) -> dict:
    """Unbiased pass@k for k = 1..n (Chen et al. 2021), against the base model's curve (Yue et al. 2025).

    Outputs: ``pass@K`` (current) or ``base_pass@K`` (the base evaluation itself) for the logged K (default powers of
    two up to n); on a current evaluation also ``base_pass@K``, ``crossover_k`` (smallest k with base >= current;
    left out when there is none) and ``crossover_found``; ``prompts``; ``record`` (the whole curve and the per-prompt
    counts, to ``passk.jsonl``); ``curve`` and ``table`` (base vs current over k, W&B).
    """
    n = view.n
    ks = default_ks(n) if ks is None else [int(k) for k in ks]
    _check(n, np.zeros(0, dtype=np.int64), np.asarray(ks, dtype=np.int64))
    curve, _ = pass_at_k_curve(n, view.counts)
    curve = [float(v) for v in curve]
    record = {"kind": view.kind, "n": n, "curve": curve, "counts": [int(c) for c in view.counts],
              "seconds": view.seconds}
    out: dict = {"prompts": float(len(view.counts))}
    bases = state.setdefault("bases", {})
    if view.kind == "base":
        bases[n] = record
        out.update({f"base_pass@{k}": curve[k - 1] for k in ks})
        out["record"] = Records("passk", [record])
        return out
    out.update({f"pass@{k}": curve[k - 1] for k in ks})
    base = bases.get(n)
    if base is not None:
        out.update({f"base_pass@{k}": base["curve"][k - 1] for k in ks})
        cross = crossover_k(base["curve"], curve)
        record["crossover_k"] = cross
        out["crossover_found"] = float(cross is not None)
        if cross is not None:
            out["crossover_k"] = float(cross)
        ks_all = list(range(1, n + 1))
        out["curve"] = Curves(ks_all, {"base": base["curve"], "current": curve}, title="pass@k vs k", xname="k")
        out["table"] = Table(["k", "base", "current"], [[k, b, c] for k, b, c in zip(ks_all, base["curve"], curve)])
    out["record"] = Records("passk", [record])
    return out
