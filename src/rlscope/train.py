"""Run a recipe: ``rlscope train --config recipes/X.yaml`` or ``accelerate launch -m rlscope.train --config ...``.

Flow: resolve the model (the embedded ``tiny`` one is built inside the run), optional SFT warm start, held-out
evaluation, DAPO/GRPO with dynamic sampling, held-out evaluation, final model. Everything lands in ``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from rlscope.recipe import RunArguments, parse_recipe
from rlscope.store import RunWriter, now

TINY_SFT = "tiny-sft"  # the embedded model after a cached SFT warm start (built once per machine)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("rlscope", "torch", "trl", "transformers", "accelerate", "deepspeed", "wandb", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("RLSCOPE_CACHE", Path.home() / ".cache" / "rlscope"))


def tiny_sft_model(task_name: str, task_config: dict, steps: int = 300, lr: float = 1e-3, seed: int = 0) -> Path:
    """The tiny model warm-started by ``steps`` SFT steps on the task, cached under ``$RLSCOPE_CACHE``."""
    from filelock import FileLock

    from rlscope.tasks import chainsum, get_task
    from rlscope.tinymodel import TinySpec, build_tiny
    from rlscope.trainers.sft import run_sft

    key = json.dumps({"task": task_name, "format": chainsum.FORMAT_VERSION, "cfg": task_config, "steps": steps,
                      "lr": lr, "seed": seed,
                      "spec": dataclasses.asdict(TinySpec())}, sort_keys=True)
    path = cache_dir() / f"tiny-sft-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    with FileLock(str(path) + ".lock"):
        if not (path / "config.json").exists():
            init = build_tiny(path.with_name(path.name + "-init"))
            run_sft(str(init), get_task(task_name, **task_config), path, steps=steps, learning_rate=lr, seed=seed,
                    disable_tqdm=True)
    return path


def _setup_wandb(cfg, run_dir: Path) -> None:
    report = cfg.report_to if isinstance(cfg.report_to, list) else [cfg.report_to]
    if "wandb" in report or "all" in report:
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_PROJECT", "rlscope")
        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"  # no credentials: files under runs/<name>/wandb
        os.environ.setdefault("WANDB_SILENT", "true")


def _is_zero3(cfg) -> bool:
    from accelerate.state import AcceleratorState

    state = AcceleratorState()
    plugin = getattr(state, "deepspeed_plugin", None)
    return bool(plugin is not None and plugin.zero_stage == 3)


def run(run_args: RunArguments, cfg, model_args, quiet: bool = False, callbacks: tuple = ()) -> dict:
    """Execute one recipe; returns a summary dict (also written to meta.json). ``callbacks`` join the RL trainer's."""
    import torch
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from rlscope.callbacks import RunStoreCallback
    from rlscope.evaluate import evaluate_task
    from rlscope.tasks import get_task
    from rlscope.tinymodel import build_tiny, is_tiny
    from rlscope.trainers.dapo import DAPOTrainer
    from rlscope.trainers.sft import run_sft

    t0 = time.time()
    run_name = cfg.run_name or "run"
    run_dir = Path(run_args.runs_dir) / run_name
    cfg.output_dir = str(run_dir / "checkpoints")
    cfg.run_name = run_name
    _setup_wandb(cfg, run_dir)
    state = PartialState()
    main = state.is_main_process
    writer = RunWriter(run_dir)
    task = get_task(run_args.task, **run_args.task_config)

    if main:
        writer.write_config({"run": dataclasses.asdict(run_args), "model": dataclasses.asdict(model_args),
                             "training": cfg.to_dict()})
        writer.write_meta({"versions": _versions(), "world_size": state.num_processes, "seed": cfg.seed,
                           "task": run_args.task, "model": model_args.model_name_or_path,
                           "distributed_type": str(state.distributed_type), "started": now(),
                           "argv": sys.argv, "status": "running"})

    # -- the model -------------------------------------------------------------------------------------------------
    name = model_args.model_name_or_path or "tiny"
    with state.main_process_first():
        if is_tiny(name):
            model_path = str(run_dir / "models" / "init")
            if main and not (Path(model_path) / "config.json").exists():
                build_tiny(model_path)
        elif name == TINY_SFT:
            model_path = str(tiny_sft_model(run_args.task, run_args.task_config))
        else:
            model_path = name
    offset, phases = 0, {}
    if run_args.schedule == "warm_start":
        sft_dir = run_dir / "models" / "sft"
        model_path = str(run_sft(model_path, task, sft_dir, steps=run_args.sft_steps,
                                 learning_rate=run_args.sft_learning_rate, batch_size=run_args.sft_batch_size,
                                 seed=cfg.seed, writer=writer if main else None, use_cpu=cfg.use_cpu,
                                 disable_tqdm=quiet or cfg.disable_tqdm))
        offset = run_args.sft_steps
        phases["sft"] = [1, offset]

    init_kwargs = dict(cfg.model_init_kwargs or {})
    if model_args.dtype and model_args.dtype != "auto":
        init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    cfg.model_init_kwargs = init_kwargs or None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_ds = task.dataset("train")
    task.check_columns(train_ds, "train")
    trainer_cls, extra = DAPOTrainer, {}
    if run_args.schedule not in ("rl", "warm_start"):  # an interleaving schedule: one trainer for SFT and RL steps
        from rlscope.trainers.interleave import InterleavedTrainer
        from rlscope.trainers.schedules import get_schedule

        trainer_cls = InterleavedTrainer
        extra = dict(schedule=get_schedule(run_args.schedule, **run_args.schedule_config), task=task,
                     sft_batch_size=run_args.interleave_sft_batch_size)
    trainer = trainer_cls(model=model_path, reward_funcs=task.reward_funcs(), args=cfg, train_dataset=train_ds,
                          processing_class=tokenizer, callbacks=[RunStoreCallback(writer, step_offset=offset), *callbacks],
                          run_store=writer, rollout_log_every=run_args.rollout_log_every,
                          step_offset=offset, **extra)
    from rlscope.callbacks import attach

    attached = attach(trainer, observatory=run_args.observatory, step_offset=offset,
                      **(dict(probes=run_args.observatory_probes, every=run_args.observatory_every,
                              table_every=run_args.observatory_table_every, dump_dir=run_dir / "tokens",
                              dump_every=run_args.observatory_dump_every) if run_args.observatory else {}))
    if run_args.passk_n > 0:
        from rlscope.callbacks import PassKCallback

        attached.passk = PassKCallback(task, n=run_args.passk_n, every=run_args.passk_every,
                                       temperature=run_args.passk_temperature, top_p=run_args.passk_top_p,
                                       seed=cfg.seed, max_prompts=run_args.passk_max_prompts,
                                       writer=writer if main else None, step_offset=offset)
        trainer.add_callback(attached.passk)
    if run_args.weights_every > 0:
        from rlscope.callbacks import WeightsCallback

        attached.weights = WeightsCallback(every=run_args.weights_every, k=run_args.weights_k,
                                           snapshot_dir=run_dir / "weights" / "w0", writer=writer if main else None,
                                           step_offset=offset)
        trainer.add_callback(attached.weights)
    if main:
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        first = next(trainer.model.parameters())
        writer.write_meta({"zero_stage": plugin.zero_stage if plugin is not None else None,
                           # under ZeRO-3 each rank holds a shard: DeepSpeed marks partitioned parameters
                           "params_partitioned": bool(getattr(first, "ds_numel", None) is not None
                                                      and first.numel() < first.ds_numel)})
    evaluate = run_args.eval_heldout and not _is_zero3(cfg)
    summary: dict = {"run_dir": str(run_dir), "world_size": state.num_processes}

    def heldout(step: int, when: str):
        """Held-out eval (main process): stored as phase ``<when>_rl``, summarised as ``heldout[_sampled]_<when>``."""
        result = evaluate_task(trainer.accelerator.unwrap_model(trainer.model), tokenizer, task,
                               n_samples=run_args.eval_samples, seed=cfg.seed)
        writer.log_eval(step, f"{when}_rl", result.as_metrics("heldout"))
        summary[f"heldout_{when}"] = result.accuracy
        summary[f"heldout_sampled_{when}"] = result.sampled_accuracy
        return result

    if evaluate and main:
        heldout(offset, "before")
    state.wait_for_everyone()

    t_rl = time.time()
    trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    rl_seconds = time.time() - t_rl
    steps = trainer.state.global_step
    phases["rl"] = [offset + 1, offset + steps]
    if hasattr(trainer, "decisions"):  # interleaving: which steps were SFT / mixed (the analysis shades them)
        summary["schedule"] = {"name": run_args.schedule, "config": run_args.schedule_config,
                               "sft_steps": [offset + s for s, k in trainer.decisions if k == "sft"],
                               "mixed_steps": [offset + s for s, k in trainer.decisions if k == "mixed"]}
    final_dir = run_dir / "models" / "final"
    trainer.save_model(str(final_dir))
    if main:
        tokenizer.save_pretrained(str(final_dir))
    if evaluate and main:
        summary["heldout_after_by_difficulty"] = heldout(offset + steps, "after").by_difficulty
    pk = attached.passk
    if pk is not None and pk.base is not None and pk.history:
        from rlscope.probes.passk import crossover_k

        final = pk.history[-1][1]
        summary["passk"] = {"n": pk.n, "prompts": len(final.counts),
                            "base_pass@1": pk.base.at(1), f"base_pass@{pk.n}": pk.base.at(pk.n),
                            "final_pass@1": final.at(1), f"final_pass@{pk.n}": final.at(pk.n),
                            "crossover_k": crossover_k(pk.base.curve, final.curve)}
    wc = attached.weights
    if main and wc is not None and wc.last:
        summary["weights_final"] = {k.split("/", 2)[-1]: v for k, v in wc.last.items()
                                    if "/kind/" not in k and "/layer/" not in k}
    summary.update({"rl_steps": steps, "rl_seconds": rl_seconds, "rl_steps_per_second": steps / max(rl_seconds, 1e-9),
                    "wall_seconds": time.time() - t0, "phases": phases})
    if main:
        writer.write_meta({"finished": now(), "status": "finished", "summary": summary, "phases": phases})
        writer.close()
    state.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # ZeRO-3 runs can abort at exit without it
    return summary


def main(argv: list[str] | None = None) -> dict:
    run_args, cfg, model_args = parse_recipe(sys.argv[1:] if argv is None else argv)
    summary = run(run_args, cfg, model_args)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
