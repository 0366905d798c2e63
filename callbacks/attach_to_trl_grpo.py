"""A plain TRL GRPO script that gains rlscope's token-level dynamics with one added line (marked below).

    python callbacks/attach_to_trl_grpo.py --output_dir runs/attach-grpo --max_steps 20

Everything else is stock TRL: the embedded tiny local Qwen2 (built on the spot; swap in any model path), the synthetic
`chainsum` task and its verifiable reward. After the run, `runs/attach-grpo/metrics.jsonl` holds TRL's metrics and
rlscope's `rlscope/entropy/*`, `rlscope/cov/*`, `rlscope/behavior/*` series for every step (and W&B gets them when
`--report_to wandb`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output_dir", default="runs/attach-grpo")
    ap.add_argument("--model", default=None, help="model path (default: build the embedded tiny model)")
    ap.add_argument("--max_steps", type=int, default=20)
    ap.add_argument("--report_to", default="none")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    import rlscope
    from rlscope.tasks import get_task
    from rlscope.tinymodel import build_tiny

    out = Path(args.output_dir)
    model = args.model or str(build_tiny(out / "init-model"))
    task = get_task("chainsum", seed=0)
    config = GRPOConfig(output_dir=str(out / "trainer"), max_steps=args.max_steps, learning_rate=3e-5,
                        per_device_train_batch_size=8, num_generations=4, steps_per_generation=2,
                        max_completion_length=32, loss_type="dapo", epsilon_high=0.28, logging_steps=1,
                        use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                        report_to=args.report_to, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=task.reward_funcs(), args=config,
                          train_dataset=task.dataset("train"), processing_class=AutoTokenizer.from_pretrained(model))

    rlscope.attach(trainer, run_dir=out)  # <- the one added line

    trainer.train()
    return out


if __name__ == "__main__":
    main()
