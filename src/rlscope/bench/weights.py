"""``rlscope bench weights``: the weights probe's accuracy against exact float64 SVDs and its speed on a
Qwen2.5-1.5B-shaped model, in one process or split across real processes."""

from __future__ import annotations

import time

from rlscope.bench.common import _free_port, _sync
from rlscope.bench.spectra import (_Q15, _decaying_matrix, _model_shapes, _model_w0, _model_wt, _rl_update,
                                   _spiked_matrix)


def _probe_share(names, specs, w0s, cache, step, size, options, wts=None, device="cpu"):
    """The per-matrix results of ``names`` at probe ``step`` and the seconds of their computation (W_t, generated
    here when not given in ``wts`` and moved to ``device``, outside the timing)."""
    from rlscope.probes.weight_matrix import matrix_results

    results, seconds = [], 0.0
    for name in names:
        wt = wts[name] if wts is not None else _model_wt(name, specs, w0s, step, size).to(device)
        _sync(device)
        t0 = time.perf_counter()
        results.extend(matrix_results([(name, w0s[name], wt)], cache, **options))
        _sync(device)
        seconds += time.perf_counter() - t0
    return results, seconds


def _split_worker(rank: int, world: int, port: int, out: str, specs: dict, size: float, options: dict) -> None:
    """One rank of the split-across-ranks measurement: its share of the matrices (the source's split), one thread;
    per probe: compute the share, gather the results to rank 0, which aggregates them (the probe)."""
    import os

    import torch
    import torch.distributed as dist

    from rlscope.probes import scalars_of
    from rlscope.probes.weights import WeightView, weight_geometry
    from rlscope.weight_geometry import split_matrices

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    names = list(specs)
    owner = split_matrices([specs[n][0][0] * specs[n][0][1] for n in names], world)
    mine = [n for n, r in zip(names, owner) if r == rank]
    w0s = {n: _model_w0(n, *specs[n]) for n in mine}
    cache, state, report = {}, {}, {}
    for step in (1, 2):
        wts = {n: _model_wt(n, specs, w0s, step, size) for n in mine}  # the share's W_t, outside the timing
        dist.barrier()
        t0 = time.perf_counter()
        results, seconds = _probe_share(mine, specs, w0s, cache, step, size, options, wts)
        del wts
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((results, seconds), gathered, dst=0)
        if rank == 0:
            allres = [r for part, _ in gathered for r in part]
            allres.sort(key=lambda r: names.index(r.name))
            agg = weight_geometry(WeightView(results=allres, options=options), state, **options)
            wall = time.perf_counter() - t0
            report[f"probe{step}"] = {"seconds": wall, "rank_compute_seconds": [sec for _, sec in gathered],
                                      "scalars": scalars_of(agg)}
    if rank == 0:
        import json
        from pathlib import Path

        Path(out).write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


def bench_weights(n: int = 4096, k: int = 16, layers: int = _Q15.num_hidden_layers, hidden: int = _Q15.hidden_size,
                  intermediate: int = _Q15.intermediate_size,
                  kv_dim: int = _Q15.hidden_size // _Q15.num_attention_heads * _Q15.num_key_value_heads,
                  processes: int = 2, size: float = 4e-3, device: str = "cpu") -> dict:
    """The weights probe's accuracy and speed.

    (a) Realistic spectra (an n x 1536 Marchenko-Pastur bulk with a power-law tail, a 1536 x 1536 flat bulk, a
    1536 x n 1/i spectrum), two probes of an RL-like update (``_rl_update``: angles ~1e-3, the second probe
    warm-started): the largest |reported - exact float64 SVD| over the four angle statistics, the reported bound and
    its target, passes; beside it the error of the former method (seeded ``torch.svd_lowrank``, q = k + 16, 3 power
    iterations). ``speed_ratio``: exact float64 SVD time / the probe's cold top-k (to a 1e-6 bound) of the first.
    (b) The full probe of a Qwen2.5-1.5B-shaped model (``layers`` x q, k, v, o, gate, up, down; bf16 weights with
    realistic spectra, ``_model_w0``): the first (cold: W_0's subspaces computed too) and the second (warm-started:
    what runs every N steps) probe, with the bound's largest value, the matrices flagged and the mean passes; W_t is
    generated outside the timing. With ``processes`` > 1 (default 2), the matrices are split over that many real
    processes (gloo, one thread each, the source's split and gather): the wall seconds of each probe on the main
    process (it waits for the slowest rank's share, then aggregates) and each rank's compute seconds
    (``split``); with ``processes`` = 1, in this process on all its threads (``model``).
    ``device`` ``cuda``: (a) and (b) computed on the GPU (one process, W_0 and W_t resident there, as a GPU run
    holds them), and (a) also on the CPU: ``cpu_vs_device`` gives the largest |GPU - CPU| angle beside the sum of
    the two bounds (they must agree within it) and whether dW's intervals overlap.
    """
    import resource
    import statistics

    import torch

    from rlscope.probes.weight_matrix import matrix_geometry
    from rlscope.ritz import principal_angles
    from rlscope.topsvd import top_svd

    out: dict = {"bench": "weights", "k": k, "threads": torch.get_num_threads(), "device": device}
    if device != "cpu":
        processes = 1
    # (a) accuracy against exact float64 SVD
    spectra = {"mp_powerlaw": _spiked_matrix(n, 1536, seed=3), "flat": _spiked_matrix(1536, 1536, seed=4, flat=True),
               "decaying": _decaying_matrix(n, seed=5, m=1536)}
    accuracy = {}
    for kind, w0 in spectra.items():
        w0 = w0 / w0.norm() * 30  # a Frobenius norm like a trained matrix's; the angles do not depend on it
        exact_svd = [torch.linalg.svd(w.double(), full_matrices=False)
                     for w in (w0, _rl_update(w0, 1, size, 9), _rl_update(w0, 2, size, 9))]
        row, cache = {"shape": list(w0.shape)}, {}
        dev_cache: dict = {}
        for step in (1, 2):
            wt = _rl_update(w0, step, size, 9)
            stats, _ = matrix_geometry(w0, wt, k, cache=cache)
            if device != "cpu":  # the same on the device: within the bounds of the CPU's
                cpu_stats = stats
                stats, _ = matrix_geometry(w0.to(device), wt.to(device), k, cache=dev_cache)
                diff = max(abs(stats[key] - cpu_stats[key]) for key in ("angle_left_mean", "angle_left_max",
                                                                          "angle_right_mean", "angle_right_max"))
                overlap = all(max(stats[f"dw_sigma{i}"], cpu_stats[f"dw_sigma{i}"]) <= (1 + 1e-9) * min(
                    stats[f"dw_sigma{i}"] * (1 + stats["dw_sigma_bound"]),
                    cpu_stats[f"dw_sigma{i}"] * (1 + cpu_stats["dw_sigma_bound"])) for i in range(1, 5))
                row[f"cpu_vs_device{step}"] = {
                    "angle_diff": float(f"{diff:.3g}"),
                    "bounds_sum": float(f"{stats['angle_error_bound'] + cpu_stats['angle_error_bound']:.3g}"),
                    "dw_intervals_overlap": overlap}
            (U0, _, V0h), (Ut, _, Vth) = exact_svd[0], exact_svd[step]
            exact = {"left": principal_angles(U0[:, :k], Ut[:, :k]), "right": principal_angles(V0h[:k].T, Vth[:k].T)}
            err = max(abs(stats[f"angle_{side}_{f}"] - float(getattr(a, f)()))
                      for side, a in exact.items() for f in ("mean", "max"))
            with torch.random.fork_rng():  # the former method: common random numbers for W_0 and W_t
                old = []
                for w in (w0, wt):
                    torch.manual_seed(0)
                    old.append(torch.svd_lowrank(w, q=k + 16, niter=3))
            old_err = max(abs(float(getattr(principal_angles(old[0][i][:, :k], old[1][i][:, :k]), f)())
                              - float(getattr(exact[side], f)()))
                          for i, side in ((0, "left"), (2, "right")) for f in ("mean", "max"))
            target = max(1e-5, 0.01 * min(stats["angle_left_mean"], stats["angle_right_mean"]))
            row[f"probe{step}"] = {
                "exact_angle_mean": float(f"{float(exact['left'].mean()):.4g}"), "error": float(f"{err:.3g}"),
                "bound": float(f"{stats['angle_error_bound']:.3g}"), "target": float(f"{target:.3g}"),
                "within_bound": bool(err <= stats["angle_error_bound"]), "passes": int(stats["passes"]),
                "unresolved": int(stats["angle_unresolved"]), "unmet": int(stats["angle_bound_unmet"]),
                "old_randomized_error": float(f"{old_err:.3g}")}
            sdw = torch.linalg.svdvals(wt.double() - w0.double())  # dW's exact spectrum (float64)
            energy = float(sdw[0] ** 2 / (sdw ** 2).sum())
            dw_err = max(float(sdw[i - 1]) / stats[f"dw_sigma{i}"] - 1 for i in range(1, 5))
            row[f"probe{step}"].update({
                "dw_sigma_rel_error": float(f"{dw_err:.3g}"), "dw_sigma_bound": float(f"{stats['dw_sigma_bound']:.3g}"),
                "dw_energy_error": float(f"{energy - stats['dw_rank1_energy']:.3g}"),
                "dw_energy_bound": float(f"{stats['dw_rank1_energy_bound']:.3g}"),
                "dw_within_bound": bool(-1e-9 <= dw_err <= stats["dw_sigma_bound"] + 1e-9
                                        and -1e-9 <= energy - stats["dw_rank1_energy"]
                                        <= stats["dw_rank1_energy_bound"] + 1e-9),
                "dw_passes": int(stats["dw_passes"]), "dw_unmet": int(stats["dw_bound_unmet"])})
        row["w0_passes"] = cache["svd0"].passes
        accuracy[kind] = row
    out["accuracy"] = accuracy
    rows = [r[f"probe{step}"] for r in accuracy.values() for step in (1, 2)]
    out["probe_angle_error_rad"] = max(r["error"] for r in rows)  # the largest |reported - exact| of (a)
    out["bounds_hold"] = all(r["within_bound"] and r["dw_within_bound"] for r in rows)
    out["dw_sigma_rel_error"] = max(r["dw_sigma_rel_error"] for r in rows)
    w = spectra["mp_powerlaw"]
    runs = []
    wd = w.to(device)
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        top_svd(wd, k, tol=1e-6)
        _sync(device)
        runs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    torch.linalg.svd(w.double(), full_matrices=False)
    out["exact_svd_seconds"] = round(time.perf_counter() - t0, 3)
    out["cold_top_svd_seconds"] = round(statistics.median(runs), 4)
    out["speed_ratio"] = round(out["exact_svd_seconds"] / out["cold_top_svd_seconds"], 1)
    del spectra, exact_svd, w

    # (b) / (c) the full probe of a 1.5B-shaped model: one process, or split across processes (each costs minutes)
    specs = _model_shapes(layers, hidden, intermediate, kv_dim)
    options = dict(k=k, n_dw_sv=4, exact_below=256, abs_tol=1e-5, rel_tol=0.01, max_passes=40)
    out["matrices"] = len(specs)
    out["model"] = {"model": f"{layers} layers, hidden {hidden}, intermediate {intermediate}, kv {kv_dim}",
                    "matrices": len(specs), "matrix_params": sum(a * b for (a, b), _ in specs.values())}
    if processes <= 1:
        out["model"].update(_bench_model_one_process(specs, size, options, device))
    else:
        out["split"] = _bench_model_split(specs, size, options, processes)
    out["probe_seconds"] = (out["split"] if processes > 1 else out["model"])["probe2_warm_seconds"]
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    return out


_MODEL_KEYS = ("angle_left_mean", "angle_right_mean", "angle_error_bound", "angle_bound_unmet", "angle_unresolved",
               "passes", "dw_rel_norm", "dw_rank1_energy", "dw_sigma_bound", "dw_rank1_energy_bound", "dw_bound_unmet",
               "dw_passes", "n_matrices")


def _bench_model_one_process(specs: dict, size: float, options: dict, device: str = "cpu") -> dict:
    """(b): the two probes in this process (all its threads; or on ``device``, W_0 resident there)."""
    from rlscope.probes import scalars_of
    from rlscope.probes.weights import WeightView, weight_geometry

    w0s = {name: _model_w0(name, *spec).to(device) for name, spec in specs.items()}
    cache, state, model = {}, {}, {}
    for step in (1, 2):
        results, seconds = _probe_share(list(specs), specs, w0s, cache, step, size, options, device=device)
        t0 = time.perf_counter()
        agg = weight_geometry(WeightView(results=results, options=options), state, **options)
        seconds += time.perf_counter() - t0
        model[f"probe{step}_{'cold' if step == 1 else 'warm'}_seconds"] = round(seconds, 2)
        sc = scalars_of(agg)
        model[f"probe{step}"] = {key: float(f"{sc[key]:.4g}") for key in _MODEL_KEYS}
    return model


def _bench_model_split(specs: dict, size: float, options: dict, processes: int) -> dict:
    """(c): the two probes with the matrices split over ``processes`` real processes (gloo, one thread each)."""
    import json
    import tempfile
    from pathlib import Path

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "split.json")
        mp.spawn(_split_worker, args=(processes, _free_port(), path, specs, size, options), nprocs=processes, join=True)
        rep = json.loads(Path(path).read_text())
    split = {"processes": processes, "threads_per_process": 1}
    for step in (1, 2):
        r = rep[f"probe{step}"]
        split[f"probe{step}_{'cold' if step == 1 else 'warm'}_seconds"] = round(r["seconds"], 2)
        split[f"probe{step}_rank_compute_seconds"] = [round(x, 2) for x in r["rank_compute_seconds"]]
        split[f"probe{step}"] = {key: float(f"{r['scalars'][key]:.4g}") for key in _MODEL_KEYS}
    return split
