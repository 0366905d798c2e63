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
from rlscope.probes.reduce import sums

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


@register("behavior", source="tokens", inputs=("length", "has_eos", "correct", "reflections", "repetition"),
          outputs=("n_completions", "length_mean", "empty_share", "length_correct", "length_wrong", "clipped_share",
                   "reflection_rate", "reflection_share", "repetition"),
          cost="cheap", cadence=Cadence(every=1), per_rank=True)
def behavior_stats(batch: TokenBatch, state: dict) -> dict:
    """Completion behaviour: length (by correctness), clipping, empty completions, reflection words, repetition.

    Outputs: ``length_mean``, ``length_correct`` / ``length_wrong``, ``clipped_share`` (no EOS), ``empty_share`` (nothing before the EOS),
    ``reflection_rate`` (reflection words per completion), ``reflection_share`` (completions with at least one),
    ``repetition`` (mean n-gram repetition ratio), ``n_completions``. Missing inputs give NaN, never a crash.
    Per rank: one collective of sums and counts."""
    n = batch.n_rows
    length = batch.length.to(torch.float64) if batch.length is not None else torch.zeros(n, dtype=torch.float64)
    eos = batch.has_eos.bool() if batch.has_eos is not None else None
    # empty: nothing before the end -- no token at all, or only the EOS (TRL's completion mask counts the EOS)
    content = length - eos.to(torch.float64) if eos is not None else length
    c = batch.correct.bool() if batch.correct is not None else None
    refl, rep = batch.reflections, batch.repetition
    local = [n, float(length.sum()), float((content <= 0).sum()),
             float(length[c].sum()) if c is not None else 0.0, float(c.sum()) if c is not None else 0.0,
             float(length[~c].sum()) if c is not None else 0.0, float((~c).sum()) if c is not None else 0.0,
             float((~eos).sum()) if eos is not None else 0.0,
             float(refl.to(torch.float64).sum()) if refl is not None else 0.0,
             float((refl > 0).sum()) if refl is not None else 0.0,
             float(rep.to(torch.float64).sum()) if rep is not None else 0.0]
    total, s_len, n_empty, s_len_c, n_c, s_len_w, n_w, n_clip, s_refl, n_refl, s_rep = sums(batch.comm, local)

    def ratio(a: float, b: float, have=True) -> float:
        return a / b if have and b else math.nan

    return {"n_completions": total, "length_mean": ratio(s_len, total, batch.length is not None),
            "empty_share": ratio(n_empty, total, batch.length is not None),
            "length_correct": ratio(s_len_c, n_c, c is not None), "length_wrong": ratio(s_len_w, n_w, c is not None),
            "clipped_share": ratio(n_clip, total, eos is not None),
            "reflection_rate": ratio(s_refl, total, refl is not None),
            "reflection_share": ratio(n_refl, total, refl is not None),
            "repetition": ratio(s_rep, total, rep is not None)}
