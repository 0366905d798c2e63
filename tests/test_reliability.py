"""Reliability on real tiny runs: torn and corrupt store files, faults inside a run, two writers (issue 14)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
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
                                                                                  monkeypatch, capfd):
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
    printed = capfd.readouterr()
    assert key not in printed.out and key not in printed.err  # nor in the run's console output


def test_no_pickle_is_loaded_from_files_rlscope_did_not_write():
    """Every torch.load in rlscope passes weights_only=True (tensors and plain containers, no code); nothing
    imports pickle; checkpoints' own state (rlscope_state-rank*) is JSON and safetensors."""
    import ast

    from conftest import ROOT

    for path in (ROOT / "src" / "rlscope").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path}:{node.lineno}: torch.load without weights_only=True"


HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07 \u202eevil [bold red]loud[/] \x9b31m"


def test_model_text_reaches_the_terminal_as_visible_escapes():
    import io

    from rich.console import Console

    from rlscope.analysis.analyze import print_table
    from rlscope.safe_text import terminal_safe

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


# -- kill -9 and resume -------------------------------------------------------------------------------------------

TIMING = ("seconds", "step_time", "profiling/", "train_runtime", "_per_second", "summary/train_loss")


def _comparable(run, stream: str) -> list[dict]:
    """A stream's records without wall-clock timings (and the Trainer's end-of-session mean loss, which averages
    only the steps the session ran)."""
    out = []
    for r in RunReader(run).records(stream):
        if any(t in str(r.get("name", "")) for t in TIMING):
            continue
        out.append({k: v for k, v in r.items() if "seconds" not in k})
    return out


KILL_ARGS = ("--max_steps", "8", "--save_steps", "2", "--save_total_limit", "10", "--task_config",
             '{"seed": 0, "n_heldout": 6}', "--eval_samples", "0", "--probe_every", '{"passk": 2, "weights": 2}',
             "--probe_options", '{"passk": {"n": 2, "max_prompts": 3}}', "--console", "none", "--report_to", "none")


def _launch(runs, name, *extra):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "rlscope.train", "--config", str(RECIPES / "tiny_dapo.yaml"),
                             "--runs_dir", str(runs), "--run_name", name, *KILL_ARGS, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "RLSCOPE_DEBUG": ""})


def _kill_during_step(proc, run, after_step: int, group: bool = False) -> None:
    """SIGKILL once the run has logged ``after_step`` (a checkpoint exists before it): it is inside the next step.
    ``group``: every process of the launch (the launcher started its own session)."""
    import os
    import signal
    import time

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        path = run / "metrics.jsonl"
        if path.exists() and any(f'"step": {after_step},' in line for line in path.read_text().splitlines()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_sft_path):
    runs = tmp_path_factory.mktemp("uninterrupted")
    proc = _launch(runs, "r")
    assert proc.wait() == 0, proc.stderr.read().decode()[-3000:]
    return runs / "r"


@pytest.mark.parametrize("torn", [False, True], ids=["mid-step", "mid-record"])
def test_kill_9_and_resume_logs_what_an_uninterrupted_run_would(uninterrupted, tmp_path, torn):
    """A real run SIGKILLed inside step 6 (checkpoint-4 on disk; "mid-record": also the half-written record a kill
    during a store write leaves, in every stream), resumed with --resume_from_checkpoint true: every stream holds each
    step once and equals the uninterrupted run's record for record -- metrics, rollouts, held-out evals, pass@k
    (its base curve measured once, before the first update), weight geometry (W_0 kept; the previous dominant
    direction of dW restored, so dw_dir_cos at step 6 is measured as it was), the entropy probe's first-step
    threshold, the dynamic-sampling refill RNG. On CPU the computation is deterministic, so equal means equal."""
    runs = tmp_path / "runs"
    run = runs / "r"
    _kill_during_step(_launch(runs, "r"), run, after_step=5)
    assert (run / "checkpoints" / "checkpoint-4").is_dir()
    assert RunReader(run).meta()["status"] == "running"  # killed: nothing could record it
    w0 = {p.name: p.read_bytes() for p in (run / "weights" / "w0").iterdir()}
    if torn:
        for stream in ("metrics", "rollouts", "passk", "weights", "evals"):
            path = run / f"{stream}.jsonl"
            last = path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
            with open(path, "ab") as f:
                f.write(last[:len(last) // 2])  # what a kill during the write of a record leaves
        # and what a kill during the save of checkpoint-6 leaves: its weights, not yet its trainer state
        half = run / "checkpoints" / "checkpoint-6"
        half.mkdir(exist_ok=True)
        shutil.copy(run / "checkpoints" / "checkpoint-4" / "model.safetensors", half / "model.safetensors")
        (half / "trainer_state.json").unlink(missing_ok=True)
        with pytest.raises(UsageError, match=r"checkpoint-6: an incomplete checkpoint \(no trainer_state.json.*"
                                             r"complete checkpoints of this run: .*checkpoint-4"):
            from rlscope.preflight import resume_target

            resume_target(str(half), run / "checkpoints")
    proc = _launch(runs, "r", "--resume_from_checkpoint", "true")  # the latest complete checkpoint
    assert proc.wait() == 0, proc.stderr.read().decode()[-3000:]
    assert RunReader(run).meta()["status"] == "finished"
    for stream in ("metrics", "rollouts", "evals", "passk", "weights"):
        got, want = _comparable(run, stream), _comparable(uninterrupted, stream)
        assert got, stream
        assert len(got) == len(want), (stream, len(got), len(want))
        assert got == want, stream
    keys = [(r["step"], r["name"]) for r in RunReader(run).records("metrics")]
    assert len(keys) == len(set(keys))
    assert [(r["step"], r["kind"]) for r in RunReader(run).records("passk")] == \
        [(0, "base"), (2, "current"), (4, "current"), (6, "current"), (8, "current")]
    assert {p.name: p.read_bytes() for p in (run / "weights" / "w0").iterdir()} == w0
    cos = {r["step"]: r["value"] for r in RunReader(run).records("metrics") if r["name"] == "rlscope/weights/dw_dir_cos_left"}
    assert cos[6] is not None and 0 < cos[6] <= 1  # the direction of step 4 came back from the store
    # the dynamic-sampling refill RNG was exercised after the resume point, and reproduced
    batches = {r["step"]: r["value"] for r in RunReader(run).records("metrics")
               if r["name"] == "rlscope/dynamic_sampling/generation_batches"}
    assert any(v > 1 for s, v in batches.items() if s > 4), batches


@pytest.mark.parametrize("recipe,steps,resume_at", [("tiny_interleave_relift", 10, 3),
                                                    ("tiny_interleave_heat_on_low_accuracy", 12, 5)])
def test_a_resumed_schedule_decides_as_the_uninterrupted_run(recipe, steps, resume_at, tmp_path, tiny_sft_path):
    """ReLIFT's buffer of unsolved prompts and HEAT's cooldown live in the schedule: saved in every checkpoint with
    the trainer's RNGs and TRL's buffered rollouts (checkpoint 3 falls inside a generation cycle), a run resumed from
    a checkpoint takes the same SFT steps and logs the same records."""
    runs = tmp_path / "runs"
    args = ["train", "--config", str(RECIPES / f"{recipe}.yaml"), "--runs_dir", str(runs), "--max_steps", str(steps),
            "--eval_heldout", "false", "--console", "none", "--report_to", "none", "--analyze", "false",
            "--save_steps", "1", "--save_total_limit", "20"]
    assert main([*args, "--run_name", "a"]) == 0
    shutil.copytree(runs / "a", runs / "b")
    assert main([*args, "--run_name", "b", "--resume_from_checkpoint",
                 str(runs / "b" / "checkpoints" / f"checkpoint-{resume_at}")]) == 0
    decided = [RunReader(runs / r).meta()["summary"]["schedule"]["sft_steps"] for r in ("a", "b")]
    assert decided[0] == decided[1] and any(s > resume_at for s in decided[0]), decided
    for stream in ("metrics", "rollouts"):
        assert _comparable(runs / "b", stream) == _comparable(runs / "a", stream), stream


def test_a_full_disk_under_the_store_stops_the_run_with_what_to_do_and_the_checkpoints_intact(tmp_path,
                                                                                              tiny_sft_path):
    """At step 3 the store's disk fills up (its metrics file now writes to /dev/full: the kernel answers ENOSPC).
    The run stops with one message naming the file, what is intact and how to go on; checkpoint-2 is whole; once
    there is space again the run resumes from it and ends with every step stored once."""
    import os

    from transformers import TrainerCallback

    from rlscope.recipe import parse_recipe
    from rlscope.store import StoreFull
    from rlscope.train import RecipeRun

    runs = tmp_path / "runs"
    run = runs / "r"
    argv = ["--config", str(RECIPES / "tiny_dapo.yaml"), "--runs_dir", str(runs), "--run_name", "r", "--max_steps",
            "6", "--eval_heldout", "false", "--save_steps", "2", "--save_total_limit", "10", *QUIET]
    holder = {}

    class DiskFills(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                writer = holder["run"].obs.writer
                writer.close()  # the next record reopens the file -- on a full disk
                os.replace(run / "metrics.jsonl", tmp_path / "metrics.saved")
                os.symlink("/dev/full", run / "metrics.jsonl")

    recipe = RecipeRun(*parse_recipe(argv), quiet=True, callbacks=(DiskFills(),))
    holder["run"] = recipe
    with pytest.raises(StoreFull, match=r"no space left to write .*metrics.jsonl \(No space left on device\): the run "
                                        r"stops here; its checkpoints so far are intact .*--resume_from_checkpoint"):
        recipe.run()
    assert RunReader(run).meta()["status"] == "failed" and "No space left" in RunReader(run).meta()["error"]
    checkpoint = run / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "model.safetensors").is_file()
    # space again: the metrics file comes back, the run resumes from its last checkpoint
    os.unlink(run / "metrics.jsonl")
    os.replace(tmp_path / "metrics.saved", run / "metrics.jsonl")
    assert _train(runs, "--run_name", "r", "--max_steps", "6", "--eval_heldout", "false", "--save_steps", "2",
                  "--resume_from_checkpoint", "true") == 0
    keys = [(r["step"], r["name"]) for r in RunReader(run).records("metrics")]
    assert len(keys) == len(set(keys)) and sorted({k[0] for k in keys}) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("probe", ["explode", "explode_on_rank1"])
def test_a_probe_that_raises_on_one_rank_of_two_is_disabled_everywhere_without_a_hang(tmp_path, tiny_sft_path, probe):
    """Two real processes (DDP, gloo), at step 2. ``explode`` runs on the main process (the tokens gathered there)
    and raises there: rank 1 learns at the next step that the probe is off and stops collecting for it.
    ``explode_on_rank1`` runs per rank (exact reductions) and raises on rank 1 between two collectives: rank 0 learns
    it from the next collective's header instead of waiting in it. Either way: no hang, a warning naming the probe,
    ``rlscope/<probe>/failed`` at step 2, the per-rank entropy probe beside it goes on, training runs to the end."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "RLSCOPE_DEBUG": "", "PYTHONPATH": str(ROOT / "tests") + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(RECIPES / "accelerate" / "ddp2.yaml"), str(ROOT / "tests" / "fault_probe.py"),
                          "--config", str(RECIPES / "tiny_dapo.yaml"), "--runs_dir", str(tmp_path / "runs"),
                          "--run_name", "p", "--max_steps", "4", "--probes", probe, "entropy", *QUIET,
                          "--eval_heldout", "false"], capture_output=True, text=True, env=env, timeout=420,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"probe '{probe}' raised at step 2 (ZeroDivisionError: planted fault in probe {probe}); it is disabled " \
           "on all ranks" in out.stderr
    run = tmp_path / "runs" / "p"
    metrics = {(r["step"], r["name"]): r["value"] for r in RunReader(run).records("metrics")}
    first = "calls" if probe == "explode" else "n_tokens"
    assert (1, f"rlscope/{probe}/{first}") in metrics and metrics[(2, f"rlscope/{probe}/failed")] == 1.0
    assert not [k for k in metrics if k[1] == f"rlscope/{probe}/{first}" and k[0] > 1]
    assert all((s, "loss") in metrics and (s, "rlscope/entropy/mean") in metrics for s in (1, 2, 3, 4))
    meta = RunReader(run).meta()
    assert meta["status"] == "finished" and meta["world_size"] == 2
    assert meta["summary"]["probe_errors"][probe]["step"] == 2


def _source_fault_worker(rank: int, port: int, out: str):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from accelerate import Accelerator

    from rlscope.callbacks.sources import Context
    from rlscope.callbacks.sources.tokens import TokenSource
    from rlscope.probes import get_probe
    from test_probes import random_batch

    class Tap:
        armed = True

        def drain(self):
            return ["a micro-batch"]

    def local_batch(records, need_text):
        if rank == 1:
            raise ValueError("planted fault in the tokens source")
        return random_batch(0)

    source = TokenSource()
    source.accelerator, source.tap, source.report_wandb = Accelerator(cpu=True), Tap(), False
    source._local_batch = local_batch
    ctx = Context(step=2, trainer_step=2, when="step", model=None, tokenizer=None, is_main=rank == 0, engine=None)
    try:
        source.collect(ctx, [get_probe("entropy")])
        outcome = "collected"
    except Exception as exc:  # noqa: BLE001 -- the outcome is the test's subject
        outcome = f"{type(exc).__name__}: {exc}"
    Path(out, f"rank{rank}.txt").write_text(outcome)
    torch.distributed.destroy_process_group()


def test_a_fault_in_the_tokens_source_on_one_rank_stops_every_rank_before_any_collective(tmp_path):
    """Two real processes: rank 1's tokens source raises while building its batch (decoding, features), before any
    collective of the step. The ranks agree on that first, so rank 0 stops at once with a message pointing at the
    other rank -- instead of going on into the probes' collectives, where it would wait for rank 1 until the
    backend's timeout under a launcher that does not kill the other ranks."""
    import torch.multiprocessing as mp

    from helpers import _free_port

    mp.spawn(_source_fault_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank1.txt").read_text() == "ValueError: planted fault in the tokens source"
    assert (tmp_path / "rank0.txt").read_text().startswith("RuntimeError: rlscope tokens source: another rank failed "
                                                           "while collecting step 2's tokens")


def _launch_ddp(runs, name, *extra):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                             str(RECIPES / "accelerate" / "ddp2.yaml"), "-m", "rlscope.train", "--config",
                             str(RECIPES / "tiny_dapo.yaml"), "--runs_dir", str(runs), "--run_name", name,
                             *KILL_ARGS, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "RLSCOPE_DEBUG": ""}, start_new_session=True)


def test_kill_9_of_a_two_process_run_and_resume_logs_what_an_uninterrupted_one_would(tmp_path, tiny_sft_path):
    """DDP with two real processes (gloo): every process of the launch SIGKILLed inside step 6, resumed on two
    processes from the latest checkpoint (each rank's own RNGs and buffered rollouts come back), equals an
    uninterrupted two-process run in every stream."""
    ref = _launch_ddp(tmp_path / "ref", "r")
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-3000:]
    runs = tmp_path / "runs"
    run = runs / "r"
    _kill_during_step(_launch_ddp(runs, "r"), run, after_step=5, group=True)
    assert sorted(p.name for p in (run / "checkpoints" / "checkpoint-4").glob("rlscope_state-rank*.json")) == \
        ["rlscope_state-rank0.json", "rlscope_state-rank1.json"]
    resumed = _launch_ddp(runs, "r", "--resume_from_checkpoint", "true")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-3000:]
    assert RunReader(run).meta()["world_size"] == 2
    for stream in ("metrics", "rollouts", "evals", "passk", "weights"):
        assert _comparable(run, stream) == _comparable(tmp_path / "ref" / "r", stream), stream


def test_empty_completions_for_a_step_are_flagged_and_training_goes_on(tmp_path, tiny_sft_path):
    """Fault injection: during the generation of step 3 the model puts all its weight on EOS, so every completion
    is empty. The step's metrics say so (behavior/empty_share 1, completions of length 0, the rewards all equal so
    dynamic sampling tops the batch up and flags it), no metric is NaN where a number is expected, and the run
    trains on to the end."""
    import math

    import torch
    from transformers import TrainerCallback

    from rlscope.recipe import parse_recipe
    from rlscope.train import run

    class EmptyAt(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            eos = processing_class.eos_token_id

            def hook(module, inputs, output):
                if not torch.is_grad_enabled() and state.global_step + 1 == 3:  # generation of step 3
                    output = output.clone()
                    output[..., eos] = 1e4
                return output

            model.lm_head.register_forward_hook(hook)

    argv = ["--config", str(RECIPES / "tiny_dapo.yaml"), "--runs_dir", str(tmp_path), "--run_name", "e",
            "--max_steps", "4", "--eval_heldout", "false", "--max_generation_batches", "2", *QUIET]
    s = run(*parse_recipe(argv), quiet=True, callbacks=(EmptyAt(),))
    assert s["rl_steps"] == 4
    metrics = {(r["step"], r["name"]): r["value"] for r in RunReader(tmp_path / "e").records("metrics")}
    assert metrics[(3, "rlscope/behavior/empty_share")] == 1.0
    assert metrics[(1, "rlscope/behavior/empty_share")] < 1.0
    assert metrics[(3, "rlscope/dynamic_sampling/filled_share")] == 1.0  # all-equal rewards: no gradient, flagged
    rows = [r for r in RunReader(tmp_path / "e").records("rollouts") if r["step"] == 3]
    assert rows and all(r["completion"] == "" and r["advantage"] == 0.0 for r in rows)
    for name in ("loss", "rlscope/entropy/mean", "rlscope/cov/mean"):
        assert all(metrics.get((k, name)) is not None and math.isfinite(metrics[(k, name)]) for k in (1, 2, 4)), name
