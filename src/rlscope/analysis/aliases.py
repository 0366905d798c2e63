"""Canonical metric names and the names each framework logs them under.

:data:`ALIASES` maps a canonical name to an ordered list of ``(framework, pattern)``; the first pattern that matches a
metric of the run wins (``*`` matches any text, e.g. verl's data-source names). The alias table of docs/analysis.md is this table.
Frameworks: rlscope (its probes), TRL (new names; ``old`` marks TRL < 0.20 names), verl (``old`` marks verl < 0.4,
e.g. ``actor/entropy_loss``, which old verl used for the mean token entropy), OpenRLHF (its ``train/`` keys, checked
against v0.11.0; it logs entropy as ``entropy_loss`` only when ``--actor.entropy_coef`` is set, and no share of
zero-std groups), and the W&B / TensorBoard / CSV spellings of the same (the readers strip ``train/`` prefixes).
"""

from __future__ import annotations

import fnmatch

# canonical name -> (meaning, [(framework, pattern), ...]) in order of preference
ALIASES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "reward": ("mean training reward (what RL maximises)", [
        ("OpenRLHF", "rollout/reward_mean"), ("TRL / rlscope", "reward"), ("verl", "critic/rewards/mean"),
        ("verl", "critic/score/mean"), ("W&B export", "train/reward")]),
    "reward_std": ("standard deviation of the training reward", [
        ("TRL", "reward_std"), ("verl", "critic/rewards/std"), ("verl", "critic/score/std"),
        ("OpenRLHF", "rollout/reward_std")]),
    "train_accuracy": ("share of correct training completions (a 0/1 correctness reward)", [
        ("rlscope / TRL", "rewards/*correct*/mean"), ("TRL", "rewards/*accuracy*/mean"),
        ("TRL old", "rewards/*accuracy*"), ("TRL old", "rewards/*correct*"),
        ("verl (0/1 verifier score)", "critic/score/mean")]),
    "heldout_accuracy": ("accuracy on held-out prompts (greedy, or pass@1 of samples)", [
        ("verl", "val-core/*/acc/mean@1"), ("verl", "val-core/*/acc/mean@*"), ("verl", "val-core/*/reward/mean@1"),
        ("verl", "val-core/*/score/mean@1"), ("verl old", "val/test_score/*"), ("TRL", "eval_rewards/*correct*/mean"),
        ("TRL", "eval/rewards/*correct*/mean"), ("TRL", "eval_rewards/*accuracy*/mean"),
        ("TRL", "eval/rewards/*accuracy*/mean"), ("TRL", "eval_reward"), ("TRL", "eval/reward"),
        ("OpenRLHF", "eval/eval_*_pass1"), ("OpenRLHF", "eval_*_pass1"),
        ("rlscope", "heldout/pass@1"), ("rlscope", "heldout/accuracy")]),
    "entropy": ("mean token entropy of the policy", [
        ("rlscope", "rlscope/entropy/mean"), ("TRL", "entropy"), ("verl", "actor/entropy"),
        ("verl old", "actor/entropy_loss"), ("OpenRLHF", "entropy_loss")]),
    "response_length": ("mean completion length in tokens", [
        ("rlscope", "rlscope/behavior/length_mean"), ("TRL", "completions/mean_length"),
        ("TRL old", "completion_length"), ("verl", "response_length/mean"),
        ("OpenRLHF", "rollout/response_length_mean"), ("OpenRLHF", "response_length")]),
    "clipped_ratio": ("share of completions cut at the length cap", [
        ("rlscope", "rlscope/behavior/clipped_share"), ("TRL", "completions/clipped_ratio"),
        ("verl", "response_length/clip_ratio"), ("OpenRLHF", "rollout/truncated_rate"), ("OpenRLHF", "truncated")]),
    "kl": ("KL divergence to the reference policy", [
        ("TRL / OpenRLHF", "kl"), ("verl", "actor/kl_loss"), ("verl", "critic/kl")]),
    "clip_ratio": ("share of tokens whose probability ratio was clipped", [
        ("TRL", "clip_ratio/region_mean"), ("TRL old", "clip_ratio"), ("verl", "actor/pg_clipfrac"),
        ("OpenRLHF", "ppo_clip_ratio")]),
    "zero_std_share": ("share of prompt groups whose rewards are all equal (zero advantage)", [
        ("TRL", "frac_reward_zero_std")]),
    "grad_norm": ("gradient norm before clipping", [
        ("rlscope", "rlscope/grad/norm"), ("TRL", "grad_norm"), ("verl", "actor/grad_norm"),
        ("OpenRLHF", "actor_grad_norm")]),
    "learning_rate": ("learning rate", [
        ("TRL", "learning_rate"), ("verl", "actor/lr"), ("verl old", "actor/lr(1e-4)"), ("OpenRLHF", "actor_lr")]),
    "loss": ("training loss", [("TRL", "loss"), ("CSV export", "Training Loss"), ("verl", "actor/pg_loss"),
                               ("OpenRLHF", "policy_loss")]),
    "reflection_rate": ("reflection words per completion", [("rlscope", "rlscope/behavior/reflection_rate")]),
    "tokens": ("tokens processed so far (a compute axis)", [("TRL", "num_tokens")]),
}


def resolve(canonical: str, names) -> str | None:
    """The first of ``names`` (a run's metric names) that ``canonical``'s patterns match, in pattern order."""
    entry = ALIASES.get(canonical)
    if entry is None:
        return None
    pool = sorted(names)
    for _, pattern in entry[1]:
        if any(ch in pattern for ch in "*?["):
            hits = fnmatch.filter(pool, pattern)
            if hits:
                return hits[0]
        elif pattern in names:
            return pattern
    return None
