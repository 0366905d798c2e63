"""Weight-update geometry: singular-subspace rotation, singular-value scaling, and the structure of dW = W_t - W_0.

Jin et al. 2025 ("RL Fine-tuning Rotates ... : Singular Vectors, not Values"; see the survey's section 2) find that
RL post-training leaves the singular values of the weight matrices almost unchanged while their singular vectors
rotate, and that the rotation tracks out-of-distribution performance. Cai et al. 2025 (AlphaRL, "On Predictability of
Reinforcement Learning Dynamics for Large Language Models") find the update dW = W_t - W_0 is nearly rank-1 -- its top
singular direction recovers > 99% of the RL gain -- and that this direction evolves almost linearly in time.

Per matrix (top-k subspaces):
* ``angle_left_*`` / ``angle_right_*``: principal angles (radians) between span(U_0[:, :k]) and span(U_t[:, :k]) (resp.
  V), from the singular values of U_0^T U_t (Bjorck & Golub); mean and max over the k angles;
* ``sv_rel_change_*``: (s_t[i] - s_0[i]) / s_0[i] for the top-k singular values; mean |.| and max |.|;
* ``dw_sigma1`` ... : the top singular values of dW; ``dw_rank1_energy`` = sigma_1^2 / ||dW||_F^2 (the Frobenius
  norm exact, from all entries); ``dw_stable_rank`` = ||dW||_F^2 / sigma_1^2; ``dw_rel_norm`` = ||dW||_F / ||W_0||_F;
* ``dw_dir_cos_left`` / ``_right``: |<u_1, u_1_prev>| (sign-aligned cosine) of dW's top singular vectors with those
  of the previous probe -- near 1 when the dominant direction evolves linearly.

Exact SVD (``torch.linalg.svd``) for small matrices, randomized (``torch.svd_lowrank`` with oversampling and power
iterations, Halko et al. 2011) for large ones.

The registered probe ``weights`` (source ``weights``) reads a :class:`WeightView` -- the selected matrices with their
W_0, streamed one at a time -- and remembers each matrix's top-k SVD of W_0 and dW's last top singular vectors in its
state. Live, :mod:`rlscope.callbacks.sources.weights` builds the view from the training model (gathering ZeRO-3
shards); offline, :func:`rlscope.weight_geometry.offline_geometry` builds it from saved checkpoints.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Iterable

import torch

from rlscope.cadence import Cadence
from rlscope.probes import Records, register

DEFAULT_PATTERNS = ("*.q_proj.weight", "*.k_proj.weight", "*.v_proj.weight", "*.o_proj.weight",
                    "*.gate_proj.weight", "*.up_proj.weight", "*.down_proj.weight")
KINDS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
         "down_proj": "down"}
_LAYER = re.compile(r"(?:layers|h|blocks)\.(\d+)\.")


@dataclass
class TopSVD:
    """Top-k singular triplets: ``U`` (m, k), ``S`` (k,), ``V`` (n, k), as float32/float64 on CPU or device."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor


def select_matrices(names, patterns=DEFAULT_PATTERNS) -> list[str]:
    """Parameter names matching any glob pattern (embeddings, lm_head and norms are not matched by the defaults)."""
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


def kind_of(name: str) -> str:
    """The matrix kind of a parameter name: q, k, v, o, gate, up, down; otherwise its module's name (e.g.
    ``input_layernorm``, ``embed_tokens``)."""
    for key, kind in KINDS.items():
        if key in name:
            return kind
    return name.rsplit(".", 2)[-2] if "." in name else name


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def top_svd(w: torch.Tensor, k: int, exact_below: int = 1024, oversample: int = 16, niter: int = 3,
            seed: int = 0) -> TopSVD:
    """Top-``k`` SVD of ``w``: exact when min(m, n) <= ``exact_below``, else randomized (seeded).

    The randomized path always starts from the same seeded Gaussian test matrix ("common random numbers"): W_0 and
    W_t, which differ little, then carry nearly the same approximation error, which cancels in the principal angles
    between their subspaces. Measured on a 4096 x 4096 matrix with a 1/i spectrum: each top-16 subspace is within
    ~1e-2 rad of the exact one after 3 power iterations, the W_0-vs-W_t angles within ~3e-5 rad of their exact values
    (``rlscope bench weights`` prints both).
    """
    k = min(k, *w.shape)
    if min(w.shape) <= exact_below:  # small: exact, in float64 (reproducible across thread counts to ~1e-12)
        U, S, Vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
        return TopSVD(U[:, :k], S[:k], Vh[:k].T)
    w = w.detach().to(torch.float32)
    devices = [w.device] if w.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        U, S, V = torch.svd_lowrank(w, q=min(k + oversample, *w.shape), niter=niter)
    return TopSVD(U[:, :k], S[:k], V[:, :k])


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of orthonormal ``a`` (m, k) and ``b`` (m, k).

    Cosines from the singular values of a^T b are inaccurate for small angles (arccos is ill-conditioned near 1), so,
    as in Bjorck & Golub (1973) and scipy.linalg.subspace_angles, angles below pi/4 come from the sines: the singular
    values of b - a (a^T b).
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    ab = a.T @ b
    cos = torch.linalg.svdvals(ab).clamp(-1.0, 1.0)  # descending -> angles ascending
    sin = torch.linalg.svdvals(b - a @ ab).clamp(-1.0, 1.0).flip(0)  # ascending -> angles ascending
    small = sin < math.sqrt(0.5)
    return torch.where(small, torch.arcsin(sin), torch.arccos(cos)).sort().values


def matrix_geometry(w0: torch.Tensor, wt: torch.Tensor, k: int = 16, svd0: TopSVD | None = None,
                    prev_dir: tuple[torch.Tensor, torch.Tensor] | None = None, n_dw_sv: int = 4,
                    exact_below: int = 1024) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """The per-matrix statistics (see the module docstring) and dW's top singular vectors (for the next call)."""
    if w0.shape != wt.shape:
        raise ValueError(f"weight geometry: W_0 {tuple(w0.shape)} and W_t {tuple(wt.shape)} differ in shape")
    w0 = w0.detach().to(torch.float32)
    wt = wt.detach().to(torch.float32).to(w0.device)
    svd0 = svd0 or top_svd(w0, k, exact_below)
    svdt = top_svd(wt, k, exact_below)
    out: dict[str, float] = {}
    for side, a, b in (("left", svd0.U, svdt.U), ("right", svd0.V, svdt.V)):
        ang = principal_angles(a, b)
        out[f"angle_{side}_mean"] = float(ang.mean())
        out[f"angle_{side}_max"] = float(ang.max())
    rel = (svdt.S.double() - svd0.S.double()) / svd0.S.double().clamp(min=1e-30)
    out["sv_rel_change_mean"] = float(rel.abs().mean())
    out["sv_rel_change_max"] = float(rel.abs().max())
    dw = wt - w0
    fro2 = float(torch.linalg.vector_norm(dw)) ** 2  # float32 with torch's cascaded summation: rel. error ~1e-6
    out["dw_rel_norm"] = math.sqrt(fro2) / max(float(torch.linalg.vector_norm(w0)), 1e-30)
    svd_dw = top_svd(dw, max(n_dw_sv, 1), exact_below)
    for i, s in enumerate(svd_dw.S.tolist()[:n_dw_sv], start=1):
        out[f"dw_sigma{i}"] = s
    s1 = float(svd_dw.S[0]) if svd_dw.S.numel() else 0.0
    if fro2 > 0 and s1 > 0:
        out["dw_rank1_energy"] = s1 * s1 / fro2
        out["dw_stable_rank"] = fro2 / (s1 * s1)
    else:  # no update yet: flagged by NaN, not a fake number
        out["dw_rank1_energy"] = out["dw_stable_rank"] = math.nan
    u1, v1 = svd_dw.U[:, 0].double(), svd_dw.V[:, 0].double()
    if prev_dir is not None and fro2 > 0:
        out["dw_dir_cos_left"] = float((u1 @ prev_dir[0].double().to(u1.device)).abs())
        out["dw_dir_cos_right"] = float((v1 @ prev_dir[1].double().to(v1.device)).abs())
    else:
        out["dw_dir_cos_left"] = out["dw_dir_cos_right"] = math.nan
    return out, (u1.float().cpu(), v1.float().cpu())


LAYER_STATS = ("angle_left_mean", "angle_right_mean", "sv_rel_change_mean", "dw_rank1_energy")


def aggregate(per_matrix: dict[str, dict[str, float]]) -> dict[str, float]:
    """Means over all matrices (``<stat>``), per kind (``kind/<q>/<stat>``) and per layer (``layer/<i>/<stat>``, for
    :data:`LAYER_STATS` only, to keep the key count small); NaNs are left out of the means."""
    groups: dict[str, list[dict[str, float]]] = {"": list(per_matrix.values())}
    for name, stats in per_matrix.items():
        groups.setdefault(f"kind/{kind_of(name)}/", []).append(stats)
        layer = layer_of(name)
        if layer is not None:
            groups.setdefault(f"layer/{layer}/", []).append({k: stats[k] for k in LAYER_STATS if k in stats})
    out: dict[str, float] = {}
    for prefix, rows in groups.items():
        for key in rows[0] if rows else ():
            vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
            out[f"{prefix}{key}"] = sum(vals) / len(vals) if vals else math.nan
    return out


@dataclass
class WeightView:
    """The selected matrices at one probe, as ``(name, W_0, W_t)`` triples yielded one at a time (iterate once)."""

    matrices: Iterable[tuple[str, torch.Tensor, torch.Tensor]]


@register("weights", source="weights", inputs=("matrices",),
          outputs=("angle_left_mean", "angle_left_max", "angle_right_mean", "angle_right_max", "sv_rel_change_mean",
                   "sv_rel_change_max", "dw_rel_norm", "dw_sigma<i>", "dw_rank1_energy", "dw_stable_rank",
                   "dw_dir_cos_left", "dw_dir_cos_right", "kind/<kind>/<stat>", "layer/<i>/<stat>", "n_matrices"),
          extras=("per_matrix",),
          cost="heavy", cadence=Cadence(every=50, at_end=True), persist=("prev",))
def weight_geometry(view: WeightView, state: dict, k: int = 16, n_dw_sv: int = 4, exact_below: int = 1024) -> dict:
    """Rotation vs scaling of the weights and the structure of dW = W_t - W_0, per matrix and aggregated.

    Outputs: the per-matrix statistics of :func:`matrix_geometry` averaged over all matrices (``<stat>``), per kind
    (``kind/<q>/<stat>``) and per layer (``layer/<i>/<stat>``, a few stats); ``n_matrices``; ``per_matrix`` (one row
    per matrix, to ``weights.jsonl``). W_0's top-k SVD is computed once per matrix and kept in ``state``.
    """
    if k < 1:
        raise ValueError(f"weights probe: k must be >= 1, got {k}")
    svd0, prev = state.setdefault("svd0", {}), state.setdefault("prev", {})
    per: dict[str, dict[str, float]] = {}
    for name, w0, wt in view.matrices:
        if name not in svd0:
            svd0[name] = top_svd(w0, k, exact_below)
        per[name], prev[name] = matrix_geometry(w0, wt, k, svd0=svd0[name], prev_dir=prev.get(name),
                                                n_dw_sv=n_dw_sv, exact_below=exact_below)
    out: dict = dict(aggregate(per))
    out["n_matrices"] = float(len(per))
    out["per_matrix"] = Records("weights", [{"matrix": name, **stats} for name, stats in per.items()])
    return out
