"""Real multi-process runs under ``accelerate launch``: 2-process DDP (gloo), DeepSpeed ZeRO-2 and ZeRO-3 on CPU."""

import pytest

from helpers import launch, meta
from rlscope.store import RunReader


@pytest.mark.slow
def test_ddp_two_processes_record_world_size_two(tmp_path, tiny_sft_path):
    launch(tmp_path, "ddp2.yaml", "--max_steps", "2", "--run_name", "ddp")
    m = meta(tmp_path / "ddp")
    assert m["world_size"] == 2 and m["status"] == "finished"
    assert "MULTI" in m["distributed_type"] and m["zero_stage"] is None
    r = RunReader(tmp_path / "ddp")
    assert r.series("loss")[0] == [1, 2]
    ranks = {x["rank"] for x in r.rollouts().to_pylist()}
    assert ranks == {0, 1}, "rollouts of both ranks are gathered into the store"


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_zero_runs_the_tiny_recipe(tmp_path, tiny_sft_path, config):
    name = config.split(".")[0]
    launch(tmp_path, config, "--max_steps", "2", "--run_name", name)
    m = meta(tmp_path / name)
    assert m["world_size"] == 2 and m["status"] == "finished"
    assert "DEEPSPEED" in m["distributed_type"]
    assert m["zero_stage"] == int(name[-1])
    assert m["params_partitioned"] is (name == "zero3")
    assert RunReader(tmp_path / name).series("loss")[0] == [1, 2]
    assert (tmp_path / name / "models" / "final").is_dir()
