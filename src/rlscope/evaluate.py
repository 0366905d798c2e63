"""Held-out accuracy of a policy on a task: batched HF ``generate``, greedy or sampled.

Under DeepSpeed ZeRO-3 call :func:`evaluate_task` on every rank with the same prompts and read the result on one
(:func:`rlscope.common.generation_ready`): during training every forward all-gathers parameters, so the ranks
generate in lock step (the same ``generate`` calls, with ``synced_gpus=True``, as TRL's own rollouts do); before the
DeepSpeed engine exists the whole model is gathered on every rank for the evaluation. Tested with 2 processes under
ZeRO-3 on CPU: the accuracy equals a 1-process evaluation of the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EvalResult:
    accuracy: float
    by_difficulty: dict[str, float]
    mean_length: float
    completions: list[str]
    rewards: list[float]
    sampled_accuracy: float | None = None  # mean reward of n samples per prompt at temperature 1
    sampled_by_difficulty: dict[str, float] | None = None
    n_samples: int = 0

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/accuracy": self.accuracy, f"{prefix}/mean_length": self.mean_length}
        out.update({f"{prefix}/accuracy_{k}": v for k, v in self.by_difficulty.items()})
        if self.sampled_accuracy is not None:
            out[f"{prefix}/sampled_accuracy"] = self.sampled_accuracy
            out.update({f"{prefix}/sampled_accuracy_{k}": v for k, v in (self.sampled_by_difficulty or {}).items()})
        return out


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
                         do_sample: bool = False, temperature: float = 1.0, seed: int | None = None) -> list[str]:
    """Left-padded batched generation; returns the decoded completions (special tokens stripped). Under ZeRO-3 call
    it on every rank with the same prompts (:func:`rlscope.common.generation_ready`)."""
    from rlscope.common import generation_ready

    with generation_ready(model) as synced:
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, do_sample, temperature, seed, synced)


def _generate(model, tokenizer, prompts, max_new_tokens, batch_size, do_sample, temperature, seed, synced):
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    out: list[str] = []
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             temperature=temperature if do_sample else None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             synced_gpus=synced)
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    if was_training:
        model.train()
    return out


def _by_difficulty(rows: list[dict], rewards: list[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for r, rew in zip(rows, rewards):
        groups.setdefault(r.get("difficulty", "all"), []).append(rew)
    return {k: sum(v) / len(v) for k, v in groups.items()}


def evaluate_task(model, tokenizer, task, split: str = "heldout", max_new_tokens: int | None = None,
                  do_sample: bool = False, temperature: float = 1.0, seed: int = 0,
                  n_samples: int = 0) -> EvalResult:
    """Accuracy of ``model`` on ``task``'s split (greedy by default: pass@1 of the greedy policy).

    ``n_samples > 0`` also measures sampled pass@1: the mean reward of ``n_samples`` completions per prompt at
    ``temperature`` (seeded), the quantity RL optimises directly.
    """
    rows = task.rows(split)
    prompts = [task.render_prompt(r, tokenizer) for r in rows]
    max_new = max_new_tokens or task.max_completion_length
    comps = generate_completions(model, tokenizer, prompts, max_new, do_sample=do_sample, temperature=temperature,
                                 seed=seed)
    rewards = [task.score(c, r) for c, r in zip(comps, rows)]
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in comps]
    result = EvalResult(accuracy=sum(rewards) / max(len(rewards), 1), by_difficulty=_by_difficulty(rows, rewards),
                        mean_length=sum(lengths) / max(len(lengths), 1), completions=comps, rewards=rewards)
    if n_samples > 0:
        rep_rows = [r for r in rows for _ in range(n_samples)]
        rep_prompts = [p for p in prompts for _ in range(n_samples)]
        samples = generate_completions(model, tokenizer, rep_prompts, max_new, batch_size=256, do_sample=True,
                                       temperature=temperature, seed=seed)
        s_rewards = [task.score(c, r) for c, r in zip(samples, rep_rows)]
        result.sampled_accuracy = sum(s_rewards) / len(s_rewards)
        result.sampled_by_difficulty = _by_difficulty(rep_rows, s_rewards)
        result.n_samples = n_samples
    return result
