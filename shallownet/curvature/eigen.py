"""Largest algebraic eigenvalues of a symmetric operator given only as `hvp(v) -> H v` on flat vectors.

`lanczos` is the default: a thick-restart block Lanczos (Rayleigh-Ritz on a Krylov basis with full
reorthogonalisation) from a block of at least k vectors, so that repeated eigenvalues are found as
often as they occur, started from random vectors or warm-started from previous eigenvectors.
`power_iteration` is the simple reference (it finds the largest-magnitude eigenvalue first). Both
report the relative residual |H v - lam v| / |lam| of what they return, computed from products they
already paid for: every HVP is counted, none is hidden.

`stop`, a callable checked before every HVP, gives a solve up: when it returns True the solver raises
shallownet.interrupt.Stopped (a run's stop request inside a long solve ends the run at its last complete
state instead of waiting for the solve).

Start vectors are drawn only where v0 gives too few; without v0 that needs `hvp.dim`, `hvp.dtype` and
`hvp.device` (HessianOperator has them); with v0 any callable v -> A v will do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from shallownet.interrupt import Stopped

Hvp = Callable[[torch.Tensor], torch.Tensor]

_TINY = 1e-300  # keeps relative residuals finite when an eigenvalue is exactly 0

LARGEST_MAGNITUDE = ("largest-magnitude eigenvalue (negative), not the largest algebraic one: max_iter ran out "
                     "before power iteration's shifted phase")
NOT_CONVERGED = ("not converged: a Rayleigh quotient on the way to the largest-magnitude eigenvalue (no limit "
                 "when +-lam are both eigenvalues)")


@dataclass(frozen=True, repr=False)
class EigenResult:
    """Eigenpairs, largest algebraic first, with their relative residuals and the HVPs spent.

    `note` says when `values` are not what the solver was asked for, e.g. power iteration's
    largest-magnitude (negative) eigenvalue; empty otherwise.
    """

    values: torch.Tensor  # (k,)
    vectors: torch.Tensor  # (k, dim), unit norm
    residuals: torch.Tensor  # (k,) |H v - lam v| / |lam|
    n_hvp: int
    converged: bool  # every residual <= tol
    note: str = ""

    def __repr__(self) -> str:
        note = f", note={self.note!r}" if self.note else ""
        return (f"EigenResult(value={self.value:.6g}, residual={self.residual:.2e}, n_hvp={self.n_hvp}, "
                f"converged={self.converged}, k={len(self.values)}{note})")

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
    """The largest algebraic eigenvalue by `method` ("lanczos" or "power"), warm-started from v0.

    "power" can return the largest-magnitude eigenvalue, negative, when max_iter runs out before its
    second phase (see power_iteration): converged is then False and `note` says so.
    """
    if method == "lanczos":
        return lanczos(hvp, v0, k=1, tol=tol, max_iter=max_iter, seed=seed)
    if method == "power":
        return power_iteration(hvp, v0, tol=tol, max_iter=max_iter, seed=seed)
    raise ValueError(f"unknown eigen-solver {method!r}; allowed: lanczos, power")


# --- Lanczos ----------------------------------------------------------------------------------------

def lanczos(hvp: Hvp, v0: torch.Tensor | None = None, *, k: int = 1, tol: float = 1e-6, max_iter: int = 1000,
            max_basis: int | None = None, seed: int = 0, stop: Callable[[], bool] | None = None) -> EigenResult:
    """The k largest algebraic eigenpairs, repeated eigenvalues as often as they occur, stopping when every
    relative residual is <= tol.

    Block Lanczos: the start block holds v0's rows (one vector (dim,) or a block (b, dim), e.g. the
    previous result's `vectors`), then seeded Gaussian rows up to k independent ones; each row costs one
    HVP. The Krylov space of a single start vector meets each eigenspace in one direction, so it holds an
    eigenvalue of multiplicity m once and its next Ritz values are lower eigenvalues, with exact, tiny
    residuals; a block of k vectors meets it in min(k, m) directions. Each step adds the residual
    H y - theta y of every unconverged top-k Ritz pair (for one start vector this is exactly the Lanczos
    sequence; with none converged, the block Krylov space). When the basis is full (max_basis vectors,
    default max(30, 6k, b + 2k)), it restarts from its best max(k + 1, max_basis // 2) Ritz vectors.
    Memory: 2 max_basis vectors of length dim (the basis and its products, so that residuals are exact
    rather than estimated). max_iter bounds the HVPs (the start block is always paid for).
    A plain callable works as hvp when v0 is given; without v0, hvp needs dim, dtype and device.
    """
    start = _start_block(hvp, v0, k, seed)
    dim = start.shape[1]
    if not 1 <= k <= dim:
        raise ValueError(f"k must be between 1 and dim = {dim}, got {k}")
    max_basis = max_basis or max(30, 6 * k, len(start) + 2 * k)
    if max_basis < k + 2 or len(start) >= max_basis:
        raise ValueError(f"max_basis ({max_basis}) must be at least k + 2 and exceed the start block ({len(start)})")
    basis = _Basis(hvp, max_basis, start[0], stop)
    for row in start:  # rows in the span of earlier ones (duplicates, more rows than dim) are dropped
        basis.add(row)
    fresh = _Fresh(start[0], seed, max_iter)
    while basis.finite and basis.size < k:  # a rank-deficient block: at least k directions
        basis.add(fresh.next())
    while basis.finite:
        values, vectors, residuals, residual_vectors = basis.ritz(k)
        unconverged = (~(residuals <= tol)).nonzero().flatten()
        done = len(unconverged) == 0
        if done or basis.n_hvp >= max_iter or basis.size >= dim:
            return EigenResult(values, vectors, residuals, basis.n_hvp, done)
        # Ritz residuals extend the Krylov space exactly as the next (block) Lanczos vectors would.
        directions = residual_vectors[unconverged[: max_iter - basis.n_hvp]]
        keep = max(k + 1, max_basis // 2)
        if basis.size + len(directions) > max_basis and basis.size > keep:
            basis.restart(keep)  # the residuals stay orthogonal to the kept Ritz vectors
        added = [basis.add(d) for d in directions[: max_basis - basis.size]]
        if not any(added) and basis.finite:  # all inside the span, numerically: a fresh direction
            basis.add(fresh.next())
    nan = torch.full((k,), float("nan"), dtype=start.dtype, device=start.device)
    return EigenResult(nan, torch.full((k, dim), float("nan"), dtype=start.dtype, device=start.device), nan,
                       basis.n_hvp, False)  # a non-finite Hessian has no eigenvalues to report


class _Basis:
    """An orthonormal basis V, its products H V and the projection V^T H V (float64, on the CPU)."""

    def __init__(self, hvp: Hvp, capacity: int, like: torch.Tensor, stop: Callable[[], bool] | None = None):
        self.hvp, self.stop = hvp, stop
        self.vectors = torch.empty(capacity, like.numel(), dtype=like.dtype, device=like.device)
        self.products = torch.empty_like(self.vectors)
        self.projected = torch.zeros(capacity, capacity, dtype=torch.float64)
        self.size, self.n_hvp, self.finite = 0, 0, True

    def add(self, direction: torch.Tensor) -> bool:
        """Append direction, orthonormalised, with its product (one HVP); False if it is in the span."""
        q = _orthonormalise(direction, self.vectors[: self.size])
        if q is None:
            return False
        if self.stop is not None and self.stop():
            raise Stopped("eigensolve given up at a stop request")
        size = self.size
        self.vectors[size], self.products[size] = q, self.hvp(q)
        self.n_hvp += 1
        column = (self.vectors[: size + 1] @ self.products[size]).double().cpu()
        self.finite = self.finite and bool(torch.isfinite(column).all())
        self.projected[size, : size + 1] = column
        self.projected[: size + 1, size] = column
        self.size += 1
        return True

    def ritz(self, k: int):
        return _ritz(self.vectors[: self.size], self.products[: self.size], self.projected[: self.size, : self.size], k)

    def restart(self, keep: int) -> None:
        """Replace the basis by its `keep` best Ritz vectors (and their products)."""
        theta, s = torch.linalg.eigh(self.projected[: self.size, : self.size])
        c = s[:, torch.argsort(theta, descending=True)[:keep]].to(self.vectors)
        self.vectors[:keep], self.products[:keep] = c.T @ self.vectors[: self.size], c.T @ self.products[: self.size]
        restarted = (self.vectors[:keep] @ self.products[:keep].T).double().cpu()
        self.projected.zero_()
        self.projected[:keep, :keep] = (restarted + restarted.T) / 2
        self.size = keep


class _Fresh:
    """Seeded random directions for when the basis needs one that no product supplied; at most `limit`."""

    def __init__(self, like: torch.Tensor, seed: int, limit: int):
        self.like, self.seed, self.count, self.limit = like, seed, 0, limit

    def next(self) -> torch.Tensor:
        self.count += 1
        if self.count > self.limit:
            raise RuntimeError("lanczos: no direction outside the basis found; is hvp symmetric and finite?")
        return _random_like(self.like, self.seed + self.count)


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
    with the negative eigenvector projected out. Converges like (lam_2 / lam_1)^t: slow for small gaps,
    never when -lam_max is an eigenvalue too (a symmetric saddle). max_iter bounds the HVPs of both
    phases together. When it runs out in the first phase on a negative value, the result is the
    largest-magnitude eigenvalue (estimate), not the largest algebraic one: converged is False and
    `note` says so; any other unconverged result has a note as well.
    """
    start = _start_block(hvp, v0, 1, seed)[0]
    value, vector, residual, n_hvp, converged = _power_loop(hvp, start, 0.0, tol, max_iter)
    note = "" if converged else NOT_CONVERGED
    if value < 0:
        # Largest magnitude is negative: the answer is another eigenvalue, unknown until found.
        converged, note = False, LARGEST_MAGNITUDE
        if n_hvp < max_iter:
            restart = start - (vector @ start) * vector
            if float(torch.linalg.vector_norm(restart)) <= 1e-8 * float(torch.linalg.vector_norm(start)):
                restart = _random_like(start, seed + 1)
            value, vector, residual, extra, converged = _power_loop(hvp, restart, value, tol, max_iter - n_hvp)
            n_hvp += extra
            note = "" if converged else NOT_CONVERGED
    as_tensor = lambda x: torch.tensor([x], dtype=start.dtype, device=start.device)  # noqa: E731
    return EigenResult(as_tensor(value), vector[None], as_tensor(residual), n_hvp, converged, note)


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

def _start_block(hvp, v0, k, seed) -> torch.Tensor:
    """Start rows (b, dim): v0's rows (one vector or a block), then seeded Gaussian rows up to k in all."""
    if v0 is not None:
        block = v0.detach().reshape(-1, v0.shape[-1]).clone()
    else:
        missing = [name for name in ("dim", "dtype", "device") if not hasattr(hvp, name)]
        if missing:
            raise ValueError(f"pass a start vector v0, or an hvp with attributes dim, dtype, device (lacks {missing})")
        block = torch.empty(0, hvp.dim, dtype=hvp.dtype, device=hvp.device)
    if len(block) >= k:
        return block
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(k - len(block), block.shape[1], generator=generator, dtype=torch.float64)
    return torch.cat([block, gaussian.to(block)])


def _random_like(vector, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vector.numel(), generator=generator, dtype=torch.float64).to(vector)
