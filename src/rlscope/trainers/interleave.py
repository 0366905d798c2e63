"""One trainer for SFT-RL schedules: rlscope's DAPO trainer plus an SFT data source, steered by a Schedule.

Every optimizer step the :class:`~rlscope.trainers.schedules.Schedule` decides the step's kind from the signals the
trainer keeps (rolling accuracy of the recent generations, held-out accuracy when the schedule asks for it) and the
per-prompt pass rates it is shown; what else it needs it declares on ``Schedule`` (no type checks here):

* ``rl``    -- TRL's GRPO/DAPO step, unchanged;
* ``sft``   -- no generation: a batch of demonstrations (the task's SFT split, or ReLIFT's buffer of hard prompts with
  their demonstrations), token-mean NLL, backward through the same accelerator (DDP / DeepSpeed) and optimizer;
* ``mixed`` -- the RL loss plus an SFT term in the same backward: HPT switches per prompt (prompts no rollout solved
  learn from their demonstration, their RL advantage zeroed), CHORD adds mu * phi-weighted NLL of a demonstration batch
  to (1 - mu) * RL.

Nothing is reloaded and no second trainer is made. Decisions are logged as ``rlscope/schedule/kind`` (0 = RL, 1 = SFT,
2 = mixed), ``rlscope/schedule/sft_weight``, ``rlscope/schedule/rl_weight``, ``rlscope/schedule/rolling_accuracy``,
``rlscope/schedule/sft_loss`` and the schedule's own values (e.g. ``rlscope/schedule/buffer_size``).
"""

from __future__ import annotations

import random
from collections import deque

import torch

from rlscope.common import derive_seed, is_correct, rng_state, set_rng_state
from rlscope.trainers.dapo import DAPOTrainer
from rlscope.trainers.mixed_losses import chord_phi_nll, demo_batch, demo_token_logps, hpt_loss, sft_nll
from rlscope.trainers.schedules import Decision, Schedule, Signals

KIND_CODE = {"rl": 0.0, "sft": 1.0, "mixed": 2.0}


def _prompt_key(row: dict) -> str:
    p = row["prompt"]
    return p if isinstance(p, str) else repr(p)


class InterleavedTrainer(DAPOTrainer):
    """``schedule``: a Schedule; ``task``: the Task (demonstrations, prompt rendering); ``sft_batch_size``: rows per
    SFT (micro-)batch; ``accuracy_window``: generations in the rolling accuracy; ``correct_threshold``: a sample counts
    as correct when the first reward function gives at least this."""

    def __init__(self, *args, schedule: Schedule, task, sft_batch_size: int = 16, accuracy_window: int = 4,
                 correct_threshold: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule, self.task = schedule, task
        self.sft_batch_size = sft_batch_size
        self.correct_threshold = correct_threshold
        self._acc = deque(maxlen=accuracy_window)
        self._pass_rate: dict[str, float] = {}
        self._rows_cache: list[dict] = []
        self._decision: Decision | None = None
        self._decision_step = -1
        self._sft_rng = random.Random(derive_seed(self.args.seed, "sft-demos", self.accelerator.process_index))
        try:
            self._sft_rows = task.rows("sft")
        except (KeyError, ValueError):
            self._sft_rows = []  # no SFT split: demonstrations must come from Task.demonstration
        self.decisions: list[tuple[int, str]] = []
        if schedule.needs_demonstrations and task.demonstration(task.rows("train")[0]) is None:
            raise ValueError(f"schedule {schedule.name!r} learns from demonstrations of the RL prompts, but task "
                             f"{task.name!r} gives none (Task.demonstration returns None)")

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def rlscope_state(self) -> dict:
        return {**super().rlscope_state(), "schedule": self.schedule.state_dict(), "decisions": self.decisions,
                "accuracy_window": list(self._acc), "pass_rate": self._pass_rate, "sft_rng": rng_state(self._sft_rng)}

    def load_rlscope_state(self, state: dict) -> None:
        super().load_rlscope_state(state)
        self.schedule.load_state_dict(state["schedule"])
        self.decisions = [tuple(d) for d in state["decisions"]]
        self._acc = deque(state["accuracy_window"], maxlen=self._acc.maxlen)
        self._pass_rate = dict(state["pass_rate"])
        set_rng_state(self._sft_rng, state["sft_rng"])

    # -- signals -------------------------------------------------------------------------------------------------
    def _on_generation_batch(self, inputs, rewards_per_func) -> None:
        g = self.num_generations
        correct = is_correct(rewards_per_func[:, 0], self.correct_threshold).float()
        rates = correct.view(-1, g).mean(dim=1)  # per prompt group, all ranks
        self._acc.append(float(correct.mean()))
        n_local, rank = len(inputs), self.accelerator.process_index
        local_groups: dict[int, dict] = {}
        for i, row in enumerate(inputs):
            grp = (rank * n_local + i) // g  # the row's group in the gathered rewards
            local_groups.setdefault(grp, row)
            self._pass_rate[_prompt_key(row)] = float(rates[grp])
        # every group once, in global order; a group whose rows live on another rank comes as (None, rate), so all
        # ranks see the same counts (a group split across ranks is kept by its lowest rank only)
        groups = []
        for j in range(rates.numel()):
            first_rank = (j * g) // n_local
            groups.append((local_groups.get(j) if first_rank == rank else None, float(rates[j])))
        self.schedule.observe_groups(groups)

    def _annotate_rollouts(self, output: dict, rows: list[dict]) -> None:
        self._rows_cache = list(rows)
        device = output["completion_ids"].device
        output["rlscope_row_id"] = torch.arange(len(rows), device=device)
        output["rlscope_pass_rate"] = torch.tensor([self._pass_rate.get(_prompt_key(r), 1.0) for r in rows],
                                                   device=device)

    def _heldout_accuracy(self) -> float | None:
        """Greedy held-out accuracy, computed on every rank (deterministic, identical parameters under DDP: no
        collective needed; under ZeRO-3 the ranks generate in lock step, :mod:`rlscope.evaluate`)."""
        from rlscope.evaluate import evaluate_task

        acc = evaluate_task(self.accelerator.unwrap_model(self.model), self.text_tokenizer, self.task).accuracy
        self._metrics["train"]["rlscope/schedule/heldout_accuracy"].append(acc)
        return acc

    def _signals(self, step: int) -> Signals:
        return Signals(step=step, rolling_accuracy=sum(self._acc) / len(self._acc) if self._acc else None,
                       heldout_accuracy=self._heldout_accuracy() if self.schedule.wants_heldout(step) else None)

    def _decide(self) -> Decision:
        step = self.state.global_step + 1
        if step != self._decision_step:
            sig = self._signals(step)
            self._decision = self.schedule.decide(sig)
            self._decision_step = step
            self.decisions.append((step, self._decision.kind))
            m = self._metrics["train"]
            m["rlscope/schedule/kind"].append(KIND_CODE[self._decision.kind])
            m["rlscope/schedule/sft_weight"].append(self._decision.sft_weight)
            m["rlscope/schedule/rl_weight"].append(self._decision.rl_weight)
            if sig.rolling_accuracy is not None:
                m["rlscope/schedule/rolling_accuracy"].append(sig.rolling_accuracy)
            for k, v in self.schedule.log_values().items():
                m[f"rlscope/schedule/{k}"].append(v)
        return self._decision

    # -- SFT data --------------------------------------------------------------------------------------------------
    def _demo_rows(self, source: str, n: int) -> tuple[list[str], list[str]]:
        tok = self.text_tokenizer
        rows: list[tuple[dict, str]] = []
        if source == "buffer":
            rows = [(r, self.task.demonstration(r)) for r in self.schedule.take_batch(n)]
        if len(rows) < n:  # the SFT split (or top-up when this rank's share of the buffer is short)
            if not self._sft_rows:
                raise ValueError(f"task {self.task.name!r} has no 'sft' split to draw demonstrations from")
            for r in self._sft_rng.sample(self._sft_rows, n - len(rows)):
                rows.append((r, r.get("completion") or self.task.demonstration(r)))
        prompts = [self.task.render_prompt(r, tok) for r, _ in rows]
        return prompts, [d for _, d in rows]

    def _sft_loss(self, model, prompts: list[str], demos: list[str], weighting: str | None = None) -> torch.Tensor:
        tok = self.text_tokenizer
        batch = demo_batch(tok, prompts, demos, self.accelerator.device)
        logps, mask = demo_token_logps(model, batch)
        return chord_phi_nll(logps, mask) if weighting == "p(1-p)" else sft_nll(logps, mask)

    # -- steps ---------------------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        decision = self._decide()
        if decision.kind != "sft":
            return super().training_step(model, inputs, num_items_in_batch)
        from accelerate.utils import DistributedType

        model.train()
        prompts, demos = self._demo_rows(decision.sft_source, self.sft_batch_size)
        with self.compute_loss_context_manager():
            nll = self._sft_loss(model, prompts, demos)
        loss = nll / self.current_gradient_accumulation_steps
        kwargs = {"scale_wrt_gas": False} if self.accelerator.distributed_type == DistributedType.DEEPSPEED else {}
        self.accelerator.backward(loss, **kwargs)
        self._metrics["train"]["rlscope/schedule/sft_loss"].append(float(nll.detach()))
        return loss.detach()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        decision = self._decision
        if decision is None or decision.kind != "mixed" or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        accum = self.current_gradient_accumulation_steps
        if decision.per_prompt:  # HPT
            rates = inputs["rlscope_pass_rate"]
            ids = inputs["rlscope_row_id"].tolist()
            to_sft = [self.schedule.prompt_weights(float(r))[0] > 0 for r in rates]
            rl_inputs = dict(inputs)
            rl_inputs["advantages"] = inputs["advantages"] * torch.tensor(
                [0.0 if s else 1.0 for s in to_sft], device=inputs["advantages"].device)
            rl = super().compute_loss(model, rl_inputs, return_outputs, num_items_in_batch)
            switched = {}
            for i, s in zip(ids, to_sft):
                row = self._rows_cache[i]
                if s:
                    switched.setdefault(_prompt_key(row), row)
            n_prompts = len({_prompt_key(self._rows_cache[i]) for i in ids})
            if not switched:
                self._metrics["train"]["rlscope/schedule/hpt_sft_share"].append(0.0)
                return rl
            tok = self.text_tokenizer
            rows = list(switched.values())
            nll = self._sft_loss(model, [self.task.render_prompt(r, tok) for r in rows],
                                 [self.task.demonstration(r) for r in rows])
            self._metrics["train"]["rlscope/schedule/hpt_sft_share"].append(len(rows) / max(n_prompts, 1))
            self._metrics["train"]["rlscope/schedule/sft_loss"].append(float(nll.detach()))
            return hpt_loss(rl, nll / accum, len(rows), n_prompts)
        # CHORD: (1 - mu) RL + mu SFT_phi
        rl = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        prompts, demos = self._demo_rows("demos", self.sft_batch_size)
        sft = self._sft_loss(model, prompts, demos, weighting=decision.token_weighting)
        self._metrics["train"]["rlscope/schedule/sft_loss"].append(float(sft.detach()))
        return decision.rl_weight * rl + decision.sft_weight * sft / accum
