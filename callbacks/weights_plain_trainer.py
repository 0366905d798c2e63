"""A plain `transformers.Trainer` script that gains live weight-update geometry with one added line.

    python callbacks/weights_plain_trainer.py --output_dir runs/weights-plain --max_steps 40

Causal-LM fine-tuning of the embedded tiny local Qwen2 (built on the spot; `--model` for any other) on the `chainsum`
demonstrations with the stock Trainer. rlscope snapshots W_0 before the first update and, every `--every` steps,
logs the principal angles between the top-k singular subspaces of W_t and W_0, the relative change of the top
singular values, and the rank-1 energy / stable rank / direction stability of dW = W_t - W_0
(`rlscope/weights/*` in `runs/weights-plain/metrics.jsonl`, per matrix in `weights.jsonl`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output_dir", default="runs/weights-plain")
    ap.add_argument("--model", default=None, help="model path (default: build the embedded tiny model)")
    ap.add_argument("--max_steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--report_to", default="none")
    args = ap.parse_args(argv)

    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    import rlscope
    from rlscope.tasks import get_task
    from rlscope.tinymodel import build_tiny

    out = Path(args.output_dir)
    path = args.model or str(build_tiny(out / "init-model"))
    tok = AutoTokenizer.from_pretrained(path)
    rows = get_task("chainsum", seed=0).rows("sft")[:4096]
    texts = [r["prompt"] + r["completion"] + tok.eos_token for r in rows]
    data = [tok(t, truncation=True, max_length=128) for t in texts]
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(path),
                      args=TrainingArguments(output_dir=str(out / "trainer"), max_steps=args.max_steps,
                                             per_device_train_batch_size=32, learning_rate=1e-3, logging_steps=5,
                                             use_cpu=True, save_strategy="no", report_to=args.report_to, seed=0,
                                             disable_tqdm=True),
                      train_dataset=data, data_collator=DataCollatorForLanguageModeling(tok, mlm=False))

    rlscope.attach(trainer, run_dir=out, weights={"every": args.every})  # <- the one added line

    trainer.train()
    return out


if __name__ == "__main__":
    main()
