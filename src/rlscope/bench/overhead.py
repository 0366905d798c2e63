"""``rlscope bench overhead``: step time of a recipe with rlscope vs a bare TRL ``GRPOTrainer`` (runs interleaved,
paired ratios), rlscope's own seconds timed inside its arm, and the token probes on a large synthetic step."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rlscope.bench.gather import _probe_all, synthetic_step


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
