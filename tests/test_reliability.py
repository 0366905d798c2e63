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
