"""pass@k evaluation: n keyed samples per held-out prompt, batched, batches split across ranks, counts gathered.

**Batches.** The prompts are grouped into fixed batches by prompt index (``batch_prompts`` prompts each: batch b holds
prompts b*B .. b*B+B-1, whatever the number of ranks) and the batches are dealt to the ranks round-robin. One batched
decoding per batch samples all n completions of its prompts (B*n rows; :func:`rlscope.decode.keyed_generate`: the
prompts are run once and their KV cache repeated n times, and finished samples leave the batch, so one long sample no
longer keeps B*n rows running). ``rlscope bench passk``: 64 prompts x 16 samples of the tiny model, against a bare
batched HF ``generate`` of the same samples.

**Sampling keyed per (prompt, sample, position).** Each row decodes greedily over
:class:`rlscope.sampling.KeyedGumbelSampler`'s scores: temperature, top-p, then Gumbel noise hashed from (seed, prompt
index, sample index, position, token id) -- Gumbel-max, an exact sample from the filtered softmax(logits / T). No
random generator is drawn from, so the caller's RNG state is untouched and a prompt's samples do not depend on which
rank draws them nor on the other prompts of its batch -- up to the model's logits: a batch of another shape may round
them differently (see :func:`evaluate_passk`). The counts, and hence the curve, are identical for any number of
processes at a fixed ``batch_prompts`` (tested with 1 and 2 real processes). The sampling is explicit (temperature,
top_p, no top-k, no repetition penalty) and reads nothing from the model's ``generation_config``, so a shipped
``generation_config.json`` cannot silently change what "sampling from the policy" means.

**DeepSpeed ZeRO-3** (:func:`rlscope.common.generation_ready`). During training every forward all-gathers the
partitioned parameters, a collective: generation runs in lock step, as TRL's own rollouts with
``ds3_gather_for_generation=False`` do: after each token the ranks all-reduce whether any row is still running (HF's
``synced_gpus``; a rank whose rows are done keeps joining the forwards with one finished row), and every rank makes the
same number of batched decodings (a rank with fewer batches decodes batch 0 again and discards it). TRL's default,
gathering the whole model and lifting DeepSpeed's hooks, needs the DeepSpeed engine, which a callback is not given.
Before the engine exists (parameters partitioned at load, no hooks) the whole model is gathered on every rank and each
rank decodes its own batches. Tested with 2 processes under ZeRO-3 on CPU (both cases): the counts equal a 1-process
evaluation of the same weights.

**vLLM: not used.** pass@k always generates with this loop on the training model, also when TRL generates its
rollouts with vLLM (``use_vllm``). A vLLM path is not implemented: vLLM (not installed here) accepts a per-request
``SamplingParams(n=n, temperature=T, top_p=p, seed=...)``, which would make each prompt's samples independent of the
rank split too, but its sampler is not this keyed Gumbel hash, so its counts would not equal these, and no test here
could run it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from rlscope.common import generation_ready, is_correct
from rlscope.decode import keyed_generate
from rlscope.probes.passk import pass_at_k_curve
from rlscope.sampling import KeyedGumbelSampler, check_sampling, row_keys

BATCH_ROWS = 1024  # rows (prompts x n samples) per batched decoding when batch_prompts is not given


def default_batch_prompts(n: int, batch_prompts: int | None = None) -> int:
    """Prompts per batched decoding: ``batch_prompts`` when given, else as many as fit ``BATCH_ROWS`` rows of ``n``
    samples each (64 prompts at n = 16, 16 at n = 64): the batch's memory is bounded by its rows, whatever n is."""
    if batch_prompts is not None:
        if batch_prompts < 1:
            raise ValueError(f"pass@k: batch_prompts must be >= 1, got {batch_prompts}")
        return batch_prompts
    return max(1, BATCH_ROWS // max(n, 1))


@dataclass
class PassKResult:
    n: int
    counts: list[int]  # correct samples per prompt, in the split's order
    curve: list[float]  # mean pass@k for k = 1..n
    seconds: float = 0.0

    def at(self, k: int) -> float:
        return self.curve[k - 1]


def pad_id(tokenizer) -> int:
    """The token left padding uses: the tokenizer's pad token, else its end-of-sequence token."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("pass@k: the tokenizer has neither a pad nor an eos token to pad a batch of prompts with")
    return pid


def left_padded(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``prompts``, left-padded to the longest (the tokenizer is not changed)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, x in enumerate(ids):
        if x:
            input_ids[r, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[r, width - len(x):] = 1
    return input_ids.to(device), mask.to(device)


def sample_batch(model, tokenizer, prompts: list[str], indices: list[int], n: int, max_new_tokens: int, seed: int,
                 temperature: float = 1.0, top_p: float = 1.0, synced: bool = False) -> list[list[str]]:
    """n keyed samples of each prompt (``indices``: the prompts' indices in the split, their sampling keys), one
    left-padded batch of len(prompts) * n rows (:func:`rlscope.decode.keyed_generate`); per prompt, its n
    completions (decoded, special tokens stripped)."""
    device = next(model.parameters()).device
    input_ids, mask = left_padded(tokenizer, prompts, device)
    keys = row_keys(seed, [i for i in indices for _ in range(n)], [s for _ in indices for s in range(n)])
    sampler = KeyedGumbelSampler(keys.to(device), input_ids.shape[1], temperature, top_p)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    out = keyed_generate(model, input_ids, mask, sampler, max_new_tokens, eos, pad_id(tokenizer), repeats=n,
                         synced=synced)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return [texts[j * n:(j + 1) * n] for j in range(len(indices))]


def prompt_batches(count: int, batch_prompts: int) -> list[list[int]]:
    """Prompt indices 0..count-1 grouped into fixed batches of ``batch_prompts`` (the last may be shorter)."""
    return [list(range(b, min(b + batch_prompts, count))) for b in range(0, count, batch_prompts)]


def evaluate_passk(model, tokenizer, task, n: int = 16, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   split: str = "heldout", max_prompts: int | None = None, max_new_tokens: int | None = None,
                   correct_threshold: float = 0.5, batch_prompts: int | None = None) -> PassKResult:
    """pass@k of ``model`` on ``task``'s split for k = 1..n. Call it on every rank (batches are split, counts gathered).

    A sample is correct when ``task.score`` >= ``correct_threshold`` (:func:`rlscope.common.is_correct`). The counts do
    not depend on the number of ranks. Across ``batch_prompts`` they agree up to the logits' float rounding in
    differently shaped batches (the tiny model on CPU: identical for 1, 5 and 16 prompts per batch in the tests).
    ``batch_prompts``: None for :func:`default_batch_prompts`.
    """
    from accelerate import PartialState

    if n < 1:
        raise ValueError(f"pass@k evaluation: n must be >= 1, got {n}")
    batch_prompts = default_batch_prompts(n, batch_prompts)
    check_sampling(temperature, top_p)
    t0 = time.perf_counter()
    rows = task.rows(split)[:max_prompts]
    if not rows:
        raise ValueError(f"pass@k evaluation: split {split!r} of task {task.name!r} has no prompts")
    state = PartialState()
    batches = prompt_batches(len(rows), batch_prompts)
    mine = batches[state.process_index::state.num_processes]
    max_new = max_new_tokens or task.max_completion_length
    was_training = model.training
    model.eval()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    local = []
    with generation_ready(model) as synced, torch.random.fork_rng(devices=devices):  # nothing draws from the RNG
        calls = math.ceil(len(batches) / state.num_processes) if synced else len(mine)
        for j in range(calls):
            batch = mine[j] if j < len(mine) else batches[0]  # lock step: a dummy batch, discarded
            texts = sample_batch(model, tokenizer, [task.render_prompt(rows[i], tokenizer) for i in batch], batch, n,
                                 max_new, seed, temperature, top_p, synced=synced)
            if j >= len(mine):
                continue
            for i, samples in zip(batch, texts):
                scores = torch.tensor([task.score(t, rows[i]) for t in samples], dtype=torch.float64)
                local.append((i, int(is_correct(scores, correct_threshold).sum())))
    if was_training:
        model.train()
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        local = gather_object(local)
    by_index = dict(local)
    counts = [int(by_index[i]) for i in range(len(rows))]
    curve, _ = pass_at_k_curve(n, np.asarray(counts))
    return PassKResult(n=n, counts=counts, curve=[float(v) for v in curve], seconds=time.perf_counter() - t0)


def passk_report(model, tokenizer, task_name: str, n: int, task_config: dict | None = None, **kw) -> dict:
    """Offline pass@k of one model (the ``rlscope passk`` command): a JSON-ready dict with the whole curve."""
    from accelerate import PartialState

    from rlscope.tasks import get_task

    state = PartialState(cpu=not torch.cuda.is_available())  # torchrun / accelerate launch on CPU: gloo
    model.to(state.device)
    res = evaluate_passk(model, tokenizer, get_task(task_name, **(task_config or {})), n=n, **kw)
    return {"task": task_name, "n": n, "prompts": len(res.counts), "world_size": state.num_processes,
            "pass@1": res.at(1), f"pass@{n}": res.at(n), "curve": res.curve, "counts": res.counts,
            "seconds": round(res.seconds, 3)}
