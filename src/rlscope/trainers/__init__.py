"""Trainers: GRPO/DAPO on TRL's GRPOTrainer (``dapo``) and the SFT warm start (``sft``)."""

from rlscope.trainers.dapo import DAPOConfig, DAPOTrainer, group_keep_mask
from rlscope.trainers.reward_guard import RewardFunctionError

__all__ = ["DAPOConfig", "DAPOTrainer", "RewardFunctionError", "group_keep_mask"]
