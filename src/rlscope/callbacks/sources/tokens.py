"""The ``tokens`` source: the per-token tensors of the policy's training forward in a TRL ``GRPOTrainer``, as a
:class:`~rlscope.probes.batch.TokenBatch` of the step.

Per due step: the :class:`~rlscope.taps.TokenTap` is armed before the step and hands over the step's training
micro-batches; they are joined into this rank's batch; behaviour features are computed from the decoded text where
the text is (each rank) -- only when a due probe reads a text feature. Then, with ``reduce="exact"`` (the default),
the probes declared ``per_rank`` (entropy, cov, behavior) run on every rank on its own batch and combine the ranks'
shares exactly through a :class:`~rlscope.probes.reduce.TorchComm`: sums, counts and selection rounds, a few KB per
step whatever the number of tokens. Other token probes (and all of them with ``reduce="gather"``) get the fields they
read gathered from all ranks onto the main process (padded, then trimmed: every rank's tokens, no sampling) -- the
old path, whose traffic grows with ranks x tokens (``rlscope bench gather`` compares the two). Every ``table_every``
steps a rollouts Table goes to W&B; every ``dump_every`` probed steps each rank's local batch is saved for offline
recomputation (:func:`rlscope.analysis.token_dynamics.recompute`).
"""

from __future__ import annotations

import math

import torch

from rlscope.callbacks.sources import SOURCES, RankViews, Source
from rlscope.common import any_rank, is_correct, reports_to_wandb, row_means, text_tokenizer
from rlscope.probes import Table
from rlscope.probes.batch import DATA_FIELDS, TEXT_FIELDS, TOKEN_FIELDS, TokenBatch, concat, save_batch
from rlscope.probes.reduce import LocalComm, TorchComm
from rlscope.probes.behavior import REFLECTION_WORDS, row_features
from rlscope.taps import TapRecord, TokenTap


def gather_batch(batch: TokenBatch, accelerator, names=None) -> TokenBatch:
    """Every rank's rows of ``batch`` on every rank (a collective), for the fields in ``names`` (default: all).

    Token fields are padded to the widest rank, rows to the largest; the padding is trimmed again, so the result is
    the concatenation of the ranks' batches in rank order.
    """
    if accelerator.num_processes == 1:
        return batch
    from accelerate.utils import gather, pad_across_processes

    n_rows = gather(torch.tensor([batch.n_rows], device=accelerator.device)).tolist()
    out = {}
    for name in DATA_FIELDS:
        v = getattr(batch, name)
        if v is None or name == "length" or (names is not None and name not in names):
            continue
        is_bool = v.dtype == torch.bool
        t = v.to(torch.uint8) if is_bool else v
        if name in TOKEN_FIELDS:
            t = pad_across_processes(t.contiguous(), dim=1)
        g = gather(pad_across_processes(t.contiguous(), dim=0))
        rows = g.shape[0] // accelerator.num_processes
        g = torch.cat([g[i * rows:i * rows + n] for i, n in enumerate(n_rows)], dim=0)
        out[name] = g.bool() if is_bool else g
    return TokenBatch(**out)


@SOURCES.register("tokens")
class TokenSource(Source):
    """Options: ``reflection_words``, ``ngram`` (behaviour features); ``correct_reward`` (the reward function, name
    or index, whose value decides correctness; default the first) and ``correct_threshold``; ``table_every`` /
    ``table_rows`` (W&B rollouts Table, 0 = never); ``dump_dir`` / ``dump_every`` (per-rank tensors of every N-th
    probed step, 0 = never; the directory defaults to the run's ``tokens/``); ``reduce``: ``exact`` (per-rank probes
    combine the ranks' shares by exact reductions) or ``gather`` (every token gathered to the main process first)."""

    name = "tokens"

    def __init__(self, reflection_words=REFLECTION_WORDS, ngram: int = 4, correct_reward: str | int | None = None,
                 correct_threshold: float = 0.5, table_every: int = 50, table_rows: int = 32, dump_dir=None,
                 dump_every: int = 0, reduce: str = "exact"):
        if reduce not in ("exact", "gather"):
            from rlscope.errors import UsageError

            raise UsageError(f"tokens source: reduce must be 'exact' or 'gather', got {reduce!r}")
        self.reduce = reduce
        self.comm = None
        self.reflection_words, self.ngram = tuple(reflection_words), ngram
        self.correct_reward, self.correct_threshold = correct_reward, correct_threshold
        self.table_every, self.table_rows = table_every, table_rows
        self.dump_dir, self.dump_every = dump_dir, dump_every
        self.tap: TokenTap | None = None

    def bind(self, trainer, engine) -> None:
        from trl import GRPOTrainer

        super().bind(trainer, engine)
        if not isinstance(trainer, GRPOTrainer):
            raise TypeError(f"the token probes tap TRL's GRPOTrainer; {type(trainer).__name__} is not one (attach "
                            f"with the token probes off, e.g. rlscope.attach(trainer, entropy=False, cov=False, "
                            f"behavior=False, passk=...), or use probes that read other sources)")
        if self.dump_every and self.dump_dir is None:
            if engine.run_dir is None:
                raise ValueError("tokens source: dump_every needs a dump_dir (or a run_dir to dump under tokens/)")
            self.dump_dir = engine.run_dir / "tokens"
        self.tap = TokenTap(armed=False).install(trainer)
        self.accelerator = trainer.accelerator
        self.tokenizer = text_tokenizer(trainer.processing_class)
        self.eos_token_id = getattr(trainer, "eos_token_id", None)
        if self.eos_token_id is None:
            self.eos_token_id = self.tokenizer.eos_token_id
        self.report_wandb = reports_to_wandb(trainer.args.report_to)
        names = list(getattr(trainer, "reward_func_names", []))
        if self.correct_reward is None:
            self._correct_idx = 0
        elif isinstance(self.correct_reward, int):
            if not 0 <= self.correct_reward < max(len(names), 1):
                raise ValueError(f"tokens source: correct_reward index {self.correct_reward} is out of range for the "
                                 f"reward functions {names}")
            self._correct_idx = self.correct_reward
        else:
            from rlscope.registry import check_names

            check_names("reward function", [self.correct_reward], names, where="(correct_reward)")
            self._correct_idx = names.index(self.correct_reward)

    # -- the engine's calls --------------------------------------------------------------------------------------
    def wants(self, trainer_step: int) -> bool:
        return bool(self.report_wandb and self.table_every and trainer_step % self.table_every == 0)

    def prepare(self, ctx, probes) -> None:
        self.tap.armed = True

    def collect(self, ctx, probes):
        records = self.tap.drain()
        self.tap.armed = False
        if not records:  # the same on every rank (e.g. an SFT step of an interleaving schedule)
            return None
        need = {"mask"}.union(*(p.inputs for p in probes)) if probes else set()
        table, local, error = None, None, None
        try:  # everything local first: decoding, features, the dump -- no collective
            if self.wants(ctx.trainer_step):
                table = self._table_rows(records)
            if probes:
                local = self._local_batch(records, need_text=bool(need & set(TEXT_FIELDS)))
                if self.dump_dir is not None and self.dump_every and ctx.trainer_step % self.dump_every == 0:
                    save_batch(local, self.dump_dir, ctx.step, self.accelerator.process_index)
        except Exception as exc:  # noqa: BLE001 -- re-raised below, once every rank knows
            error = exc
        if any_rank(error is not None, self.accelerator.device):  # then no rank enters a collective the failed one never reaches
            if error is not None:
                raise error
            raise RuntimeError(f"rlscope tokens source: another rank failed while collecting step {ctx.step}'s "
                               f"tokens (its error is in that rank's output); this rank stops too instead of waiting "
                               f"for it in a collective")
        if table is not None:
            self._publish_table(table, ctx)
        if not probes:
            return None
        per_rank = [p for p in probes if p.per_rank] if self.reduce == "exact" else []
        rest = [p for p in probes if p not in per_rank]
        whole = None
        if rest:
            whole = gather_batch(local, self.accelerator, {"mask"}.union(*(p.inputs for p in rest)))
        if per_rank:
            if self.comm is None:
                multi = self.accelerator.num_processes > 1
                self.comm = TorchComm(self.accelerator.device) if multi else LocalComm()
            local.comm = self.comm
        return RankViews(local=local if per_rank else None, whole=whole if ctx.is_main else None)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _texts(self, r: TapRecord) -> list[str]:
        return self.tokenizer.batch_decode([ids[m].tolist() for ids, m in zip(r.completion_ids, r.mask)],
                                           skip_special_tokens=True)

    def _local_batch(self, records: list[TapRecord], need_text: bool) -> TokenBatch:
        parts = []
        for r in records:
            b = TokenBatch(logps=r.logps, entropies=r.entropies if r.entropies is not None else torch.zeros_like(r.logps),
                           mask=r.mask, completion_ids=r.completion_ids, advantages=r.advantages.to(r.logps.dtype))
            b.has_eos = ((r.completion_ids == self.eos_token_id) & r.mask).any(dim=1)
            if r.rewards_per_func is not None:
                b.rewards = r.rewards_per_func[:, self._correct_idx].to(torch.float64)
                b.correct = is_correct(b.rewards, self.correct_threshold)
            if need_text:
                feats = row_features(self._texts(r), r.completion_ids, r.mask, self.reflection_words, self.ngram)
                b.reflections = feats["reflections"].to(r.logps.device)
                b.repetition = feats["repetition"].to(r.logps.device)
            parts.append(b)
        return concat(parts)

    def _table_rows(self, records: list[TapRecord]) -> list[list]:
        rows = []
        for r in records:
            comps = self._texts(r)
            prompts = (self.tokenizer.batch_decode([ids[m.bool()].tolist() for ids, m in zip(r.prompt_ids, r.prompt_mask)],
                                                   skip_special_tokens=True)
                       if r.prompt_ids is not None else [""] * len(comps))
            ent = row_means(r.entropies, r.mask) if r.entropies is not None else [math.nan] * len(comps)
            lp = row_means(r.logps, r.mask)
            rew = (r.rewards_per_func[:, self._correct_idx].tolist() if r.rewards_per_func is not None
                   else [math.nan] * len(comps))
            rows += [[prompts[i], c, rew[i], float(r.advantages[i]), int(r.mask[i].sum()), ent[i], lp[i]]
                     for i, c in enumerate(comps)]
        return rows[: self.table_rows]  # the Table shows the first table_rows: no rank sends more

    def _publish_table(self, rows: list[list], ctx) -> None:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
        if ctx.is_main:
            columns = ["prompt", "completion", "reward", "advantage", "length", "entropy_mean", "logp_mean"]
            ctx.engine.publisher.media(ctx.step, "rlscope/rollouts", Table(columns, rows[: self.table_rows]),
                                       ctx.trainer_step)
