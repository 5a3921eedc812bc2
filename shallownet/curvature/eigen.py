"""Largest algebraic eigenvalues of a symmetric operator given only as `hvp(v) -> H v` on flat vectors.

`lanczos` is the default: a thick-restart Lanczos (Rayleigh-Ritz on a Krylov basis with full
reorthogonalisation), started from a random vector or warm-started from previous eigenvectors.
`power_iteration` is the simple reference. Both report the relative residual |H v - lam v| / |lam| of
what they return, computed from products they already paid for: every HVP is counted, none is hidden.

A start vector is drawn only when none is given; that needs `hvp.dim`, `hvp.dtype` and `hvp.device`
(HessianOperator has them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Hvp = Callable[[torch.Tensor], torch.Tensor]

_TINY = 1e-300  # keeps relative residuals finite when an eigenvalue is exactly 0


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs, largest algebraic first, with their relative residuals and the HVPs spent."""

    values: torch.Tensor  # (k,)
    vectors: torch.Tensor  # (k, dim), unit norm
    residuals: torch.Tensor  # (k,) |H v - lam v| / |lam|
    n_hvp: int
    converged: bool  # every residual <= tol

    @property
    def value(self) -> float:
        return float(self.values[0])

    @property
    def vector(self) -> torch.Tensor:
        return self.vectors[0]

    @property
    def residual(self) -> float:
        return float(self.residuals[0])


def top_eigenvalue(hvp: Hvp, v0: torch.Tensor | None = None, *, method: str = "lanczos", tol: float = 1e-6,
                   max_iter: int = 1000, seed: int = 0) -> EigenResult:
    """The largest algebraic eigenvalue by `method` ("lanczos" or "power"), warm-started from v0."""
    if method == "lanczos":
        return lanczos(hvp, v0, k=1, tol=tol, max_iter=max_iter, seed=seed)
    if method == "power":
        return power_iteration(hvp, v0, tol=tol, max_iter=max_iter, seed=seed)
    raise ValueError(f"unknown eigen-solver {method!r}; allowed: lanczos, power")


# --- Lanczos ----------------------------------------------------------------------------------------

def lanczos(hvp: Hvp, v0: torch.Tensor | None = None, *, k: int = 1, tol: float = 1e-6, max_iter: int = 1000,
            max_basis: int | None = None, seed: int = 0) -> EigenResult:
    """The k largest algebraic eigenpairs, stopping when every relative residual is <= tol.

    v0 is a start vector (dim,) or a block of them (b, dim), e.g. the previous result's `vectors`;
    each row costs one HVP, then the basis grows by the residual of the first unconverged Ritz pair,
    which for one start vector is exactly the Lanczos (Krylov) sequence. When the basis reaches
    max_basis vectors (default max(30, 3k)), it restarts from its best max_basis // 2 Ritz vectors.
    Memory: 2 max_basis vectors of length dim (the basis and its products, so that residuals are
    exact rather than estimated). max_iter bounds the HVPs.
    """
    max_basis = max_basis or max(30, 3 * k)
    pending = list(_start_block(hvp, v0, seed))
    dim, dtype, device = pending[0].numel(), pending[0].dtype, pending[0].device
    if not 1 <= k <= dim:
        raise ValueError(f"k must be between 1 and dim = {dim}, got {k}")
    if max_basis < k + 2 or len(pending) >= max_basis:
        raise ValueError(f"max_basis ({max_basis}) must be at least k + 2 and exceed the start block ({len(pending)})")
    basis = torch.empty(max_basis, dim, dtype=dtype, device=device)
    products = torch.empty_like(basis)
    projected = torch.zeros(max_basis, max_basis, dtype=torch.float64)  # basis^T H basis, on the CPU
    size, n_hvp, fresh = 0, 0, 0
    while True:
        q = _orthonormalise(pending.pop(0), basis[:size])
        if q is None and size < dim:  # in the span already: continue with a fresh random direction
            if not pending:
                fresh += 1
                pending.append(_random_like(basis[0], seed + fresh))
            if fresh <= max_iter:
                continue
            raise RuntimeError("lanczos: no direction outside the basis found; is hvp symmetric and finite?")
        if q is not None:  # (None here: the basis spans the whole space, e.g. a start block larger than dim)
            basis[size], products[size] = q, hvp(q)
            n_hvp += 1
            column = (basis[: size + 1] @ products[size]).double().cpu()
            if not bool(torch.isfinite(column).all()):  # a non-finite Hessian has no eigenvalues to report
                nan = torch.full((k,), float("nan"), dtype=dtype, device=device)
                vectors = torch.full((k, dim), float("nan"), dtype=dtype, device=device)
                return EigenResult(nan, vectors, nan, n_hvp, False)
            projected[size, : size + 1] = column
            projected[: size + 1, size] = column
            size += 1
        if pending:  # the rest of the start block first
            continue
        values, vectors, residuals, residual_vectors = _ritz(basis[:size], products[:size],
                                                             projected[:size, :size], k)
        unconverged = (~(residuals <= tol)).nonzero()
        done = size >= k and len(unconverged) == 0
        if done or n_hvp >= max_iter or size >= dim:
            return EigenResult(values, vectors, residuals, n_hvp, done)
        # The residual of a Ritz pair extends the Krylov space exactly as the next Lanczos vector would.
        pending.append(residual_vectors[int(unconverged[0]) if len(unconverged) else 0])
        if size == max_basis:
            size = _thick_restart(basis, products, projected, size, keep=max(k + 1, max_basis // 2))


def _ritz(basis, products, projected, k):
    """Top-k Ritz values, unit vectors, exact relative residuals and residual vectors H y - theta y."""
    theta, s = torch.linalg.eigh(projected)
    c = s[:, torch.argsort(theta, descending=True)[:k]].to(dtype=basis.dtype, device=basis.device)
    vectors, images = c.T @ basis, c.T @ products
    norms = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)  # 1 up to round-off
    vectors, images = vectors / norms, images / norms
    values = (vectors * images).sum(dim=1)  # Rayleigh quotients of the unit Ritz vectors
    residual_vectors = images - values[:, None] * vectors
    residuals = torch.linalg.vector_norm(residual_vectors, dim=1) / values.abs().clamp_min(_TINY)
    return values, vectors, residuals, residual_vectors


def _thick_restart(basis, products, projected, size, keep):
    """Replace the basis by its `keep` best Ritz vectors (and their products); returns the new size."""
    theta, s = torch.linalg.eigh(projected[:size, :size])
    c = s[:, torch.argsort(theta, descending=True)[:keep]].to(dtype=basis.dtype, device=basis.device)
    basis[:keep], products[:keep] = c.T @ basis[:size], c.T @ products[:size]
    restarted = (basis[:keep] @ products[:keep].T).double().cpu()
    projected.zero_()
    projected[:keep, :keep] = (restarted + restarted.T) / 2
    return keep


def _orthonormalise(direction, basis):
    """direction minus its projection on the basis, normalised; None if numerically in its span.

    Classical Gram-Schmidt with one reorthogonalisation (Daniel-Gragg-Kaufman-Stewart): a pass that
    keeps at least 1/sqrt(2) of the norm leaves a vector orthogonal to working precision; two passes
    that both cancel more than that mean the direction is rounding noise inside the span.
    """
    q, norm = direction, torch.linalg.vector_norm(direction)
    if not bool(torch.isfinite(norm)) or norm == 0:
        return None
    for _ in range(2):
        q = q - basis.T @ (basis @ q)
        new_norm = torch.linalg.vector_norm(q)
        if new_norm == 0:  # exactly in the span (e.g. a start block holding one vector twice)
            return None
        if new_norm >= 0.7071 * norm:
            return q / new_norm
        norm = new_norm
    return None


# --- power iteration ----------------------------------------------------------------------------------

def power_iteration(hvp: Hvp, v0: torch.Tensor | None = None, *, tol: float = 1e-6, max_iter: int = 1000,
                    seed: int = 0) -> EigenResult:
    """The largest algebraic eigenvalue by power iteration, stopping when |H v - lam v| / |lam| <= tol.

    Power iteration finds the eigenvalue of largest magnitude. If that one is negative, it iterates
    again on H - lam_neg I, whose dominant eigenvalue is lam_max - lam_neg >= 0, from the start vector
    with the negative eigenvector projected out. Converges like (lam_2 / lam_1)^t: slow for small gaps.
    max_iter bounds the HVPs of both phases together.
    """
    start = _start_block(hvp, v0, seed)[0]
    value, vector, residual, n_hvp, converged = _power_loop(hvp, start, 0.0, tol, max_iter)
    if value < 0:
        # Largest magnitude is negative: the answer is another eigenvalue, unknown until found.
        converged = False
        if n_hvp < max_iter:
            restart = start - (vector @ start) * vector
            if float(torch.linalg.vector_norm(restart)) <= 1e-8 * float(torch.linalg.vector_norm(start)):
                restart = _random_like(start, seed + 1)
            value, vector, residual, extra, converged = _power_loop(hvp, restart, value, tol, max_iter - n_hvp)
            n_hvp += extra
    as_tensor = lambda x: torch.tensor([x], dtype=start.dtype, device=start.device)  # noqa: E731
    return EigenResult(as_tensor(value), vector[None], as_tensor(residual), n_hvp, converged)


def _power_loop(hvp, vector, shift, tol, max_iter):
    """Power iteration on H - shift I; Rayleigh quotient and residual are those of H itself."""
    vector = vector / torch.linalg.vector_norm(vector)
    value, residual, n_hvp = float("nan"), float("inf"), 0
    while n_hvp < max_iter:
        image = hvp(vector)
        n_hvp += 1
        value = float(vector @ image)
        residual = float(torch.linalg.vector_norm(image - value * vector)) / max(abs(value), _TINY)
        if residual <= tol:
            return value, vector, residual, n_hvp, True
        shifted = image - shift * vector
        norm = torch.linalg.vector_norm(shifted)
        if not bool(torch.isfinite(norm)) or norm == 0:
            break
        vector = shifted / norm
    return value, vector, residual, n_hvp, False


# --- start vectors ------------------------------------------------------------------------------------

def _start_block(hvp, v0, seed):
    """Start vectors as a list of rows: v0 (one vector or a block), else one seeded Gaussian vector."""
    if v0 is not None:
        block = v0.detach().reshape(-1, v0.shape[-1])
        return [row.clone() for row in block]
    missing = [name for name in ("dim", "dtype", "device") if not hasattr(hvp, name)]
    if missing:
        raise ValueError(f"pass a start vector v0, or an hvp with attributes dim, dtype, device (lacks {missing})")
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(hvp.dim, generator=generator, dtype=torch.float64).to(hvp.dtype).to(hvp.device)]


def _random_like(vector, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vector.numel(), generator=generator, dtype=torch.float64).to(vector)
