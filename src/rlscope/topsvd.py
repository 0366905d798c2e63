"""Top-k singular triplets of a large matrix with a certified bound on their error: block Krylov iteration on
H = A^T A with Rayleigh-Ritz, certified by the residual bounds of
:mod:`rlscope.ritz`. Used by the weights probe's per-matrix geometry (:mod:`rlscope.probes.weight_matrix`).

How the subspaces are computed (:func:`top_svd`). Matrices whose smaller side is at most ``exact_below`` get a dense
float64 eigendecomposition of their Gram matrix. Larger ones get a block Krylov method on H = A^T A (A oriented tall,
so the vectors live in the smaller dimension) with Rayleigh-Ritz after every pass over the matrix (the residual
directions extend the block; thick restart keeps the best d = k + ``oversample`` Ritz vectors): passes in float32 until
the estimated bound is within 2x of its target, then one pass in float64 over the Ritz vectors and a last block of
residual directions that certifies it (Rayleigh-Ritz and residuals in float64: float32 rounding alone would leave the
residuals ~1e-7 relative, too coarse for a 1e-5 bound at a few % gap); when float32 rounding keeps the bound from
the target, the method goes on in float64. Warm starts: W_t starts from the previous probe's Ritz vectors (at the
first probe from W_0's), dW from its previous ones; W_0 is computed once per run (cold, from a seeded Gaussian block)
to 0.1 x ``abs_tol``. dW's top singular values are computed the same way with their own goal (:class:`ValueGoal`):
refined until their bounds (:func:`rlscope.ritz.value_bounds`, certified by the float64 pass) meet their targets.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from rlscope.ritz import ValueGoal, ritz_bound, value_bounds

MAX_PASSES = 40
_RESTART_BLOCKS = 6  # blocks in the Krylov space before a thick restart
_F32_EPS = float(torch.finfo(torch.float32).eps)
CERT_EXTEND = 16  # the float64 pass also takes this many residual directions (a last Krylov step)
CERTIFY_AT = 2.0  # the float64 pass certifies once the float32 estimate of the bound is below this x the target



@dataclass
class TopSVD:
    """Top-k singular triplets ``U`` (m, k), ``S`` (k,), ``V`` (n, k) in float64, with what the computation knows of
    their error: ``bound`` -- the sine of the largest angle between span(U) (and span(V)) and the exact top-k singular
    subspace is at most this (inf: sigma_k and sigma_{k+1} are not resolved apart; see :func:`ritz_bound`);
    ``rel_gap`` -- (sigma_k^2 - the estimated upper bound of sigma_{k+1}^2) / sigma_k^2; ``passes`` -- passes over the
    matrix; ``basis`` -- the best d Ritz vectors in the matrix's smaller dimension (float32), a warm start for the
    next call; ``certified`` -- whether ``bound`` comes from float64 residuals (dense, or the last pass in float64);
    ``S_up`` -- upper bounds of the singular values (:func:`value_bounds`; equal to ``S`` when dense), computed when
    the singular values were the goal (:class:`ValueGoal`), else None."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    bound: float = 0.0
    rel_gap: float = math.nan
    passes: int = 0
    basis: torch.Tensor | None = None
    certified: bool = True
    S_up: torch.Tensor | None = None  # upper bounds of the singular values (S, the Ritz values, are lower bounds)

_ALL_THREADS: list[int] = []  # the thread count outside small_ops (a stack: small_ops may nest)


@contextmanager
def small_ops():
    """Run the small dense algebra (n x 100 matrices, eigh of 100 x 100) on one thread: waking OpenMP threads for it
    costs more than the work, and on a busy machine far more (a 200 x 200 eigh on 2 threads of 2 busy cores: ~200 ms
    instead of ~1 ms). The passes over the matrices go back to all threads (:func:`all_threads`)."""
    full = torch.get_num_threads()
    _ALL_THREADS.append(_ALL_THREADS[-1] if _ALL_THREADS else full)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        _ALL_THREADS.pop()
        torch.set_num_threads(full)


@contextmanager
def all_threads():
    """Inside :func:`small_ops`: all threads again, for a pass over a matrix (a no-op outside it)."""
    now, full = torch.get_num_threads(), (_ALL_THREADS[-1] if _ALL_THREADS else None)
    if full is None or full == now:
        yield
        return
    torch.set_num_threads(full)
    try:
        yield
    finally:
        torch.set_num_threads(now)


class _Workspace:
    """Buffers reused from matrix to matrix (one set per thread): dW, and W_t in float32 on a GPU. A fresh tensor of a
    weight matrix's size is fresh memory from the OS, and the first write to each of its pages faults: converting an
    8960 x 1536 bf16 matrix into a new float32 tensor takes ~3x as long as into one already touched."""

    _local = threading.local()

    @classmethod
    def get(cls, slot: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` backed by buffer ``slot`` (valid until ``slot`` is asked for again)."""
        bufs = cls._local.__dict__.setdefault("bufs", {})
        buf = bufs.get(slot)
        n = math.prod(shape)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != torch.device(device):
            buf = bufs[slot] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


def _as(t: torch.Tensor, dtype: torch.dtype, slot: str) -> torch.Tensor:
    """``t`` in ``dtype``: itself when it already is, else converted into the workspace buffer ``slot`` (valid until
    that slot is asked for again)."""
    if t.dtype == dtype:
        return t
    return _Workspace.get(slot, t.shape, dtype, t.device).copy_(t)


# -- top-k singular triplets -------------------------------------------------------------------------------------------


def _orth(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(x).Q


def _eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eigh of a small symmetric matrix, on the host: a GPU's solver takes milliseconds to start on a 100 x 100 matrix
    that a CPU core decomposes in a fraction of one (on CPU: torch.linalg.eigh itself)."""
    if M.device.type == "cpu":
        return torch.linalg.eigh(M)
    e, W = torch.linalg.eigh(M.cpu())
    return e.to(M.device), W.to(M.device)


class _Gram:
    """H = A^T A for A = ``w`` oriented tall (``w.T`` when ``w`` is wide), applied to blocks in float32 or float64.

    On CPU a pass is one sweep over ``w`` as it is stored (:meth:`_sweep`): each block of A's rows (of ``w``'s columns
    when wide) gives its part of A X and adds its share of A^T (A X) while it is still in cache, so the matrix is read
    from memory once per pass instead of twice (a float32 pass of an 8960 x 1536 matrix: ~1.3x faster tall, ~1.5x
    wide). A block whose dtype is not the product's (bf16 weights; float64 products of float32 ones) is converted
    into one reused buffer: no converted copy of the whole matrix is made. On a GPU a bf16 / fp16 ``w`` is converted
    once into a reused float32 buffer (:class:`_Workspace`) and a pass is two large products."""

    BLOCK_BYTES = 1 << 21  # a block of the matrix in the product's dtype: stays in cache between its two products

    def __init__(self, w: torch.Tensor):
        self.wide = w.shape[0] < w.shape[1]  # w's orientation (the triplets are returned in it)
        self.n = min(w.shape)
        self.w64 = w if w.dtype == torch.float64 else None
        self.rows_wide = self.wide  # how ``stored`` holds A: as A^T (w itself) when True, as A when False
        if not w.is_cuda or w.dtype == torch.float32:  # on CPU swept as it is, each block converted in cache
            self.stored = w
        elif w.dtype == torch.float64:
            self.stored = w.float()
        else:
            self.stored = _Workspace.get("gram", (max(w.shape), self.n), torch.float32, w.device)
            with all_threads():
                self.stored.copy_(w.T if self.wide else w)
            self.rows_wide = False
        self._chunk: torch.Tensor | None = None
        self.passes = 0

    def apply(self, X: torch.Tensor, double: bool, want_ax: bool = True):
        """(A X or None, A^T A X) for ``X`` (n, b) float64; float64 results; on all threads."""
        self.passes += 1
        dtype = torch.float64 if double else torch.float32
        w = self.w64 if double and self.w64 is not None else self.stored
        with all_threads():
            if w.is_cuda:  # one large product each: what a GPU does best
                w, x = w.to(dtype), X.to(dtype)
                Y = (x.T @ w).T if self.rows_wide else w @ x
                Z = w @ Y if self.rows_wide else (Y.T @ w).T
            else:
                Y, Z = self._sweep(w, X.to(dtype), want_ax)
        return (Y.double() if want_ax else None), Z.double()

    def _chunk_buffer(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        if self._chunk is None or self._chunk.numel() < numel or self._chunk.dtype != dtype:
            self._chunk = torch.empty(numel, dtype=dtype)
        return self._chunk[:numel]

    def _sweep(self, w: torch.Tensor, x: torch.Tensor, want_ax: bool):
        """(A X or None, A^T A X) in ``x``'s dtype, in one sweep over ``w`` (converted block by block when its dtype
        differs)."""
        dtype, b = x.dtype, x.shape[1]
        convert = w.dtype != dtype
        step = max(8, self.BLOCK_BYTES // (x.element_size() * self.n))
        xt = x.T.contiguous()  # (A X)^T by blocks, as (b x n) @ (n x rows): on this layout BLAS runs skinny products
        # fastest (float64 with 40 columns: ~20% faster than rows @ x on an AMD EPYC core)
        axis = 1 if self.rows_wide else 0  # wide: blocks of w's columns (strided views: BLAS reads them); tall: rows
        big = w.shape[axis]
        buf = self._chunk_buffer(self.n * step, dtype) if convert else None
        Yt = torch.empty(b, big, dtype=dtype) if want_ax else None
        Zt = torch.zeros(b, self.n, dtype=dtype)
        for i in range(0, big, step):
            blk = w.narrow(axis, i, min(step, big - i))
            if convert:
                blk = buf[:blk.numel()].view(blk.shape).copy_(blk)
            at = blk if self.rows_wide else blk.T  # these rows of A, transposed (n x rows)
            yt = xt @ at  # (A X)^T for these rows of A
            if want_ax:
                Yt[:, i:i + step] = yt
            Zt.addmm_(yt, at.T)
        return (Yt.T.contiguous() if want_ax else None), Zt.T

    def times(self, X: torch.Tensor) -> torch.Tensor:
        """A X in float64 (not counted as a pass: a few columns, for the left vectors)."""
        w = self.w64 if self.w64 is not None else self.stored.float()
        x = X if w.dtype == torch.float64 else X.float()
        return ((x.T @ w).T if self.rows_wide else w @ x).double()


def _extend(Q: torch.Tensor, N: torch.Tensor) -> torch.Tensor | None:
    """An orthonormal block spanning what ``N`` adds to span(Q) (None when nothing: the space is invariant)."""
    scale = float(N.norm()) or 1.0
    N = N - Q @ (Q.T @ N)  # block Gram-Schmidt, then once more after normalising ("twice is enough")
    keep = N.norm(dim=0) > 1e-10 * scale
    if not bool(keep.any()):
        return None
    B = _orth(N[:, keep])
    B = B - Q @ (Q.T @ B)
    return _orth(B)


class _Space:
    """The Krylov space: an orthonormal basis Q, H Q, optionally A Q, and T = Q^T H Q, grown a block at a time in
    preallocated buffers (no re-concatenation, T updated by its new rows and columns only)."""

    def __init__(self, n: int, m: int, cap: int, keep_ax: bool, device):
        f64 = dict(dtype=torch.float64, device=device)
        self.Q, self.HQ = torch.empty(n, cap, **f64), torch.empty(n, cap, **f64)
        self.AQ = torch.empty(m, cap, **f64) if keep_ax else None
        self.T = torch.empty(cap, cap, **f64)
        self.c = 0

    def add(self, X, HX, AX) -> None:
        c, b = self.c, X.shape[1]
        self.Q[:, c:c + b], self.HQ[:, c:c + b] = X, HX
        if self.AQ is not None:
            self.AQ[:, c:c + b] = AX
        self.c = c + b
        col = self.Q[:, :c + b].T @ HX
        self.T[:c + b, c:c + b] = col
        self.T[c:c + b, :c] = col[:c].T

    def reset(self, V, HV, AV, theta) -> None:
        """Thick restart (or a new start) from Ritz vectors: T is their Ritz values."""
        b = V.shape[1]
        self.Q[:, :b], self.HQ[:, :b] = V, HV
        if self.AQ is not None and AV is not None:
            self.AQ[:, :b] = AV
        self.T[:b, :b] = torch.diag(theta)
        self.c = b

    def ritz(self, d: int):
        """Ritz values (descending, d), Ritz vectors V, H V, A V (or None)."""
        c = self.c
        T = self.T[:c, :c]
        theta, W = _eigh((T + T.T) / 2)
        theta, W = theta.flip(0)[:d], W.flip(1)[:, :d]
        AV = self.AQ[:, :c] @ W if self.AQ is not None else None
        return theta, self.Q[:, :c] @ W, self.HQ[:, :c] @ W, AV


def _triplets(op: _Gram, theta, V, AV, k, bound, rel_gap, passes, basis, certified, R=None) -> TopSVD:
    """The top-k triplets of Ritz pairs (with the singular values' upper bounds when ``R`` is given)."""
    s = theta[:k].clamp(min=0).sqrt()
    s_up = None if R is None else torch.tensor(value_bounds(theta, R, k), dtype=s.dtype).clamp(min=0).sqrt()
    U = AV[:, :k] / torch.where(s > 0, s, torch.ones_like(s))
    V = V[:, :k]
    if op.wide:  # the Krylov vectors live in w's row space: w = U S V^T with U the small side
        U, V = V, U
    return TopSVD(U, s, V, bound, rel_gap, passes, None if basis is None else basis.float(), certified,
                  None if s_up is None else s_up.to(s.device))


def _dense(op: _Gram, k: int, d: int) -> TopSVD:
    """Exact (float64) top-k triplets from the eigendecomposition of the n x n Gram matrix."""
    with all_threads():
        w = op.w64 if op.w64 is not None else op.stored.double()
        H = w @ w.T if op.rows_wide else w.T @ w
    theta, W = _eigh(H)
    theta, W = theta.flip(0), W.flip(1)
    d = min(d, op.n)
    R = H @ W[:, :d] - W[:, :d] * theta[:d]
    bound, gap = ritz_bound(theta[:d], R, k) if k < op.n else (0.0, math.nan)
    AV = (W[:, :k].T @ w).T if op.rows_wide else w @ W[:, :k]
    out = _triplets(op, theta, W, AV, k, bound, gap, 0, None, True)
    out.S_up = out.S.clone()  # exact (float64)
    return out


def top_svd(w: torch.Tensor, k: int, exact_below: int = 256, oversample: int = 8, start: torch.Tensor | None = None,
            tol: float | Callable = 1e-6, max_passes: int = MAX_PASSES, seed: int = 0,
            values: ValueGoal | None = None) -> TopSVD:
    """Top-``k`` singular triplets of ``w`` with a bound on their subspaces' error (:class:`TopSVD`).

    Dense (float64, exact) when min(m, n) <= ``exact_below``; otherwise block Krylov with Rayleigh-Ritz (module
    docstring) from ``start`` (a previous :attr:`TopSVD.basis`) or a seeded Gaussian block, until ``bound`` <= ``tol``
    or ``max_passes``. ``tol`` is a number or ``tol(U, V)`` of the current candidate's top-k vectors (either may be
    None: before the float64 pass only the smaller side's are known). With ``values`` (for dW) the goal is instead the
    singular values' bounds (:class:`ValueGoal`), certified the same way, and the result carries ``S_up``.
    """
    w = w.detach()
    op = _Gram(w)
    k = min(k, op.n)
    d = min(op.n, k + oversample)
    if op.n <= exact_below or d >= op.n:
        return _dense(op, k, d)
    given = tol if callable(tol) else (lambda U, V, _t=float(tol): _t)
    with small_ops():
        return _krylov(op, w, k, d, start, given, max_passes, seed, values)


def _krylov(op: _Gram, w: torch.Tensor, k: int, d: int, start, given: Callable, max_passes: int, seed: int,
            values: ValueGoal | None) -> TopSVD:
    """The block Krylov iteration of :func:`top_svd`. The stopping measure is the subspaces' bound against
    ``given`` (or, with ``values``, the singular values' excess over their targets: met at 1)."""

    def target(V: torch.Tensor, cand: TopSVD | None = None) -> float:
        if values is not None:  # the values' excess is normalised: met at 1
            return 1.0
        if cand is not None:
            return given(cand.U, cand.V)
        small = V[:, :k]
        return given(small, None) if op.wide else given(None, small)

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(op.n, d, generator=g, dtype=torch.float64).to(w.device)
    if start is not None:
        start = start.to(device=w.device, dtype=torch.float64)[:, :d]
        X = torch.cat([start, X[:, start.shape[1]:]], dim=1)
    X = _orth(X)
    keep_ax = values is not None  # A Q is needed for the left vectors only when this stage returns them
    space = _Space(op.n, max(w.shape), _RESTART_BLOCKS * d, keep_ax, w.device)
    double, history, goal = False, [], None
    res = None if values is None else True  # with values, the triplets carry the values' upper bounds

    def measure(theta, R, bound) -> float:
        return bound if values is None else values.excess(theta, R, op.passes)

    def certify(V, R):
        """One pass in float64 over the Ritz vectors and their residual directions (a last Krylov step): Rayleigh-Ritz
        and residuals in float64."""
        N = _extend(V, R[:, :CERT_EXTEND]) if CERT_EXTEND else None
        C = V if N is None else torch.cat([V, N], dim=1)
        AX, HX = op.apply(C, True)
        T = C.T @ HX
        theta, W2 = _eigh((T + T.T) / 2)
        theta, W2 = theta.flip(0)[:d], W2.flip(1)[:, :d]
        V, HV, AV = C @ W2, HX @ W2, AX @ W2
        R = HV - V * theta
        bound, gap = ritz_bound(theta, R, k)
        cand = _triplets(op, theta, V, AV, k, bound, gap, op.passes, V, True, R if res else None)
        return cand, theta, V, HV, AV, R, measure(theta, R, bound)

    while True:
        AX, HX = op.apply(X, double, want_ax=keep_ax or double)
        space.add(X, HX, AX)
        theta, V, HV, AV = space.ritz(d)
        R = HV - V * theta
        bound, gap = ritz_bound(theta, R, k)
        m = measure(theta, R, bound)
        out_of_passes = op.passes >= max_passes
        if double:  # float64 products: the bound is certified
            if out_of_passes or m <= target(V):
                cand = _triplets(op, theta, V, AV, k, bound, gap, op.passes, V, True, R if res else None)
                if out_of_passes or m <= target(V, cand):
                    return cand
        else:
            history.append(m)
            # stalled: no progress over three passes, or over one pass where float32 rounding can be what stops it
            if values is None:
                floor = _F32_EPS * float(theta[0]) / max(gap * float(theta[k - 1]), 1e-300) if gap > 0 else math.inf
            else:
                floor = _F32_EPS * float(theta[0]) / max(values.rel_tol * float(theta[k - 1]), 1e-300)
            stalled = ((len(history) >= 3 and math.isfinite(history[-3]) and history[-1] > 0.5 * history[-3])
                       or (len(history) >= 2 and history[-1] > 0.5 * history[-2] and history[-1] < 10 * floor))
            if math.isfinite(m) and (goal is None or m <= 20 * goal):  # the target moves little: re-read it
                goal = target(V)  # only near it (it costs two SVDs of n x k)
            near = goal is not None and m <= CERTIFY_AT * goal
            if near or stalled or op.passes >= max_passes - 1:
                cand, theta, V, HV, AV, R, m = certify(V, R)
                if op.passes >= max_passes or m <= target(V, cand):
                    return cand
                # the float32 estimate held (float32 rounding not yet in the way): more float32 passes from here;
                # otherwise go on in float64
                double = not m <= history[-1]
                if double and space.AQ is None:
                    space.AQ = torch.empty(max(w.shape), space.Q.shape[1], dtype=torch.float64, device=w.device)
                space.reset(V, HV, AV, theta)
                history = []
        if space.c + d > space.Q.shape[1]:  # thick restart: keep the d best Ritz vectors and their products
            space.reset(V, HV, AV, theta)
        X = _extend(space.Q[:, :space.c], R)
        if X is None:  # the space is invariant: nothing left to gain
            if double:
                return _triplets(op, theta, V, op.times(V) if AV is None else AV, k, bound, gap, op.passes, V,
                                 double, R if res else None)
            return certify(V, R)[0]
