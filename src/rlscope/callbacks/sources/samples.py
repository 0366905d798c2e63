"""The ``samples`` source: n seeded samples per held-out prompt of a task, scored, counted per prompt -- the input of
pass@k -- for any ``transformers.Trainer`` (it needs only the model and the tokenizer the trainer hands its callbacks).

Every rank samples its share of the prompts and the counts are gathered (:func:`rlscope.passk_eval.evaluate_passk`:
seeded per prompt, so the counts do not depend on the number of ranks). The evaluation at the start of training is
the *base*. Under DeepSpeed ZeRO-3 generation would need every rank in lock-step per token: the source then does
nothing and says so once (evaluate checkpoints offline with ``rlscope passk``).
"""

from __future__ import annotations

import warnings

from rlscope.callbacks.sources import SOURCES, Source
from rlscope.common import model_is_partitioned, text_tokenizer
from rlscope.passk_eval import evaluate_passk
from rlscope.probes.passk import SampleCounts, default_ks


@SOURCES.register("samples")
class SampleSource(Source):
    """Options: ``task`` (a Task or a task name; required), ``task_config`` (options of a named task), ``n`` samples per
    prompt, ``temperature``, ``top_p``, ``seed``, ``split``, ``max_prompts`` (the first N prompts of the split),
    ``max_new_tokens`` (default: the task's completion budget)."""

    name = "samples"

    def __init__(self, task=None, task_config: dict | None = None, n: int = 16, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, split: str = "heldout", max_prompts: int | None = None,
                 max_new_tokens: int | None = None):
        if task is None:
            raise ValueError("pass@k needs a task to sample from: e.g. rlscope.attach(trainer, passk={'task': "
                             "'chainsum', 'n': 16})")
        if n < 1:
            raise ValueError(f"pass@k: n (samples per prompt) must be >= 1, got {n}")
        if isinstance(task, str):
            from rlscope.tasks import get_task

            task = get_task(task, **(task_config or {}))
        self.task, self.n = task, n
        self.kw = dict(n=n, temperature=temperature, top_p=top_p, seed=seed, split=split, max_prompts=max_prompts,
                       max_new_tokens=max_new_tokens)
        self.disabled = False

    def check(self, probe_name: str, options: dict) -> None:
        ks = options.get("ks") or default_ks(self.n)
        bad = [k for k in ks if not 1 <= int(k) <= self.n]
        if bad:
            from rlscope.errors import UsageError

            raise UsageError(f"pass@k: k={bad[0]} must be between 1 and n={self.n} (k > n samples cannot be drawn): "
                             f"raise {probe_name}'s n to at least {max(int(k) for k in bad)} or drop that k")

    def setup(self, ctx) -> None:
        if model_is_partitioned(ctx.model):
            self.disabled = True
            warnings.warn("rlscope pass@k: skipped under DeepSpeed ZeRO-3 (sharded generation would need every rank "
                          "in lock-step per token); evaluate checkpoints offline with `rlscope passk`.")
            return
        self.tokenizer = text_tokenizer(ctx.tokenizer)
        if self.tokenizer is None:
            raise ValueError("pass@k: the trainer has no processing_class (tokenizer) to generate with")

    def collect(self, ctx, probes):
        if self.disabled:
            return None
        result = evaluate_passk(ctx.model, self.tokenizer, self.task, **self.kw)
        if not ctx.is_main:
            return None
        return SampleCounts(n=result.n, counts=result.counts, kind="base" if ctx.when == "start" else "current",
                            seconds=result.seconds)
