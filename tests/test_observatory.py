"""The observatory on real tiny runs: taps, probes in the store, offline recomputation, two ranks, attach, Clip/KL-Cov."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlscope.probes import Histogram

from conftest import ROOT
from helpers import run_recipe

PROBE_KEYS = ("rlscope/entropy/mean", "rlscope/entropy/p90", "rlscope/entropy/top20_share",
              "rlscope/entropy/above_first_p80_share", "rlscope/cov/mean", "rlscope/cov/top_mean",
              "rlscope/cov/band_share", "rlscope/cov/corr", "rlscope/behavior/length_mean",
              "rlscope/behavior/reflection_rate", "rlscope/behavior/repetition", "rlscope/behavior/clipped_share")


def series(run_dir) -> dict[str, dict[int, float]]:
    from rlscope.store import RunReader

    out: dict[str, dict[int, float]] = {}
    for rec in RunReader(run_dir).records("metrics"):
        out.setdefault(rec["name"], {})[rec["step"]] = rec["value"]
    return out


def test_check_trl_names_supported_versions():
    from rlscope.taps import SUPPORTED_TRL, UnsupportedTRLVersion, check_trl

    check_trl(SUPPORTED_TRL[0])
    check_trl("1.15.0")
    check_trl("1.16.2")  # a patch release of the newest minor
    for bad in ("0.9.6", "1.13.1", "1.17.0", "main"):
        with pytest.raises(UnsupportedTRLVersion, match=rf"tested against TRL 1\.14\.0 to 1\.16\.0; the installed TRL "
                                                        rf"is {bad}"):
            check_trl(bad)


def test_observatory_rejects_bad_configuration():
    from rlscope.callbacks import Observatory

    with pytest.raises(KeyError, match="unknown probe 'covariance'"):
        Observatory(probes=("entropy", "covariance"))
    with pytest.raises(KeyError, match="not enabled"):
        Observatory(probes=("entropy",), every={"cov": 2})


def test_dapo_run_logs_probes_every_step_and_offline_recompute_matches(tmp_path):
    from rlscope.analysis.token_dynamics import recompute

    summary = run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "4", "--run_name", "obs",
                         "--probe_options", '{"tokens": {"dump_every": 1}}', "--eval_heldout", "false")
    run_dir = Path(summary["run_dir"])
    s = series(run_dir)
    for key in PROBE_KEYS:
        assert sorted(s[key]) == [1, 2, 3, 4], key
    assert all(math.isfinite(v) for v in s["rlscope/entropy/mean"].values())
    # TRL's own mean entropy is the same quantity over the same tokens
    for step in range(1, 5):
        assert s["rlscope/entropy/mean"][step] == pytest.approx(s["entropy"][step], rel=1e-4)
    offline = recompute(run_dir / "tokens")
    assert sorted(offline) == [1, 2, 3, 4]
    for step, row in offline.items():
        for key in PROBE_KEYS:
            live = s[key][step]
            assert (math.isnan(live) and math.isnan(row[key])) or row[key] == pytest.approx(live, rel=1e-9, abs=1e-12)


def test_taps_record_only_training_passes(tmp_path, tiny_sft_path):
    """TRL calls its log-prob helper for old (num_iterations > 1) and reference (beta > 0) log-probs too."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    import rlscope
    from rlscope.tasks import get_task

    task = get_task("chainsum", seed=0)
    cfg = GRPOConfig(output_dir=str(tmp_path / "t"), max_steps=3, per_device_train_batch_size=8, num_generations=4,
                     steps_per_generation=2, gradient_accumulation_steps=2, num_iterations=2, beta=0.04,
                     max_completion_length=16, use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=str(tiny_sft_path), reward_funcs=task.reward_funcs(), args=cfg,
                          train_dataset=task.dataset("train"),
                          processing_class=AutoTokenizer.from_pretrained(tiny_sft_path))
    obs = rlscope.attach(trainer)
    trainer.train()
    tap = obs.sources["tokens"].tap
    assert tap.training_passes == 3 * 2  # optimizer steps x gradient accumulation micro-batches
    assert tap.helper_calls > tap.training_passes  # old + reference log-prob passes went by unrecorded
    assert obs.last["rlscope/behavior/n_completions"] == 16  # both micro-batches of the last step


def test_attach_example_script_fills_the_store(tmp_path, tiny_path):
    out = tmp_path / "attach"
    proc = subprocess.run([sys.executable, str(ROOT / "callbacks" / "attach_to_trl_grpo.py"), "--output_dir",
                           str(out), "--model", str(tiny_path), "--max_steps", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = series(out)
    for key in PROBE_KEYS:
        assert sorted(s[key]) == [1, 2, 3], key
    assert "reward" in s and "entropy" in s  # TRL's own metrics beside rlscope's


def _two_rank_worker(rank: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from accelerate import Accelerator

    from rlscope.callbacks.sources.tokens import gather_batch
    from rlscope.probes import get_probe
    from test_probes import random_batch

    acc = Accelerator(cpu=True)
    # ranks with different row counts and token widths
    local = random_batch(seed=rank, n=6 + 3 * rank, t=11 + 5 * rank)
    local.has_eos = torch.ones(local.n_rows, dtype=torch.bool)
    local.reflections = torch.arange(local.n_rows, dtype=torch.float64)
    local.repetition = torch.rand(local.n_rows, dtype=torch.float64)
    from rlscope.probes.batch import data_of

    torch.save(data_of(local), Path(out) / f"local{rank}.pt")
    joined = gather_batch(local, acc)
    if rank == 0:
        res = {}
        for name in ("entropy", "cov", "behavior"):
            probe = get_probe(name)
            res.update({f"{name}/{k}": v for k, v in probe.fn(joined, {}).items() if not isinstance(v, Histogram)})
        (Path(out) / "gathered.json").write_text(json.dumps(res))
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    import torch.multiprocessing as mp

    from helpers import _free_port
    from rlscope.probes import get_probe
    from rlscope.probes.batch import TokenBatch, concat

    mp.spawn(_two_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    gathered = json.loads((tmp_path / "gathered.json").read_text())
    batches = [TokenBatch(**torch.load(tmp_path / f"local{r}.pt", weights_only=True)) for r in range(2)]
    single = concat(batches)
    assert single.n_rows == 6 + 9
    for name in ("entropy", "cov", "behavior"):
        for k, v in get_probe(name).fn(single, {}).items():
            if isinstance(v, Histogram):
                continue
            g = gathered[f"{name}/{k}"]
            assert (math.isnan(v) and math.isnan(g)) or g == pytest.approx(v, rel=1e-12, abs=1e-12), (name, k)


@pytest.mark.parametrize("kind", ["clip_cov", "kl_cov"])
def test_cov_intervention_recipes_run(tmp_path, kind):
    summary = run_recipe(tmp_path, f"tiny_dapo_{kind.replace('_', '')}.yaml", "--max_steps", "3",
                         "--eval_heldout", "false", "--run_name", kind)
    s = series(summary["run_dir"])
    assert sorted(s[f"rlscope/{kind}/selected_share"]) == [1, 2, 3]
    if kind == "kl_cov":  # KL-Cov always acts on at least one token; Clip-Cov only when tokens fall in the band
        assert all(v > 0 for v in s[f"rlscope/{kind}/selected_share"].values())
    assert sorted(s["rlscope/cov/mean"]) == [1, 2, 3]
    from rlscope.analysis.compare import summarize

    (row,) = summarize([summary["run_dir"]], "rlscope/entropy/mean", tail=2)
    assert row["steps"] == [1, 3] and row["last"] == s["rlscope/entropy/mean"][3]


def test_the_taps_check_what_they_wrap_by_capability():
    from rlscope.taps import UnsupportedTRLVersion, check_trainer

    class Trainer:
        def _compute_loss(self, model, inputs): ...
        def _get_per_token_logps_and_entropies(self, *a, **k): ...
        def _calculate_rewards(self, *a, **k): ...
        def _generate_and_score_completions(self, *a, **k): ...

    check_trainer(Trainer())

    class Older(Trainer):
        _calculate_rewards = None

        def _compute_loss(self, batch): ...

    with pytest.raises(UnsupportedTRLVersion, match=r"lacks what rlscope's token taps wrap: _compute_loss \(no "
                                                    r"parameter model, inputs\); _calculate_rewards \(missing\)"):
        check_trainer(Older())
