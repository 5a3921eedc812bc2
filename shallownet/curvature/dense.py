"""The dense Hessian of a tiny model's mean loss, for exact checks (torch.func.hessian)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from shallownet.curvature.operators import LossFn, flat_parameters, full_precision, trainable_parameters

MAX_DENSE_DIM = 4096  # a dim x dim matrix and dim HVPs' worth of work: beyond this use lanczos


def dense_hessian(model: nn.Module, loss_fn: LossFn, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(dim, dim) Hessian of loss_fn(model(X), Y) over the trainable parameters, in flat_parameters order."""
    inputs, targets = data
    params = trainable_parameters(model)
    shapes = {name: p.shape for name, p in params.items()}
    dim = sum(p.numel() for p in params.values())
    if dim > MAX_DENSE_DIM:
        raise ValueError(f"dense Hessian of {dim} parameters refused (max {MAX_DENSE_DIM}); use lanczos")

    def loss_of_flat(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split([shape.numel() for shape in shapes.values()])
        named = {name: piece.view(shape) for (name, shape), piece in zip(shapes.items(), pieces, strict=True)}
        buffers = {name: b.clone() for name, b in model.named_buffers()}  # train-mode forwards update them
        return loss_fn(functional_call(model, {**named, **buffers}, (inputs,)), targets)

    # torch.func's vmapped second derivatives through batch_norm with an affine weight are wrong (torch 2.13:
    # O(1) errors, an asymmetric Hessian); one row at a time (chunk_size=1: no vmap) they are right
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    second = jacrev(jacrev(loss_of_flat, chunk_size=1), chunk_size=1) if batch_norm else hessian(loss_of_flat)
    with full_precision():
        return second(flat_parameters(model))
