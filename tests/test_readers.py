"""Readers: every format into the same frame, against files written here (no third-party logs), and a clear error for
each malformed input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlscope import wandb_io
from rlscope.analysis.readers import NoStepAxis, detect_format, read_run


def test_trainer_state_with_old_and_new_trl_names(tmp_path):
    old = {"log_history": [{"step": s, "loss": 0.1 * s, "completion_length": 100.0 + s, "clip_ratio": 0.01,
                            "rewards/accuracy_reward": 0.5, "kl": 0.001 * s} for s in (1, 2, 3)]}
    new = {"log_history": [{"step": s, "entropy": 1.0 / s, "completions/mean_length": 50.0 + s,
                            "clip_ratio/region_mean": 0.02, "rewards/accuracy_reward/mean": 0.4, "frac_reward_zero_std": 0.3}
                           for s in (10, 20)] + [{"step": 20, "train_runtime": 5.0, "train_loss": 0.2},
                                                 {"epoch": 1.0}]}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "trainer_state.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    f = read_run(tmp_path / "old")  # a checkpoint directory
    assert f.format == "trainer_state" and f.series("response_length")[1].tolist() == [101, 102, 103]
    assert f.name_of("clip_ratio") == "clip_ratio" and f.name_of("train_accuracy") == "rewards/accuracy_reward"
    assert f.series("kl")[0].tolist() == [1, 2, 3]
    g = read_run(tmp_path / "new.json")
    assert g.series("entropy")[1].tolist() == [0.1, 0.05] and g.name_of("clip_ratio") == "clip_ratio/region_mean"
    assert g.name_of("zero_std_share") == "frac_reward_zero_std" and g.name_of("train_accuracy").endswith("/mean")
    assert "summary/train_runtime" in g.raw and "train_runtime" not in g.raw


def test_tensorboard_events_written_by_torch(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for s in range(1, 11):
        w.add_scalar("actor/entropy", 1.0 / s, s)
        w.add_scalar("response_length/mean", 100.0 + s, s)
        if s % 5 == 0:
            w.add_scalar("val-core/openai/gsm8k/acc/mean@1", 0.1 * s, s)
    w.close()
    assert detect_format(tmp_path / "tb") == "tensorboard"
    f = read_run(tmp_path / "tb")
    steps, ent = f.series("entropy")
    assert steps.tolist() == list(range(1, 11)) and ent == pytest.approx([1.0 / s for s in range(1, 11)], rel=1e-6)
    assert f.series("heldout_accuracy")[1] == pytest.approx([0.5, 1.0])
    assert f.name_of("response_length") == "response_length/mean"


def test_verl_console_lines(tmp_path):
    lines = ["some config {'a': 1}", "Let's solve this step by step: step:2 is not a metric line?",
             "\x1b[36m(main_task pid=1)\x1b[0m step:0 - timing/gen:18.8 - actor/entropy_loss:0.526 - "
             "actor/lr(1e-4):0.010 - critic/score/mean:0.012 - val/test_score/openai/gsm8k:0.013 - note:abc",
             "\x1b[36m(main_task pid=1)\x1b[0m step:1 - actor/entropy_loss:0.481 - critic/score/mean:0.004 - "
             "actor/pg_loss:-0.016"]
    (tmp_path / "run.log").write_text("\n".join(lines) + "\n")
    assert detect_format(tmp_path / "run.log") == "verl_log"
    f = read_run(tmp_path / "run.log")
    assert f.series("entropy")[1].tolist() == [0.526, 0.481] and f.name_of("entropy") == "actor/entropy_loss"
    assert f.series("actor/lr(1e-4)")[1].tolist() == [0.01] and f.series("actor/pg_loss")[1].tolist() == [-0.016]
    assert f.series("heldout_accuracy")[1].tolist() == [0.013] and "note" not in f.raw


def test_csv_wide_wandb_export_and_long(tmp_path):
    (tmp_path / "w.csv").write_text("Step,my-run - train/reward,my-run - train/reward__MIN,my-run - train/reward__MAX,"
                                    "rewards / check_answer,Training Loss,text\n1,0.5,0.4,0.6,1.0,0.3,a\n2,0.7,0.6,0.8,,0.2,b\n")
    f = read_run(tmp_path / "w.csv")
    assert f.format == "csv" and sorted(f.raw) == ["Training Loss", "reward", "rewards/check_answer"]
    assert f.series("reward")[1].tolist() == [0.5, 0.7] and f.series("loss")[1].tolist() == [0.3, 0.2]
    assert f.series("rewards/check_answer")[0].tolist() == [1]  # the empty cell is not a value
    (tmp_path / "l.csv").write_text("step,name,value\n1,entropy,0.5\n2,entropy,0.4\n2,entropy,0.45\n")
    assert read_run(tmp_path / "l.csv").series("entropy")[1].tolist() == [0.5, 0.45]  # the last write wins


def test_malformed_inputs_get_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here\n")
    with pytest.raises(ValueError, match=r"cannot tell the log format of .*notes\.txt.*--format NAME"):
        read_run(tmp_path / "notes.txt")
    (tmp_path / "nostep.csv").write_text("a,b\n1,2\n")
    with pytest.raises(NoStepAxis, match="no step column"):
        read_run(tmp_path / "nostep.csv")
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    with pytest.raises(NoStepAxis, match="no log_history"):
        read_run(tmp_path / "trainer_state.json")
    (tmp_path / "bad.json").write_text('{"log_history": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run(tmp_path / "bad.json")
    (tmp_path / "run-x.wandb").write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        read_run(tmp_path / "run-x.wandb")
    with pytest.raises(FileNotFoundError, match="no run or log"):
        read_run(tmp_path / "missing")
    from rlscope.registry import UnknownName

    with pytest.raises(UnknownName, match="unknown log format 'tensorbord'. Did you mean 'tensorboard'"):
        read_run(tmp_path / "nostep.csv", fmt="tensorbord")


def test_wandb_api_rows_with_a_fake_client(monkeypatch):
    import wandb

    class FakeRun:
        name = "fake"

        def scan_history(self):
            for s in range(1, 4):
                yield {"train/global_step": s, "train/reward": 0.1 * s, "_step": s - 1, "train/text": "x"}

    class FakeApi:
        def run(self, path):
            assert path == "me/proj/abc123"
            return FakeRun()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    f = read_run("wandb://me/proj/abc123")
    assert f.format == "wandb_api" and f.series("reward")[1] == pytest.approx([0.1, 0.2, 0.3])
    assert f.series("reward")[0].tolist() == [1, 2, 3]


@pytest.mark.slow
def test_an_rlscope_run_reads_back_from_its_offline_wandb_file_like_the_store(tmp_path, monkeypatch):
    """A real tiny run with an SFT warm start (so rlscope's axis is offset from the trainer's) logged to W&B offline:
    the .wandb file, read with wandb's protobuf classes, gives the store's series on the same steps -- the SFT phase's
    too -- and holds the end-of-run analysis: summary, figures, report panel and artifact."""
    from helpers import run_recipe

    from rlscope.analysis.readers import wandb_run

    for var in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials: offline
    s = run_recipe(tmp_path, "tiny_sft_then_dapo.yaml", "--sft_steps", "3", "--sft_batch_size", "8",
                   "--max_steps", "3", "--run_name", "w", "--report_to", "wandb", "--eval_heldout", "false",
                   "--dynamic_sampling", "false", "--probes", "entropy", "cov", "behavior",
                   "--probe_every", '{"passk": "off", "weights": "off"}', "--probe_options", '{"tokens": {"table_every": 0}}')
    import wandb

    assert wandb.run is None  # the recipe finished its W&B run
    store = read_run(tmp_path / "w")
    wb = read_run(tmp_path / "w" / "wandb", fmt="wandb")
    assert wb.meta["step_offset"] == 3 and wb.meta["complete"]
    for name in ("rlscope/entropy/mean", "rlscope/cov/mean", "rlscope/behavior/length_mean", "loss", "reward",
                 "entropy", "grad_norm", "sft/loss", "sft/grad_norm", "sft/summary/train_runtime"):
        s1, v1 = store.series(name, rl_only=False)
        s2, v2 = wb.series(name, rl_only=False)
        assert s1.tolist() == s2.tolist(), name
        # TRL logs the reward on the steps that generated (steps_per_generation 2), the rest every step
        expected = [1, 2, 3] if name in ("sft/loss", "sft/grad_norm") else [3] if name.startswith("sft/summary") \
            else [4, 6] if name == "reward" else [4, 5, 6]
        assert s1.tolist() == expected, name
        assert v2 == pytest.approx(v1, rel=1e-6), name
    # every row of the run is on rlscope's axis, the trainer's own rows included
    rows, _ = wandb_run.history_rows(wandb_run.run_files(tmp_path / "w" / "wandb")[0])
    trainer_rows = [r for r in rows if "train/loss" in r or "train/sft/loss" in r]
    assert trainer_rows and all("train/rlscope/step" in r for r in trainer_rows)
    # the analysis at the end of the run, in the same W&B run
    analysis = json.loads((tmp_path / "w" / "analysis" / "analysis.json").read_text())
    summary = wandb_run.summary(tmp_path / "w" / "wandb")
    for name, r in analysis["analyses"].items():
        assert summary[f"rlscope/analysis/{name}/status"] == r["status"]
        assert summary[f"rlscope/analysis/{name}/verdict"] == r["verdict"]
    assert summary["rlscope/analysis/health/severity"] == analysis["analyses"]["health"]["severity"]
    media = wandb_run.media(tmp_path / "w" / "wandb")
    drawn = s["analysis"]["wandb"]["figures"]
    assert drawn and "dynamics" in drawn
    assert {f"rlscope/analysis/figure/{f}" for f in drawn} <= {k for k, v in media.items() if v == "image-file"}
    assert media["rlscope/analysis/report"] == "html-file" and media["rlscope/analysis/verdicts"] == "table-file"
    run_dir = wandb_run.run_files(tmp_path / "w" / "wandb")[0].parent
    for f in drawn:  # the images W&B will upload are the report's figures, rendered
        png = next((run_dir / "files" / "media" / "images" / "rlscope" / "analysis" / "figure").glob(f"{f}_*.png"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = next((run_dir / "files" / "media" / "html" / "rlscope" / "analysis").glob("report_*.html")).read_text()
    assert html == (tmp_path / "w" / "analysis" / "report.html").read_text()
    artifact = next(a for a in wandb_run.artifacts(tmp_path / "w" / "wandb") if a["type"] == "rlscope-analysis")
    assert sorted(artifact["files"]) == ["analysis.json", "report.html"]
    assert json.loads((tmp_path / "w" / "meta.json").read_text())["wandb"]["mode"] == "offline"


def test_a_torn_wandb_file_keeps_what_came_before(tmp_path):
    import os

    import wandb

    os.environ["WANDB_SILENT"] = "true"
    run = wandb.init(project="t", dir=str(tmp_path), mode="offline", config={})
    for s in range(1, 41):
        wandb.log({"train/global_step": s, "train/reward": float(s), "train/pad": "x" * 2000})
    wandb_io.close(run)  # finish() alone can return before the file is whole (1 in 30)
    path = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    whole = read_run(path)
    assert whole.meta["complete"] and whole.series("reward")[0].tolist() == list(range(1, 41))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    torn = read_run(path)
    steps = torn.series("reward")[0].tolist()
    assert not torn.meta["complete"] and 5 <= len(steps) < 40 and steps == list(range(1, len(steps) + 1))
    assert all(not math.isnan(v) for v in torn.series("reward")[1])
    assert np.array_equal(torn.series("reward")[1], np.arange(1, len(steps) + 1, dtype=float))
