"""One matrix's weight-update geometry: W_t's top-k subspaces against W_0's (principal angles with their error
bound), the change of the top singular values, and the spectrum of dW = W_t - W_0; the per-matrix computation the
weights probe (:mod:`rlscope.probes.weights`) runs offline and each rank runs on its share live. The definitions of
the statistics are in :mod:`rlscope.probes.weights`; the linear algebra in :mod:`rlscope.topsvd`.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from rlscope.adapters import LoraWeight, adapter_bases, drift, lowrank_svd, update_factors
from rlscope.ritz import SIGMA_FLOOR, ValueGoal, angle_error, principal_angles
from rlscope.topsvd import MAX_PASSES, TopSVD, _as, _Workspace, all_threads, small_ops, top_svd

DEFAULT_PATTERNS = ("*.q_proj.weight", "*.k_proj.weight", "*.v_proj.weight", "*.o_proj.weight",
                    "*.gate_proj.weight", "*.up_proj.weight", "*.down_proj.weight")
KINDS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
         "down_proj": "down"}
_LAYER = re.compile(r"(?:layers|h|blocks)\.(\d+)\.")
ABS_TOL, REL_TOL = 1e-5, 0.01
W0_TOL_SHARE = 0.1  # W_0 (computed once) is refined to this share of abs_tol, leaving the rest of the budget to W_t
DW_REL_TOL, DW_ENERGY_TOL = 0.01, 1e-3  # dW: each sigma_i within 1% (relative), sigma_1^2 / ||dW||_F^2 within 1e-3
DW_DIR_TOL, DW_DIR_PASSES = 1e-3, 6  # and its top direction within ~1e-3 rad (estimated) or this many passes
MATRIX_OPTIONS = ("k", "n_dw_sv", "exact_below", "abs_tol", "rel_tol", "max_passes", "dw_rel_tol", "dw_energy_tol")


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


_SQ_CHUNK = 1 << 16


def _sq_sum(parts: Iterable[torch.Tensor]) -> float:
    """The sum of the squares of ``parts`` (1-d, at most ``_SQ_CHUNK`` entries each), accumulated in float64: each
    part converted into one float64 buffer that stays in cache."""
    buf = torch.empty(_SQ_CHUNK, dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for part in parts:
        c = part if part.dtype == torch.float64 else buf[:part.numel()].copy_(part)
        total += torch.dot(c, c)
    return float(total)


def sq_norm(t: torch.Tensor) -> float:
    """||t||_F^2 with the squares accumulated in float64 (a float32 accumulation is off by ~1e-3 relative at 8960 x
    1536). On CPU in blocks (:func:`_sq_sum`: faster than converting the whole tensor, no extra 8 bytes per entry)."""
    t = t.detach()
    if t.is_cuda or t.numel() <= _SQ_CHUNK:
        return float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
    return _sq_sum(t.reshape(-1).split(_SQ_CHUNK))


def difference(wt: torch.Tensor, w0: torch.Tensor, out: torch.Tensor) -> float:
    """``out`` = wt - w0 (``out``'s dtype, float32 or float64: exact for bf16 or float32 weights) and ||out||_F^2
    (squares accumulated in float64, as :func:`sq_norm`), in one sweep of blocks that stay in cache on CPU."""
    if out.is_cuda or out.numel() <= _SQ_CHUNK:
        torch.sub(out.copy_(wt), w0, out=out)
        return sq_norm(out)
    o, a, b, c = out.view(-1), wt.reshape(-1), w0.reshape(-1), _SQ_CHUNK
    return _sq_sum(o[i:i + c].copy_(a[i:i + c]).sub_(b[i:i + c]) for i in range(0, o.numel(), c))


def _angle_stats(svd0: TopSVD, svdt: TopSVD) -> dict[str, float]:
    out = {}
    for side, a, b in (("left", svd0.U, svdt.U), ("right", svd0.V, svdt.V)):
        ang = principal_angles(a, b)
        out[f"angle_{side}_mean"] = float(ang.mean())
        out[f"angle_{side}_max"] = float(ang.max())
    return out


def angle_target(angle: float, abs_tol: float = ABS_TOL, rel_tol: float = REL_TOL) -> float:
    """The error an angle may carry: max(``abs_tol``, ``rel_tol`` x the angle)."""
    return max(abs_tol, rel_tol * angle) if math.isfinite(angle) else abs_tol


def direction_cosines(dirs, prev_dir) -> dict[str, float]:
    """|cos| between dW's top singular vectors ``dirs`` = (u_1, v_1) and the previous probe's (NaN without either)."""
    if dirs is None or prev_dir is None:
        return {"dw_dir_cos_left": math.nan, "dw_dir_cos_right": math.nan}
    u1, v1 = dirs[0].double(), dirs[1].double()
    return {"dw_dir_cos_left": float((u1 @ prev_dir[0].double().to(u1.device)).abs()),
            "dw_dir_cos_right": float((v1 @ prev_dir[1].double().to(v1.device)).abs())}


def matrix_geometry(w0: torch.Tensor, wt: torch.Tensor, k: int = 16, svd0: TopSVD | None = None,
                    prev_dir: tuple[torch.Tensor, torch.Tensor] | None = None, n_dw_sv: int = 4,
                    exact_below: int = 256, cache: dict | None = None, abs_tol: float = ABS_TOL,
                    rel_tol: float = REL_TOL, max_passes: int = MAX_PASSES, dw_rel_tol: float = DW_REL_TOL,
                    dw_energy_tol: float = DW_ENERGY_TOL
                    ) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor] | None]:
    """The per-matrix statistics (module docstring) and dW's top singular vectors (u_1, v_1) for the next call's
    direction cosines (None when dW = 0).

    ``cache`` (a dict per matrix, kept between calls) holds what the next call reuses: W_0's triplets, ||W_0||_F^2
    and the warm-start bases of W_t and dW. ``svd0`` (W_0's triplets) may be given instead.

    The computation runs where ``wt`` lives (a GPU's W_t is read in place; ``w0`` is brought there); on a CPU it
    sweeps the matrix in cache-sized blocks (:class:`rlscope.topsvd._Gram`).
    """
    with small_ops():
        return _matrix_geometry(w0, wt, k, svd0, prev_dir, n_dw_sv, exact_below, cache, abs_tol, rel_tol, max_passes,
                                dw_rel_tol, dw_energy_tol)


def _rotation(w0_of, wt, k, cache, exact_below, abs_tol, rel_tol, max_passes, work) -> dict[str, float]:
    """W_t's top-k subspaces against W_0's (angles, their bound, the singular values' change). ``w0_of()`` gives W_0
    on W_t's device: called once per run, when W_0's triplets and norm are not yet in ``cache``."""
    if "svd0" not in cache or "fro0" not in cache:  # once per run: W_0 (bf16 as it is: top_svd converts it)
        w0 = w0_of()
        with all_threads():
            w0w = w0 if w0.dtype in (torch.bfloat16, torch.float16) else _as(w0, work, "w")
        if "svd0" not in cache:
            cache["svd0"] = top_svd(w0w, k, exact_below, tol=W0_TOL_SHARE * abs_tol, max_passes=max(max_passes, 60))
        if "fro0" not in cache:
            with all_threads():
                cache["fro0"] = sq_norm(w0w)
        del w0w
    s0 = cache["svd0"]
    e0 = math.asin(min(1.0, s0.bound)) if math.isfinite(s0.bound) else math.inf
    resolved0 = math.isfinite(e0)

    def tol(U, V):
        if not resolved0:  # no top-k subspace of W_0 to compare with: singular values only
            return 1e-3
        means = [float(principal_angles(a, b).mean()) for a, b in ((s0.U, U), (s0.V, V)) if b is not None]
        room = angle_target(min(means), abs_tol, rel_tol) - e0
        return math.sin(room) if room > 0 else 0.1 * abs_tol

    svdt = top_svd(wt, k, exact_below, start=cache.get("basis_t", s0.basis), tol=tol, max_passes=max_passes)
    cache["basis_t"] = svdt.basis
    out: dict[str, float] = _angle_stats(s0, svdt)
    err = angle_error(s0.bound, svdt.bound) if resolved0 and math.isfinite(svdt.bound) else math.nan
    unresolved = not math.isfinite(err)
    if unresolved:
        for key in list(out):
            out[key] = math.nan
    out["angle_error_bound"] = err
    out["angle_unresolved"] = float(unresolved)
    need = angle_target(min(out["angle_left_mean"], out["angle_right_mean"]), abs_tol, rel_tol)
    out["angle_bound_unmet"] = float(not unresolved and err > need)
    out["passes"] = float(svdt.passes)
    rel = (svdt.S - s0.S.to(svdt.S.device)) / s0.S.to(svdt.S.device).clamp(min=1e-30)
    out["sv_rel_change_mean"] = float(rel.abs().mean())
    out["sv_rel_change_max"] = float(rel.abs().max())
    return out


def _no_update(out: dict, n_dw_sv: int) -> None:
    """dW = 0 (no update yet): flagged by NaN, not a fake number."""
    for i in range(1, n_dw_sv + 1):
        out[f"dw_sigma{i}"] = 0.0
    out["dw_rank1_energy"] = out["dw_stable_rank"] = math.nan
    out["dw_sigma_bound"] = out["dw_rank1_energy_bound"] = 0.0
    out["dw_bound_unmet"], out["dw_passes"] = 0.0, 0.0
    out.update(direction_cosines(None, None))


def _matrix_geometry(w0, wt, k, svd0, prev_dir, n_dw_sv, exact_below, cache, abs_tol, rel_tol, max_passes,
                     dw_rel_tol, dw_energy_tol):
    if w0.shape != wt.shape:
        raise ValueError(f"weight geometry: W_0 {tuple(w0.shape)} and W_t {tuple(wt.shape)} differ in shape")
    if isinstance(wt, LoraWeight):
        return _lora_geometry(w0, wt, k, svd0, prev_dir, n_dw_sv, exact_below, cache, abs_tol, rel_tol, max_passes,
                              dw_rel_tol, dw_energy_tol)
    if w0.dim() != 2:
        raise ValueError(f"weight geometry: a matrix is needed, got a tensor of shape {tuple(w0.shape)}")
    cache = {} if cache is None else cache
    keep64 = w0.dtype == torch.float64 and wt.dtype == torch.float64
    work = torch.float64 if keep64 else torch.float32
    wt = wt.detach()
    w0 = w0.detach().to(device=wt.device, non_blocking=True)
    if svd0 is not None:
        cache["svd0"] = svd0
    out = _rotation(lambda: w0, wt, k, cache, exact_below, abs_tol, rel_tol, max_passes, work)
    with all_threads():  # dW in the working precision (exact for bf16 or float32 weights), into a reused buffer
        dw = _Workspace.get("dw", wt.shape, work, wt.device)
        fro2 = difference(wt, w0, dw)
    out["dw_rel_norm"] = math.sqrt(fro2 / cache["fro0"]) if cache["fro0"] > 0 else math.nan
    n = max(n_dw_sv, 1)
    if fro2 == 0:
        _no_update(out, n_dw_sv)
        return out, None
    goal = ValueGoal(n, dw_rel_tol, dw_energy_tol, fro2, DW_DIR_TOL, DW_DIR_PASSES)
    svd_dw = top_svd(dw, n, exact_below, oversample=4, start=cache.get("basis_dw"), max_passes=max_passes,
                     values=goal)
    cache["basis_dw"] = svd_dw.basis
    out.update(dw_spectrum(svd_dw.S.tolist()[:n], svd_dw.S_up.tolist()[:n], fro2, goal, n_dw_sv))
    out["dw_passes"] = float(svd_dw.passes)
    dirs = (svd_dw.U[:, 0].float().cpu(), svd_dw.V[:, 0].float().cpu())
    out.update(direction_cosines(dirs, prev_dir))
    return out, dirs


def _lora_geometry(w0: LoraWeight, wt: LoraWeight, k, svd0, prev_dir, n_dw_sv, exact_below, cache, abs_tol, rel_tol,
                   max_passes, dw_rel_tol, dw_energy_tol):
    """An adapted matrix (:mod:`rlscope.adapters`): W_t = W_base + s B_t A_t against W_0 = W_base + s B_0 A_0. The
    rotation is today's bounded top-k of W_t (formed in float64 once per probe in a reused buffer; W_0 only at the
    first probe, and not at all when B_0 = 0); dW = s (B_t A_t - B_0 A_0), of rank <= 2r, is never formed: its SVD is exact
    (:func:`rlscope.adapters.lowrank_svd`), so its bounds are 0. Adds the adapter's own directions' drift since the
    previous probe (``lora_drift_out_*``: span(B), ``lora_drift_in_*``: A's row span) and ``lora_rank``."""
    cache = {} if cache is None else cache
    dev = wt.base.device
    work = torch.float64  # W = W_base + s B A formed in float64: the bounds then hold for the exact W (a float32
    # formation would round it by ~1e-7 relative, more than an angle's bound on a dense matrix)
    if svd0 is not None:
        cache["svd0"] = svd0

    def w0_of():
        base0 = w0.base.detach().to(dev)
        if w0.is_base():
            return base0
        return LoraWeight(base0, w0.B, w0.A, w0.scaling).dense(_Workspace.get("lora_w0", w0.shape, work, dev))

    with all_threads():
        wt_dense = wt.dense(_Workspace.get("lora_wt", wt.shape, work, dev))
    out = _rotation(w0_of, wt_dense, k, cache, exact_below, abs_tol, rel_tol, max_passes, work)
    L, R, s = update_factors(w0, wt)
    U, S, V = lowrank_svd(L, R, s)
    fro2 = float(S.square().sum())  # ||dW||_F^2 exactly (the core's singular values: Q_L, Q_R are orthonormal)
    out["dw_rel_norm"] = math.sqrt(fro2 / cache["fro0"]) if cache["fro0"] > 0 else math.nan
    out["lora_rank"] = float(wt.A.shape[0])
    bases = adapter_bases(wt)
    for side, now, key in (("out", bases[0], "lora_qb"), ("in", bases[1], "lora_qa")):
        out[f"lora_drift_{side}_mean"], out[f"lora_drift_{side}_max"] = drift(cache.get(key), now)
        if now is not None:
            cache[key] = now
    n = max(n_dw_sv, 1)
    if fro2 == 0:
        _no_update(out, n_dw_sv)
        return out, None
    vals = S.tolist()[:n] + [0.0] * max(0, n - S.numel())
    goal = ValueGoal(n, dw_rel_tol, dw_energy_tol, fro2)
    out.update(dw_spectrum(vals, vals, fro2, goal, n_dw_sv))  # exact: every bound 0
    out["dw_passes"] = 0.0
    dirs = (U[:, 0].float().cpu(), V[:, 0].float().cpu())
    out.update(direction_cosines(dirs, prev_dir))
    return out, dirs


def dw_spectrum(s: list[float], s_up: list[float], fro2: float, goal: ValueGoal, n_dw_sv: int) -> dict[str, float]:
    """dW's reported spectrum and its bounds from its top singular values' lower ends ``s`` (the Ritz values) and
    upper bounds ``s_up`` (:func:`rlscope.ritz.value_bounds`): ``dw_sigma<i>`` (exact in [s_i, s_i (1 +
    dw_sigma_bound)]), ``dw_rank1_energy`` = s_1^2 / ||dW||_F^2 (exact in [e, e + dw_rank1_energy_bound]),
    ``dw_stable_rank`` = 1 / energy, ``dw_bound_unmet`` (1 when a bound misses ``goal``'s targets). A singular value
    below ``SIGMA_FLOOR`` x sigma_1 is numerically zero: it is left out of the relative bound (its error is below that
    floor x sigma_1)."""
    out = {f"dw_sigma{i}": v for i, v in enumerate(s[:n_dw_sv], start=1)}
    s1 = s[0]
    out["dw_rank1_energy"] = s1 * s1 / fro2 if s1 > 0 else math.nan
    out["dw_stable_rank"] = fro2 / (s1 * s1) if s1 > 0 else math.nan
    rel = [(u - x) / x for x, u in zip(s[:max(n_dw_sv, 1)], s_up) if x > SIGMA_FLOOR * s1 and x > 0]
    out["dw_sigma_bound"] = max(rel) if rel else (0.0 if s_up[0] <= s1 else math.inf)
    out["dw_rank1_energy_bound"] = (s_up[0] ** 2 - s1 * s1) / fro2
    out["dw_bound_unmet"] = float(not goal.value_excess(s, s_up) <= 1.0)
    return out


@dataclass
class MatrixResult:
    """One matrix's statistics (``stats``), dW's top singular vectors (``dirs``; None when dW = 0), or the ``error``
    that stopped them (a rank that failed sends it to the main process, whose probe raises it)."""

    name: str
    stats: dict[str, float] = field(default_factory=dict)
    dirs: tuple[torch.Tensor, torch.Tensor] | None = None
    error: str | None = None


def matrix_results(matrices: Iterable[tuple[str, torch.Tensor, torch.Tensor]], cache: dict, k: int = 16,
                   n_dw_sv: int = 4, exact_below: int = 256, abs_tol: float = ABS_TOL, rel_tol: float = REL_TOL,
                   max_passes: int = MAX_PASSES, dw_rel_tol: float = DW_REL_TOL,
                   dw_energy_tol: float = DW_ENERGY_TOL) -> Iterator[MatrixResult]:
    """:func:`matrix_geometry` of each ``(name, W_0, W_t)``, with ``cache[name]`` carried between probes: the one
    per-matrix computation, run by the probe offline and by each rank on its share live."""
    for name, w0, wt in matrices:
        stats, dirs = matrix_geometry(w0, wt, k, n_dw_sv=n_dw_sv, exact_below=exact_below,
                                      cache=cache.setdefault(name, {}), abs_tol=abs_tol, rel_tol=rel_tol,
                                      max_passes=max_passes, dw_rel_tol=dw_rel_tol, dw_energy_tol=dw_energy_tol)
        yield MatrixResult(name, stats, dirs)
