"""``rlscope bench lora``: the weights probe on LoRA adapters of a Qwen2.5-1.5B-shaped model -- its accuracy against a
dense float64 SVD and its time beside the full-parameter probe of the same effective matrices, in one run."""

from __future__ import annotations

import math
import time

from rlscope.bench.common import _sync
from rlscope.bench.spectra import _Q15, _model_shapes, _model_w0


def _adapter(shape, rank: int, seed: int, step: int, size: float, scaling: float):
    """A (r x in) as PEFT initialises it (Kaiming-uniform, a = sqrt(5)) plus a drift, and B (out x r) grown so that
    ||s B A||_F / ||W_0||_F is about ``size`` x ``step`` -- an RL-sized update of rank r with a dominant direction."""
    import torch

    out_dim, in_dim = shape
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(in_dim)
    A = (torch.rand(rank, in_dim, generator=g) * 2 - 1) * bound
    B = torch.randn(out_dim, rank, generator=g) * torch.logspace(0, -1.5, rank)  # a decaying spectrum
    walk = torch.Generator().manual_seed(seed * 100 + step)
    A = A + 0.02 * step * bound * torch.randn(rank, in_dim, generator=walk)
    B = B * step + 0.3 * torch.randn(out_dim, rank, generator=walk)
    return A, B


def bench_lora(rank: int = 16, layers: int = 4, size: float = 4e-3, k: int = 16, device: str = "cpu") -> dict:
    """(a) Accuracy: for one matrix of each shape (q, k, gate, down) at the second probe, the largest |reported -
    exact| angle (exact: float64 SVD of the materialised W_0 + s B A) against the reported bound, and dW's singular
    values against a float64 SVD of the materialised dW (relative). (b) Speed: ``layers`` layers x (q, k, v, o, gate,
    up, down) adapted at rank ``rank`` (alpha = 2r): the probe's seconds at a cold first probe and a warm second one,
    for the LoRA path (W_t formed in float64, dW's SVD from its factors) and for the full-parameter path on the same
    effective matrices (bf16 W_t, as a full fine-tune holds them; dW by block Krylov), side by side; ``ratio`` =
    LoRA / full of the warm probe."""
    import torch

    from rlscope.adapters import LoraWeight
    from rlscope.probes.weight_matrix import matrix_results
    from rlscope.ritz import principal_angles

    kv = _Q15.hidden_size // _Q15.num_attention_heads * _Q15.num_key_value_heads
    specs = _model_shapes(layers, _Q15.hidden_size, _Q15.intermediate_size, kv)
    scaling = 2.0
    options = dict(k=k, n_dw_sv=4, exact_below=256, abs_tol=1e-5, rel_tol=0.01, max_passes=40)
    w0s = {n: _model_w0(n, *spec).to(device) for n, spec in specs.items()}
    norms = {n: float(w.float().norm()) for n, w in w0s.items()}

    def lora_pair(n, step):
        A, B = _adapter(specs[n][0], rank, specs[n][1], step, size, scaling)
        A, B = A.to(device), B.to(device)
        fro = float((scaling * B @ A).norm()) or 1.0
        B = B * (size * step * norms[n] / fro)  # ||s B A|| = size x step x ||W_0||
        zeros = (torch.zeros_like(B), torch.zeros_like(A))
        return LoraWeight(w0s[n], zeros[0], zeros[1], scaling), LoraWeight(w0s[n], B, A, scaling)

    out: dict = {"bench": "lora", "rank": rank, "layers": layers, "matrices": len(specs), "device": device,
                 "threads": torch.get_num_threads()}
    timing = {"lora": {}, "full": {}}
    caches = {"lora": {}, "full": {}}
    last: dict = {}
    for step in (1, 2):
        pairs = {n: lora_pair(n, step) for n in specs}
        for arm in ("lora", "full"):
            seconds = 0.0
            for n, (w0, wt) in pairs.items():
                if arm == "full":  # the same effective matrices as a full fine-tune holds them
                    w0, wt = w0s[n], wt.dense(torch.empty(wt.shape, dtype=torch.float32, device=device)).bfloat16()
                _sync(device)
                t0 = time.perf_counter()
                res = list(matrix_results([(n, w0, wt)], caches[arm], **options))
                _sync(device)
                seconds += time.perf_counter() - t0
                if arm == "lora":
                    last[n] = res[0].stats
            timing[arm][f"probe{step}_{'cold' if step == 1 else 'warm'}_seconds"] = round(seconds, 2)
    out.update(timing)
    out["ratio"] = round(timing["lora"]["probe2_warm_seconds"] / timing["full"]["probe2_warm_seconds"], 3)
    # (a) accuracy on one matrix of each shape (layer 0), second probe
    accuracy = {}
    for kind in ("q_proj", "k_proj", "gate_proj", "down_proj"):
        n = next(name for name in specs if f".{kind}." in name)
        w0, wt = lora_pair(n, 2)
        W0 = w0s[n].double().cpu()
        dW = (scaling * wt.B.double() @ wt.A.double()).cpu()
        (U0, _, V0h), (Ut, _, Vth) = (torch.linalg.svd(w, full_matrices=False) for w in (W0, W0 + dW))
        exact = {"left": principal_angles(U0[:, :k], Ut[:, :k]), "right": principal_angles(V0h[:k].T, Vth[:k].T)}
        st = last[n]
        err = max(abs(st[f"angle_{side}_{f}"] - float(getattr(a, f)())) for side, a in exact.items()
                  for f in ("mean", "max"))
        sd = torch.linalg.svdvals(dW)
        dw_err = max(abs(st[f"dw_sigma{i}"] / float(sd[i - 1]) - 1) for i in range(1, 5))
        accuracy[kind] = {"shape": list(W0.shape), "angle_mean": float(f"{float(exact['left'].mean()):.4g}"),
                          "angle_error": float(f"{err:.3g}"), "bound": float(f"{st['angle_error_bound']:.3g}"),
                          "within_bound": bool(err <= st["angle_error_bound"] + 1e-12),
                          "dw_sigma_rel_error": float(f"{dw_err:.3g}"), "passes": int(st["passes"])}
    out["accuracy"] = accuracy
    out["bounds_hold"] = all(a["within_bound"] for a in accuracy.values())
    out["angle_error_rad"] = max(a["angle_error"] for a in accuracy.values())
    out["dw_sigma_rel_error"] = max(a["dw_sigma_rel_error"] for a in accuracy.values())
    return out
