"""Benchmarks (``rlscope bench ...``): each prints one JSON object as its last line."""

from __future__ import annotations

import json
import tempfile
import time


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


def _stamp_callback(stamps: list[float]):
    from transformers import TrainerCallback

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    return Stamp()


def _overhead_run(arm: str, recipe: str, steps: int, warmup: int, tmp: str, index: int) -> float:
    """Seconds per optimizer step (after ``warmup`` steps) of one arm: ``bare`` = stock ``trl.GRPOTrainer``;
    ``rlscope`` = rlscope's DAPOTrainer with the run store and the default Observatory attached."""
    import dataclasses

    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlscope import paths
    from rlscope.callbacks import RunStoreCallback, attach
    from rlscope.recipe import parse_recipe
    from rlscope.store import RunWriter
    from rlscope.tasks import get_task
    from rlscope.train import tiny_sft_model
    from rlscope.trainers.dapo import DAPOTrainer

    run_args, cfg, _ = parse_recipe(
        ["--config", str(paths.recipe(recipe)), "--max_steps", str(steps + warmup), "--save_strategy", "no",
         "--report_to", "none", "--disable_tqdm", "true", "--output_dir", f"{tmp}/{arm}-{index}",
         "--dynamic_sampling", "false", "--overlong_buffer_len", "0"])
    task = get_task(run_args.task, **run_args.task_config)
    model = str(tiny_sft_model(run_args.task, run_args.task_config))
    tok = AutoTokenizer.from_pretrained(model)
    stamps: list[float] = []
    common = dict(model=model, reward_funcs=task.reward_funcs(), train_dataset=task.dataset("train"),
                  processing_class=tok, callbacks=[_stamp_callback(stamps)])
    if arm == "bare":
        names = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
        trainer = GRPOTrainer(args=GRPOConfig(**{k: v for k, v in cfg.to_dict().items() if k in names
                                                 and k not in ("generation_batch_size",)}), **common)
    else:
        writer = RunWriter(f"{tmp}/{arm}-{index}/run")
        trainer = DAPOTrainer(args=cfg, run_store=writer, **common)
        trainer.add_callback(RunStoreCallback(writer))
        attach(trainer)
    trainer.train()
    timed = stamps[warmup:]
    return (timed[-1] - stamps[warmup - 1]) / len(timed)


def bench_overhead(steps: int = 10, warmup: int = 2, repeats: int = 3, recipe: str = "tiny_dapo") -> dict:
    """Step time of the tiny DAPO recipe with rlscope (trainer, run store, default Observatory) vs a bare TRL
    ``GRPOTrainer``: same config, seed and steps, runs interleaved (ABBA...), ratio of the median seconds/step.

    Dynamic sampling and overlong shaping are off in both arms so that both do exactly the same generation and
    reward work (stock TRL has neither); what remains is everything rlscope adds to a step.
    """
    import statistics

    per: dict[str, list[float]] = {"bare": [], "rlscope": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            order = ("bare", "rlscope") if rep % 2 == 0 else ("rlscope", "bare")
            for arm in order:
                per[arm].append(_overhead_run(arm, recipe, steps, warmup, tmp, rep))
    med = {arm: statistics.median(v) for arm, v in per.items()}
    return {"bench": "overhead", "recipe": recipe, "steps_timed": steps, "repeats": repeats,
            "bare_seconds_per_step": [round(v, 4) for v in per["bare"]],
            "rlscope_seconds_per_step": [round(v, 4) for v in per["rlscope"]],
            "median_bare": round(med["bare"], 4), "median_rlscope": round(med["rlscope"], 4),
            "ratio": round(med["rlscope"] / med["bare"], 4)}


def bench_passk(prompts: int = 64, n: int = 16, repeats: int = 3) -> dict:
    """pass@k evaluation (``prompts`` held-out prompts x ``n`` samples, tiny warm-started model) through rlscope's
    callback path (seeded per-prompt sampling, scoring, gathering, estimator, store + logging) vs a bare
    ``model.generate`` of the same samples (same per-prompt calls, seeds and generation config), interleaved;
    the ratio of the median seconds."""
    import statistics

    import torch

    from rlscope.callbacks.passk import PassKCallback
    from rlscope.passk_eval import _generation_config, load_policy, prompt_seed
    from rlscope.store import RunWriter
    from rlscope.tasks import get_task

    model, tok = load_policy("tiny-sft")
    model.eval()
    task = get_task("chainsum", seed=0, n_heldout=max(prompts, 64))
    rows = task.rows("heldout")[:prompts]
    gen_config = _generation_config(tok, n, 1.0, 1.0, task.max_completion_length)

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for i, row in enumerate(rows):
                enc = tok([task.render_prompt(row, tok)], return_tensors="pt", add_special_tokens=False)
                torch.manual_seed(prompt_seed(0, i))
                model.generate(**enc, generation_config=gen_config)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"bare": [], "rlscope": []}
    result = None
    with tempfile.TemporaryDirectory() as tmp:
        cb = PassKCallback(task, n=n, every=0, max_prompts=prompts, writer=RunWriter(tmp))

        def full() -> float:
            nonlocal result
            t0 = time.perf_counter()
            result = cb._eval(model, tok)
            cb._publish(0, "current" if cb.base is not None else "base", result, True)
            cb.base = cb.base or result
            return time.perf_counter() - t0

        for rep in range(repeats):
            for arm in (("bare", "rlscope") if rep % 2 == 0 else ("rlscope", "bare")):
                times[arm].append(bare() if arm == "bare" else full())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"bench": "passk", "prompts": prompts, "n": n, "repeats": repeats,
            "rlscope_seconds": [round(v, 3) for v in times["rlscope"]], "bare_seconds": [round(v, 3) for v in times["bare"]],
            "seconds": round(med["rlscope"], 3), "bare_generate_seconds": round(med["bare"], 3),
            "ratio": round(med["rlscope"] / med["bare"], 4), "pass@1": round(result.at(1), 4),
            f"pass@{n}": round(result.at(n), 4)}


def print_result(result: dict, as_json: bool) -> None:
    if not as_json:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    print(json.dumps(result))
