"""Hessian-vector products of a model's mean loss over a whole dataset, on flat parameter vectors.

The dataset (X, Y) is evaluated in row chunks; chunk i contributes with weight n_i / N, so the result
is exactly the Hessian of the mean loss over all N rows, also when the last chunk is smaller (equal
weights per chunk would be biased). Only parameters with requires_grad take part, in the order of
model.named_parameters().
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FORWARD_OVER_REVERSE = "forward-over-reverse"
DOUBLE_BACKWARD = "double-backward"
FINITE_DIFFERENCE = "finite-difference"
METHODS = (FORWARD_OVER_REVERSE, DOUBLE_BACKWARD, FINITE_DIFFERENCE)


@contextmanager
def full_precision() -> Iterator[None]:
    """Gradients enabled (also under no_grad or inference_mode) and TF32 off, restored on exit.

    TF32 matmuls and convolutions carry ~1e-3 relative error, far above the residuals asked of the
    eigen-solvers; float64 is unaffected, float32 on recent GPUs is not.
    """
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the Hessian is taken over: those with requires_grad, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The trainable parameters as one detached flat vector (model dtype and device)."""
    return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(model).values()])


class HessianOperator:
    """v -> H v, with H the Hessian of mean_i loss_fn(model(x_i), y_i) at the model's current parameters.

    Parameters are read at every call, so one operator follows a model through training.
    `loss_fn(outputs, targets)` must return the mean loss over the rows it is given.

    method:
      double-backward       torch.autograd.grad with create_graph=True, then a second autograd.grad
                            (default). When the data is one chunk, the first-order graph is kept while
                            the parameters stay unchanged, so the HVPs of one eigen-solve cost a second
                            backward each (~1.9 gradients, against ~3.7 for forward-over-reverse on the
                            digits MLP on CPU; benchmarks/bench_curvature.py). `release()` frees it.
      forward-over-reverse  jvp of grad with torch.func. If some operation lacks forward-mode AD, the
                            operator warns once and uses double-backward from then on.
      finite-difference     central differences of gradients, (g(p + h v) - g(p - h v)) / 2h, with
                            h = fd_step * max(1, |p|) / |v|; fd_step defaults to cbrt(machine eps).
    The model's train/eval mode is never changed and no .grad is written.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: tuple[torch.Tensor, torch.Tensor],
        *,
        chunk_size: int | None = None,
        method: str = DOUBLE_BACKWARD,
        fd_step: float | None = None,
    ):
        inputs, targets = data
        if len(inputs) != len(targets) or len(inputs) == 0:
            raise ValueError(f"need as many inputs as targets, at least one; got {len(inputs)} and {len(targets)}")
        if method not in METHODS:
            raise ValueError(f"unknown HVP method {method!r}; allowed: {', '.join(METHODS)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        params = list(trainable_parameters(model).values())
        if not params:
            raise ValueError("the model has no parameters with requires_grad")
        self.model, self.loss_fn = model, loss_fn
        self.inputs, self.targets = inputs, targets
        self.chunk_size = chunk_size or len(inputs)
        self.method = method
        self.dim = sum(p.numel() for p in params)
        self.dtype, self.device = params[0].dtype, params[0].device
        # cbrt(eps) balances the O(h^2) truncation error against the O(eps / h) round-off.
        self.fd_step = fd_step if fd_step is not None else torch.finfo(self.dtype).eps ** (1 / 3)
        self._kept_graph: tuple[tuple, tuple[torch.Tensor, ...]] | None = None  # (parameter state, gradients)

    # --- public -------------------------------------------------------------------------------------

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length dim (model dtype and device)."""
        if vector.shape != (self.dim,):
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {tuple(vector.shape)}")
        with full_precision():
            vector = vector.clone() if vector.is_inference() else vector
            if self.method == FORWARD_OVER_REVERSE:
                try:
                    return self._accumulate(self._hvp_forward_over_reverse, vector)
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError as error:  # NotImplementedError included: an op without forward-mode AD
                    # If double backward fails too, the model itself is at fault and that error propagates.
                    result = self._accumulate(self._hvp_double_backward, vector)
                    self.method = DOUBLE_BACKWARD
                    warnings.warn(f"forward-over-reverse HVP failed ({error}); using double-backward instead",
                                  RuntimeWarning, stacklevel=2)
                    return result
            if self.method == DOUBLE_BACKWARD:
                return self._accumulate(self._hvp_double_backward, vector)
            return self._hvp_finite_difference(vector)

    def release(self) -> None:
        """Free the kept first-order graph (double-backward); the next HVP rebuilds it."""
        self._kept_graph = None

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the mean loss at the current parameters (the cost unit for HVPs)."""
        with full_precision():
            return self._gradient_at(self._detached_params())

    # --- pieces -------------------------------------------------------------------------------------

    def _detached_params(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in trainable_parameters(self.model).items()}

    def _chunks(self):
        total = len(self.inputs)
        for x, y in zip(self.inputs.split(self.chunk_size), self.targets.split(self.chunk_size), strict=True):
            yield x.to(self.device), y.to(self.device), len(x) / total

    def _split(self, vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pieces = vector.split([p.numel() for p in like.values()])
        return {name: piece.view_as(p) for (name, p), piece in zip(like.items(), pieces, strict=True)}

    def _loss_at(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Parameters not in `params` (frozen ones) and buffers come from the module itself.
        return self.loss_fn(functional_call(self.model, params, (x,)), y)

    def _accumulate(self, chunk_hvp, vector: torch.Tensor) -> torch.Tensor:
        params = self._detached_params()
        tangents = self._split(vector, params)
        total = torch.zeros_like(vector)
        for x, y, weight in self._chunks():
            pieces = chunk_hvp(params, tangents, x, y)
            total.add_(torch.cat([piece.reshape(-1) for piece in pieces]), alpha=weight)
        return total

    def _hvp_forward_over_reverse(self, params, tangents, x, y):
        gradient_fn = grad(lambda p: self._loss_at(p, x, y))
        return jvp(gradient_fn, (params,), (tangents,))[1].values()

    def _hvp_double_backward(self, params, tangents, x, y):
        live = list(trainable_parameters(self.model).values())
        grads = self._first_order_graph(live, x, y)
        # A gradient that does not depend on the parameters (loss linear in them) has zero derivative.
        linked = [(g, t) for g, t in zip(grads, tangents.values(), strict=True) if g.requires_grad]
        if not linked:
            return [torch.zeros_like(p) for p in live]
        outputs, grad_outputs = zip(*linked, strict=True)
        return torch.autograd.grad(outputs, live, grad_outputs=grad_outputs, allow_unused=True,
                                   materialize_grads=True, retain_graph=self._kept_graph is not None)

    def _first_order_graph(self, live: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        """Gradients with their graph; kept and reused while the parameters are unchanged.

        In-place updates bump a tensor's _version, so (data_ptr, _version) of every parameter, with the
        train/eval mode, identifies the point. Kept only for single-chunk data: for chunked data keeping
        every chunk's graph would defeat the chunking's memory bound.
        """
        state = (tuple((p.data_ptr(), p._version) for p in live), self.model.training)
        if self._kept_graph is not None and self._kept_graph[0] == state:
            return self._kept_graph[1]
        loss = self.loss_fn(self.model(x), y)
        grads = torch.autograd.grad(loss, live, create_graph=True, allow_unused=True, materialize_grads=True)
        self._kept_graph = (state, grads) if self.chunk_size >= len(self.inputs) else None
        return grads

    def _hvp_finite_difference(self, vector: torch.Tensor) -> torch.Tensor:
        params = self._detached_params()
        flat = torch.cat([p.reshape(-1) for p in params.values()])
        v_norm = float(torch.linalg.vector_norm(vector))
        if v_norm == 0.0:
            return torch.zeros_like(vector)
        step = self.fd_step * max(1.0, float(torch.linalg.vector_norm(flat))) / v_norm
        plus = self._gradient_at(self._split(flat + step * vector, params))
        minus = self._gradient_at(self._split(flat - step * vector, params))
        return (plus - minus) / (2.0 * step)

    def _gradient_at(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for x, y, weight in self._chunks():
            pieces = grad(lambda p, x=x, y=y: self._loss_at(p, x, y))(params)
            total.add_(torch.cat([g.reshape(-1) for g in pieces.values()]), alpha=weight)
        return total
