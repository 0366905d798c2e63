"""Benchmarks (``rlscope bench ...``): each prints one JSON object as its last line."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rlscope.shapes import SHAPES


def bench_step(steps: int = 20, warmup: int = 2, recipe: str = "tiny_dapo") -> dict:
    """Optimizer steps per second of a tiny recipe (the baseline for later overhead ratios).

    The first ``warmup`` steps (model load, first generation) are excluded: the rate is measured from the step
    timestamps the trainer logs, over the steps after warm-up.
    """
    from transformers import TrainerCallback

    from rlscope import paths
    from rlscope.recipe import parse_recipe
    from rlscope.train import run

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        run_args, cfg, model_args = parse_recipe(
            ["--config", str(paths.recipe(recipe)), "--max_steps", str(steps + warmup), "--save_strategy", "no",
             "--report_to", "none", "--disable_tqdm", "true", "--runs_dir", tmp, "--run_name", "bench-step",
             "--eval_heldout", "false"])
        summary = run(run_args, cfg, model_args, quiet=True, callbacks=(Stamp(),))
    timed = stamps[warmup:]
    seconds = timed[-1] - stamps[warmup - 1] if warmup else timed[-1] - timed[0]
    n = len(timed) if warmup else len(timed) - 1
    return {"bench": "step", "recipe": recipe, "steps_timed": n, "seconds": round(seconds, 3),
            "steps_per_second": round(n / seconds, 4), "seconds_per_step": round(seconds / n, 4),
            "world_size": summary["world_size"]}


def _stamp_callback(stamps: list, own: list[float]):
    """At each step's end: (the time, rlscope's own seconds so far); on a GPU, once its queued work is done."""
    import torch
    from transformers import TrainerCallback

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), own[0]))

    return Stamp()


OVERHEAD_DEVICE_FLAGS = {None: [], "cpu": ["--use_cpu", "true", "--bf16", "false"],
                         "cuda": ["--use_cpu", "false", "--bf16", "true"]}


def _overhead_run(arm: str, recipe: str, steps: int, warmup: int, tmp: str, index: int, model: str | None = None,
                  device: str | None = None, probes: str = "default") -> tuple[float, float, float | None]:
    """Seconds per optimizer step (after ``warmup`` steps) of one arm, of them the seconds in rlscope's own code (0
    for ``bare``), and the seconds of the weights probe's pass (``probes="heavy"``; else None): ``bare`` = stock
    ``trl.GRPOTrainer``; ``rlscope`` = rlscope's DAPOTrainer with the run store and the default Observatory attached
    (``heavy``: also ``grad`` at every step and ``weights`` every 50 steps and at the end, whose end-of-run pass,
    after the last timed step, is the one timed). ``model``: a model directory (default: the warm-started tiny
    model); ``device``: ``cuda`` runs with ``use_cpu`` false and bf16, ``cpu`` with ``use_cpu`` true and float32,
    None as the recipe says."""
    import dataclasses

    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlscope.callbacks import attach
    from rlscope.recipe import parse_recipe
    from rlscope.tasks import get_task
    from rlscope.tinymodel import tiny_sft_model
    from rlscope.trainers.dapo import DAPOTrainer

    run_args, cfg, _ = parse_recipe(
        ["--config", recipe,  # a recipe file or a shipped recipe's name (parse_recipe resolves it)
         "--max_steps", str(steps + warmup), "--save_strategy", "no",
         "--report_to", "none", "--disable_tqdm", "true", "--output_dir", f"{tmp}/{arm}-{index}",
         "--dynamic_sampling", "false", "--overlong_buffer_len", "0", *OVERHEAD_DEVICE_FLAGS[device]])
    task = get_task(run_args.task, **run_args.task_config)
    model = str(model or tiny_sft_model(run_args.task, run_args.task_config))
    tok = AutoTokenizer.from_pretrained(model)
    stamps: list[tuple[float, float]] = []
    own = [0.0]
    common = dict(model=model, reward_funcs=task.reward_funcs(), train_dataset=task.dataset("train"),
                  processing_class=tok, callbacks=[_stamp_callback(stamps, own)])
    if arm == "bare":
        names = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
        trainer = GRPOTrainer(args=GRPOConfig(**{k: v for k, v in cfg.to_dict().items() if k in names
                                                 and k not in ("generation_batch_size",)}), **common)
    else:
        trainer = DAPOTrainer(args=cfg, **common)
        heavy = {"grad": 1, "weights": {"every": 50, "at_end": True}} if probes == "heavy" else {}
        obs = attach(trainer, f"{tmp}/{arm}-{index}/run", **heavy)
        trainer.run_store = obs.writer
        _time_rlscope_code(trainer, own)
    trainer.train()
    (t0, own0), (t1, own1) = stamps[warmup - 1], stamps[-1]
    n = len(stamps) - warmup
    weights = obs.last.get("rlscope/engine/weights_seconds") if arm != "bare" and probes == "heavy" else None
    return (t1 - t0) / n, (own1 - own0) / n, weights


def _time_rlscope_code(trainer, own: list[float]) -> None:
    """Accumulate into ``own[0]`` the seconds spent in rlscope's own code during training: every event handler of
    the callbacks defined in rlscope (engine, guard, alarms, ...) and the trainer's rollout capture -- what rlscope
    adds to a step, measured inside the one process rather than as the difference of two noisy wall times."""
    import functools

    def timed(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                own[0] += time.perf_counter() - t0
        return wrapper

    for cb in trainer.callback_handler.callbacks:
        if type(cb).__module__.startswith("rlscope."):
            for name in dir(cb):
                if name.startswith("on_") and callable(getattr(cb, name)):
                    setattr(cb, name, timed(getattr(cb, name)))
    for name in ("_capture_rollouts", "_annotate_rollouts"):
        if hasattr(trainer, name):
            setattr(trainer, name, timed(getattr(trainer, name)))


HEAVY_WEIGHTS_EVERY = 50  # bench overhead --probes heavy: the weights probe's cadence the amortized ratio assumes


def _overhead_model(model: str | None, device: str | None, tmp: str) -> str | None:
    """The model directory of ``bench overhead``: None (or ``tiny``/``tiny-sft``) for the warm-started tiny model; a
    shape of :mod:`rlscope.shapes` built with random weights on ``device`` (bf16 on cuda) and saved under ``tmp``;
    else a model directory (checked)."""
    from rlscope.shapes import is_shape, save_shaped_model

    if model is None or model in ("tiny", "tiny-sft"):
        return None
    if is_shape(model):
        return str(save_shaped_model(model, Path(tmp) / f"model-{model}", "cuda" if device == "cuda" else "cpu"))
    if not Path(model).is_dir() and "/" not in model:
        from rlscope.shapes import get_shape

        get_shape(model)  # neither a directory nor a shape: the shape error names the closest shape
    from rlscope.preflight import check_model

    check_model(model, what="model")
    return model


def bench_overhead(steps: int = 16, warmup: int = 2, repeats: int = 5, recipe: str = "tiny_dapo",
                   large_tokens: int = 1_000_000, model: str | None = None, device: str | None = None,
                   probes: str = "default") -> dict:
    """Step time of the tiny DAPO recipe with rlscope (trainer, run store, default token probes) vs a bare TRL
    ``GRPOTrainer``: same config, seed and steps, runs interleaved (ABBA...), ratio of the median seconds/step.

    Dynamic sampling and overlong shaping are off in both arms so that both do exactly the same generation and
    reward work (stock TRL has neither); what remains is everything rlscope adds to a step. ``ratio``: the median of
    the repeats' paired ratios (each pair ran back to back), beside their range and the ratio of the medians.
    ``own_code_ratio``: step time / (step time - the seconds in rlscope's own callbacks and rollout capture), timed
    inside the rlscope arm -- what rlscope adds, free of the run-to-run noise of two wall times. Also: the token probes'
    own seconds on a synthetic step of ``large_tokens`` valid tokens in one process (median of three), what they
    would add to a step of that size.

    ``recipe``: a bundled recipe's name or a recipe file. ``model``: a shape of :mod:`rlscope.shapes` (e.g.
    ``qwen2.5-1.5b``: random weights, saved to a temporary directory once for all runs) or a model directory;
    default the warm-started tiny model. ``device``: ``cuda`` runs the recipe with ``use_cpu`` false and bf16,
    ``cpu`` with ``use_cpu`` true and float32, None as the recipe says.

    ``probes="heavy"``: the rlscope arm also runs ``grad`` at every step and ``weights`` every
    :data:`HEAVY_WEIGHTS_EVERY` (50) steps. A run of a few steps never reaches step 50, so the weights probe runs
    once, at the end of the run (after the last timed step: outside the step times), and its pass is timed
    (``rlscope/engine/weights_seconds``: the source's collection and the probe; this first probe includes its
    one-off costs, e.g. W_0's subspaces, so it is an upper bound on a warm probe). ``weights_probe_seconds``: that
    time per repeat; ``heavy_amortized_ratio``: the median over repeats of (the heavy arm's seconds per step + the
    weights probe's seconds / 50) / the bare arm's seconds per step (paired as ``ratio``): the step time of a run
    that probes gradients every step and weights every 50 steps, relative to bare TRL.
    """
    import statistics

    if probes not in ("default", "heavy"):
        raise ValueError(f"bench overhead: probes must be 'default' or 'heavy', got {probes!r}")
    if device not in OVERHEAD_DEVICE_FLAGS:
        raise ValueError(f"bench overhead: device must be 'cpu', 'cuda' or None, got {device!r}")
    per: dict[str, list[float]] = {"bare": [], "rlscope": []}
    own: list[float] = []
    weights: list[float | None] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _overhead_model(model, device, tmp)
        for rep in range(repeats):
            order = ("bare", "rlscope") if rep % 2 == 0 else ("rlscope", "bare")
            for arm in order:
                seconds, mine, w = _overhead_run(arm, recipe, steps, warmup, tmp, rep, model_dir, device, probes)
                per[arm].append(seconds)
                if arm == "rlscope":
                    own.append(mine / seconds)
                    weights.append(w)
    med = {arm: statistics.median(v) for arm, v in per.items()}
    # each repeat's two arms ran back to back: their ratio cancels the machine's drift between repeats (on a shared
    # 2-core host a whole run can be 15-30% slower than the one before it), so the median of the paired ratios is
    # the estimate, with its range
    paired = [r / b for r, b in zip(per["rlscope"], per["bare"])]
    big = synthetic_step(large_tokens, seed=0)
    probe_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        _probe_all(big)
        probe_times.append(time.perf_counter() - t0)
    result = {"bench": "overhead", "recipe": recipe, "steps_timed": steps, "repeats": repeats,
              "large_step_tokens": int(big.mask.sum()),
              "large_step_probe_seconds": round(statistics.median(probe_times), 3),
              "bare_seconds_per_step": [round(v, 4) for v in per["bare"]],
              "rlscope_seconds_per_step": [round(v, 4) for v in per["rlscope"]],
              "median_bare": round(med["bare"], 4), "median_rlscope": round(med["rlscope"], 4),
              "ratio_of_medians": round(med["rlscope"] / med["bare"], 4),
              "paired_ratios": [round(v, 4) for v in paired],
              "ratio_range": [round(min(paired), 4), round(max(paired), 4)],
              "own_code_share": [round(v, 4) for v in own],
              "own_code_ratio": round(1 / (1 - statistics.median(own)), 4),
              "ratio": round(statistics.median(paired), 4),
              "model": model or "tiny-sft", "device": device or "recipe", "probes": probes}
    if probes == "heavy":
        known = [(r, b, w) for r, b, w in zip(per["rlscope"], per["bare"], weights) if w is not None]
        result["weights_every"] = HEAVY_WEIGHTS_EVERY
        result["weights_probe_seconds"] = [None if w is None else round(w, 3) for w in weights]
        result["heavy_amortized_ratio"] = (round(statistics.median(
            (r + w / HEAVY_WEIGHTS_EVERY) / b for r, b, w in known), 4) if known else None)
    return result


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


def _decaying_matrix(n: int, seed: int = 0, m: int | None = None):
    """An m x n matrix (default square) with 64 singular values 10/i over a small Gaussian bulk: the easy spectrum."""
    import math

    import torch

    m = n if m is None else m
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(m, 64, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(n, 64, generator=g))
    spectrum = 10.0 * torch.pow(torch.arange(1, 65, dtype=torch.float32), -1.0)
    return (q1 * spectrum) @ q2.T + 0.01 * torch.randn(m, n, generator=g) / math.sqrt(max(m, n))


def _spiked_matrix(m: int, n: int, tail_exp: float = 0.35, tail: int = 256, top: float = 6.0, seed: int = 0,
                   scale: float = 0.02, flat: bool = False):
    """A weight-like m x n matrix: a Marchenko-Pastur bulk (Gaussian entries) plus a heavy power-law tail of ``tail``
    spikes, sigma_i = top x bulk edge x i^-tail_exp -- the shape of trained weights' spectra (Martin & Mahoney 2021:
    ESD exponents 2-4, i.e. tail_exp 1/6 to 1/2); ``flat``: the bulk alone. Entries ~ ``scale``."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    big = max(m, n)
    w = torch.randn(m, n, generator=g) / math.sqrt(big)
    if not flat:
        r = min(tail, min(m, n) // 2)
        u = torch.randn(m, r, generator=g) / math.sqrt(m)
        v = torch.randn(n, r, generator=g) / math.sqrt(n)
        s = (1 + math.sqrt(min(m, n) / big)) * top * torch.arange(1, r + 1, dtype=torch.float32) ** -tail_exp
        w += (u * s) @ v.T
    return w * (scale * math.sqrt(big / (m + n)) * 2)


def _rl_update(w0, step: int, size: float, seed: int):
    """W_0 plus an RL-like update after ``step`` probe intervals (float32): a rank-1 part growing linearly (AlphaRL's
    nearly rank-1, linearly evolving update) and a random walk of full-rank noise, each half of an interval's
    ||dW||_F = ``size`` x ||W_0||_F."""
    import math

    import torch

    m, n = w0.shape
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(m, 1, generator=g), torch.randn(1, n, generator=g)
    walk = torch.zeros(m, n)
    for t in range(1, step + 1):
        walk += torch.randn(m, n, generator=torch.Generator().manual_seed(seed * 1000 + t))
    w = w0.float()
    return w + size * float(w.norm()) * (0.5 * step * (u @ v) + 0.5 * walk) / math.sqrt(m * n)


def _model_shapes(layers: int, hidden: int, intermediate: int, kv_dim: int) -> dict:
    shapes = {"q_proj": (hidden, hidden), "k_proj": (kv_dim, hidden), "v_proj": (kv_dim, hidden),
              "o_proj": (hidden, hidden), "gate_proj": (intermediate, hidden), "up_proj": (intermediate, hidden),
              "down_proj": (hidden, intermediate)}
    out = {}
    for layer in range(layers):
        for i, (kind, shape) in enumerate(shapes.items()):
            part = "self_attn" if kind in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out[f"model.layers.{layer}.{part}.{kind}.weight"] = (shape, 7 * layer + i)
    return out


def _model_w0(name: str, shape, seed: int):
    """W_0 of one matrix of the synthetic model, bf16: heavier tails for q/k (as attention weights show)."""
    import torch

    exp = 0.5 if ("q_proj" in name or "k_proj" in name) else 0.35
    return _spiked_matrix(*shape, tail_exp=exp, seed=seed).to(torch.bfloat16)


def _model_wt(name: str, specs: dict, w0s: dict, step: int, size: float):
    import torch

    return _rl_update(w0s[name].cpu(), step, size, seed=specs[name][1]).to(torch.bfloat16)


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _probe_share(names, specs, w0s, cache, step, size, options, wts=None, device="cpu"):
    """The per-matrix results of ``names`` at probe ``step`` and the seconds of their computation (W_t, generated
    here when not given in ``wts`` and moved to ``device``, outside the timing)."""
    from rlscope.probes.weight_matrix import matrix_results

    results, seconds = [], 0.0
    for name in names:
        wt = wts[name] if wts is not None else _model_wt(name, specs, w0s, step, size).to(device)
        _sync(device)
        t0 = time.perf_counter()
        results.extend(matrix_results([(name, w0s[name], wt)], cache, **options))
        _sync(device)
        seconds += time.perf_counter() - t0
    return results, seconds


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _split_worker(rank: int, world: int, port: int, out: str, specs: dict, size: float, options: dict) -> None:
    """One rank of the split-across-ranks measurement: its share of the matrices (the source's split), one thread;
    per probe: compute the share, gather the results to rank 0, which aggregates them (the probe)."""
    import os

    import torch
    import torch.distributed as dist

    from rlscope.probes import scalars_of
    from rlscope.probes.weights import WeightView, weight_geometry
    from rlscope.weight_geometry import split_matrices

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    names = list(specs)
    owner = split_matrices([specs[n][0][0] * specs[n][0][1] for n in names], world)
    mine = [n for n, r in zip(names, owner) if r == rank]
    w0s = {n: _model_w0(n, *specs[n]) for n in mine}
    cache, state, report = {}, {}, {}
    for step in (1, 2):
        wts = {n: _model_wt(n, specs, w0s, step, size) for n in mine}  # the share's W_t, outside the timing
        dist.barrier()
        t0 = time.perf_counter()
        results, seconds = _probe_share(mine, specs, w0s, cache, step, size, options, wts)
        del wts
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((results, seconds), gathered, dst=0)
        if rank == 0:
            allres = [r for part, _ in gathered for r in part]
            allres.sort(key=lambda r: names.index(r.name))
            agg = weight_geometry(WeightView(results=allres, options=options), state, **options)
            wall = time.perf_counter() - t0
            report[f"probe{step}"] = {"seconds": wall, "rank_compute_seconds": [sec for _, sec in gathered],
                                      "scalars": scalars_of(agg)}
    if rank == 0:
        import json
        from pathlib import Path

        Path(out).write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


_Q15 = SHAPES["qwen2.5-1.5b"]  # the model shape bench weights probes


def bench_weights(n: int = 4096, k: int = 16, layers: int = _Q15.num_hidden_layers, hidden: int = _Q15.hidden_size,
                  intermediate: int = _Q15.intermediate_size,
                  kv_dim: int = _Q15.hidden_size // _Q15.num_attention_heads * _Q15.num_key_value_heads,
                  processes: int = 2, size: float = 4e-3, device: str = "cpu") -> dict:
    """The weights probe's accuracy and speed.

    (a) Realistic spectra (an n x 1536 Marchenko-Pastur bulk with a power-law tail, a 1536 x 1536 flat bulk, a
    1536 x n 1/i spectrum), two probes of an RL-like update (``_rl_update``: angles ~1e-3, the second probe
    warm-started): the largest |reported - exact float64 SVD| over the four angle statistics, the reported bound and
    its target, passes; beside it the error of the former method (seeded ``torch.svd_lowrank``, q = k + 16, 3 power
    iterations). ``speed_ratio``: exact float64 SVD time / the probe's cold top-k (to a 1e-6 bound) of the first.
    (b) The full probe of a Qwen2.5-1.5B-shaped model (``layers`` x q, k, v, o, gate, up, down; bf16 weights with
    realistic spectra, ``_model_w0``): the first (cold: W_0's subspaces computed too) and the second (warm-started:
    what runs every N steps) probe, with the bound's largest value, the matrices flagged and the mean passes; W_t is
    generated outside the timing. With ``processes`` > 1 (default 2), the matrices are split over that many real
    processes (gloo, one thread each, the source's split and gather): the wall seconds of each probe on the main
    process (it waits for the slowest rank's share, then aggregates) and each rank's compute seconds
    (``split``); with ``processes`` = 1, in this process on all its threads (``model``).
    ``device`` ``cuda``: (a) and (b) computed on the GPU (one process, W_0 and W_t resident there, as a GPU run
    holds them), and (a) also on the CPU: ``cpu_vs_device`` gives the largest |GPU - CPU| angle beside the sum of
    the two bounds (they must agree within it) and whether dW's intervals overlap.
    """
    import resource
    import statistics

    import torch

    from rlscope.probes.weight_matrix import matrix_geometry
    from rlscope.ritz import principal_angles
    from rlscope.topsvd import top_svd

    out: dict = {"bench": "weights", "k": k, "threads": torch.get_num_threads(), "device": device}
    if device != "cpu":
        processes = 1
    # (a) accuracy against exact float64 SVD
    spectra = {"mp_powerlaw": _spiked_matrix(n, 1536, seed=3), "flat": _spiked_matrix(1536, 1536, seed=4, flat=True),
               "decaying": _decaying_matrix(n, seed=5, m=1536)}
    accuracy = {}
    for kind, w0 in spectra.items():
        w0 = w0 / w0.norm() * 30  # a Frobenius norm like a trained matrix's; the angles do not depend on it
        exact_svd = [torch.linalg.svd(w.double(), full_matrices=False)
                     for w in (w0, _rl_update(w0, 1, size, 9), _rl_update(w0, 2, size, 9))]
        row, cache = {"shape": list(w0.shape)}, {}
        dev_cache: dict = {}
        for step in (1, 2):
            wt = _rl_update(w0, step, size, 9)
            stats, _ = matrix_geometry(w0, wt, k, cache=cache)
            if device != "cpu":  # the same on the device: within the bounds of the CPU's
                cpu_stats = stats
                stats, _ = matrix_geometry(w0.to(device), wt.to(device), k, cache=dev_cache)
                diff = max(abs(stats[key] - cpu_stats[key]) for key in ("angle_left_mean", "angle_left_max",
                                                                          "angle_right_mean", "angle_right_max"))
                overlap = all(max(stats[f"dw_sigma{i}"], cpu_stats[f"dw_sigma{i}"]) <= (1 + 1e-9) * min(
                    stats[f"dw_sigma{i}"] * (1 + stats["dw_sigma_bound"]),
                    cpu_stats[f"dw_sigma{i}"] * (1 + cpu_stats["dw_sigma_bound"])) for i in range(1, 5))
                row[f"cpu_vs_device{step}"] = {
                    "angle_diff": float(f"{diff:.3g}"),
                    "bounds_sum": float(f"{stats['angle_error_bound'] + cpu_stats['angle_error_bound']:.3g}"),
                    "dw_intervals_overlap": overlap}
            (U0, _, V0h), (Ut, _, Vth) = exact_svd[0], exact_svd[step]
            exact = {"left": principal_angles(U0[:, :k], Ut[:, :k]), "right": principal_angles(V0h[:k].T, Vth[:k].T)}
            err = max(abs(stats[f"angle_{side}_{f}"] - float(getattr(a, f)()))
                      for side, a in exact.items() for f in ("mean", "max"))
            with torch.random.fork_rng():  # the former method: common random numbers for W_0 and W_t
                old = []
                for w in (w0, wt):
                    torch.manual_seed(0)
                    old.append(torch.svd_lowrank(w, q=k + 16, niter=3))
            old_err = max(abs(float(getattr(principal_angles(old[0][i][:, :k], old[1][i][:, :k]), f)())
                              - float(getattr(exact[side], f)()))
                          for i, side in ((0, "left"), (2, "right")) for f in ("mean", "max"))
            target = max(1e-5, 0.01 * min(stats["angle_left_mean"], stats["angle_right_mean"]))
            row[f"probe{step}"] = {
                "exact_angle_mean": float(f"{float(exact['left'].mean()):.4g}"), "error": float(f"{err:.3g}"),
                "bound": float(f"{stats['angle_error_bound']:.3g}"), "target": float(f"{target:.3g}"),
                "within_bound": bool(err <= stats["angle_error_bound"]), "passes": int(stats["passes"]),
                "unresolved": int(stats["angle_unresolved"]), "unmet": int(stats["angle_bound_unmet"]),
                "old_randomized_error": float(f"{old_err:.3g}")}
            sdw = torch.linalg.svdvals(wt.double() - w0.double())  # dW's exact spectrum (float64)
            energy = float(sdw[0] ** 2 / (sdw ** 2).sum())
            dw_err = max(float(sdw[i - 1]) / stats[f"dw_sigma{i}"] - 1 for i in range(1, 5))
            row[f"probe{step}"].update({
                "dw_sigma_rel_error": float(f"{dw_err:.3g}"), "dw_sigma_bound": float(f"{stats['dw_sigma_bound']:.3g}"),
                "dw_energy_error": float(f"{energy - stats['dw_rank1_energy']:.3g}"),
                "dw_energy_bound": float(f"{stats['dw_rank1_energy_bound']:.3g}"),
                "dw_within_bound": bool(-1e-9 <= dw_err <= stats["dw_sigma_bound"] + 1e-9
                                        and -1e-9 <= energy - stats["dw_rank1_energy"]
                                        <= stats["dw_rank1_energy_bound"] + 1e-9),
                "dw_passes": int(stats["dw_passes"]), "dw_unmet": int(stats["dw_bound_unmet"])})
        row["w0_passes"] = cache["svd0"].passes
        accuracy[kind] = row
    out["accuracy"] = accuracy
    rows = [r[f"probe{step}"] for r in accuracy.values() for step in (1, 2)]
    out["probe_angle_error_rad"] = max(r["error"] for r in rows)  # the largest |reported - exact| of (a)
    out["bounds_hold"] = all(r["within_bound"] and r["dw_within_bound"] for r in rows)
    out["dw_sigma_rel_error"] = max(r["dw_sigma_rel_error"] for r in rows)
    w = spectra["mp_powerlaw"]
    runs = []
    wd = w.to(device)
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        top_svd(wd, k, tol=1e-6)
        _sync(device)
        runs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    torch.linalg.svd(w.double(), full_matrices=False)
    out["exact_svd_seconds"] = round(time.perf_counter() - t0, 3)
    out["cold_top_svd_seconds"] = round(statistics.median(runs), 4)
    out["speed_ratio"] = round(out["exact_svd_seconds"] / out["cold_top_svd_seconds"], 1)
    del spectra, exact_svd, w

    # (b) / (c) the full probe of a 1.5B-shaped model: one process, or split across processes (each costs minutes)
    specs = _model_shapes(layers, hidden, intermediate, kv_dim)
    options = dict(k=k, n_dw_sv=4, exact_below=256, abs_tol=1e-5, rel_tol=0.01, max_passes=40)
    out["matrices"] = len(specs)
    out["model"] = {"model": f"{layers} layers, hidden {hidden}, intermediate {intermediate}, kv {kv_dim}",
                    "matrices": len(specs), "matrix_params": sum(a * b for (a, b), _ in specs.values())}
    if processes <= 1:
        out["model"].update(_bench_model_one_process(specs, size, options, device))
    else:
        out["split"] = _bench_model_split(specs, size, options, processes)
    out["probe_seconds"] = (out["split"] if processes > 1 else out["model"])["probe2_warm_seconds"]
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    return out


_MODEL_KEYS = ("angle_left_mean", "angle_right_mean", "angle_error_bound", "angle_bound_unmet", "angle_unresolved",
               "passes", "dw_rel_norm", "dw_rank1_energy", "dw_sigma_bound", "dw_rank1_energy_bound", "dw_bound_unmet",
               "dw_passes", "n_matrices")


def _bench_model_one_process(specs: dict, size: float, options: dict, device: str = "cpu") -> dict:
    """(b): the two probes in this process (all its threads; or on ``device``, W_0 resident there)."""
    from rlscope.probes import scalars_of
    from rlscope.probes.weights import WeightView, weight_geometry

    w0s = {name: _model_w0(name, *spec).to(device) for name, spec in specs.items()}
    cache, state, model = {}, {}, {}
    for step in (1, 2):
        results, seconds = _probe_share(list(specs), specs, w0s, cache, step, size, options, device=device)
        t0 = time.perf_counter()
        agg = weight_geometry(WeightView(results=results, options=options), state, **options)
        seconds += time.perf_counter() - t0
        model[f"probe{step}_{'cold' if step == 1 else 'warm'}_seconds"] = round(seconds, 2)
        sc = scalars_of(agg)
        model[f"probe{step}"] = {key: float(f"{sc[key]:.4g}") for key in _MODEL_KEYS}
    return model


def _bench_model_split(specs: dict, size: float, options: dict, processes: int) -> dict:
    """(c): the two probes with the matrices split over ``processes`` real processes (gloo, one thread each)."""
    import json
    import tempfile
    from pathlib import Path

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "split.json")
        mp.spawn(_split_worker, args=(processes, _free_port(), path, specs, size, options), nprocs=processes, join=True)
        rep = json.loads(Path(path).read_text())
    split = {"processes": processes, "threads_per_process": 1}
    for step in (1, 2):
        r = rep[f"probe{step}"]
        split[f"probe{step}_{'cold' if step == 1 else 'warm'}_seconds"] = round(r["seconds"], 2)
        split[f"probe{step}_rank_compute_seconds"] = [round(x, 2) for x in r["rank_compute_seconds"]]
        split[f"probe{step}"] = {key: float(f"{r['scalars'][key]:.4g}") for key in _MODEL_KEYS}
    return split


def bench_schedules(steps: int = 40, names=("sft_then_rl", "relift", "heat_on_low_accuracy")) -> dict:
    """The same budget -- ``steps`` optimizer steps from the same warm-started tiny model and seed -- for each
    schedule's recipe; held-out pass@1 (greedy, and sampled 8 per prompt) after the run and the final mean token
    entropy (mean of ``rlscope/entropy/mean`` over the last 5 RL steps). A measurement, not a pass/fail."""
    from rlscope import paths
    from rlscope.recipe import parse_recipe
    from rlscope.store import RunReader
    from rlscope.train import run

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.perf_counter()
            summary = run(*parse_recipe(
                ["--config", str(paths.recipe(f"tiny_interleave_{name}")), "--max_steps", str(steps),
                 "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--runs_dir", tmp,
                 "--run_name", name]), quiet=True)
            _, ent = RunReader(summary["run_dir"]).series("rlscope/entropy/mean")
            results[name] = {"heldout_greedy": round(summary["heldout_after"], 4),
                             "heldout_sampled": round(summary["heldout_sampled_after"], 4),
                             "heldout_greedy_before": round(summary["heldout_before"], 4),
                             "final_entropy": round(sum(ent[-5:]) / len(ent[-5:]), 4),
                             "sft_steps": len(summary["schedule"]["sft_steps"]),
                             "seconds": round(time.perf_counter() - t0, 1)}
    return {"bench": "schedules", "budget": f"{steps} optimizer steps each (same seed, same warm-started model)",
            "results": results}


def bench_analyze(steps: int = 20000, metrics: int = 200, rollout_every: int = 10, completions: int = 64,
                  probe_every: int = 100) -> dict:
    """``rlscope analyze`` end to end on a synthetic rlscope run (``steps`` x ``metrics`` metric records, rollouts every
    ``rollout_every`` steps with ``completions`` each, pass@k and per-matrix weight rows every ``probe_every`` steps;
    written with the real run writer, then flushed to disk): seconds (reading and analysing; the one-off imports are
    timed apart) of the first analysis right after writing and the median of three more (page cache warm: what is
    left is parsing and computing, not this machine's disk), peak resident memory, whether the planted answers were
    found."""
    import statistics
    import os
    import resource

    t0 = time.perf_counter()
    from rlscope.analysis.analyses import ANALYSES  # the one-off imports of a fresh process, timed apart
    from rlscope.analysis.analyze import analyze
    from rlscope.analysis.readers import READERS
    from rlscope.analysis.synthetic import expected_aha, expected_break, write_synthetic_run

    ANALYSES.names(), READERS.names()
    imports = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_synthetic_run(tmp, steps, metrics, rollout_every, completions, probe_every)
        os.sync()
        written = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".jsonl"))
        runs = []
        for _ in range(4):
            t0 = time.perf_counter()
            result = analyze(tmp)
            runs.append(time.perf_counter() - t0)
    seconds = statistics.median(runs[1:])
    small = small_log_seconds()
    a = result["analyses"]
    found = {"two_stage_break": a["two_stage"]["break_step"], "expected_break": expected_break(steps),
             "aha_step": a["aha"]["step"], "expected_aha": expected_aha(steps),
             "crossover_k": a["boundary"]["crossover_k"], "health": a["health"]["severity"]}
    return {"bench": "analyze", "steps": steps, "metrics": metrics, "metric_records": steps * metrics,
            "rollouts": (steps // rollout_every) * completions, "store_mib": round(size / 2 ** 20, 1),
            "write_seconds": round(written, 1), "import_seconds": round(imports, 2),
            "first_seconds": round(runs[0], 2), "runs_seconds": [round(r, 2) for r in runs[1:]],
            "read_seconds": result["read_seconds"], "analyses_seconds": result["seconds"],
            "seconds": round(seconds, 2), "goal_seconds": 5.0,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
            "timings": result["timings"], "planted": found, **small}


def small_log_seconds(steps: int = 100, repeats: int = 3) -> dict:
    """Wall seconds of ``rlscope analyze`` on a ``steps``-step verl console log in a fresh process, imports included
    (what a user waits for on someone else's log): the median of ``repeats`` runs."""
    import os
    import shutil
    import statistics
    import subprocess
    import sys

    from rlscope.analysis.synthetic import write_small_log

    script = shutil.which("rlscope", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "rlscope.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        log = write_small_log(os.path.join(tmp, "verl_console.log"), steps)
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([*command, "analyze", str(log)], check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    return {"small_log_steps": steps, "small_log_seconds": round(statistics.median(walls), 2),
            "small_log_runs": [round(w, 2) for w in walls], "small_log_goal_seconds": 1.0}


def synthetic_step(tokens: int, seed: int, width: int = 1024, group: int = 16):
    """A synthetic step of about ``tokens`` valid completion tokens (rows of random length up to ``width``) with the
    dtypes TRL hands over: float32 entropies and log-probs, int64 ids, per-row float32 group-normalized advantages,
    correctness, EOS, behaviour features -- what the entropy, cov and behavior probes read."""
    import torch

    from rlscope.probes.batch import TokenBatch

    g = torch.Generator().manual_seed(seed)
    rows = max(group, -(-tokens * 2 // width) // group * group)  # mean length ~ width / 2
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    lengths = (lengths.to(torch.float64) * tokens / lengths.sum()).round().clamp(1, width).to(torch.int64)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    ent = (torch.rand(rows, width, generator=g) ** 3 * 4).to(torch.float32)
    rewards = (torch.rand(rows, generator=g) > 0.6).to(torch.float32)
    r = rewards.view(-1, group)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)
    return TokenBatch(entropies=ent, logps=-(ent * torch.rand(rows, width, generator=g)).to(torch.float32), mask=mask,
                      advantages=adv, correct=rewards > 0.5, has_eos=lengths < width,
                      reflections=torch.randint(0, 3, (rows,), generator=g).to(torch.float64),
                      repetition=torch.rand(rows, generator=g, dtype=torch.float64))


_GATHER_PROBES = ("entropy", "cov", "behavior")


def _probe_all(batch) -> dict:
    from rlscope.probes import Histogram, get_probe

    out = {}
    for name in _GATHER_PROBES:
        res = get_probe(name).fn(batch, {})
        if not batch.comm.finish(ok=True):
            raise RuntimeError("a rank failed")
        out.update({f"{name}/{k}": (v.counts if isinstance(v, Histogram) else v) for k, v in res.items()})
    return out


def _gathered_bytes(parts) -> int:
    """Payload each rank contributes to the gather path's all-gathers (the fields the three probes read, padded to
    the widest rank and the most rows, as ``gather_batch`` sends them)."""
    from rlscope.probes import get_probe

    names = {"mask"}.union(*(get_probe(n).inputs for n in _GATHER_PROBES)) - {"length"}
    rows = max(p.n_rows for p in parts)
    width = max(p.mask.shape[1] for p in parts)
    total = 0
    for name in names:
        t = getattr(parts[0], name)
        if t is None:
            continue
        total += rows * (width if t.dim() == 2 else 1) * t.element_size()  # bool travels as uint8: 1 byte too
    return total


def _compare(exact: dict, gathered: dict) -> tuple[bool, float]:
    """(identical, max relative difference of the float64 sums): order statistics and counts must be equal."""
    import math

    worst, same = 0.0, True
    for key, want in gathered.items():
        got = exact[key]
        if isinstance(want, list):
            same &= got == want
        elif isinstance(want, float) and math.isnan(want):
            same &= isinstance(got, float) and math.isnan(got)
        elif got != want:
            rel = abs(got - want) / max(abs(want), 1e-300)
            worst = max(worst, rel)
            same &= rel < 1e-12
    return same, worst


def _ring(payload_per_rank: float, world: int, kind: str) -> float:
    """Bytes each rank receives under the ring algorithms: all-reduce 2(W-1)/W x payload; all-gather (W-1) x it."""
    return payload_per_rank * (2 * (world - 1) / world if kind == "all_reduce" else world - 1)


def _simulated(world: int, tokens: int) -> dict:
    import statistics

    import torch

    from rlscope.probes.batch import concat
    from rlscope.probes.reduce import SimulatedGroup

    parts = [synthetic_step(tokens, seed=r) for r in range(world)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each simulated rank is one thread: its CPU time is its compute
    try:
        def rank_fn(comm, part):
            part.comm = comm
            t0 = time.thread_time()
            res = _probe_all(part)
            return res, time.thread_time() - t0, comm.bytes, comm.calls

        ranks = SimulatedGroup(world).run(rank_fn, [(p,) for p in parts])
        t0 = time.perf_counter()
        whole = concat(parts)  # what gather_batch leaves on the main process
        gathered = _probe_all(whole)
        gather_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    same, worst = _compare(ranks[0][0], gathered)
    same &= all(r[0] == ranks[0][0] for r in ranks)
    per_rank = statistics.median(r[1] for r in ranks)
    payload = max(r[2] for r in ranks)
    gather_payload = _gathered_bytes(parts)
    ex, ga = _ring(payload, world, "all_reduce"), _ring(gather_payload, world, "all_gather")
    return {"world_size": world, "simulated": True, "tokens_per_rank": int(whole.mask.sum()) // world,
            "exact_bytes_per_rank": round(ex), "gather_bytes_per_rank": round(ga), "bytes_ratio": round(ga / ex, 1),
            "exact_collectives": ranks[0][3], "exact_seconds_per_rank": round(per_rank, 3),
            "exact_seconds_per_million_tokens": round(per_rank / (tokens / 1e6), 3),
            "gather_main_seconds": round(gather_seconds, 3), "identical": bool(same),
            "max_rel_diff_sums": float(f"{worst:.3g}")}


def _two_rank_worker(rank: int, port: int, tokens: int, out: str):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    import torch
    from accelerate import Accelerator

    from rlscope.callbacks.sources.tokens import gather_batch
    from rlscope.probes import get_probe
    from rlscope.probes.reduce import TorchComm

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    part = synthetic_step(tokens, seed=rank)
    names = {"mask"}.union(*(get_probe(n).inputs for n in _GATHER_PROBES))
    for _ in range(2):  # the second round is timed (the first warms up both paths)
        acc.wait_for_everyone()
        t0 = time.perf_counter()
        part.comm = TorchComm()
        exact = _probe_all(part)
        acc.wait_for_everyone()
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        whole = gather_batch(part, acc, names)
        gathered = _probe_all(whole) if rank == 0 else None
        acc.wait_for_everyone()
        t_gather = time.perf_counter() - t0
    if rank == 0:
        same, worst = _compare(exact, gathered)
        Path(out).write_text(json.dumps({"exact_seconds": t_exact, "gather_seconds": t_gather, "identical": same,
                                         "max_rel_diff_sums": worst, "bytes": part.comm.bytes,
                                         "calls": part.comm.calls,
                                         "gather_payload": _gathered_bytes([synthetic_step(tokens, seed=r)
                                                                            for r in range(2)])}))
    torch.distributed.destroy_process_group()


def _real_two(tokens: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "two.json"
        mp.spawn(_two_rank_worker, args=(_free_port(), tokens, str(out)), nprocs=2, join=True)
        r = json.loads(out.read_text())
    ex, ga = _ring(r["bytes"], 2, "all_reduce"), _ring(r["gather_payload"], 2, "all_gather")
    return {"world_size": 2, "simulated": False, "tokens_per_rank": tokens, "exact_bytes_per_rank": round(ex),
            "gather_bytes_per_rank": round(ga), "bytes_ratio": round(ga / ex, 1), "exact_collectives": r["calls"],
            "exact_seconds": round(r["exact_seconds"], 3), "gather_seconds": round(r["gather_seconds"], 3),
            "identical": bool(r["identical"]), "max_rel_diff_sums": float(f"{r['max_rel_diff_sums']:.3g}")}


def bench_gather(tokens: int = 1_000_000, worlds=(8, 64)) -> dict:
    """The token probes (entropy, cov, behavior) of one step, exact reductions vs gathering every token to the main
    process: bytes each rank receives (ring all-reduce / all-gather model, payloads measured), seconds, and whether
    the results are identical (counts and order statistics equal; float64 sums within 1e-12). At 2 real processes
    (gloo, wall seconds on the main process including the collectives) and at ``worlds`` simulated ranks (threads of
    this process, one intra-op thread each: per-rank compute as thread CPU time; the gather path as the main
    process's compute on the concatenated batch, network not included), ``tokens`` valid tokens per rank."""
    results = [_real_two(tokens)] + [_simulated(w, tokens) for w in worlds]
    largest = results[-1]
    return {"bench": "gather", "tokens_per_rank": tokens, "results": results,
            "bytes_ratio_at_largest": largest["bytes_ratio"], "world_size_largest": largest["world_size"],
            "identical": all(r["identical"] for r in results),
            "observatory_seconds_per_million_tokens": largest["exact_seconds_per_million_tokens"]}


def print_result(result: dict, as_json: bool) -> None:
    if not as_json:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    print(json.dumps(result))
