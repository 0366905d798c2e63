"""The ``samples`` source: n seeded samples per held-out prompt of a task, scored, counted per prompt -- the input of
pass@k -- for any ``transformers.Trainer`` (it needs only the model and the tokenizer the trainer hands its callbacks).

The prompts are grouped into fixed batches of ``batch_prompts``, every rank samples its share of the batches and the
counts are gathered (:func:`rlscope.passk_eval.evaluate_passk`: sampling keyed per (prompt, sample, position), so the
counts do not depend on the number of ranks). The evaluation at the start of training is the *base*; in a LoRA run it
is made with the adapters switched off (:func:`rlscope.adapters.adapters_disabled`: the base model itself, whatever
the adapters held at the start, with no second copy of it). Under DeepSpeed
ZeRO-3 the ranks generate in lock step (every rank the same forwards, as TRL's own rollouts do), so pass@k runs there
too.
"""

from __future__ import annotations

from rlscope.callbacks.sources import SOURCES, Source
from rlscope.common import text_tokenizer
from rlscope.passk_eval import default_batch_prompts, evaluate_passk
from rlscope.probes.passk import SampleCounts, default_ks
from rlscope.sampling import check_sampling


@SOURCES.register("samples")
class SampleSource(Source):
    """Options: ``task`` (a Task or a task name; required), ``task_config`` (options of a named task), ``n`` samples per
    prompt, ``temperature``, ``top_p``, ``seed``, ``split``, ``max_prompts`` (the first N prompts of the split),
    ``max_new_tokens`` (default: the task's completion budget), ``batch_prompts`` (prompts per generation batch;
    default: 1024 rows of n samples; the counts are the same for any number of ranks at a given value)."""

    name = "samples"

    def __init__(self, task=None, task_config: dict | None = None, n: int = 16, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, split: str = "heldout", max_prompts: int | None = None,
                 max_new_tokens: int | None = None, batch_prompts: int | None = None):
        if task is None:
            raise ValueError("pass@k needs a task to sample from: e.g. rlscope.attach(trainer, passk={'task': "
                             "'chainsum', 'n': 16})")
        if n < 1:
            raise ValueError(f"pass@k: n (samples per prompt) must be >= 1, got {n}")
        batch_prompts = default_batch_prompts(n, batch_prompts)
        check_sampling(temperature, top_p)
        if isinstance(task, str):
            from rlscope.tasks import get_task

            task = get_task(task, **(task_config or {}))
        self.task, self.n = task, n
        self.kw = dict(n=n, temperature=temperature, top_p=top_p, seed=seed, split=split, max_prompts=max_prompts,
                       max_new_tokens=max_new_tokens, batch_prompts=batch_prompts)

    def check(self, probe_name: str, options: dict) -> None:
        ks = options.get("ks") or default_ks(self.n)
        bad = [k for k in ks if not 1 <= int(k) <= self.n]
        if bad:
            from rlscope.errors import UsageError

            raise UsageError(f"pass@k: k={bad[0]} must be between 1 and n={self.n} (k > n samples cannot be drawn): "
                             f"raise {probe_name}'s n to at least {max(int(k) for k in bad)} or drop that k")

    def setup(self, ctx) -> None:
        self.tokenizer = text_tokenizer(ctx.tokenizer)
        if self.tokenizer is None:
            raise ValueError("pass@k: the trainer has no processing_class (tokenizer) to generate with")

    def collect(self, ctx, probes):
        import contextlib

        from rlscope.adapters import adapters_disabled

        base = ctx.when == "start"  # the reference: an adapter run's base model (adapters off, the same parameters)
        with adapters_disabled(ctx.model) if base else contextlib.nullcontext():
            result = evaluate_passk(ctx.model, self.tokenizer, self.task, **self.kw)
        if not ctx.is_main:
            return None
        return SampleCounts(n=result.n, counts=result.counts, kind="base" if base else "current",
                            seconds=result.seconds)
