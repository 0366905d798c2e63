"""``rlscope bench schedules``: the interleaving schedules' recipes on the same budget of optimizer steps."""

from __future__ import annotations

import tempfile
import time


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
