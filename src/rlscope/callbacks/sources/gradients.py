"""The ``gradients`` source: per-parameter squared norms of an optimizer step's gradient (synchronized across ranks,
before clipping), of the update it applied, and of the weights before it -- summed over every rank's share in float64.
Nothing is gathered: each rank squares what it holds and one all-reduce of three numbers per parameter adds them up.

Where the numbers come from, by how the trainer runs:

* one process / DDP: the gradients are read where the Trainer clips them -- ``accelerator.clip_grad_norm_``, which
  the Trainer calls once per optimizer step, before ``on_pre_optimizer_step`` (the callback event itself already
  sees clipped gradients). Parameters are replicated, so rank r reads every W-th parameter (W ranks).
* DeepSpeed ZeRO-1/2/3: the engine steps inside ``accelerator.backward`` -- there is no callback event between the
  backward pass and the update -- so the source wraps the engine's ``step`` and reads, just before it, the gradient
  fragments this rank owns (ZeRO-1/2: the optimizer's fp32 partition of each parameter's gradient; ZeRO-3:
  ``deepspeed.utils.safe_get_local_grad``). The weights: replicated parameters are split across ranks as under DDP
  (ZeRO-1/2), partitioned ones are read as each rank's own shard (ZeRO-3, ``param.ds_tensor``).

The update is W(after) - W(before), read at the start and the end of the step (the engine arms the source at
``on_step_begin`` of a due step and collects at ``on_step_end``); only the due steps pay for the copy of W(before),
and each rank copies only its share.
"""

from __future__ import annotations

import torch

from rlscope.callbacks.sources import SOURCES, Source
from rlscope.common import is_partitioned
from rlscope.probes.grad import GradView


def _sq(t: torch.Tensor | None) -> float:
    return 0.0 if t is None else float(t.detach().to(torch.float64).square().sum())


@SOURCES.register("gradients")
class GradientSource(Source):
    """No options: every trainable parameter is measured."""

    name = "gradients"

    def __init__(self):
        self._armed = False
        self._grad_sq: torch.Tensor | None = None
        self._before: dict[int, torch.Tensor] = {}
        self._engine_wrapped = False

    # -- wiring --------------------------------------------------------------------------------------------------
    def bind(self, trainer, engine) -> None:
        from accelerate.utils import DistributedType

        super().bind(trainer, engine)
        acc = trainer.accelerator
        if acc.distributed_type in (DistributedType.FSDP, DistributedType.XLA):
            raise NotImplementedError(f"the gradient probe does not support {acc.distributed_type} (it reads "
                                      f"gradients under one process, DDP and DeepSpeed ZeRO-1/2/3)")
        self.trainer, self.accelerator = trainer, acc
        self.deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        if not self.deepspeed:
            clip = acc.clip_grad_norm_

            def clip_grad_norm_(parameters, *args, **kwargs):
                parameters = list(parameters)
                if self._armed:
                    self._measure_grads()
                return clip(parameters, *args, **kwargs)

            acc.clip_grad_norm_ = clip_grad_norm_

    def _wrap_engine_step(self) -> None:
        """Read the gradients between DeepSpeed's backward and its step (the engine exists once training began)."""
        ds_engine = getattr(self.trainer, "deepspeed", None)
        if ds_engine is None:
            raise RuntimeError("gradient probe: the DeepSpeed engine is not there yet (it is created when training "
                               "starts)")
        step = ds_engine.step

        def engine_step(*args, **kwargs):
            if self._armed and ds_engine.is_gradient_accumulation_boundary():
                self._measure_grads()
            return step(*args, **kwargs)

        ds_engine.step = engine_step
        self._engine_wrapped = True

    def setup(self, ctx) -> None:
        self.params = [(n, p) for n, p in ctx.model.named_parameters() if p.requires_grad]
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.stage = None
        if self.deepspeed:
            from rlscope.common import zero_stage

            self.stage = zero_stage()

    # -- what this rank holds ------------------------------------------------------------------------------------
    def _mine(self, i: int, p) -> bool:
        """Whether this rank accounts for replicated parameter i (partitioned ones: every rank, its own shard)."""
        return is_partitioned(p) or i % self.world == self.rank

    def _local_weight(self, p) -> torch.Tensor:
        return p.ds_tensor if is_partitioned(p) else p.data

    def _local_grad(self, p) -> torch.Tensor | None:
        if not self.deepspeed:
            return p.grad
        if is_partitioned(p):  # ZeRO-3: this rank's partition of the reduced gradient
            from deepspeed.utils import safe_get_local_grad

            return safe_get_local_grad(p)
        mapping = getattr(p, "_hp_mapping", None)  # ZeRO-1/2: the fragment of this rank's optimizer partition
        if mapping is None:
            return None
        frag = mapping.get_lp_grad_fragment(p._index_in_param_group).flatten()
        if frag.numel() == p.numel():  # a full-size accumulation buffer: only this partition's fragment counts
            frag = frag.narrow(0, mapping.lp_fragment_address.start, mapping.lp_fragment_address.numel)
        return frag

    def _measure_grads(self) -> None:
        if self.deepspeed:  # every rank holds a distinct part of every gradient
            vals = [_sq(self._local_grad(p)) for _, p in self.params]
        else:  # replicated, already averaged over ranks: each rank squares its share of the parameters
            vals = [_sq(p.grad) if self._mine(i, p) else 0.0 for i, (_, p) in enumerate(self.params)]
        self._grad_sq = torch.tensor(vals, dtype=torch.float64)

    # -- the engine's calls --------------------------------------------------------------------------------------
    def prepare(self, ctx, probes) -> None:
        if self.deepspeed and not self._engine_wrapped:
            self._wrap_engine_step()
        self._armed, self._grad_sq = True, None
        self._before = {i: self._local_weight(p).detach().clone() for i, (_, p) in enumerate(self.params)
                        if self._mine(i, p)}

    def collect(self, ctx, probes):
        armed, self._armed = self._armed, False
        if not armed:
            return None
        grad_sq = self._grad_sq if self._grad_sq is not None else torch.full((len(self.params),), float("nan"),
                                                                              dtype=torch.float64)
        update_sq = torch.zeros(len(self.params), dtype=torch.float64)
        weight_sq = torch.zeros(len(self.params), dtype=torch.float64)
        for i, before in self._before.items():
            after = self._local_weight(self.params[i][1]).detach()
            update_sq[i] = _sq(after.to(torch.float64) - before.to(torch.float64))
            weight_sq[i] = _sq(before)
        self._before, self._grad_sq = {}, None
        sums = torch.stack([grad_sq, update_sq, weight_sq])
        if self.world > 1:
            import torch.distributed as dist

            device = self.accelerator.device if dist.get_backend() != "gloo" else torch.device("cpu")
            sums = sums.to(device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        if not ctx.is_main:
            return None
        return GradView([n for n, _ in self.params], sums[0], sums[1], sums[2])
