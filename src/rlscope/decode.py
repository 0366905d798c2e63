"""Batched keyed decoding that drops finished rows: the generation loop of pass@k.

HF ``generate`` keeps every row of a batch in the forward passes until the last row ends; with many samples per
prompt one long sample keeps the whole batch running (the tiny model on chainsum: mean completion 22 tokens, longest
96). :func:`keyed_generate` is the same greedy loop over :class:`rlscope.sampling.KeyedGumbelSampler`'s scores (left
padding, position ids from the attention mask, a ``DynamicCache``, logits of the last position only), but after a
step where enough rows have ended (a quarter of the batch: ``compact_at``) it removes them from the batch and from
the KV cache (``Cache.batch_select_indices``); until then an ended row is fed padding and its tokens are discarded,
as HF ``generate`` does with a finished row. The tokens are those of
``model.generate(..., do_sample=False, logits_processor=[sampler])`` (tested: identical on the tiny model, for any
``compact_at``), up to the float rounding of logits in batches of other shapes.

Lock step (DeepSpeed ZeRO-3, ``synced=True``): every forward all-gathers parameters, so every rank runs the same
forwards. After each step the ranks all-reduce whether any row anywhere is still running (as HF's ``synced_gpus``
does); a rank whose rows all ended keeps one finished row in the batch and feeds it padding, discarding the results,
until every rank is done.
"""

from __future__ import annotations

import inspect

import torch

from rlscope.common import any_rank


def _forward(model, input_ids, attention_mask, position_ids, cache, last_only: bool) -> torch.Tensor:
    kw = {"logits_to_keep": 1} if last_only else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True, **kw)
    return out.logits[:, -1, :]


# The share of the batch's rows that must have ended before they are dropped (the whole KV cache is copied then). On
# 2 CPU cores (tiny model, 64 prompts x 16 samples, one thread) 0.25 took 3.36 s of CPU time against 3.46 s dropping
# them at once: the forwards of ended rows cost about what the copies saved; on a GPU, where a forward's time hardly
# grows with its rows, the copies are what costs.
COMPACT_AT = 0.25


@torch.no_grad()
def keyed_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, sampler, max_new_tokens: int,
                   eos_token_ids, pad_token_id: int, repeats: int = 1, synced: bool = False,
                   compact_at: float | None = None) -> torch.Tensor:
    """(rows * repeats, max_new_tokens) generated token ids of the left-padded ``input_ids``, each prompt sampled
    ``repeats`` times (output row r: prompt r // repeats, keyed by the sampler's key r), ``pad_token_id`` after a
    row's end-of-sequence token (kept) or its last token. The prompts are run once and their KV cache repeated.
    ``synced``: every rank runs the same forwards (ZeRO-3); call it on every rank the same number of times.

    ``compact_at``: rows that ended are removed from the batch and the KV cache once they are at least this share of
    the batch (0: at every step a row ends; 1: never, until all have ended; default :data:`COMPACT_AT`, a quarter).
    Until then an ended row is fed ``pad_token_id`` (as HF ``generate`` feeds a finished row), its tokens discarded:
    the tokens do not depend on ``compact_at`` (rows do not interact), up to the float rounding of logits in batches
    of other shapes. One device -> host synchronisation per token (the count of ended rows), plus one per compaction.
    """
    from transformers import DynamicCache

    if max_new_tokens < 1:
        raise ValueError(f"keyed_generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    device = input_ids.device
    compact_at = COMPACT_AT if compact_at is None else float(compact_at)
    if not 0 <= compact_at <= 1:
        raise ValueError(f"keyed_generate: compact_at must be in [0, 1], got {compact_at}")
    eos = torch.tensor(sorted({int(e) for e in eos_token_ids}), dtype=torch.long, device=device)
    rows = input_ids.shape[0] * repeats
    out = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    alive = torch.arange(rows, device=device)  # out-rows of the batch rows; empty: this rank is done
    ended = torch.zeros(rows, dtype=torch.bool, device=device)  # batch rows that ended, not yet dropped
    n_ended = 0  # ended.sum(), on the host
    mask = attention_mask.long()
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    last_only = "logits_to_keep" in inspect.signature(model.forward).parameters
    cache = DynamicCache(config=model.config)
    logits = _forward(model, input_ids, mask, position, cache, last_only)
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
        logits, mask = logits.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
        position = position.repeat_interleave(repeats, 0)
    position = position[:, -1:]
    for t in range(max_new_tokens):
        if alive.numel():
            tokens = sampler.scores(logits, t, alive).argmax(-1)
            if n_ended:
                tokens = tokens.masked_fill(ended, pad_token_id)  # an ended row writes pad (what out holds)
            out[alive, t] = tokens
            ended |= torch.isin(tokens, eos)
            n_ended = int(ended.sum())  # the step's one synchronisation
            running = n_ended < alive.numel()
        else:
            running = False
        if t == max_new_tokens - 1 or not (any_rank(running, device) if synced else running):
            break
        if running:
            if n_ended and n_ended >= max(1.0, compact_at * alive.numel()):
                idx = (~ended).nonzero().squeeze(1)
                cache.batch_select_indices(idx)
                alive, mask, position, tokens = alive[idx], mask[idx], position[idx], tokens[idx]
                ended, n_ended = ended[idx], 0
            step_ids = tokens[:, None]
        else:  # synced, this rank is done: one finished row keeps joining the forwards, its logits discarded
            if alive.numel() or mask.shape[0] > 1:
                cache.batch_select_indices(torch.zeros(1, dtype=torch.long, device=device))
                alive, mask, position = alive[:0], mask[:1], position[:1]
                ended, n_ended = ended[:0], 0
            step_ids = torch.full((1, 1), pad_token_id, dtype=torch.long, device=device)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        position = position + 1
        logits = _forward(model, step_ids, mask, position, cache, last_only)
    return out
