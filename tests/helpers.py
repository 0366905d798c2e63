"""Shared helpers for the training tests: small, fast overrides of the tiny recipes."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import RECIPES, ROOT

# Small enough for CI, large enough to be a real run: 2 prompts x 4 generations per optimizer step.
FAST = ["--per_device_train_batch_size", "8", "--num_generations", "4", "--steps_per_generation", "2",
        "--max_completion_length", "32", "--overlong_buffer_len", "8", "--logging_steps", "1",
        "--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none"]


def run_recipe(tmp_path, recipe="tiny_dapo.yaml", *overrides, fast=True):
    from rlscope.recipe import parse_recipe
    from rlscope.train import run

    argv = ["--config", str(RECIPES / recipe), "--runs_dir", str(tmp_path), *(FAST if fast else []), *overrides]
    return run(*parse_recipe(argv), quiet=True)


def launch(tmp_path, accelerate_config, *overrides, timeout=900, recipe="tiny_dapo.yaml"):
    """Run a recipe under ``accelerate launch`` in fresh processes; returns the CompletedProcess.

    DeepSpeed on CPU: accelerate starts DeepSpeed's process group only with use_cpu off and a named backend.
    """
    if accelerate_config.startswith("zero"):
        overrides = ("--use_cpu", "false", "--ddp_backend", "gloo", *overrides)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(RECIPES / "accelerate" / accelerate_config), "--main_process_port", str(_free_port()),
           "-m", "rlscope.train", "--config", str(RECIPES / recipe), "--runs_dir", str(tmp_path),
           *FAST, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meta(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "meta.json").read_text())
