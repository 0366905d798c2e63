"""Taps: capture the per-token tensors of the policy's *training* forward inside a TRL ``GRPOTrainer``.

TRL computes per-token log-probs and entropies in ``_get_per_token_logps_and_entropies`` (fused LM head). It calls that
helper for the training loss (inside ``_compute_loss``) but also for the old-policy and reference log-probs (inside
``_generate_and_score_completions``, under no_grad) and in evaluation. A :class:`TokenTap` wraps, on one trainer
instance (no subclassing, no fork):

* ``_compute_loss`` -- marks "inside a training loss" (only when the model is in train mode and the tap is
  ``armed``: the engine arms it before the steps at which a token probe is due) and, after the loss, files one
  :class:`TapRecord` with the micro-batch's completion ids, mask, advantages and rewards;
* ``_get_per_token_logps_and_entropies`` -- keeps the (detached) log-probs and entropies of the first call made inside
  a training loss, i.e. the policy's own forward; every other call passes through unrecorded;
* ``_calculate_rewards`` / ``_generate_and_score_completions`` -- attach each completion's per-function rewards to the
  rollout dict (key ``rlscope_rewards``), so they travel with the rows through TRL's shuffle and split.

No extra forward pass is made: the tap reuses what TRL already computed. The wrapped methods are TRL internals, so
the tap checks them by capability (:func:`check_trainer`: the methods exist and take the arguments the wrappers rely
on) and refuses, with one message naming what is missing, a TRL outside the tested range (:data:`SUPPORTED_TRL`:
1.14.x to 1.16.0; CI runs a focused subset against the oldest).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_TRL = ("1.14.0", "1.16.0")  # the oldest and newest TRL the taps are tested against (inclusive)
_WRAPPED = ("_compute_loss", "_get_per_token_logps_and_entropies", "_calculate_rewards",
            "_generate_and_score_completions")
REWARDS_KEY = "rlscope_rewards"


class UnsupportedTRLVersion(RuntimeError):
    """The installed TRL is not one the taps were tested against."""


def check_trl(version: str | None = None) -> None:
    """Raise :class:`UnsupportedTRLVersion` unless TRL ``version`` (default: the installed one) is in the tested range
    :data:`SUPPORTED_TRL` (patch releases of the newest minor included: 1.16.x)."""
    from packaging.version import InvalidVersion, Version

    if version is None:
        import trl

        version = trl.__version__
    low, high = (Version(v) for v in SUPPORTED_TRL)
    try:
        v = Version(version)
    except InvalidVersion:
        v = None
    if v is None or not (low <= v and v.release[:2] <= high.release[:2]):
        raise UnsupportedTRLVersion(
            f"rlscope's token taps wrap TRL internals and are tested against TRL {SUPPORTED_TRL[0]} to "
            f"{SUPPORTED_TRL[1]}; the installed TRL is {version}. Install a supported version "
            f"(pip install 'trl>={SUPPORTED_TRL[0]},<={SUPPORTED_TRL[1]}').")


# what each wrapped method must accept (the wrappers pass arguments through, but read these)
_NEEDS = {"_compute_loss": ("model", "inputs")}


def check_trainer(trainer) -> None:
    """The capabilities the taps wrap, checked on the trainer itself: each method in ``_WRAPPED`` exists and takes the
    arguments the wrappers call it with; one :class:`UnsupportedTRLVersion` naming everything missing."""
    import inspect

    problems = []
    for name in _WRAPPED:
        fn = getattr(trainer, name, None)
        if not callable(fn):
            problems.append(f"{name} (missing)")
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        lacking = [p for p in _NEEDS.get(name, ()) if p not in params]
        if lacking:
            problems.append(f"{name} (no parameter {', '.join(lacking)})")
    if problems:
        import trl

        raise UnsupportedTRLVersion(f"this TRL ({trl.__version__}) lacks what rlscope's token taps wrap: "
                                    f"{'; '.join(problems)}. Install TRL {SUPPORTED_TRL[0]} to {SUPPORTED_TRL[1]}.")


@dataclass
class TapRecord:
    """One training micro-batch: detached tensors on the trainer's device."""

    logps: torch.Tensor  # (B, T)
    entropies: torch.Tensor | None  # (B, T)
    mask: torch.Tensor  # (B, T) bool: completion tokens that enter the loss
    completion_ids: torch.Tensor  # (B, T)
    advantages: torch.Tensor  # (B,)
    rewards_per_func: torch.Tensor | None  # (B, n_reward_funcs)
    prompt_ids: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None


class TokenTap:
    """Installs on one ``trl.GRPOTrainer`` (or subclass) instance; collects :class:`TapRecord` s until drained.

    ``armed``: record the training passes (default True; the engine arms it only for due steps). ``training_passes``
    counts recorded forwards, ``helper_calls`` every call of TRL's log-prob helper (the test that only training
    passes are recorded compares the two).
    """

    def __init__(self, armed: bool = True):
        self.records: list[TapRecord] = []
        self.armed = armed
        self.training_passes = 0
        self.helper_calls = 0
        self._in_loss = False
        self._pending: tuple | None = None
        self._last_rewards: torch.Tensor | None = None

    def drain(self) -> list[TapRecord]:
        out, self.records = self.records, []
        return out

    def install(self, trainer) -> "TokenTap":
        from trl import GRPOTrainer

        check_trl()
        if not isinstance(trainer, GRPOTrainer):
            raise TypeError(f"TokenTap needs a trl.GRPOTrainer (or subclass), got {type(trainer).__name__}")
        if getattr(trainer, "_rlscope_tap", None) is not None:
            raise RuntimeError("this trainer already has an rlscope tap; attach rlscope once")
        check_trainer(trainer)
        orig = {m: getattr(trainer, m) for m in _WRAPPED}
        tap = self

        def _compute_loss(model, inputs):
            tap._in_loss = tap.armed and bool(trainer.model.training)  # evaluation's prediction_step: not recorded
            tap._pending = None
            try:
                loss = orig["_compute_loss"](model, inputs)
            finally:
                tap._in_loss = False
            if tap._pending is not None:
                tap._record(inputs, *tap._pending)
                tap._pending = None
            return loss

        def _get_per_token_logps_and_entropies(*args, **kwargs):
            out = orig["_get_per_token_logps_and_entropies"](*args, **kwargs)
            tap.helper_calls += 1
            if tap._in_loss and tap._pending is None:  # the first call inside the loss is the policy's forward
                logps, entropies = out[0], out[1]
                tap._pending = (logps.detach(), None if entropies is None else entropies.detach())
                tap.training_passes += 1
            return out

        def _calculate_rewards(*args, **kwargs):
            rewards = orig["_calculate_rewards"](*args, **kwargs)
            tap._last_rewards = rewards  # gathered over all processes (TRL normalises groups across ranks)
            return rewards

        def _generate_and_score_completions(*args, **kwargs):
            tap._last_rewards = None
            out = orig["_generate_and_score_completions"](*args, **kwargs)
            if REWARDS_KEY not in out and tap._last_rewards is not None:
                n = out["completion_ids"].shape[0]
                rank = trainer.accelerator.process_index
                out[REWARDS_KEY] = tap._last_rewards[rank * n:(rank + 1) * n].detach()
            return out

        for name, fn in (("_compute_loss", _compute_loss),
                         ("_get_per_token_logps_and_entropies", _get_per_token_logps_and_entropies),
                         ("_calculate_rewards", _calculate_rewards),
                         ("_generate_and_score_completions", _generate_and_score_completions)):
            setattr(trainer, name, fn)
        trainer._rlscope_tap = self
        return self

    def _record(self, inputs: dict, logps: torch.Tensor, entropies: torch.Tensor | None) -> None:
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        adv = inputs["advantages"].detach()
        if adv.dim() == 2 and adv.shape[1] == 1:
            adv = adv[:, 0]
        self.records.append(TapRecord(
            logps=logps, entropies=entropies, mask=mask.bool(), completion_ids=inputs["completion_ids"],
            advantages=adv, rewards_per_func=inputs.get(REWARDS_KEY),
            prompt_ids=inputs.get("prompt_ids"), prompt_mask=inputs.get("prompt_mask")))
