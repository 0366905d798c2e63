"""Error bounds of Ritz pairs and angles between subspaces: how far the computed top-k singular subspaces and
singular values of :mod:`rlscope.topsvd` can be from the exact ones (Davis-Kahan / Wedin for subspaces; Kato-Temple
and a Ky Fan / Davis-Kahan block bound for values), and principal angles (Bjorck & Golub).

The error bound (:func:`ritz_bound`). For Ritz pairs (theta_i, y_i) of H from a subspace Q with residuals
r_i = H y_i - theta_i y_i (orthogonal to Q), the Davis-Kahan sin-theta theorem (Davis & Kahan 1970; for singular
subspaces Wedin 1972) bounds the sine of the largest angle between span(y_1..y_k) and the exact top-k eigenspace by
||R_k||_2 / (theta_k - lambda_{k+1}). Because R_k is orthogonal to Q, the part of it along the next few exact
eigenvectors x_{k+1..k+s} (which Q nearly contains) is much smaller: splitting the complement into those ("near")
and the rest ("far") gives ||R_k|| * sqrt((eps_s / (theta_k - lambda_{k+1}))^2 + 1 / (theta_k - lambda_{k+s+1})^2),
eps_s the Davis-Kahan bound of the k+s block; the smallest over s is used (s = 0 is the plain theorem; the
refinement is in the spirit of Knyazev 1997, "New estimates for Ritz vectors"). The left vectors u_i = A y_i / sigma_i
have an error at most sigma_{k+1} / sigma_k times that of the right ones, so one bound covers both sides. The
eigenvalues lambda_j of the exact H above are bounded by theta_j + ||r_j|| (Kahan), which holds as long as the Krylov
space has not missed an eigenvalue altogether -- the standing assumption of Krylov and randomized methods (the tests
check the bound against exact SVD on power-law, flat and 1/i spectra). An angle between W_0's and W_t's computed
subspaces then differs from the one between the exact subspaces by at most asin(bound_0) + asin(bound_t): the
principal angles are 1-Lipschitz in each subspace for the largest-angle metric (Qiu, Zhang & Li 2005; Knyazev &
Argentati 2006). The refinement stops once that is below max(``abs_tol``, ``rel_tol`` x the smaller mean angle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def ritz_bound(theta: torch.Tensor, R: torch.Tensor, k: int) -> tuple[float, float]:
    """A bound on the sine of the largest angle between the top-k Ritz vectors and the exact top-k eigenspace of a
    symmetric H (here A^T A), and the relative gap it rests on.

    ``theta``: the Ritz values (descending, d of them); ``R``: their residuals H y_i - theta_i y_i as columns, each
    orthogonal to the Rayleigh-Ritz subspace. Davis-Kahan (1970): sin <= ||R_k|| / (theta_k - lambda_{k+1}); refined
    (module docstring) with the next s Ritz vectors: ||R_k|| sqrt((eps_s / (theta_k - lambda_{k+1}))^2 +
    (1 / (theta_k - lambda_{k+s+1}))^2), eps_s = min(1, ||R_{k+s}|| / (theta_{k+s} - lambda_{k+s+1})); the smallest
    over s. lambda_j <= theta_j + ||r_j|| (Kahan). Returns (inf, gap) when theta_k is not above that bound of
    lambda_{k+1}; (0, nan) when there is no complement (k >= d).
    """
    d = theta.numel()
    if k >= d:
        return 0.0, math.nan
    G = (R.T @ R).cpu()  # spectral norms of the leading column blocks from their d x d Gram matrix (on the host)

    def norm2(j: int) -> float:
        return math.sqrt(max(float(torch.linalg.eigvalsh(G[:j, :j])[-1]), 0.0))

    th = theta.tolist()
    lam = (theta.cpu() + G.diagonal().clamp(min=0).sqrt()).tolist()  # upper bounds of the exact eigenvalues
    near = th[k - 1] - lam[k]
    if not near > 0:
        return math.inf, near / max(th[k - 1], 1e-300)
    rk = norm2(k)
    best = rk / near
    for s in range(1, d - k):
        far, block = th[k - 1] - lam[k + s], th[k + s - 1] - lam[k + s]
        if far <= 0 or block <= 0:
            continue
        eps = min(1.0, norm2(k + s) / block)
        best = min(best, rk * math.sqrt((eps / near) ** 2 + 1.0 / far ** 2))
    return best, near / th[k - 1]


def angle_error(bound0: float, bound_t: float) -> float:
    """The largest error of any principal angle between two computed subspaces whose errors (sines of their largest
    angles to the exact subspaces) are at most ``bound0`` and ``bound_t`` (Qiu, Zhang & Li 2005)."""
    return math.asin(min(1.0, bound0)) + math.asin(min(1.0, bound_t))


def value_bounds(theta: torch.Tensor, R: torch.Tensor, n: int) -> list[float]:
    """Upper bounds of the exact eigenvalues lambda_1..lambda_n of a symmetric H (here A^T A) from Ritz values
    ``theta`` (descending, d > n of them) and their residuals ``R`` (columns).

    The Ritz values are lower bounds: theta_i <= lambda_i (Cauchy interlacing, for Rayleigh-Ritz from any subspace).
    Above, by Kato-Temple (Kato 1949; Temple 1952; Parlett, "The Symmetric Eigenvalue Problem", thm. 11.7.1): if
    lambda_{i+1} <= a < theta_i, then ||r_i||^2 >= (theta_i - a)(b - theta_i) for any b such that (a, b) holds no
    eigenvalue, so an eigenvalue -- one of lambda_1..lambda_i, all above a -- lies in (a, theta_i + ||r_i||^2 /
    (theta_i - a)], and lambda_i <= theta_i + ||r_i||^2 / (theta_i - a). Applied from the bottom up with a the bound
    of lambda_{i+1} (the quadratic bound is far tighter than the residual once the Ritz values separate); where they
    do not, lambda_i <= theta_i + ||r_i|| (Weyl / Kahan, as in :func:`ritz_bound`, under the same standing
    assumption that no exact eigenvalue was missed altogether).

    A cluster (the bulk edge of a noisy dW: sigma_2..sigma_5 within 1%) leaves Kato-Temple no gap; the block of the
    top j Ritz vectors Y has one if theta_j > lambda_{j+1}: by Ky Fan, sum_{i<=j} lambda_i - sum_{i<=j} theta_i <=
    (lambda_1 - lambda_min) ||sin Theta(Y, X_j)||_F^2 (X_j the exact top-j eigenvectors; H >= 0 here), and by the
    Davis-Kahan sin-theta theorem ||sin Theta||_F <= ||R_{1..j}||_F / (theta_j - lambda_{j+1}); each term of the sum
    is >= 0, so lambda_i <= theta_i + lambda_1 ||R_{1..j}||_F^2 / (theta_j - lambda_{j+1})^2 for every i <= j --
    quadratic in the residuals however close the values inside the block. The smallest of the bounds is used.
    """
    th = theta.tolist()
    rn = R.norm(dim=0).tolist()
    d = len(th)
    up = [0.0] * d
    up[d - 1] = th[d - 1] + rn[d - 1]
    for i in range(d - 2, -1, -1):
        up[i] = th[i] + rn[i]
        if th[i] > up[i + 1]:
            up[i] = min(up[i], th[i] + rn[i] ** 2 / (th[i] - up[i + 1]))
    top, frob2 = up[0], 0.0
    for j in range(d - 1):  # the block of the top j + 1 Ritz vectors
        frob2 += rn[j] ** 2
        gap = th[j] - up[j + 1]
        if gap > 0:
            q = top * frob2 / gap ** 2
            for i in range(min(j + 1, n)):
                up[i] = min(up[i], th[i] + q)
    return up[:n]


SIGMA_FLOOR = 1e-6  # a singular value below this x sigma_1 is numerically zero: its error is allowed this x sigma_1


@dataclass
class ValueGoal:
    """The goal of :func:`top_svd` when the singular values are what is reported (dW's spectrum): each of the top
    ``n`` within ``rel_tol`` relative (or ``SIGMA_FLOOR`` x sigma_1 absolute), sigma_1^2 / ``fro2`` within
    ``energy_tol`` absolute (``fro2`` = ||A||_F^2, known exactly), certified by a float64 pass as the subspaces are;
    and, for the first ``dir_passes`` passes, the top singular vector within ``dir_tol`` rad (estimated; after that
    the direction is taken as it is: it may not be defined, e.g. sigma_1 = sigma_2)."""

    n: int
    rel_tol: float
    energy_tol: float
    fro2: float
    dir_tol: float = math.inf
    dir_passes: int = 0

    def value_excess(self, s: list[float], s_up: list[float]) -> float:
        """The largest ratio of a value's error bound to its target (met when <= 1)."""
        allowed = [max(self.rel_tol * x, SIGMA_FLOOR * s[0]) for x in s]
        worst = max(((u - x) / a if a > 0 else (0.0 if u <= x else math.inf)) for x, u, a in zip(s, s_up, allowed))
        if self.fro2 > 0:
            worst = max(worst, (s_up[0] ** 2 - s[0] ** 2) / self.fro2 / self.energy_tol)
        return worst

    def excess(self, theta: torch.Tensor, R: torch.Tensor, passes: int) -> float:
        """:meth:`value_excess` of the Ritz pairs, and while ``passes`` < ``dir_passes`` the top direction's."""
        s = [math.sqrt(max(t, 0.0)) for t in theta[:self.n].tolist()]
        s_up = [math.sqrt(max(u, 0.0)) for u in value_bounds(theta, R, self.n)]
        worst = self.value_excess(s, s_up)
        if passes < self.dir_passes:
            worst = max(worst, ritz_bound(theta, R, 1)[0] / self.dir_tol)
        return worst


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of orthonormal ``a`` (m, k) and ``b`` (m, k).

    Cosines from the singular values of a^T b are inaccurate for small angles (arccos is ill-conditioned near 1), so,
    as in Bjorck & Golub (1973) and scipy.linalg.subspace_angles, angles below pi/4 come from the sines: the singular
    values of b - a (a^T b).
    """
    # fresh row-major float64 copies: the same numbers whatever the inputs' layout and alignment (W_0's vectors are
    # column-major views when computed, row-major at an odd address when read back by a resumed run, and BLAS rounds
    # the two differently on some CPUs)
    # on the host: n x k float64 copies, and SVDs of k x k / n x k matrices a GPU solver is slower to start on
    a = torch.empty(a.shape, dtype=torch.float64).copy_(a)
    b = torch.empty(b.shape, dtype=torch.float64).copy_(b)
    ab = a.T @ b
    cos = torch.linalg.svdvals(ab).clamp(-1.0, 1.0)  # descending -> angles ascending
    sin = torch.linalg.svdvals(b - a @ ab).clamp(-1.0, 1.0).flip(0)  # ascending -> angles ascending
    small = sin < math.sqrt(0.5)
    return torch.where(small, torch.arcsin(sin), torch.arccos(cos)).sort().values
