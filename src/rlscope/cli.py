"""The ``rlscope`` console script: demo, train, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _env_defaults() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded unless the user turns this off
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_demo(ns) -> int:
    from rlscope import paths
    from rlscope.recipe import parse_recipe
    from rlscope.train import run

    argv = ["--config", str(paths.recipe("tiny_sft_then_dapo")), "--runs_dir", ns.runs_dir,
            "--run_name", ns.run_name, *ns.overrides]
    run_args, cfg, model_args = parse_recipe(argv)
    print(f"rlscope demo: tiny Qwen2 + chainsum, {run_args.sft_steps} SFT steps then {cfg.max_steps} DAPO steps "
          f"-> {run_args.runs_dir}/{cfg.run_name}", flush=True)
    s = run(run_args, cfg, model_args)
    gain = s["heldout_after"] - s["heldout_before"]
    print("\n=== rlscope demo ===")
    print(f"held-out greedy pass@1, SFT checkpoint (before RL): {s['heldout_before']:.3f}")
    print(f"held-out greedy pass@1, after {s['rl_steps']} DAPO steps:   {s['heldout_after']:.3f}  ({gain:+.3f})")
    print(f"  by difficulty after RL: {json.dumps({k: round(v, 3) for k, v in s['heldout_after_by_difficulty'].items()})}")
    if s.get("heldout_sampled_before") is not None:
        gain_s = s["heldout_sampled_after"] - s["heldout_sampled_before"]
        print(f"held-out sampled pass@1 ({run_args.eval_samples} samples/prompt, T=1): "
              f"{s['heldout_sampled_before']:.3f} -> {s['heldout_sampled_after']:.3f}  ({gain_s:+.3f})")
    print(f"RL: {s['rl_steps_per_second']:.2f} steps/s; wall time {s['wall_seconds'] / 60:.1f} min")
    print(f"run directory: {s['run_dir']}  (metrics.jsonl, rollouts.jsonl, evals.jsonl, models/, checkpoints/)")
    return 0


def cmd_train(ns) -> int:
    from rlscope.train import main

    main(ns.overrides if ns.config is None else ["--config", ns.config, *ns.overrides])
    return 0


def cmd_bench(ns) -> int:
    from rlscope import bench

    if ns.what == "step":
        result = bench.bench_step(steps=ns.steps, warmup=ns.warmup, recipe=ns.recipe)
    elif ns.what == "overhead":
        result = bench.bench_overhead(steps=ns.steps, warmup=ns.warmup, repeats=ns.repeats, recipe=ns.recipe)
    else:  # argparse restricts the choices
        raise AssertionError(ns.what)
    bench.print_result(result, ns.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlscope", description="An observatory for RL post-training of LMs.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="embedded end-to-end run: tiny model, SFT warm start, DAPO, held-out eval; "
                                    "other flags override the recipe (e.g. --max_steps 50)")
    d.add_argument("--runs-dir", default="runs")
    d.add_argument("--run-name", default="demo")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="run a recipe (also: accelerate launch -m rlscope.train --config RECIPE); "
                                     "other flags override the recipe (e.g. --learning_rate 1e-5)")
    t.add_argument("--config", help="recipe YAML")
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="benchmarks; the last output line is JSON")
    b.add_argument("what", choices=["step", "overhead"])
    b.add_argument("--json", action="store_true", help="print only the JSON line")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--repeats", type=int, default=3, help="overhead: runs per arm (interleaved)")
    b.add_argument("--recipe", default="tiny_dapo")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    parser = build_parser()
    ns, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if rest and ns.command not in ("demo", "train"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    ns.overrides = rest  # demo/train: everything else overrides the recipe (validated by the recipe parser)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
