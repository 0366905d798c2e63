"""Held-out accuracy of a policy on a task: batched HF ``generate``, greedy or sampled."""

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

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/accuracy": self.accuracy, f"{prefix}/mean_length": self.mean_length}
        out.update({f"{prefix}/accuracy_{k}": v for k, v in self.by_difficulty.items()})
        return out


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
                         do_sample: bool = False, temperature: float = 1.0, seed: int | None = None) -> list[str]:
    """Left-padded batched generation; returns the decoded completions (special tokens stripped)."""
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
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    if was_training:
        model.train()
    return out


def evaluate_task(model, tokenizer, task, split: str = "heldout", max_new_tokens: int | None = None,
                  do_sample: bool = False, temperature: float = 1.0, seed: int = 0) -> EvalResult:
    """Accuracy of ``model`` on ``task``'s split (greedy by default: pass@1 of the greedy policy)."""
    rows = task.rows(split)
    prompts = [task.render_prompt(r, tokenizer) for r in rows]
    comps = generate_completions(model, tokenizer, prompts, max_new_tokens or task.max_completion_length,
                                 do_sample=do_sample, temperature=temperature, seed=seed)
    rewards = [task.score(c, r) for c, r in zip(comps, rows)]
    groups: dict[str, list[float]] = {}
    for r, rew in zip(rows, rewards):
        groups.setdefault(r.get("difficulty", "all"), []).append(rew)
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in comps]
    return EvalResult(accuracy=sum(rewards) / max(len(rewards), 1),
                      by_difficulty={k: sum(v) / len(v) for k, v in groups.items()},
                      mean_length=sum(lengths) / max(len(lengths), 1), completions=comps, rewards=rewards)
