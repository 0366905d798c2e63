"""Reliability on real tiny runs: torn and corrupt store files, faults inside a run, two writers (issue 14)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from conftest import RECIPES

from rlscope.cli import main
from rlscope.errors import UsageError
from rlscope.store import RunReader

QUIET = ("--console", "none", "--report_to", "none", "--analyze", "false")


def _train(runs_dir, *args: str) -> int:
    return main(["train", "--config", str(RECIPES / "tiny_dapo.yaml"), "--runs_dir", str(runs_dir), *QUIET, *args])


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_sft_path):
    """A real 3-step tiny DAPO run with every stream: metrics, rollouts, evals, passk, weights."""
    runs = tmp_path_factory.mktemp("runs")
    assert _train(runs, "--run_name", "r", "--max_steps", "3", "--task_config", '{"seed": 0, "n_heldout": 6}',
                  "--eval_samples", "0", "--probe_every", '{"passk": 1, "weights": 2}',
                  "--probe_options", '{"passk": {"n": 2, "max_prompts": 3}}') == 0
    return runs / "r"


def _whole_lines_before(data: bytes, cut: int) -> int:
    """Records whole before byte ``cut``: those with their newline, and one that lost only its newline."""
    return data[:cut].count(b"\n") + (0 < cut < len(data) and data[cut:cut + 1] == b"\n")


def test_every_store_file_torn_anywhere_keeps_every_record_before_the_tear(real_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    reader = RunReader(run)
    streams = {p.stem: p for p in run.glob("*.jsonl")}
    assert sorted(streams) == ["evals", "metrics", "passk", "rollouts", "weights"]
    originals = {name: reader.records(name) for name in streams}
    rng = random.Random(0)
    for name, path in streams.items():
        data = path.read_bytes()
        cuts = sorted({0, 1, len(data) - 1, len(data) - 2, *(rng.randrange(len(data)) for _ in range(25)),
                       *(i + d for i in [data.index(b"\n")] for d in (0, 1))})
        for cut in cuts:
            path.write_bytes(data[:cut])
            n = _whole_lines_before(data, cut)
            assert RunReader(run).records(name) == originals[name][:n], (name, cut)
            if name == "metrics":
                table = RunReader(run).metric_records()
                assert table.num_rows == n and table.column("step").to_pylist() == \
                    [r["step"] for r in originals[name][:n]]
            if name == "rollouts":
                assert RunReader(run).rollouts().num_rows == n
        path.write_bytes(data)
    # the single-document files are replaced atomically by the writer; damaged anyway, they are named (or skipped)
    for name in ("meta.json", "config.yaml"):
        path = run / name
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2] + b"\x00{[")
        read = RunReader(run).meta if name == "meta.json" else RunReader(run).config
        with pytest.raises(UsageError, match=rf"{name} is unreadable .* --salvage"):
            read()
        salvaged = RunReader(run, salvage=True)
        assert (salvaged.meta() if name == "meta.json" else salvaged.config()) == {}
        assert salvaged.skipped == {name: "unreadable"}
        path.write_bytes(data)


def test_a_corrupt_line_in_the_middle_is_named_and_salvage_reads_around_it(real_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    shutil.rmtree(run / "analysis", ignore_errors=True)
    path = run / "metrics.jsonl"
    lines = path.read_bytes().split(b"\n")
    original = RunReader(run).records("metrics")
    lines[4] = b'{"step": 1, "name": "reward", "val'  # a damaged record with whole ones after it
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UsageError, match=r"metrics.jsonl: line 5 is corrupt .*--salvage"):
        RunReader(run).metric_records()
    capsys.readouterr()
    assert main(["analyze", str(run)]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl: line 5 is corrupt" in err and "Traceback" not in err
    assert main(["analyze", str(run), "--salvage", "--json"]) == 0
    out = capsys.readouterr()
    assert "--salvage left out of" in out.err and "metrics.jsonl: lines 5" in out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["meta"]["skipped"] == {"metrics.jsonl": [5]}
    salvaged = RunReader(run, salvage=True)
    assert salvaged.records("metrics") == original[:4] + original[5:]
    assert main(["report", str(run), "--salvage", "--json"]) == 0


def test_a_second_run_into_a_finished_runs_directory_is_refused_unless_it_resumes_or_overwrites(real_run, tmp_path,
                                                                                                capsys):
    runs = tmp_path / "runs"
    shutil.copytree(real_run, runs / "r")
    before = (runs / "r" / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert _train(runs, "--run_name", "r", "--max_steps", "1") == 2
    err = capsys.readouterr().err
    assert "already holds a run (status finished)" in err and "--resume_from_checkpoint true" in err
    assert (runs / "r" / "metrics.jsonl").read_bytes() == before  # nothing touched
    assert _train(runs, "--run_name", "r", "--max_steps", "1", "--eval_heldout", "false", "--overwrite", "true") == 0
    steps = [r["step"] for r in RunReader(runs / "r").records("metrics")]
    assert set(steps) == {1} and not (runs / "r" / "passk.jsonl").exists()  # started over: only the new run's step


def test_a_second_run_while_the_first_is_alive_is_refused_by_the_lock(tmp_path, tiny_sft_path):
    import os
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    first = subprocess.Popen([sys.executable, "-m", "rlscope.train", "--config", str(RECIPES / "tiny_dapo.yaml"),
                              "--runs_dir", str(runs), "--run_name", "r", "--max_steps", "200", *QUIET,
                              "--eval_heldout", "false"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "RLSCOPE_DEBUG": ""})
    try:
        deadline = time.time() + 120
        while not (runs / "r" / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        second = subprocess.run([sys.executable, "-m", "rlscope.train", "--config", str(RECIPES / "tiny_dapo.yaml"),
                                 "--runs_dir", str(runs), "--run_name", "r", "--max_steps", "1", *QUIET,
                                 "--overwrite", "true"], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "RLSCOPE_DEBUG": ""})
        assert second.returncode == 2
        assert f"is in use by another run (pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


class NaNLogitsAt:
    """Fault injection: the logits of the loss's forward pass (grad enabled) are NaN during one optimizer step. TRL
    computes the loss's logits from the last hidden states itself (not through ``lm_head``'s forward), so the fault
    goes into the final norm's output, which feeds them."""

    def __init__(self, step: int):
        from transformers import TrainerCallback

        self.step, self.state = step, None
        injector = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                import torch

                injector.state = state

                def hook(module, inputs, output):
                    if torch.is_grad_enabled() and injector.state.global_step + 1 == injector.step:
                        return output * float("nan")
                    return output

                model.model.norm.register_forward_hook(hook)

        self.callback = _CB()


def _run_with_nan(runs, name, mode, max_steps=4):
    from rlscope.recipe import parse_recipe
    from rlscope.train import run

    argv = ["--config", str(RECIPES / "tiny_dapo.yaml"), "--runs_dir", str(runs), "--run_name", name,
            "--max_steps", str(max_steps), "--eval_heldout", "false", "--nonfinite", mode, "--save_strategy", "steps",
            "--save_steps", "1", "--save_total_limit", "10", *QUIET]
    return run(*parse_recipe(argv), quiet=True, callbacks=(NaNLogitsAt(2).callback,))


def _weights(checkpoint):
    from safetensors.torch import load_file

    return load_file(str(next(checkpoint.glob("*.safetensors"))))


def test_nan_logits_in_one_step_are_flagged_and_kept_out_of_the_weights(tmp_path, tiny_sft_path):
    import math

    import torch

    s = _run_with_nan(tmp_path, "skip", "skip_step")
    run = tmp_path / "skip"
    metrics = {(r["step"], r["name"]): r["value"] for r in RunReader(run).records("metrics")}
    assert [metrics[(k, "rlscope/nonfinite/steps")] for k in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 0.0]
    assert metrics[(2, "rlscope/nonfinite/params")] > 0 and s["nonfinite_steps"] == 1
    assert metrics[(2, "loss")] is None  # NaN, stored as null: flagged, not a number
    assert all(metrics[(k, "loss")] is not None and math.isfinite(metrics[(k, "loss")]) for k in (1, 3, 4))
    assert metrics[(2, "rlscope/entropy/nan_share")] == 1.0  # the token probes flag it too
    ckpt = run / "checkpoints"
    w1, w2, w4 = (_weights(ckpt / f"checkpoint-{k}") for k in (1, 2, 4))
    assert all(torch.equal(w1[n], w2[n]) for n in w1)  # step 2 left the weights as they were
    assert all(torch.isfinite(w).all() for w in w4.values()) and any(not torch.equal(w2[n], w4[n]) for n in w2)
    assert RunReader(run).meta()["status"] == "finished"


def test_nan_logits_with_flag_only_show_the_damage_and_stop_mode_stops(tmp_path, tiny_sft_path):
    import torch

    # flag only: the update goes through, the weights turn NaN, and the next sampling fails in generate -- what
    # skip_step prevents; the store says which step it was and meta.json why the run failed
    with pytest.raises(RuntimeError, match="probability tensor contains either `inf`, `nan`"):
        _run_with_nan(tmp_path, "flag", "flag", max_steps=4)
    w2 = _weights(tmp_path / "flag" / "checkpoints" / "checkpoint-2")
    assert any(not torch.isfinite(w).all() for w in w2.values())
    metrics = {(r["step"], r["name"]): r["value"] for r in RunReader(tmp_path / "flag").records("metrics")}
    assert metrics[(2, "rlscope/nonfinite/steps")] == 1.0
    meta = RunReader(tmp_path / "flag").meta()
    assert meta["status"] == "failed" and "probability tensor" in meta["error"]
    s = _run_with_nan(tmp_path, "stop", "stop")
    assert s["rl_steps"] == 2 and s["stopped"]["by"] == "nonfinite" and s["stopped"]["step"] == 2
    assert RunReader(tmp_path / "stop").meta()["status"].startswith("stopped: NaN/inf gradients")
    w1, w2 = (_weights(tmp_path / "stop" / "checkpoints" / f"checkpoint-{k}") for k in (1, 2))
    assert all(torch.equal(w1[n], w2[n]) for n in w1)


def test_wandb_unreachable_online_falls_back_offline_and_the_api_key_is_nowhere(tmp_path, tiny_sft_path,
                                                                                  monkeypatch):
    """Credentials present, W&B's host unreachable: the run opens offline after the init timeout, trains to the
    end with a complete store, and its offline W&B files are there for ``wandb sync``. The API key appears in no
    file of the run (store, config copy, meta.json, W&B's own files, the report)."""
    from rlscope.analysis.readers import read_run

    key = "local-" + "5eC2e7" * 7
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: connection refused
    monkeypatch.setenv("RLSCOPE_WANDB_INIT_TIMEOUT", "5")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    runs = tmp_path / "runs"
    assert main(["train", "--config", str(RECIPES / "tiny_dapo.yaml"), "--runs_dir", str(runs), "--run_name", "w",
                 "--max_steps", "2", "--eval_heldout", "false", "--console", "none", "--report_to", "wandb"]) == 0
    run = runs / "w"
    meta = RunReader(run).meta()
    assert meta["status"] == "finished" and meta["wandb"]["mode"] == "offline"
    assert "W&B was unreachable (CommError" in meta["wandb"]["fallback"]
    assert sorted({r["step"] for r in RunReader(run).records("metrics")}) == [1, 2]
    offline = read_run(run / "wandb")  # the offline W&B run holds what the store holds, ready for wandb sync
    for name in ("loss", "reward", "rlscope/entropy/mean"):
        assert list(offline.series(name)[0]) == RunReader(run).series(name)[0], name
    assert offline.meta["complete"]
    assert (run / "analysis" / "report.html").exists()
    leaked = [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not leaked, f"the W&B API key is written in {leaked}"


HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07 \u202eevil [bold red]loud[/] \x9b31m"


def test_model_text_reaches_the_terminal_as_visible_escapes():
    import io

    from rich.console import Console

    from rlscope.analysis.analyze import print_table
    from rlscope.common import terminal_safe

    safe = terminal_safe(HOSTILE)
    assert safe == "ok\\x1b[2J\\x1b]0;pwned\\x07 \\u202eevil [bold red]loud[/] \\x9b31m"
    assert terminal_safe("a\tb\nc") == "a\tb\nc"
    # a verdict quoting model text (planning_tokens quotes grams of completions) in the analyze table
    result = {"source": "x", "format": "rlscope", "steps": 3,
              "analyses": {"planning_tokens": {"status": "ok", "verdict": f"grams (e.g. {HOSTILE!s})"}}}
    buf = io.StringIO()
    print_table(result, console=Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert not any(c in out for c in "\x1b\x07\x9b\u202e")
    assert "[bold red]loud[/]" in out  # rich markup in model text is shown, not obeyed
