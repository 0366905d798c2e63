"""Small helpers shared across rlscope, each defined once: distributed facts, tokenizers, W&B, tensors, seeds, rewards.

Nothing here imports the trainers, the callbacks or the probes; heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import zlib

import torch

# -- distributed -----------------------------------------------------------------------------------------------------


def zero_stage() -> int | None:
    """The DeepSpeed ZeRO stage of the running accelerate state (None: not under DeepSpeed, or no state yet)."""
    try:
        from accelerate.state import AcceleratorState

        plugin = getattr(AcceleratorState(), "deepspeed_plugin", None)
    except Exception:  # noqa: BLE001 -- no accelerator state initialised: not under DeepSpeed
        return None
    return None if plugin is None else int(plugin.zero_stage)


def is_partitioned(param) -> bool:
    """Whether a parameter is partitioned across ranks by DeepSpeed ZeRO-3 (it then carries a ``ds_id``)."""
    return hasattr(param, "ds_id")


def model_is_partitioned(model) -> bool:
    """Whether any parameter of ``model`` is ZeRO-3 partitioned (gathering it is then a collective)."""
    return any(is_partitioned(p) for p in model.parameters())


def multi_rank() -> bool:
    """Whether a ``torch.distributed`` process group of more than one rank exists (collectives are needed)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def generation_ready(model):
    """A context in which ``model`` can ``generate``; yields whether generation must run in lock step (every rank the
    same ``generate`` calls, with ``synced_gpus=True``). Enter it on every rank when the model is partitioned.

    * not ZeRO-3 partitioned: nothing to do; False.
    * ZeRO-3 with DeepSpeed's hooks on (the engine exists, as during training): each forward all-gathers the
      parameters of the modules it runs, a collective: True when there is more than one rank (as TRL's rollouts with
      ``ds3_gather_for_generation=False``).
    * partitioned at load (``zero.Init``) but no engine yet (e.g. an evaluation before training): the whole model is
      gathered on every rank for the duration (``deepspeed.zero.GatheredParameters``, as TRL's default
      ``ds3_gather_for_generation=True``; it must fit in one device's memory); False.
    """
    if not model_is_partitioned(model):
        yield False
    elif hasattr(model, "ds_id"):  # DeepSpeed registered its fetch/release hooks on the modules
        yield multi_rank()
    else:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield False


def any_rank(flag: bool, device=None) -> bool:
    """Whether ``flag`` is true on this or any other rank: a one-number MAX all-reduce when a process group of more
    than one rank exists, else ``flag``. Call it on every rank."""
    import torch
    import torch.distributed as dist

    if not multi_rank():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def keyword_options(fn, skip: int = 0) -> dict[str, object]:
    """The keyword parameters of ``fn`` after the first ``skip`` and their defaults (the options of a probe function, a
    source's or a task's constructor)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


# -- tokenizers and reporting ----------------------------------------------------------------------------------------


def text_tokenizer(processing_class):
    """The tokenizer itself: a trainer's ``processing_class`` may be a (multimodal) processor wrapping one."""
    if processing_class is None or hasattr(processing_class, "batch_decode"):
        return processing_class
    return processing_class.tokenizer


def reports_to_wandb(report_to) -> bool:
    """Whether a trainer's ``report_to`` (a string or a list) includes W&B."""
    report = report_to if isinstance(report_to, (list, tuple)) else [report_to]
    return "wandb" in report or "all" in report


# -- tensors ---------------------------------------------------------------------------------------------------------


def row_means(values: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per-row mean of ``values`` (N, T) over the row's valid tokens (NaN for a row without any)."""
    m = mask.to(torch.float64)
    n = m.sum(dim=1)
    sums = (values.to(torch.float64) * m).sum(dim=1)
    return [float(s / c) if c > 0 else math.nan for s, c in zip(sums, n)]


def pad_and_concat(tensors: list[torch.Tensor], side: str = "right", value: float | int = 0) -> torch.Tensor:
    """Concatenate ``(B_i, T_i, ...)`` tensors along the rows, padding the token axis on ``side`` to the longest."""
    if side not in ("left", "right"):
        raise ValueError(f"pad_and_concat: side must be 'left' or 'right', got {side!r}")
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        gap = width - t.shape[1]
        if gap:
            pad = t.new_full((t.shape[0], gap, *t.shape[2:]), value)
            t = torch.cat([pad, t] if side == "left" else [t, pad], dim=1)
        out.append(t)
    return torch.cat(out, dim=0)


# -- seeds -----------------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that scatters nearby inputs."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, *stream) -> int:
    """The seed of one random stream of a run: ``derive_seed(seed, "refill", rank)``, ``derive_seed(seed, "passk",
    prompt_index)``. Different streams (names, ranks, indices) get unrelated seeds; the same arguments always give the
    same seed, on every machine (no Python ``hash``). In [0, 2**63 - 1)."""
    x = _mix64(int(seed) & _MASK64)
    for part in stream:
        v = zlib.crc32(part.encode()) if isinstance(part, str) else int(part) & _MASK64
        x = _mix64(x ^ _mix64(v))
    return x % ((1 << 63) - 1)


# -- rewards ---------------------------------------------------------------------------------------------------------


def rng_state(rng) -> list:
    """A ``random.Random``'s state as JSON-able lists (saved in checkpoints); :func:`set_rng_state` puts it back."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def is_correct(rewards: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """A completion counts as correct when its (correctness) reward is >= ``threshold``; an unscored (NaN) one never."""
    return torch.nan_to_num(rewards.to(torch.float64), nan=-math.inf) >= threshold
