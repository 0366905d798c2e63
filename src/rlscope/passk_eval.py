"""pass@k evaluation: n seeded samples per held-out prompt, prompts split across ranks, counts gathered.

Sampling is seeded per prompt (``derive_seed(seed, "passk", prompt index)``), one ``generate`` call per prompt with ``num_return_sequences=n``
and no padding, so a prompt's samples -- and hence the curve -- do not depend on how the prompts are split across
ranks or batched. The caller's RNG state is restored afterwards: evaluating inside a training run does not change the
run's own sampling. The generation config is explicit (temperature, top_p, no top-k, no repetition penalty), so a
model's shipped ``generation_config.json`` cannot silently change what "sampling from the policy" means.

With vLLM (TRL's ``use_vllm``), the same counts can come from ``LLM.generate(prompts, SamplingParams(n=n,
temperature=T, top_p=p, seed=prompt_seed(seed, index)))`` per prompt; this module uses HF ``generate``, which is what the tests
cover.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from rlscope.common import derive_seed, is_correct
from rlscope.probes.passk import pass_at_k_curve


@dataclass
class PassKResult:
    n: int
    counts: list[int]  # correct samples per prompt, in the split's order
    curve: list[float]  # mean pass@k for k = 1..n
    seconds: float = 0.0

    def at(self, k: int) -> float:
        return self.curve[k - 1]


def _generation_config(tokenizer, n: int, temperature: float, top_p: float, max_new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, repetition_penalty=1.0,
                            num_return_sequences=n, max_new_tokens=max_new_tokens, use_cache=True,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


@torch.no_grad()
def sample_prompt(model, tokenizer, prompt: str, gen_config, seed: int) -> list[str]:
    """``gen_config.num_return_sequences`` seeded samples of one prompt (decoded, special tokens stripped)."""
    device = next(model.parameters()).device
    enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(device)
    torch.manual_seed(seed)
    out = model.generate(**enc, generation_config=gen_config)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def prompt_seed(seed: int, index: int) -> int:
    """The sampling seed of prompt ``index`` (the same whichever rank samples it)."""
    return derive_seed(seed, "passk", index)


def evaluate_passk(model, tokenizer, task, n: int = 16, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   split: str = "heldout", max_prompts: int | None = None, max_new_tokens: int | None = None,
                   correct_threshold: float = 0.5) -> PassKResult:
    """pass@k of ``model`` on ``task``'s split for k = 1..n. Call it on every rank (prompts are split, counts gathered).

    A sample is correct when ``task.score`` >= ``correct_threshold`` (:func:`rlscope.common.is_correct`).
    """
    from accelerate import PartialState

    if n < 1:
        raise ValueError(f"pass@k evaluation: n must be >= 1, got {n}")
    t0 = time.perf_counter()
    rows = task.rows(split)[:max_prompts]
    if not rows:
        raise ValueError(f"pass@k evaluation: split {split!r} of task {task.name!r} has no prompts")
    state = PartialState()
    mine = list(range(state.process_index, len(rows), state.num_processes))
    gen_config = _generation_config(tokenizer, n, temperature, top_p, max_new_tokens or task.max_completion_length)
    was_training = model.training
    model.eval()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    local = []
    with torch.random.fork_rng(devices=devices):
        for i in mine:
            texts = sample_prompt(model, tokenizer, task.render_prompt(rows[i], tokenizer), gen_config,
                                  prompt_seed(seed, i))
            scores = torch.tensor([task.score(t, rows[i]) for t in texts], dtype=torch.float64)
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
