"""Batch sharpness and its companions (Andreyev & Beneventano, "Edge of Stochastic Stability", arXiv 2412.20553).

For a batch B of rows, g_B and H_B are the gradient and Hessian of the mean loss over B, g and H those over
all rows. Over a set of batches (Monte Carlo draws, or every batch of a size), with the same batches for
every quantity (common random numbers):

    batch_sharpness   mean_B  g_B^T H_B g_B / |g_B|^2   (the mean of ratios, as the paper defines it)
    gni               mean_B  g_B^T H g_B / |g|^2       (gradient-noise interaction)
    batch_lambda_max  mean_B  lambda_max(H_B)

and the standard error of each estimator: std(per-batch values) / sqrt(m) over m i.i.d. batches (for batch
sharpness that of the mean of ratios, not the ratio of means'); 0 for an exact enumeration. The per-batch products are
batched with torch.func.vmap over stacked batches (forward-over-reverse HVPs), not a double backward per
batch. lambda_max(H_B) is the top eigenvalue of each batch's dense Hessian up to MAX_DENSE_BATCH_DIM parameters,
else Lanczos on that batch's HVPs.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jvp, vmap

from shallownet.curvature.eigen import lanczos
from shallownet.curvature.operators import LossFn, flat_parameters, full_precision, trainable_parameters

VMAP_CHUNK = 16  # batches per vmapped pass: bounds the memory of the stacked forwards
# A dense H_B costs dim HVPs per batch, Lanczos a few tens: on the digits MLP 64-32-10 (2410 parameters) the
# dense path took 1.5-3 s a batch, Lanczos 0.09-0.16 s with the same top eigenvalue to 1e-12.
MAX_DENSE_BATCH_DIM = 256


def all_batches(rows: int, size: int) -> torch.Tensor:
    """Every batch of `size` of `rows` rows, (C(rows, size), size), in lexicographic order."""
    return torch.tensor(list(itertools.combinations(range(rows), size)), dtype=torch.long)


def random_batches(rows: int, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` i.i.d. batches, each `size` rows drawn without replacement, (count, size)."""
    return torch.stack([torch.randperm(rows, generator=generator)[:size] for _ in range(count)])


def _flat_loss(model: nn.Module, loss_fn: LossFn):
    params = trainable_parameters(model)
    shapes = [(name, p.shape) for name, p in params.items()]
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    def loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pieces = flat.split([shape.numel() for _, shape in shapes])
        named = {name: piece.view(shape) for (name, shape), piece in zip(shapes, pieces, strict=True)}
        return loss_fn(functional_call(model, {**named, **buffers}, (x,)), y)

    return loss


def per_batch(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor,
              lambda_max: bool = True) -> dict[str, torch.Tensor]:
    """Per batch (rows of `batches`): ratio g_B^T H_B g_B / |g_B|^2, noise g_B^T H g_B, |g_B|^2 and
    lambda_max(H_B); plus the full-batch g^T H g / |g|^2 and |g|^2 (0-dim)."""
    loss = _flat_loss(model, loss_fn)
    theta = flat_parameters(model)
    batches = batches.to(x.device)

    def products(xb, yb):
        g_b = grad(loss)(theta, xb, yb)
        _, h_b = jvp(lambda t: grad(loss)(t, xb, yb), (theta,), (g_b,))
        _, h_full = jvp(lambda t: grad(loss)(t, x, y), (theta,), (g_b,))
        return g_b @ h_b, g_b @ h_full, g_b @ g_b

    with full_precision():
        curvature, noise, squared = vmap(products, chunk_size=VMAP_CHUNK)(x[batches], y[batches])
        g = grad(loss)(theta, x, y)
        _, hg = jvp(lambda t: grad(loss)(t, x, y), (theta,), (g,))
        out = {"ratio": curvature / squared, "noise": noise, "squared": squared,
               "full_ratio": (g @ hg) / (g @ g), "full_squared": g @ g}
        if lambda_max:
            out["lambda_max"] = _top_eigenvalues(loss, theta, x[batches], y[batches])
    return out


def _top_eigenvalues(loss, theta: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    if theta.numel() <= MAX_DENSE_BATCH_DIM:
        dense = vmap(lambda xb, yb: hessian(loss)(theta, xb, yb), chunk_size=VMAP_CHUNK)(xs, ys)
        return torch.linalg.eigvalsh(dense)[:, -1]
    values = []
    for xb, yb in zip(xs, ys, strict=True):
        def hvp(v, xb=xb, yb=yb):
            return jvp(lambda t: grad(loss)(t, xb, yb), (theta,), (v,))[1]
        values.append(lanczos(hvp, grad(loss)(theta, xb, yb), tol=1e-6, max_iter=300).values[0])
    return torch.stack(values)


def _mean_and_stderr(values: torch.Tensor, exact: bool) -> tuple[float, float]:
    """The mean of i.i.d. per-batch values and its standard error std / sqrt(m) (0 for an enumeration)."""
    values, m = values.double(), len(values)
    stderr = 0.0 if exact else (float(values.std(correction=1)) / math.sqrt(m) if m > 1 else math.nan)
    return float(values.mean()), stderr


def estimate(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor,
             exact: bool = False) -> dict[str, float]:
    """batch_sharpness, gni and batch_lambda_max over `batches`, each with its standard error (`<name>_stderr`;
    exact: they are every batch of their size, so the means are expectations and the standard errors 0).
    gni's denominator |g|^2 is the full batch's, a constant, so its standard error is that of the numerator's
    mean over |g|^2."""
    parts = per_batch(model, loss_fn, x, y, batches)
    out = {}
    for name, values in (("batch_sharpness", parts["ratio"]),
                         ("gni", parts["noise"].double() / parts["full_squared"].double()),
                         ("batch_lambda_max", parts["lambda_max"])):
        out[name], out[f"{name}_stderr"] = _mean_and_stderr(values, exact)
    return out


def step_sharpness(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                   rows: torch.Tensor) -> float:
    """g_B^T H_B g_B / |g_B|^2 on the one batch `rows`."""
    return float(per_batch(model, loss_fn, x, y, rows[None], lambda_max=False)["ratio"][0])
