"""Many full-batch GD runs of one real net at once: R copies of the model stacked (torch.func.stack_module_state),
one functional forward (torch.func.functional_call) vmapped over the runs, each run with its own step size,
initial scale and seed.

Every run follows `shallownet train`'s loop (shallownet.module.FullBatchModule): before step k the loss and
the gradient at the current parameters are computed and judged by the one StopRule (converged once the loss
<= tol, diverged when non-finite or the squared parameter norm exceeds divergence_norm, max_steps at k =
max_steps); if the run goes on, p <- p - lr g. A run that stops is taken out of the stacked state at once
(compacted: one gather of the parameters costs less than the gradient it saves), so finished runs stop
costing. Sharpness (the top Hessian eigenvalue) is measured per run by power iteration on vmapped
Hessian-vector products (forward-over-reverse), each run's vector warm-started from its last measurement.

Models whose forward is not a pure function of (parameters, input) cannot be stacked: BatchNorm (its batch
statistics couple rows and its running statistics are updated in place), dropout (random per call); refusal()
names them and a one-step probe catches the rest (in-place updates of buffers and the like), before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp, stack_module_state, vmap

from shallownet.stop import StopRule

FLOAT_FIELDS = ("initial_loss", "final_loss", "max_loss_ratio", "initial_sharpness", "final_sharpness",
                "test_loss", "test_accuracy")
_VECTOR_SEED = 12345  # power iteration's start vectors: drawn per run from this seed + the run's index


@dataclass
class RealRuns:
    """Results of R runs, each where it stopped: 1-D numpy arrays (float64; outcome int8 codes of
    shallownet.stop.OUTCOMES, steps int64), and with keep_params the final parameters {name: [R, ...]}."""

    outcome: np.ndarray
    steps: np.ndarray
    initial_loss: np.ndarray
    final_loss: np.ndarray
    max_loss_ratio: np.ndarray  # largest loss over the steps judged, over the initial loss
    initial_sharpness: np.ndarray
    final_sharpness: np.ndarray  # nan for runs whose final state is not finite
    test_loss: np.ndarray  # nan without a test split
    test_accuracy: np.ndarray
    params: dict[str, torch.Tensor] | None = None

    @staticmethod
    def concatenate(parts: Sequence[RealRuns]) -> RealRuns:
        fields = {name: np.concatenate([getattr(p, name) for p in parts]) for name in ("outcome", "steps",
                                                                                      *FLOAT_FIELDS)}
        params = None
        if parts and parts[0].params is not None:
            params = {k: torch.cat([p.params[k] for p in parts]) for k in parts[0].params}
        return RealRuns(**fields, params=params)


def refusal(model: nn.Module) -> str | None:
    """Why the model cannot be vectorised over runs, or None: BatchNorm in training mode, dropout."""
    from shallownet.curvature.operators import batch_statistics_module

    found = batch_statistics_module(model)
    if found is not None:
        return (f"{found[0]} is a {type(found[1]).__name__}: it normalises with its batch's statistics and updates "
                "running statistics in place, which a vmapped functional forward cannot")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"{name} is a {type(module).__name__}: a random mask per call is no deterministic GD run"
    return None


def _per_run(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [r] tensor shaped to broadcast over [r, ...]."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((a[k] * b[k]).flatten(1).sum(1) for k in a)


class Stacked:
    """The vmapped loss, gradient, Hessian-vector product and outputs of `model`'s architecture on (x, y)."""

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor):
        self.base = model.to("meta")  # the architecture only: every call gets parameters and buffers
        self.loss_fn, self.x, self.y = loss_fn, x, y

        def loss(p, b, x, y):
            return loss_fn(functional_call(self.base, (p, b), (x,)), y)

        def hvp(p, b, v):
            return jvp(lambda q: grad(loss)(q, b, self.x, self.y), (p,), (v,))[1]

        self.gradient = vmap(grad_and_value(loss), in_dims=(0, 0, None, None))
        self.loss = vmap(loss, in_dims=(0, 0, None, None))
        self.outputs = vmap(lambda p, b, x: functional_call(self.base, (p, b), (x,)), in_dims=(0, 0, None))
        self.hvp = vmap(hvp)

    def sharpness(self, params, buffers, v, iterations: int):
        """Power iteration (v: unit vectors per run): the Rayleigh quotient v.Hv of the last iterate, the
        next vectors."""
        lam = None
        for _ in range(iterations):
            w = self.hvp(params, buffers, v)
            lam = _dot(v, w)
            norm = _dot(w, w).sqrt()
            v = {k: w[k] / _per_run(norm, w[k]) for k in w}
        return lam, v


def probe(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """Why the vmapped gradient of two stacked copies fails or differs from the model's own, or None."""
    import copy

    rows = slice(0, min(2, len(x)))
    copies = [copy.deepcopy(model) for _ in range(2)]
    params, buffers = stack_module_state(copies)
    before = {k: b.clone() for k, b in buffers.items()}
    try:
        grads, _ = Stacked(copy.deepcopy(model), loss_fn, x[rows], y[rows]).gradient(params, buffers, x[rows],
                                                                                    y[rows])
    except Exception as err:  # torch's message says which operation cannot be vmapped
        return f"its forward cannot be vmapped ({str(err).splitlines()[0]})"
    if any(not torch.equal(before[k], b) for k, b in buffers.items()):
        return "its forward changes buffers in place"
    reference = torch.autograd.grad(loss_fn(model(x[rows]), y[rows]), list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    if not all(torch.allclose(grads[n][0], r, rtol=1e-6, atol=1e-9) for n, r in zip(names, reference, strict=True)):
        return "its vmapped gradient differs from its own (a forward that is not a function of its parameters)"
    return None


def bytes_per_run(model: nn.Module, rows: int, test_rows: int, x: torch.Tensor) -> int:
    """Working memory of one run in flight: ~12 parameter-sized tensors (parameters, gradient, power
    iteration's vectors, the HVP's tangents and temporaries) and ~6 activation-sized ones per row (the
    forward, backward and the HVP's forward-over-reverse), activations counted by a one-row forward."""
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
             for m in model.modules() if m is not model]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    width = x.element_size()
    n_params = sum(p.numel() for p in model.parameters())
    return width * (12 * n_params + 6 * sum(sizes) * max(rows, test_rows))


def simulate_real(build: Callable[[int, float], nn.Module], lr: np.ndarray, scale: np.ndarray, seed: np.ndarray,
                  loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, rule: StopRule, *,
                  x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
                  sharpness_every: int = 0, iterations: int = 20, initial_iterations: int = 100,
                  chunk_size: int = 256, keep_params: bool = False,
                  progress: Callable[[int], None] | None = None) -> RealRuns:
    """Run i: GD with step lr[i] from build(seed[i], scale[i]) (the model `shallownet train` builds with
    model.seed and model.init_scale), chunk_size runs at a time; progress(n) after n runs finished."""
    lr, scale, seed = (np.asarray(a) for a in (lr, scale, seed))
    parts = []
    for start in range(0, lr.size, chunk_size):
        part = slice(start, start + chunk_size)
        models = [build(int(s), float(c)) for s, c in zip(seed[part], scale[part], strict=True)]
        parts.append(_chunk(models, lr[part], np.arange(lr.size)[part], loss_fn, x, y, x_test, y_test, rule,
                            sharpness_every, iterations, initial_iterations, keep_params, progress))
    return RealRuns.concatenate(parts)


def _unit_vectors(params: dict[str, torch.Tensor], index: np.ndarray) -> dict[str, torch.Tensor]:
    """One random unit vector per run, drawn from the run's own index (the same whatever the chunking)."""
    draws = {k: torch.empty_like(p) for k, p in params.items()}
    for row, i in enumerate(index):
        generator = torch.Generator().manual_seed(_VECTOR_SEED + int(i))
        for k, p in params.items():
            draws[k][row] = torch.randn(p.shape[1:], generator=generator, dtype=p.dtype).to(p.device)
    norm = _dot(draws, draws).sqrt()
    return {k: d / _per_run(norm, d) for k, d in draws.items()}


def _chunk(models, lr, index, loss_fn, x, y, x_test, y_test, rule, sharpness_every, iterations,
           initial_iterations, keep_params, progress) -> RealRuns:
    params, buffers = stack_module_state(models)
    params = {k: p.detach() for k, p in params.items()}
    stacked = Stacked(models[0], loss_fn, x, y)
    r = len(models)
    out = {name: np.full(r, np.nan) for name in FLOAT_FIELDS}
    outcome, steps = np.full(r, -1, dtype=np.int8), np.zeros(r, dtype=np.int64)
    final_params = {k: torch.empty_like(p) for k, p in params.items()} if keep_params else None
    neg_lr = torch.as_tensor(-np.asarray(lr, dtype=np.float64), dtype=x.dtype, device=x.device)
    alive = np.arange(r)  # positions in this chunk of the runs in flight
    v = _unit_vectors(params, index)
    with torch.no_grad():
        lam, v = stacked.sharpness(params, buffers, v, initial_iterations)
    out["initial_sharpness"][:] = lam.cpu().numpy()
    step = 0
    while alive.size:
        grads, loss = stacked.gradient(params, buffers, x, y)
        loss_np = loss.detach().cpu().numpy()
        norm = sum(p.square().flatten(1).sum(1) for p in params.values()).cpu().numpy()
        if step == 0:
            out["initial_loss"][alive] = loss_np
        out["max_loss_ratio"][alive] = np.fmax(out["max_loss_ratio"][alive], loss_np / out["initial_loss"][alive])
        codes = rule.classify(loss_np, norm, steps=step)
        done = codes >= 0
        if sharpness_every and step % sharpness_every == 0 and step > 0 and not done.all():
            with torch.no_grad():
                _, v = stacked.sharpness(params, buffers, v, iterations)  # keeps the vectors warm
        if done.any():
            finished = torch.as_tensor(np.flatnonzero(done), device=x.device)
            where = alive[done]
            outcome[where], steps[where], out["final_loss"][where] = codes[done], step, loss_np[done]
            p_done = {k: p[finished] for k, p in params.items()}
            b_done = {k: b[finished] for k, b in buffers.items()}
            _finish(stacked, p_done, b_done, {k: t[finished] for k, t in v.items()}, iterations, x_test, y_test,
                    out, where)
            if final_params is not None:
                for k, p in p_done.items():
                    final_params[k][where] = p
            keep = torch.as_tensor(np.flatnonzero(~done), device=x.device)
            params, buffers, grads = ({k: t[keep] for k, t in d.items()} for d in (params, buffers, grads))
            v = {k: t[keep] for k, t in v.items()}
            neg_lr, alive = neg_lr[keep], alive[~done]
            if progress is not None:
                progress(int(done.sum()))
        # p + (-lr) g as one addcmul: the rounding of shallownet.optim.GradientDescent's p.add_(g, alpha=-lr)
        params = {k: torch.addcmul(p, _per_run(neg_lr, p), grads[k]) for k, p in params.items()}
        step += 1
    return RealRuns(outcome, steps, **out, params=final_params)


def _finish(stacked: Stacked, params, buffers, v, iterations, x_test, y_test, out, where) -> None:
    """Final sharpness (warm-started) and test loss / accuracy of runs that just stopped."""
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(p).flatten(1).all(1) for p in params.values()]).all(0).cpu().numpy()
        if finite.any():
            keep = torch.as_tensor(np.flatnonzero(finite), device=next(iter(params.values())).device)
            p, b = {k: t[keep] for k, t in params.items()}, {k: t[keep] for k, t in buffers.items()}
            lam, _ = stacked.sharpness(p, b, {k: t[keep] for k, t in v.items()}, iterations)
            out["final_sharpness"][where[finite]] = lam.cpu().numpy()
        if x_test is not None and len(x_test):
            out["test_loss"][where] = stacked.loss(params, buffers, x_test, y_test).cpu().numpy()
            right = stacked.outputs(params, buffers, x_test).argmax(-1) == y_test  # [r, N] or [r, N, answers]
            hits = right.reshape(*right.shape[:2], -1).all(-1).double().mean(-1)  # every answer of a row right
            out["test_accuracy"][where] = hits.cpu().numpy()
