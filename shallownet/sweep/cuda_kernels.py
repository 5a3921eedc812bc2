"""Fused GPU kernels for the sweeps (numba.cuda): one thread per run, its state in registers for all its
steps, only the outcome written back (final state, factor P, max eta|eps_t|, steps).

    run_uv_cuda      the shallow net's exact (U, V) recursion (theory.md 3): kernel.py's _run_block per lane
    run_chain_cuda   depth-L scalar chains (theory.md 8.2): chain_kernel.py's _run_block per lane

Same bits as the CPU kernels. A thread leaves its loop at the first step where its run has stopped; the
CPU kernels keep stepping such a lane with a frozen state (the (U, V) kernel's zero steps also flush a
subnormal initial U or V, which the thread does as it leaves), so the results are the same. The arithmetic
is the CPU kernels' operation for operation, in IEEE float64, with no fast-math and no FMA:

    numba.cuda's fastmath=False (the default, kept) does not stop NVVM from contracting a*b + c into one
    fused multiply-add: NVVM's own default is -fma=1, and numba passes an fma option only with
    fastmath=True (numba issue #2834, numba-cuda issue #118). A contracted FMA rounds once instead of
    twice and breaks bit equality with the CPU. So every product here goes through libdevice's
    __nv_dmul_rn (`libdevice.dmul_rn`): a multiplication with an explicit rounding mode, which CUDA
    documents is never merged into a multiply-add (PTX mul.rn.f64; ptxas leaves it alone too). With no
    plain multiplication left there is nothing to contract; the PTX holds no fma.rn.f64 (uv_ptx() and
    chain_ptx() return it, and the CUDA test checks).

Nothing here touches CUDA at import: kernels are built on first use, so the module imports on machines
without a GPU. Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is imported) the
same kernels run as Python on the CPU, with plain `*` in place of dmul_rn (the simulator has no libdevice):
that checks the kernels' logic against the CPU kernels on tiny grids.
"""

from __future__ import annotations

import functools

import numpy as np

from shallownet.sweep.kernel import TINY

try:  # importing numba.cuda needs no GPU; the kernels must name it as a module global (the simulator swaps it)
    from numba import cuda
except ImportError:  # a numba without its CUDA target
    cuda = None

THREADS_PER_BLOCK = 128


def simulator_enabled() -> bool:
    """True when numba runs CUDA kernels in its simulator (NUMBA_ENABLE_CUDASIM=1 at numba's import)."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def cuda_available() -> bool:
    """True where the kernels can run: a CUDA device numba can use, or the simulator."""
    try:
        return cuda is not None and bool(cuda.is_available())
    except Exception:  # no driver, no toolkit, a broken install: no GPU path
        return False


@functools.cache
def _mul():
    """The multiplication every kernel uses: dmul_rn on a GPU (never contracted), `*` in the simulator."""
    if simulator_enabled():
        @cuda.jit(device=True)
        def mul(a, b):
            return a * b
    else:
        from numba.cuda import libdevice

        @cuda.jit(device=True)
        def mul(a, b):
            return libdevice.dmul_rn(a, b)
    return mul


@functools.cache
def _uv_kernel():
    mul = _mul()
    tiny = TINY

    @cuda.jit(fastmath=False)
    def uv_kernel(u, v, factor, max_step, steps, eta, phi, tol, divergence_norm, max_steps):
        i = cuda.grid(1)
        if i >= u.shape[0]:
            return
        ui, vi, f, top, k, rate = u[i], v[i], factor[i], max_step[i], steps[i], eta[i]
        for _ in range(max_steps):
            eps = mul(ui - vi, 0.25) - phi
            lam = mul(ui + vi, 0.5)
            if not ((abs(eps) > tol) and (lam <= divergence_norm)):  # NaN fails both: stops too
                # The CPU kernel's zero steps of a stopped lane flush a subnormal U or V (from the start).
                ui = 0.0 if ui < tiny else ui
                vi = 0.0 if vi < tiny else vi
                break
            e = mul(rate, eps)
            shrink, grow = 1.0 - e, 1.0 + e
            u_next = mul(mul(shrink, shrink), ui)
            v_next = mul(mul(grow, grow), vi)
            f_next = mul(f, 1.0 - mul(e, e))
            ui = 0.0 if u_next < tiny else u_next
            vi = 0.0 if v_next < tiny else v_next
            f = 0.0 if abs(f_next) < tiny else f_next
            step = abs(e)
            top = step if step > top else top  # max(): both are >= +0 and never NaN here
            k += 1
        u[i], v[i], factor[i], max_step[i], steps[i] = ui, vi, f, top, k

    return uv_kernel


@functools.cache
def _chain_kernel(depth: int):
    """The chain kernel for one depth (a compile-time constant: local arrays of that size, which NVVM
    keeps in registers once the loops over layers unroll)."""
    from numba import float64

    mul = _mul()
    tiny = TINY
    last = depth - 1

    @cuda.jit(fastmath=False)
    def chain_kernel(w, factor, max_step, steps, eta, phi, tol, divergence_norm, max_steps):
        i = cuda.grid(1)
        if i >= factor.shape[0]:
            return
        x = cuda.local.array(depth, float64)
        suffix = cuda.local.array(depth, float64)
        for j in range(depth):
            x[j] = w[j, i]
        f, top, k, rate = factor[i], max_step[i], steps[i], eta[i]
        for _ in range(max_steps):
            s = x[last]
            suffix[depth - 2] = s
            for j in range(depth - 3, -1, -1):
                s = mul(x[j + 1], s)
                suffix[j] = s
            p = mul(x[0], s)
            norm = mul(x[0], x[0])
            for j in range(1, depth):
                norm = norm + mul(x[j], x[j])
            eps = p - phi
            if not ((abs(eps) > tol) and (norm <= divergence_norm)):  # NaN fails both: stops too
                break
            e = mul(rate, eps)
            if depth > 2:  # m = w_1 ... w_(L-2): the CPU kernel's 1.0 * w_1 * ..., whose 1.0 * LLVM drops
                m = x[1]
                for j in range(2, last):
                    m = mul(m, x[j])
                em = mul(e, m)
            else:
                em = e
            f_next = mul(f, 1.0 - mul(em, em))
            f = 0.0 if abs(f_next) < tiny else f_next
            q = x[0]  # prefix product w_0 ... w_(l-1)
            w_next = q - mul(e, s)
            x[0] = 0.0 if abs(w_next) < tiny else w_next
            for j in range(1, last):
                w_next = x[j] - mul(e, mul(q, suffix[j]))
                q = mul(q, x[j])
                x[j] = 0.0 if abs(w_next) < tiny else w_next
            w_next = x[last] - mul(e, q)
            x[last] = 0.0 if abs(w_next) < tiny else w_next
            step = abs(e)
            top = step if step > top else top  # max(): both are >= +0 and never NaN here
            k += 1
        for j in range(depth):
            w[j, i] = x[j]
        factor[i], max_step[i], steps[i] = f, top, k

    return chain_kernel


def _require_cuda():
    if not cuda_available():
        raise RuntimeError("the fused CUDA kernels need a CUDA device that numba can use "
                           "(numba.cuda.is_available() is False here), or NUMBA_ENABLE_CUDASIM=1")


def _launch(kernel, n, *args):
    if n:
        kernel[-(-n // THREADS_PER_BLOCK), THREADS_PER_BLOCK](*args)


def run_uv_cuda(u0, v0, eta, phi, tol, divergence_norm, max_steps):
    """Final (U, V), P, max eta|eps_t| and steps (numpy), as kernel.run_uv_numba returns them."""
    _require_cuda()
    n = np.asarray(eta).size
    host = [np.ascontiguousarray(u0, dtype=np.float64), np.ascontiguousarray(v0, dtype=np.float64),
            np.ones(n), np.zeros(n), np.zeros(n, dtype=np.int64), np.ascontiguousarray(eta, dtype=np.float64)]
    dev = [cuda.to_device(a) for a in host]
    _launch(_uv_kernel(), n, *dev, float(phi), float(tol), float(divergence_norm), int(max_steps))
    return tuple(d.copy_to_host() for d in dev[:5])


def run_chain_cuda(w0, eta, phi, tol, divergence_norm, max_steps):
    """Final weights [N, L], P, max eta|eps_t| and steps (numpy), as chain_kernel.run_chain_numba."""
    _require_cuda()
    w0 = np.asarray(w0, dtype=np.float64)
    n, depth = w0.shape
    if depth < 2:
        raise ValueError(f"a chain needs depth >= 2, got {depth}")
    host = [np.ascontiguousarray(w0.T), np.ones(n), np.zeros(n), np.zeros(n, dtype=np.int64),
            np.ascontiguousarray(eta, dtype=np.float64)]  # weights [L, N]: neighbouring threads, neighbouring words
    dev = [cuda.to_device(a) for a in host]
    _launch(_chain_kernel(depth), n, *dev, float(phi), float(tol), float(divergence_norm), int(max_steps))
    weights, factor, max_step, steps = (d.copy_to_host() for d in dev[:4])
    return weights.T.copy(), factor, max_step, steps


def uv_ptx() -> str:
    """The PTX of the compiled (U, V) kernel (compiles it on a tiny input first)."""
    run_uv_cuda(np.ones(1), np.ones(1), np.ones(1), 1.0, 1e-8, 1e12, 1)
    return "\n".join(_uv_kernel().inspect_asm().values())


def chain_ptx(depth: int) -> str:
    """The PTX of the compiled chain kernel for this depth."""
    run_chain_cuda(np.ones((1, depth)), np.ones(1), 1.0, 1e-8, 1e12, 1)
    return "\n".join(_chain_kernel(depth).inspect_asm().values())
