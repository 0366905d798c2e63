"""LoRA adapters (PEFT): the weights probe on W_0 + s B A against a brute-force float64 SVD of the materialised
matrices, the update's exact low-rank SVD, the adapters' drift, the base model with adapters off (pass@k's
reference), unsupported adapters named in one message, the offline command on adapter checkpoints, and the LoRA recipe
end to end (its token probes against TRL's and the offline recompute, its weight numbers against brute force)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
import scipy.linalg as sl  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from rlscope.adapters import adapters_disabled, find_lora, load_adapter, lowrank_svd, plain_name  # noqa: E402
from rlscope.callbacks import Observatory  # noqa: E402

TARGETS = ["q_proj", "v_proj", "gate_proj"]


@pytest.mark.parametrize("m,n,q,rank", [(40, 30, 4, 4), (300, 120, 8, 8), (64, 50, 6, 3), (20, 90, 5, 0)])
def test_lowrank_svd_equals_the_dense_svd_of_the_product(m, n, q, rank):
    g = torch.Generator().manual_seed(m + n)
    L = torch.randn(m, q, generator=g, dtype=torch.float64)
    R = torch.randn(q, n, generator=g, dtype=torch.float64)
    L[:, rank:] = L[:, :1] * 0.5 if rank else 0.0  # rank-deficient factors: repeated columns or zeros
    U, S, V = lowrank_svd(L, R, 1.7)
    dense = 1.7 * L @ R
    want = torch.linalg.svdvals(dense)[:q]
    assert torch.allclose(S, want, rtol=1e-12, atol=1e-12 * float(want[0]) + 1e-300)
    assert torch.allclose((U * S) @ V.T, dense, atol=1e-12 * max(float(want[0]), 1.0))
    live = S > 1e-10 * max(float(S[0]), 1e-300)
    assert torch.allclose(U[:, live].T @ U[:, live], torch.eye(int(live.sum()), dtype=torch.float64), atol=1e-12)


def _peft(path, r=4, seed=0, dtype=torch.float64, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, **kw))


def _move(lora, g, b=0.05, a=0.02):
    with torch.no_grad():
        for lm in lora.values():
            B, A = lm.module.lora_B[lm.adapter].weight, lm.module.lora_A[lm.adapter].weight
            B.add_(b * torch.randn(B.shape, generator=g, dtype=B.dtype))
            A.add_(a * torch.randn(A.shape, generator=g, dtype=A.dtype))


def _top(w: np.ndarray, k: int):
    U, S, Vh = np.linalg.svd(w, full_matrices=False)
    return U[:, :k], S[:k], Vh[:k].T


@pytest.mark.parametrize("b0", ["zero", "nonzero"])
def test_weights_probe_equals_a_float64_svd_of_the_materialised_matrices(tiny_path, b0):
    """W_t = W_base + s B_t A_t and dW = s (B_t A_t - B_0 A_0), materialised in float64 and decomposed densely: the
    probe's angles are within their bound, dW's spectrum, energy and norm exact; the drift of the adapters' own
    spans equals scipy's subspace angles; the direction cosine is that of the dense dW's top vectors. Krylov is
    forced (exact_below 100 < 256) for W_t. ``nonzero``: the adapters already hold an update when W_0 is taken."""
    k = 4
    model = _peft(tiny_path)
    lora = find_lora(model)
    g = torch.Generator().manual_seed(1)
    if b0 == "nonzero":
        _move(lora, g)
    a0b0 = {n: (lm.module.lora_A[lm.adapter].weight.detach().clone(), lm.module.lora_B[lm.adapter].weight.detach()
                .clone()) for n, lm in lora.items()}
    obs = Observatory({"weights": {"every": 1, "k": k, "exact_below": 100}})
    obs.measure(model, step=0, when="start")
    prev_dirs, prev_spans = {}, {}
    for step in (1, 2):
        _move(lora, g)
        obs.measure(model, step=step)
        rows = {r["matrix"]: r for r in obs.latest["weights"][1]["per_matrix"].rows}
        assert set(rows) == set(lora) and len(rows) == 12  # 4 layers x (q, v, gate); the frozen k, o, up, down out
        for name, lm in lora.items():
            r = rows[name]
            base = lm.module.base_layer.weight.detach().double()
            A, B = lm.module.lora_A[lm.adapter].weight.detach(), lm.module.lora_B[lm.adapter].weight.detach()
            A0, B0 = a0b0[name]
            w0 = (base + lm.scaling * B0 @ A0).numpy()
            dw = (lm.scaling * (B @ A - B0 @ A0)).numpy()
            wt = w0 + dw
            U0, S0, V0 = _top(w0, k)
            Ut, St, Vt = _top(wt, k)
            for side, a, b in (("left", U0, Ut), ("right", V0, Vt)):
                exact = sl.subspace_angles(a, b).mean()
                assert abs(r[f"angle_{side}_mean"] - exact) <= r["angle_error_bound"] + 1e-12, (name, side)
            assert r["angle_bound_unmet"] == 0 and r["passes"] > 0
            assert r["sv_rel_change_mean"] == pytest.approx(np.abs((St - S0) / S0).mean(), abs=1e-5)  # Ritz values
            sd = np.linalg.svd(dw, compute_uv=False)
            assert [r[f"dw_sigma{i}"] for i in range(1, 5)] == pytest.approx(sd[:4], rel=1e-10)
            assert r["dw_rank1_energy"] == pytest.approx(sd[0] ** 2 / (sd ** 2).sum(), rel=1e-10)
            assert r["dw_rel_norm"] == pytest.approx(np.linalg.norm(dw) / np.linalg.norm(w0), rel=1e-10)
            assert r["dw_sigma_bound"] == r["dw_rank1_energy_bound"] == r["dw_passes"] == 0  # exact, no pass
            assert r["lora_rank"] == 4
            Ud, _, Vd = _top(dw, 1)
            if name in prev_dirs:
                assert r["dw_dir_cos_left"] == pytest.approx(abs(float(Ud[:, 0] @ prev_dirs[name][0])), abs=1e-6)  # dirs kept in float32
                assert r["dw_dir_cos_right"] == pytest.approx(abs(float(Vd[:, 0] @ prev_dirs[name][1])), abs=1e-6)
                for side, now, before in (("out", B.numpy(), prev_spans[name][0]),
                                          ("in", A.numpy().T, prev_spans[name][1])):
                    ang = sl.subspace_angles(now, before)
                    assert r[f"lora_drift_{side}_mean"] == pytest.approx(ang.mean(), abs=1e-9)
                    assert r[f"lora_drift_{side}_max"] == pytest.approx(ang.max(), abs=1e-9)
            elif b0 == "zero" and step == 1:
                assert math.isnan(r["lora_drift_out_mean"])  # B = 0 at the start: no span to drift from
            prev_dirs[name] = (Ud[:, 0], Vd[:, 0])
            prev_spans[name] = (B.numpy().copy(), A.numpy().T.copy())
    last = obs.history[-1][2]
    assert last["rlscope/weights/n_adapted"] == last["rlscope/weights/n_matrices"] == 12
    assert last["rlscope/weights/kind/gate/dw_rank1_energy"] > 0 and "rlscope/weights/kind/k/angle_left_mean" not in last


def test_a_model_without_adapters_measures_as_before_and_frozen_matrices_are_left_out(tiny_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_path))
    obs = Observatory({"weights": {"every": 1, "k": 2}})
    obs.measure(model, step=0, when="start")
    assert obs.history[-1][2]["rlscope/weights/n_matrices"] == 28 and obs.history[-1][2]["rlscope/weights/n_adapted"] == 0
    for n, p in model.named_parameters():
        p.requires_grad_("layers.0." in n)
    obs = Observatory({"weights": {"every": 1, "k": 2}})
    obs.measure(model, step=0, when="start")
    assert obs.history[-1][2]["rlscope/weights/n_matrices"] == 7  # layer 0's q, k, v, o, gate, up, down
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="the 28 matching ones are frozen and carry no adapter"):
        Observatory({"weights": {"every": 1}}).measure(model, step=0, when="start")


def test_unsupported_adapters_are_named_in_one_message(tiny_path):
    dora = _peft(tiny_path, use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        find_lora(dora)
    merged = _peft(tiny_path)
    merged.merge_adapter()
    with pytest.raises(ValueError, match="merged into its base weight; unmerge it"):
        find_lora(merged)
    assert plain_name("base_model.model.model.layers.3.mlp.gate_proj.base_layer.weight") == \
        "model.layers.3.mlp.gate_proj.weight"


def test_adapters_disabled_is_the_base_model_and_restores_the_adapters(tiny_path):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_path), dtype=torch.float64)
    model = _peft(tiny_path)
    _move(find_lora(model), torch.Generator().manual_seed(3), b=0.5)
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with adapters_disabled(model):
            base = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
        want = plain(input_ids=ids).logits
    assert torch.equal(base, want) and torch.equal(again, adapted) and not torch.allclose(adapted, want)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # PEFT's toggle would have reset them: kept as set


def test_passk_base_curve_is_the_adapter_disabled_model(tiny_sft_path):
    """pass@k's reference is the base model: with adapters that already change the policy, the start evaluation
    equals the plain model's and a later one the adapted model's -- the same parameters, no copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlscope.passk_eval import evaluate_passk
    from rlscope.tasks import get_task

    tok = AutoTokenizer.from_pretrained(str(tiny_sft_path))
    task = get_task("chainsum", seed=0)
    kw = dict(n=4, max_prompts=8, seed=0)
    model = _peft(tiny_sft_path, dtype=torch.float32)
    _move(find_lora(model), torch.Generator().manual_seed(5), b=0.3, a=0.3)
    obs = Observatory({"passk": {"every": 1, "task": task, **kw}})
    obs.measure(model, tok, step=0, when="start")
    base = obs.latest["passk"][1]["record"].rows[0]
    obs.measure(model, tok, step=1)
    current = obs.latest["passk"][1]["record"].rows[0]
    assert base["kind"] == "base" and current["kind"] == "current"
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_sft_path))
    assert base["counts"] == evaluate_passk(plain, tok, task, **kw).counts
    assert current["counts"] == evaluate_passk(model, tok, task, **kw).counts
    assert base["counts"] != current["counts"]  # the adapters matter here: the test can tell the two apart


def test_offline_command_reads_adapter_checkpoints_like_the_live_probe(tiny_path, tmp_path):
    model = _peft(tiny_path, dtype=torch.float32)
    lora = find_lora(model)
    obs = Observatory({"weights": {"every": 1, "k": 4, "exact_below": 100}})
    obs.measure(model, step=0, when="start")
    g = torch.Generator().manual_seed(2)
    for step in (1, 2):
        _move(lora, g)
        obs.measure(model, step=step)
        model.save_pretrained(str(tmp_path / f"ckpt{step}"))
    assert set(load_adapter(tmp_path / "ckpt2")) == set(lora)
    from rlscope.weight_geometry import offline_geometry

    rows = offline_geometry(tiny_path, [tmp_path / "ckpt1", tmp_path / "ckpt2"], k=4, exact_below=100)
    live = {r["matrix"]: r for r in obs.latest["weights"][1]["per_matrix"].rows}
    for name, stats in rows[-1]["per_matrix"].items():
        for key in ("angle_left_mean", "angle_right_mean", "dw_sigma1", "dw_rank1_energy", "dw_dir_cos_left",
                    "lora_drift_in_mean", "lora_drift_out_mean"):
            assert stats[key] == pytest.approx(live[name][key], rel=1e-6, abs=1e-9), (name, key)


def _check_against_saved_adapter(run_dir: Path, base_path, step: int) -> None:
    """The weights rows of ``step`` against the run's saved adapter (models/final) over its base, in float64."""
    from transformers import AutoModelForCausalLM

    from rlscope.store import RunReader

    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float64)
    params = dict(base.named_parameters())
    lora = load_adapter(run_dir / "models" / "final")
    rows = {r["matrix"]: r for r in RunReader(run_dir).records("weights") if r["step"] == step}
    assert set(rows) == set(lora) and len(rows) == 12
    for name, (A, B, scale) in lora.items():
        w0 = params[name].detach().numpy()
        dw = scale * (B.double() @ A.double()).numpy()
        sd = np.linalg.svd(dw, compute_uv=False)
        r = rows[name]
        assert r["dw_sigma1"] == pytest.approx(sd[0], rel=1e-9) and r["dw_sigma2"] == pytest.approx(sd[1], rel=1e-9)
        assert r["dw_rank1_energy"] == pytest.approx(sd[0] ** 2 / (sd ** 2).sum(), rel=1e-9)
        U0, _, V0 = _top(w0, 16)
        Ut, _, Vt = _top(w0 + dw, 16)
        assert abs(r["angle_left_mean"] - sl.subspace_angles(U0, Ut).mean()) <= r["angle_error_bound"] + 1e-9
        assert abs(r["angle_right_mean"] - sl.subspace_angles(V0, Vt).mean()) <= r["angle_error_bound"] + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ddp2", "zero3"])
def test_lora_recipe_under_two_processes_against_the_saved_adapter(tmp_path, tiny_sft_path, config):
    """2-process DDP and DeepSpeed ZeRO-3 (the base, A and B gathered one at a time; each rank computes its share):
    the weights rows at the last step equal the brute force on the adapter the run saved; grad and pass@k run."""
    from helpers import launch

    from rlscope.store import RunReader

    launch(tmp_path, f"{config}.yaml", "--max_steps", "2", "--run_name", config, "--eval_heldout", "false",
           "--probe_every", '{"weights": 2, "grad": 1, "passk": "start+end"}',
           "--probe_options", '{"passk": {"n": 4, "max_prompts": 8}}', recipe="tiny_dapo_lora.yaml")
    run_dir = tmp_path / config
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["params_partitioned"] is (config == "zero3")
    _check_against_saved_adapter(run_dir, tiny_sft_path, step=2)
    last = {r["name"]: r["value"] for r in RunReader(run_dir).records("metrics")}
    assert last["rlscope/grad/n_params"] == 24 and last["rlscope/passk/prompts"] == 8


def test_lora_recipe_end_to_end(tmp_path, tiny_sft_path):
    """recipes/tiny_dapo_lora.yaml, 4 steps: the token probes equal TRL's entropy and their offline recompute from the
    dumped tensors (the full-model formulas); the weights rows at the last step equal a float64 SVD of the saved
    adapter over the base; pass@k's base is the plain base model's; grad measures the adapters; the analysis reads the
    run's weight dynamics."""
    from helpers import run_recipe
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlscope.analysis.token_dynamics import recompute
    from rlscope.passk_eval import evaluate_passk
    from rlscope.store import RunReader
    from rlscope.tasks import get_task

    summary = run_recipe(tmp_path, "tiny_dapo_lora.yaml", "--max_steps", "4", "--eval_heldout", "false",
                         "--probe_every", '{"weights": 2, "passk": "start+end"}',
                         "--probe_options", '{"tokens": {"dump_every": 1}, "passk": {"n": 4, "max_prompts": 8}}')
    run_dir = Path(summary["run_dir"])
    reader = RunReader(run_dir)
    s: dict[str, dict[int, float]] = {}
    for rec in reader.records("metrics"):
        s.setdefault(rec["name"], {})[rec["step"]] = rec["value"]
    for step in range(1, 5):
        assert s["rlscope/entropy/mean"][step] == pytest.approx(s["entropy"][step], rel=1e-4)
    for step, row in recompute(run_dir / "tokens").items():
        for key in ("rlscope/entropy/mean", "rlscope/cov/mean"):
            assert row[key] == pytest.approx(s[key][step], rel=1e-9, abs=1e-12)
    assert s["rlscope/grad/n_params"][4] == 24 and s["rlscope/weights/n_adapted"][4] == 12
    _check_against_saved_adapter(run_dir, tiny_sft_path, step=4)
    base_rec = next(r for r in reader.records("passk") if r["kind"] == "base")
    tok = AutoTokenizer.from_pretrained(str(tiny_sft_path))
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_sft_path))
    assert base_rec["counts"] == evaluate_passk(plain, tok, get_task("chainsum", seed=0), n=4, max_prompts=8,
                                                seed=0).counts
    analysis = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    wd = analysis["analyses"]["weight_dynamics"]
    assert wd["status"] == "ok" and wd["probes"] == 2 and "trajectory" in wd  # steps 2 and 4 (at 0, dW = 0)


def _lora_split_worker(rank: int, world: int, port: int, out: str):
    import os

    import torch.distributed as dist
    from peft import inject_adapter_in_model
    from test_weights import _toy_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # the same arithmetic in every process
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj"]),
                                    _toy_model())
    obs = Observatory({"weights": {"every": 1, "k": 8, "exact_below": 100}})
    obs.measure(model, step=0, when="start")
    g = torch.Generator().manual_seed(4)
    for step in (1, 2):
        _move(find_lora(model), g)
        obs.measure(model, step=step)
    src = obs.sources["weights"]
    (Path(out) / f"lora_share{world}_{rank}.json").write_text(json.dumps({"mine": src.mine, "names": src.names}))
    if rank == 0:
        rows = {str(step): {k: None if math.isnan(v) else v for k, v in scalars.items() if not k.endswith("seconds")}
                for step, _, scalars in obs.history}
        (Path(out) / f"lora_world{world}.json").write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_split_the_adapted_matrices_and_give_the_numbers_of_one(tmp_path):
    """An adapter model under 2 real processes (gloo): each rank reads and computes its share of the adapted matrices
    (the frozen k and down projections are left out), and the numbers equal those of 1 process."""
    import torch.multiprocessing as mp

    from helpers import _free_port

    for world in (2, 1):
        mp.spawn(_lora_split_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    one, two = (json.loads((tmp_path / f"lora_world{w}.json").read_text()) for w in (1, 2))
    shares = [json.loads((tmp_path / f"lora_share2_{r}.json").read_text()) for r in range(2)]
    assert len(shares[0]["names"]) == 4 and all("q_proj" in n or "gate_proj" in n for n in shares[0]["names"])
    assert sorted(shares[0]["mine"] + shares[1]["mine"]) == sorted(shares[0]["names"]) and all(s["mine"] for s in shares)
    assert one == two
    last = one["2"]
    assert last["rlscope/weights/n_adapted"] == 4 and last["rlscope/weights/angle_bound_unmet"] == 0
    assert last["rlscope/weights/lora_drift_in_mean"] > 0 and last["rlscope/weights/dw_sigma_bound"] == 0


def test_attach_on_a_stock_grpo_trainer_given_a_peft_config(tmp_path, tiny_sft_path):
    """rlscope.attach on TRL's own GRPOTrainer wrapping the model with a peft_config: every probe family runs on the
    adapters (weights on the 12 adapted matrices, grad on their 24 A / B, pass@k's base with adapters off)."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    import rlscope
    from rlscope.tasks import get_task

    task = get_task("chainsum", seed=0)
    cfg = GRPOConfig(output_dir=str(tmp_path / "t"), max_steps=2, per_device_train_batch_size=8, num_generations=4,
                     max_completion_length=16, learning_rate=1e-3, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, report_to="none", save_strategy="no", disable_tqdm=True,
                     logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=str(tiny_sft_path), reward_funcs=task.reward_funcs(), args=cfg,
                          train_dataset=task.dataset("train"),
                          processing_class=AutoTokenizer.from_pretrained(tiny_sft_path),
                          peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    obs = rlscope.attach(trainer, tmp_path / "run", weights={"every": 1}, grad=True,
                         passk={"task": task, "n": 4, "max_prompts": 8, "every": 0, "at_start": True, "at_end": True})
    trainer.train()
    last = obs.last
    assert last["rlscope/weights/n_adapted"] == last["rlscope/weights/n_matrices"] == 12
    assert last["rlscope/weights/dw_sigma1"] > 0 and last["rlscope/weights/dw_sigma_bound"] == 0
    assert last["rlscope/grad/n_params"] == 24 and last["rlscope/grad/norm"] > 0
    assert math.isfinite(last["rlscope/entropy/mean"]) and "rlscope/passk/pass@4" in last


def test_qlora_4bit_base_is_dequantized_and_measured(tiny_path):
    """QLoRA: a 4-bit (NF4) base is read through PEFT's dequantization; the numbers equal a float64 SVD of the
    dequantized base plus the update. (Training QLoRA on CPU is not possible with bitsandbytes 0.50: its CPU backend
    repacks the weights for inference at generation, after which the training forward fails in bitsandbytes.)"""
    pytest.importorskip("bitsandbytes")
    from peft.utils.integrations import dequantize_module_weight
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_path), quantization_config=quant, device_map="cpu")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    lora = find_lora(model)
    assert type(next(iter(lora.values())).module.base_layer.weight).__name__ == "Params4bit"
    obs = Observatory({"weights": {"every": 1, "k": 4, "exact_below": 100}})
    obs.measure(model, step=0, when="start")
    _move(lora, torch.Generator().manual_seed(6))
    obs.measure(model, step=1)
    rows = {r["matrix"]: r for r in obs.latest["weights"][1]["per_matrix"].rows}
    assert len(rows) == 12
    for name, lm in list(lora.items())[:4]:
        base = dequantize_module_weight(lm.module.base_layer).detach().double().numpy()
        A, B = (x.detach().double() for x in (lm.module.lora_A["default"].weight, lm.module.lora_B["default"].weight))
        dw = lm.scaling * (B @ A).numpy()
        sd = np.linalg.svd(dw, compute_uv=False)
        r = rows[name]
        assert r["dw_sigma1"] == pytest.approx(sd[0], rel=1e-6)  # float32 adapters
        (U0, _, _), (Ut, _, _) = _top(base, 4), _top(base + dw, 4)
        assert abs(r["angle_left_mean"] - sl.subspace_angles(U0, Ut).mean()) <= r["angle_error_bound"] + 1e-9
