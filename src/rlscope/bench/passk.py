"""``rlscope bench passk``: pass@k evaluation through rlscope's probe engine vs a bare batched ``generate`` of the
same samples."""

from __future__ import annotations

import tempfile
import time

from rlscope.bench.common import _sync


def _generated_lengths(gen, eos_token_id):
    """Per row of generated ids: the tokens up to and including its first end-of-sequence token, else all."""
    import torch

    if eos_token_id is None:
        return torch.full((gen.shape[0],), gen.shape[1], dtype=torch.long, device=gen.device)
    is_eos = gen == eos_token_id
    return torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, gen.shape[1])


def _bare_batched_generate(model, tok, prompts: list[str], n: int, batch_prompts: int, max_new_tokens: int,
                           full_length: bool = False) -> dict:
    """The reference of ``bench passk``: plain HF sampling (``do_sample``, T = 1, no top-k / top-p) of n samples per
    prompt, ``batch_prompts`` left-padded prompts per ``generate`` call (``num_return_sequences=n``).
    ``full_length``: no sample ends before ``max_new_tokens`` (``min_new_tokens = max_new_tokens``). Returns
    ``tokens`` (rows x steps: ``generate`` computes every row until the batch's last ends) and ``sample_tokens``
    (each sample up to its end-of-sequence token)."""
    import torch
    from transformers import GenerationConfig

    from rlscope.passk_eval import left_padded, pad_id, prompt_batches

    extra = {"min_new_tokens": max_new_tokens} if full_length else {}
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                              num_return_sequences=n, max_new_tokens=max_new_tokens, use_cache=True,
                              pad_token_id=pad_id(tok), eos_token_id=tok.eos_token_id, **extra)
    torch.manual_seed(0)
    tokens, sample_tokens = 0, []
    with torch.no_grad():
        for batch in prompt_batches(len(prompts), batch_prompts):
            ids, mask = left_padded(tok, [prompts[i] for i in batch], next(model.parameters()).device)
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1]:]
            tokens += gen.numel()
            sample_tokens.append(_generated_lengths(gen, tok.eos_token_id).sum())
    return {"tokens": tokens, "sample_tokens": int(torch.stack(sample_tokens).sum())}


def _keyed_tokens(model, tok, prompts: list[str], n: int, batch_prompts: int, max_new_tokens: int,
                  seed: int = 0) -> int:
    """The tokens rlscope's pass@k sampling generates for these prompts (the same keyed samples as the passk probe's:
    each sample up to its end-of-sequence token), decoded again outside the timed runs to count them."""
    from rlscope.decode import keyed_generate
    from rlscope.passk_eval import left_padded, pad_id, prompt_batches
    from rlscope.sampling import KeyedGumbelSampler, row_keys

    device = next(model.parameters()).device
    eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
    total = 0
    for batch in prompt_batches(len(prompts), batch_prompts):
        ids, mask = left_padded(tok, [prompts[i] for i in batch], device)
        keys = row_keys(seed, [i for i in batch for _ in range(n)], [s for _ in batch for s in range(n)])
        out = keyed_generate(model, ids, mask, KeyedGumbelSampler(keys.to(device), ids.shape[1]), max_new_tokens,
                             eos, pad_id(tok), repeats=n)
        total += int(_generated_lengths(out, tok.eos_token_id).sum())
    return total


def bench_passk(prompts: int = 64, n: int = 16, repeats: int = 3, batch_prompts: int | None = None,
                shape: str = "tiny", device: str = "cpu", max_new_tokens: int | None = None,
                full_length: bool | None = None, layers: int | None = None) -> dict:
    """pass@k evaluation (``prompts`` held-out prompts x ``n`` samples) through rlscope's probe engine (samples
    source: keyed batched sampling, scoring, gathering; the passk probe; store + logging) vs a bare batched
    ``model.generate`` of the same samples (same batches of prompts, same ``max_new_tokens``, plain HF sampling),
    interleaved; the ratio of the median seconds. CPU seconds (``time.process_time``) beside the wall seconds: on a
    shared machine they vary less.

    ``shape``: ``tiny`` (default) is the warm-started tiny model; a shape of :mod:`rlscope.shapes` (e.g.
    ``qwen2.5-1.5b``; ``layers`` to take fewer layers) is a random-weight model of that size over the character
    tokenizer, bf16 on a GPU, float32 on the CPU. ``device``: ``cpu`` or ``cuda`` (the GPU is synchronised before
    each clock is read). ``max_new_tokens``: default the task's completion budget.

    ``full_length`` (default: on for a shape, off for ``tiny``): no sample ends before ``max_new_tokens`` in either
    arm -- rlscope's through a copy of the tokenizer without an end-of-sequence token, the bare ``generate`` through
    ``min_new_tokens`` -- so both generate exactly prompts x n x ``max_new_tokens`` tokens (a random model ends its
    samples at random steps, and ``generate`` runs every row until the batch's last ends while rlscope drops ended
    rows: off, that difference is most of the ratio). ``rlscope_tokens``: the tokens rlscope's samples hold (each up
    to its end); ``bare_tokens``: the rows x steps ``generate`` computed; ``bare_sample_tokens``: its samples' tokens
    up to their ends."""
    import copy
    import statistics

    import torch

    from rlscope.callbacks import Observatory
    from rlscope.passk_eval import default_batch_prompts
    from rlscope.tasks import get_task
    from rlscope.tinymodel import load_policy

    batch_prompts = default_batch_prompts(n, batch_prompts)
    device = torch.device(device)
    if shape == "tiny":
        if layers is not None:
            raise ValueError("bench passk: layers applies to a shape of rlscope.shapes, not to the warm-started tiny "
                             "model")
        model, tok = load_policy("tiny-sft")
        model.to(device)
    else:
        from rlscope.shapes import build_shaped_model

        model, tok = build_shaped_model(shape, device, layers=layers)
    model.eval()
    full_length = shape != "tiny" if full_length is None else bool(full_length)
    task = get_task("chainsum", seed=0, n_heldout=max(prompts, 64))
    max_new = max_new_tokens or task.max_completion_length
    texts = [task.render_prompt(row, tok) for row in task.rows("heldout")[:prompts]]
    keyed_tok = tok
    if full_length:  # rlscope's arm: a tokenizer without an end-of-sequence token, so no sample ends early
        keyed_tok = copy.deepcopy(tok)
        keyed_tok.eos_token = None

    def timed(fn) -> tuple[float, float]:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        return time.perf_counter() - t0, time.process_time() - c0

    times: dict[str, list[tuple[float, float]]] = {"bare": [], "rlscope": []}
    scalars: dict = {}
    bare_counts: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        obs = Observatory({"passk": {"task": task, "n": n, "max_prompts": prompts, "batch_prompts": batch_prompts,
                                     "max_new_tokens": max_new}}, run_dir=tmp)
        calls = 0

        def full() -> None:
            nonlocal scalars, calls
            scalars = obs.measure(model, keyed_tok, step=calls, when="start" if calls == 0 else "step")
            calls += 1

        def bare() -> None:
            bare_counts.update(_bare_batched_generate(model, tok, texts, n, batch_prompts, max_new, full_length))

        for rep in range(repeats):
            for arm in (("bare", "rlscope") if rep % 2 == 0 else ("rlscope", "bare")):
                times[arm].append(timed(bare if arm == "bare" else full))
    rlscope_tokens = (prompts * n * max_new if full_length
                      else _keyed_tokens(model, tok, texts, n, batch_prompts, max_new))
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    prefix = "rlscope/passk/" + ("base_" if calls == 1 else "")
    return {"bench": "passk", "prompts": prompts, "n": n, "batch_prompts": batch_prompts, "repeats": repeats,
            "threads": torch.get_num_threads(), "max_new_tokens": max_new,
            "rlscope_seconds": [round(w, 3) for w, _ in times["rlscope"]],
            "bare_seconds": [round(w, 3) for w, _ in times["bare"]],
            "seconds": round(wall["rlscope"], 3), "bare_generate_seconds": round(wall["bare"], 3),
            "ratio": round(wall["rlscope"] / wall["bare"], 4),
            "cpu_seconds": round(cpu["rlscope"], 3), "bare_cpu_seconds": round(cpu["bare"], 3),
            "cpu_ratio": round(cpu["rlscope"] / cpu["bare"], 4),
            "pass@1": round(scalars[f"{prefix}pass@1"], 4), f"pass@{n}": round(scalars[f"{prefix}pass@{n}"], 4),
            "shape": shape, "device": str(device), "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "params": sum(p.numel() for p in model.parameters()), "full_length": full_length,
            "rlscope_tokens": rlscope_tokens, "bare_tokens": bare_counts["tokens"],
            "bare_sample_tokens": bare_counts["sample_tokens"],
            "rlscope_tokens_per_second": round(rlscope_tokens / wall["rlscope"], 1),
            "bare_tokens_per_second": round(bare_counts["tokens"] / wall["bare"], 1)}
