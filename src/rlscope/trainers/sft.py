"""SFT warm start with TRL's ``SFTTrainer`` (completion-only loss on the task's demonstrations)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def run_sft(model_path: str, task, output_dir: str | Path, steps: int, learning_rate: float = 1e-3,
            batch_size: int = 64, warmup_steps: int = 10, seed: int = 0, use_cpu: bool = True,
            report_to: str | list[str] = "none", disable_tqdm: bool = False,
            on_trainer: Callable | None = None) -> Path:
    """Fine-tune ``model_path`` on ``task``'s ``sft`` split for ``steps`` optimizer steps; save to ``output_dir``.

    ``on_trainer(trainer)`` is called before training (the recipe runner attaches rlscope there, so the phase's
    metrics reach the run store as ``sft/<name>`` at steps 1..steps).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    output_dir = Path(output_dir)
    ds = task.dataset("sft")
    task.check_columns(ds, "sft", extra=("completion",))
    ds = ds.select_columns(["prompt", "completion"])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    cfg = SFTConfig(output_dir=str(output_dir / "_trainer"), max_steps=steps, per_device_train_batch_size=batch_size,
                    learning_rate=learning_rate, lr_scheduler_type="constant_with_warmup", warmup_steps=warmup_steps,
                    logging_steps=max(1, min(10, steps // 10)), use_cpu=use_cpu, bf16=False, report_to=report_to, save_strategy="no",
                    completion_only_loss=True, max_length=256, seed=seed, gradient_checkpointing=False,
                    disable_tqdm=disable_tqdm, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tokenizer)
    if on_trainer is not None:
        on_trainer(trainer)
    trainer.train()
    if trainer.accelerator.is_main_process:
        trainer.save_model(str(output_dir))
        tokenizer.save_pretrained(str(output_dir))
    trainer.accelerator.wait_for_everyone()
    return output_dir
