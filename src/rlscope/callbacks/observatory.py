"""The :class:`Observatory`: token probes live, every step, exact across ranks, into the trainer logs and W&B.

Flow per optimizer step (``on_step_end``): the :class:`~rlscope.taps.TokenTap` hands over the step's training
micro-batches; they are joined into one :class:`~rlscope.probes.batch.TokenBatch`, behaviour features are computed
where the text is (each rank), the batch is gathered from all ranks (padded, then trimmed: every rank's tokens, no
sampling), and the due probes run on the main process. Their scalars are added to the next ``Trainer.log`` call as
``rlscope/<family>/<stat>`` (the observatory sits first among the callbacks, so W&B -- via ``report_to`` -- and the
run store see them), averaged over the logging window when ``logging_steps`` > 1. The entropy histogram and a rollouts
Table go straight to W&B. All rlscope metrics share one W&B step axis, ``train/rlscope/step`` (the run's step, which
continues across an SFT warm start).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import fields

import torch
from transformers import TrainerCallback

from rlscope.callbacks.wandb_log import LOG_STEP_KEY as STEP_KEY, WandbQueue
from rlscope.probes import get_probe
from rlscope.probes.batch import TOKEN_FIELDS, TokenBatch, concat
from rlscope.probes.behavior import REFLECTION_WORDS, row_features
from rlscope.taps import TapRecord, TokenTap

DEFAULT_PROBES = ("entropy", "cov", "behavior")


class Observatory(TrainerCallback):
    """Token-level dynamics of a GRPO/DAPO trainer (entropy, Cov(logp, A), behaviour).

    Args:
        probes: probe families to run (see :mod:`rlscope.probes`).
        every: cadence in optimizer steps, one int for all probes or ``{family: n}``.
        probe_options: ``{family: {option: value}}`` passed to the probe functions (e.g. ``{"cov": {"top_ratio": 1e-3}}``).
        reflection_words, ngram: behaviour options (reflection vocabulary, n of the repetition n-grams).
        correct_reward: the reward function (name or index; default the first) whose value decides correctness, with
            ``correct_threshold`` (a completion is correct when that reward >= threshold).
        table_every: log a W&B Table of ``table_rows`` rollouts every N steps (0 = never; W&B only).
        step_offset: where this trainer's step 0 lies on the run's step axis (after an SFT phase).
        dump_dir, dump_every: every ``dump_every`` probed steps, save each rank's local TokenBatch to
            ``dump_dir/step<NNNNNN>-rank<R>.pt`` so the probes can be recomputed offline
            (:func:`rlscope.analysis.token_dynamics.recompute`) with the same code.

    Use :func:`attach` (or ``obs.bind(trainer)`` then ``trainer.add_callback(obs)``): the taps need the trainer.
    """

    def __init__(self, probes=DEFAULT_PROBES, every: int | dict | None = None, probe_options: dict | None = None,
                 reflection_words=REFLECTION_WORDS, ngram: int = 4, correct_reward: str | int | None = None,
                 correct_threshold: float = 0.5, table_every: int = 50, table_rows: int = 32, step_offset: int = 0,
                 dump_dir=None, dump_every: int = 0):
        self.probes = {name: get_probe(name) for name in probes}
        every = {} if every is None else every
        if isinstance(every, int):
            every = {name: every for name in self.probes}
        unknown = set(every) - set(self.probes)
        if unknown:
            raise KeyError(f"Observatory: cadence given for probes not enabled: {sorted(unknown)}; enabled: "
                           f"{sorted(self.probes)}")
        self.every = {name: int(every.get(name, p.every)) for name, p in self.probes.items()}
        if any(v < 1 for v in self.every.values()):
            raise ValueError(f"Observatory: cadences must be >= 1, got {self.every}")
        self.options = dict(probe_options or {})
        unknown = set(self.options) - set(self.probes)
        if unknown:
            raise KeyError(f"Observatory: options given for probes not enabled: {sorted(unknown)}")
        self.reflection_words = tuple(reflection_words)
        self.ngram = ngram
        self.correct_reward = correct_reward
        self.correct_threshold = correct_threshold
        self.table_every = table_every
        self.table_rows = table_rows
        self.step_offset = step_offset
        self.dump_dir = dump_dir
        self.dump_every = dump_every
        self.tap: TokenTap | None = None
        self.state: dict[str, dict] = defaultdict(dict)  # per-probe memory (e.g. the first step's p80)
        self.last: dict[str, float] = {}  # the last probed values (main process), for tests and benches
        self._pending: dict[str, list[float]] = defaultdict(list)
        self._hists: dict[str, tuple] = {}
        self._table: list[dict] | None = None
        self._wandb = WandbQueue()

    # -- wiring ------------------------------------------------------------------------------------------------
    def bind(self, trainer) -> "Observatory":
        """Install the taps on ``trainer`` and read what the probes need from it (tokenizer, EOS, reward names)."""
        self.tap = TokenTap().install(trainer)
        self.accelerator = trainer.accelerator
        pc = trainer.processing_class
        self.tokenizer = pc if hasattr(pc, "batch_decode") else pc.tokenizer
        self.eos_token_id = getattr(trainer, "eos_token_id", None)
        if self.eos_token_id is None:
            self.eos_token_id = self.tokenizer.eos_token_id
        names = list(getattr(trainer, "reward_func_names", []))
        if self.correct_reward is None:
            self._correct_idx = 0
        elif isinstance(self.correct_reward, int):
            if not 0 <= self.correct_reward < max(len(names), 1):
                raise ValueError(f"Observatory: correct_reward index {self.correct_reward} out of range for reward "
                                 f"functions {names}")
            self._correct_idx = self.correct_reward
        else:
            if self.correct_reward not in names:
                raise ValueError(f"Observatory: correct_reward {self.correct_reward!r} is not a reward function of "
                                 f"this trainer: {names}")
            self._correct_idx = names.index(self.correct_reward)
        report = trainer.args.report_to if isinstance(trainer.args.report_to, list) else [trainer.args.report_to]
        self.report_wandb = "wandb" in report or "all" in report
        return self

    # -- per step ----------------------------------------------------------------------------------------------
    def _local_batch(self, records: list[TapRecord], need_text: bool) -> TokenBatch:
        parts = []
        for r in records:
            b = TokenBatch(logps=r.logps, entropies=r.entropies if r.entropies is not None else torch.zeros_like(r.logps),
                           mask=r.mask, completion_ids=r.completion_ids, advantages=r.advantages.to(r.logps.dtype))
            b.has_eos = ((r.completion_ids == self.eos_token_id) & r.mask).any(dim=1)
            if r.rewards_per_func is not None:
                rew = r.rewards_per_func[:, self._correct_idx].to(torch.float64)
                b.rewards = rew
                b.correct = torch.nan_to_num(rew, nan=-math.inf) >= self.correct_threshold
            if need_text:
                texts = self.tokenizer.batch_decode([ids[m].tolist() for ids, m in zip(r.completion_ids, r.mask)],
                                                    skip_special_tokens=True)
                feats = row_features(texts, r.completion_ids, r.mask, self.reflection_words, self.ngram)
                b.reflections = feats["reflections"].to(r.logps.device)
                b.repetition = feats["repetition"].to(r.logps.device)
            parts.append(b)
        return concat(parts)

    def _gather(self, batch: TokenBatch) -> TokenBatch:
        acc = self.accelerator
        if acc.num_processes == 1:
            return batch
        from accelerate.utils import gather, pad_across_processes

        n_rows = gather(torch.tensor([batch.n_rows], device=acc.device)).tolist()
        out = {}
        for f in fields(TokenBatch):
            v = getattr(batch, f.name)
            if v is None or f.name == "length":
                continue
            is_bool = v.dtype == torch.bool
            t = v.to(torch.uint8) if is_bool else v
            if f.name in TOKEN_FIELDS:
                t = pad_across_processes(t.contiguous(), dim=1)
            t = pad_across_processes(t.contiguous(), dim=0)
            g = gather(t)
            rows = g.shape[0] // acc.num_processes
            g = torch.cat([g[i * rows:i * rows + n] for i, n in enumerate(n_rows)], dim=0)
            out[f.name] = g.bool() if is_bool else g
        return TokenBatch(**out)

    def on_step_end(self, args, state, control, **kwargs):
        if self.tap is None:
            raise RuntimeError("Observatory is not bound to a trainer: use rlscope.attach(trainer) "
                               "(or obs.bind(trainer) before trainer.add_callback(obs))")
        t0 = time.perf_counter()
        records = self.tap.drain()
        gs = state.global_step
        due = [n for n in self.probes if gs % self.every[n] == 0]
        table_due = self.report_wandb and self.table_every and gs % self.table_every == 0
        if not records or not (due or table_due):  # the same decision on every rank: collectives stay matched
            return
        local = self._local_batch(records, need_text="behavior" in due)
        if table_due:
            self._collect_table(records, gs)
        if not due:
            return
        step = self.step_offset + gs
        if self.dump_dir is not None and self.dump_every and gs % self.dump_every == 0:
            from rlscope.probes.batch import save_batch

            save_batch(local, self.dump_dir, step, self.accelerator.process_index)
        batch = self._gather(local)
        if not state.is_world_process_zero:
            return
        self._pending[STEP_KEY].append(float(step))
        for name in due:
            res = self.probes[name].fn(batch, self.state[name], **self.options.get(name, {}))
            for key, value in res.items():
                full = f"rlscope/{name}/{key}"
                if isinstance(value, tuple):
                    self._hists[full] = value
                else:
                    self._pending[full].append(float(value))
                    self.last[full] = float(value)
        self._pending["rlscope/observatory/seconds"].append(time.perf_counter() - t0)

    def _collect_table(self, records: list[TapRecord], gs: int) -> None:
        from accelerate.utils import gather_object

        rows = []
        for r in records:
            comps = self.tokenizer.batch_decode([ids[m].tolist() for ids, m in zip(r.completion_ids, r.mask)],
                                                skip_special_tokens=True)
            prompts = (self.tokenizer.batch_decode([ids[m.bool()].tolist() for ids, m in zip(r.prompt_ids, r.prompt_mask)],
                                                   skip_special_tokens=True)
                       if r.prompt_ids is not None else [""] * len(comps))
            n_tok = r.mask.sum(dim=1).clamp(min=1)
            ent = ((r.entropies * r.mask).sum(dim=1) / n_tok).tolist() if r.entropies is not None else [math.nan] * len(comps)
            lp = ((r.logps * r.mask).sum(dim=1) / n_tok).tolist()
            rew = (r.rewards_per_func[:, self._correct_idx].tolist() if r.rewards_per_func is not None
                   else [math.nan] * len(comps))
            for i, c in enumerate(comps):
                rows.append({"prompt": prompts[i], "completion": c, "reward": rew[i],
                             "advantage": float(r.advantages[i]), "length": int(r.mask[i].sum()),
                             "entropy_mean": ent[i], "logp_mean": lp[i]})
        rows = gather_object(rows)
        if self.accelerator.is_main_process:
            self._table = rows[: self.table_rows]

    # -- out -----------------------------------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or logs is None or "train_runtime" in logs:
            return
        for key, values in self._pending.items():
            finite = [v for v in values if not math.isnan(v)]
            logs[key] = sum(finite) / len(finite) if finite else math.nan
        step = self._pending.get(STEP_KEY)
        self._pending = defaultdict(list)
        if self.report_wandb and (self._hists or self._table) and step:
            self._log_wandb(step[-1])

    def _log_wandb(self, step: float) -> None:
        hists, table = self._hists, self._table

        def payload(wandb):
            out = {f"train/{k}": wandb.Histogram(np_histogram=v) for k, v in hists.items()}
            if table:
                cols = list(table[0])
                out["train/rlscope/rollouts"] = wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in table])
            return out

        self._wandb.put(step, payload)
        self._hists, self._table = {}, None

