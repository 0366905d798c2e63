"""The ``rlscope`` console script: demo, train, analyze, passk, weights, probes, recipes, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rlscope.errors import UsageError


def _env_defaults() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded unless the user turns this off
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_demo(ns) -> int:
    from rlscope import paths
    from rlscope.recipe import parse_recipe
    from rlscope.train import run

    argv = ["--config", str(paths.recipe("tiny_sft_then_dapo")), "--runs_dir", ns.runs_dir,
            "--run_name", ns.run_name, "--overwrite", "true", *ns.overrides]  # a second demo starts over
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
    if s.get("passk"):
        p = s["passk"]
        n = p["n"]
        cross = p["crossover_k"] if p["crossover_k"] is not None else f"none (RL stays ahead up to k={n})"
        print(f"pass@k on {p['prompts']} held-out prompts x {n} samples: pass@1 {p['base_pass@1']:.3f} -> "
              f"{p['final_pass@1']:.3f}, pass@{n} {p[f'base_pass@{n}']:.3f} -> {p[f'final_pass@{n}']:.3f}; "
              f"crossover k (base >= RL): {cross}")
        if p.get("ks"):
            print("  k      " + " ".join(f"{k:>6}" for k in p["ks"]))
            print("  base   " + " ".join(f"{v:6.3f}" for v in p["base"]))
            print("  after  " + " ".join(f"{v:6.3f}" for v in p["final"]))
    print(f"RL: {s['rl_steps_per_second']:.2f} steps/s; wall time {s['wall_seconds'] / 60:.1f} min")
    print(f"run directory: {s['run_dir']}  (metrics.jsonl, rollouts.jsonl, evals.jsonl, models/, checkpoints/)")
    a = s.get("analysis") or {}
    if a.get("verdicts"):
        print("\nwhat the analysis found (rlscope analyze; numbers and intervals in analysis.json):")
        from rlscope.safe_text import terminal_safe

        for name, verdict in a["verdicts"].items():
            print(f"  {name + ':':<18} {terminal_safe(verdict)}")
    if a.get("report"):
        where = " and into its W&B run" + (" (offline: wandb sync uploads it)" if a.get("wandb", {}).get("mode") ==
                                           "offline" else "") if a.get("wandb") else ""
        print(f"analysis: {a['path']}; report (open in a browser): {a['report']}{where}")
    elif a.get("error"):
        print(f"analysis failed ({a['error']}): rlscope analyze {s['run_dir']}")
    return 0


def cmd_train(ns) -> int:
    from rlscope.train import main

    main(ns.overrides if ns.config is None else ["--config", ns.config, *ns.overrides], boundary=False)
    return 0


def cmd_passk(ns) -> int:
    from rlscope.passk_eval import passk_report
    from rlscope.tinymodel import load_policy

    model, tokenizer = load_policy(ns.model)
    report = passk_report(model, tokenizer, ns.task, n=ns.n, task_config=json.loads(ns.task_config),
                          temperature=ns.temperature, top_p=ns.top_p, seed=ns.seed, split=ns.split,
                          max_prompts=ns.max_prompts, batch_prompts=ns.batch_prompts)
    if os.environ.get("RANK", "0") == "0":
        if not ns.json:
            curve = report["curve"]
            print(f"pass@k of {ns.model} on {ns.task}/{ns.split}: {report['prompts']} prompts x {ns.n} samples "
                  f"(T={ns.temperature}, top_p={ns.top_p}), {report['seconds']:.1f} s")
            for k in [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= ns.n]:
                print(f"  pass@{k:<4} {curve[k - 1]:.4f}")
        print(json.dumps(report))
    return 0


def _check_weights_paths(named: list[tuple[str, str]]) -> None:
    """Each ``(what, path)`` of ``rlscope weights`` is a ``save_pretrained`` directory holding ``*.safetensors`` or a
    ``.safetensors`` file: checked before anything loads, so a wrong path is one line (exit 2), not a traceback."""
    from pathlib import Path

    from rlscope.errors import MissingInput

    fix = "give a model directory written by save_pretrained (its *.safetensors weights) or a .safetensors file"
    for what, name in named:
        path = Path(name).expanduser()
        if not path.exists():
            raise MissingInput(f"{what} {name}: no such file or directory; {fix}")
        if path.is_dir() and not any(path.glob("*.safetensors")):
            raise MissingInput(f"{what} {name}: no safetensors weights in the directory; {fix}")
        if not path.is_dir() and path.suffix != ".safetensors":
            raise MissingInput(f"{what} {name}: not a .safetensors file; {fix}")


def _device(name: str) -> str:
    """A torch device name the machine has, or one line saying it does not."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    try:
        torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name; use cpu or cuda[:N]") from None
    return name


def cmd_weights(ns) -> int:
    from rlscope import weight_geometry as wg

    if ns.paths and ns.paths[0] == "rank1":
        if len(ns.paths) != 3 or not ns.task:
            raise UsageError("usage: rlscope weights rank1 BASE FINAL --task NAME")
        _check_weights_paths([("base", ns.paths[1]), ("final", ns.paths[2])])
        from rlscope.tasks import get_task

        res = wg.rank1_recovery(ns.paths[1], ns.paths[2], get_task(ns.task, **json.loads(ns.task_config)),
                                n_samples=ns.samples, seed=ns.seed)
        if not ns.json:
            for name in ("base", "final", "selected", "rank1"):
                r = res[name]
                print(f"{name:>9}: greedy pass@1 {r['greedy']:.4f}   sampled pass@1 {r['sampled']:.4f}")
            print(f"rank-1 share of the RL gain: greedy {res['share_greedy']:.3f}, sampled {res['share_sampled']:.3f}")
        print(json.dumps(res))
        return 0
    if len(ns.paths) < 2:
        raise UsageError("usage: rlscope weights BASE CKPT [CKPT ...]  |  rlscope weights rank1 BASE FINAL --task NAME")
    _check_weights_paths([("base", ns.paths[0]), *(("checkpoint", c) for c in ns.paths[1:])])
    rows = wg.offline_geometry(ns.paths[0], ns.paths[1:], k=ns.k, device=_device(ns.device))
    out = []
    for row in rows:
        agg = {k: v for k, v in row["aggregate"].items() if "/" not in k}
        out.append({"checkpoint": row["checkpoint"], **agg})
        if not ns.json:
            flags = [f"{int(agg[k])} matrices {k.split('_', 1)[1].replace('_', ' ')}"
                     for k in ("angle_unresolved", "angle_bound_unmet", "dw_bound_unmet") if agg.get(k)]
            print(f"{row['checkpoint']}: angle_left_mean {agg['angle_left_mean']:.5f}  angle_right_mean "
                  f"{agg['angle_right_mean']:.5f}  (every angle within {agg['angle_error_bound']:.1e} rad of the "
                  f"exact one{'; ' + ', '.join(flags) if flags else ''})  sv_rel_change_mean "
                  f"{agg['sv_rel_change_mean']:.2e}  dw_rank1_energy {agg['dw_rank1_energy']:.4f} "
                  f"(+{agg['dw_rank1_energy_bound']:.0e})  "
                  f"dw_dir_cos_left {agg['dw_dir_cos_left']:.4f}")
    print(json.dumps(out))
    return 0


def cmd_analyze(ns) -> int:
    """Analyse runs or logs: a verdict table per run; ``--json``: one JSON object as the last line."""
    from pathlib import Path

    from rlscope.analysis.analyze import analyze, print_table

    if ns.wandb:  # imported only when asked: W&B and the report pull in heavier libraries
        from rlscope import wandb_io
        from rlscope.report import build_report
    if ns.only is not None:  # before any work: an unknown analysis is named
        from rlscope.analysis.analyze import ANALYSES
        from rlscope.registry import check_names

        check_names("analysis", ns.only, ANALYSES.names(), plural="analyses")
        if ns.wandb:
            raise UsageError("rlscope analyze: --wandb publishes every analysis; drop --only or --wandb")
    if ns.out is not None and len(ns.paths) > 1:
        raise UsageError("rlscope analyze: --out takes one run at a time (each run writes its own analysis.json)")
    # before any work: one message naming what --wandb needs
    wandb_runs = [wandb_io.require_run(path) for path in ns.paths] if ns.wandb else [None] * len(ns.paths)
    results = []
    for path, wandb_run in zip(ns.paths, wandb_runs):
        result = analyze(path, fmt=ns.format, out=ns.out, names=ns.only, salvage=ns.salvage,
                         logging_steps=ns.logging_steps)
        if (result.get("meta") or {}).get("skipped"):
            print(f"rlscope: --salvage left out of {path}: " + "; ".join(
                f"{f}: {v if isinstance(v, str) else 'lines ' + ', '.join(map(str, v))}"
                for f, v in result["meta"]["skipped"].items()), file=sys.stderr)
        results.append(result)
        if ns.wandb:
            out = Path(result["written_to"]).parent / "report.html" if result.get("written_to") else None
            report = build_report([path], out=out, fmt=ns.format, keep_specs=True, salvage=ns.salvage,
                                  logging_steps=ns.logging_steps)
            result["report"] = report["report"]
            result["wandb"] = wandb_io.analyze_into_wandb(path, result, report, wandb_run)
        if not ns.json:
            print_table(result)
            where = result.get("written_to") or ("not written (--only: give --out DIR to keep them)" if ns.only else
                                                 "not written (a foreign log: give --out DIR to keep the results)")
            print(f"results: {where}")
            if ns.wandb:
                w = result["wandb"]
                print(f"W&B: into run {w['project']}/{w['id']} ({w['mode']}; {w['summary']} summary items, "
                      f"{len(w['figures'])} figures, artifact {w['artifact']}; report {result['report']})")
    if ns.json:
        print(json.dumps(results[0] if len(results) == 1 else {"runs": results}, default=str))
    return 0


def cmd_report(ns) -> int:
    """One self-contained HTML report of a run, or a compare page of several; the last line is JSON."""
    from rlscope.report import build_report

    info = build_report(ns.paths, out=ns.out, fmt=ns.format, labels=ns.label, salvage=ns.salvage,
                        logging_steps=ns.logging_steps)
    if not ns.json:
        print(f"report: {info['report']} ({info['bytes'] / 1e6:.2f} MB, {info['seconds']:.1f} s; "
              f"{len(info['figures'])} figures" + (f", not drawn: {', '.join(info['not_drawn'])}"
                                                   if info["not_drawn"] else "") + ")")
    print(json.dumps(info))
    return 0


def cmd_probes(ns) -> int:
    """Every registered probe: its source, inputs, cost, default cadence, options and the metrics it writes."""
    from rlscope.probes import PROBES

    rows = [probe.describe() for _, probe in PROBES.items()]
    if not ns.json:
        for r in rows:
            print(f"{r['name']:<10} source {r['source']:<10} cost {r['cost']:<7} cadence {r['cadence']:<18} "
                  f"inputs {', '.join(r['inputs'])}")
            print(f"{'':<10} {r['doc']}")
            if r["options"]:
                print(f"{'':<10} options: {', '.join(f'{k}={v!r}' for k, v in r['options'].items())}")
            print(f"{'':<10} metrics: {', '.join(r['metrics'])}")
    print(json.dumps({"probes": rows}))
    return 0


def cmd_recipes(ns) -> int:
    """The recipes that ship with rlscope (inside the package, so a wheel has them): name, what it runs, launch lines
    -- with the folder's real path where ``recipes/`` is not the working directory's (an installed wheel)."""
    from pathlib import Path

    from rlscope import paths

    folder = paths.recipes_dir()
    here = Path("recipes").resolve() == folder.resolve()
    rows = []
    for path in paths.shipped():
        lines = [line if here else line.replace("recipes/", f"{folder}/") for line in paths.launch_lines(path)]
        first = path.read_text().splitlines()[0].lstrip("# ").strip() if path.read_text().startswith("#") else ""
        rows.append({"name": path.stem, "path": str(path), "about": first, "launch": lines})
    accel = sorted(str(p) for p in (folder / "accelerate").glob("*.yaml"))
    if not ns.json:
        print(f"recipes in {folder} (rlscope train --config NAME runs one from any directory):")
        for r in rows:
            print(f"  {r['name']:<38} {r['about']}")
            for line in r["launch"]:
                print(f"  {'':<38}   $ {line}")
        print(f"accelerate configs: {', '.join(accel)}")
    print(json.dumps({"recipes_dir": str(folder), "recipes": rows, "accelerate_configs": accel}))
    return 0


def cmd_bench(ns) -> int:
    from rlscope import bench

    if ns.device:
        _device(ns.device)
    if ns.what == "step":
        result = bench.bench_step(steps=ns.steps or 20, warmup=ns.warmup, recipe=ns.recipe)
    elif ns.what == "passk":
        result = bench.bench_passk(prompts=ns.prompts, n=ns.n, repeats=ns.repeats, shape=ns.shape,
                                   device=ns.device or "cpu", max_new_tokens=ns.max_new_tokens,
                                   full_length=ns.full_length)
    elif ns.what == "schedules":
        result = bench.bench_schedules(steps=ns.steps or 40)
    elif ns.what == "weights":
        result = bench.bench_weights(n=ns.svd_n, device=ns.device or "cpu",
                                     **({"layers": ns.layers} if ns.layers else {}))
    elif ns.what == "lora":
        result = bench.bench_lora(rank=ns.rank, layers=ns.layers or 4, device=ns.device or "cpu")
    elif ns.what == "analyze":
        result = bench.bench_analyze(steps=ns.steps or 20000, metrics=ns.metrics)
    elif ns.what == "gather":
        result = bench.bench_gather(tokens=ns.tokens, worlds=tuple(ns.worlds))
    elif ns.what == "overhead":
        result = bench.bench_overhead(steps=ns.steps or 16, warmup=ns.warmup, repeats=ns.repeats, recipe=ns.recipe,
                                      model=ns.model, device=ns.device, probes=ns.probes)
    else:  # argparse restricts the choices
        raise AssertionError(ns.what)
    bench.print_result(result, ns.json)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


LOGGING_STEPS_HELP = ("the run's logging interval, for a log whose dicts carry no step (a TRL console log without "
                      "the Trainer header): its Nth dict is step N x this")


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

    k = sub.add_parser("passk", help="pass@k (k = 1..n, unbiased) of a model on a task's held-out split; "
                                     "runs under accelerate launch too (batches of prompts split across ranks)")
    k.add_argument("--model", required=True, help="model directory (or 'tiny-sft': the cached warm-started tiny model)")
    k.add_argument("--task", required=True)
    k.add_argument("--task-config", default="{}", help="JSON task options, e.g. '{\"seed\": 0}'")
    k.add_argument("-n", type=int, default=16, help="samples per prompt")
    k.add_argument("--temperature", type=float, default=1.0)
    k.add_argument("--top-p", type=float, default=1.0)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--split", default="heldout")
    k.add_argument("--max-prompts", type=int, default=None)
    k.add_argument("--batch-prompts", type=int, default=None,
                   help="prompts per generation batch (default: 1024 rows of n samples; the counts do not depend on "
                        "the number of processes)")
    k.add_argument("--json", action="store_true", help="print only the JSON line")
    k.set_defaults(func=cmd_passk)

    w = sub.add_parser("weights", help="weight-update geometry of checkpoints against a base (same code as live): "
                                       "BASE CKPT [CKPT ...]; or rank1 BASE FINAL --task NAME (AlphaRL's rank-1 "
                                       "recovery of the RL gain)")
    w.add_argument("paths", nargs="+")
    w.add_argument("--k", type=int, default=16, help="top-k singular subspaces")
    w.add_argument("--device", default="cpu", help="where to compute: cpu (default) or cuda[:N] (the same numbers "
                                                   "within the reported bounds)")
    w.add_argument("--task", default=None, help="rank1: the task whose held-out split is evaluated")
    w.add_argument("--task-config", default="{}", help="rank1: JSON task options")
    w.add_argument("--samples", type=int, default=8, help="rank1: samples per prompt for sampled pass@1")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--json", action="store_true", help="print only the JSON line")
    w.set_defaults(func=cmd_weights)

    an = sub.add_parser("analyze", help="analyse runs or logs (an rlscope run, a W&B offline run, trainer_state.json, "
                                        "TensorBoard events, a TRL or verl console log, CSV): verdicts of every "
                                        "analysis; the last output line is JSON")
    an.add_argument("paths", nargs="+", help="run directories, log files, or wandb://ENTITY/PROJECT/RUN_ID")
    an.add_argument("--json", action="store_true", help="print only the JSON line")
    an.add_argument("--salvage", action="store_true", help="read around corrupt records of an rlscope run (a damaged line, an unreadable meta.json) "
                         "instead of stopping at the first; what was left out is said")
    an.add_argument("--logging-steps", type=_positive_int, default=None, metavar="N", help=LOGGING_STEPS_HELP)
    an.add_argument("--only", nargs="+", default=None, metavar="ANALYSIS",
                    help="run only these analyses (names as in the table); the run's own analysis.json is left as "
                         "it is unless --out is given")
    an.add_argument("--out", default=None, help="directory for analysis.json (default: <run>/analysis/ for an "
                                                "rlscope run; not written for a foreign log)")
    an.add_argument("--format", default=None, help="the log format, when detection from the path is not enough "
                                                   "(rlscope, wandb, wandb_api, trainer_state, tensorboard, "
                                                   "trl_console, verl_log, csv)")
    an.add_argument("--wandb", action="store_true", help="also write the analysis into the W&B run the path logged "
                                                         "to (resumed): verdicts and numbers in its summary as "
                                                         "rlscope/analysis/<name>/<stat>, the figures, the report as "
                                                         "an HTML panel and an artifact; online with credentials, "
                                                         "else offline beside the run's files (wandb sync uploads)")
    an.set_defaults(func=cmd_analyze)
    rp = sub.add_parser("report", help="one self-contained HTML page (opens from disk, no network) answering the "
                                       "analyses' questions with figures and a rollout browser; several runs: a "
                                       "compare page; the last output line is JSON")
    rp.add_argument("paths", nargs="+", help="run directories or logs (any format rlscope analyze reads)")
    rp.add_argument("--out", default=None, help="the HTML file (default: <run>/analysis/report.html for one rlscope "
                                                "run, else ./report.html)")
    rp.add_argument("--format", default=None, help="the log format, as for rlscope analyze")
    rp.add_argument("--label", nargs="+", default=None, help="names for the runs in compare mode (one per path)")
    rp.add_argument("--json", action="store_true", help="print only the JSON line")
    rp.add_argument("--salvage", action="store_true", help="read around corrupt records of an rlscope run (a damaged line, an unreadable meta.json) "
                         "instead of stopping at the first; what was left out is said")
    rp.add_argument("--logging-steps", type=_positive_int, default=None, metavar="N", help=LOGGING_STEPS_HELP)
    rp.set_defaults(func=cmd_report)

    rc = sub.add_parser("recipes", help="list the recipes that ship with rlscope and their launch lines")
    rc.add_argument("--json", action="store_true", help="print only the JSON line")
    rc.set_defaults(func=cmd_recipes)

    pr = sub.add_parser("probes", help="list every registered probe (source, inputs, cost, default cadence, options, "
                                       "metrics); the last output line is JSON")
    pr.add_argument("--json", action="store_true", help="print only the JSON line")
    pr.set_defaults(func=cmd_probes)

    b = sub.add_parser("bench", help="benchmarks; the last output line is JSON")
    b.add_argument("what", choices=["step", "overhead", "gather", "passk", "weights", "lora", "schedules",
                                    "analyze"])
    b.add_argument("--json", action="store_true", help="print only the JSON line")
    b.add_argument("--steps", type=int, default=None, help="optimizer steps (step: 20, overhead: 16, schedules: 40; "
                                                             "analyze: the synthetic run's length, 20000)")
    b.add_argument("--metrics", type=int, default=200, help="analyze: metrics per step of the synthetic run")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--repeats", type=int, default=5, help="overhead: runs per arm (interleaved)")
    b.add_argument("--recipe", default="tiny_dapo", help="step, overhead: a bundled recipe's name or a recipe file")
    b.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="passk, weights, lora: where it runs (default cpu); overhead: cuda runs the recipe with use_cpu "
                        "false and bf16 true, cpu with use_cpu true and bf16 false (default: as the recipe says)")
    b.add_argument("--model", default=None,
                   help="overhead: a model shape (qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b: random "
                        "weights, saved to a temporary directory) or a model directory (default, or tiny: the "
                        "warm-started tiny model)")
    b.add_argument("--probes", choices=["default", "heavy"], default="default",
                   help="overhead: the rlscope arm's probes: the default token probes, or heavy (also grad every "
                        "step and weights every 50 steps, amortized: heavy_amortized_ratio)")
    b.add_argument("--prompts", type=int, default=64, help="passk: held-out prompts")
    b.add_argument("-n", type=int, default=16, help="passk: samples per prompt")
    b.add_argument("--shape", default="tiny",
                   help="passk: tiny (the warm-started tiny model) or a model shape with random weights "
                        "(qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b; bf16 on cuda, float32 on cpu)")
    b.add_argument("--max-new-tokens", type=int, default=None, help="passk: tokens per sample (default: the "
                                                                    "task's completion budget)")
    b.add_argument("--full-length", action=argparse.BooleanOptionalAction, default=None,
                   help="passk: no sample ends before --max-new-tokens in either arm (default: on for a shape, "
                        "off for tiny)")
    b.add_argument("--svd-n", type=int, default=4096, help="weights: size of the square matrix for (a)")
    b.add_argument("--layers", type=int, default=None, help="weights: layers of the Qwen2.5-1.5B-shaped model for (b) "
                                                               "(default: its 28); lora: adapted layers (default 4)")
    b.add_argument("--rank", type=int, default=16, help="lora: the adapters' rank r (alpha = 2r)")
    b.add_argument("--tokens", type=int, default=1_000_000, help="gather: valid tokens per rank")
    b.add_argument("--worlds", type=int, nargs="+", default=[8, 64], help="gather: simulated world sizes")
    b.set_defaults(func=cmd_bench)
    return p


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    if rest and ns.command not in ("demo", "train"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    ns.overrides = rest  # demo/train: everything else overrides the recipe (validated by the recipe parser)
    return ns.func(ns)


def main(argv: list[str] | None = None) -> int:
    """The console script. A mistake in what was given is one line naming it and its fix, exit status 2;
    ``--debug`` anywhere shows the traceback (:mod:`rlscope.errors`)."""
    from rlscope.errors import run_command

    _env_defaults()
    return run_command(_dispatch, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
