"""Weight-update geometry: singular-subspace rotation, singular-value scaling, and the structure of dW = W_t - W_0.

Jin et al. 2025 ("RL Fine-tuning Rotates ... : Singular Vectors, not Values"; see the survey's section 2) find that
RL post-training leaves the singular values of the weight matrices almost unchanged while their singular vectors
rotate, and that the rotation tracks out-of-distribution performance. Cai et al. 2025 (AlphaRL, "On Predictability of
Reinforcement Learning Dynamics for Large Language Models") find the update dW = W_t - W_0 is nearly rank-1 -- its top
singular direction recovers > 99% of the RL gain -- and that this direction evolves almost linearly in time.

Per matrix (top-k subspaces):
* ``angle_left_*`` / ``angle_right_*``: principal angles (radians) between span(U_0[:, :k]) and span(U_t[:, :k]) (resp.
  V), from the singular values of U_0^T U_t (Bjorck & Golub); mean and max over the k angles;
* ``angle_error_bound``: every reported angle is within this of the angle between the *exact* top-k subspaces (see
  :mod:`rlscope.ritz`); ``angle_unresolved`` = 1 when sigma_k and sigma_{k+1} of W_0 or W_t are not separated, so
  that no top-k subspace is defined to measure (the angles are then NaN, not a number without meaning); ``angle_bound_unmet`` = 1
  when the bound did not reach its target within ``max_passes``; ``passes``: passes over W_t this probe;
* ``sv_rel_change_*``: (s_t[i] - s_0[i]) / s_0[i] for the top-k singular values; mean |.| and max |.|;
* ``dw_sigma1`` ... : the top singular values of dW; ``dw_rank1_energy`` = sigma_1^2 / ||dW||_F^2 (the Frobenius
  norm exact, from all entries, squares accumulated in float64); ``dw_stable_rank`` = ||dW||_F^2 / sigma_1^2;
  ``dw_rel_norm`` = ||dW||_F / ||W_0||_F; ``dw_sigma_bound``: each exact sigma_i of dW lies in [dw_sigma<i>,
  dw_sigma<i> x (1 + dw_sigma_bound)] (the Ritz values are lower bounds; the upper ones by Kato-Temple,
  :func:`rlscope.ritz.value_bounds`, certified in float64); ``dw_rank1_energy_bound``: the exact energy lies in
  [dw_rank1_energy, dw_rank1_energy + this]; ``dw_bound_unmet`` = 1 when these missed their targets (1% and 1e-3 by
  default) within ``max_passes``; ``dw_passes``: passes over dW;
* ``dw_dir_cos_left`` / ``_right``: |<u_1, u_1_prev>| (sign-aligned cosine) of dW's top singular vectors with those
  of the previous probe -- near 1 when the dominant direction evolves linearly.

LoRA adapters (Hu et al. 2021; :mod:`rlscope.adapters`): an adapted matrix is measured as its effective weight
W_t = W_base + s B_t A_t against W_0 = W_base + s B_0 A_0 and reported under its plain name (``...q_proj.weight``);
frozen matrices without an adapter are left out (they do not move). The angles are computed as for any matrix; dW =
s (B_t A_t - B_0 A_0) has rank <= r (2r when B_0 != 0) and its SVD is exact (two thin QRs and an r x r SVD; no
out x in matrix is formed): its bounds are 0 and ``dw_passes`` 0. Adapters add ``lora_rank`` (r) and the drift of the
adapter's own directions since the previous probe: ``lora_drift_out_*`` -- principal angles between span(B_t) and the
previous probe's span(B) (mean, max; radians), ``lora_drift_in_*`` -- the same for A's row span (NaN at the first
probe and while B = 0). ``n_adapted`` counts the adapted matrices.

The registered probe ``weights`` (source ``weights``) reads a :class:`WeightView`: the selected matrices with their
W_0, streamed one at a time (offline: :func:`rlscope.weight_geometry.offline_geometry`, which computes them with the
same :func:`matrix_results`), or the per-matrix results already computed (live: each rank computes its share of the
matrices with :func:`matrix_results`, :mod:`rlscope.callbacks.sources.weights`). Either way the probe aggregates them
and computes the direction cosines against the previous probe's directions, which it keeps in ``state``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Iterable

import torch

from rlscope.cadence import Cadence
from rlscope.probes import Records, register
from rlscope.probes.weight_matrix import (ABS_TOL, DW_ENERGY_TOL, DW_REL_TOL, MAX_PASSES, REL_TOL, MatrixResult,
                                          direction_cosines, kind_of, layer_of, matrix_results)


_MATRIX_DEFAULTS = {name: p.default for name, p in inspect.signature(matrix_results).parameters.items()
                    if p.default is not inspect.Parameter.empty}  # what results computed without an option used
LAYER_STATS = ("angle_left_mean", "angle_right_mean", "sv_rel_change_mean", "dw_rank1_energy")
MAX_STATS = ("angle_error_bound", "dw_sigma_bound", "dw_rank1_energy_bound")  # the largest: a bound on every matrix
SUM_STATS = ("angle_unresolved", "angle_bound_unmet", "dw_bound_unmet")  # aggregated as counts


def aggregate(per_matrix: dict[str, dict[str, float]]) -> dict[str, float]:
    """Over all matrices (``<stat>``), per kind (``kind/<q>/<stat>``) and per layer (``layer/<i>/<stat>``, for
    :data:`LAYER_STATS` only, to keep the key count small): means, except the largest for :data:`MAX_STATS` and
    counts for :data:`SUM_STATS`; NaNs are left out."""
    groups: dict[str, list[dict[str, float]]] = {"": list(per_matrix.values())}
    for name, stats in per_matrix.items():
        groups.setdefault(f"kind/{kind_of(name)}/", []).append(stats)
        layer = layer_of(name)
        if layer is not None:
            groups.setdefault(f"layer/{layer}/", []).append({k: stats[k] for k in LAYER_STATS if k in stats})
    out: dict[str, float] = {}
    for prefix, rows in groups.items():
        for key in dict.fromkeys(key for r in rows for key in r):  # every stat any matrix has (adapters add some)
            vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
            if key in SUM_STATS:
                out[f"{prefix}{key}"] = float(sum(vals))
            elif key in MAX_STATS:
                out[f"{prefix}{key}"] = max(vals) if vals else math.nan
            else:
                out[f"{prefix}{key}"] = sum(vals) / len(vals) if vals else math.nan
    return out


@dataclass
class WeightView:
    """The selected matrices at one probe: ``matrices``, ``(name, W_0, W_t)`` triples yielded one at a time (iterate
    once), for the probe to compute; or ``results``, the per-matrix :class:`MatrixResult` already computed with the
    probe options ``options`` (live, each rank its share)."""

    matrices: Iterable[tuple[str, torch.Tensor, torch.Tensor]] = ()
    results: list[MatrixResult] | None = None
    options: dict | None = None


@register("weights", source="weights", inputs=("matrices", "results"),
          outputs=("angle_left_mean", "angle_left_max", "angle_right_mean", "angle_right_max", "angle_error_bound",
                   "angle_unresolved", "angle_bound_unmet", "passes", "sv_rel_change_mean", "sv_rel_change_max",
                   "dw_rel_norm", "dw_sigma<i>", "dw_rank1_energy", "dw_stable_rank", "dw_sigma_bound",
                   "dw_rank1_energy_bound", "dw_bound_unmet", "dw_passes", "dw_dir_cos_left",
                   "dw_dir_cos_right", "lora_rank", "lora_drift_out_mean", "lora_drift_out_max",
                   "lora_drift_in_mean", "lora_drift_in_max", "kind/<kind>/<stat>", "layer/<i>/<stat>", "n_matrices",
                   "n_adapted"),
          extras=("per_matrix",),
          cost="heavy", cadence=Cadence(every=50, at_end=True), persist=("prev",))
def weight_geometry(view: WeightView, state: dict, k: int = 16, n_dw_sv: int = 4, exact_below: int = 256,
                    abs_tol: float = ABS_TOL, rel_tol: float = REL_TOL, max_passes: int = MAX_PASSES,
                    dw_rel_tol: float = DW_REL_TOL, dw_energy_tol: float = DW_ENERGY_TOL) -> dict:
    """Rotation vs scaling of the weights and the structure of dW = W_t - W_0, per matrix and aggregated, each angle
    with a bound on its error.

    Outputs: the per-matrix statistics of :func:`matrix_geometry` aggregated over all matrices (``<stat>``: means;
    ``angle_error_bound`` the largest, ``angle_unresolved`` / ``angle_bound_unmet`` counts), per kind
    (``kind/<q>/<stat>``) and per layer (``layer/<i>/<stat>``, a few stats); ``n_matrices``; ``per_matrix`` (one row
    per matrix, to ``weights.jsonl``). Options: ``k`` (subspace size), ``n_dw_sv`` (singular values of dW reported),
    ``exact_below`` (dense float64 when the smaller side is at most this), ``abs_tol`` / ``rel_tol`` (each angle's
    error bound is refined below max(abs_tol, rel_tol x angle)), ``dw_rel_tol`` / ``dw_energy_tol`` (dW's singular
    values are refined until each is within dw_rel_tol relative and the rank-1 energy within dw_energy_tol absolute),
    ``max_passes`` (per matrix and probe, for W_t and for dW). ``state``
    keeps dW's previous directions (``prev``, persisted for resumes) and, offline, each matrix's ``cache``.
    """
    options = dict(k=k, n_dw_sv=n_dw_sv, exact_below=exact_below, abs_tol=abs_tol, rel_tol=rel_tol,
                   max_passes=max_passes, dw_rel_tol=dw_rel_tol, dw_energy_tol=dw_energy_tol)
    if k < 1:
        raise ValueError(f"weights probe: k must be >= 1, got {k}")
    if not (abs_tol > 0 and rel_tol >= 0 and max_passes >= 2 and dw_rel_tol > 0 and dw_energy_tol > 0):
        raise ValueError(f"weights probe: need abs_tol > 0, rel_tol >= 0, max_passes >= 2, dw_rel_tol > 0, "
                         f"dw_energy_tol > 0; got abs_tol={abs_tol}, rel_tol={rel_tol}, max_passes={max_passes}, "
                         f"dw_rel_tol={dw_rel_tol}, dw_energy_tol={dw_energy_tol}")
    prev = state.setdefault("prev", {})
    if view.results is not None:
        if view.options is not None and {**_MATRIX_DEFAULTS, **view.options} != options:
            raise ValueError(f"weights probe: the per-matrix results were computed with {view.options}, the probe "
                             f"runs with {options}")
        results: Iterable[MatrixResult] = view.results
    else:
        results = matrix_results(view.matrices, state.setdefault("cache", {}), **options)
    per: dict[str, dict[str, float]] = {}
    for res in results:
        if res.error is not None:
            raise RuntimeError(f"weights probe: matrix {res.name}: {res.error}")
        stats = dict(res.stats)
        stats.update(direction_cosines(res.dirs, prev.get(res.name)))
        if res.dirs is not None:
            prev[res.name] = res.dirs
        per[res.name] = stats
    out: dict = dict(aggregate(per))
    out["n_matrices"] = float(len(per))
    out["n_adapted"] = float(sum("lora_rank" in stats for stats in per.values()))
    out["per_matrix"] = Records("weights", [{"matrix": name, **stats} for name, stats in per.items()])
    return out
