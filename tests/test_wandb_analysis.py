"""The analysis inside W&B: summary items from planted results, and ``rlscope analyze --wandb`` writing into a
finished offline run (read back with rlscope's own .wandb reader). The end-of-recipe path is tested on a real tiny
run in test_readers.py."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict

import pytest

from rlscope.analysis.readers import read_run
from rlscope.analysis.readers import wandb_run
from rlscope.analysis.synthetic import expected_break, write_synthetic_run
from rlscope.cli import main
from rlscope import wandb_io
from rlscope.wandb_io import find_run, summary_items


def test_summary_items_flatten_numbers_intervals_and_text_and_leave_series_out():
    result = {"analyses": {
        "two_stage": {"status": "ok", "verdict": "two stages", "found": True, "break_step": 120,
                      "break_step_ci": [100, 140], "slope": -0.5, "fit_knots": [[1, 2.0], [120, 1.0]],
                      "delta_bic": math.nan, "pattern": "shrink_then_grow"},
        "aha": {"status": "skipped", "verdict": "not measurable: no accuracy", "reason": "no accuracy", "step": None,
                "step_window": [None, None]}}}
    got = summary_items(result)
    assert got == {
        "rlscope/analysis/two_stage/status": "ok", "rlscope/analysis/two_stage/verdict": "two stages",
        "rlscope/analysis/two_stage/found": True, "rlscope/analysis/two_stage/break_step": 120,
        "rlscope/analysis/two_stage/break_step_lo": 100.0, "rlscope/analysis/two_stage/break_step_hi": 140.0,
        "rlscope/analysis/two_stage/slope": -0.5, "rlscope/analysis/two_stage/pattern": "shrink_then_grow",
        "rlscope/analysis/aha/status": "skipped", "rlscope/analysis/aha/verdict": "not measurable: no accuracy",
        "rlscope/analysis/aha/reason": "no accuracy"}


def _mirror_to_wandb_offline(run_dir, monkeypatch):
    """Log a run store's metrics to an offline W&B run inside the run directory (as a run trained with report_to
    wandb before rlscope kept the W&B id in meta.json): every row on rlscope's axis."""
    import wandb

    for var in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    frame = read_run(run_dir)
    rows = defaultdict(dict)
    for name, (steps, values) in frame.raw.items():
        for s, v in zip(steps.tolist(), values.tolist()):
            if math.isfinite(v):
                rows[s][f"train/{name}"] = v
    run = wandb.init(project="rlscope-test", dir=str(run_dir), mode="offline", settings=wandb.Settings(silent=True))
    for step in sorted(rows):
        run.log({**rows[step], "train/rlscope/step": step})
    wandb_io.close(run)
    return run.id


@pytest.mark.slow
def test_analyze_wandb_writes_the_analysis_into_the_finished_offline_run(tmp_path, monkeypatch, capsys):
    run_dir = write_synthetic_run(tmp_path / "syn", steps=300, metrics=8, completions=16)
    run_id = _mirror_to_wandb_offline(run_dir, monkeypatch)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials: the analysis goes offline too
    assert find_run(run_dir)["id"] == run_id and find_run(run_dir)["project"] == "rlscope-test"

    assert main(["analyze", str(run_dir), "--wandb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["wandb"]["id"] == run_id and out["wandb"]["mode"] == "offline"
    analysis = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    two = analysis["analyses"]["two_stage"]
    assert two["found"] and abs(two["break_step"] - expected_break(300)) < 30  # the planted break, found

    # the run now has two sessions with one id: the training, then the analysis; read as one run
    files = wandb_run.run_files(run_dir)
    assert len(files) == 2 and {f.stem for f in files} == {f"run-{run_id}"}
    assert files[0].parent != files[1].parent and not wandb_run.summary(files[0]).get("rlscope/analysis/steps")
    frame = read_run(run_dir / "wandb", fmt="wandb")
    assert frame.meta["sessions"] == 2 and frame.series("entropy")[0].size == 300
    summary = wandb_run.summary(run_dir / "wandb")
    assert summary["rlscope/analysis/two_stage/break_step"] == two["break_step"]
    assert summary["rlscope/analysis/two_stage/break_step_lo"] == pytest.approx(two["break_step_ci"][0])
    assert summary["rlscope/analysis/two_stage/break_step_hi"] == pytest.approx(two["break_step_ci"][1])
    for name, r in analysis["analyses"].items():
        assert summary[f"rlscope/analysis/{name}/verdict"] == r["verdict"]
    media = wandb_run.media(files[1])
    assert {f"rlscope/analysis/figure/{f}" for f in out["wandb"]["figures"]} <= set(media)
    assert {"dynamics", "entropy_law", "length", "passk", "weights"} <= set(out["wandb"]["figures"])
    assert media["rlscope/analysis/report"] == "html-file"
    assert [a["files"] for a in wandb_run.artifacts(files[1]) if a["type"] == "rlscope-analysis"] == \
        [["analysis.json", "report.html"]]


def test_analyze_wandb_on_a_run_that_never_logged_to_wandb_says_what_it_needs(tmp_path, capsys):
    run_dir = write_synthetic_run(tmp_path / "syn", steps=40, metrics=2, completions=4)
    assert main(["analyze", str(run_dir), "--wandb"]) == 2
    assert re.search("did not log to W&B.*report_to wandb", capsys.readouterr().err)
    assert not (run_dir / "analysis").exists()  # nothing done before the message


def test_a_resumed_offline_run_is_read_session_by_session_in_order(tmp_path):
    """Offline W&B names a resumed session's directory by its start second, with -1, -2... when a second repeats."""
    names = ["offline-run-20260101_000005-abc", "offline-run-20260101_000005-abc-1", "offline-run-20260101_000009-abc",
             "offline-run-20250101_000000-zzz"]
    for name in reversed(names):
        d = tmp_path / "wandb" / name
        d.mkdir(parents=True)
        (d / f"run-{name.split('-')[3]}.wandb").write_bytes(b":W&B")
    (tmp_path / "wandb" / "latest-run").symlink_to(tmp_path / "wandb" / names[2])
    assert [f.parent.name for f in wandb_run.run_files(tmp_path)] == names[:3]
