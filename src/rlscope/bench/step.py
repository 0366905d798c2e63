"""``rlscope bench step``: optimizer steps per second of a tiny recipe."""

from __future__ import annotations

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
