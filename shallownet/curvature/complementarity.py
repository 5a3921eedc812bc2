"""The semidefinite complementarity problem of the central flow, for small k (the critical eigenvectors).

    SDCP(A, B):  X >= 0,  Z = A + B(X) >= 0,  <X, Z> = 0        (>= 0: positive semidefinite, k x k)

with A symmetric and B a positive semidefinite linear map on symmetric matrices (B[i, j, k, l] acts as
B(X)_ij = sum_kl B_ijkl X_kl). Because B is PSD this is the optimality (KKT) condition of the convex
quadratic program min_{X >= 0} 1/2 <X, B(X)> + <A, X>, which is how it is solved: accelerated projected
gradient (FISTA with gradient restart, projection onto the PSD cone by eigh) until the KKT residual
|X - Pi(X - Z)|_F is small, then a polish on the face of X: with V the range of X, the quadratic in Y for
X = V Y V^T is solved exactly by least squares, whose minimum-norm solution is also the fallback when B is
singular (the minimiser is then not unique; the polish returns the least-norm one on its face; faces of
every rank r <= k are tried, spanned by X's top r eigenvectors). k = 1 is
closed form: X = max(0, -A / B).

`central_flow_problem` builds A and B from the third-order products beta_ij = grad_w(u_i^T H u_j) and the
gradient g: A_ij = beta_ij . g (minus the velocity of u_i^T H u_j under gradient flow) and
B(X)_ij = 1/2 sum_kl (beta_ij . beta_kl) X_kl (the velocity X's term adds), docs/theory.md section 11.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SDCPSolution:
    X: np.ndarray  # (k, k) PSD
    kkt_residual: float  # |X - Pi_PSD(X - Z)|_F, Z = A + B(X): 0 exactly at a solution
    iterations: int  # projected-gradient iterations (0: closed form or X = 0 at once)
    singular: bool  # B is singular on the symmetric matrices: X is the least-norm solution of its face


def pairs(k: int) -> list[tuple[int, int]]:
    """The index pairs (i <= j) of the upper triangle, row by row: the order of the third-order products."""
    return [(i, j) for i in range(k) for j in range(i, k)]


def central_flow_problem(gram: np.ndarray, beta_g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) from gram[p, q] = beta_p . beta_q and beta_g[p] = beta_p . g over pairs(k)."""
    index = {pair: p for p, pair in enumerate(pairs(k))}

    def p(i, j):
        return index[(min(i, j), max(i, j))]

    A = np.array([[beta_g[p(i, j)] for j in range(k)] for i in range(k)])
    B = np.array([[[[0.5 * gram[p(i, j), p(m, n)] for n in range(k)] for m in range(k)] for j in range(k)]
                  for i in range(k)])
    return A, B


def apply(B: np.ndarray, X: np.ndarray) -> np.ndarray:
    """B(X)_ij = sum_kl B_ijkl X_kl."""
    return np.einsum("ijkl,kl->ij", B, X)


def psd_projection(X: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((X + X.T) / 2)
    return (vectors * np.maximum(values, 0.0)) @ vectors.T


def kkt_residual(A: np.ndarray, B: np.ndarray, X: np.ndarray) -> float:
    Z = A + apply(B, X)
    return float(np.linalg.norm(X - psd_projection(X - Z)))


def solve_sdcp(A: np.ndarray, B: np.ndarray, tol: float = 1e-13, max_iter: int = 20_000) -> SDCPSolution:
    """The solution of SDCP(A, B) (module docstring); tol is on the KKT residual relative to 1 + |A|_F."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    k = A.shape[0]
    A = (A + A.T) / 2
    matrix = _operator_matrix(B, k)
    scale = np.linalg.eigvalsh(matrix)
    singular = bool(scale[0] <= 1e-12 * max(scale[-1], 1e-300))
    if np.linalg.eigvalsh(A)[0] >= 0:  # gradient flow keeps the projected Hessian below 2/eta on its own
        return SDCPSolution(np.zeros((k, k)), 0.0, 0, singular)
    if k == 1:
        b = float(B[0, 0, 0, 0])
        x = max(0.0, -float(A[0, 0]) / b) if b > 0 else 0.0
        X = np.array([[x]])
        return SDCPSolution(X, kkt_residual(A, B, X), 0, singular)
    step = 1.0 / scale[-1] if scale[-1] > 0 else 1.0
    target = tol * (1.0 + float(np.linalg.norm(A)))
    X = Y = np.zeros((k, k))
    momentum, iterations, residual = 1.0, 0, np.inf
    while iterations < max_iter:
        iterations += 1
        gradient = A + apply(B, Y)
        X_new = psd_projection(Y - step * gradient)
        if np.sum(gradient * (X_new - X)) > 0:  # restart: the momentum points uphill
            momentum, Y = 1.0, X
            continue
        next_momentum = (1 + np.sqrt(1 + 4 * momentum**2)) / 2
        Y = X_new + (momentum - 1) / next_momentum * (X_new - X)
        X, momentum = X_new, next_momentum
        if iterations % 10 == 0:
            candidate, residual = _polished(A, B, X)
            if residual <= target:
                return SDCPSolution(candidate, residual, iterations, singular)
    X, residual = _polished(A, B, X)
    return SDCPSolution(X, residual, iterations, singular)


def _operator_matrix(B: np.ndarray, k: int) -> np.ndarray:
    """B as a symmetric matrix on svec coordinates (upper triangle, off-diagonals times sqrt 2), where
    the Frobenius inner product is the Euclidean one."""
    basis = _svec_basis(k)
    return np.array([[np.sum(e * apply(B, f)) for f in basis] for e in basis])


def _svec_basis(k: int) -> list[np.ndarray]:
    basis = []
    for i, j in pairs(k):
        e = np.zeros((k, k))
        e[i, j] = e[j, i] = 1.0 if i == j else 1 / np.sqrt(2)
        basis.append(e)
    return basis


def _polished(A: np.ndarray, B: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, float]:
    """X, or the exact minimiser on a face {V Y V^T} (V: X's top r eigenvectors, each r) when that is PSD and
    has a smaller KKT residual: projected gradient finds the face long before it converges on it."""
    best, best_residual = X, kkt_residual(A, B, X)
    vectors = np.linalg.eigh(X)[1][:, ::-1]
    values = np.maximum(np.linalg.eigvalsh(X)[::-1], 0.0)
    for r in range(1, len(X) + 1):
        face = _face_minimiser(A, B, vectors[:, :r])
        candidates = [face] if face is not None else []
        candidates.append(_factor_newton(A, B, vectors[:, :r] * np.sqrt(values[:r])))
        for candidate in candidates:
            residual = kkt_residual(A, B, candidate)
            if residual < best_residual:
                best, best_residual = candidate, residual
    return best, best_residual


def _factor_newton(A: np.ndarray, B: np.ndarray, L: np.ndarray, steps: int = 8) -> np.ndarray:
    """L L^T after Newton steps on f(L L^T) over the k x r factor L (least-norm steps: the Hessian is singular
    along rotations L -> L Q), which converge quadratically to a rank-r solution near a good start."""
    k, r = L.shape
    basis = [np.outer(np.eye(k)[i], np.eye(r)[j]) for i in range(k) for j in range(r)]
    for _ in range(steps):
        X = L @ L.T
        Z = A + apply(B, X)
        grad = np.array([2 * np.sum(Z @ L * E) for E in basis])
        sym = [E @ L.T + L @ E.T for E in basis]
        hess = np.array([[np.sum(Z * (Ea @ Eb.T + Eb @ Ea.T)) + np.sum(Sa * apply(B, Sb))
                          for Eb, Sb in zip(basis, sym, strict=True)] for Ea, Sa in zip(basis, sym, strict=True)])
        step = np.linalg.lstsq(hess, -grad, rcond=1e-12)[0]
        L = L + step.reshape(k, r)
    return L @ L.T


def _face_minimiser(A: np.ndarray, B: np.ndarray, V: np.ndarray) -> np.ndarray | None:
    """argmin over symmetric Y of 1/2 <VYV^T, B(VYV^T)> + <A, VYV^T> (least norm), as V Y V^T; None if Y is not PSD."""
    reduced = np.einsum("ia,jb,ijkl,kc,ld->abcd", V, V, B, V, V)
    basis = _svec_basis(V.shape[1])
    matrix = np.array([[np.sum(e * np.einsum("abcd,cd->ab", reduced, f)) for f in basis] for e in basis])
    linear = np.array([np.sum(e * (V.T @ A @ V)) for e in basis])
    y = np.linalg.lstsq(matrix, -linear, rcond=1e-12)[0]  # least-norm when singular
    Y = sum(c * e for c, e in zip(y, basis, strict=True))
    if np.linalg.eigvalsh(Y)[0] < 0:
        return None
    return V @ Y @ V.T
