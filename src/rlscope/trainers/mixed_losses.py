"""The SFT terms of the interleaving schedules, as small functions on per-token log-probs.

* :func:`sft_nll` -- the token-mean negative log-likelihood of demonstration tokens (plain SFT steps, ReLIFT, HPT);
* :func:`chord_phi_nll` -- CHORD's token-weighted SFT loss (Zhang et al. 2025): each expert token's NLL weighted by
  phi = p (1 - p), p = exp(logp) the policy's probability of that token, phi held constant in the gradient;
* :func:`hpt_loss` -- HPT's per-prompt switch (Lv et al. 2025): RL for prompts whose pass rate is above gamma, SFT for
  the others, the SFT term weighted by the share of prompts switched to it;
* :func:`demo_token_logps` -- log-probs of the demonstration tokens under the model (one forward pass).
"""

from __future__ import annotations

import torch


def sft_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of -logp over the valid tokens (0 when there are none)."""
    mask = mask.to(token_logps.dtype)
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1.0)


def chord_phi_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean of -phi(p) * logp with phi(p) = p (1 - p) (no gradient through phi)."""
    mask = mask.to(token_logps.dtype)
    p = token_logps.detach().exp()
    phi = p * (1.0 - p)
    return -(phi * token_logps * mask).sum() / mask.sum().clamp(min=1.0)


def hpt_loss(rl_loss: torch.Tensor, sft_loss: torch.Tensor, n_sft_prompts: int, n_prompts: int) -> torch.Tensor:
    """RL loss (computed with the advantages of SFT-switched prompts zeroed) + share_switched * SFT loss."""
    share = n_sft_prompts / max(n_prompts, 1)
    return rl_loss + share * sft_loss if n_sft_prompts else rl_loss


def demo_batch(tokenizer, prompts: list[str], completions: list[str], device) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion(+EOS) ids with a mask over the completion tokens (the SFT targets)."""
    eos = tokenizer.eos_token or ""
    ids, tgt = [], []
    for p, c in zip(prompts, completions):
        pi = tokenizer(p, add_special_tokens=False)["input_ids"]
        ci = tokenizer(c + eos, add_special_tokens=False)["input_ids"]
        ids.append(pi + ci)
        tgt.append([0] * len(pi) + [1] * len(ci))
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
    attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
    targets = torch.tensor([x + [0] * (width - len(x)) for x in tgt], device=device)
    return {"input_ids": input_ids, "attention_mask": attention, "target_mask": targets}


def demo_token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs of each next token, mask of the demonstration targets), both (B, T-1)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logps, batch["target_mask"][:, 1:].bool()
