"""Planning tokens: HICRA's strategic grams (Wang et al. 2025, "Emergent Hierarchical Reasoning in LLMs through
Reinforcement Learning") mined from rollout text, the share of planning tokens and the semantic entropy per step.

Wang et al. find that RL first consolidates low-level execution and then the gains come from high-level planning:
"strategic grams" (3-5-grams that act as units of strategy, e.g. "let me check", "but wait") become more frequent and
more diverse -- semantic entropy over them rises while token entropy falls. Without any hub model (their clustering
uses an embedding model; here each gram is its own cluster): completions are split into lower-case word tokens
(numbers become ``<n>``, symbols are tokens); 3-5-grams are counted by document frequency over the successful
completions of the RL steps; grams in fewer than ``min_docs`` successful completions, or in more than 90% of all
completions (a template), are left out; the ``top_share`` (20%, as in HICRA) most frequent remain, at most
``max_grams``, and a gram inside a longer kept gram with almost the same frequency is dropped. Per step: the share of
tokens inside a strategic gram, and the entropy (nats) of which strategic grams were used. Long runs are read as a
sample: at most ``max_steps`` steps spread over the run, ``per_step`` completions of each.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from rlscope.analysis import stats
from rlscope.analysis.analyses import Skip, register

TOKEN = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")


def words(text: str) -> list[str]:
    return ["<n>" if t.isdigit() else t for t in TOKEN.findall(text.lower())]


def grams_of(tokens: list[str], sizes=(3, 4, 5)) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for n in sizes for i in range(len(tokens) - n + 1)}


def strategic_grams(success: list[list[str]], everything: list[list[str]], min_docs: int = 3,
                    top_share: float = 0.2, max_grams: int = 50) -> list[tuple[tuple[str, ...], int]]:
    """(gram, document frequency among successful completions), most frequent first (see the module docstring)."""
    df = Counter(g for toks in success for g in grams_of(toks))
    df_all = Counter(g for toks in everything for g in grams_of(toks))
    ceiling = 0.9 * len(everything)
    candidates = [(g, c) for g, c in df.items() if c >= min_docs and df_all[g] <= ceiling]
    candidates.sort(key=lambda gc: (-gc[1], -len(gc[0]), gc[0]))
    kept = candidates[:max(1, min(max_grams, int(math.ceil(top_share * len(candidates)))))] if candidates else []
    out = []
    for g, c in kept:  # a gram inside a longer kept gram that is almost as frequent adds nothing
        if not any(len(h) > len(g) and _inside(g, h) and hc >= 0.9 * c for h, hc in kept):
            out.append((g, c))
    return out


def _inside(g: tuple, h: tuple) -> bool:
    return any(h[i:i + len(g)] == g for i in range(len(h) - len(g) + 1))


def coverage(tokens: list[str], grams: list[tuple[str, ...]]) -> tuple[int, Counter]:
    """Tokens covered by occurrences of the grams, and how often each gram occurs."""
    covered = np.zeros(len(tokens), dtype=bool)
    used: Counter = Counter()
    by_size: dict[int, set] = {}
    for g in grams:
        by_size.setdefault(len(g), set()).add(g)
    for n, pool in by_size.items():
        for i in range(len(tokens) - n + 1):
            g = tuple(tokens[i:i + n])
            if g in pool:
                covered[i:i + n] = True
                used[g] += 1
    return int(covered.sum()), used


def entropy(counter: Counter) -> float:
    total = sum(counter.values())
    if not total:
        return 0.0
    p = np.asarray(list(counter.values()), dtype=np.float64) / total
    return float(-(p * np.log(p)).sum())


@register("planning_tokens", requires=(("rollouts",),),
          outputs=("grams", "planning_share_start", "planning_share_end", "planning_share_trend",
                   "semantic_entropy_start", "semantic_entropy_end", "semantic_entropy_trend", "successful", "steps",
                   "per_step"))
def planning_tokens(frame, min_docs: int = 3, top_share: float = 0.2, max_grams: int = 50,
                    success: float | None = None, max_steps: int = 100, per_step: int = 32) -> tuple[str, dict]:
    """HICRA's strategic grams from rollout text; planning-token share and semantic entropy per step, and their trends."""
    rows = [r for r in frame.rollout_rows(max_steps, per_step)
            if isinstance(r.get("completion"), str) and r.get("reward") is not None]
    if len(rows) < 20:
        raise Skip(f"{len(rows)} RL rollouts with text and reward; mining strategic grams needs at least 20")
    rewards = np.asarray([float(r["reward"]) for r in rows])
    if success is None:
        success = 1.0 if set(np.unique(rewards)) <= {0.0, 1.0} else float(np.quantile(rewards, 0.75))
    tokens = [words(r["completion"]) for r in rows]
    good = [t for t, rw in zip(tokens, rewards) if rw >= success]
    if len(good) < min_docs:
        raise Skip(f"only {len(good)} successful completions (reward >= {success:g})")
    grams = strategic_grams(good, tokens, min_docs, top_share, max_grams)
    if not grams:
        raise Skip("no n-gram recurs across successful completions")
    pool = [g for g, _ in grams]
    per_step: dict[int, list] = {}
    for r, toks in zip(rows, tokens):
        per_step.setdefault(int(r["step"]), []).append(toks)
    steps, share, sem = [], [], []
    for step in sorted(per_step):
        covered, total, used = 0, 0, Counter()
        for toks in per_step[step]:
            c, u = coverage(toks, pool)
            covered, total = covered + c, total + len(toks)
            used.update(u)
        steps.append(step), share.append(covered / total if total else 0.0), sem.append(entropy(used))
    s = np.asarray(steps, dtype=float)
    share, sem = np.asarray(share), np.asarray(sem)
    values = {"grams": [[" ".join(g), c] for g, c in grams[:15]], "successful": len(good), "steps": len(steps),
              "planning_share_start": stats.window_median(share, 0.1, end=False),
              "planning_share_end": stats.window_median(share, 0.1, end=True),
              "semantic_entropy_start": stats.window_median(sem, 0.1, end=False),
              "semantic_entropy_end": stats.window_median(sem, 0.1, end=True),
              "per_step": [[int(a), float(b), float(c)] for a, b, c in zip(steps, share, sem)]}
    for name, y in (("planning_share", share), ("semantic_entropy", sem)):
        tr = stats.trend(s, y) if len(s) >= 4 else {"slope": None, "p": None}
        values[f"{name}_trend"] = tr["slope"]
        values[f"{name}_p"] = tr["p"]
    shown = ", ".join(f"'{g}'" for g, _ in values["grams"][:4])
    verdict = (f"{len(grams)} strategic grams in {len(good)} successful completions (e.g. {shown}); planning-token share "
               f"{values['planning_share_start']:.2%} -> {values['planning_share_end']:.2%}, semantic entropy "
               f"{values['semantic_entropy_start']:.2f} -> {values['semantic_entropy_end']:.2f} nats")
    return verdict + ".", values
