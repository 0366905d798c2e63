"""SFT-RL schedules: at each optimizer step, decide the step's kind (RL, SFT or mixed) from training signals.

The survey (Hu et al., appendix C.1) groups SFT-RL integration into switching (sequential or interleaved) and fused
losses. Every schedule here answers one question per optimizer step -- :meth:`Schedule.decide` -- from the
:class:`Signals` the trainer gathers (step, rolling accuracy of recent rollouts, held-out accuracy) and the per-prompt
pass rates it is shown (:meth:`Schedule.observe_groups`), and may keep state (a buffer). What a schedule needs from
the trainer beyond that is declared on :class:`Schedule` (demonstrations, held-out checks, its own SFT rows, per-prompt
weights). Decisions are logged (``rlscope/schedule/*``) so the analysis can shade SFT phases on every plot. Pick one
by name in a recipe (``schedule: relift``, ``schedule_config: {buffer_size: 8}``); an unknown name or parameter gets
the usual did-you-mean error.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from rlscope.common import keyword_options
from rlscope.registry import Registry, check_names

SCHEDULES: Registry[type["Schedule"]] = Registry("schedule")


@dataclass
class Signals:
    """What a schedule sees before optimizer step ``step`` (1-based within the interleaved trainer)."""

    step: int
    rolling_accuracy: float | None = None  # share of correct rollouts over the recent RL generations
    heldout_accuracy: float | None = None  # measured only before steps for which the schedule wants_heldout


@dataclass
class Decision:
    """``kind``: "rl", "sft" or "mixed". For "mixed": loss = rl_weight * RL + sft_weight * SFT, where
    ``per_prompt`` (HPT) switches the two per prompt by its rollout accuracy (weights then are the defaults for a
    prompt that is switched to SFT / stays in RL), and ``token_weighting`` (CHORD) weights SFT tokens by p(1-p).
    ``sft_source``: "demos" (the SFT dataset) or "buffer" (ReLIFT's hard prompts)."""

    kind: str = "rl"
    sft_weight: float = 0.0
    rl_weight: float = 1.0
    sft_source: str = "demos"
    per_prompt: bool = False
    token_weighting: str | None = None

    @classmethod
    def sft(cls, source: str = "demos") -> "Decision":
        """A plain SFT step on demonstrations (``source`` "demos") or on the schedule's own rows ("buffer")."""
        return cls("sft", sft_weight=1.0, rl_weight=0.0, sft_source=source)


class Schedule:
    """Base class. Subclasses implement :meth:`decide`, and override the hooks below where they need them.

    ``needs_demonstrations``: the schedule learns from demonstrations of the RL prompts (the trainer checks at
    start that the task has them).
    """

    name = "schedule"
    needs_demonstrations = False

    def decide(self, signals: Signals) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe_groups(self, groups: list[tuple[dict | None, float]]) -> None:
        """Every RL generation's prompt groups, before dynamic sampling drops any: (row, or None when the row lives
        on another rank; share of correct samples) per group."""

    def wants_heldout(self, step: int) -> bool:
        """Whether the trainer should measure held-out accuracy before ``step`` (into ``Signals.heldout_accuracy``)."""
        return False

    def take_batch(self, n: int) -> list[dict]:
        """Up to ``n`` rows of the schedule's own (``sft_source="buffer"``) for an SFT step; they leave the schedule."""
        return []

    def prompt_weights(self, pass_rate: float) -> tuple[float, float]:
        """(w_sft, w_rl) of one prompt with rollout pass rate ``pass_rate`` (decisions with ``per_prompt``)."""
        return 0.0, 1.0

    def log_values(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        """Everything the schedule remembers (its attributes; a deque as its items and length), JSON-able: saved in
        every checkpoint, so a resumed run decides as an uninterrupted one would (ReLIFT's buffer, HEAT's
        cooldown, SFT-then-RL's switch)."""
        return {k: {"deque": list(v), "maxlen": v.maxlen} if isinstance(v, deque) else v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            if isinstance(v, dict) and set(v) == {"deque", "maxlen"}:
                v = deque(v["deque"], maxlen=v["maxlen"])
            setattr(self, k, v)


def schedule(cls: type[Schedule]) -> type[Schedule]:
    """Class decorator: register a schedule under its ``name``."""
    SCHEDULES.register(cls.name, cls)
    return cls


@schedule
class SftThenRL(Schedule):
    """SFT for ``sft_steps`` steps -- or, with ``until_accuracy``, until the held-out accuracy reaches it -- then RL:
    the cold-start recipe of DeepSeek-R1 (DeepSeek-AI 2025, "DeepSeek-R1: Incentivizing Reasoning Capability in LLMs
    via Reinforcement Learning")."""

    name = "sft_then_rl"

    def __init__(self, sft_steps: int = 100, until_accuracy: float | None = None, check_every: int = 10):
        if sft_steps < 0:
            raise ValueError(f"sft_then_rl: sft_steps must be >= 0, got {sft_steps}")
        self.sft_steps, self.until_accuracy, self.check_every = sft_steps, until_accuracy, max(check_every, 1)
        self.switched = False

    def wants_heldout(self, step: int) -> bool:
        """Every ``check_every`` SFT steps while ``until_accuracy`` is set and the switch has not happened."""
        return self.until_accuracy is not None and not self.switched and step > 1 and (step - 1) % self.check_every == 0

    def decide(self, s: Signals) -> Decision:
        if not self.switched:
            reached = (self.until_accuracy is not None and s.heldout_accuracy is not None
                       and s.heldout_accuracy >= self.until_accuracy)
            if s.step > self.sft_steps or reached:
                self.switched = True
        return Decision("rl") if self.switched else Decision.sft()


@schedule
class Alternate(Schedule):
    """``rl_steps`` RL steps, then ``sft_steps`` SFT step(s), repeating (a fixed interleaving baseline)."""

    name = "alternate"

    def __init__(self, rl_steps: int = 4, sft_steps: int = 1):
        if rl_steps < 1 or sft_steps < 1:
            raise ValueError(f"alternate: rl_steps and sft_steps must be >= 1, got {rl_steps}, {sft_steps}")
        self.rl_steps, self.sft_steps = rl_steps, sft_steps

    def decide(self, s: Signals) -> Decision:
        pos = (s.step - 1) % (self.rl_steps + self.sft_steps)
        return Decision("rl") if pos < self.rl_steps else Decision.sft()


@schedule
class HeatOnLowAccuracy(Schedule):
    """Annealed-RLVR (Hu et al. 2025a, see the survey's appendix C.1): when the rolling accuracy of the rollouts falls
    below ``threshold``, ``heat_steps`` SFT "heating" step(s) disrupt the suboptimal state, then RL continues
    ("annealing"). ``cooldown`` RL steps must pass before the next heating, and ``min_rl_steps`` before the first (the
    rolling window needs data)."""

    name = "heat_on_low_accuracy"

    def __init__(self, threshold: float = 0.2, heat_steps: int = 1, cooldown: int = 5, min_rl_steps: int = 2):
        if not 0 <= threshold <= 1:
            raise ValueError(f"heat_on_low_accuracy: threshold must be in [0, 1], got {threshold}")
        self.threshold, self.heat_steps, self.cooldown, self.min_rl_steps = threshold, heat_steps, cooldown, min_rl_steps
        self.heat_left = 0
        self.rl_since_heat = 0
        self.rl_steps = 0
        self.heats = 0

    def decide(self, s: Signals) -> Decision:
        if self.heat_left > 0:
            self.heat_left -= 1
            return Decision.sft()
        low = s.rolling_accuracy is not None and s.rolling_accuracy < self.threshold
        ready = self.rl_steps >= self.min_rl_steps and (self.heats == 0 or self.rl_since_heat >= self.cooldown)
        if low and ready:
            self.heats += 1
            self.heat_left = self.heat_steps - 1
            self.rl_since_heat = 0
            return Decision.sft()
        self.rl_steps += 1
        self.rl_since_heat += 1
        return Decision("rl")

    def log_values(self) -> dict[str, float]:
        return {"heats": float(self.heats)}


@schedule
class ReLIFT(Schedule):
    """ReLIFT (Ma et al. 2025, "Learning What Reinforcement Learning Can't: Interleaved Online Fine-Tuning for Hardest
    Questions"): prompts on which every rollout fails go to a buffer with their demonstration; when it holds
    ``buffer_size`` prompts, one SFT update on them, and the buffer empties."""

    name = "relift"
    needs_demonstrations = True

    def __init__(self, buffer_size: int = 8, max_buffer: int = 1024):
        if buffer_size < 1:
            raise ValueError(f"relift: buffer_size must be >= 1, got {buffer_size}")
        self.buffer_size, self.max_buffer = buffer_size, max_buffer
        self.buffer: deque = deque(maxlen=max_buffer)
        self.global_count = 0  # hard prompts seen by all ranks (the decision must be the same on every rank)
        self.updates = 0

    def observe_groups(self, groups) -> None:
        for row, rate in groups:
            if rate == 0.0:
                self.global_count += 1
                if row is not None:
                    self.buffer.append(row)

    def decide(self, s: Signals) -> Decision:
        if self.global_count >= self.buffer_size:
            self.global_count = 0
            self.updates += 1
            return Decision.sft("buffer")
        return Decision("rl")

    def take_batch(self, n: int) -> list[dict]:
        return [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]

    def log_values(self) -> dict[str, float]:
        return {"buffer_size": float(self.global_count), "sft_updates": float(self.updates)}


@schedule
class HPTMix(Schedule):
    """HPT (Lv et al. 2025, "Towards a Unified View of Large Language Model Post-Training"): loss = w_sft * SFT +
    w_rl * RL per prompt, the weights switched by that prompt's rollout accuracy: a prompt whose pass rate is at most
    ``gamma`` (the paper's default 0: solved by no rollout) is learned from its demonstration (w_sft = 1, w_rl = 0),
    any other by RL (w_sft = 0, w_rl = 1)."""

    name = "hpt_mix"
    needs_demonstrations = True

    def __init__(self, gamma: float = 0.0):
        self.gamma = gamma

    def decide(self, s: Signals) -> Decision:
        return Decision("mixed", sft_weight=1.0, rl_weight=1.0, per_prompt=True)

    def prompt_weights(self, pass_rate: float) -> tuple[float, float]:
        return (1.0, 0.0) if pass_rate <= self.gamma else (0.0, 1.0)


@schedule
class ChordTokenWeight(Schedule):
    """CHORD (Zhang et al. 2025, "On-Policy RL Meets Off-Policy Experts: Harmonizing Supervised Fine-Tuning and
    Reinforcement Learning via Dynamic Weighting"): SFT as an auxiliary loss, L = (1 - mu) * RL + mu * SFT_phi, where
    each expert token's NLL is weighted by phi = p (1 - p) (p the policy's probability of that token: up-weights
    tokens the model is unsure of, down-weights both known and far-off ones) and the global weight mu decays from
    ``mu_start`` to ``mu_end`` over ``decay_steps`` (cosine)."""

    name = "chord_token_weight"

    def __init__(self, mu_start: float = 0.5, mu_end: float = 0.05, decay_steps: int = 100):
        if not (0 <= mu_end <= 1 and 0 <= mu_start <= 1):
            raise ValueError(f"chord_token_weight: mu must be in [0, 1], got {mu_start}, {mu_end}")
        self.mu_start, self.mu_end, self.decay_steps = mu_start, mu_end, max(decay_steps, 1)

    def mu(self, step: int) -> float:
        t = min(max(step - 1, 0) / self.decay_steps, 1.0)
        return self.mu_end + 0.5 * (self.mu_start - self.mu_end) * (1 + math.cos(math.pi * t))

    def decide(self, s: Signals) -> Decision:
        mu = self.mu(s.step)
        return Decision("mixed", sft_weight=mu, rl_weight=1.0 - mu, token_weighting="p(1-p)")


def get_schedule(name: str, **config) -> Schedule:
    """The schedule called ``name`` with its parameters; the usual error for an unknown name or parameter."""
    cls = SCHEDULES.get(name)
    check_names("parameter", sorted(config), keyword_options(cls.__init__, skip=1),
                where=f"of schedule {name!r}")
    return cls(**config)
