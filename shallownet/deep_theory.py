"""Exact facts about deep linear chains (../shared/theory.md section 8), as pure float64 functions.

The oracles the deep extensions (extensions/deep_linear.py) are tested against. No Lightning, nothing
else of ours. Two families:

Linear chains x -> W_L ... W_1 x (section 8.1). A chain is a list of matrices `weights` = [W_1, ..., W_L],
W_l of shape (d_l, d_(l-1)) (torch's nn.Linear convention), and `grads` = [G_1, ..., G_L] with
G_l = dL/dW_l. These functions use only `@`, `.T`, `+`, `-`, so they take numpy arrays and torch tensors
alike (float64 for oracle precision; they return the type they are given).

    D_l = W_(l+1)^T W_(l+1) - W_l W_l^T                        (l = 1..L-1; square, hidden width d_l)
    GD step W_l' = W_l - eta G_l:  D_l' = D_l + eta^2 (G_(l+1)^T G_(l+1) - G_l G_l^T)   exactly
    gradient flow: dD_l/dt = 0

Scalar chains f = w_1 w_2 ... w_L with loss 1/2 (p - Phi)^2, p = prod_l w_l (section 8.2). `w` is an
array whose last axis holds the L weights (leading axes: a batch of chains, where noted).

    least_sharpness(L, Phi) = L |Phi|^(2 - 2/L)                  (the balanced minimum |w_l| = |Phi|^(1/L))
    chain_gf_limit(w0, Phi)                                       where gradient flow from w0 ends
    chain_gf_solution_sharpness(w, Phi)                           the sharpness there
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# --- linear chains (section 8.1) ----------------------------------------------------------------------


def end_to_end(weights: Sequence) -> object:
    """W_L ... W_1: the (d_L, d_0) matrix the chain computes (x -> W_L ... W_1 x)."""
    product = weights[0]
    for w in weights[1:]:
        product = w @ product
    return product


def layer_imbalances(weights: Sequence) -> list:
    """[D_1, ..., D_(L-1)] with D_l = W_(l+1)^T W_(l+1) - W_l W_l^T (conserved by gradient flow)."""
    return [nxt.T @ nxt - cur @ cur.T for cur, nxt in zip(weights[:-1], weights[1:], strict=True)]


def imbalance_step(weights: Sequence, grads: Sequence, eta: float) -> list:
    """The D_l after one GD step W_l' = W_l - eta G_l, from the point and its gradients (exact):

        D_l' = D_l + eta^2 (G_(l+1)^T G_(l+1) - G_l G_l^T)

    (the first-order terms cancel because W_(l+1)^T G_(l+1) = G_l W_l^T for any loss of the end-to-end map).
    """
    eta2 = eta * eta
    return [d + eta2 * (g_next.T @ g_next - g @ g.T)
            for d, g, g_next in zip(layer_imbalances(weights), grads[:-1], grads[1:], strict=True)]


def imbalance_trace_step(weights: Sequence, grads: Sequence, eta: float) -> list[float]:
    """tr D_l after one GD step: |W_(l+1)|_F^2 - |W_l|_F^2 + eta^2 (|G_(l+1)|_F^2 - |G_l|_F^2), as floats."""
    sq = [float((w * w).sum()) for w in weights]
    gsq = [float((g * g).sum()) for g in grads]
    return [sq[i + 1] - sq[i] + eta * eta * (gsq[i + 1] - gsq[i]) for i in range(len(weights) - 1)]


def chain_gradients(weights: Sequence, end_gradient) -> list:
    """G_l = (W_L ... W_(l+1))^T E (W_(l-1) ... W_1)^T for a loss whose gradient in the end-to-end map
    W_L ... W_1 is E (shape (d_L, d_0)): the gradients of any chain, by the chain rule."""
    gradients = []
    for layer in range(len(weights)):
        after, before = weights[layer + 1:], weights[:layer]
        g = end_to_end(after).T @ end_gradient if after else end_gradient
        gradients.append(g @ end_to_end(before).T if before else g)
    return gradients


def regression_end_gradient(end, x, y):
    """E = dL/dA for L(A) = 1/(2n) sum_i |A x_i - y_i|^2 (half the squared error summed over the outputs,
    averaged over the n rows of x (n, d_0) and y (n, d_L)): E = (x A^T - y)^T x / n."""
    return (x @ end.T - y).T @ x / x.shape[0]


def regression_loss(end, x, y) -> float:
    """1/(2n) sum_i |A x_i - y_i|^2 (the `half_sum_mse` convention; with one output it is `half_mse`)."""
    r = x @ end.T - y
    return float((r * r).sum()) / (2.0 * x.shape[0])


# --- scalar chains (section 8.2) ----------------------------------------------------------------------


def _as_chain(w) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 0 or w.shape[-1] < 1:
        raise ValueError(f"a chain needs its weights on the last axis, got shape {w.shape}")
    return w


def leave_one_out_products(w) -> np.ndarray:
    """prod_(k != l) w_k for every l (last axis), by prefix and suffix products: no division, exact zeros."""
    w = _as_chain(w)
    prefix = np.ones_like(w)
    suffix = np.ones_like(w)
    np.cumprod(w[..., :-1], axis=-1, out=prefix[..., 1:])
    np.cumprod(w[..., :0:-1], axis=-1, out=suffix[..., -2::-1])
    return prefix * suffix


def chain_residual(w, phi):
    """eps = prod_l w_l - phi."""
    return np.prod(_as_chain(w), axis=-1) - phi


def chain_gd_step(w, eta, phi) -> np.ndarray:
    """One GD step on 1/2 (p - phi)^2: w_l' = w_l - eta eps prod_(k != l) w_k (batched over leading axes)."""
    w = _as_chain(w)
    eps = np.prod(w, axis=-1, keepdims=True) - np.asarray(phi, dtype=np.float64)[..., None]
    return w - np.asarray(eta, dtype=np.float64)[..., None] * eps * leave_one_out_products(w)


def chain_pairwise_imbalance(w) -> np.ndarray:
    """The (L, L) matrix of w_i^2 - w_j^2 (last two axes)."""
    sq = _as_chain(w) ** 2
    return sq[..., :, None] - sq[..., None, :]


def leave_two_out_products(w) -> np.ndarray:
    """The (L, L) matrix (last two axes) of prod_(k != i, j) w_k; on the diagonal prod_(k != i) w_k."""
    w = _as_chain(w)
    n = w.shape[-1]
    out = np.empty(w.shape + (n,))
    out[..., np.arange(n), np.arange(n)] = leave_one_out_products(w)
    if n > 1:
        others, rows, columns = _others(n)
        inner = leave_one_out_products(w[..., others])  # [..., i, m]: prod over k != i, others[i, m]
        out[..., rows, columns] = inner.reshape(w.shape[:-1] + (n * (n - 1),))
    return out


@lru_cache(maxsize=64)
def _others(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays: others[i] = the indices k != i (L, L-1), and its (row, column) pairs flattened."""
    others = np.array([[k for k in range(n) if k != i] for i in range(n)])
    return others, np.repeat(np.arange(n), n - 1), others.reshape(-1)


def chain_pairwise_factor(w, eta, phi) -> np.ndarray:
    """The (L, L) matrix of 1 - eta^2 eps^2 prod_(k != i, j) w_k^2: one GD step multiplies w_i^2 - w_j^2 by
    entry (i, j) exactly (the diagonal, i = j, is unused; it is 1 - eta^2 eps^2 prod_(k != i) w_k^2)."""
    w = _as_chain(w)
    eps = np.prod(w, axis=-1) - phi
    eta_eps = np.asarray(eta * eps, dtype=np.float64)[..., None, None]
    return 1.0 - eta_eps ** 2 * leave_two_out_products(w) ** 2


def chain_pairwise_imbalance_step(w, eta, phi) -> np.ndarray:
    """w_i'^2 - w_j'^2 after one GD step, by the exact factor: (w_i^2 - w_j^2)(1 - eta^2 eps^2 prod_(k!=i,j) w_k^2)."""
    return chain_pairwise_imbalance(w) * chain_pairwise_factor(w, eta, phi)


def chain_hessian(w, phi) -> np.ndarray:
    """The dense (L, L) Hessian of 1/2 (p - phi)^2 at w (one chain):

        H_ll = (prod_(k != l) w_k)^2,   H_lm = prod_(k != l) w_k prod_(k != m) w_k + eps prod_(k != l, m) w_k.
    """
    w = _as_chain(w)
    if w.ndim != 1:
        raise ValueError(f"chain_hessian takes one chain (a 1-D array), got shape {w.shape}")
    grad_p = leave_one_out_products(w)
    eps = float(np.prod(w)) - phi
    second = leave_two_out_products(w)
    np.fill_diagonal(second, 0.0)
    return np.outer(grad_p, grad_p) + eps * second


def chain_sharpness(w, phi) -> float:
    """Largest eigenvalue of chain_hessian(w, phi) (the sharpness at any point, not only at minima)."""
    return float(np.linalg.eigvalsh(chain_hessian(w, phi))[-1])


def chain_minimum_sharpness(w) -> np.ndarray:
    """|grad p|^2 = sum_l prod_(k != l) w_k^2: the sharpness at a minimum (eps = 0), where it equals
    Phi^2 sum_l 1/w_l^2 (the Hessian there is grad p grad p^T)."""
    return (leave_one_out_products(w) ** 2).sum(axis=-1)


def least_sharpness(depth, phi):
    """L |Phi|^(2 - 2/L): the least sharpness over all minima of a depth-L chain (AM-GM), reached only at
    the balanced minimum |w_l| = |Phi|^(1/L). Elementwise in depth and phi. Also the least sharpness over
    the minima of the width-d model w_L^T W_(L-1) ... W_2 w_1 (section 8.3)."""
    depth = np.asarray(depth, dtype=np.float64)
    return depth * np.abs(np.asarray(phi, dtype=np.float64)) ** (2.0 - 2.0 / depth)


def stability_threshold(depth, phi):
    """2 / (L |Phi|^(2 - 2/L)): for eta above it no minimum of the chain is linearly stable under GD
    (for L = 2, eta > 1/Phi as in section 6)."""
    return 2.0 / least_sharpness(depth, phi)


def balanced_chain_minimum(depth: int, phi: float) -> np.ndarray:
    """The balanced minimum: every |w_l| = |phi|^(1/L), the last weight carrying the sign of phi."""
    w = np.full(depth, abs(phi) ** (1.0 / depth))
    w[-1] = np.copysign(w[-1], phi)
    return w


def chain_gf_limit(w0, phi) -> np.ndarray:
    """Where gradient flow on 1/2 (p - phi)^2 ends from w0 (last axis; batched over leading axes).

    GF conserves c_l = w_l^2 - w_1^2, so every w_l^2 moves by the same amount and the limit has
    w_l^2 = s + d_l with d_l = w0_l^2 - min_k w0_k^2 and s >= 0 the root of prod_l (s + d_l) = phi^2
    (increasing and convex in s on [0, inf): Newton from an upper bracket converges monotonically, to
    round-off). Signs: where p(0) has the sign of phi, every weight keeps its sign. Where it has the
    opposite sign, every |w_l| shrinks until the smallest one reaches 0 and crosses it: that weight
    flips. Where p(0) = 0 with one zero weight, that weight takes the sign of phi times the others.
    Where two or more weights tie for the smallest |w| on that way (or are 0), the flow ends at a saddle
    (p stays 0): nan. phi = 0: the smallest weight goes to 0.
    """
    w0 = _as_chain(w0)
    if w0.ndim == 1 and np.ndim(phi) == 0:
        return np.array(_chain_gf_limit_one([float(x) for x in w0], float(phi)))
    phi = np.broadcast_to(np.asarray(phi, dtype=np.float64), w0.shape[:-1])
    depth = w0.shape[-1]
    sq = w0 * w0
    smallest = sq.min(axis=-1, keepdims=True)
    d = sq - smallest
    target = phi * phi

    # upper brackets: prod (s + d_l) >= s^L, and >= s prod_(l != argmin) d_l
    others = np.prod(np.sort(d, axis=-1)[..., 1:], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        hi = np.minimum(target ** (1.0 / depth), np.where(others > 0, target / others, np.inf))
    s = np.where(np.isfinite(hi), hi, 0.0)
    active = target > 0
    for _ in range(2000):
        if not active.any():
            break
        terms = s[..., None] + d  # all > 0 while s > 0 (the smallest d is 0)
        product = np.prod(terms, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            proposal = s - (product - target) / (product * (1.0 / terms).sum(axis=-1))
        improved = active & (proposal < s) & (proposal > 0.0) & np.isfinite(proposal)
        s = np.where(improved, proposal, s)
        active = improved
    limit = np.sqrt(s[..., None] + d) * np.where(w0 < 0, -1.0, 1.0)

    # signs where p(0) does not have the sign of phi
    p0 = np.prod(w0, axis=-1)
    ties = (d == 0).sum(axis=-1)
    wrong = (p0 * phi < 0) | ((p0 == 0) & (phi != 0))
    flip = (d == 0) & wrong[..., None] & (ties == 1)[..., None]
    limit = np.where(flip, -limit, limit)
    zero_start = (p0 == 0) & (phi != 0) & (ties == 1)
    if zero_start.any():  # the zero weight takes the sign that makes p of the sign of phi
        sign_others = np.sign(np.prod(np.where(d == 0, 1.0, w0), axis=-1)) * np.sign(phi)
        limit = np.where((d == 0) & zero_start[..., None], np.abs(limit) * sign_others[..., None], limit)
    saddle = wrong & (ties > 1)
    return np.where(saddle[..., None], np.nan, limit)


def _chain_gf_limit_one(w0: list[float], phi: float) -> list[float]:
    """chain_gf_limit for one chain, in Python floats (the same iteration; ~10x faster than numpy on a few
    weights, which is what per-step monitors and property tests call it with)."""
    depth = len(w0)
    sq = [w * w for w in w0]
    smallest = min(sq)
    d = [x - smallest for x in sq]
    target = phi * phi
    others = math.prod(sorted(d)[1:])
    s = target ** (1.0 / depth)
    if others > 0:
        s = min(s, target / others)
    if target > 0:
        for _ in range(2000):
            terms = [s + x for x in d]
            product = math.prod(terms)
            proposal = s - (product - target) / (product * sum(1.0 / t for t in terms))
            if not (0.0 < proposal < s):
                break
            s = proposal
    limit = [math.copysign(math.sqrt(s + x), -1.0 if w < 0 else 1.0) for w, x in zip(w0, d, strict=True)]
    p0 = math.prod(w0)
    zeros = [i for i, x in enumerate(d) if x == 0]
    if (p0 * phi < 0 or (p0 == 0 and phi != 0)) and len(zeros) > 1:
        return [math.nan] * depth  # the tied smallest weights reach 0 together: a saddle
    if p0 * phi < 0:
        limit[zeros[0]] = -limit[zeros[0]]
    elif p0 == 0 and phi != 0:
        sign = math.copysign(1.0, phi) * math.copysign(1.0, math.prod(w for i, w in enumerate(w0) if i != zeros[0]))
        limit[zeros[0]] = sign * abs(limit[zeros[0]])
    return limit


def chain_gf_solution_sharpness(w, phi):
    """The sharpness of the minimum gradient flow reaches from w: Phi^2 sum_l 1/(x + c_l) at the limit of
    chain_gf_limit (computed as sum_l prod_(k != l) w_l^2 there, which is the same at a minimum and stays
    finite when phi = 0). Batched over leading axes; a float for one chain."""
    value = chain_minimum_sharpness(chain_gf_limit(w, phi))
    return float(value) if np.ndim(value) == 0 else value
