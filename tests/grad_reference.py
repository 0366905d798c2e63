"""Train the tiny model with a plain transformers Trainer, rlscope's ``grad`` probe attached, and compute the same
numbers by brute force beside it; used by test_grad.py under 1 process, DDP and DeepSpeed ZeRO-2/3.

    python tests/grad_reference.py OUT MODEL                      (one process)
    python tests/grad_reference.py OUT MODEL lora                 (LoRA adapters on q, v, gate: PEFT)
    accelerate launch --config_file recipes/accelerate/zero3.yaml tests/grad_reference.py OUT MODEL

The brute force reads *full* tensors -- the synchronized gradient (DeepSpeed: gathered with
``deepspeed.utils.safe_get_full_grad``), the full weights at the start and the end of each step (ZeRO-3: gathered
with ``GatheredParameters``) -- and sums every parameter's squares exactly (``math.fsum`` over its elements), then
groups them by a regex of its own. It reads the gradient where the Trainer clips it (one process / DDP) or just
before the DeepSpeed engine's step, the only places the synchronized gradient exists before the update.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import TrainerCallback

KIND = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.")
LAYER = re.compile(r"\.layers\.(\d+)\.")


def exact_sq(t: torch.Tensor) -> float:
    return math.fsum(x * x for x in t.detach().to(torch.float64).flatten().tolist())


def groups(names: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"": list(range(len(names)))}
    for i, n in enumerate(names):
        m = KIND.search(n)
        kind = m.group(1) if m else n.split(".")[-2]
        out.setdefault(f"kind/{kind}/", []).append(i)
        m = LAYER.search(n)
        if m:
            out.setdefault(f"layer/{m.group(1)}/", []).append(i)
    return out


class Reference(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
        self.params = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        self.rows: list[dict] = []
        self.deepspeed = trainer.is_deepspeed_enabled
        self.grad_sq: list[float] | None = None
        if not self.deepspeed:
            clip = trainer.accelerator.clip_grad_norm_

            def clip_grad_norm_(parameters, *a, **k):
                parameters = list(parameters)
                self.grad_sq = [exact_sq(p.grad) if p.grad is not None else 0.0 for _, p in self.params]
                return clip(parameters, *a, **k)

            trainer.accelerator.clip_grad_norm_ = clip_grad_norm_
        self._wrapped = False

    def _full(self, p) -> torch.Tensor:
        if hasattr(p, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                return p.data.detach().to("cpu", torch.float64, copy=True)
        return p.detach().to("cpu", torch.float64, copy=True)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.deepspeed and not self._wrapped:
            engine = self.trainer.deepspeed
            step = engine.step

            def engine_step(*a, **k):
                if engine.is_gradient_accumulation_boundary():
                    from deepspeed.utils import safe_get_full_grad

                    self.grad_sq = [exact_sq(safe_get_full_grad(p)) for _, p in self.params]  # a collective
                return step(*a, **k)

            engine.step = engine_step
            self._wrapped = True
        self.before = [self._full(p) for _, p in self.params]

    def on_step_end(self, args, state, control, **kwargs):
        after = [self._full(p) for _, p in self.params]
        update = [exact_sq(a - b) for a, b in zip(after, self.before)]
        weight = [exact_sq(b) for b in self.before]
        row = {"step": state.global_step}
        for prefix, idx in groups([n for n, _ in self.params]).items():
            row[f"{prefix}norm"] = math.sqrt(math.fsum(self.grad_sq[i] for i in idx))
            row[f"{prefix}update_ratio"] = math.sqrt(math.fsum(update[i] for i in idx) / math.fsum(weight[i] for i in idx))
        row["update_ratio_max"] = max(math.sqrt(u / w) for u, w in zip(update, weight) if w > 0)
        self.rows.append(row)


def main(out: str, model_path: str, lora: bool = False) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer
    from transformers import TrainingArguments

    import rlscope
    from rlscope.tasks import get_task

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    out = Path(out)
    args = TrainingArguments(output_dir=str(out / "trainer"), max_steps=3, per_device_train_batch_size=8,
                             gradient_accumulation_steps=1 if deepspeed else 2, learning_rate=1e-3,
                             max_grad_norm=0.05, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                             disable_tqdm=True, use_cpu=not deepspeed, ddp_backend="gloo" if deepspeed else None,
                             dataloader_num_workers=0)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)  # after the arguments: ZeRO-3 partitions at load
    if lora:  # the trainable parameters are the adapters' A and B; B starts at 0 (no weight: no ratio of its own)
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"]))
    rows = get_task("chainsum", seed=0, n_sft=256, n_train=16).rows("sft")
    data = [tok(r["prompt"] + r["completion"] + tok.eos_token) for r in rows]
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    obs = rlscope.attach(trainer, out / "run", grad=True)
    ref = Reference(trainer)
    trainer.add_callback(ref)
    trainer.train()
    if trainer.accelerator.is_main_process:
        engine = [{"step": step, **{k.split("/", 2)[-1]: v for k, v in scalars.items()}}
                  for step, name, scalars in obs.history if name == "grad"]
        logged = [x["grad_norm"] for x in trainer.state.log_history if "grad_norm" in x]
        trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
        (out / "grad.json").write_text(json.dumps({"trainable": trainable, "engine": engine, "reference": ref.rows, "grad_norm": logged,
                                                   "world_size": trainer.accelerator.num_processes,
                                                   "deepspeed": deepspeed}))
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], lora=sys.argv[3:] == ["lora"])
