"""Every row of the docs' "Bad input" table (docs/bad-input.md), through the real command line: one line naming the problem and the
fix on stderr, exit status 2, no traceback (``--debug`` shows it). The table and :data:`CASES` name the same rows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import RECIPES, ROOT

from rlscope.cli import main

TINY = str(RECIPES / "tiny_dapo.yaml")
QUICK = ("--max_steps", "1", "--eval_heldout", "false", "--analyze", "false", "--console", "none",
         "--report_to", "none")


def _recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def _train(tmp_path, *args: str) -> list[str]:
    return ["train", "--config", TINY, "--runs_dir", str(tmp_path / "runs"), *QUICK, *args]


def _dataset_without_answer(tmp_path) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / "gsm8k_sample.jsonl").read_text().splitlines()]
    path = tmp_path / "gsm8k_no_answer.jsonl"
    path.write_text("".join(json.dumps({"question": r["question"], "solution_text": r["answer"]}) + "\n"
                            for r in rows))
    return _train(tmp_path, "--task", "gsm8k", "--task_config", json.dumps({"dataset_path": str(path)}),
                  "--model_name_or_path", "tiny")


def _checkpoint_of_another_model(tmp_path) -> list[str]:
    """A real checkpoint written by a run of a narrower tiny model, resumed by the standard tiny recipe."""
    from rlscope.tinymodel import TinySpec, build_tiny

    other = build_tiny(tmp_path / "narrow", TinySpec(hidden_size=128, intermediate_size=384))
    assert main(_train(tmp_path, "--model_name_or_path", str(other), "--run_name", "narrow", "--save_strategy",
                       "steps", "--save_steps", "1")) == 0
    checkpoint = tmp_path / "runs" / "narrow" / "checkpoints" / "checkpoint-1"
    assert (checkpoint / "trainer_state.json").is_file()
    return _train(tmp_path, "--run_name", "narrow", "--resume_from_checkpoint", str(checkpoint))


def _weights_base(tmp_path) -> str:
    """A real (if tiny) safetensors model directory for ``rlscope weights`` to compare against."""
    import torch
    from safetensors.torch import save_file

    base = tmp_path / "base"
    base.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4)}, str(base / "model.safetensors"))
    return str(base)


def _weights_base_copy(tmp_path) -> str:
    import shutil

    return str(shutil.copytree(tmp_path / "base", tmp_path / "ckpt"))


def _weights_empty_dir(tmp_path) -> list[str]:
    (tmp_path / "empty").mkdir()
    return ["weights", _weights_base(tmp_path), str(tmp_path / "empty")]


# row name (as in the docs' table) -> (argv builder, what the one line must say)
CASES = {
    "unknown recipe key": (lambda t: ["train", "--config", _recipe(t, "task: chainsum\nlearnin_rate: 1e-3\n")],
                           r"unknown recipe key 'learnin_rate' in .*recipe.yaml\. Did you mean 'learning_rate'\?"),
    "unknown flag": (lambda t: _train(t, "--learnin_rate", "1e-3"),
                     r"unknown flag '--learnin_rate' on the command line\. Did you mean '--learning_rate'\?"),
    "bad type": (lambda t: ["train", "--config", _recipe(t, "task: chainsum\nmax_steps: ten\n")],
                 r"max_steps: 'ten' is not a valid int"),
    "malformed YAML": (lambda t: ["train", "--config", _recipe(t, "task: [chainsum\nmax_steps: 1\n")],
                       r"recipe .*recipe.yaml is not valid YAML: expected .* at line 2, column 10"),
    "missing recipe": (lambda t: ["train", "--config", str(t / "nope.yaml")],
                       r"recipe .*nope.yaml does not exist; the recipes that ship with rlscope: .*tiny_dapo.yaml"),
    "unknown task": (lambda t: _train(t, "--task", "chainsun"),
                     r"unknown task 'chainsun'\. Did you mean 'chainsum'\?"),
    "unknown task option": (lambda t: _train(t, "--task_config", '{"sed": 1}'),
                            r"unknown option 'sed' of task 'chainsum'\. Did you mean 'seed'\?"),
    "unknown schedule": (lambda t: _train(t, "--schedule", "altenate"),
                         r"unknown schedule 'altenate'\. Did you mean 'alternate'\?"),
    "unknown probe": (lambda t: _train(t, "--probes", "entropi"), r"unknown probe 'entropi'\. Did you mean 'entropy'\?"),
    "unknown analysis": (lambda t: ["analyze", str(t), "--only", "two_stag"],
                         r"unknown analysis 'two_stag'\. Did you mean 'two_stage'\?"),
    "unknown log format": (lambda t: ["analyze", str(t), "--format", "wandbb"],
                           r"unknown log format 'wandbb'\. Did you mean 'wandb'\?"),
    "no run or log": (lambda t: ["analyze", str(t / "nothing-here")], r"no run or log at .*nothing-here \(an rlscope"),
    "k > n": (lambda t: _train(t, "--probe_options", '{"passk": {"n": 4, "ks": [1, 8]}}'),
              r"pass@k: k=8 must be between 1 and n=4 .*raise passk's n to at least 8"),
    "dataset without a needed column": (_dataset_without_answer,
                                        r"task 'gsm8k', split 'train': the dataset has no 'answer' column"),
    "model path that does not exist": (lambda t: _train(t, "--model_name_or_path", str(t / "no" / "model")),
                                       r"model_name_or_path .*no/model: no such directory"),
    "hub id not available offline": (lambda t: _train(t, "--model_name_or_path", "nosuchorg/nosuchmodel"),
                                     r"nosuchorg/nosuchmodel: not a directory here and not loadable from the hub"),
    "model for pass@k that does not exist": (lambda t: ["passk", "--model", str(t / "m"), "--task", "chainsum"],
                                             r"model .*/m: no such directory"),
    "more processes than launched": (lambda t: _train(t, "--num_processes", "2"),
                                     r"the recipe is written for 2 processes .* but 1 was launched"),
    "bf16 on a machine without a GPU": (lambda t: _train(t, "--use_cpu", "false", "--bf16", "true"),
                                        r"bf16 is on .* but this machine has no GPU: add `bf16: false`"),
    "missing checkpoint": (lambda t: _train(t, "--resume_from_checkpoint", str(t / "checkpoint-9")),
                           r"resume_from_checkpoint .*checkpoint-9: no such checkpoint directory"),
    "weights checkpoint that does not exist": (
        lambda t: ["weights", _weights_base(t), str(t / "no" / "checkpoint-9")],
        r"checkpoint .*no/checkpoint-9: no such file or directory; give a model directory written by save_pretrained"),
    "weights directory without safetensors": (
        _weights_empty_dir, r"checkpoint .*empty: no safetensors weights in the directory; give a model directory"),
    "weights on a device the machine lacks": (
        lambda t: ["weights", _weights_base(t), _weights_base_copy(t), "--device", "cuda"],
        r"--device cuda: this machine has no CUDA device; use --device cpu"),
    "quantized base without adapters": (lambda t: _train(t, "--load_in_4bit", "true"),
                                        r"a quantized base cannot be trained itself; add use_peft: true"),
    "DoRA adapters with the weights probe": (
        lambda t: ["train", "--config", str(RECIPES / "tiny_dapo_lora.yaml"), "--runs_dir", str(t / "runs"), *QUICK,
                   "--use_dora", "true", "--probes", "weights"],
        r"is a DoRA adapter \(a learned magnitude rescales W_0 \+ s B A\); only LoRA is measured"),
    "checkpoint from another model": (_checkpoint_of_another_model,
                                      r"was written by another model \(hidden_size 128 vs 256; intermediate_size "
                                      r"384 vs 768"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line(name, tmp_path, capsys, monkeypatch):
    import torch

    if name in ("bf16 on a machine without a GPU", "weights on a device the machine lacks") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("RLSCOPE_DEBUG", raising=False)
    build, expected = CASES[name]
    argv = build(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rlscope: error: ")]
    assert len(lines) == 1, err
    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in err


def test_the_docs_table_has_exactly_these_rows():
    page = (ROOT / "docs" / "bad-input.md").read_text()
    section = page[page.index("## Bad input"):]
    section = section[:section.find("\n## ", 1)]
    rows = re.findall(r"^\| ([^|]+?) \|", section, flags=re.M)
    assert sorted(r for r in rows if r not in ("input", "---")) == sorted([*CASES, "processes that do not form a group"])


def test_debug_shows_the_traceback(tmp_path, capsys):
    import os

    from rlscope.registry import UnknownName

    with pytest.raises(UnknownName, match="unknown task 'chainsun'"):
        main([*_train(tmp_path, "--task", "chainsun"), "--debug"])
    assert "RLSCOPE_DEBUG" not in os.environ  # debug was for that command only
    assert main(_train(tmp_path, "--task", "chainsun")) == 2


def test_a_launch_whose_processes_do_not_form_a_group_stops_with_the_fix(tmp_path):
    """A MULTI_GPU accelerate config on a CPU machine without ``use_cpu: true``: two processes that each see a world of
    one would run two copies of the run into one directory. Both stop before any work, saying what to set."""
    recipe = tmp_path / "no_cpu.yaml"
    recipe.write_text("".join(line for line in (RECIPES / "tiny_dapo.yaml").read_text().splitlines(keepends=True)
                              if not line.startswith("use_cpu")))
    env = {**os.environ, "RLSCOPE_DEBUG": ""}
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(RECIPES / "accelerate" / "ddp2.yaml"), "-m", "rlscope.train", "--config", str(recipe),
                          "--runs_dir", str(tmp_path / "runs"), *QUICK], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    assert out.returncode != 0
    said = [line for line in out.stderr.splitlines() if line.startswith("rlscope: error: ")]
    # one per process that got to say it: when rank 0 exits first, the launcher may SIGTERM rank 1 before it prints
    assert 1 <= len(said) <= 2, out.stderr[-3000:]
    assert all("2 processes were launched but they did not join one process group" in s and "use_cpu: true" in s
               for s in said)
    assert not (tmp_path / "runs").exists()  # nothing written
