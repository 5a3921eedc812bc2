"""Hessian-vector products of a model's loss over a whole dataset, on flat parameter vectors.

The data is evaluated in chunks (row slices of tensors, or a DataLoader's batches). With a mean-reduced
loss (reduction="mean") chunk i contributes with weight n_i / N, so the result is exactly the Hessian of
the mean loss over all N rows, also when the last chunk is smaller (equal weights per chunk would be
biased); with a sum-reduced loss (reduction="sum") every chunk has weight 1. Only parameters with
requires_grad take part, in the order of model.named_parameters().

Measuring leaves the model and the run alone: every pass over the data runs on copies of the model's
buffers (BatchNorm's running statistics are not updated) and on the global random stream forked and
seeded with the operator's `seed` (the global RNG state, CPU and CUDA, is restored afterwards).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FORWARD_OVER_REVERSE = "forward-over-reverse"
DOUBLE_BACKWARD = "double-backward"
FINITE_DIFFERENCE = "finite-difference"
METHODS = (FORWARD_OVER_REVERSE, DOUBLE_BACKWARD, FINITE_DIFFERENCE)
REDUCTIONS = ("mean", "sum")

# Modules whose output has a kink (or a jump in its derivative): central differences of gradients
# straddle it and come out arbitrarily wrong (7.6-10.7x too large measured on ReLU / max-pool nets).
NON_SMOOTH = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
              nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.SELU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
              nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.FractionalMaxPool2d,
              nn.FractionalMaxPool3d)


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


@contextmanager
def fixed_random_stream(seed: int, device: torch.device) -> Iterator[None]:
    """The global random stream seeded with `seed` inside; the caller's state (CPU and `device`'s CUDA
    generator) is restored on exit, so measuring draws nothing from the run's stream."""
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the Hessian is taken over: those with requires_grad, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The trainable parameters as one detached flat vector, a copy (model dtype and device)."""
    return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(model).values()])


def batch_statistics_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first BatchNorm module normalising with the statistics of its batch (train mode, or no
    running statistics), by name; None if there is none."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None):
            return name, module
    return None


@dataclass
class _KeptGraph:
    """The first-order graph of a one-chunk dataset and the point (parameters, buffers, modes) it is at."""

    leaf: torch.Tensor  # the flat parameters it was built from (requires_grad)
    gradient: torch.Tensor  # flat gradient, with its graph
    buffers: list[torch.Tensor]  # copies of the model's buffers at build time
    modes: tuple[bool, ...]  # every module's training flag


class HessianOperator:
    """v -> H v, with H the Hessian of the loss over all the data at the model's current parameters.

    data: an (X, Y) pair of tensors or numpy arrays, a torch Dataset of (x, y) items (TensorDataset
    included), or a DataLoader yielding (x, y) batches. Tensors and Datasets are evaluated in chunks of
    chunk_size rows (None: one chunk); a DataLoader in its own batches (chunk_size must be None).
    Floating-point data is cast to the model's dtype and every chunk is moved to its device on use.
    `data` keeps the data as given, `inputs` and `targets` the pair as given (None for other forms).
    reduction: "mean" if `loss_fn(outputs, targets)` returns the mean over the rows it is given (H is
    then that of the mean loss over all rows), "sum" if it returns their sum (H of the total loss).

    Parameters are read at every call, so one operator follows a model through training.

    method:
      double-backward       torch.autograd.grad with create_graph=True, then a second autograd.grad
                            (default). When the data is one chunk, the first-order graph is kept and
                            reused while the parameters, buffers and train/eval modes are exactly those it
                            was built at (compared by value at every HVP: in-place `p.data` updates do not
                            move version counters), so the HVPs of one eigen-solve cost a second backward
                            each (~1.9 gradients, against ~3.7 for forward-over-reverse on the digits MLP
                            on CPU; benchmarks/bench_curvature.py). `release()` frees it.
      forward-over-reverse  jvp of grad with torch.func. If some operation lacks forward-mode AD, the
                            operator warns once and uses double-backward from then on.
      finite-difference     central differences of gradients, (g(p + h v) - g(p - h v)) / 2h, with
                            h = fd_step * max(1, |p|) / |v|; fd_step defaults to cbrt(machine eps).
                            Refused for models with non-smooth modules (NON_SMOOTH: ReLU, max pooling,
                            ...); non-smooth functions called in forward (F.relu) cannot be seen.

    Randomness and state: every pass over the data runs with the global random stream seeded with
    `seed` (restored afterwards), so with dropout in train mode every product uses the same dropout
    mask: H is the Hessian of the loss under that one fixed mask, a fixed symmetric matrix (a fresh
    mask per product would not be), and the same mask at every step of a run unless `seed` is changed.
    Products run on copies of the buffers: BatchNorm's running statistics are never updated. A
    BatchNorm normalising with batch statistics (train mode) makes the loss of a chunk a different
    function than the loss of the full batch, so it is refused when the data is split into chunks.
    The model's train/eval mode is never changed and no .grad is written. The data is assumed fixed
    (a kept graph does not notice in-place changes to it).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data,
        *,
        chunk_size: int | None = None,
        method: str = DOUBLE_BACKWARD,
        fd_step: float | None = None,
        reduction: str = "mean",
        seed: int = 0,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown HVP method {method!r}; allowed: {', '.join(METHODS)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown loss reduction {reduction!r}; allowed: {', '.join(REDUCTIONS)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        params = list(trainable_parameters(model).values())
        if not params:
            raise ValueError("the model has no parameters with requires_grad")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.method, self.reduction, self.seed = method, reduction, seed
        self.dim = sum(p.numel() for p in params)
        self.dtype, self.device = params[0].dtype, params[0].device
        # cbrt(eps) balances the O(h^2) truncation error against the O(eps / h) round-off.
        self.fd_step = fd_step if fd_step is not None else torch.finfo(self.dtype).eps ** (1 / 3)
        self.inputs, self.targets = data if isinstance(data, tuple) else (None, None)  # as given
        self._tensors, self._loader = _tensor_pair(data), None
        if self._tensors is None:
            self._loader = _loader(data, chunk_size)
            self.chunk_size = chunk_size
        else:
            self.chunk_size = chunk_size or len(self._tensors[0])
        self._kept: _KeptGraph | None = None
        self._check()

    # --- public -------------------------------------------------------------------------------------

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length dim (model dtype and device)."""
        if vector.shape != (self.dim,):
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {tuple(vector.shape)}")
        self._check()
        with full_precision():
            vector = vector.clone() if vector.is_inference() else vector
            flat = flat_parameters(self.model)
            if self.method == FORWARD_OVER_REVERSE:
                try:
                    return self._hvp_forward_over_reverse(flat, vector)
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError as error:  # NotImplementedError included: an op without forward-mode AD
                    # If double backward fails too, the model itself is at fault and that error propagates.
                    result = self._hvp_double_backward(flat, vector)
                    self.method = DOUBLE_BACKWARD
                    warnings.warn(f"forward-over-reverse HVP failed ({error}); using double-backward instead",
                                  RuntimeWarning, stacklevel=2)
                    return result
            if self.method == DOUBLE_BACKWARD:
                return self._hvp_double_backward(flat, vector)
            return self._hvp_finite_difference(flat, vector)

    def release(self) -> None:
        """Free the kept first-order graph (double-backward); the next HVP rebuilds it."""
        self._kept = None

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the loss at the current parameters (the cost unit for HVPs)."""
        self._check()
        with full_precision():
            return self._gradient_at(flat_parameters(self.model))

    @property
    def n_chunks(self) -> int | None:
        """How many chunks one pass over the data takes (None: a loader of unknown length)."""
        if self._loader is None:
            return math.ceil(len(self._tensors[0]) / self.chunk_size)
        try:
            return len(self._loader)
        except TypeError:
            return None

    # --- checks -------------------------------------------------------------------------------------

    def _check(self) -> None:
        """Refuse what would be silently wrong; run at construction and at every product (modes change)."""
        found = batch_statistics_module(self.model)
        if found is not None and self.n_chunks != 1:
            name, module = found
            chunks = f"{self.n_chunks} chunks" if self.n_chunks else "chunks"
            raise ValueError(f"{type(module).__name__} {name!r} normalises with batch statistics (train mode) and "
                             f"the data is split into {chunks}, whose Hessian is not that of the full-batch "
                             "loss; use chunk_size=None (one chunk) or put the model in eval mode")
        if self.method == FINITE_DIFFERENCE:
            for name, module in self.model.named_modules():
                if isinstance(module, NON_SMOOTH):
                    raise ValueError(f"finite-difference HVPs are wrong across the kinks of {type(module).__name__} "
                                     f"{name!r}; use method='double-backward' or 'forward-over-reverse'")

    # --- data ---------------------------------------------------------------------------------------

    def _chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is None:
            inputs, targets = self._tensors
            batches = zip(inputs.split(self.chunk_size), targets.split(self.chunk_size), strict=True)
        else:
            batches = self._loader
        for inputs, targets in batches:
            yield self._place(inputs), self._place(targets)

    def _place(self, data):
        if not isinstance(data, torch.Tensor):
            return data
        return data.to(self.device, self.dtype if data.is_floating_point() else None)

    def _pass(self, chunk_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """chunk_fn summed over the chunks with their weights, on the fixed random stream."""
        total, rows = torch.zeros(self.dim, dtype=self.dtype, device=self.device), 0
        mean = self.reduction == "mean"
        with fixed_random_stream(self.seed, self.device):
            for x, y in self._chunks():
                total.add_(chunk_fn(x, y), alpha=len(x) if mean else 1)
                rows += len(x)
        return total.div_(rows) if mean else total

    # --- pieces -------------------------------------------------------------------------------------

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        params = trainable_parameters(self.model)
        pieces = flat.split([p.numel() for p in params.values()])
        return {name: piece.view_as(p) for (name, p), piece in zip(params.items(), pieces, strict=True)}

    def _loss_at(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Buffers are copies (forwards in train mode update them); frozen parameters come from the module.
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        return self.loss_fn(functional_call(self.model, {**self._split(flat), **buffers}, (x,)), y)

    def _first_order(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """(leaf, gradient at the leaf with its graph) for one chunk."""
        leaf = flat.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(self._loss_at(leaf, x, y), leaf, create_graph=True, allow_unused=True,
                                          materialize_grads=True)
        return leaf, gradient

    @staticmethod
    def _second_backward(leaf, gradient, vector, retain: bool) -> torch.Tensor:
        if not gradient.requires_grad:  # a loss linear in the parameters: its gradient is constant
            return torch.zeros_like(vector)
        (product,) = torch.autograd.grad(gradient, leaf, grad_outputs=vector, retain_graph=retain,
                                         allow_unused=True, materialize_grads=True)
        return product

    def _hvp_double_backward(self, flat, vector):
        if self.n_chunks == 1:  # one weight-1 chunk: its graph is kept (for more, keeping them all would
            kept = self._kept_graph(flat)  # defeat the memory bound that chunking is for)
            return self._second_backward(kept.leaf, kept.gradient, vector, retain=True)
        return self._pass(lambda x, y: self._second_backward(*self._first_order(flat, x, y), vector, retain=False))

    def _kept_graph(self, flat: torch.Tensor) -> _KeptGraph:
        """The kept graph if it is at the current point, else a new one.

        The point is compared by value (flat parameters, buffers, modes), not by version counters:
        `p.data.add_(...)` leaves the counter where it was.
        """
        kept, modes = self._kept, tuple(m.training for m in self.model.modules())
        buffers = [b for _, b in self.model.named_buffers()]
        if (kept is None or kept.modes != modes or not torch.equal(kept.leaf, flat)
                or not all(torch.equal(a, b) for a, b in zip(kept.buffers, buffers, strict=True))):
            self._kept = None  # free the old graph before building the new one
            with fixed_random_stream(self.seed, self.device):
                x, y = next(self._chunks())
                leaf, gradient = self._first_order(flat, x, y)
            kept = self._kept = _KeptGraph(leaf, gradient, [b.clone() for b in buffers], modes)
        return kept

    def _hvp_forward_over_reverse(self, flat, vector):
        def chunk(x, y):
            gradient_fn = grad(lambda f: self._loss_at(f, x, y))
            return jvp(gradient_fn, (flat,), (vector,))[1]

        return self._pass(chunk)

    def _hvp_finite_difference(self, flat, vector):
        v_norm = float(torch.linalg.vector_norm(vector))
        if v_norm == 0.0:
            return torch.zeros_like(vector)
        step = self.fd_step * max(1.0, float(torch.linalg.vector_norm(flat))) / v_norm
        plus = self._gradient_at(flat + step * vector)
        minus = self._gradient_at(flat - step * vector)
        return (plus - minus) / (2.0 * step)

    def _gradient_at(self, flat: torch.Tensor) -> torch.Tensor:
        def chunk(x, y):
            leaf = flat.detach().requires_grad_()
            return torch.autograd.grad(self._loss_at(leaf, x, y), leaf, allow_unused=True, materialize_grads=True)[0]

        return self._pass(chunk)


class WrappedOperator:
    """An operator built on another one (its `operator`), for the same model, dimension, dtype and device:
    the solvers ask every operator for these."""

    def __init__(self, operator):
        self.operator = operator

    @property
    def model(self):
        return self.operator.model

    @property
    def dim(self) -> int:
        return self.operator.dim

    @property
    def dtype(self) -> torch.dtype:
        return self.operator.dtype

    @property
    def device(self) -> torch.device:
        return self.operator.device


class PreconditionedOperator(WrappedOperator):
    """v -> P^-1/2 H P^-1/2 v for a positive diagonal P (flat, like the parameters): its eigenvalues are those
    of P^-1 H, the preconditioned sharpness that governs an adaptive optimizer's stability (Cohen et al. 2022),
    and it is symmetric, so the Lanczos solvers take it as they take H."""

    def __init__(self, operator, diagonal: torch.Tensor):
        if diagonal.shape != (operator.dim,):
            raise ValueError(f"the preconditioner must be flat with {operator.dim} entries, got "
                             f"{tuple(diagonal.shape)}")
        if not bool((diagonal > 0).all()):
            raise ValueError("the preconditioner must be positive")
        super().__init__(operator)
        self.scale = diagonal.to(operator.dtype).rsqrt()

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        return self.scale * self.operator(self.scale * vector)


# --- data forms ---------------------------------------------------------------------------------------

def _tensor_pair(data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(X, Y) as tensors for pair and TensorDataset data (numpy arrays converted); None for other forms."""
    if isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise ValueError(f"a TensorDataset of (inputs, targets) is needed, got {len(data.tensors)} tensors")
        data = data.tensors
    elif not isinstance(data, tuple):
        if isinstance(data, (Dataset, DataLoader)):
            return None
        raise TypeError(f"data must be an (X, Y) pair, a Dataset or a DataLoader, got {type(data).__name__}")
    if len(data) != 2:
        raise ValueError(f"data must be an (X, Y) pair, got a tuple of {len(data)}")
    inputs, targets = (part if isinstance(part, torch.Tensor) else torch.as_tensor(part) for part in data)
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"need as many inputs as targets, at least one; got {len(inputs)} and {len(targets)}")
    return inputs, targets


def _loader(data, chunk_size: int | None) -> DataLoader:
    """A DataLoader over the whole data, in chunks of chunk_size rows (a given DataLoader: its batches)."""
    if isinstance(data, DataLoader):
        if chunk_size is not None:
            raise ValueError("a DataLoader is chunked by its own batches: pass chunk_size=None "
                             "(or the Dataset with a chunk_size)")
        return data
    if isinstance(data, IterableDataset):
        if chunk_size is None:
            raise ValueError("an IterableDataset has no length to take in one chunk: give a chunk_size")
        return DataLoader(data, batch_size=chunk_size)
    if len(data) == 0:
        raise ValueError("the Dataset is empty")
    return DataLoader(data, batch_size=chunk_size or len(data))
