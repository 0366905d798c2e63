"""pass@k during training: the base model's curve before the first update, the current one every N steps.

Works with any ``transformers.Trainer`` (TRL GRPOTrainer, SFTTrainer, a plain Trainer): the callback only needs the
model and the tokenizer the trainer hands to callbacks. Every rank evaluates its share of the prompts (a collective:
the callback runs on all ranks). The main process writes each curve to the run store (``passk.jsonl``, kind "base" /
"current"), the scalars ``rlscope/passk/pass@K``, ``rlscope/passk/base_pass@K`` and ``rlscope/passk/crossover_k``
(Yue et al. 2025: the smallest k at which the base model is at least as good; ``crossover_found`` = 0 when it never
is) to ``metrics.jsonl``, and to W&B a line plot of pass@k against k (base vs current) and a Table.

A resumed run finds its base curve in the store and does not re-measure it. Under DeepSpeed ZeRO-3 generation would
need all ranks in lock-step per token; the callback then does nothing and says so once.
"""

from __future__ import annotations

import warnings

from transformers import TrainerCallback

from rlscope.callbacks.wandb_log import WandbQueue
from rlscope.passk_eval import PassKResult, evaluate_passk
from rlscope.probes.passk import crossover_k


class PassKCallback(TrainerCallback):
    """Args: ``task`` (a Task or a task name), ``n`` samples per prompt, ``every`` N optimizer steps (0 = only base
    and end), ``ks`` the K of the logged scalars (default powers of two up to n), sampling ``temperature`` /
    ``top_p`` / ``seed``, ``split``, ``max_prompts``, ``writer`` (a RunWriter; None = no store), ``step_offset``
    (where this trainer's step 0 lies on the run's step axis)."""

    def __init__(self, task, n: int = 16, every: int = 50, ks=None, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, split: str = "heldout", max_prompts: int | None = None,
                 max_new_tokens: int | None = None, writer=None, step_offset: int = 0, at_end: bool = True):
        from rlscope.tasks import get_task

        self.task = get_task(task) if isinstance(task, str) else task
        if n < 1:
            raise ValueError(f"pass@k callback: n must be >= 1, got {n}")
        self.ks = list(ks) if ks is not None else [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
        bad = [k for k in self.ks if not 1 <= k <= n]
        if bad:
            raise ValueError(f"pass@k callback: k={bad[0]} must be between 1 and n={n}")
        self.n, self.every, self.at_end = n, every, at_end
        self.kw = dict(n=n, temperature=temperature, top_p=top_p, seed=seed, split=split, max_prompts=max_prompts,
                       max_new_tokens=max_new_tokens)
        self.writer, self.step_offset = writer, step_offset
        self.base: PassKResult | None = None
        self.history: list[tuple[int, PassKResult]] = []
        self._last_step = None
        self._disabled = False
        self._wandb = WandbQueue()

    # -- helpers -----------------------------------------------------------------------------------------------
    def _zero3(self) -> bool:
        from accelerate.state import AcceleratorState

        try:
            plugin = AcceleratorState().deepspeed_plugin
        except Exception:  # noqa: BLE001 -- no accelerator state yet: not under DeepSpeed
            return False
        return plugin is not None and plugin.zero_stage == 3

    def _eval(self, model, tokenizer) -> PassKResult:
        return evaluate_passk(model, tokenizer, self.task, **self.kw)

    def _stored_base(self) -> PassKResult | None:
        if self.writer is None:
            return None
        from rlscope.store import RunReader

        path = self.writer.dir / "passk.jsonl"
        if not path.exists():
            return None
        for rec in RunReader(self.writer.dir).records("passk"):
            if rec.get("kind") == "base" and rec.get("n") == self.n:
                return PassKResult(n=rec["n"], counts=rec["counts"], curve=rec["curve"], seconds=rec.get("seconds", 0))
        return None

    def _publish(self, step: int, kind: str, result: PassKResult, is_main: bool) -> None:
        if not is_main:
            return
        scalars = {f"rlscope/passk/{'base_' if kind == 'base' else ''}pass@{k}": result.at(k) for k in self.ks}
        record = result.record()
        if kind == "current" and self.base is not None:
            scalars.update({f"rlscope/passk/base_pass@{k}": self.base.at(k) for k in self.ks})
            cross = crossover_k(self.base.curve, result.curve)
            record["crossover_k"] = cross
            scalars["rlscope/passk/crossover_found"] = float(cross is not None)
            if cross is not None:
                scalars["rlscope/passk/crossover_k"] = float(cross)
        scalars["rlscope/passk/seconds"] = result.seconds
        if self.writer is not None:
            self.writer.log_passk(step, kind, record)
            self.writer.log_metrics(step, scalars)
        base = self.base

        def payload(wandb, item=(step, kind, scalars, list(result.curve))):
            step_, kind_, scalars_, curve = item
            out = {f"train/{k}": v for k, v in scalars_.items()}
            if kind_ == "current" and base is not None:
                ks = list(range(1, self.n + 1))
                out["train/rlscope/passk/curve"] = wandb.plot.line_series(
                    xs=ks, ys=[base.curve, curve], keys=["base", f"step {step_}"],
                    title=f"pass@k vs k (step {step_})", xname="k")
                out["train/rlscope/passk/table"] = wandb.Table(
                    columns=["k", "base", "current", "step"],
                    data=[[k, b, c, step_] for k, b, c in zip(ks, base.curve, curve)])
            return out

        self._wandb.put(step, payload)

    # -- trainer events ----------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self._zero3():
            self._disabled = True
            warnings.warn("rlscope pass@k: skipped under DeepSpeed ZeRO-3 (sharded generation would need every rank "
                          "in lock-step per token); evaluate checkpoints offline with `rlscope passk`.")
            return
        self.tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if self.tokenizer is None:
            raise ValueError("pass@k callback: the trainer has no processing_class (tokenizer) to generate with")
        step = self.step_offset + state.global_step
        self.base = self._stored_base()
        if self.base is None:
            self.base = self._eval(model, self.tokenizer)
            self._publish(step, "base", self.base, state.is_world_process_zero)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._disabled or not self.every or state.global_step % self.every:
            return
        self._current(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._disabled or not self.at_end or self._last_step == state.global_step:
            return
        self._current(state, model)

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._wandb.flush()

    def _current(self, state, model) -> None:
        result = self._eval(model, self.tokenizer)
        step = self.step_offset + state.global_step
        self._last_step = state.global_step
        self.history.append((step, result))
        self._publish(step, "current", result, state.is_world_process_zero)
