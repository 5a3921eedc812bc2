"""Curvature of any model + loss: Hessian-vector products, top eigenvalues, trace, dense Hessian.

    op = HessianOperator(model, loss_fn, (X, Y))      # H of the mean loss over (X, Y), chunked
    op = HessianOperator(model, loss_fn, loader)      # or a Dataset / DataLoader; reduction="sum" for summed losses
    result = top_eigenvalue(op)                       # sharpness: result.value, .residual, .n_hvp
    result = top_eigenvalue(op, result.vector)        # warm start after the parameters moved
    top3 = lanczos(op, k=3)                           # repeated eigenvalues as often as they occur
    tracker = EigenTracker(k=1); tracker.solve(op)    # warm starts along a trajectory, done for you
    estimate = density(op); estimate.smoothed()       # spectral density, stochastic Lanczos quadrature
    third_order(op, us, vs).products                 # grad_w(u_i^T H v_i) for a batch of pairs
    block_sharpness(op, "stage2")                     # top eigenvalue of H restricted to stage2.*'s parameters

Measuring leaves the run alone: products draw nothing from the global random stream (one fixed dropout
mask per operator) and never update buffers (BatchNorm running statistics).
"""

from shallownet.curvature.blocks import BlockOperator, block_sharpness, parameter_blocks
from shallownet.curvature.dense import dense_hessian
from shallownet.curvature.density import DensityEstimate, density
from shallownet.curvature.eigen import EigenResult, lanczos, power_iteration, top_eigenvalue
from shallownet.curvature.operators import METHODS, HessianOperator, flat_parameters, trainable_parameters
from shallownet.curvature.third_order import ThirdOrderResult, third_order
from shallownet.curvature.trace import TraceEstimate, hutchinson
from shallownet.curvature.tracking import EigenTracker

__all__ = [
    "METHODS",
    "BlockOperator",
    "DensityEstimate",
    "EigenResult",
    "EigenTracker",
    "HessianOperator",
    "ThirdOrderResult",
    "TraceEstimate",
    "block_sharpness",
    "dense_hessian",
    "density",
    "flat_parameters",
    "hutchinson",
    "lanczos",
    "parameter_blocks",
    "power_iteration",
    "third_order",
    "top_eigenvalue",
    "trainable_parameters",
]
