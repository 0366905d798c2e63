"""The embedded synthetic verifiable task: ``chainsum``, adding a chain of numbers.

Prompt ``"4+8+3+2="``; the answer is the number after the last ``#`` (``"...#17"``). How much to reason is the
model's choice, because the SFT demonstrations mix three styles:

* direct      ``#17``
* scratchpad  ``12+3+2,15+2,17#17``  (the chain reduced one addition at a time)
* re-check    ``12+3+2,16+2,wait 15+2,17#17`` -- a slip, caught and fixed after "wait"

A direct answer to a long chain is hard for a small model, a scratchpad is reliable, a re-check repairs slips: RL can
shift the mix, so completion length and reflection-word rate are free to move (unlike a fixed-length scratchpad).
The held-out split holds in-distribution problems and harder ones (longer chains than training), so pass@k at
large k measures coverage, not only sampling noise. Everything is generated from a seed: the same seed gives the
same splits on every machine.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

ANSWER_RE = re.compile(r"#(-?\d+)\s*$")
# Bump when the generator or the demonstration format changes: cached warm starts are keyed by it.
FORMAT_VERSION = 3


@dataclass(frozen=True)
class ChainSumSpec:
    min_terms: int = 3
    max_terms: int = 6
    max_value: int = 9
    # held-out "hard" problems: longer chains than any training problem
    hard_min_terms: int = 7
    hard_max_terms: int = 8
    # style mix of the SFT demonstrations: direct, scratchpad, re-check
    style_weights: tuple[float, float, float] = (0.35, 0.45, 0.20)
    # 0: the plain sum; m > 0: the sum modulo m at every step (with m = 10 each scratchpad step is one fact of a
    # 100-entry table -- the tiny model needed ~1,000 SFT steps on short chains to learn it; a direct answer must
    # compose them all)
    modulus: int = 0
    # the scratchpad's form: "rewrite" (what is left of the chain, each step) or "running" (the running sums only)
    scratch: str = "rewrite"
    # share of SFT demonstrations that open with a filler phrase (tokens that carry nothing: RL can drop them)
    filler_share: float = 0.0
    # a filler opening repeats 1..filler_max phrases (long ones push completions past a tight budget: harmful tokens)
    filler_max: int = 1
    # a difficulty curriculum over the training split, in order: ((n_prompts, min_terms, max_terms), ...); n_prompts
    # 0 = every remaining prompt. Empty: every prompt has min_terms..max_terms. Needs shuffle_dataset: false.
    curriculum: tuple = ()
    # label each term with a letter in the prompt (``a4+b8+c3+d2=``) and in the scratchpad (``b12,c15,d17#17``): each
    # scratchpad step finds its term by its key (a lookup, as an induction head does) instead of by counting terms
    keyed: bool = False


def make_problem(rng: random.Random, n_terms: int, max_value: int) -> list[int]:
    return [rng.randint(0, max_value) for _ in range(n_terms)]


KEYS = "abcdefghijklmnopqrstuvwxyz"


def prompt_text(terms: list[int], keyed: bool = False) -> str:
    if keyed and len(terms) > len(KEYS):
        raise ValueError(f"chainsum: keyed chains have at most {len(KEYS)} terms, got {len(terms)}")
    return "+".join(f"{KEYS[i]}{t}" if keyed else str(t) for i, t in enumerate(terms)) + "="


def terms_of(prompt: str) -> list[int]:
    """The chain's terms from its prompt, keyed or not."""
    return [int(t) for t in re.findall(r"\d+", prompt)]


def _slip(rng: random.Random, value: int, modulus: int = 0) -> int:
    """A wrong value for a step (modulo ``modulus`` when given): off by one or by ten, never the right one."""
    wrong = value + rng.choice([-10, -1, 1, 10])
    wrong = wrong if wrong >= 0 and wrong != value else value + 1
    if modulus:
        wrong %= modulus
        wrong = wrong if wrong != value else (value + 1) % modulus
    return wrong


FILLERS = ("ok so ", "let me see, ", "hmm, ")


def demonstration(terms: list[int], style: str, rng: random.Random, modulus: int = 0,
                  scratch: str = "rewrite", keyed: bool = False) -> str:
    """A correct completion of ``terms`` in one of the three styles (``direct``, ``scratch``, ``recheck``).

    ``scratch="rewrite"``: the scratchpad reduces the chain one addition at a time, rewriting what is left
    (``4+8+3+2=`` -> ``12+3+2,15+2,17``): each step copies the previous one shifted by a term. ``"running"``: only the
    running sums (``12,15,17``): linear instead of quadratic in the chain's length, but each step must find its term in
    the prompt. ``recheck`` makes one slip in a step, then writes ``wait`` and the corrected step. ``keyed``: every
    shown number carries the key of the last term it includes (``b12+c3+d2`` / ``b12``).
    """
    total = answer_of(terms, modulus)
    if style == "direct" or len(terms) == 1:
        return f"#{total}"
    steps, rest = [], list(terms)
    slip_at = rng.randrange(len(terms) - 1) if style == "recheck" else -1

    def show(values: list[int], first_key: int) -> str:
        return "+".join(f"{KEYS[first_key + j]}{v}" if keyed else str(v) for j, v in enumerate(values))

    for i in range(len(terms) - 1):
        merged = answer_of(rest[:2], modulus)
        rest = [merged] + rest[2:]
        shown = rest if scratch == "rewrite" else rest[:1]
        step = show(shown, i + 1)
        if i == slip_at:
            wrong = show([_slip(rng, merged, modulus)] + shown[1:], i + 1)
            step = f"{wrong},wait {step}"
        steps.append(step)
    return ",".join(steps) + f"#{total}"


def answer_of(terms: list[int], modulus: int = 0) -> int:
    """The chain's answer: its sum, or the sum modulo ``modulus``."""
    return sum(terms) % modulus if modulus else sum(terms)


def extract_answer(completion: str) -> int | None:
    m = ANSWER_RE.search(completion.strip())
    return int(m.group(1)) if m else None


def reward(completion: str, answer: int | str) -> float:
    """1.0 when the completion ends in ``#<the sum>``, else 0.0 (a missing or malformed answer scores 0)."""
    got = extract_answer(completion)
    return 1.0 if got is not None and got == int(answer) else 0.0


def build_splits(seed: int = 0, n_train: int = 20000, n_sft: int = 20000, n_heldout: int = 64,
                 hard_share: float = 0.25, spec: ChainSumSpec = ChainSumSpec()) -> dict[str, list[dict]]:
    """Return ``{"sft": [...], "train": [...], "heldout": [...]}`` as lists of rows.

    sft rows: ``prompt``, ``completion``, ``answer``, ``style``; train rows: ``prompt``, ``answer``, ``n_terms``;
    heldout rows add ``difficulty`` ("in" or "hard"). Held-out prompts never appear in train or sft.
    """
    rng = random.Random(seed)
    n_hard = int(round(n_heldout * hard_share))
    heldout, seen = [], set()
    while len(heldout) < n_heldout:
        hard = len(heldout) < n_hard
        lo, hi = (spec.hard_min_terms, spec.hard_max_terms) if hard else (spec.min_terms, spec.max_terms)
        terms = make_problem(rng, rng.randint(lo, hi), spec.max_value)
        p = prompt_text(terms, spec.keyed)
        if p in seen:
            continue
        seen.add(p)
        heldout.append({"prompt": p, "answer": str(answer_of(terms, spec.modulus)), "n_terms": len(terms),
                        "difficulty": "hard" if hard else "in"})

    def fresh(n, lo=spec.min_terms, hi=spec.max_terms):
        rows = []
        while len(rows) < n:
            terms = make_problem(rng, rng.randint(lo, hi), spec.max_value)
            p = prompt_text(terms, spec.keyed)
            if p in seen:
                continue
            rows.append((terms, p))
        return rows

    if spec.curriculum:
        drawn = []
        for n_prompts, lo, hi in spec.curriculum:
            drawn += fresh(int(n_prompts) or max(n_train - len(drawn), 0), int(lo), int(hi))
    else:
        drawn = fresh(n_train)
    train = [{"prompt": p, "answer": str(answer_of(t, spec.modulus)), "n_terms": len(t)} for t, p in drawn]
    styles = ("direct", "scratch", "recheck")
    sft = []
    for terms, p in fresh(n_sft):
        style = rng.choices(styles, weights=spec.style_weights)[0]
        completion = demonstration(terms, style, rng, spec.modulus, spec.scratch, spec.keyed)
        if spec.filler_share and rng.random() < spec.filler_share:
            repeats = rng.randint(1, spec.filler_max) if spec.filler_max > 1 else 1
            completion = "".join(rng.choice(FILLERS) for _ in range(repeats)) + completion
        sft.append({"prompt": p, "completion": completion, "answer": str(answer_of(terms, spec.modulus)),
                    "style": style})
    # hard prompts were drawn first; shuffle (with its own RNG: the other splits stay as they are) so that any
    # prefix of the held-out split -- e.g. pass@k on its first N prompts -- mixes both difficulties
    random.Random(seed * 7_919 + 1).shuffle(heldout)
    return {"sft": sft, "train": train, "heldout": heldout}
