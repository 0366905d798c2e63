"""What a recipe points at, checked before any work: the model, the checkpoint to resume from, the processes.

Each check raises :class:`~rlscope.errors.UsageError` naming the problem and the fix, where the library below would
fail later with a hub error ("Repo id must be in the form ..."), a raw ``FileNotFoundError``, a size-mismatch wall
from ``load_state_dict``, or -- for processes launched without a process group -- not at all (each rank would run its
own one-process copy of the run into the same directory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlscope.errors import UsageError

# the config fields that decide whether a checkpoint's tensors fit a model
ARCHITECTURE = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "tie_word_embeddings")


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``org/name`` or ``name``)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def check_model(name: str, what: str = "model_name_or_path") -> None:
    """``model_name_or_path`` (``what``: how the user gave it) is a model directory, or a hub id that loads (from the cache when offline)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{what} {name}: the directory has no config.json (a model directory "
                             f"holds config.json and the weights, e.g. runs/<run>/models/final)")
        return
    if _looks_like_path(name):
        raise UsageError(f"{what} {name}: no such directory; give a model directory (config.json and "
                         f"weights), 'tiny' (built in the run), 'tiny-sft' (the cached warm-started tiny model), or "
                         f"a hub id such as Qwen/Qwen2.5-Math-1.5B")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        offline = " (HF_HUB_OFFLINE=1: rlscope's default, so only the local cache is read)" \
            if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise UsageError(f"{what} {name}: not a directory here and not loadable from the hub{offline}: "
                         f"{str(exc).splitlines()[0].rstrip('.')}. Give a local model directory, or download it first "
                         f"(HF_HUB_OFFLINE=0)") from exc


def _config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
           "adapter_model.safetensors")


def checkpoint_missing(path: Path, world_size: int = 1) -> list[str]:
    """What a checkpoint directory lacks to be resumed from: the trainer writes the weights, the optimizer, each
    rank's RNG (and rlscope) state, and ``trainer_state.json`` last -- a run killed while saving leaves a directory
    without some of them."""
    missing = [] if (path / "trainer_state.json").is_file() else ["trainer_state.json"]
    if not any((path / w).exists() for w in WEIGHTS):
        missing.append("the model weights")
    if any(path.glob("rlscope_state-rank*.json")):  # written by rlscope's trainer: one per rank
        missing += [f"rlscope_state-rank{r}.json" for r in range(world_size)
                    if not (path / f"rlscope_state-rank{r}.json").is_file()]
    return missing


def resume_target(resume, output_dir: str | Path, world_size: int = 1) -> Path | None:
    """The checkpoint directory a ``resume_from_checkpoint`` value names (``true``: the latest complete one under
    ``output_dir``; one cut short by a kill during its save is passed over), or None when the run does not
    resume."""
    if resume in (None, False, "", "false", "False"):
        return None
    out = Path(output_dir)
    existing = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if
                      p.name.split("-")[-1].isdigit() else -1) if out.is_dir() else []
    complete = [p for p in existing if not checkpoint_missing(p, world_size)]
    listing = (f"complete checkpoints of this run: {', '.join(str(p) for p in complete)}" if complete else
               f"this run has no complete one under {out} (set save_steps / save_strategy to write them)")
    if resume is True or str(resume).lower() == "true":
        if not complete:
            raise UsageError(f"resume_from_checkpoint true: no checkpoint to resume from; {listing}")
        return complete[-1]
    path = Path(resume)
    if not path.is_dir():
        raise UsageError(f"resume_from_checkpoint {resume}: no such checkpoint directory; {listing}")
    missing = checkpoint_missing(path, world_size)
    if missing:
        raise UsageError(f"resume_from_checkpoint {resume}: an incomplete checkpoint (no {', '.join(missing)}: the "
                         f"run was stopped while saving it, or it is not a trainer checkpoint); {listing}")
    return path


def check_checkpoint(checkpoint: Path, model_path: str | Path) -> None:
    """The checkpoint was written by a model of the same architecture as ``model_path`` (config fields that decide
    the tensors' shapes)."""
    ours, theirs = _config(Path(model_path)), _config(Path(checkpoint))
    if not ours or not theirs:
        return
    differ = [f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in ARCHITECTURE if k in ours and theirs.get(k) != ours[k]]
    if differ:
        raise UsageError(f"resume_from_checkpoint {checkpoint} was written by another model ({'; '.join(differ)}: "
                         f"the checkpoint's vs this recipe's model {model_path}); resume with the recipe that wrote "
                         f"it, or start a new run (another run_name)")


def claim_run_dir(run_dir: Path, resume: Path | None, overwrite: bool):
    """Main process: take the run directory's lock (:class:`~rlscope.store.RunLock`) and make sure a new run does not
    write into an earlier run's files (its steps would be stored twice). Returns the held lock."""
    from rlscope.store import RunLock, RunReader

    lock = RunLock(run_dir)
    lock.acquire()
    earlier = any((run_dir / name).exists() for name in ("meta.json", "metrics.jsonl"))
    if earlier and resume is None:
        if not overwrite:
            status = RunReader(run_dir, salvage=True).meta().get("status", "unknown")
            lock.release()
            raise UsageError(f"run directory {run_dir} already holds a run (status {status}): resume it with "
                             f"`--resume_from_checkpoint true`, give this run another run_name, or start over in it "
                             f"with `--overwrite true` (its files are removed)")
        import shutil

        for p in run_dir.iterdir():
            if p.name != ".lock":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return lock


def agree(state, check):
    """Run ``check()`` on the main process and give its outcome to every rank: a :class:`UsageError` there is raised
    on every rank (the others would otherwise wait forever at the next collective). Returns ``check()``'s value on
    the main process, None elsewhere."""
    message, value = None, None
    if state.is_main_process:
        try:
            value = check()
        except UsageError as exc:
            message = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message], from_process=0)[0]
    if message is not None:
        raise UsageError(message)
    return value


def check_processes(launched: int, wanted: int | None) -> None:
    """The launcher's processes formed one process group of ``launched`` ranks, and it is the recipe's count."""
    started = int(os.environ.get("WORLD_SIZE", "1"))
    if started != launched:
        raise UsageError(f"{started} processes were launched but they did not join one process group (each sees a "
                         f"world of {launched}): on a CPU machine the recipe needs `use_cpu: true` for DDP (gloo), "
                         f"or `--use_cpu false --ddp_backend gloo` with a DeepSpeed config (recipes/accelerate/*.yaml "
                         f"say which)")
    if wanted is not None and wanted != launched:
        raise UsageError(f"the recipe is written for {wanted} processes (num_processes: {wanted}: its batch sizes "
                         f"assume that many) but {launched} {'was' if launched == 1 else 'were'} launched: launch with `accelerate launch "
                         f"--num_processes {wanted} ...`, or override `--num_processes {launched}` if the batch sizes "
                         f"still divide")


def check_adapters(model_args) -> None:
    """A recipe that trains adapters (``use_peft``, TRL's ModelConfig) needs peft, and bitsandbytes for 4/8-bit bases
    (QLoRA); DoRA is trained but not measured by the weights probe (it says so when selected)."""
    import importlib.util

    quantized = bool(getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False))
    if (getattr(model_args, "use_peft", False) or quantized) and importlib.util.find_spec("peft") is None:
        raise UsageError("use_peft: the recipe trains LoRA adapters, which needs peft: pip install 'rlscope[lora]' "
                         "(or pip install peft)")
    if quantized and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError("load_in_4bit / load_in_8bit: a quantized base (QLoRA) needs bitsandbytes: pip install "
                         "bitsandbytes")
    if quantized and not getattr(model_args, "use_peft", False):
        raise UsageError("load_in_4bit / load_in_8bit: a quantized base cannot be trained itself; add use_peft: true "
                         "(QLoRA trains LoRA adapters on it)")
