"""Behaviour of the completions: length, clipping, reflection words, repetition.

The "aha" dynamics of RL on reasoning models show up as longer completions with more self-verification (DeepSeek-AI
2025, "DeepSeek-R1"; the reflection-word counts follow the survey's appendix C and e.g. Gandhi et al. 2025, "Cognitive
Behaviors that Enable Self-Improving Reasoners"). Per completion: its length in tokens, whether it hit the length
limit (no EOS), how many reflection words/phrases it contains, and its repetition ratio (share of repeated token
n-grams, 1 - distinct/total). :func:`row_features` computes the text-dependent features where the text is (each rank);
:func:`behavior_stats` reduces the per-row values of the whole step.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import torch

from rlscope.cadence import Cadence
from rlscope.probes import register
from rlscope.probes.batch import TokenBatch

REFLECTION_WORDS = ("wait", "recheck", "rethink", "try again", "alternatively", "retry", "however")


@lru_cache(maxsize=32)
def _pattern(words: tuple[str, ...]) -> re.Pattern:
    if not words:
        raise ValueError("behavior probe: the reflection word list is empty")
    alts = "|".join(r"\s+".join(re.escape(part) for part in w.lower().split()) for w in words)
    return re.compile(rf"(?<![a-z])(?:{alts})(?![a-z])", re.IGNORECASE)


def reflection_count(text: str, words: tuple[str, ...] = REFLECTION_WORDS) -> int:
    """Occurrences of the reflection words/phrases in ``text`` (case-insensitive, whole words)."""
    return len(_pattern(tuple(words)).findall(text))


def repetition_ratio(ids: list[int], n: int = 4) -> float:
    """1 - (#distinct n-grams / #n-grams) of a token sequence; 0 for sequences shorter than n."""
    if n < 1:
        raise ValueError(f"behavior probe: ngram must be >= 1, got {n}")
    total = len(ids) - n + 1
    if total <= 0:
        return 0.0
    grams = {tuple(ids[i:i + n]) for i in range(total)}
    return 1.0 - len(grams) / total


def row_features(texts: list[str], completion_ids: torch.Tensor, mask: torch.Tensor,
                 words: tuple[str, ...] = REFLECTION_WORDS, ngram: int = 4) -> dict[str, torch.Tensor]:
    """Per-completion ``reflections`` and ``repetition`` (float64 tensors of shape (N,))."""
    if len(texts) != completion_ids.shape[0]:
        raise ValueError(f"behavior probe: {len(texts)} texts for {completion_ids.shape[0]} completions")
    ids = [row[m].tolist() for row, m in zip(completion_ids, mask.bool())]
    return {"reflections": torch.tensor([float(reflection_count(t, words)) for t in texts], dtype=torch.float64),
            "repetition": torch.tensor([repetition_ratio(i, ngram) for i in ids], dtype=torch.float64)}


def _mean(x: torch.Tensor) -> float:
    return float(x.to(torch.float64).mean()) if x.numel() else math.nan


@register("behavior", source="tokens", inputs=("length", "has_eos", "correct", "reflections", "repetition"),
          outputs=("n_completions", "length_mean", "empty_share", "length_correct", "length_wrong", "clipped_share",
                   "reflection_rate", "reflection_share", "repetition"),
          cost="cheap", cadence=Cadence(every=1))
def behavior_stats(batch: TokenBatch, state: dict) -> dict:
    """Completion behaviour: length (by correctness), clipping, empty completions, reflection words, repetition.

    Outputs: ``length_mean``, ``length_correct`` / ``length_wrong``, ``clipped_share`` (no EOS), ``empty_share`` (nothing before the EOS),
    ``reflection_rate`` (reflection words per completion), ``reflection_share`` (completions with at least one),
    ``repetition`` (mean n-gram repetition ratio), ``n_completions``. Missing inputs give NaN, never a crash."""
    n = batch.n_rows
    length = batch.length.to(torch.float64) if batch.length is not None else torch.empty(0)
    # empty: nothing before the end -- no token at all, or only the EOS (TRL's completion mask counts the EOS)
    content = length - batch.has_eos.to(torch.float64) if batch.has_eos is not None and n else length
    out = {"n_completions": float(n), "length_mean": _mean(length),
           "empty_share": _mean((content <= 0).to(torch.float64)) if n else math.nan}
    if batch.correct is not None and n:
        c = batch.correct.bool()
        out["length_correct"] = _mean(length[c])
        out["length_wrong"] = _mean(length[~c])
    else:
        out["length_correct"] = out["length_wrong"] = math.nan
    out["clipped_share"] = _mean((~batch.has_eos.bool()).to(torch.float64)) if batch.has_eos is not None else math.nan
    if batch.reflections is not None:
        out["reflection_rate"] = _mean(batch.reflections)
        out["reflection_share"] = _mean((batch.reflections > 0).to(torch.float64))
    else:
        out["reflection_rate"] = out["reflection_share"] = math.nan
    out["repetition"] = _mean(batch.repetition) if batch.repetition is not None else math.nan
    return out
