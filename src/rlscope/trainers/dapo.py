"""rlscope's GRPO/DAPO trainer: TRL's ``GRPOTrainer`` plus DAPO's dynamic sampling, overlong shaping and rollout capture.

DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale") has four parts:

1. clip-higher -- TRL's ``epsilon_high`` (decoupled upper clip, DAPO uses 0.28 with ``epsilon`` 0.2);
2. token-level policy-gradient loss -- TRL's ``loss_type="dapo"``;
3. overlong reward shaping -- TRL's ``trl.rewards.get_soft_overlong_punishment`` (DAPO Eq. 13), added here as an extra
   reward function when ``overlong_buffer_len > 0``;
4. dynamic sampling -- not in TRL; implemented here: prompt groups whose rewards are all equal carry no gradient
   (zero advantage) and are dropped, and new groups are generated until the batch is full again, at most
   ``max_generation_batches`` generation batches per step.

The trainer is not a fork: it overrides ``_generate_and_score_completions`` (to regenerate and re-assemble the batch)
and ``_calculate_rewards`` (to see the gathered rewards the group decision needs); everything else is TRL's.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from rlscope.common import derive_seed, pad_and_concat, rng_state, set_rng_state, text_tokenizer
from rlscope.trainers.reward_guard import GuardedReward

# Tensors of TRL's rollout dict that dynamic sampling knows how to re-assemble, with their padding side and value
# (``None`` = the tokenizer's pad id). Anything else in the dict (multimodal inputs) is refused with a clear error.
_SEQ_KEYS = {
    "prompt_ids": ("left", None),
    "prompt_mask": ("left", 0),
    "completion_ids": ("right", None),
    "completion_mask": ("right", 0),
    "old_per_token_logps": ("right", 0.0),
    "ref_per_token_logps": ("right", 0.0),
    "sampling_per_token_logps": ("right", 0.0),
    "importance_sampling_ratio": ("right", 0.0),
    "tool_mask": ("right", 1),
}
_ROW_KEYS = {"advantages", "rlscope_rewards"}  # rlscope_rewards: (B, n_reward_funcs), read by the taps
COV_INTERVENTIONS = ("none", "clip_cov", "kl_cov")


@dataclass
class DAPOConfig(GRPOConfig):
    """``GRPOConfig`` plus DAPO's dynamic sampling and overlong-shaping switches."""

    dynamic_sampling: bool = field(default=False, metadata={
        "help": "DAPO dynamic sampling: drop prompt groups whose rewards are all equal and regenerate until the "
                "batch is full."})
    max_generation_batches: int = field(default=8, metadata={
        "help": "Dynamic sampling guard: at most this many generation batches per optimizer step (DAPO's "
                "max_num_gen_batches); what happens then is `dynamic_sampling_exhausted`."})
    dynamic_sampling_exhausted: str = field(default="fill", metadata={
        "help": "When max_generation_batches are used up before the batch is full of groups with unequal rewards: "
                "'fill' (the default: top the batch up with dropped groups -- zero advantage, so no policy gradient "
                "-- and flag the step: rlscope/dynamic_sampling/filled_share > 0), or 'raise' (stop with an error "
                "naming the cause, as verl does)."})
    reward_errors: str = field(default="raise", metadata={
        "help": "A reward function that raises: 'raise' (the default: stop, naming the function) or 'skip' (retry "
                "the batch one sample at a time; a sample it still raises on is unscorable -- reward NaN, advantage "
                "0, left out of its group's baseline as TRL does for unscorable rows --, counted in "
                "rlscope/reward_errors/<function>, and named with the error in the log)."})
    overlong_buffer_len: int = field(default=0, metadata={
        "help": "DAPO overlong reward shaping: soft penalty over the last N tokens before max_completion_length "
                "(0 = off)."})
    overlong_penalty_factor: float = field(default=1.0, metadata={
        "help": "Weight of the overlong penalty reward."})
    cov_intervention: str = field(default="none", metadata={
        "help": "Entropy-preserving loss of Cui et al. 2025 acting on the tokens with the largest Cov(logp, A): "
                "'none', 'clip_cov' (detach the gradient of a random share of tokens in the covariance band) or "
                "'kl_cov' (|logp - logp_old| penalty on the top-covariance tokens)."})
    clip_cov_ratio: float = field(default=2e-4, metadata={"help": "Clip-Cov: share of tokens to detach (verl default)."})
    clip_cov_lb: float = field(default=1.0, metadata={"help": "Clip-Cov: lower bound of the covariance band."})
    clip_cov_ub: float = field(default=5.0, metadata={"help": "Clip-Cov: upper bound of the covariance band."})
    kl_cov_ratio: float = field(default=2e-3, metadata={"help": "KL-Cov: share of top-covariance tokens penalised."})
    kl_cov_coef: float = field(default=1.0, metadata={"help": "KL-Cov: coefficient k of |logp - logp_old|."})

    def __post_init__(self):
        super().__post_init__()
        if self.cov_intervention not in COV_INTERVENTIONS:
            raise ValueError(f"cov_intervention must be one of {COV_INTERVENTIONS}, got {self.cov_intervention!r}")
        if self.cov_intervention != "none" and self.loss_type not in ("dapo", "bnpo", "grpo", "dr_grpo"):
            raise ValueError(f"cov_intervention {self.cov_intervention!r} works with the clipped-ratio losses "
                             f"(dapo, bnpo, grpo, dr_grpo), not loss_type {self.loss_type!r}")
        if self.dynamic_sampling_exhausted not in ("fill", "raise"):
            raise ValueError(f"dynamic_sampling_exhausted must be 'fill' or 'raise', got "
                             f"{self.dynamic_sampling_exhausted!r}")
        if self.reward_errors not in ("raise", "skip"):
            raise ValueError(f"reward_errors must be 'raise' or 'skip', got {self.reward_errors!r}")
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not self.clip_cov_lb < self.clip_cov_ub:
            raise ValueError(f"clip_cov_lb ({self.clip_cov_lb}) must be below clip_cov_ub ({self.clip_cov_ub})")


def group_keep_mask(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per-sample mask: True where the sample's group (``num_generations`` consecutive samples) has unequal rewards.

    NaN rewards (unscorable completions) are ignored inside a group; a group with fewer than two scored samples or
    with all scored rewards equal carries no advantage signal and is dropped.
    """
    groups = rewards.view(-1, num_generations)
    finite = ~torch.isnan(groups)
    big = torch.finfo(groups.dtype).max
    hi = torch.where(finite, groups, torch.full_like(groups, -big)).max(dim=1).values
    lo = torch.where(finite, groups, torch.full_like(groups, big)).min(dim=1).values
    keep = (finite.sum(dim=1) >= 2) & (hi > lo)
    return keep.repeat_interleave(num_generations)


class DAPOTrainer(GRPOTrainer):
    """GRPO/DAPO on TRL's ``GRPOTrainer``; see the module docstring.

    ``run_store`` (an :class:`rlscope.store.RunWriter`) receives the rollouts of each optimizer step: pass it on every
    rank (the rollouts are gathered from all ranks, a collective), only the main process writes.
    ``rollout_log_every``: write rollouts every N optimizer steps (0 = never). ``step_offset``: where this phase
    starts on the run's step axis (after an SFT warm start).
    """

    def __init__(self, model, reward_funcs, args: DAPOConfig | None = None, *pargs, run_store=None,
                 rollout_log_every: int = 1, step_offset: int = 0, **kwargs):
        args = args if args is not None else DAPOConfig(output_dir="dapo-out")
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        policy = getattr(args, "reward_errors", "raise")
        funcs = [GuardedReward(f, policy) if callable(f) and not isinstance(f, (str, torch.nn.Module)) else f
                 for f in funcs]
        if getattr(args, "overlong_buffer_len", 0) > 0:
            from trl.rewards import get_soft_overlong_punishment

            if args.overlong_buffer_len >= args.max_completion_length:
                raise ValueError(f"overlong_buffer_len ({args.overlong_buffer_len}) must be smaller than "
                                 f"max_completion_length ({args.max_completion_length})")
            funcs.append(get_soft_overlong_punishment(args.max_completion_length, args.overlong_buffer_len))
            if args.reward_weights is not None:
                args.reward_weights = list(args.reward_weights) + [args.overlong_penalty_factor]
            elif args.overlong_penalty_factor != 1.0:
                args.reward_weights = [1.0] * (len(funcs) - 1) + [args.overlong_penalty_factor]
        super().__init__(model, funcs, args, *pargs, **kwargs)
        self.run_store = run_store
        self.step_offset = step_offset
        self.rollout_log_every = rollout_log_every
        self._last_rewards_per_func: torch.Tensor | None = None
        rank = self.accelerator.process_index
        self._refill_rng = random.Random(derive_seed(args.seed, "dynamic-sampling-refill", rank))
        self._cov_gen = torch.Generator().manual_seed(derive_seed(args.seed, "clip-cov", rank))
        self.dynamic_sampling_stats: list[dict[str, float]] = []
        if getattr(args, "dynamic_sampling", False):
            local = args.per_device_train_batch_size * args.steps_per_generation
            if local % self.num_generations:
                raise ValueError(
                    f"dynamic_sampling needs whole prompt groups per process: per_device_train_batch_size * "
                    f"steps_per_generation ({local}) must be a multiple of num_generations ({self.num_generations})")

    # -- checkpoints: what TRL and transformers do not save ------------------------------------------------------
    def rlscope_state(self) -> dict:
        """This rank's own state, saved in every checkpoint (JSON): the dynamic-sampling refill RNG, the Clip-Cov
        generator and TRL's micro-step counter; subclasses add theirs (the interleaving trainer: its schedule and
        decisions). TRL's buffered rollouts go beside it (:meth:`_save_rng_state`)."""
        return {"refill_rng": rng_state(self._refill_rng), "cov_gen": self._cov_gen.get_state().tolist(),
                "trl_step": self._step}

    def load_rlscope_state(self, state: dict) -> None:
        set_rng_state(self._refill_rng, state["refill_rng"])
        self._cov_gen.set_state(torch.tensor(state["cov_gen"], dtype=torch.uint8))
        self._step = int(state["trl_step"])

    def _state_file(self, directory, suffix: str = "json") -> Path:
        return Path(directory) / f"rlscope_state-rank{self.accelerator.process_index}.{suffix}"

    def _save_rng_state(self, output_dir: str) -> None:
        """transformers saves the RNGs (per rank); rlscope adds :meth:`rlscope_state` and TRL's buffered rollouts:
        with ``steps_per_generation`` > 1 a checkpoint can fall inside a generation cycle, and without the buffer a
        resumed run would generate anew where the uninterrupted one trained on the buffered (off-policy) half."""
        super()._save_rng_state(output_dir)
        from safetensors.torch import save_file

        from rlscope.store import atomic_write

        state = self.rlscope_state()
        tensors, layout = {}, []
        for i, batch in enumerate(getattr(self, "_buffered_inputs", None) or []):
            entry = {}
            for key, value in batch.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{i}\t{key}"] = value.detach().to("cpu").clone()  # shared storage: one copy each
                    entry[key] = "tensor"
                elif value is None or isinstance(value, (bool, int, float, str)):
                    entry[key] = {"value": value}
                else:  # e.g. images of a multimodal batch: not saved; a resume generates anew
                    layout, tensors = None, {}
                    break
            if layout is None:
                break
            layout.append(entry)
        state["buffer"] = layout
        if layout:
            tmp = self._state_file(output_dir, "safetensors.tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, self._state_file(output_dir, "safetensors"))
        atomic_write(self._state_file(output_dir), json.dumps(state))

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = self._state_file(checkpoint)
        if path.is_file():
            state = json.loads(path.read_text())
            self.load_rlscope_state(state)
            if state.get("buffer"):
                from safetensors.torch import load_file

                tensors = load_file(str(self._state_file(checkpoint, "safetensors")))
                device = self.accelerator.device
                self._buffered_inputs = [
                    {k: tensors[f"{i}\t{k}"].to(device) if v == "tensor" else v["value"] for k, v in entry.items()}
                    for i, entry in enumerate(state["buffer"])]
        else:
            import warnings

            warnings.warn(f"{path.name} is not in checkpoint {checkpoint} (written by an older rlscope, or by "
                          f"another number of processes): the dynamic-sampling refill and the schedule start afresh, "
                          f"so the resumed run differs from an uninterrupted one there", stacklevel=2)

    @property
    def text_tokenizer(self):
        """The tokenizer itself (``processing_class`` may be a multimodal processor wrapping one)."""
        return text_tokenizer(self.processing_class)

    # -- rewards ---------------------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        for f in self.reward_funcs:
            if isinstance(f, GuardedReward):
                f.skipped.clear()
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        guarded = [(i, f) for i, f in enumerate(self.reward_funcs) if isinstance(f, GuardedReward)]
        if guarded and getattr(self.args, "reward_errors", "raise") == "skip":
            # which samples (of all ranks) a function raised on: the whole row becomes unscorable (NaN in every
            # function), so TRL leaves it out of the group's baseline and gives it advantage 0 -- a partial row would
            # be summed as if the failed function had scored 0
            local = torch.zeros(len(prompts), len(guarded), device=rewards_per_func.device)
            for j, (_, f) in enumerate(guarded):
                local[f.skipped, j] = 1.0
            failed = self.accelerator.gather(local)
            rewards_per_func[failed.sum(dim=1) > 0] = torch.nan
            mode = "train" if self.model.training else "eval"
            for j, (_, f) in enumerate(guarded):
                self._metrics[mode][f"rlscope/reward_errors/{f.__name__}"].append(float(failed[:, j].sum()))
        self._last_rewards_per_func = rewards_per_func  # gathered over all processes: same on every rank
        return rewards_per_func

    def _total_rewards(self) -> torch.Tensor:
        rpf = self._last_rewards_per_func
        weights = self.reward_weights.to(rpf.device).unsqueeze(0)
        total = (rpf * weights).nansum(dim=1)
        total[torch.isnan(rpf).all(dim=1)] = torch.nan
        return total

    # -- loss: Clip-Cov / KL-Cov -----------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        kind = getattr(self.args, "cov_intervention", "none")
        if kind == "none":
            return super()._compute_loss(model, inputs)
        return self._cov_loss(model, inputs, kind)

    def _global_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(values * mask).sum(), mask.sum()]).float(), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _cov_loss(self, model, inputs, kind: str):
        """Clip-Cov / KL-Cov (:mod:`rlscope.trainers.cov_losses`) on this micro-batch's tokens (per rank, as in
        verl), aggregated like TRL's loss of ``loss_type``."""
        from rlscope.trainers.cov_losses import clip_cov_loss, kl_cov_loss

        extra = [k for k in ("pixel_values", "image_grid_thw", "token_type_ids", "mm_token_type_ids") if k in inputs]
        if extra:
            raise NotImplementedError(f"cov_intervention supports text-only models; the batch carries {extra}")
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True)
        adv = inputs["advantages"]
        adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        args = self.args
        if kind == "clip_cov":
            per_token_loss, selected = clip_cov_loss(logps, old, adv, mask, self.epsilon_low, self.epsilon_high,
                                                     args.clip_cov_ratio, args.clip_cov_lb, args.clip_cov_ub,
                                                     self._cov_gen)
        else:
            per_token_loss, selected = kl_cov_loss(logps, old, adv, mask, args.kl_cov_ratio, args.kl_cov_coef)
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_loss = per_token_loss + self.beta * (torch.exp(ref - logps) - (ref - logps) - 1)

        train = self.model.training
        mode = "train" if train else "eval"
        accum = self.current_gradient_accumulation_steps if train else 1.0
        if self.loss_type == "grpo":
            loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accum
        elif self.loss_type == "bnpo":
            loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / accum
        elif self.loss_type == "dr_grpo":
            loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * self.max_completion_length) / accum
        else:  # dapo: token-level over the generation batch, as TRL normalises it
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if train:
                normalizer = normalizer * self.current_gradient_accumulation_steps / args.steps_per_generation
            loss = (per_token_loss * mask).sum() / normalizer

        fmask = mask.float()
        self._metrics[mode]["entropy"].append(self._global_mean(entropies.detach(), fmask))
        self._metrics[mode][f"rlscope/{kind}/selected_share"].append(self._global_mean(selected.float(), fmask))
        if kind == "clip_cov":
            ratio = torch.exp(logps.detach() - old)
            low = ((ratio < 1 - self.epsilon_low) & (adv < 0)).float()
            high = ((ratio > 1 + self.epsilon_high) & (adv > 0)).float()
            self._metrics[mode]["clip_ratio/low_mean"].append(self._global_mean(low, fmask))
            self._metrics[mode]["clip_ratio/high_mean"].append(self._global_mean(high, fmask))
        return loss

    # -- generation ------------------------------------------------------------------------------------------------
    def _refill_inputs(self, n_rows: int) -> list[dict]:
        """``n_rows`` fresh training rows (whole groups: each prompt repeated ``num_generations`` times)."""
        ds = self.train_dataset
        rows = []
        for _ in range(n_rows // self.num_generations):
            row = ds[self._refill_rng.randrange(len(ds))]
            rows.extend(dict(row) for _ in range(self.num_generations))
        return rows

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        if mode != "train":
            return super()._generate_and_score_completions(inputs)
        dynamic = getattr(self.args, "dynamic_sampling", False)
        n_local, rank, world = len(inputs), self.accelerator.process_index, self.accelerator.num_processes
        kept_parts: list[tuple[dict, torch.Tensor, list, list]] = []
        counts = [0] * world  # kept rows per rank: computable on every rank from the gathered rewards
        n_batches, n_groups_seen, n_groups_kept, filled = 0, 0, 0, 0
        dropped_parts: list[tuple[dict, torch.Tensor, list, list]] = []  # this rank's dropped rows, for 'fill'
        batch_inputs = inputs
        while True:
            n_batches += 1
            out = super()._generate_and_score_completions(batch_inputs)
            rewards = self._total_rewards()
            self._on_generation_batch(batch_inputs, self._last_rewards_per_func)
            if dynamic:
                keep = group_keep_mask(rewards, self.num_generations)
            else:
                keep = torch.ones_like(rewards, dtype=torch.bool)
            n_groups_seen += rewards.numel() // self.num_generations
            n_groups_kept += int(keep.view(-1, self.num_generations)[:, 0].sum())
            local_keep = keep[rank * n_local:(rank + 1) * n_local]
            for r in range(world):
                counts[r] += int(keep[r * n_local:(r + 1) * n_local].sum())
            local_rewards = rewards[rank * n_local:(rank + 1) * n_local]
            out["rlscope_rewards"] = self._last_rewards_per_func[rank * n_local:(rank + 1) * n_local]
            idx = local_keep.nonzero(as_tuple=True)[0]
            kept_parts.append((out, idx, [batch_inputs[i] for i in idx.tolist()], local_rewards[idx].tolist()))
            gone = (~local_keep).nonzero(as_tuple=True)[0]
            dropped_parts.append((out, gone, [batch_inputs[i] for i in gone.tolist()], local_rewards[gone].tolist()))
            if min(counts) >= n_local:
                break
            if n_batches >= self.args.max_generation_batches and \
                    getattr(self.args, "dynamic_sampling_exhausted", "fill") == "fill":
                # top up with dropped groups (zero advantage: no policy gradient), newest first; flagged per step
                need = n_local - counts[rank]
                for part in reversed(dropped_parts):
                    if need <= 0:
                        break
                    take = part[1][:need]
                    kept_parts.append((part[0], take, part[2][:len(take)], part[3][:len(take)]))
                    need -= len(take)
                filled = sum(max(n_local - c, 0) for c in counts)
                break
            if n_batches >= self.args.max_generation_batches:
                raise RuntimeError(
                    f"dynamic sampling: after {n_batches} generation batches only {min(counts)} of {n_local} samples per "
                    f"process came from prompt groups with unequal rewards ({n_groups_kept}/{n_groups_seen} groups "
                    f"kept). The rewards are (almost) all equal within groups: the task is too easy or too hard for "
                    f"the policy. Raise `max_generation_batches` (now {self.args.max_generation_batches}), raise "
                    f"`num_generations`, or set `dynamic_sampling: false` (or `dynamic_sampling_exhausted: fill`).")
            batch_inputs = self._refill_inputs(n_local)
        stats = {"generation_batches": float(n_batches),
                 "kept_group_share": n_groups_kept / max(n_groups_seen, 1),
                 # share of the step's rows that are dropped (zero-advantage) groups topping the batch up
                 "filled_share": filled / (n_local * world)}
        self.dynamic_sampling_stats.append(stats)
        if dynamic:
            for k, v in stats.items():
                self._metrics[mode][f"rlscope/dynamic_sampling/{k}"].append(v)
        output = self._assemble(kept_parts, n_local) if dynamic else kept_parts[0][0]
        rows = [row for p in kept_parts for row in p[2]][:n_local]
        self._capture_rollouts(output, rows, [r for p in kept_parts for r in p[3]][:n_local])
        self._annotate_rollouts(output, rows)
        return output

    # -- hooks for subclasses (the interleaving trainer) -----------------------------------------------------------
    def _on_generation_batch(self, inputs: list[dict], rewards_per_func: torch.Tensor) -> None:
        """Called after every generation batch with this rank's rows and the rewards of all ranks (before dynamic
        sampling drops any group)."""

    def _annotate_rollouts(self, output: dict, rows: list[dict]) -> None:
        """Called with the final rollout dict and its rows (aligned) before TRL shuffles and splits it."""

    def _assemble(self, parts, n_local: int) -> dict[str, Any]:
        """Concatenate the kept rows of several rollout dicts into one batch of exactly ``n_local`` rows."""
        pad_id = self.text_tokenizer.pad_token_id
        keys = set(parts[0][0])
        unknown = keys - set(_SEQ_KEYS) - _ROW_KEYS - {"num_items_in_batch"}
        if unknown:
            raise NotImplementedError(f"dynamic sampling cannot re-assemble rollout fields {sorted(unknown)} "
                                      f"(multimodal inputs); set `dynamic_sampling: false`")
        out: dict[str, Any] = {}
        for key in keys - {"num_items_in_batch"}:
            pieces = [p[0][key][p[1]] for p in parts]
            if key in _ROW_KEYS:
                out[key] = torch.cat(pieces, dim=0)[:n_local]
            else:
                side, value = _SEQ_KEYS[key]
                out[key] = pad_and_concat(pieces, side, pad_id if value is None else value)[:n_local]
        loss_mask = out["completion_mask"] if "tool_mask" not in out else out["completion_mask"] * out["tool_mask"]
        out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        return out

    def _capture_rollouts(self, output: dict, rows: list[dict], rewards: list[float]) -> None:
        """Hand this step's rollouts (text, reward, advantage, length) to the run store (gathered; rank 0 writes)."""
        step = self.step_offset + self.state.global_step + 1
        if self.run_store is None or not self.rollout_log_every or (step - 1) % self.rollout_log_every:
            return
        from accelerate.utils import gather_object

        tok = self.text_tokenizer
        mask = output["completion_mask"].bool()
        comp = [ids[m].tolist() for ids, m in zip(output["completion_ids"], mask)]
        texts = tok.batch_decode(comp, skip_special_tokens=True)
        local = [{"step": step, "rank": self.accelerator.process_index,
                  "prompt": r["prompt"] if isinstance(r["prompt"], str) else str(r["prompt"]),
                  "completion": t, "reward": float(rw), "advantage": float(a), "length": len(c)}
                 for r, t, rw, a, c in zip(rows, texts, rewards, output["advantages"].tolist(), comp)]
        gathered = gather_object(local)
        if self.accelerator.is_main_process:
            self.run_store.log_rollouts(gathered)
