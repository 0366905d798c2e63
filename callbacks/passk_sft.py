"""A plain TRL SFT script that gains a live pass@k curve (base model vs now, k = 1..n) with one added line.

    python callbacks/passk_sft.py --output_dir runs/passk-sft --max_steps 60

Stock TRL `SFTTrainer` on the embedded tiny local Qwen2 (built on the spot; `--model` for any other) and the
`chainsum` demonstrations. pass@k of an SFT run is as telling as that of an RL run: SFT on diverse demonstrations
tends to raise pass@k at large k (coverage), RL mostly at small k. `runs/passk-sft/passk.jsonl` holds the base curve
and one curve per evaluation; `metrics.jsonl` the `rlscope/passk/pass@K` scalars and the crossover k.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output_dir", default="runs/passk-sft")
    ap.add_argument("--model", default=None, help="model path (default: build the embedded tiny model)")
    ap.add_argument("--max_steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=20, help="pass@k every N steps")
    ap.add_argument("-n", type=int, default=8, help="samples per held-out prompt")
    ap.add_argument("--prompts", type=int, default=32, help="held-out prompts")
    ap.add_argument("--report_to", default="none")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    import rlscope
    from rlscope.tasks import get_task
    from rlscope.tinymodel import build_tiny

    out = Path(args.output_dir)
    model = args.model or str(build_tiny(out / "init-model"))
    task = get_task("chainsum", seed=0)
    data = task.dataset("sft").select_columns(["prompt", "completion"])
    config = SFTConfig(output_dir=str(out / "trainer"), max_steps=args.max_steps, per_device_train_batch_size=64,
                       learning_rate=1e-3, lr_scheduler_type="constant", completion_only_loss=True, logging_steps=10,
                       use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                       report_to=args.report_to, seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(model))

    rlscope.attach(trainer, run_dir=out, passk={"task": task, "n": args.n, "every": args.every,
                                                "max_prompts": args.prompts})  # <- the one added line

    trainer.train()
    return out


if __name__ == "__main__":
    main()
