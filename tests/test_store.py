import json

import pytest

from rlscope.store import RunReader, RunWriter


def test_roundtrip_long_format(tmp_path):
    w = RunWriter(tmp_path)
    w.write_config({"a": 1})
    w.write_meta({"world_size": 2})
    w.log_metrics(1, {"reward": 0.5, "rlscope/x": 2, "skip": "text", "flag": True})
    w.log_metrics(2, {"reward": float("nan")})
    w.log_rollouts([{"step": 1, "prompt": "p", "completion": "c", "reward": 1.0, "advantage": 0.5, "length": 3}])
    w.close()
    r = RunReader(tmp_path)
    assert r.config() == {"a": 1} and r.meta()["world_size"] == 2
    assert r.metric_names() == ["reward", "rlscope/x"]
    steps, values = r.series("reward")
    assert steps == [1, 2] and values[0] == 0.5 and values[1] != values[1]  # NaN survives as NaN
    assert r.rollouts().num_rows == 1
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        r.series("nope")


def test_reader_tolerates_a_torn_last_record_and_writer_recovers(tmp_path):
    w = RunWriter(tmp_path)
    w.log_metrics(1, {"m": 1.0})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "name": "m", "val')  # crash mid-write
    assert RunReader(tmp_path).series("m") == ([1], [1.0])
    w = RunWriter(tmp_path)
    w.log_metrics(2, {"m": 2.0})
    w.close()
    assert RunReader(tmp_path).series("m") == ([1, 2], [1.0, 2.0])


def test_corruption_in_the_middle_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "name": "m", "value": 1}\nGARBAGE\n'
                                            '{"step": 2, "name": "m", "value": 2}\n')
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        RunReader(tmp_path).metrics()


def test_resume_does_not_duplicate_steps(tmp_path):
    w = RunWriter(tmp_path)
    for s in range(1, 6):
        w.log_metrics(s, {"m": float(s)})
        w.log_rollouts([{"step": s, "completion": "x"}])
    w.close()
    w = RunWriter(tmp_path)
    w.truncate_after(3)  # resumed from the step-3 checkpoint: steps 4, 5 run again
    for s in (4, 5):
        w.log_metrics(s, {"m": 10.0 * s})
        w.log_rollouts([{"step": s, "completion": "y"}])
    w.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    assert RunReader(tmp_path).series("m")[1] == [1.0, 2.0, 3.0, 40.0, 50.0]
    assert [r["step"] for r in RunReader(tmp_path).records("rollouts")] == [1, 2, 3, 4, 5]
