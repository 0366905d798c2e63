"""Run a recipe: ``rlscope train --config recipes/X.yaml`` or ``accelerate launch -m rlscope.train --config ...``.

:class:`RecipeRun` does it in named steps, each a method: set up the run directory, set up the model (the embedded
``tiny`` one is built inside the run), the SFT warm start (schedule ``warm_start``), set up the trainer (DAPO, or the
interleaving trainer for an SFT-RL schedule), attach the probes -- with ``rlscope.attach``, as any user would --,
evaluate on the held-out split, train, save, evaluate again, summarize, analyze (every analysis and the report), finish.
Everything lands in ``runs/<name>/``; with ``report_to wandb`` the recipe opens one W&B run for all of it (the SFT warm
start, RL, the analysis), online with credentials and offline under ``runs/<name>/wandb`` without.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

from rlscope.recipe import WARM_START, RunArguments, parse_recipe
from rlscope.store import RunWriter, now


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("rlscope", "torch", "trl", "transformers", "accelerate", "deepspeed", "wandb", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


class RecipeRun:
    """One recipe end to end. ``callbacks`` join the RL trainer's (benchmarks time steps with them)."""

    def __init__(self, run_args: RunArguments, cfg, model_args, quiet: bool = False, callbacks: tuple = ()):
        self.run_args, self.cfg, self.model_args = run_args, cfg, model_args
        self.quiet, self.callbacks = quiet, tuple(callbacks)
        self.offset, self.phases, self.summary = 0, {}, {}
        self.wandb_run = None
        self.lock = None

    def run(self) -> dict:
        self.check_inputs()
        self.setup_run_dir()
        try:
            self.setup_model()
            self.warm_start()
            self.setup_trainer()
            self.attach_probes()
            self.evaluate("before")
            self.train()
            self.save()
            self.evaluate("after")
            self.summarize()
            self.analyze()
        except BaseException as exc:  # meta.json says the run failed, and why, instead of "running" forever
            if self.main:
                try:
                    self.writer.write_meta({"status": "failed", "failed": now(),
                                            "error": f"{type(exc).__name__}: {exc}"})
                except OSError:  # the disk that failed the run may fail this too: the original error matters
                    pass
                self.lock.release()
            raise
        return self.finish()

    # -- steps -------------------------------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Before any work (:mod:`rlscope.preflight`): the launched processes form one group of the recipe's size,
        the model exists, the checkpoint to resume from exists."""
        from accelerate import PartialState

        from rlscope import preflight
        from rlscope.tinymodel import TINY_SFT, is_tiny

        preflight.check_processes(PartialState().num_processes, self.run_args.num_processes)
        preflight.check_adapters(self.model_args)
        name = self.model_args.model_name_or_path or "tiny"
        if not (is_tiny(name) or name == TINY_SFT):
            preflight.check_model(name)
        run_dir = Path(self.run_args.runs_dir) / (self.cfg.run_name or "run")
        state = PartialState()
        self.resume = preflight.resume_target(self.cfg.resume_from_checkpoint, run_dir / "checkpoints",
                                              state.num_processes)
        self.lock = preflight.agree(state, lambda: preflight.claim_run_dir(run_dir, self.resume,
                                                                             self.run_args.overwrite))

    def setup_run_dir(self) -> None:
        """The run directory, W&B's environment, the resolved config and the start of ``meta.json``."""
        from accelerate import PartialState

        from rlscope.tasks import get_task

        self.t0 = time.time()
        cfg, run_args = self.cfg, self.run_args
        cfg.run_name = cfg.run_name or "run"
        self.run_dir = Path(run_args.runs_dir) / cfg.run_name
        cfg.output_dir = str(self.run_dir / "checkpoints")
        self._setup_wandb()
        self.state = PartialState()
        self.main = self.state.is_main_process
        self.writer = RunWriter(self.run_dir)
        self.task = get_task(run_args.task, **run_args.task_config)
        if self.main:
            config = {"run": dataclasses.asdict(run_args), "model": dataclasses.asdict(self.model_args),
                      "training": cfg.to_dict()}
            self.writer.write_config(config)
            self.writer.write_meta({"versions": _versions(), "world_size": self.state.num_processes, "seed": cfg.seed,
                                    "task": run_args.task, "model": self.model_args.model_name_or_path,
                                    "distributed_type": str(self.state.distributed_type), "started": now(),
                                    "argv": sys.argv, "status": "running"})
            if self.reports_wandb:
                self._open_wandb(config)

    @property
    def reports_wandb(self) -> bool:
        from rlscope.common import reports_to_wandb

        return reports_to_wandb(self.cfg.report_to)

    def _setup_wandb(self) -> None:
        """W&B's environment (every process): files under the run directory, offline without credentials."""
        if self.reports_wandb:
            from rlscope import wandb_io

            os.environ.setdefault("WANDB_DIR", str(self.run_dir))
            os.environ.setdefault("WANDB_PROJECT", "rlscope")
            os.environ.setdefault("WANDB_MODE", wandb_io.mode())  # no credentials: offline, under runs/<name>/wandb
            os.environ.setdefault("WANDB_SILENT", "true")
            if "wandb" in sys.modules:  # W&B reads the environment once per process, at its first setup: a second
                import wandb  # run in the same process would write into the first run's directory

                if wandb.run is None:
                    wandb.teardown()

    def _open_wandb(self, config: dict) -> None:
        """The run's one W&B run (main process), opened before the SFT warm start so both phases and the analysis
        land in it; a resumed run continues the W&B run its ``meta.json`` names."""
        from rlscope import wandb_io
        from rlscope.store import RunReader

        previous = RunReader(self.run_dir).meta().get("wandb") if self.cfg.resume_from_checkpoint else None
        self.wandb_run = wandb_io.open_run(self.run_dir, self.cfg.run_name, config,
                                           run_id=(previous or {}).get("id"), project=(previous or {}).get("project"))
        self.writer.write_meta({"wandb": wandb_io.run_info(self.wandb_run)})

    def setup_model(self) -> None:
        """Resolve the model: ``tiny`` is built into the run, ``tiny-sft`` comes from the cache, else a path/hub id."""
        from rlscope.tinymodel import TINY_SFT, build_tiny, is_tiny, tiny_sft_model

        name = self.model_args.model_name_or_path or "tiny"
        with self.state.main_process_first():
            if is_tiny(name):
                self.model_path = str(self.run_dir / "models" / "init")
                if self.main and not (Path(self.model_path) / "config.json").exists():
                    build_tiny(self.model_path)
            elif name == TINY_SFT:
                self.model_path = str(tiny_sft_model(self.run_args.task, self.run_args.task_config))
            else:
                self.model_path = name
        if self.resume is not None:
            from rlscope.preflight import check_checkpoint

            check_checkpoint(self.resume, self.model_path)

    def warm_start(self) -> None:
        """Schedule ``warm_start``: an SFT phase on steps 1..N of the run's axis (its metrics under ``sft/``); RL
        continues from that checkpoint at N + 1. A resumed run reuses the phase's saved model."""
        if self.run_args.schedule != WARM_START:
            return
        from rlscope.trainers.sft import run_sft

        sft_dir = self.run_dir / "models" / "sft"
        if not (self.cfg.resume_from_checkpoint and (sft_dir / "config.json").exists()):
            run_sft(self.model_path, self.task, sft_dir, steps=self.run_args.sft_steps,
                    learning_rate=self.run_args.sft_learning_rate, batch_size=self.run_args.sft_batch_size,
                    seed=self.cfg.seed, use_cpu=self.cfg.use_cpu, disable_tqdm=self.quiet or self.cfg.disable_tqdm,
                    on_trainer=self._sft_trainer)
        self.model_path = str(sft_dir)
        self.offset = self.run_args.sft_steps
        self.phases["sft"] = [1, self.offset]

    @property
    def console(self) -> str:
        return "none" if self.quiet else self.run_args.console

    def _sft_trainer(self, trainer) -> None:
        """The warm start's SFTTrainer: rlscope's store (metrics under sft/) and the console, no probes or alarms."""
        from rlscope.callbacks import attach
        from rlscope.callbacks.console import install_console

        obs = attach(trainer, self.run_dir, probes=(), log_prefix="sft/", alarms=False, wandb=self.reports_wandb)
        install_console(trainer, self.console, obs, desc="SFT")

    def setup_trainer(self) -> None:
        """rlscope's DAPO trainer, or the interleaving trainer when the schedule mixes SFT into the run."""
        from transformers import AutoTokenizer

        from rlscope.trainers.dapo import DAPOTrainer

        cfg, model_args, run_args = self.cfg, self.model_args, self.run_args
        init_kwargs = dict(cfg.model_init_kwargs or {})
        if model_args.dtype and model_args.dtype != "auto":
            init_kwargs.setdefault("dtype", model_args.dtype)
        if model_args.attn_implementation:
            init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
        peft_config = None
        if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:  # LoRA / QLoRA (TRL's fields)
            from trl import get_peft_config, get_quantization_config

            peft_config = get_peft_config(model_args)
            quantization = get_quantization_config(model_args)
            if quantization is not None:
                init_kwargs.setdefault("quantization_config", quantization)
        cfg.model_init_kwargs = init_kwargs or None
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        train_ds = self.task.dataset("train")
        self.task.check_columns(train_ds, "train")
        trainer_cls, extra = DAPOTrainer, {}
        if run_args.schedule not in ("rl", WARM_START):
            from rlscope.trainers.interleave import InterleavedTrainer
            from rlscope.trainers.schedules import get_schedule

            trainer_cls = InterleavedTrainer
            extra = dict(schedule=get_schedule(run_args.schedule, **run_args.schedule_config), task=self.task,
                         sft_batch_size=run_args.interleave_sft_batch_size)
        self.trainer = trainer_cls(model=self.model_path, reward_funcs=self.task.reward_funcs(), args=cfg,
                                   train_dataset=train_ds, processing_class=self.tokenizer,
                                   callbacks=list(self.callbacks), rollout_log_every=run_args.rollout_log_every,
                                   step_offset=self.offset, peft_config=peft_config, **extra)

    def attach_probes(self) -> None:
        """``rlscope.attach`` with the recipe's probes; probes that sample use the run's task and seed by default."""
        from rlscope.callbacks import attach
        from rlscope.callbacks.sources import SOURCES
        from rlscope.common import model_is_partitioned, zero_stage
        from rlscope.probes import PROBES

        spec, sources = self.run_args.probe_spec()
        for name, opts in spec.items():
            source_options = SOURCES.get(PROBES.get(name).source).options()
            if "task" in source_options and "task" not in opts:
                opts["task"] = self.task
            if "seed" in source_options:
                opts.setdefault("seed", self.cfg.seed)
        self.obs = attach(self.trainer, self.run_dir, probes=spec, step_offset=self.offset,
                          alarms=self.run_args.alarms, nonfinite=self.run_args.nonfinite, **sources)
        from rlscope.callbacks.console import install_console

        install_console(self.trainer, self.console, self.obs, desc="RL")
        self.trainer.run_store = self.obs.writer  # the trainer stores its rollouts through the same writer
        if self.main:  # what the run really ran as (accelerate can quietly fall back from DeepSpeed)
            self.writer.write_meta({"zero_stage": zero_stage(),
                                    "params_partitioned": model_is_partitioned(self.trainer.model)})

    def evaluate(self, when: str) -> None:
        """Held-out accuracy, stored as phase ``<when>_rl`` and summarised as ``heldout[_sampled]_<when>``: on the main
        process; under ZeRO-3 on every rank (lock step or gathered parameters, :mod:`rlscope.evaluate`), the main
        process logging it."""
        import contextlib

        import torch

        from rlscope.adapters import adapters_disabled
        from rlscope.common import model_is_partitioned

        everyone = model_is_partitioned(self.trainer.model) and self.state.num_processes > 1
        if when == "before" and self.resume is not None and self.main:  # measured by the run being resumed
            from rlscope.store import RunReader

            done = [e for e in RunReader(self.run_dir).evals() if e.get("phase") == "before_rl"]
            if done:
                self.summary.update({f"heldout{kind}_before": next(
                    (e["value"] for e in done if e["name"] == f"heldout/{name}"), None)
                    for kind, name in (("", "accuracy"), ("_sampled", "sampled_accuracy"))})
                when = "skip"
        if everyone and self.run_args.eval_heldout:  # every rank must agree on whether to generate
            from accelerate.utils import broadcast_object_list

            when = broadcast_object_list([when])[0]
        if self.run_args.eval_heldout and (self.main or everyone) and when != "skip":
            from rlscope.evaluate import evaluate_task

            step = self.offset + (self.trainer.state.global_step if when == "after" else 0)
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            # ranks other than the main one only take part in the collectives: their RNG stays as without it
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            with contextlib.ExitStack() as stack:
                if not self.main:
                    stack.enter_context(torch.random.fork_rng(devices=devices))
                if when == "before":  # a LoRA run's reference is its base model: adapters off, no second copy
                    stack.enter_context(adapters_disabled(model))
                result = evaluate_task(model, self.tokenizer, self.task, n_samples=self.run_args.eval_samples,
                                       seed=self.cfg.seed)
            if self.main:
                self.writer.log_eval(step, f"{when}_rl", result.as_metrics("heldout"))
                self.summary[f"heldout_{when}"] = result.accuracy
                self.summary[f"heldout_sampled_{when}"] = result.sampled_accuracy
                if when == "after":
                    self.summary["heldout_after_by_difficulty"] = result.by_difficulty
        self.state.wait_for_everyone()

    def train(self) -> None:
        t = time.time()
        self.trainer.train(resume_from_checkpoint=None if self.resume is None else str(self.resume))
        self.rl_seconds = time.time() - t
        self.steps = self.trainer.state.global_step
        self.phases["rl"] = [self.offset + 1, self.offset + self.steps]

    def save(self) -> None:
        final_dir = self.run_dir / "models" / "final"
        self.trainer.save_model(str(final_dir))
        if self.main:
            self.tokenizer.save_pretrained(str(final_dir))

    def summarize(self) -> dict:
        """The summary dict (returned, and written to ``meta.json``); the run store is complete after it."""
        s, offset = self.summary, self.offset
        s.update({"run_dir": str(self.run_dir), "world_size": self.state.num_processes})
        if hasattr(self.trainer, "decisions"):  # interleaving: which steps were SFT / mixed (the analysis shades them)
            s["schedule"] = {"name": self.run_args.schedule, "config": self.run_args.schedule_config,
                             "sft_steps": [offset + st for st, k in self.trainer.decisions if k == "sft"],
                             "mixed_steps": [offset + st for st, k in self.trainer.decisions if k == "mixed"]}
        passk = self.obs.latest.get("passk")
        if passk is not None:
            record = passk[1]["record"].rows[0]
            base = self.obs.state["passk"].get("bases", {}).get(record["n"])
            if record["kind"] == "current" and base is not None:
                n = record["n"]
                from rlscope.probes.passk import default_ks

                ks = sorted(set(default_ks(n)) | {n})
                s["passk"] = {"n": n, "prompts": len(record["counts"]), "base_pass@1": base["curve"][0],
                              f"base_pass@{n}": base["curve"][-1], "final_pass@1": record["curve"][0],
                              f"final_pass@{n}": record["curve"][-1], "crossover_k": record.get("crossover_k"),
                              # the curves at k = 1, 2, 4, ... (and n): what the demo prints, base vs final
                              "ks": ks,
                              "base": [base["curve"][k - 1] for k in ks], "final": [record["curve"][k - 1] for k in ks]}
        weights = {k.split("/", 2)[-1]: v for k, v in self.obs.last.items()
                   if k.startswith("rlscope/weights/") and "/kind/" not in k and "/layer/" not in k}
        if weights:
            s["weights_final"] = weights
        if self.obs.alarms is not None:
            s["alarms"] = {n: {k: a[k] for k in ("step", "severity", "message")} for n, a in self.obs.alarms.fired.items()}
            if self.obs.alarms.stopped is not None:
                s["stopped"] = self.obs.alarms.stopped
        if self.obs.failed:
            s["probe_errors"] = self.obs.failed
        if self.obs.guard.total:
            s["nonfinite_steps"] = self.obs.guard.total
        if self.obs.guard.stopped_at is not None:
            s["stopped"] = {"by": "nonfinite", "step": self.obs.guard.stopped_at,
                            "message": "NaN/inf gradients (nonfinite: stop)"}
        s.update({"rl_steps": self.steps, "rl_seconds": self.rl_seconds,
                  "rl_steps_per_second": self.steps / max(self.rl_seconds, 1e-9),
                  "wall_seconds": time.time() - self.t0, "phases": self.phases})
        if self.main:
            stopped = s.get("stopped")
            status = "finished" if not stopped else ("stopped by alarm" if stopped.get("by") == "rlscope alarm" else
                                                     f"stopped: {stopped.get('message', stopped.get('by'))}")
            self.writer.write_meta({"finished": now(), "status": status, "summary": s, "phases": self.phases})
            self.writer.close()
        return s

    def analyze(self) -> None:
        """``analyze``: every analysis of the finished run (``analysis/analysis.json``) and its report
        (``analysis/report.html``), on the main process; with W&B, both into the run's W&B run."""
        if not (self.run_args.analyze and self.main):
            return
        from rlscope.analysis.analyze import analyze
        from rlscope.report import build_report

        t = time.time()
        try:
            result = analyze(self.run_dir)
            report = build_report([self.run_dir], keep_specs=self.wandb_run is not None)
            self.summary["analysis"] = {"path": result["written_to"], "report": report["report"],
                                        "verdicts": {n: r["verdict"] for n, r in result["analyses"].items()}}
            if self.wandb_run is not None:
                from rlscope import wandb_io

                written = wandb_io.publish_analysis(self.wandb_run, result, report, step=result.get("last_step"))
                self.summary["analysis"]["wandb"] = written
        except Exception as exc:  # the run itself is done and saved: a failed analysis must not fail it
            import traceback

            warnings.warn(f"rlscope: the end-of-run analysis failed ({type(exc).__name__}: {exc}); the run is "
                          f"complete -- run `rlscope analyze {self.run_dir}` to retry\n{traceback.format_exc()}",
                          stacklevel=2)
            self.summary["analysis"] = {"error": f"{type(exc).__name__}: {exc}"}
        self.summary["analysis"]["seconds"] = round(time.time() - t, 2)
        self.writer.write_meta({"summary": self.summary})

    def finish(self) -> dict:
        """Close the W&B run; end the process group of a distributed run. Returns the summary."""
        import torch

        if self.wandb_run is not None:
            from rlscope import wandb_io

            wandb_io.close(self.wandb_run)
            self.wandb_run = None
        if self.lock is not None:
            self.lock.release()
        self.state.wait_for_everyone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # ZeRO-3 runs can abort at exit without it
        return self.summary


def run(run_args: RunArguments, cfg, model_args, quiet: bool = False, callbacks: tuple = ()) -> dict:
    """Execute one recipe; returns the summary dict (also written to meta.json)."""
    return RecipeRun(run_args, cfg, model_args, quiet=quiet, callbacks=callbacks).run()


def _train(argv: list[str]) -> dict:
    run_args, cfg, model_args = parse_recipe(argv)
    summary = run(run_args, cfg, model_args)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, default=str))
    return summary


def main(argv: list[str] | None = None, boundary: bool = True) -> dict | None:
    """``python -m rlscope.train --config RECIPE [overrides]``. With ``boundary`` (the script's own entry), a mistake in
    the recipe or the inputs is one line and exit status 2 (``--debug``: the traceback); ``rlscope train`` has its own."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not boundary:
        return _train(argv)
    from rlscope.errors import run_command

    out = {}
    status = run_command(lambda a: out.update(summary=_train(a)), argv)
    if status:
        sys.exit(status)
    return out.get("summary")


if __name__ == "__main__":
    main()
