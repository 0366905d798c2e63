"""Real multi-process runs under ``accelerate launch``: 2-process DDP (gloo), DeepSpeed ZeRO-2 and ZeRO-3 on CPU."""

import pytest

from helpers import launch, meta
from rlscope.store import RunReader


@pytest.mark.slow
def test_ddp_two_processes_record_world_size_two(tmp_path, tiny_sft_path):
    launch(tmp_path, "ddp2.yaml", "--max_steps", "2", "--run_name", "ddp", "--probe_options",
           '{"tokens": {"dump_every": 1}}', "--probe_every", '{"weights": 1}')
    m = meta(tmp_path / "ddp")
    assert m["world_size"] == 2 and m["status"] == "finished"
    assert "MULTI" in m["distributed_type"] and m["zero_stage"] is None
    r = RunReader(tmp_path / "ddp")
    assert r.series("loss")[0] == [1, 2]
    ranks = {x["rank"] for x in r.rollouts().to_pylist()}
    assert ranks == {0, 1}, "rollouts of both ranks are gathered into the store"
    # the logged token statistics are those of both ranks' tokens together: each rank ran the probes on its own
    # tokens and combined them by exact reductions; recomputed in one process from the per-rank tensors each rank
    # dumped (the gather path), they agree with what the two-process run logged
    from rlscope.analysis.token_dynamics import dumped_steps, recompute

    assert all(len(files) == 2 for files in dumped_steps(tmp_path / "ddp" / "tokens").values())
    offline = recompute(tmp_path / "ddp" / "tokens")
    for name in ("rlscope/cov/mean", "rlscope/cov/top_mean", "rlscope/entropy/mean", "rlscope/entropy/p90",
                 "rlscope/behavior/length_mean"):
        steps, values = r.series(name)
        assert steps == [1, 2]
        for step, v in zip(steps, values):
            if name.endswith("p90"):  # an order statistic: the exact reduction finds the very value
                assert v == offline[step][name], name
            else:
                assert v == pytest.approx(offline[step][name], rel=1e-9, abs=1e-12), name
    assert r.series("rlscope/weights/angle_left_mean")[0] == [1, 2]  # each rank its share of matrices, no deadlock
    n_tok = r.series("rlscope/entropy/n_tokens")[1]
    assert all(n == pytest.approx(offline[s]["rlscope/entropy/n_tokens"]) for s, n in zip([1, 2], n_tok))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_zero_runs_the_tiny_recipe(tmp_path, tiny_sft_path, config):
    name = config.split(".")[0]
    launch(tmp_path, config, "--max_steps", "2", "--run_name", name, "--eval_samples", "2",
           "--probe_every", '{"weights": 1, "passk": "start+end"}',
           "--probe_options", '{"passk": {"n": 4, "max_prompts": 6, "batch_prompts": 2}}')
    m = meta(tmp_path / name)
    assert m["world_size"] == 2 and m["status"] == "finished"
    assert "DEEPSPEED" in m["distributed_type"]
    assert m["zero_stage"] == int(name[-1])
    assert m["params_partitioned"] is (name == "zero3")
    assert RunReader(tmp_path / name).series("loss")[0] == [1, 2]
    assert RunReader(tmp_path / name).series("rlscope/cov/mean")[0] == [1, 2]  # the observatory under ZeRO
    assert (tmp_path / name / "models" / "final").is_dir()
    # weight geometry with parameters gathered one at a time (ZeRO-3) equals one process on the saved final model
    from rlscope.weight_geometry import offline_geometry

    r = RunReader(tmp_path / name)
    assert r.series("rlscope/weights/angle_left_mean")[0] == [1, 2]
    (row,) = offline_geometry(tiny_sft_path, [tmp_path / name / "models" / "final"])
    for key in ("angle_left_mean", "angle_right_max", "sv_rel_change_mean", "dw_rank1_energy", "dw_sigma1"):
        # float32 SVDs in processes with different thread counts round differently: equal to ~1e-7 absolute
        assert row["aggregate"][key] == pytest.approx(r.series(f"rlscope/weights/{key}")[1][-1], rel=1e-4, abs=1e-6), key
    _same_evaluations_as_one_process(r, tiny_sft_path, tmp_path / name / "models" / "final")


def _same_evaluations_as_one_process(r, base_path, final_path):
    """pass@k counts (at the start and the end of training) and the held-out accuracy before and after RL, as the
    two-process run logged them (under ZeRO-3: lock-step generation during training, the whole model gathered
    before it), equal a one-process evaluation of the same weights (one thread, as the launched processes)."""
    import torch

    from rlscope.evaluate import evaluate_task
    from rlscope.passk_eval import evaluate_passk
    from rlscope.tasks import get_task
    from rlscope.tinymodel import load_policy

    task = get_task("chainsum", seed=0)
    passk = r.records("passk")
    assert [x["kind"] for x in passk] == ["base", "current"]
    evals = {(e["phase"], e["name"]): e["value"] for e in r.evals()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for record, phase, path in ((passk[0], "before_rl", base_path), (passk[-1], "after_rl", final_path)):
            model, tok = load_policy(str(path))
            assert record["counts"] == evaluate_passk(model, tok, task, n=4, max_prompts=6, batch_prompts=2).counts
            held = evaluate_task(model, tok, task, n_samples=2, seed=0)
            assert evals[(phase, "heldout/accuracy")] == held.accuracy, phase
            assert evals[(phase, "heldout/sampled_accuracy")] == held.sampled_accuracy, phase
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_interleaving_schedule_under_two_process_ddp(tmp_path, tiny_sft_path):
    """ReLIFT's buffer decision uses counts every rank computes from the gathered rewards: both ranks take the SFT
    step together (a rank deciding alone would hang the DDP all-reduce)."""
    launch(tmp_path, "ddp2.yaml", "--max_steps", "4", "--run_name", "relift", "--schedule_config",
           '{"buffer_size": 1}', "--interleave_sft_batch_size", "4", recipe="tiny_interleave_relift.yaml")
    m = meta(tmp_path / "relift")
    assert m["world_size"] == 2 and m["status"] == "finished"
    r = RunReader(tmp_path / "relift")
    steps, kinds = r.series("rlscope/schedule/kind")
    assert steps == [1, 2, 3, 4] and 1.0 in kinds
    assert m["summary"]["schedule"]["sft_steps"] == [s for s, k in zip(steps, kinds) if k == 1.0]
